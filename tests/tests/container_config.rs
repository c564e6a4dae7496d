//! What CreateContainer makes of the CRI config and the image: users (run_as_user,
//! run_as_username, run_as_group, supplemental groups, the image's User as uid, name,
//! uid:gid, name:gid, groups from the image's /etc/group), readonly rootfs, bind mounts
//! (readonly, and targets that are symlinks inside the image resolving inside the rootfs),
//! entrypoint/cmd/args/env/workdir merging, cgroup resources, oom_score_adj clamping, an
//! OOM-killed container, and container names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_tests::pods::{container_config, pod_config, read_log, BUSYBOX};
use skiff_tests::{cri, Daemon};
use tonic::Code;

fn image(name: &str) -> String {
    format!("registry.k8s.io/k8s-staging-cri-tools/{name}:latest")
}

fn sc(c: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
    c.linux.as_mut().unwrap().security_context.as_mut().unwrap()
}

/// Runs a container to its end; returns (exit code, its stdout+stderr lines).
async fn run_to_end(d: &Daemon, pod: &str, pc: &cri::PodSandboxConfig, cfg: cri::ContainerConfig) -> (i32, String) {
    let id = d.create_and_start(pod, pc, cfg).await;
    let st = d.wait_exited(&id, Duration::from_secs(20)).await;
    let out: Vec<String> = read_log(Path::new(&st.log_path)).into_iter().map(|l| l.2).collect();
    d.runtime().remove_container(cri::RemoveContainerRequest { container_id: id }).await.unwrap();
    (st.exit_code, out.join("\n"))
}

async fn sh(d: &Daemon, id: &str, script: &str) -> (i32, String) {
    let out = d.exec(id, &["sh", "-c", script], 20).await.unwrap_or_else(|e| panic!("exec {script:?}: {e:?}"));
    (out.exit_code, String::from_utf8_lossy(&out.stdout).trim().to_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_from_config_and_image() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    for i in [
        "test-image-user-uid",
        "test-image-user-username",
        "test-image-user-uid-group",
        "test-image-user-username-group",
        "test-image-predefined-group",
    ] {
        d.pull(&image(i)).await;
    }
    let pc = pod_config(&d, "users");
    let pod = d.run_pod(&pc).await;
    let ids = "echo $(id -u) $(id -g) $(id -G)";
    let mut n = 0;
    let mut case = |img: &str, f: &dyn Fn(&mut cri::ContainerConfig)| {
        n += 1;
        let mut c = container_config(&format!("u{n}"), &["sh", "-c", ids]);
        c.image = Some(cri::ImageSpec { image: img.into(), ..Default::default() });
        f(&mut c);
        c
    };
    let cases = vec![
        ("busybox default", case(BUSYBOX, &|_| {}), "0 0 0 10"),
        ("run_as_user", case(BUSYBOX, &|c| sc(c).run_as_user = Some(cri::Int64Value { value: 1234 })), "1234 0 0"),
        (
            "run_as_user + run_as_group + supplemental",
            case(BUSYBOX, &|c| {
                sc(c).run_as_user = Some(cri::Int64Value { value: 1234 });
                sc(c).run_as_group = Some(cri::Int64Value { value: 5678 });
                sc(c).supplemental_groups = vec![4242];
            }),
            "1234 5678 5678 4242",
        ),
        ("run_as_username", case(BUSYBOX, &|c| sc(c).run_as_username = "www-data".into()), "33 33 33"),
        ("image uid", case(&image("test-image-user-uid"), &|_| {}), "1002 0 0"),
        ("image username", case(&image("test-image-user-username"), &|_| {}), "33 33 33"),
        ("image uid:gid", case(&image("test-image-user-uid-group"), &|_| {}), "1003 1004 1004"),
        ("image name:gid", case(&image("test-image-user-username-group"), &|_| {}), "33 1004 1004"),
        (
            "image user with groups in /etc/group",
            case(&image("test-image-predefined-group"), &|_| {}),
            "1000 1000 1000 50000",
        ),
        (
            "run_as_user over the image's user",
            case(&image("test-image-user-uid"), &|c| sc(c).run_as_user = Some(cri::Int64Value { value: 0 })),
            "0 0 0 10",
        ),
    ];
    for (what, cfg, want) in cases {
        let (code, out) = run_to_end(&d, &pod, &pc, cfg).await;
        assert_eq!((code, out.as_str()), (0, want), "{what}");
    }
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_rootfs_and_bind_mounts() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "mounts");
    let pod = d.run_pod(&pc).await;
    let vol = d.dir().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("from-host"), "host-data\n").unwrap();
    // Where the symlinks in the image point to, seen from the host: must stay untouched.
    let decoy = d.dir().join("decoy");
    std::fs::create_dir_all(&decoy).unwrap();

    let mut cfg = container_config("m", &["sleep", "1000"]);
    sc(&mut cfg).readonly_rootfs = true;
    for (path, ro) in [("/data-rw", false), ("/data-ro", true), ("/escape-abs", false), ("/escape-rel/sub", true)] {
        cfg.mounts.push(cri::Mount {
            container_path: path.into(),
            host_path: vol.display().to_string(),
            readonly: ro,
            ..Default::default()
        });
    }
    let id = d.create(&pod, &pc, cfg).await.unwrap();
    // Symlinks in the container's own layer (as if the image had them) pointing at the host's
    // decoy dir: absolute, and relative climbing past the root.
    let upper = d.root().join("containers").join(&id).join("upper");
    assert!(upper.is_dir(), "no writable layer at {}", upper.display());
    std::os::unix::fs::symlink(&decoy, upper.join("escape-abs")).unwrap();
    let rel = PathBuf::from("../../../../../../../../..").join(decoy.strip_prefix("/").unwrap());
    std::os::unix::fs::symlink(&rel, upper.join("escape-rel")).unwrap();
    d.runtime().start_container(cri::StartContainerRequest { container_id: id.clone() }).await.unwrap();

    // Read-only rootfs; /dev/shm, bind mounts (rw) and the pod files still work.
    let (code, _) = sh(&d, &id, "touch /new-file").await;
    assert_ne!(code, 0, "the readonly rootfs is writable");
    assert_eq!(sh(&d, &id, "touch /dev/shm/ok && echo ok").await, (0, "ok".into()));
    assert_eq!(sh(&d, &id, "hostname").await, (0, "mounts".into()));
    assert_eq!(sh(&d, &id, "cat /data-ro/from-host").await, (0, "host-data".into()));
    let (code, _) = sh(&d, &id, "touch /data-ro/nope").await;
    assert_ne!(code, 0, "the readonly bind mount is writable");
    assert_eq!(sh(&d, &id, "echo from-ctr > /data-rw/from-ctr && echo ok").await.0, 0);
    assert_eq!(std::fs::read_to_string(vol.join("from-ctr")).unwrap(), "from-ctr\n");

    // The symlinked targets resolved inside the rootfs: the volume is there in the container...
    assert_eq!(sh(&d, &id, "cat /escape-abs/from-host").await, (0, "host-data".into()));
    assert_eq!(sh(&d, &id, "cat /escape-rel/sub/from-host").await, (0, "host-data".into()));
    // ...and nothing was mounted on the host's decoy.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let decoy_s = decoy.display().to_string();
    assert!(
        !mountinfo.lines().any(|l| l.split_whitespace().nth(4).is_some_and(|mp| mp.starts_with(&decoy_s))),
        "a mount landed on the host's {decoy_s}"
    );
    assert_eq!(std::fs::read_dir(&decoy).unwrap().count(), 0, "something was created in the host's decoy dir");
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_args_env_workdir_merging() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let nnp = "registry.k8s.io/e2e-test-images/nonewprivs:1.3";
    d.pull(nnp).await;
    let pc = pod_config(&d, "merge");
    let pod = d.run_pod(&pc).await;
    let path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    let mk = |name: &str, img: &str, cmd: &[&str], args: &[&str]| {
        let mut c = container_config(name, cmd);
        c.image = Some(cri::ImageSpec { image: img.into(), ..Default::default() });
        c.args = args.iter().map(|s| s.to_string()).collect();
        c
    };
    // (config, expected args): image busybox has Cmd [sh]; nonewprivs Entrypoint [nnp], no Cmd.
    let cases = [
        (mk("c1", BUSYBOX, &[], &[]), vec!["sh"]),
        (mk("c2", BUSYBOX, &["echo"], &[]), vec!["echo"]),
        (mk("c3", BUSYBOX, &[], &["echo", "x"]), vec!["echo", "x"]),
        (mk("c4", BUSYBOX, &["echo"], &["a", "b"]), vec!["echo", "a", "b"]),
        (mk("c5", nnp, &[], &[]), vec!["/usr/local/bin/nnp"]),
        (mk("c6", nnp, &[], &["arg"]), vec!["/usr/local/bin/nnp", "arg"]),
        (mk("c7", nnp, &["sh"], &[]), vec!["sh"]),
    ];
    for (cfg, want) in cases {
        let name = cfg.metadata.clone().unwrap().name;
        let id = d.create(&pod, &pc, cfg).await.unwrap();
        let info = d.container_info(&id).await;
        let args: Vec<String> = serde_json::from_value(info["runtimeSpec"]["process"]["args"].clone()).unwrap();
        assert_eq!(args, want, "{name}");
        let env: Vec<String> = serde_json::from_value(info["runtimeSpec"]["process"]["env"].clone()).unwrap();
        assert!(env.contains(&path.to_owned()), "{name}: {env:?}");
        assert_eq!(info["runtimeSpec"]["process"]["cwd"], "/", "{name}");
        d.runtime().remove_container(cri::RemoveContainerRequest { container_id: id }).await.unwrap();
    }

    // Env: config entries override the image's (PATH) and are added; working_dir applies.
    let mut cfg = container_config("env", &["sh", "-c", "echo \"$PATH|$FOO|$EMPTY|$(pwd)|$HOME\""]);
    cfg.envs = vec![
        cri::KeyValue { key: "FOO".into(), value: "bar baz".into() },
        cri::KeyValue { key: "PATH".into(), value: "/bin:/custom".into() },
        cri::KeyValue { key: "EMPTY".into(), value: "".into() },
    ];
    cfg.working_dir = "/tmp".into();
    let (code, out) = run_to_end(&d, &pod, &pc, cfg).await;
    assert_eq!((code, out.as_str()), (0, "/bin:/custom|bar baz||/tmp|/root"));
    // A working dir that does not exist in the image is created.
    let mut cfg = container_config("wd", &["pwd"]);
    cfg.working_dir = "/does/not/exist/yet".into();
    let (code, out) = run_to_end(&d, &pod, &pc, cfg).await;
    assert_eq!((code, out.as_str()), (0, "/does/not/exist/yet"));
    d.remove_pod(&pod).await;
}

fn hierarchy(controller: &str) -> PathBuf {
    skiff_tests::cgroup_v1_hierarchies()
        .into_iter()
        .find(|h| h.file_name().is_some_and(|n| n.to_string_lossy().split(',').any(|c| c == controller)))
        .unwrap_or_else(|| panic!("no v1 {controller} hierarchy"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_resources_oom_score_adj_and_oom_kill() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "res");
    let pod = d.run_pod(&pc).await;
    let mut cfg = container_config("limited", &["sleep", "1000"]);
    cfg.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        cpu_shares: 512,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        oom_score_adj: -900,
        ..Default::default()
    });
    let id = d.create_and_start(&pod, &pc, cfg).await;
    let info = d.container_info(&id).await;
    let cg = info["cgroupPath"].as_str().unwrap().trim_start_matches('/').to_owned();
    assert!(cg.starts_with(d.cgroup_parent.trim_start_matches('/')), "{cg}");
    let read = |ctl: &str, file: &str| {
        std::fs::read_to_string(hierarchy(ctl).join(&cg).join(file))
            .unwrap_or_else(|e| panic!("{ctl}/{cg}/{file}: {e}"))
    };
    assert_eq!(read("memory", "memory.limit_in_bytes").trim(), (64u64 << 20).to_string());
    assert_eq!(read("cpu", "cpu.shares").trim(), "512");
    assert_eq!(read("cpu", "cpu.cfs_quota_us").trim(), "50000");
    assert_eq!(read("cpu", "cpu.cfs_period_us").trim(), "100000");
    let pid = info["pid"].as_i64().unwrap();
    assert!(read("memory", "cgroup.procs").lines().any(|l| l == pid.to_string()), "pid {pid} not in the cgroup");
    // oom_score_adj: -900 asked, clamped to skiffd's own value (no CAP_SYS_RESOURCE).
    let floor: i32 =
        std::fs::read_to_string(format!("/proc/{}/oom_score_adj", d.pid().unwrap())).unwrap().trim().parse().unwrap();
    let got: i32 = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap().trim().parse().unwrap();
    assert_eq!(got, (-900).max(floor));
    // A positive value is applied as asked (exec'd processes inherit it).
    let mut cfg = container_config("positive", &["sleep", "1000"]);
    cfg.linux.as_mut().unwrap().resources =
        Some(cri::LinuxContainerResources { oom_score_adj: 500, ..Default::default() });
    let pos = d.create_and_start(&pod, &pc, cfg).await;
    assert_eq!(sh(&d, &pos, "cat /proc/1/oom_score_adj").await, (0, "500".into()));

    // An OOM kill: reason OOMKilled.
    let mut cfg =
        container_config("oom", &["sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=1; echo dd-exit $?; exit 1"]);
    cfg.linux.as_mut().unwrap().resources =
        Some(cri::LinuxContainerResources { memory_limit_in_bytes: 16 << 20, ..Default::default() });
    let oom = d.create_and_start(&pod, &pc, cfg).await;
    let st = d.wait_exited(&oom, Duration::from_secs(30)).await;
    let log: Vec<_> = read_log(Path::new(&st.log_path)).into_iter().map(|l| l.2).collect();
    assert_eq!(st.reason, "OOMKilled", "{st:?} log {log:?}");
    assert_ne!(st.exit_code, 0);
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_names() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc1 = pod_config(&d, "names1");
    let pc2 = pod_config(&d, "names2");
    let p1 = d.run_pod(&pc1).await;
    let p2 = d.run_pod(&pc2).await;
    let a = d.create(&p1, &pc1, container_config("same", &["true"])).await.unwrap();
    // The same name in another pod, or with another attempt, is fine.
    d.create(&p2, &pc2, container_config("same", &["true"])).await.unwrap();
    let mut next = container_config("same", &["true"]);
    next.metadata.as_mut().unwrap().attempt = 1;
    let b = d.create(&p1, &pc1, next.clone()).await.unwrap();
    let err = d.create(&p1, &pc1, next).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&b), "{err:?}");
    // Filters by label and state see them apart.
    let list = d
        .runtime()
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                label_selector: HashMap::from([("container".into(), "same".into())]),
                pod_sandbox_id: p1.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(list.len(), 2);
    // Removed: the name is free again.
    d.runtime().remove_container(cri::RemoveContainerRequest { container_id: a }).await.unwrap();
    d.create(&p1, &pc1, container_config("same", &["true"])).await.unwrap();
    // A pod that is not ready takes no new containers.
    d.runtime().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: p2.clone() }).await.unwrap();
    let err = d.create(&p2, &pc2, container_config("other", &["true"])).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    d.remove_pod(&p1).await;
    d.remove_pod(&p2).await;
}

/// `runtime.default_ulimits` reaches every container's process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_ulimits_apply_to_containers() {
    let d = Daemon::start_with_config("[runtime]\ndefault_ulimits = [\"nofile=1000:2000\", \"core=0\"]").await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "ulimits");
    let pod = d.run_pod(&pc).await;
    let id =
        d.create_and_start(&pod, &pc, container_config("u", &["sh", "-c", "ulimit -n; ulimit -Hn; ulimit -c"])).await;
    d.wait_exited(&id, Duration::from_secs(10)).await;
    let lines: Vec<String> = read_log(&Path::new(&pc.log_directory).join("u.log")).into_iter().map(|l| l.2).collect();
    assert_eq!(lines, ["1000", "2000", "0"]);
    d.remove_pod(&pod).await;
}
