//! The daemon skeleton: start, Version/Status/RuntimeConfig, UNIMPLEMENTED answers, socket
//! handling, configuration, shutdown.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use skiff_tests::{bin_dir, cri, Daemon};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_status_and_runtime_config() {
    let d = Daemon::start().await;
    let mut rt = d.runtime();
    let v = rt.version(cri::VersionRequest::default()).await.unwrap().into_inner();
    assert_eq!(v.runtime_name, "skiff");
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));

    let s = rt.status(cri::StatusRequest { verbose: true }).await.unwrap().into_inner();
    let conditions = s.status.unwrap().conditions;
    let runtime_ready = conditions.iter().find(|c| c.r#type == "RuntimeReady").unwrap();
    assert!(runtime_ready.status);
    let network_ready = conditions.iter().find(|c| c.r#type == "NetworkReady").unwrap();
    if !network_ready.status {
        assert!(!network_ready.reason.is_empty(), "NetworkReady false needs a reason");
    }
    let config: serde_json::Value = serde_json::from_str(&s.info["config"]).unwrap();
    assert_eq!(config["root"], d.root().to_str().unwrap());
    assert_eq!(config["network"]["bridge"], d.bridge.as_str());

    let s = rt.status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
    assert!(s.info.is_empty(), "info only with verbose");

    let c = rt.runtime_config(cri::RuntimeConfigRequest {}).await.unwrap().into_inner();
    assert_eq!(c.linux.unwrap().cgroup_driver, cri::CgroupDriver::Cgroupfs as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_0660_root_owned() {
    let d = Daemon::start().await;
    let meta = std::fs::metadata(d.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unimplemented_rpcs_say_so() {
    let d = Daemon::start().await;
    let mut rt = d.runtime();
    let err = rt.checkpoint_container(cri::CheckpointContainerRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert!(err.message().contains("CheckpointContainer"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_is_replaced_and_a_live_one_is_not() {
    let mut d = Daemon::start().await;
    // A second daemon on the same socket (other state dir) refuses to start.
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(bin_dir().join("skiffd"))
        .arg("--config")
        .arg(d.config_path())
        .arg("--root")
        .arg(other.path().join("root"))
        .arg("--state")
        .arg(other.path().join("state"))
        .arg("--listen")
        .arg(d.socket())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another skiffd is serving"), "{err}");
    // The same state dir is refused too, even on another socket.
    let out = Command::new(bin_dir().join("skiffd"))
        .arg("--config")
        .arg(d.config_path())
        .arg("--root")
        .arg(d.root())
        .arg("--state")
        .arg(d.state())
        .arg("--listen")
        .arg(other.path().join("x.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another skiffd is running"));
    // The live daemon still answers.
    d.runtime().version(cri::VersionRequest::default()).await.unwrap();

    // SIGKILL leaves a stale socket file behind; the next start replaces it.
    d.kill();
    assert!(d.socket().exists());
    d.start_again().await;
    d.runtime().version(cri::VersionRequest::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_removes_the_socket_and_exits_zero() {
    let mut d = Daemon::start().await;
    let status = d.stop().unwrap();
    assert!(status.success(), "{status}");
    assert!(!d.socket().exists());
    d.start_again().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format() {
    let d = Daemon::start_with_config("log_format = \"json\"").await;
    d.runtime().version(cri::VersionRequest::default()).await.unwrap();
    let log = d.log();
    let line = log.lines().find(|l| l.contains("skiffd serving")).expect("serving line");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["level"], "INFO");
}

#[test]
fn config_default_passes_config_check() {
    let skiffd = bin_dir().join("skiffd");
    let out = Command::new(&skiffd).args(["config", "default"]).output().unwrap();
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, &out.stdout).unwrap();
    let check = Command::new(&skiffd).args(["config", "check"]).arg(&file).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));

    std::fs::write(&file, "[registry]\nmax_concurent_downloads = 2\n").unwrap();
    let check = Command::new(&skiffd).args(["config", "check"]).arg(&file).output().unwrap();
    assert!(!check.status.success());
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(err.contains("max_concurent_downloads") && err.contains("line 2"), "{err}");
}

#[test]
fn preflight_check_reports_each_feature() {
    let out = Command::new(bin_dir().join("skiffd")).arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ["overlayfs", "namespace net", "cgroups", "seccomp", "monitor binary", "nftables"] {
        assert!(text.lines().any(|l| l.contains(name)), "no line for {name}:\n{text}");
    }
    for line in text.lines() {
        let word = line.split_whitespace().next().unwrap();
        assert!(["ok", "missing", "warn", "info"].contains(&word), "{line}");
    }
    // Exit code follows the report.
    assert_eq!(out.status.success(), !text.lines().any(|l| l.starts_with("missing")), "{text}");
}
