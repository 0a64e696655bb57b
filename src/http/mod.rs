//! Sans-I/O HTTP/1.1: bytes in, decoded requests out; responses encoded into a byte buffer.
//!
//! This module owns message framing (request head, Content-Length and chunked bodies, `Expect:
//! 100-continue`, keep-alive) and the limits on it. It never touches a socket or a clock, never
//! allocates per request beyond the caller's buffers, and never panics on any input: every byte
//! string is either a request, "need more bytes", or an [`HttpError`].

mod request;
mod response;

pub use request::{
    Body, Decoded, HttpError, InferenceHeader, Limits, Message, Method, RequestDecoder,
    RequestHead, MAX_HEADERS,
};
pub use response::{
    reason_phrase, write_chunk, Deferred, Responder, ResponseMode, SliceEncoder, TailPart,
    CONTINUE_100, ENCODE_SLICE_BYTES, EVENT_STREAM, JSON, LAST_CHUNK, OCTET_STREAM,
};
