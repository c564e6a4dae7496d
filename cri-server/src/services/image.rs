//! CRI ImageService.

use std::sync::Arc;

use proto::cri::image_service_server::ImageService;
use proto::cri::*;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::error::unimplemented;

/// Serves the CRI ImageService.
pub struct ImageSvc {
    #[allow(dead_code)]
    config: Arc<Config>,
}

impl ImageSvc {
    pub fn new(config: Arc<Config>) -> Self {
        Self { config }
    }
}

#[tonic::async_trait]
impl ImageService for ImageSvc {
    async fn list_images(
        &self,
        _r: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        Err(unimplemented("ListImages"))
    }
    async fn image_status(
        &self,
        _r: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        Err(unimplemented("ImageStatus"))
    }
    async fn pull_image(
        &self,
        _r: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        Err(unimplemented("PullImage"))
    }
    async fn remove_image(
        &self,
        _r: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        Err(unimplemented("RemoveImage"))
    }
    async fn image_fs_info(
        &self,
        _r: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        Err(unimplemented("ImageFsInfo"))
    }
}
