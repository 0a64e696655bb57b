//! The HTTP/1.1 request decoder, fed as a connection feeds it: the bytes arrive in pieces (the
//! first input byte picks the piece size), every complete request is consumed and decoding goes
//! on with the rest, chunked bodies included. It must never panic, never claim more bytes than
//! it was given, and keep every body inside the limits.
#![no_main]

use friday::http::{Body, Decoded, Limits, RequestDecoder};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_header_bytes: 4096,
    max_body_bytes: 1 << 16,
};

fuzz_target!(|data: &[u8]| {
    let Some((&step, bytes)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 64) + 1;
    let mut decoder = RequestDecoder::new(LIMITS);
    let mut dechunked = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    loop {
        match decoder.decode(&buf, &mut dechunked) {
            Ok(Decoded::Complete(msg)) => {
                assert!(msg.consumed <= buf.len() && msg.consumed >= msg.head.head_len);
                assert!(msg.head.path.end <= msg.head.head_len);
                match msg.body {
                    Body::Empty => {}
                    Body::InBuffer(range) => {
                        assert!(range.start >= msg.head.head_len && range.end <= msg.consumed);
                        assert!(range.len() <= LIMITS.max_body_bytes);
                    }
                    Body::Dechunked => assert!(dechunked.len() <= LIMITS.max_body_bytes),
                }
                assert!(msg.consumed > 0, "a complete request consumes bytes");
                buf.drain(..msg.consumed);
            }
            Ok(Decoded::Incomplete { need, .. }) => {
                assert!(need > buf.len(), "asks for more than it has: {need} <= {}", buf.len());
                if fed == bytes.len() {
                    return;
                }
                let end = (fed + step).min(bytes.len());
                buf.extend_from_slice(&bytes[fed..end]);
                fed = end;
            }
            Err(_) => return,
        }
    }
});
