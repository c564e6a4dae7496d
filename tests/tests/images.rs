//! ImageService against the test registry (127.0.0.1:5000 as the mirror of registry.k8s.io):
//! pulls by tag, digest and index, non-root users, list/status/remove round trips, absent
//! images, image fs info, and a restart between pull and list.

use skiff_tests::cri::*;
use skiff_tests::Daemon;

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec { image: image.into(), ..Default::default() })
}

async fn pull(d: &Daemon, image: &str) -> String {
    d.images()
        .pull_image(PullImageRequest { image: spec(image), ..Default::default() })
        .await
        .unwrap_or_else(|e| panic!("pull {image}: {e}\n{}", d.log()))
        .into_inner()
        .image_ref
}

async fn status(d: &Daemon, image: &str) -> Option<Image> {
    d.images().image_status(ImageStatusRequest { image: spec(image), verbose: false }).await.unwrap().into_inner().image
}

async fn list(d: &Daemon) -> Vec<Image> {
    d.images().list_images(ListImagesRequest::default()).await.unwrap().into_inner().images
}

async fn remove(d: &Daemon, image: &str) {
    d.images().remove_image(RemoveImageRequest { image: spec(image) }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_list_status_remove_round_trip() {
    let d = Daemon::start().await;
    let id = pull(&d, BUSYBOX).await;
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");

    let imgs = list(&d).await;
    assert_eq!(imgs.len(), 1);
    let img = &imgs[0];
    assert_eq!(img.id, id);
    assert_eq!(img.repo_tags, vec![BUSYBOX.to_string()]);
    assert_eq!(img.repo_digests.len(), 1);
    assert!(img.repo_digests[0].starts_with("registry.k8s.io/e2e-test-images/busybox@sha256:"));
    assert!(img.size > 1000);
    assert_eq!(img.uid, None, "no User in busybox");

    // Status by tag, by ID (full, bare hex, short prefix), by repo digest.
    for r in [BUSYBOX, &id, id.trim_start_matches("sha256:"), &id[7..19], &img.repo_digests[0]] {
        assert_eq!(status(&d, r).await.map(|i| i.id), Some(id.clone()), "status of {r}");
    }
    // Verbose info carries the OCI config.
    let v =
        d.images().image_status(ImageStatusRequest { image: spec(BUSYBOX), verbose: true }).await.unwrap().into_inner();
    let info: serde_json::Value = serde_json::from_str(&v.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["config"]["Cmd"][0], "sh");

    // Filtered list.
    let f = d
        .images()
        .list_images(ListImagesRequest { filter: Some(ImageFilter { image: spec(BUSYBOX) }) })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(f.len(), 1);
    let f = d
        .images()
        .list_images(ListImagesRequest { filter: Some(ImageFilter { image: spec("nothing:here") }) })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(f.is_empty());

    // Image fs info: real usage, mountpoints.
    let fs = d.images().image_fs_info(ImageFsInfoRequest {}).await.unwrap().into_inner();
    let u = &fs.image_filesystems[0];
    assert!(u.fs_id.as_ref().unwrap().mountpoint.ends_with("/snapshots"));
    assert!(u.used_bytes.as_ref().unwrap().value > 1_000_000, "{u:?}");
    assert!(u.inodes_used.as_ref().unwrap().value > 10, "{u:?}");
    assert!(fs.container_filesystems[0].fs_id.as_ref().unwrap().mountpoint.ends_with("/containers"));

    // Remove by tag; again (absent is fine); status is empty.
    remove(&d, BUSYBOX).await;
    remove(&d, BUSYBOX).await;
    remove(&d, &id).await;
    assert!(status(&d, BUSYBOX).await.is_none());
    assert!(list(&d).await.is_empty());
    let root = d.root();
    assert_eq!(std::fs::read_dir(root.join("content/blobs/sha256")).unwrap().count(), 0, "blobs deleted");
    assert_eq!(std::fs::read_dir(root.join("snapshots")).unwrap().count(), 0, "snapshots deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_digest_and_remove_by_digest() {
    let d = Daemon::start().await;
    let id = pull(&d, BUSYBOX).await;
    let digest_ref = status(&d, BUSYBOX).await.unwrap().repo_digests[0].clone();
    remove(&d, &id).await;
    assert!(status(&d, &id).await.is_none());

    let id2 = pull(&d, &digest_ref).await;
    assert_eq!(id2, id);
    let img = status(&d, &digest_ref).await.unwrap();
    assert!(img.repo_tags.is_empty(), "pulled by digest: no tag");
    assert_eq!(img.repo_digests, vec![digest_ref.clone()]);
    // tag + digest: the digest wins (as with containerd)
    let both = digest_ref.replace("@", ":1.29-2@");
    assert_eq!(pull(&d, &both).await, id);
    remove(&d, &digest_ref).await;
    assert!(list(&d).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_with_several_tags_and_users() {
    let d = Daemon::start().await;
    let mut ids = Vec::new();
    for t in ["1", "2", "3"] {
        ids.push(pull(&d, &format!("registry.k8s.io/k8s-staging-cri-tools/test-image-tags:{t}")).await);
    }
    assert!(ids.iter().all(|i| *i == ids[0]), "one image behind the index");
    let img = status(&d, "registry.k8s.io/k8s-staging-cri-tools/test-image-tags:2").await.unwrap();
    assert_eq!(img.repo_tags.len(), 3);

    for (name, uid, user) in [
        ("test-image-user-uid", Some(1002), ""),
        ("test-image-user-username", None, "www-data"),
        ("test-image-user-uid-group", Some(1003), ""),
        ("test-image-user-username-group", None, "www-data"),
    ] {
        let r = format!("registry.k8s.io/k8s-staging-cri-tools/{name}:latest");
        pull(&d, &r).await;
        let img = status(&d, &r).await.unwrap();
        assert_eq!(img.uid.map(|u| u.value), uid, "{name}");
        assert_eq!(img.username, user, "{name}");
    }
    // Removing one image by ID leaves the others (and their shared base layer) intact.
    remove(&d, &ids[0]).await;
    assert!(status(&d, "registry.k8s.io/k8s-staging-cri-tools/test-image-tags:1").await.is_none());
    assert_eq!(list(&d).await.len(), 4);
    assert!(status(&d, "registry.k8s.io/k8s-staging-cri-tools/test-image-user-uid:latest").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_invalid_and_missing_images() {
    let d = Daemon::start().await;
    // Absent: empty response, no error.
    let r = d
        .images()
        .image_status(ImageStatusRequest { image: spec("docker.io/library/nothing:here"), verbose: true })
        .await
        .unwrap()
        .into_inner();
    assert!(r.image.is_none() && r.info.is_empty());
    // Invalid reference: InvalidArgument naming it.
    for bad in ["Upper/Case", "busybox:bad tag", "x@sha256:123"] {
        let e = d.images().pull_image(PullImageRequest { image: spec(bad), ..Default::default() }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e}");
        assert!(e.message().contains(bad), "{e}");
    }
    let e = d.images().pull_image(PullImageRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // Not in the registry: NotFound.
    let e = d
        .images()
        .pull_image(PullImageRequest { image: spec("registry.k8s.io/no/such-image:1"), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    assert!(list(&d).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_survive_a_restart() {
    let mut d = Daemon::start().await;
    let a = pull(&d, BUSYBOX).await;
    let b = pull(&d, "registry.k8s.io/e2e-test-images/nginx:1.14-2").await;
    let before = list(&d).await;
    d.restart().await;
    let mut after = list(&d).await;
    let mut before = before;
    before.sort_by(|x, y| x.id.cmp(&y.id));
    after.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(before, after);
    assert!(status(&d, &a).await.is_some() && status(&d, &b).await.is_some());
    // And still removable afterwards.
    remove(&d, &a).await;
    d.restart().await;
    assert_eq!(list(&d).await.len(), 1);
}
