//! CRI ImageService: a thin layer over [`imagesvc::ImageStore`] (behind [`Images`]). Library errors become
//! `tonic::Status` here (and only here); each RPC runs inside the per-RPC span of
//! [`crate::logging::RpcSpanLayer`].

use std::collections::HashMap;

use std::sync::Arc;

use imagesvc::{ErrorKind, ImageError, ImageRecord};
use proto::cri::image_service_server::ImageService;
use proto::cri::*;
use tonic::{Request, Response, Status};

use crate::backends::Images;

/// Serves the CRI ImageService.
pub struct ImageSvc {
    store: Arc<dyn Images>,
}

impl ImageSvc {
    pub fn new(store: Arc<dyn Images>) -> Self {
        Self { store }
    }
}

/// An image-service error as a gRPC status, prefixed with what was being done.
pub fn image_status(doing: &str, e: ImageError) -> Status {
    crate::error::status_of(doing, &e)
}

fn to_cri(r: &ImageRecord) -> Image {
    Image {
        id: r.id.to_string(),
        repo_tags: r.repo_tags.clone(),
        repo_digests: r.repo_digests.clone(),
        size: r.size,
        uid: r.uid.map(|value| Int64Value { value }),
        username: r.username.clone(),
        spec: Some(ImageSpec { image: r.id.to_string(), ..Default::default() }),
        pinned: r.pinned,
    }
}

fn image_name(spec: Option<&ImageSpec>, rpc: &str) -> Result<String, Status> {
    match spec.map(|s| s.image.trim()) {
        Some(s) if !s.is_empty() => Ok(s.to_string()),
        _ => Err(Status::invalid_argument(format!("{rpc}: no image given"))),
    }
}

fn usage(u: &imagesvc::FsUsage, timestamp: i64) -> FilesystemUsage {
    FilesystemUsage {
        timestamp,
        fs_id: Some(FilesystemIdentifier { mountpoint: u.mountpoint.display().to_string() }),
        used_bytes: Some(UInt64Value { value: u.used_bytes }),
        inodes_used: Some(UInt64Value { value: u.inodes_used }),
    }
}

#[tonic::async_trait]
impl ImageService for ImageSvc {
    type StreamImagesStream = crate::services::runtime::ListStream<StreamImagesResponse>;

    /// ListImages in messages of at most 100 images (CRI 1.36).
    async fn stream_images(
        &self,
        r: Request<StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let filter = r.into_inner().filter;
        let list = self.list_images(Request::new(ListImagesRequest { filter })).await?.into_inner();
        Ok(Response::new(crate::services::runtime::chunked(list.images, |images| StreamImagesResponse { images })))
    }

    async fn list_images(&self, r: Request<ListImagesRequest>) -> Result<Response<ListImagesResponse>, Status> {
        crate::validate::list_images(r.get_ref())?;
        let filter = r.into_inner().filter.and_then(|f| f.image).map(|s| s.image).filter(|s| !s.trim().is_empty());
        let images = match filter {
            Some(f) => match self.store.status(&f).await {
                Ok(found) => found.iter().map(to_cri).collect(),
                // A malformed filter matches nothing.
                Err(e) if e.kind() == ErrorKind::InvalidArgument => Vec::new(),
                Err(e) => return Err(image_status("listing images", e)),
            },
            None => {
                self.store.list().await.map_err(|e| image_status("listing images", e))?.iter().map(to_cri).collect()
            }
        };
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn image_status(&self, r: Request<ImageStatusRequest>) -> Result<Response<ImageStatusResponse>, Status> {
        crate::validate::image_status(r.get_ref())?;
        let req = r.into_inner();
        let name = image_name(req.image.as_ref(), "ImageStatus")?;
        let doing = format!("image status of {name:?}");
        let Some(img) = self.store.resolve(&name).await.map_err(|e| image_status(&doing, e))? else {
            tracing::debug!(image = %name, "image not present");
            return Ok(Response::new(ImageStatusResponse::default()));
        };
        let mut info = HashMap::new();
        if req.verbose {
            let v = serde_json::json!({
                "imageSpec": &*img.config,
                "chainIDs": img.record.chain_ids,
                "manifestDigest": img.record.manifest_digest,
                "layers": img.record.layers,
                "pulledAt": img.record.pulled_at,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok(Response::new(ImageStatusResponse { image: Some(to_cri(&img.record)), info }))
    }

    async fn pull_image(&self, r: Request<PullImageRequest>) -> Result<Response<PullImageResponse>, Status> {
        crate::validate::pull_image(r.get_ref())?;
        let req = r.into_inner();
        let name = image_name(req.image.as_ref(), "PullImage")?;
        let auth = req.auth.map(|a| imagesvc::Auth {
            username: a.username,
            password: a.password,
            auth: a.auth,
            server_address: a.server_address,
            identity_token: a.identity_token,
            registry_token: a.registry_token,
        });
        // In a task of its own: a pull cut off by the client's deadline still completes (and a
        // retry finds the image, or joins the store's pull under way).
        let (store, n) = (self.store.clone(), name.clone());
        let start = std::time::Instant::now();
        let rec = crate::services::runtime::container::detached(async move {
            store.pull(&n, auth).await.map_err(|e| image_status(&format!("pulling image {n:?}"), e))
        })
        .await;
        crate::metrics::METRICS.pull(rec.is_ok(), start.elapsed(), rec.as_ref().map(|r| r.size).unwrap_or(0));
        let rec = rec?;
        Ok(Response::new(PullImageResponse { image_ref: rec.id.to_string() }))
    }

    async fn remove_image(&self, r: Request<RemoveImageRequest>) -> Result<Response<RemoveImageResponse>, Status> {
        crate::validate::remove_image(r.get_ref())?;
        let name = image_name(r.into_inner().image.as_ref(), "RemoveImage")?;
        let (store, n) = (self.store.clone(), name.clone());
        let removed = crate::services::runtime::container::detached(async move {
            store.remove(&n).await.map_err(|e| image_status(&format!("removing image {n:?}"), e))
        })
        .await?;
        if !removed {
            tracing::debug!(image = %name, "remove: image not present");
        }
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(&self, _r: Request<ImageFsInfoRequest>) -> Result<Response<ImageFsInfoResponse>, Status> {
        let fi = self.store.fs_info().await.map_err(|e| image_status("image filesystem info", e))?;
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![usage(&fi.image, fi.timestamp)],
            container_filesystems: vec![usage(&fi.container, fi.timestamp)],
        }))
    }
}
