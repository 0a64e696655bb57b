//! Request decoding: the head with httparse, then the body by Content-Length or chunked coding.
//!
//! The decoder is a small state machine over the caller's read buffer. The caller keeps the bytes
//! of the request being decoded in place (starting at offset 0 of the slice it passes) until
//! [`Decoded::Complete`] says how many to consume; positions stay valid when the caller moves the
//! unconsumed bytes to the front of its buffer. A chunked body is de-chunked into a second buffer
//! the caller owns.

use std::ops::Range;

use crate::error::{ApiError, ErrorKind};

/// Most headers a request may carry; more gets 431.
pub const MAX_HEADERS: usize = 64;

/// Framing limits, from `[http]` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line plus headers) in bytes.
    pub max_header_bytes: usize,
    /// Largest request body in bytes (after de-chunking).
    pub max_body_bytes: usize,
    /// The header (lowercase) whose value [`RequestHead::api_key`] locates: the key of the
    /// restricted repository API, if one is configured.
    pub api_key_header: Option<&'static str>,
}

/// The request methods friday serves; anything else is answered 405 by the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD: a GET whose response carries no body.
    Head,
    /// POST
    Post,
    /// Any other method.
    Other,
}

/// How the body of a request is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// The `Inference-Header-Content-Length` header (KServe binary tensor extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InferenceHeader {
    /// Not sent: the whole body is JSON.
    Absent,
    /// The JSON header is the first this many bytes of the body.
    Length(usize),
    /// Sent, but not a non-negative integer.
    Invalid,
}

/// A decoded request head. Positions are offsets into the bytes passed to
/// [`RequestDecoder::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// The path of the request target, without the query string.
    pub path: Range<usize>,
    /// HTTP/1.x minor version (0 or 1).
    pub minor_version: u8,
    /// Whether the client allows the connection to stay open after this request.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// The `Inference-Header-Content-Length` header.
    pub inference_header: InferenceHeader,
    /// Where the value of [`Limits::api_key_header`] is, if the request carries it.
    pub api_key: Option<Range<usize>>,
    /// Length of the head, including the blank line.
    pub head_len: usize,
    framing: Framing,
}

/// Where a complete request's body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// No body.
    Empty,
    /// In the read buffer at this range.
    InBuffer(Range<usize>),
    /// In the de-chunk buffer (all of it).
    Dechunked,
}

/// A complete request: its head, where its body is, and how many bytes of the read buffer it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The decoded head.
    pub head: RequestHead,
    /// Where the body is.
    pub body: Body,
    /// Bytes of the read buffer this request occupies (head, body and framing).
    pub consumed: usize,
}

/// The outcome of one [`RequestDecoder::decode`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole request is buffered.
    Complete(Message),
    /// More bytes are needed.
    Incomplete {
        /// Send `100 Continue` now (once per request, when the client asked for it).
        send_continue: bool,
        /// The read buffer must be able to hold at least this many bytes of this request.
        need: usize,
    },
}

/// A framing error. Small and `Copy`: the hot path never allocates for it. Every one of these
/// closes the connection after the error response, because the byte stream can no longer be
/// trusted to be in sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// The bytes are not HTTP/1.x.
    Malformed(&'static str),
    /// The head exceeds `http.max_header_bytes`.
    HeaderTooLarge,
    /// More than [`MAX_HEADERS`] headers.
    TooManyHeaders,
    /// The body exceeds `http.max_body_bytes`.
    BodyTooLarge,
    /// Content-Length is not a non-negative integer, or two disagree.
    BadContentLength,
    /// A transfer coding other than `chunked`.
    UnsupportedTransferEncoding,
    /// A chunked body that breaks the chunked grammar.
    BadChunk,
}

impl From<HttpError> for ApiError {
    fn from(e: HttpError) -> ApiError {
        match e {
            HttpError::Malformed(what) => {
                ApiError::invalid(format!("malformed HTTP request: {what}"))
            }
            HttpError::HeaderTooLarge => ApiError::new(
                ErrorKind::HeaderTooLarge,
                "request head is larger than http.max_header_bytes",
            ),
            HttpError::TooManyHeaders => ApiError::new(
                ErrorKind::HeaderTooLarge,
                format!("request has more than {MAX_HEADERS} headers"),
            ),
            HttpError::BodyTooLarge => ApiError::new(
                ErrorKind::PayloadTooLarge,
                "request body is larger than http.max_body_bytes",
            ),
            HttpError::BadContentLength => {
                ApiError::invalid("Content-Length must be one non-negative integer")
            }
            HttpError::UnsupportedTransferEncoding => ApiError::new(
                ErrorKind::NotImplemented,
                "only the chunked transfer coding is supported",
            ),
            HttpError::BadChunk => ApiError::invalid("malformed chunked request body"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkPhase {
    /// Expecting a chunk-size line at `pos`.
    Size,
    /// Inside chunk data, this many bytes left.
    Data(usize),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer lines until a blank line.
    Trailers,
}

#[derive(Debug, Clone)]
struct ChunkState {
    /// Offset (into the request's bytes) of the next unparsed byte.
    pos: usize,
    phase: ChunkPhase,
}

#[derive(Debug, Clone)]
enum State {
    Head,
    Body {
        head: RequestHead,
        continue_sent: bool,
        chunks: Option<ChunkState>,
    },
}

/// Decodes one request at a time from the front of a connection's read buffer.
#[derive(Debug, Clone)]
pub struct RequestDecoder {
    limits: Limits,
    state: State,
}

impl RequestDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        RequestDecoder {
            limits,
            state: State::Head,
        }
    }

    /// Whether the decoder is between requests (no partial request seen).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Head)
    }

    /// Decodes from `buf`, which must start at the first byte of the current request. A chunked
    /// body is appended to `dechunked` (cleared when a new request's head is decoded).
    pub fn decode(&mut self, buf: &[u8], dechunked: &mut Vec<u8>) -> Result<Decoded, HttpError> {
        if let State::Head = self.state {
            let Some(head) = parse_head(buf, &self.limits)? else {
                return Ok(Decoded::Incomplete {
                    send_continue: false,
                    need: buf.len() + 1,
                });
            };
            let chunks = match head.framing {
                Framing::None => {
                    let consumed = head.head_len;
                    return Ok(Decoded::Complete(Message {
                        head,
                        body: Body::Empty,
                        consumed,
                    }));
                }
                Framing::Length(_) => None,
                Framing::Chunked => {
                    dechunked.clear();
                    Some(ChunkState {
                        pos: head.head_len,
                        phase: ChunkPhase::Size,
                    })
                }
            };
            self.state = State::Body {
                head,
                continue_sent: false,
                chunks,
            };
        }
        let State::Body {
            head,
            continue_sent,
            chunks,
        } = &mut self.state
        else {
            unreachable!("the head state returned or moved to the body state above")
        };
        let progress = match (head.framing, chunks) {
            (Framing::Length(len), _) => {
                let end = head.head_len + len;
                if buf.len() >= end {
                    Some((Body::InBuffer(head.head_len..end), end))
                } else {
                    None
                }
            }
            (Framing::Chunked, Some(chunks)) => {
                decode_chunks(buf, head.head_len, chunks, dechunked, &self.limits)?
                    .map(|consumed| (Body::Dechunked, consumed))
            }
            _ => unreachable!("a body state always has Length or Chunked framing"),
        };
        match progress {
            Some((body, consumed)) => {
                let State::Body { head, .. } = std::mem::replace(&mut self.state, State::Head)
                else {
                    unreachable!("matched the body state above")
                };
                Ok(Decoded::Complete(Message {
                    head,
                    body,
                    consumed,
                }))
            }
            None => {
                let send_continue = head.expect_continue && !*continue_sent;
                *continue_sent = true;
                let need = match head.framing {
                    Framing::Length(len) => head.head_len + len,
                    _ => buf.len() + 1,
                };
                Ok(Decoded::Incomplete {
                    send_continue,
                    need,
                })
            }
        }
    }
}

/// Parses the head, or `Ok(None)` if it is not all buffered yet.
fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<RequestHead>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= limits.max_header_bytes {
                Err(HttpError::HeaderTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(e) => return Err(HttpError::Malformed(parse_error_text(e))),
    };
    if head_len > limits.max_header_bytes {
        return Err(HttpError::HeaderTooLarge);
    }
    let minor_version = req.version.unwrap_or(1);
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        _ => Method::Other,
    };
    let target = req.path.unwrap_or("/");
    let path = target_path(buf, target)?;

    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut keep_alive = minor_version >= 1;
    let mut expect_continue = false;
    let mut inference_header = InferenceHeader::Absent;
    let mut api_key = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let len = parse_decimal(h.value).ok_or(HttpError::BadContentLength)?;
            if content_length.is_some_and(|prev| prev != len) {
                return Err(HttpError::BadContentLength);
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            // The final coding must be chunked, and chunked is the only coding friday decodes.
            for coding in h.value.split(|&b| b == b',') {
                let coding = coding.trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                if !coding.eq_ignore_ascii_case(b"chunked") || chunked {
                    return Err(HttpError::UnsupportedTransferEncoding);
                }
                chunked = true;
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && minor_version == 0 {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue =
                minor_version >= 1 && h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if limits
            .api_key_header
            .is_some_and(|k| name.eq_ignore_ascii_case(k.as_bytes()))
        {
            api_key = Some(offset_in(buf, h.value));
        } else if name.eq_ignore_ascii_case(b"inference-header-content-length") {
            inference_header = match parse_decimal(h.value) {
                Some(n) => InferenceHeader::Length(n),
                None => InferenceHeader::Invalid,
            };
        }
    }
    if transfer_encoding && minor_version == 0 {
        // RFC 9112 §6.1: HTTP/1.0 has no Transfer-Encoding, so its framing is faulty.
        return Err(HttpError::Malformed(
            "an HTTP/1.0 request cannot use Transfer-Encoding; send Content-Length",
        ));
    }
    if transfer_encoding && content_length.is_some() {
        // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length (Python `requests` sends
        // both for a chunked body), and the connection closes after the response, so a request
        // smuggled behind a disagreeing Content-Length can never be read.
        content_length = None;
        keep_alive = false;
    }
    if transfer_encoding && !chunked {
        return Err(HttpError::UnsupportedTransferEncoding);
    }
    let framing = match (chunked, content_length) {
        (true, _) => Framing::Chunked,
        (false, Some(len)) if len > limits.max_body_bytes => return Err(HttpError::BodyTooLarge),
        (false, Some(0)) | (false, None) => Framing::None,
        (false, Some(len)) => Framing::Length(len),
    };
    Ok(Some(RequestHead {
        method,
        path,
        minor_version,
        keep_alive,
        expect_continue,
        inference_header,
        api_key,
        head_len,
        framing,
    }))
}

/// The range of the request target's path within `buf`, without the query; absolute-form
/// targets (`http://host/path`) are reduced to their path.
fn target_path(buf: &[u8], target: &str) -> Result<Range<usize>, HttpError> {
    // httparse hands back a slice of `buf`, so its offset is the pointer difference.
    let start = target.as_ptr() as usize - buf.as_ptr() as usize;
    // Compare bytes: the target may hold multi-byte UTF-8, so slicing the str at a fixed
    // offset could split a character (and panic).
    let scheme = ["http://", "https://"].into_iter().find(|s| {
        target
            .as_bytes()
            .get(..s.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(s.as_bytes()))
    });
    let (offset, path) = match scheme {
        // Absolute form: skip the authority. Without a path it means "/", left empty here.
        Some(s) => match target[s.len()..].find('/') {
            Some(i) => (s.len() + i, &target[s.len() + i..]),
            None => (target.len(), ""),
        },
        None if target.starts_with('/') => (0, target),
        None => return Err(HttpError::Malformed("request target must be a path")),
    };
    let len = path.find('?').unwrap_or(path.len());
    Ok(start + offset..start + offset + len)
}

/// The range of `part` (a slice httparse handed back from `buf`) within `buf`, trimmed of
/// surrounding whitespace.
fn offset_in(buf: &[u8], part: &[u8]) -> Range<usize> {
    let trimmed = part.trim_ascii();
    let start = trimmed.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + trimmed.len()
}

fn parse_decimal(value: &[u8]) -> Option<usize> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0usize, |n, &d| {
        n.checked_mul(10)?.checked_add((d - b'0') as usize)
    })
}

fn parse_error_text(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in request line",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

/// Advances the chunked-body state machine; `Ok(Some(consumed))` once the whole body (with
/// trailers) is buffered.
fn decode_chunks(
    buf: &[u8],
    head_len: usize,
    st: &mut ChunkState,
    out: &mut Vec<u8>,
    limits: &Limits,
) -> Result<Option<usize>, HttpError> {
    // Framing overhead is bounded too, so a body of tiny chunks cannot grow the buffer forever.
    let raw_limit = head_len
        .saturating_add(limits.max_body_bytes.saturating_mul(2))
        .saturating_add(limits.max_header_bytes);
    loop {
        if st.pos > raw_limit {
            return Err(HttpError::BodyTooLarge);
        }
        let rest = &buf[st.pos.min(buf.len())..];
        match st.phase {
            ChunkPhase::Size => match httparse::parse_chunk_size(rest) {
                Ok(httparse::Status::Complete((used, size))) => {
                    st.pos += used;
                    if size == 0 {
                        st.phase = ChunkPhase::Trailers;
                    } else {
                        let size = usize::try_from(size).map_err(|_| HttpError::BodyTooLarge)?;
                        if out.len().saturating_add(size) > limits.max_body_bytes {
                            return Err(HttpError::BodyTooLarge);
                        }
                        st.phase = ChunkPhase::Data(size);
                    }
                }
                Ok(httparse::Status::Partial) => {
                    if rest.len() > limits.max_header_bytes {
                        return Err(HttpError::BadChunk);
                    }
                    return Ok(None);
                }
                Err(_) => return Err(HttpError::BadChunk),
            },
            ChunkPhase::Data(left) => {
                let take = left.min(rest.len());
                if take == 0 {
                    return Ok(None);
                }
                out.extend_from_slice(&rest[..take]);
                st.pos += take;
                st.phase = if take == left {
                    ChunkPhase::DataEnd
                } else {
                    ChunkPhase::Data(left - take)
                };
            }
            ChunkPhase::DataEnd => {
                if rest.len() < 2 {
                    return Ok(None);
                }
                if &rest[..2] != b"\r\n" {
                    return Err(HttpError::BadChunk);
                }
                st.pos += 2;
                st.phase = ChunkPhase::Size;
            }
            ChunkPhase::Trailers => {
                let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                    if rest.len() > limits.max_header_bytes {
                        return Err(HttpError::HeaderTooLarge);
                    }
                    return Ok(None);
                };
                st.pos += eol + 2;
                if eol == 0 {
                    return Ok(Some(st.pos));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        api_key_header: None,
        max_header_bytes: 1024,
        max_body_bytes: 64,
    };

    fn decode_all(bytes: &[u8]) -> Result<Decoded, HttpError> {
        let mut out = Vec::new();
        RequestDecoder::new(LIMITS).decode(bytes, &mut out)
    }

    fn complete(bytes: &[u8]) -> (Message, Vec<u8>) {
        let mut out = Vec::new();
        match RequestDecoder::new(LIMITS).decode(bytes, &mut out).unwrap() {
            Decoded::Complete(m) => (m, out),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    #[test]
    fn get_without_body() {
        let req = b"GET /v2/health/ready?x=1 HTTP/1.1\r\nHost: a\r\n\r\n";
        let (m, _) = complete(req);
        assert_eq!(m.head.method, Method::Get);
        assert_eq!(&req[m.head.path.clone()], b"/v2/health/ready");
        assert!(m.head.keep_alive);
        assert_eq!(m.body, Body::Empty);
        assert_eq!(m.consumed, req.len());
    }

    #[test]
    fn content_length_body_waits_for_all_bytes() {
        let req = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        let mut d = RequestDecoder::new(LIMITS);
        let mut out = Vec::new();
        for cut in 0..req.len() {
            let mut d2 = d.clone();
            match d2.decode(&req[..cut], &mut out).unwrap() {
                Decoded::Incomplete { need, .. } => assert!(need > cut),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        match d.decode(req, &mut out).unwrap() {
            Decoded::Complete(m) => {
                assert_eq!(m.body, Body::InBuffer(req.len() - 5..req.len()));
                assert_eq!(m.consumed, req.len());
            }
            other => panic!("{other:?}"),
        }
        assert!(d.is_idle());
    }

    #[test]
    fn pipelined_requests_decode_one_at_a_time() {
        let two = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        let (m, _) = complete(two);
        assert_eq!(&two[m.head.path.clone()], b"/a");
        let (m2, _) = complete(&two[m.consumed..]);
        assert_eq!(&two[m.consumed..][m2.head.path.clone()], b"/b");
    }

    #[test]
    fn chunked_body_is_dechunked() {
        let req = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let (m, body) = complete(req);
        assert_eq!(m.body, Body::Dechunked);
        assert_eq!(body, b"Wikipedia");
        assert_eq!(&req[m.consumed..], b"NEXT");
    }

    #[test]
    fn chunked_body_arrives_byte_by_byte() {
        let req = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let mut d = RequestDecoder::new(LIMITS);
        let mut out = Vec::new();
        for cut in 1..req.len() {
            assert!(matches!(
                d.decode(&req[..cut], &mut out).unwrap(),
                Decoded::Incomplete { .. }
            ));
        }
        assert!(matches!(
            d.decode(req, &mut out).unwrap(),
            Decoded::Complete(_)
        ));
        assert_eq!(out, b"abc");
    }

    #[test]
    fn broken_chunks_are_errors() {
        let bad = [
            &b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
        ];
        for req in bad {
            assert_eq!(decode_all(req), Err(HttpError::BadChunk), "{req:?}");
        }
        let big = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nFFFF\r\n";
        assert_eq!(decode_all(big), Err(HttpError::BodyTooLarge));
    }

    #[test]
    fn expect_continue_is_signalled_once() {
        let head = b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
        let mut d = RequestDecoder::new(LIMITS);
        let mut out = Vec::new();
        assert_eq!(
            d.decode(head, &mut out).unwrap(),
            Decoded::Incomplete {
                send_continue: true,
                need: head.len() + 3
            }
        );
        assert!(matches!(
            d.decode(head, &mut out).unwrap(),
            Decoded::Incomplete {
                send_continue: false,
                ..
            }
        ));
    }

    #[test]
    fn limits_and_framing_errors() {
        assert_eq!(
            decode_all(b"POST /x HTTP/1.1\r\nContent-Length: 65\r\n\r\n"),
            Err(HttpError::BodyTooLarge)
        );
        assert_eq!(
            decode_all(b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Err(HttpError::BadContentLength)
        );
        assert_eq!(
            decode_all(b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(HttpError::BadContentLength)
        );
        assert_eq!(
            decode_all(b"POST /x HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            Err(HttpError::BadContentLength)
        );
        assert!(matches!(
            decode_all(b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        // Transfer-Encoding overrides a Content-Length (here one that disagrees with the body),
        // and the connection closes after the response.
        let (m, body) = complete(
            b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        );
        assert_eq!(m.body, Body::Dechunked);
        assert_eq!(body, b"abc");
        assert!(!m.head.keep_alive);
        assert_eq!(
            decode_all(b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Err(HttpError::UnsupportedTransferEncoding)
        );
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(2000));
        assert_eq!(decode_all(long.as_bytes()), Err(HttpError::HeaderTooLarge));
        let many: String = (0..70).map(|i| format!("X-{i}: y\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(decode_all(req.as_bytes()), Err(HttpError::TooManyHeaders));
        assert!(matches!(
            decode_all(b"\x00\x01garbage\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            decode_all(b"GET * HTTP/1.1\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn connection_semantics() {
        let (m, _) = complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!m.head.keep_alive);
        let (m, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!m.head.keep_alive);
        let (m, _) = complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(m.head.keep_alive);
    }

    #[test]
    fn non_ascii_targets_never_split_a_character() {
        // 'é' straddles bytes 6-7 and 7-8, where the scheme prefixes end.
        for target in [
            "/aaaaaé",
            "/aaaaaaé",
            "/é",
            "/v2/models/é/infer",
            "http://é/x",
        ] {
            let req = format!("GET {target} HTTP/1.1\r\n\r\n");
            let _ = decode_all(req.as_bytes());
        }
        let req = "GET /v2/models/modèle HTTP/1.1\r\n\r\n";
        let (m, _) = complete(req.as_bytes());
        assert_eq!(
            &req.as_bytes()[m.head.path.clone()],
            "/v2/models/modèle".as_bytes()
        );
    }

    #[test]
    fn absolute_form_and_inference_header() {
        let req = b"POST http://h:1/v2/models/m/infer HTTP/1.1\r\nInference-Header-Content-Length: 7\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
        let (m, _) = complete(req);
        assert_eq!(&req[m.head.path.clone()], b"/v2/models/m/infer");
        assert_eq!(m.head.inference_header, InferenceHeader::Length(7));
        let req = b"POST /x HTTP/1.1\r\nInference-Header-Content-Length: x\r\n\r\n";
        assert_eq!(
            complete(req).0.head.inference_header,
            InferenceHeader::Invalid
        );
        let req = b"GET http://h:1 HTTP/1.1\r\n\r\n";
        let (m, _) = complete(req);
        assert!(m.head.path.is_empty());
    }

    proptest! {
        #[test]
        fn any_bytes_are_a_request_an_error_or_incomplete(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut out = Vec::new();
            let mut d = RequestDecoder::new(LIMITS);
            if let Ok(Decoded::Complete(m)) = d.decode(&bytes, &mut out) {
                prop_assert!(m.consumed <= bytes.len());
                prop_assert!(m.head.path.end <= bytes.len());
            }
        }

        #[test]
        fn any_unicode_target_never_panics(target in "\\PC{0,24}") {
            let req = format!("GET {target} HTTP/1.1\r\n\r\n");
            let _ = decode_all(req.as_bytes());
            let req = format!("GET /{target} HTTP/1.1\r\n\r\n");
            let _ = decode_all(req.as_bytes());
        }

        #[test]
        fn any_suffix_after_a_valid_head_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..256), chunked in any::<bool>()) {
            let head: &[u8] = if chunked {
                b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            } else {
                b"POST /x HTTP/1.1\r\nContent-Length: 40\r\n\r\n"
            };
            let mut bytes = head.to_vec();
            bytes.extend_from_slice(&tail);
            let mut out = Vec::new();
            let mut d = RequestDecoder::new(LIMITS);
            // Feed in two steps, as a socket would.
            let _ = d.decode(&bytes[..head.len()], &mut out);
            if let Ok(Decoded::Complete(m)) = d.decode(&bytes, &mut out) {
                prop_assert!(m.consumed <= bytes.len());
                prop_assert!(out.len() <= LIMITS.max_body_bytes);
            }
        }

        #[test]
        fn content_length_bodies_round_trip(body in proptest::collection::vec(any::<u8>(), 0..64), split in 0usize..200) {
            let mut bytes = format!("POST /p HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            bytes.extend_from_slice(&body);
            let mut out = Vec::new();
            let mut d = RequestDecoder::new(LIMITS);
            let split = split.min(bytes.len());
            let first = d.decode(&bytes[..split], &mut out).unwrap();
            if split < bytes.len() {
                let incomplete = matches!(first, Decoded::Incomplete { .. });
                prop_assert!(incomplete);
            }
            match d.decode(&bytes, &mut out).unwrap() {
                Decoded::Complete(m) => {
                    let got: &[u8] = match m.body {
                        Body::InBuffer(r) => &bytes[r],
                        Body::Empty => &[],
                        Body::Dechunked => &out,
                    };
                    prop_assert_eq!(got, &body[..]);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
