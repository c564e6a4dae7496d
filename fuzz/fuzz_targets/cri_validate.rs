//! The CRI request validators at skiffd's gRPC edge, on requests decoded from arbitrary protobuf
//! bytes (as a hostile client sends them): never a panic, and what passes validation converts
//! to OCI resources without panicking either.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::cri::*;

use cri_server::validate;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    match sel % 9 {
        0 => {
            if let Ok(r) = RunPodSandboxRequest::decode(body) {
                let _ = validate::run_pod_sandbox(&r);
            }
        }
        1 => {
            if let Ok(r) = CreateContainerRequest::decode(body) {
                let _ = validate::create_container_request(&r);
            }
        }
        2 => {
            if let Ok(r) = UpdateContainerResourcesRequest::decode(body) {
                if validate::update_container_resources(&r).is_ok() {
                    if let Some(l) = &r.linux {
                        let merged = validate::merge_resources(None, l);
                        if validate::check_resources("linux", &merged).is_ok() {
                            let _ = cri_server::spec::resources_from_cri(&merged);
                        }
                    }
                }
            }
        }
        3 => {
            if let Ok(r) = ExecSyncRequest::decode(body) {
                let _ = validate::exec_sync(&r);
            }
        }
        4 => {
            if let Ok(r) = PullImageRequest::decode(body) {
                let _ = validate::pull_image(&r);
            }
        }
        5 => {
            if let Ok(r) = ListContainersRequest::decode(body) {
                let _ = validate::list_containers(&r);
            }
        }
        6 => {
            if let Ok(r) = ListPodSandboxRequest::decode(body) {
                let _ = validate::list_pod_sandbox(&r);
            }
        }
        7 => {
            if let Ok(r) = UpdateRuntimeConfigRequest::decode(body) {
                let _ = validate::update_runtime_config(&r);
            }
        }
        _ => {
            if let Ok(s) = std::str::from_utf8(body) {
                let _ = validate::parse_cpuset(s);
                let _ = cri_server::spec::signal::parse_image_signal(s);
            }
        }
    }
});
