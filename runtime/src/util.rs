//! Shared helpers: atomic file writes (the workspace's one implementation, in `fsutil`).

pub use fsutil::{fsync_dir, remove_durable, write_atomic};
