//! Images for skiff: references, registry client, content store, snapshots, unpacking, image
//! metadata and garbage collection.
//!
//! Layout under the root dir: `content/blobs/sha256/<hex>` (verified blobs), `content/ingest/`
//! (partial downloads, emptied at startup), `snapshots/<chain-id hex>/fs` (one unpacked layer
//! each), `containers/<id>/{upper,work,rootfs.json}` (writable layers and their holds on
//! snapshots), `metadata/images.json` (image records).
//!
//! Entry point: [`ImageStore`].

#![deny(unsafe_op_in_unsafe_fn)]

pub mod config;
pub mod content;
mod durable;
pub mod error;
pub mod manifest;
pub mod meta;
pub mod reference;
pub mod registry;
pub mod snapshot;
pub mod store;
mod sys;
pub mod unpack;

pub use config::RegistryConfig;
pub use error::{ErrorKind, ImageError, Result};
pub use meta::ImageRecord;
pub use reference::{Digest, Reference};
pub use registry::Auth;
pub use snapshot::RootfsMount;
pub use store::{FsInfo, FsUsage, Image, ImageStore, ImageStoreConfig, ImageVolume, RootfsPrep};
