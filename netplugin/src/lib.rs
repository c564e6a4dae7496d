//! Pod networking for skiff: a bridge set up through netlink, IPAM, port mappings, and the
//! execution of standard CNI plugins.

pub mod config;

pub use config::{NetworkConfig, PluginKind};
