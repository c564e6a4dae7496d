//! Shared helpers: atomic file writes (the workspace's one implementation, in `common::fs`).

pub use common::fs::{fsync_dir, remove_durable, write_atomic};
