//! The monitor socket's frames (skiffd reads the monitor's, the monitor reads skiffd's): any
//! bytes decode to messages or an error; never a panic or an allocation beyond the frame limit.
#![no_main]
use libfuzzer_sys::fuzz_target;
use runtime::monitor::protocol::{self, ExecReport, Request, Response, StartReport};

fn drain<T: serde::de::DeserializeOwned>(mut buf: &[u8]) {
    while let Ok(Some((_msg, n))) = protocol::take_frame::<T>(buf) {
        assert!(n >= 4 && n <= buf.len());
        buf = &buf[n..];
    }
}

fuzz_target!(|data: &[u8]| {
    drain::<Request>(data);
    drain::<Response>(data);
    drain::<ExecReport>(data);
    let _ = serde_json::from_slice::<StartReport>(data);
    let mut cur = std::io::Cursor::new(data);
    while let Ok(Some(_)) = protocol::read_frame::<_, Response>(&mut cur) {}
});
