//! CNI network configuration lists as found in the conf dir, and plugin results as a plugin
//! prints them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let _ = netplugin::cni::result_ips(&v);
    let _ = netplugin::cni::ConfList::from_json(std::path::Path::new("/etc/cni/net.d/10-fuzz.conflist"), v);
});
