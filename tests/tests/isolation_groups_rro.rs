//! Isolation features through skiffd: SupplementalGroupsPolicy (Merge adds the groups the
//! image's /etc/group lists for the user, Strict does not; `ContainerStatus.user` reports the
//! effective identity) and recursive read-only mounts (a submount of the volume refuses writes
//! too; the invalid combinations are refused), and what `Status` announces.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use skiff_tests::pods::{container_config, pod_config, read_log, BUSYBOX};
use skiff_tests::{cri, Daemon};
use tonic::Code;

const PREDEFINED_GROUP: &str = "registry.k8s.io/k8s-staging-cri-tools/test-image-predefined-group:latest";

fn sc(c: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
    c.linux.as_mut().unwrap().security_context.as_mut().unwrap()
}

fn set(v: &[i64]) -> BTreeSet<i64> {
    v.iter().copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_announces_features() {
    let d = Daemon::start().await;
    let st = d.runtime().status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
    let f = st.features.unwrap();
    assert!(f.supplemental_groups_policy);
    let h = st.runtime_handlers[0].features.unwrap();
    assert_eq!(h.recursive_read_only_mounts, runtime_has_mount_setattr());
    // user namespaces (also with the host network) are announced exactly when they work here
    let (root, state) = (d.root(), d.state());
    let userns =
        tokio::task::spawn_blocking(move || runtime::features::user_namespaces(&root, &state).is_ok()).await.unwrap();
    assert_eq!(h.user_namespaces, userns);
    assert_eq!(f.user_namespaces_host_network, userns);
}

fn runtime_has_mount_setattr() -> bool {
    let attr = [0u64; 4];
    // SAFETY: fd -1 and a zeroed attr of the right size: fails without touching any mount.
    let r = unsafe { libc::syscall(libc::SYS_mount_setattr, -1, c"".as_ptr(), 0x1000u32, attr.as_ptr(), 32usize) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supplemental_groups_merge_and_strict() {
    let d = Daemon::start().await;
    d.pull(PREDEFINED_GROUP).await;
    let pc = pod_config(&d, "groups");
    let pod = d.run_pod(&pc).await;
    // The image's user is 1000; its /etc/group puts it in group 50000.
    for (policy, want) in [
        (cri::SupplementalGroupsPolicy::Merge, vec![1000, 1234, 50000]),
        (cri::SupplementalGroupsPolicy::Strict, vec![1000, 1234]),
    ] {
        let name = format!("{policy:?}").to_lowercase();
        let mut c = container_config(&name, &["sh", "-c", "id -u; id -g; id -G"]);
        c.image = Some(cri::ImageSpec { image: PREDEFINED_GROUP.into(), ..Default::default() });
        sc(&mut c).run_as_user = Some(cri::Int64Value { value: 1000 });
        sc(&mut c).supplemental_groups = vec![1234];
        sc(&mut c).supplemental_groups_policy = policy as i32;
        let id = d.create_and_start(&pod, &pc, c).await;
        let st = d.wait_exited(&id, Duration::from_secs(20)).await;
        assert_eq!(st.exit_code, 0, "{policy:?}");
        let out: Vec<String> = read_log(Path::new(&st.log_path)).into_iter().map(|l| l.2).collect();
        assert_eq!(out[0], "1000", "{policy:?} uid");
        assert_eq!(out[1], "1000", "{policy:?} gid");
        let groups: Vec<i64> = out[2].split_whitespace().map(|g| g.parse().unwrap()).collect();
        assert_eq!(set(&groups), set(&want), "{policy:?} groups inside");
        let u = st.user.and_then(|u| u.linux).unwrap_or_else(|| panic!("{policy:?}: no ContainerStatus.user"));
        assert_eq!((u.uid, u.gid), (1000, 1000), "{policy:?}");
        assert_eq!(set(&u.supplemental_groups), set(&want), "{policy:?} groups reported");
        d.runtime().remove_container(cri::RemoveContainerRequest { container_id: id }).await.unwrap();
    }
    d.remove_pod(&pod).await;
}

fn mount_tmpfs(dir: &Path) {
    let t = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated strings; no data.
    let r = unsafe {
        libc::mount(c"tmpfs".as_ptr(), t.as_ptr(), c"tmpfs".as_ptr(), 0, c"size=1m".as_ptr() as *const libc::c_void)
    };
    assert_eq!(r, 0, "mount tmpfs on {}: {}", dir.display(), std::io::Error::last_os_error());
}

fn umount(dir: &Path) {
    let t = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
}

/// Unmounts the test's tmpfs even when an assertion fails.
struct Tmpfs(std::path::PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        umount(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_read_only_volume() {
    if !common::prerequisite(runtime_has_mount_setattr(), "mount_setattr (Linux 5.12+)") {
        return;
    }
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let vol = d.dir().join("vol");
    let sub = vol.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    mount_tmpfs(&sub);
    let _tmpfs = Tmpfs(sub.clone());
    let pc = pod_config(&d, "rro");
    let pod = d.run_pod(&pc).await;
    let mount = |ro: bool, rro: bool, prop: cri::MountPropagation| cri::Mount {
        container_path: "/v".into(),
        host_path: vol.display().to_string(),
        readonly: ro,
        recursive_read_only: rro,
        propagation: prop as i32,
        ..Default::default()
    };
    let script = "touch /v/top 2>/dev/null && echo top-rw || echo top-ro; \
                  touch /v/sub/x 2>/dev/null && echo sub-rw || echo sub-ro";
    for (name, m, want) in [
        ("plain-ro", mount(true, false, cri::MountPropagation::PropagationPrivate), "top-ro sub-rw"),
        ("rro", mount(true, true, cri::MountPropagation::PropagationPrivate), "top-ro sub-ro"),
    ] {
        let mut c = container_config(name, &["sh", "-c", script]);
        c.mounts = vec![m];
        let id = d.create_and_start(&pod, &pc, c).await;
        let st = d.wait_exited(&id, Duration::from_secs(20)).await;
        let out: Vec<String> = read_log(Path::new(&st.log_path)).into_iter().map(|l| l.2).collect();
        assert_eq!(out.join(" "), want, "{name}");
        d.runtime().remove_container(cri::RemoveContainerRequest { container_id: id }).await.unwrap();
        let _ = std::fs::remove_file(sub.join("x"));
    }
    for (name, m, what) in [
        ("rro-rw", mount(false, true, cri::MountPropagation::PropagationPrivate), "needs readonly"),
        ("rro-slave", mount(true, true, cri::MountPropagation::PropagationHostToContainer), "private propagation"),
        ("rro-shared", mount(true, true, cri::MountPropagation::PropagationBidirectional), "private propagation"),
    ] {
        let mut c = container_config(name, &["true"]);
        c.mounts = vec![m];
        let e = d
            .runtime()
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(c),
                sandbox_config: Some(pc.clone()),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
        assert!(e.message().contains(what), "{name}: {}", e.message());
    }
    d.remove_pod(&pod).await;
}
