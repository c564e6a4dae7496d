//! The layer unpacker on hostile tar streams (plain, or gzip/zstd as detected), into a fresh
//! temp dir: it must never panic, and never write outside that dir (checked by unpacking into
//! a subdirectory and looking at its sibling).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tmp) = tempfile::tempdir() else { return };
    let dest = tmp.path().join("layer");
    let canary = tmp.path().join("outside");
    if std::fs::create_dir(&dest).is_err() || std::fs::create_dir(&canary).is_err() {
        return;
    }
    if let Ok(r) = imagesvc::unpack::decompress(data) {
        let _ = imagesvc::unpack::unpack("fuzz", r, &dest);
    }
    let names: Vec<_> = std::fs::read_dir(tmp.path()).into_iter().flatten().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names.len(), 2, "the unpacker wrote beside its directory: {names:?}");
    assert_eq!(std::fs::read_dir(&canary).map(|d| d.count()).unwrap_or(0), 0, "wrote into a sibling dir");
});
