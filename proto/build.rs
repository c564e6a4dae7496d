//! Generates the CRI v1 types and tonic services from the vendored `api.proto`
//! (`proto/runtime/v1/`, see its VERSION file) with the protoc of `protoc-bin-vendored`, so
//! nothing needs installing.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/runtime/v1/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        // skiffd keeps CRI configs in its records: every type is serde, and a record written
        // by an older skiffd (without a newer field) still loads.
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .message_attribute(".", "#[serde(default)]")
        .compile_with_config(config, &[proto], &["proto"])?;
    Ok(())
}
