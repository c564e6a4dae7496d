//! manifests/install.sh and uninstall.sh, run for real into a temporary prefix (every path moved
//! by the scripts' variables, its own bridge, nftables table and cgroup parent; skiffd in the
//! background mode): install writes the config and crictl.yaml and starts skiffd; a pod runs;
//! uninstall refuses while the pod exists; `--force --purge` removes the pod through skiffd and
//! then everything skiff made, and nothing is left.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use skiff_tests::pods::{container_config, BUSYBOX};
use skiff_tests::{bin_dir, cgroup_v1_hierarchies, cri, processes_mentioning, registry, unique_suffix};

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

struct Paths {
    dir: tempfile::TempDir,
}

impl Paths {
    fn p(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }
    fn run(&self, script: &str, args: &[&str]) -> std::process::Output {
        let vars = [
            ("PREFIX", "prefix"),
            ("ETC_DIR", "etc"),
            ("UNIT_DIR", "units"),
            ("ROOT", "root"),
            ("STATE", "state"),
            ("LOG_FILE", "log/skiffd.log"),
            ("PID_FILE", "skiffd.pid"),
            ("CRICTL_YAML", "crictl.yaml"),
        ];
        let mut cmd = Command::new("bash");
        cmd.arg(manifests().join(script)).args(args).env("SKIFF_INIT", "background");
        for (k, v) in vars {
            cmd.env(k, self.p(v));
        }
        let out = cmd.output().unwrap();
        eprintln!(
            "--- {script} {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_run_a_pod_uninstall_leaves_nothing() {
    let paths = Paths { dir: tempfile::Builder::new().prefix("skiff-inst-").tempdir_in("/tmp").unwrap() };
    let suffix = unique_suffix();
    let bridge = format!("ski{suffix}");
    let table = format!("skiff_{bridge}");
    let cgparent = format!("/skiff-inst-{suffix}");
    let n = rand::random::<u16>() & 0x7ff;
    let reg = format!("http://{}", registry());
    std::fs::create_dir_all(paths.p("etc")).unwrap();
    std::fs::write(
        paths.p("etc/config.toml"),
        format!(
            "[runtime]\ndefault_cgroup_parent = \"{cgparent}\"\n[registry.mirrors]\n\"registry.k8s.io\" = [\"{reg}\"]\n\
             [network]\nbridge = \"{bridge}\"\npod_cidr = \"10.{}.{}.0/24\"\n",
            224 + (n >> 8),
            n & 0xff
        ),
    )
    .unwrap();

    let out = paths.run("install.sh", &["--from", bin_dir().to_str().unwrap(), "--no-deps"]);
    assert!(out.status.success());
    assert!(paths.p("prefix/bin/skiffd").is_file() && paths.p("prefix/bin/skiff-monitor").is_file());
    assert!(paths.p("etc/config.toml.default").is_file());
    let crictl = std::fs::read_to_string(paths.p("crictl.yaml")).unwrap();
    let socket = paths.p("state/skiff.sock");
    assert!(crictl.contains(&format!("runtime-endpoint: unix://{}", socket.display())), "{crictl}");
    let pid: i32 = std::fs::read_to_string(paths.p("skiffd.pid")).unwrap().trim().parse().unwrap();

    // A pod with a running container.
    let ch = skiff_tests::connect(&socket).await.unwrap();
    let mut rt = cri::runtime_service_client::RuntimeServiceClient::new(ch.clone());
    let mut img = cri::image_service_client::ImageServiceClient::new(ch);
    img.pull_image(cri::PullImageRequest {
        image: Some(cri::ImageSpec { image: BUSYBOX.into(), ..Default::default() }),
        ..Default::default()
    })
    .await
    .unwrap();
    let pc = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "inst".into(),
            namespace: "default".into(),
            uid: format!("uid-{suffix}"),
            attempt: 0,
        }),
        log_directory: paths.p("podlogs").to_string_lossy().into_owned(),
        ..Default::default()
    };
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(pc.clone()), runtime_handler: String::new() })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let c = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("sleep", &["sleep", "1000"])),
            sandbox_config: Some(pc),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest { container_id: c }).await.unwrap();
    drop(rt);
    drop(img);

    // Refused while the pod exists; nothing changed.
    let out = paths.run("uninstall.sh", &["--purge"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&pod) && err.contains("--force"), "{err}");
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok(), "skiffd stopped");

    let out = paths.run("uninstall.sh", &["--force", "--purge"]);
    assert!(out.status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut left = Vec::new();
    for rel in
        ["prefix/bin/skiffd", "prefix/bin/skiff-monitor", "etc", "root", "state", "log/skiffd.log", "crictl.yaml"]
    {
        if paths.p(rel).exists() {
            left.push(format!("file {rel}"));
        }
    }
    let dir = paths.dir.path().to_string_lossy().into_owned();
    for pid in processes_mentioning(&dir) {
        left.push(format!("process {pid}"));
    }
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
        left.push(format!("skiffd {pid}"));
    }
    for line in std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines() {
        if line.split_whitespace().nth(4).is_some_and(|mp| mp.starts_with(&dir)) {
            left.push(format!("mount {line}"));
        }
    }
    if Path::new("/sys/class/net").join(&bridge).exists() {
        left.push(format!("bridge {bridge}"));
        let _ = Command::new("ip").args(["link", "del", &bridge]).status();
    }
    let nft = Command::new("nft").args(["list", "table", "inet", &table]).output().unwrap();
    if nft.status.success() {
        left.push(format!("nft table {table}"));
        let _ = Command::new("nft").args(["delete", "table", "inet", &table]).status();
    }
    for h in cgroup_v1_hierarchies() {
        let p = h.join(cgparent.trim_start_matches('/'));
        if p.exists() {
            left.push(format!("cgroup {}", p.display()));
        }
    }
    assert!(left.is_empty(), "left behind: {left:#?}");
}
