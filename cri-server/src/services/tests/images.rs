//! ListImages, ImageStatus, PullImage, RemoveImage, ImageFsInfo, and images held by containers.

use proto::cri::image_service_server::ImageService;
use proto::cri::*;
use tonic::{Code, Request};

use super::{Node, BUSYBOX, NGINX};

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec { image: image.into(), ..Default::default() })
}

impl Node {
    async fn images(&self, filter: Option<&str>) -> Vec<Image> {
        let filter = filter.map(|f| ImageFilter { image: spec(f) });
        self.img.list_images(Request::new(ListImagesRequest { filter })).await.unwrap().into_inner().images
    }

    async fn image_status(&self, image: &str) -> Result<ImageStatusResponse, tonic::Status> {
        let req = ImageStatusRequest { image: spec(image), verbose: true };
        Ok(self.img.image_status(Request::new(req)).await?.into_inner())
    }

    async fn remove_image(&self, image: &str) -> Result<(), tonic::Status> {
        self.img.remove_image(Request::new(RemoveImageRequest { image: spec(image) })).await.map(drop)
    }

    async fn pull(&self, image: &str) -> Result<String, tonic::Status> {
        let req = PullImageRequest { image: spec(image), auth: None, sandbox_config: None };
        Ok(self.img.pull_image(Request::new(req)).await?.into_inner().image_ref)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_status_of_images() {
    let n = Node::new();
    let all = n.images(None).await;
    assert_eq!(all.len(), 2);
    let nginx = all.iter().find(|i| i.repo_tags == vec![NGINX.to_string()]).expect("nginx listed");
    assert_eq!(nginx.username, "app");
    assert_eq!(nginx.spec.as_ref().unwrap().image, nginx.id);
    // By tag, by ID, by ID without its algorithm.
    assert_eq!(n.images(Some(NGINX)).await.len(), 1);
    assert_eq!(n.images(Some(&nginx.id)).await[0].id, nginx.id);
    let st = n.image_status(nginx.id.trim_start_matches("sha256:")).await.unwrap();
    assert_eq!(st.image.unwrap().repo_tags, vec![NGINX.to_string()]);
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["config"]["User"], "app");
    // Absent: an empty answer, not an error (the kubelet pulls then); a malformed filter
    // matches nothing.
    assert!(n.image_status("registry.k8s.io/pause:3.10").await.unwrap().image.is_none());
    assert!(n.images(Some("registry.k8s.io/pause:3.10")).await.is_empty());
    assert!(n.images(Some("Not/A:Valid::Ref")).await.is_empty());
    assert_eq!(n.image_status("").await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(n.image_status("Not/A:Valid::Ref").await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_adds_the_image_and_reports_registry_errors() {
    let n = Node::new();
    let pause = "registry.k8s.io/pause:3.10";
    n.fakes.images.publish(pause, serde_json::json!({"config": {"Entrypoint": ["/pause"]}}));
    let id = n.pull(pause).await.unwrap();
    assert!(id.starts_with("sha256:"));
    assert_eq!(n.image_status(pause).await.unwrap().image.unwrap().id, id);
    assert_eq!(n.images(None).await.len(), 3);
    // Not in the registry: NOT_FOUND; not a reference: INVALID_ARGUMENT, without asking it.
    let pulls = n.fakes.images.pulls();
    assert_eq!(n.pull("registry.k8s.io/nope:1").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(n.pull("UPPER/case::x").await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(n.pull("").await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(n.fakes.images.pulls(), pulls + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_image_held_by_a_container_keeps_the_container_usable() {
    let n = Node::new();
    let pod = n.run_pod("web").await;
    let c = n.create(&pod, "app", BUSYBOX).await.unwrap();
    // As containerd's CRI: the image goes, its layers stay while the container holds them.
    n.remove_image(BUSYBOX).await.unwrap();
    assert!(n.image_status(BUSYBOX).await.unwrap().image.is_none());
    assert_eq!(n.images(None).await.len(), 1);
    n.start(&c).await.unwrap();
    assert_eq!(n.status(&c).await.unwrap().state, ContainerState::ContainerRunning as i32);
    // A new container of it needs a pull.
    assert_eq!(n.create(&pod, "second", BUSYBOX).await.unwrap_err().code(), Code::NotFound);
    n.remove(&c).await.unwrap();
    assert!(n.fakes.images.holders().is_empty());
    // Removing what is absent is no error; nothing named is.
    n.remove_image(BUSYBOX).await.unwrap();
    assert_eq!(n.remove_image("").await.unwrap_err().code(), Code::InvalidArgument);
    // By ID.
    let id = n.images(Some(NGINX)).await[0].id.clone();
    n.remove_image(&id).await.unwrap();
    assert!(n.images(None).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_fs_info_reports_both_filesystems() {
    let n = Node::new();
    let fs = n.img.image_fs_info(Request::new(ImageFsInfoRequest {})).await.unwrap().into_inner();
    let mp = |u: &FilesystemUsage| u.fs_id.as_ref().unwrap().mountpoint.clone();
    assert!(mp(&fs.image_filesystems[0]).ends_with("/snapshots"));
    assert!(mp(&fs.container_filesystems[0]).ends_with("/containers"));
    assert_eq!(fs.image_filesystems[0].used_bytes.unwrap().value, 4096);
}
