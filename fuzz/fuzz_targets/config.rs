//! skiffd's configuration file: any text gets a config or an error naming the key, never a
//! panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = cri_server::config::Config::parse(s, std::path::Path::new("/etc/skiff/config.toml"));
});
