//! CRI 1.36 images through skiffd: image volumes (`Mount.image`) and image identity (one ID
//! across PullImage, ListImages, ImageStatus, ContainerStatus and ListContainers; RemoveImage
//! by one name removes the image with all its names; concurrent removals all succeed).

use skiff_tests::pods::{container_config, pod_config, BUSYBOX, NGINX};
use skiff_tests::{cri, Daemon};

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec { image: image.into(), ..Default::default() })
}

fn image_mount(path: &str, image: &str, sub: &str) -> cri::Mount {
    cri::Mount {
        container_path: path.into(),
        readonly: true,
        image: spec(image),
        image_sub_path: sub.into(),
        ..Default::default()
    }
}

async fn chain_ids(d: &Daemon, image: &str) -> Vec<String> {
    let st = d
        .images()
        .image_status(cri::ImageStatusRequest { image: spec(image), verbose: true })
        .await
        .unwrap()
        .into_inner();
    let v: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    v["chainIDs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().trim_start_matches("sha256:").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_volumes_mount_read_only_and_hold_the_image() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let nginx = d.pull(NGINX).await;
    let busybox_id = d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "iv");
    let pod = d.run_pod(&pc).await;

    let mut cc = container_config("iv", &["sleep", "1000"]);
    cc.mounts = vec![image_mount("/mnt/whole", &nginx, ""), image_mount("/mnt/etc", &busybox_id, "etc")];
    let ctr = d.create_and_start(&pod, &pc, cc).await;

    // the status names each image volume's image by its ID (what PullImage answered)
    let st = d.container_status(&ctr).await;
    let refs: Vec<(String, String)> = st
        .mounts
        .iter()
        .map(|m| (m.container_path.clone(), m.image.as_ref().map(|i| i.image_ref.clone()).unwrap_or_default()))
        .collect();
    assert!(refs.contains(&("/mnt/whole".into(), nginx.clone())), "{refs:?}");
    assert!(refs.contains(&("/mnt/etc".into(), busybox_id.clone())), "{refs:?}");

    // the content is there, read-only but executable; the sub-path is the mount's root
    let r = d.exec(&ctr, &["ls", "/mnt/etc/passwd", "/mnt/whole/bin"], 10).await.unwrap();
    assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
    let r = d.exec(&ctr, &["ls", "/mnt/etc/etc"], 10).await.unwrap();
    assert_ne!(r.exit_code, 0);
    for path in ["/mnt/whole/x", "/mnt/etc/x"] {
        let r = d.exec(&ctr, &["touch", path], 10).await.unwrap();
        assert_ne!(r.exit_code, 0, "{path} is writable");
    }
    let r = d.exec(&ctr, &["sh", "-c", "grep -E ' /mnt/(whole|etc) ' /proc/mounts"], 10).await.unwrap();
    let mounts = String::from_utf8_lossy(&r.stdout).to_string();
    assert!(
        mounts.lines().count() == 2 && mounts.lines().all(|l| l.contains(" ro,") && !l.contains("noexec")),
        "{mounts}"
    );

    // RemoveImage of an image in use succeeds (the image is gone from the lists) and its
    // snapshots stay until the container goes, as containerd does
    let busybox_chains = chain_ids(&d, &busybox_id).await;
    let chains: Vec<String> = chain_ids(&d, &nginx).await.into_iter().filter(|c| !busybox_chains.contains(c)).collect();
    assert!(!chains.is_empty());
    d.images().remove_image(cri::RemoveImageRequest { image: spec(NGINX) }).await.unwrap();
    let st = d.images().image_status(cri::ImageStatusRequest { image: spec(&nginx), verbose: false }).await.unwrap();
    assert!(st.into_inner().image.is_none());
    let snaps = d.root().join("snapshots");
    assert!(chains.iter().all(|c| snaps.join(c).exists()), "snapshots kept while in use");
    let r = d.exec(&ctr, &["ls", "/mnt/whole/bin"], 10).await.unwrap();
    assert_eq!(r.exit_code, 0);
    d.remove_pod(&pod).await;
    assert!(chains.iter().all(|c| !snaps.join(c).exists()), "snapshots released with the container");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_image_volumes_are_refused_at_create() {
    let d = Daemon::start().await;
    let id = d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "ivbad");
    let pod = d.run_pod(&pc).await;
    let try_create = |m: cri::Mount| {
        let mut cc = container_config("bad", &["sleep", "1"]);
        cc.mounts = vec![m];
        cc
    };
    // writable
    let mut m = image_mount("/mnt/v", &id, "");
    m.readonly = false;
    let e = d.create(&pod, &pc, try_create(m)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // missing sub-path, escaping sub-path
    for sub in ["not-existing", "../etc"] {
        let e = d.create(&pod, &pc, try_create(image_mount("/mnt/v", &id, sub))).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{sub}: {e:?}");
    }
    // an image that was not pulled
    let e = d
        .create(&pod, &pc, try_create(image_mount("/mnt/v", "registry.k8s.io/e2e-test-images/nginx:1.14-2", "")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    // nothing was left behind by the refused creates
    let list = d.runtime().list_containers(cri::ListContainersRequest { filter: None }).await.unwrap().into_inner();
    assert!(list.containers.is_empty());
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_image_id_everywhere_and_remove_takes_every_name() {
    let d = Daemon::start().await;
    // the same image from two registries (both mirrored to the test registry)
    let a = BUSYBOX;
    let b = "gcr.io/e2e-test-images/busybox:1.29-2";
    let ref_a = d.pull(a).await;
    let ref_b = d.pull(b).await;
    assert_eq!(ref_a, ref_b);
    assert!(ref_a.starts_with("sha256:"));
    let mut im = d.images();
    for name in [a, b, ref_a.as_str()] {
        let st = im.image_status(cri::ImageStatusRequest { image: spec(name), verbose: false }).await.unwrap();
        let img = st.into_inner().image.unwrap_or_else(|| panic!("{name} not found"));
        assert_eq!(img.id, ref_a);
        assert!(img.repo_tags.iter().any(|t| t == a) && img.repo_tags.iter().any(|t| t == b), "{:?}", img.repo_tags);
    }
    let list = im.list_images(cri::ListImagesRequest { filter: None }).await.unwrap().into_inner().images;
    assert_eq!(list.iter().filter(|i| i.id == ref_a).count(), 1);

    let pc = pod_config(&d, "ident");
    let pod = d.run_pod(&pc).await;
    let mut cc = container_config("c", &["sleep", "1000"]);
    cc.image = spec(b);
    let ctr = d.create_and_start(&pod, &pc, cc).await;
    let st = d.container_status(&ctr).await;
    assert_eq!(st.image_id, ref_a);
    let listed = d.runtime().list_containers(cri::ListContainersRequest { filter: None }).await.unwrap().into_inner();
    assert_eq!(listed.containers[0].image_id, ref_a);
    d.remove_pod(&pod).await;

    // RemoveImage by one tag removes the image with both tags
    im.remove_image(cri::RemoveImageRequest { image: spec(b) }).await.unwrap();
    for name in [a, b, ref_a.as_str()] {
        let st = im.image_status(cri::ImageStatusRequest { image: spec(name), verbose: false }).await.unwrap();
        assert!(st.into_inner().image.is_none(), "{name} still there");
    }
    let list = im.list_images(cri::ListImagesRequest { filter: None }).await.unwrap().into_inner().images;
    assert!(list.iter().all(|i| i.id != ref_a));

    // five concurrent removals of one image all succeed
    d.pull(a).await;
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let mut im = d.images();
        tasks.push(tokio::spawn(async move { im.remove_image(cri::RemoveImageRequest { image: spec(a) }).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let st = im.image_status(cri::ImageStatusRequest { image: spec(a), verbose: false }).await.unwrap();
    assert!(st.into_inner().image.is_none());
}
