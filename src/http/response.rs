//! Response encoding straight into the connection's output buffer.
//!
//! A body is built in the connection's scratch buffer (so its length is known), then the head and
//! the body are appended to the output buffer, followed by any binary tensor tails, which are
//! copied once from wherever the model left them, or, when they are large and the connection
//! can keep that memory alive, not copied at all: the connection sends them from where they lie
//! (see [`Responder::deferring`]). Nothing here allocates once the buffers have grown to their
//! working size.

use serde::Serialize;

use crate::error::{ApiError, ErrorKind};
use crate::tensor::DataType;

/// The interim response sent for `Expect: 100-continue`.
pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The reason phrase for the statuses friday sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// `Content-Type` of JSON bodies.
pub const JSON: &str = "application/json";
/// Content type of a stream of server-sent events.
pub const EVENT_STREAM: &str = "text/event-stream";
/// `Content-Type` of binary tensor bodies.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// Binary tensor data at least this large is sent from where it lies rather than copied into the
/// output buffer, by a responder that may defer it: copying tens of MiB holds the shard for tens
/// of milliseconds (mostly faulting in fresh pages), while a send of its own costs one more
/// system call. Below this, one copy is cheaper than a send.
pub const DEFER_TAILS_MIN_BYTES: usize = 256 << 10;

/// Tensor data encoded as it is sent (JSON) is written this much at a time (of its binary
/// layout: 16 Ki FP32 elements, a fraction of a millisecond), and only tensors at least this
/// large are written that way.
pub const ENCODE_SLICE_BYTES: usize = 64 << 10;

/// Writes whole elements of tensor data of `datatype` (binary layout) in a body's encoding.
pub type SliceEncoder = fn(DataType, &[u8], &mut Vec<u8>);

/// A part of a response body that the caller sends after the output buffer (see
/// [`Responder::deferring`]).
#[derive(Debug)]
pub enum TailPart {
    /// Bytes sent as they lie.
    Raw {
        /// Where they lie.
        addr: usize,
        /// How many.
        len: usize,
    },
    /// Tensor data written a slice of whole elements at a time.
    Encoded {
        /// Where its binary layout lies.
        addr: usize,
        /// Its length in bytes.
        len: usize,
        /// Its element type.
        datatype: DataType,
        /// What writes a slice of it.
        encode: SliceEncoder,
    },
    /// Bytes of the body that follow an `Encoded` part.
    Text(Vec<u8>),
}

/// What a response left for its connection to send after the output buffer.
#[derive(Debug, Default)]
pub struct Deferred {
    /// What to send, in order.
    pub parts: Vec<TailPart>,
    /// The body's length is unknown (it has `Encoded` parts): it is sent in chunked coding, the
    /// output buffer ending with the first chunk's data; the caller frames each further part as
    /// chunks and ends with the last chunk.
    pub chunked: bool,
}

impl Deferred {
    /// Forgets everything.
    pub fn clear(&mut self) {
        self.parts.clear();
        self.chunked = false;
    }
}

/// Seconds a client is told to wait after a 429 or 503.
const RETRY_AFTER_SECS: u32 = 1;

/// How a response frames the connection it is sent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseMode {
    /// The connection stays open after this response; otherwise `Connection: close`.
    pub keep_alive: bool,
    /// The request was HEAD: same headers, no body.
    pub head_only: bool,
    /// The request was HTTP/1.0, where keep-alive must be confirmed with `Connection: keep-alive`.
    pub http_1_0: bool,
}

impl ResponseMode {
    /// A response after which the connection closes.
    pub const CLOSE: ResponseMode = ResponseMode {
        keep_alive: false,
        head_only: false,
        http_1_0: false,
    };

    /// A response on a connection that stays open.
    pub const KEEP_ALIVE: ResponseMode = ResponseMode {
        keep_alive: true,
        head_only: false,
        http_1_0: false,
    };
}

/// Writes one response per call into the connection's output buffer.
pub struct Responder<'b> {
    out: &'b mut Vec<u8>,
    scratch: &'b mut Vec<u8>,
    date: &'b [u8],
    mode: ResponseMode,
    /// Where large tails go instead of the output buffer, if the caller can send them from
    /// where they lie.
    defer: Option<&'b mut Deferred>,
}

impl<'b> Responder<'b> {
    /// A responder appending to `out`, building bodies in `scratch`. `date` is the preformatted
    /// `Date` header value.
    pub fn new(
        out: &'b mut Vec<u8>,
        scratch: &'b mut Vec<u8>,
        date: &'b [u8],
        mode: ResponseMode,
    ) -> Self {
        scratch.clear();
        Responder {
            out,
            scratch,
            date,
            mode,
            defer: None,
        }
    }

    /// Lets this responder leave binary tails of [`DEFER_TAILS_MIN_BYTES`] or more where they
    /// lie, and large tensors' JSON data unwritten (see [`Responder::send_scratch_with`]): what
    /// it leaves goes into `tails`, and only the head and the rest of the body go into the output
    /// buffer. The caller then owes the client those parts, right after what the output buffer
    /// holds, and must keep the memory they lie in alive and unchanged until they are sent (or
    /// write them out before it lets go of it).
    pub fn deferring(mut self, tails: &'b mut Deferred) -> Self {
        tails.clear();
        self.defer = Some(tails);
        self
    }

    /// Whether the last response left its tails where they lie (see [`Responder::deferring`]).
    pub fn deferred(&self) -> bool {
        self.defer.as_deref().is_some_and(|d| !d.parts.is_empty())
    }

    /// Whether the response says the connection stays open.
    pub fn keep_alive(&self) -> bool {
        self.mode.keep_alive
    }

    /// Makes the response close the connection (`Connection: close`).
    pub fn close_connection(&mut self) {
        self.mode.keep_alive = false;
    }

    /// The scratch buffer, cleared, for building a body in (see [`Responder::send_scratch`]).
    pub fn scratch(&mut self) -> &mut Vec<u8> {
        self.scratch.clear();
        self.scratch
    }

    /// Sends a JSON body.
    pub fn json<T: Serialize + ?Sized>(&mut self, status: u16, value: &T) {
        self.scratch.clear();
        serde_json::to_writer(&mut *self.scratch, value)
            .expect("serializing to a Vec cannot fail for friday's plain response types");
        self.send_scratch(status, &[]);
    }

    /// Sends a ready-made body.
    pub fn bytes(&mut self, status: u16, content_type: &str, body: &[u8]) {
        self.head(status, content_type, body.len(), None);
        if !self.mode.head_only {
            self.out.extend_from_slice(body);
        }
    }

    /// Sends `{"error": message}` with the status its kind maps to.
    pub fn error(&mut self, err: &ApiError) {
        #[derive(Serialize)]
        struct Body<'m> {
            error: &'m str,
        }
        self.json(
            err.status(),
            &Body {
                error: &err.message,
            },
        );
    }

    /// What the scratch buffer holds now (a body built in it, before it is sent).
    pub fn scratch_bytes(&self) -> &[u8] {
        self.scratch
    }

    /// Sends a stored infer response: its JSON header in two parts with the request's `id` (if
    /// any) between them, then, for an answer with binary outputs, their bytes
    /// (`Inference-Header-Content-Length` says where the JSON ends), framed as
    /// [`Responder::send_scratch`] frames the same answer. Everything is copied into the output
    /// buffer.
    pub fn send_spliced(
        &mut self,
        status: u16,
        before_id: &[u8],
        id: Option<&str>,
        after_id: &[u8],
        binary: Option<&[u8]>,
    ) {
        self.scratch.clear();
        if let Some(id) = id.filter(|id| !id.is_empty()) {
            self.scratch.extend_from_slice(b",\"id\":");
            serde_json::to_writer(&mut *self.scratch, id)
                .expect("serializing a string to a Vec cannot fail");
        }
        let json_len = before_id.len() + self.scratch.len() + after_id.len();
        let binary = match binary {
            None => {
                self.head(status, JSON, json_len, None);
                &[][..]
            }
            Some(b) => {
                self.head(status, OCTET_STREAM, json_len + b.len(), Some(json_len));
                b
            }
        };
        if self.mode.head_only {
            return;
        }
        self.out.reserve(json_len + binary.len());
        self.out.extend_from_slice(before_id);
        self.out.extend_from_slice(self.scratch);
        self.out.extend_from_slice(after_id);
        self.out.extend_from_slice(binary);
    }

    /// Sends the scratch buffer as the body. Without `tails` it is a JSON body; with them, the
    /// scratch holds the JSON header of a binary tensor body, `tails` (binary tensor data) follow
    /// it, and `Inference-Header-Content-Length` says where the JSON ends.
    pub fn send_scratch(&mut self, status: u16, tails: &[&[u8]]) {
        let len = self.scratch.len() + tails.iter().map(|t| t.len()).sum::<usize>();
        if tails.is_empty() {
            self.head(status, JSON, len, None);
        } else {
            self.head(status, OCTET_STREAM, len, Some(self.scratch.len()));
        }
        if self.mode.head_only {
            return;
        }
        self.out.extend_from_slice(self.scratch);
        let tails_len = len - self.scratch.len();
        if let Some(defer) = self.defer.as_deref_mut() {
            if tails_len >= DEFER_TAILS_MIN_BYTES {
                defer.parts.extend(tails.iter().map(|t| TailPart::Raw {
                    addr: t.as_ptr() as usize,
                    len: t.len(),
                }));
                return;
            }
        }
        for t in tails {
            self.out.extend_from_slice(t);
        }
    }

    /// Sends the scratch buffer as a JSON body into which tensor data goes: `data` says, in
    /// order, at which byte of the scratch each tensor's elements go, and `encode` writes them.
    /// A responder that may defer writes the body in chunked coding and leaves the tensors for
    /// the caller to write a slice at a time (HTTP/1.0 has no chunked coding, and a HEAD answer
    /// needs the length: both get the whole body written now).
    pub fn send_scratch_with(
        &mut self,
        status: u16,
        data: &[(usize, DataType, &[u8])],
        encode: SliceEncoder,
    ) {
        let Some(&(first, ..)) = data.first() else {
            return self.send_scratch(status, &[]);
        };
        if self.defer.is_none() || self.mode.http_1_0 || self.mode.head_only {
            let mut body = Vec::new();
            let mut from = 0;
            for &(at, datatype, bytes) in data {
                body.extend_from_slice(&self.scratch[from..at]);
                encode(datatype, bytes, &mut body);
                from = at;
            }
            body.extend_from_slice(&self.scratch[from..]);
            *self.scratch = body;
            return self.send_scratch(status, &[]);
        }
        self.head_with(status, JSON, None, None);
        if let Some(defer) = self.defer.as_deref_mut() {
            defer.chunked = true;
            write_chunk(self.out, &self.scratch[..first]);
            for (i, &(at, datatype, bytes)) in data.iter().enumerate() {
                defer.parts.push(TailPart::Encoded {
                    addr: bytes.as_ptr() as usize,
                    len: bytes.len(),
                    datatype,
                    encode,
                });
                let end = data.get(i + 1).map_or(self.scratch.len(), |d| d.0);
                defer
                    .parts
                    .push(TailPart::Text(self.scratch[at..end].to_vec()));
            }
        }
    }

    /// Starts a response whose body is written later, in parts, as it is made (see
    /// [`write_chunk`]): in chunked coding, or for an HTTP/1.0 client, which has none, as a body
    /// that ends when the connection closes. Returns whether the body is chunked.
    pub fn start_stream(&mut self, status: u16, content_type: &str) -> bool {
        if self.mode.http_1_0 {
            self.mode.keep_alive = false;
        }
        self.head_with(status, content_type, None, None);
        !self.mode.http_1_0
    }

    fn head(
        &mut self,
        status: u16,
        content_type: &str,
        content_length: usize,
        inference_header: Option<usize>,
    ) {
        self.head_with(status, content_type, Some(content_length), inference_header);
    }

    /// Writes the head; without a length, the body follows in chunked coding.
    fn head_with(
        &mut self,
        status: u16,
        content_type: &str,
        content_length: Option<usize>,
        inference_header: Option<usize>,
    ) {
        let mut num = itoa::Buffer::new();
        let out = &mut *self.out;
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(num.format(status).as_bytes());
        out.push(b' ');
        out.extend_from_slice(reason_phrase(status).as_bytes());
        out.extend_from_slice(b"\r\nDate: ");
        out.extend_from_slice(self.date);
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(content_type.as_bytes());
        match content_length {
            Some(n) => {
                out.extend_from_slice(b"\r\nContent-Length: ");
                out.extend_from_slice(num.format(n).as_bytes());
            }
            None if self.mode.http_1_0 => {}
            None => out.extend_from_slice(b"\r\nTransfer-Encoding: chunked"),
        }
        if let Some(n) = inference_header {
            out.extend_from_slice(b"\r\nInference-Header-Content-Length: ");
            out.extend_from_slice(num.format(n).as_bytes());
        }
        if status == ErrorKind::Overloaded.status() || status == ErrorKind::Unavailable.status() {
            out.extend_from_slice(b"\r\nRetry-After: ");
            out.extend_from_slice(num.format(RETRY_AFTER_SECS).as_bytes());
        }
        if status == ErrorKind::MethodNotAllowed.status() {
            out.extend_from_slice(b"\r\nAllow: GET, HEAD, POST");
        }
        if !self.mode.keep_alive {
            out.extend_from_slice(b"\r\nConnection: close");
        } else if self.mode.http_1_0 {
            out.extend_from_slice(b"\r\nConnection: keep-alive");
        }
        out.extend_from_slice(b"\r\n\r\n");
    }
}

/// Appends `data` as one chunk of chunked coding (nothing, if it is empty: an empty chunk would
/// end the body).
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut digits = [0u8; 16];
    out.extend_from_slice(format_hex(data.len(), &mut digits));
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

fn format_hex(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut headers);
        let n = match r.parse(bytes).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        let hs = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        (r.code.unwrap(), hs, bytes[n..].to_vec())
    }

    #[test]
    fn json_response_is_well_formed() {
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        let mut r = Responder::new(
            &mut out,
            &mut scratch,
            b"Thu, 01 Jan 1970 00:00:00 GMT",
            ResponseMode::KEEP_ALIVE,
        );
        r.json(200, &serde_json::json!({"ready": true}));
        let (status, headers, body) = parse(&out);
        assert_eq!(status, 200);
        assert!(headers.contains(&("content-length".into(), body.len().to_string())));
        assert!(headers.contains(&("content-type".into(), JSON.into())));
        assert!(!headers.iter().any(|(k, _)| k == "connection"));
        assert_eq!(body, br#"{"ready":true}"#);
    }

    #[test]
    fn errors_carry_status_retry_after_and_close() {
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        let mut r = Responder::new(&mut out, &mut scratch, b"d", ResponseMode::CLOSE);
        r.error(&ApiError::unavailable("draining"));
        let (status, headers, body) = parse(&out);
        assert_eq!(status, 503);
        assert!(headers.contains(&("retry-after".into(), "1".into())));
        assert!(headers.contains(&("connection".into(), "close".into())));
        assert_eq!(body, br#"{"error":"draining"}"#);
    }

    #[test]
    fn large_tails_are_deferred_only_to_a_responder_that_may() {
        let big = vec![7u8; DEFER_TAILS_MIN_BYTES];
        let (mut out, mut scratch, mut tails) = (Vec::new(), Vec::new(), Deferred::default());
        let mut r = Responder::new(&mut out, &mut scratch, b"d", ResponseMode::KEEP_ALIVE)
            .deferring(&mut tails);
        r.scratch().extend_from_slice(b"{}");
        r.send_scratch(200, &[b"abc", &big]);
        let (_, headers, body) = parse(&out);
        let total = (2 + 3 + big.len()).to_string();
        assert!(headers.contains(&("content-length".into(), total)));
        assert_eq!(body, b"{}", "only the JSON header is copied");
        let raw: Vec<_> = tails
            .parts
            .iter()
            .map(|p| match p {
                TailPart::Raw { addr, len } => (*addr, *len),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            raw,
            [
                (b"abc".as_ptr() as usize, 3),
                (big.as_ptr() as usize, big.len())
            ]
        );
        assert!(!tails.chunked);
        // Small tails are copied even when they may be deferred.
        let mut out = Vec::new();
        let mut r = Responder::new(&mut out, &mut scratch, b"d", ResponseMode::KEEP_ALIVE)
            .deferring(&mut tails);
        r.scratch().extend_from_slice(b"{}");
        r.send_scratch(200, &[&big[1..]]);
        assert!(tails.parts.is_empty());
        assert_eq!(parse(&out).2.len(), 2 + big.len() - 1);
    }

    #[test]
    fn binary_tails_follow_the_json_header() {
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        let mut r = Responder::new(&mut out, &mut scratch, b"d", ResponseMode::KEEP_ALIVE);
        r.scratch().extend_from_slice(b"{}");
        r.send_scratch(200, &[b"abc", b"de"]);
        let (_, headers, body) = parse(&out);
        assert!(headers.contains(&("inference-header-content-length".into(), "2".into())));
        assert!(headers.contains(&("content-type".into(), OCTET_STREAM.into())));
        assert!(headers.contains(&("content-length".into(), "7".into())));
        assert_eq!(body, b"{}abcde");
    }

    #[test]
    fn head_requests_get_no_body() {
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        let mode = ResponseMode {
            head_only: true,
            ..ResponseMode::KEEP_ALIVE
        };
        let mut r = Responder::new(&mut out, &mut scratch, b"d", mode);
        r.bytes(200, JSON, b"{\"live\":true}");
        let (_, headers, body) = parse(&out);
        assert!(headers.contains(&("content-length".into(), "13".into())));
        assert!(body.is_empty());
    }

    #[test]
    fn http_1_0_keep_alive_is_confirmed() {
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        let mode = ResponseMode {
            http_1_0: true,
            ..ResponseMode::KEEP_ALIVE
        };
        Responder::new(&mut out, &mut scratch, b"d", mode).bytes(200, JSON, b"{}");
        let (_, headers, _) = parse(&out);
        assert!(headers.contains(&("connection".into(), "keep-alive".into())));
    }
}
