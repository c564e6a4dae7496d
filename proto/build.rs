fn main() {
    // Fails early with a clear message if the vendored protoc is missing for this platform.
    if let Err(e) = protoc_bin_vendored::protoc_bin_path() {
        println!("cargo:warning=protoc-bin-vendored: {e}");
    }
}
