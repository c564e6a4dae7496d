//! Image references and digests: parsing never panics, and a parsed reference prints as
//! something that parses to the same reference.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(r) = imagesvc::Reference::parse(s) {
        let again = imagesvc::Reference::parse(&r.to_string()).expect("a printed reference parses");
        assert_eq!(again.to_string(), r.to_string());
    }
    let _ = imagesvc::Digest::parse(s);
});
