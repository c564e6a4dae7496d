//! Manifests, indexes and image configs as a registry may send them (any bytes under any of
//! the media types skiff accepts).
#![no_main]
use libfuzzer_sys::fuzz_target;

const TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/json",
    "",
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    let ct = TYPES[sel as usize % TYPES.len()];
    let _ = imagesvc::manifest::parse_document("fuzz.example/img:tag", ct, body);
});
