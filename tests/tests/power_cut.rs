//! A power cut right after PullImage, RunPodSandbox, CreateContainer and StartContainer
//! answered, simulated with a loop device: skiffd's root is an ext4 on a loop device over a
//! file, and the "cut" is a copy of that file taken while skiffd still runs. The copy holds
//! what reached the device (everything skiffd fsynced, and whatever the kernel happened to
//! write back), not what is still only in the page cache of the ext4 above it. A second skiffd
//! on the copy (its journal replayed at mount, a fresh state dir as `/run` is after a reboot, its
//! own bridge and range) must find the image usable, the pod NOTREADY (its namespaces died with
//! the machine) with its lease released, the started container EXITED and the created one
//! CREATED, and must remove them cleanly. Needs loop devices and `mkfs.ext4` (e2fsprogs, which
//! test.sh installs).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use skiff_tests::pods::{container_config, pod_config, BUSYBOX};
use skiff_tests::{cri, Daemon};

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Mounts the ext4 image `img` (through a loop device, detached again at its unmount) on `at`.
fn mount_image(img: &Path, at: &Path) {
    std::fs::create_dir_all(at).unwrap();
    run("mount", &["-o", "loop", &img.to_string_lossy(), &at.to_string_lossy()]);
}

/// Stops skiffd and unmounts its root (before the harness's leak check runs at drop).
fn stop_and_unmount(d: &mut Daemon) {
    let status = d.stop();
    assert!(status.map(|s| s.success()).unwrap_or(false), "skiffd exit {status:?}:\n{}", d.log());
    run("umount", &[&d.root().to_string_lossy()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_acknowledged_survives_a_simulated_power_cut() {
    let tmp = tempfile::Builder::new().prefix("skiff-powercut-").tempdir_in("/tmp").unwrap();
    let (disk, cut) = (tmp.path().join("disk.img"), tmp.path().join("cut.img"));
    std::fs::File::create(&disk).unwrap().set_len(768 << 20).unwrap();
    run("mkfs.ext4", &["-q", "-F", &disk.to_string_lossy()]);

    let mut d = Daemon::start_with_root("", |root| mount_image(&disk, root)).await;
    let image_ref = d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "before-cut");
    let pod = d.run_pod(&pc).await;
    let ip = d.pod_ip(&pod).await;
    assert!(!ip.is_empty());
    let created = d.create(&pod, &pc, container_config("created", &["true"])).await.unwrap();
    // Started last: its RUNNING record is written without waiting, so what the cut holds of
    // it may be only its durable start mark.
    let started = d.create_and_start(&pod, &pc, container_config("started", &["sleep", "1000"])).await;

    // A file written without fsync just before the cut: it must not be in the copy (whole), or
    // the copy would not be a cut.
    std::fs::write(d.root().join("canary"), "written, never synced").unwrap();

    // The cut: what the device holds now.
    run("cp", &["--sparse=always", &disk.to_string_lossy(), &cut.to_string_lossy()]);

    d.remove_pod(&pod).await;
    stop_and_unmount(&mut d);
    drop(d);

    // After the "reboot".
    let mut d = Daemon::start_with_root("", |root| mount_image(&cut, root)).await;
    let canary = std::fs::read_to_string(d.root().join("canary")).unwrap_or_default();
    assert_ne!(canary, "written, never synced", "the unsynced file survived: the copy is no power cut");
    let imgs = d.images().list_images(cri::ListImagesRequest::default()).await.unwrap().into_inner().images;
    assert!(
        imgs.iter()
            .any(|i| i.repo_tags.iter().any(|t| t == BUSYBOX)
                && (i.id == image_ref || i.repo_digests.contains(&image_ref))),
        "{BUSYBOX} ({image_ref}) listed after the cut: {imgs:?}"
    );
    let st = d.pod_status(&pod).await;
    assert_eq!(st.state, cri::PodSandboxState::SandboxNotready as i32, "{st:?}");
    assert_eq!(st.metadata.as_ref().map(|m| m.name.as_str()), Some("before-cut"));
    let leases = std::fs::read_to_string(d.root().join("network/leases.json")).unwrap_or_default();
    assert!(!leases.contains(&pod), "the dead pod's lease is released: {leases}");
    let s = d.container_status(&started).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32, "{s:?}");
    assert!(s.started_at > 0, "{s:?}");
    assert_eq!((s.exit_code, s.reason.as_str()), (255, "Unknown"), "{s:?}");
    let s = d.container_status(&created).await;
    assert_eq!(s.state, cri::ContainerState::ContainerCreated as i32, "{s:?}");
    // Its hold on the image's snapshots too: written without waiting, made durable by the
    // CREATED record's write to the same journal.
    let hold = d.root().join("containers").join(&created).join("rootfs.json");
    assert!(hold.exists(), "the created container's hold survived the cut:\n{}", d.log());

    // The image runs in a new pod; the old pod and its containers are removed cleanly.
    let pc2 = pod_config(&d, "after-cut");
    let pod2 = d.run_pod(&pc2).await;
    let c = d.create_and_start(&pod2, &pc2, container_config("reader", &["sh", "-c", "test -x /bin/busybox"])).await;
    let s = d.wait_exited(&c, Duration::from_secs(20)).await;
    assert_eq!(s.exit_code, 0, "{s:?}\n{}", d.log());
    d.remove_pod(&pod2).await;
    d.remove_pod(&pod).await;
    assert!(d.pod_ids(None).await.is_empty());
    stop_and_unmount(&mut d);
}
