//! The CRI gRPC services. `runtime` is the RuntimeService (one submodule per RPC group),
//! `image` the ImageService. They are thin: the work happens in the library crates.

pub mod image;
pub mod runtime;
#[cfg(test)]
mod tests;
