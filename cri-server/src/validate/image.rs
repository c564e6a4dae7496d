//! ImageService requests: image references and pull credentials.

#![deny(clippy::arithmetic_side_effects)]

use proto::cri::*;
use tonic::Status;

use super::common::*;

fn image_spec(field: &str, s: Option<&ImageSpec>) -> Result<(), Status> {
    if let Some(s) = s {
        check_str(field, &s.image, MAX_IMAGE_REF)?;
        check_str(&format!("{field}.user_specified_image"), &s.user_specified_image, MAX_IMAGE_REF)?;
        check_str(&format!("{field}.runtime_handler"), &s.runtime_handler, MAX_NAME)?;
        check_annotations(&format!("{field}.annotations"), &s.annotations)?;
    }
    Ok(())
}

/// PullImage.
pub fn pull_image(req: &PullImageRequest) -> Result<(), Status> {
    image_spec("image", req.image.as_ref())?;
    if let Some(a) = &req.auth {
        for (field, v) in [
            ("auth.username", &a.username),
            ("auth.password", &a.password),
            ("auth.auth", &a.auth),
            ("auth.server_address", &a.server_address),
            ("auth.identity_token", &a.identity_token),
            ("auth.registry_token", &a.registry_token),
        ] {
            check_str(field, v, MAX_AUTH)?;
        }
    }
    Ok(())
}

/// ImageStatus.
pub fn image_status(req: &ImageStatusRequest) -> Result<(), Status> {
    image_spec("image", req.image.as_ref())
}

/// RemoveImage.
pub fn remove_image(req: &RemoveImageRequest) -> Result<(), Status> {
    image_spec("image", req.image.as_ref())
}

/// ListImages.
pub fn list_images(req: &ListImagesRequest) -> Result<(), Status> {
    image_spec("filter.image", req.filter.as_ref().and_then(|f| f.image.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let req = |s: String| PullImageRequest {
            image: Some(ImageSpec { image: s, ..Default::default() }),
            ..Default::default()
        };
        pull_image(&req("busybox".into())).unwrap();
        assert!(pull_image(&req("b".repeat(MAX_IMAGE_REF + 1))).is_err());
        let auth = PullImageRequest {
            auth: Some(AuthConfig { password: "p".repeat(MAX_AUTH + 1), ..Default::default() }),
            ..req("busybox".into())
        };
        assert!(pull_image(&auth).unwrap_err().message().contains("auth.password"));
    }
}
