//! Library-level pulls against the test registry on 127.0.0.1:5000 (started by
//! `shared/testimages/registry-up`; CI starts it). Skipped when it is not running.

use imagesvc::{ImageStore, ImageStoreConfig, RegistryConfig, RootfsMount};

fn registry_up() -> bool {
    std::net::TcpStream::connect("127.0.0.1:5000").is_ok()
}

async fn store(root: &std::path::Path) -> ImageStore {
    let mut reg = RegistryConfig::default();
    reg.mirrors.insert("registry.k8s.io".into(), vec!["http://127.0.0.1:5000".into()]);
    ImageStore::open(ImageStoreConfig { root: root.to_path_buf(), registry: reg }).await.unwrap()
}

fn count_files(p: &std::path::Path) -> usize {
    std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_mount_release_remove() {
    if !registry_up() {
        eprintln!("test registry not running; skipped");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let s = store(root.path()).await;
    // Through the mirror, keeping the upstream name; v2s2 image.
    let rec = s.pull("registry.k8s.io/e2e-test-images/busybox:1.29-2", None).await.unwrap();
    assert_eq!(rec.repo_tags, vec!["registry.k8s.io/e2e-test-images/busybox:1.29-2".to_string()]);
    assert!(rec.repo_digests[0].starts_with("registry.k8s.io/e2e-test-images/busybox@sha256:"));
    let img = s.resolve("registry.k8s.io/e2e-test-images/busybox:1.29-2").await.unwrap().unwrap();
    let cmd = img.config.config().as_ref().unwrap().cmd().clone().unwrap();
    assert_eq!(cmd, vec!["sh".to_string()]);
    // by ID too
    assert!(s.resolve(img.id()).await.unwrap().is_some());

    // Index + non-root user, and a direct loopback registry reference.
    let u = s.pull("127.0.0.1:5000/k8s-staging-cri-tools/test-image-user-username-group:latest", None).await.unwrap();
    assert_eq!((u.uid, u.username.as_str()), (None, "www-data"));
    let t = s.pull("127.0.0.1:5000/k8s-staging-cri-tools/test-image-tags:1", None).await.unwrap();
    assert_eq!(t.chain_ids.len(), 2);
    assert_eq!(t.chain_ids[0], rec.chain_ids[0], "base layer shared");

    // Concurrent pulls of the same image share the work.
    let (a, b) = tokio::join!(
        s.pull("registry.k8s.io/e2e-test-images/nginx:1.14-2", None),
        s.pull("registry.k8s.io/e2e-test-images/nginx:1.14-2", None)
    );
    assert_eq!(a.unwrap().id, b.unwrap().id);

    // Rootfs: mount, read, unmount, release.
    let m = s.prepare_rootfs("registry.k8s.io/e2e-test-images/nginx:1.14-2", "ctr-test-1").await.unwrap();
    assert_eq!(m.lowerdirs.len(), 2);
    let target = root.path().join("mnt");
    std::fs::create_dir(&target).unwrap();
    let m2 = m.clone();
    let t2 = target.clone();
    tokio::task::spawn_blocking(move || m2.mount(&t2)).await.unwrap().unwrap();
    assert!(target.join("bin/busybox").is_file());
    assert!(target.join("usr/sbin/nginx").is_file());
    std::fs::write(target.join("new-file"), b"x").unwrap();
    assert!(m.upperdir.join("new-file").is_file());
    RootfsMount::unmount(&target).unwrap();
    RootfsMount::unmount(&target).unwrap();

    // The image cannot lose its snapshots while the container holds them.
    let nginx_id = s.status("registry.k8s.io/e2e-test-images/nginx:1.14-2").await.unwrap().unwrap().id;
    assert!(s.remove("registry.k8s.io/e2e-test-images/nginx:1.14-2").await.unwrap());
    for c in &m.lowerdirs {
        assert!(c.is_dir(), "held snapshot kept");
    }
    // StartContainer prepares again: same layout although the image is gone.
    assert_eq!(s.prepare_rootfs(nginx_id.as_str(), "ctr-test-1").await.unwrap(), m);
    assert!(s.prepare_rootfs(nginx_id.as_str(), "ctr-test-2").await.is_err(), "new containers need the image");
    // The hold survives a restart too.
    drop(s);
    let s = store(root.path()).await;
    assert_eq!(s.rootfs_holders().await, vec!["ctr-test-1".to_string()]);
    for c in &m.lowerdirs {
        assert!(c.is_dir(), "held snapshot kept across restart");
    }
    s.release_rootfs("ctr-test-1").await.unwrap();
    s.release_rootfs("ctr-test-1").await.unwrap();
    assert!(!m.lowerdirs[0].exists(), "unheld snapshot deleted");
    assert!(m.lowerdirs[1].exists(), "base layer still used by busybox");

    // A snapshot gone from the disk: the image is reported missing, and no hold and no
    // writable layer are left behind.
    let fs = root.path().join("snapshots").join(rec.chain_ids[0].hex()).join("fs");
    let aside = root.path().join("snapshots").join("aside");
    std::fs::rename(&fs, &aside).unwrap();
    let e = s.prepare_rootfs("registry.k8s.io/e2e-test-images/busybox:1.29-2", "ctr-test-3").await.unwrap_err();
    assert!(matches!(e, imagesvc::ImageError::ImageNotFound(ref m) if m.contains("is missing")), "{e}");
    assert!(s.rootfs_holders().await.is_empty());
    assert_eq!(count_files(&root.path().join("containers")), 0);
    // The same through a creation's halves: the hold is counted at once, the check fails on
    // the blocking half, and the release undoes the hold.
    let prep = s.begin_rootfs("registry.k8s.io/e2e-test-images/busybox:1.29-2", "ctr-test-4").await.unwrap();
    assert_eq!(s.rootfs_holders().await, vec!["ctr-test-4".to_string()]);
    let e = prep.hold().unwrap_err();
    assert!(matches!(e, imagesvc::ImageError::ImageNotFound(ref m) if m.contains("is missing")), "{e}");
    s.release_rootfs("ctr-test-4").await.unwrap();
    assert!(s.rootfs_holders().await.is_empty());
    std::fs::rename(&aside, &fs).unwrap();
    // Both halves, at once on two threads; a second begin for the same container is refused.
    let prep = s.begin_rootfs("registry.k8s.io/e2e-test-images/busybox:1.29-2", "ctr-test-5").await.unwrap();
    let p2 = prep.clone();
    let (a, b) =
        tokio::join!(tokio::task::spawn_blocking(move || prep.hold()), tokio::task::spawn_blocking(move || p2.dirs()));
    a.unwrap().unwrap();
    b.unwrap().unwrap();
    let layer = root.path().join("containers/ctr-test-5");
    assert!(layer.join("upper").is_dir() && layer.join("work").is_dir());
    assert!(matches!(
        s.begin_rootfs("registry.k8s.io/e2e-test-images/busybox:1.29-2", "ctr-test-5").await,
        Err(imagesvc::ImageError::InvalidArgument(_))
    ));
    // What StartContainer asks for then is the same layer.
    let m = s.prepare_rootfs("registry.k8s.io/e2e-test-images/busybox:1.29-2", "ctr-test-5").await.unwrap();
    assert_eq!(m.upperdir, layer.join("upper"));
    // The hold is in the journal: it survives a restart.
    drop(s);
    let s = store(root.path()).await;
    assert_eq!(s.rootfs_holders().await, vec!["ctr-test-5".to_string()]);
    s.release_rootfs("ctr-test-5").await.unwrap();
    assert_eq!(count_files(&root.path().join("containers")), 0);

    // Restart: still there.
    drop(s);
    let s = store(root.path()).await;
    assert_eq!(s.list().await.unwrap().len(), 3);
    for r in s.list().await.unwrap() {
        assert!(s.remove(r.id.as_str()).await.unwrap());
    }
    assert!(!s.remove("busybox").await.unwrap(), "absent is fine");
    assert_eq!(count_files(&root.path().join("content/blobs/sha256")), 0);
    assert_eq!(count_files(&root.path().join("snapshots")), 0);
    assert_eq!(count_files(&root.path().join("containers")), 0);
    let fi = s.fs_info().await.unwrap();
    assert!(fi.image.inodes_used >= 1);
}
