//! Images for skiff: references, registry client, content store, snapshots, unpacking, image
//! metadata and garbage collection.

pub mod config;

pub use config::RegistryConfig;
