//! Every kind of bad input gets its documented status and a clear `{"error": …}`, and the server
//! goes on serving: on the same connection when the framing is intact, on a new one otherwise.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Sends raw bytes on a fresh connection; returns the response.
fn raw(server: &Server, bytes: &[u8]) -> (Response, Client) {
    let mut c = server.client();
    c.send(bytes);
    let r = c.read_response();
    (r, c)
}

/// Asserts a framing error: status, error text, connection closed, and the server still serves.
fn framing_error(server: &Server, bytes: &[u8], status: u16, needle: &str) {
    let (r, mut c) = raw(server, bytes);
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.error().contains(needle),
        "{:?} lacks {needle:?}",
        r.error()
    );
    assert!(r.closes(), "framing errors close the connection");
    assert!(c.is_closed(Duration::from_secs(5)));
    assert_eq!(server.client().get("/v2/health/ready").status, 200);
}

#[test]
fn malformed_http_closes_the_connection_with_a_clear_error() {
    for shards in [1, 2] {
        let s = Server::start(shards);
        framing_error(&s, b"\x00\x01\x02garbage\r\n\r\n", 400, "malformed HTTP");
        framing_error(&s, b"GET /v2 HTTP/9.9\r\n\r\n", 400, "malformed HTTP");
        let big = format!("GET /v2 HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
        framing_error(&s, big.as_bytes(), 431, "max_header_bytes");
        let many: String = (0..80).map(|i| format!("X-{i}: y\r\n")).collect();
        framing_error(
            &s,
            format!("GET /v2 HTTP/1.1\r\n{many}\r\n").as_bytes(),
            431,
            "headers",
        );
        framing_error(
            &s,
            b"POST /v2/models/identity/infer HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
            413,
            "max_body_bytes",
        );
        framing_error(
            &s,
            b"POST /v2/models/identity/infer HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            400,
            "Content-Length",
        );
        framing_error(
            &s,
            b"POST /v2/models/identity/infer HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "HTTP/1.0",
        );
        framing_error(
            &s,
            b"POST /v2/models/identity/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
            400,
            "chunked",
        );
        framing_error(
            &s,
            b"POST /v2/models/identity/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef",
            400,
            "chunked",
        );
        framing_error(
            &s,
            b"POST /v2/models/identity/infer HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
            "chunked",
        );
    }
}

/// Asserts a request error that leaves the connection open and usable.
fn request_error(c: &mut Client, path: &str, body: &[u8], status: u16, needle: &str) {
    let r = c.request("POST", path, &[("Content-Type", "application/json")], body);
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.error().contains(needle),
        "{:?} lacks {needle:?}",
        r.error()
    );
    assert!(!r.closes());
    let ok = c.post_json(
        "/v2/models/identity/infer",
        &json!({"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[1]}]}),
    );
    assert_eq!(
        ok.status, 200,
        "the next request on the same connection is served"
    );
}

#[test]
fn bad_infer_requests_fail_alone() {
    for shards in [1, 2] {
        let s = Server::start(shards);
        let mut c = s.client();
        let id = "/v2/models/identity/infer";
        request_error(
            &mut c,
            id,
            b"{not json",
            400,
            "failed to parse the request JSON",
        );
        request_error(&mut c, id, b"", 400, "failed to parse");
        request_error(
            &mut c,
            id,
            br#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[1e300]}]}"#,
            400,
            "out of range for FP32",
        );
        request_error(
            &mut c,
            id,
            br#"{"inputs":[{"name":"INPUT0","shape":[1,2],"datatype":"INT32","data":[1,2]}]}"#,
            400,
            "expects FP32",
        );
        request_error(
            &mut c,
            id,
            br#"{"inputs":[{"name":"INPUT0","shape":[1,3],"datatype":"FP32","data":[1,2]}]}"#,
            400,
            "has 3 elements but data has 2",
        );
        request_error(
            &mut c,
            id,
            br#"{"inputs":[{"name":"INPUT9","shape":[1,1],"datatype":"FP32","data":[1]}]}"#,
            400,
            "unexpected inference input 'INPUT9'",
        );
        request_error(
            &mut c,
            id,
            br#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":["x"]}]}"#,
            400,
            "got string",
        );
        request_error(
            &mut c,
            id,
            br#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[1]}],"outputs":[{"name":"NOPE"}]}"#,
            400,
            "unexpected inference output 'NOPE'",
        );
        request_error(
            &mut c,
            "/v2/models/simple/infer",
            br#"{"inputs":[{"name":"INPUT0","shape":[1,16],"datatype":"INT32","data":[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]}]}"#,
            400,
            "expects input 'INPUT1'",
        );
        request_error(
            &mut c,
            "/v2/models/simple/infer",
            br#"{"inputs":[{"name":"INPUT0","shape":[1,4],"datatype":"INT32","data":[1,2,3,4]},{"name":"INPUT1","shape":[1,4],"datatype":"INT32","data":[1,2,3,4]}]}"#,
            400,
            "unexpected shape",
        );
        request_error(
            &mut c,
            "/v2/models/nope/infer",
            b"{}",
            404,
            "unknown model: 'nope'",
        );
        request_error(
            &mut c,
            "/v2/models/identity/versions/7/infer",
            b"{}",
            404,
            "version '7'",
        );
        // Binary extension errors.
        let r = c.request(
            "POST",
            id,
            &[("Inference-Header-Content-Length", "500")],
            br#"{"inputs":[]}"#,
        );
        assert_eq!(r.status, 400);
        assert!(r.error().contains("Inference-Header-Content-Length"));
        let header = br#"{"inputs":[{"name":"INPUT0","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&[0u8; 8]);
        let r = c.request(
            "POST",
            id,
            &[("Inference-Header-Content-Length", &header.len().to_string())],
            &body,
        );
        assert_eq!(r.status, 400);
        assert!(r.error().contains("runs past the end"), "{}", r.error());
    }
}

#[test]
fn non_ascii_paths_are_answered_not_fatal() {
    for shards in [1, 2] {
        let s = Server::start(shards);
        // Multi-byte characters at every offset where a parser might slice the target.
        for target in [
            "/aaaaa\u{e9}",
            "/aaaaaa\u{e9}",
            "/\u{e9}",
            "/v2/models/mod\u{e8}le/infer",
        ] {
            let mut c = s.client();
            c.send(format!("GET {target} HTTP/1.1\r\n\r\n").as_bytes());
            let r = c.read_response();
            assert!(r.status == 404 || r.status == 405, "{target}: {}", r.status);
        }
        let r = s.client().get("/v2/models/mod\u{e8}le");
        assert_eq!(r.status, 404);
        assert!(r.error().contains("mod\u{e8}le"));
        assert_eq!(s.client().get("/v2/health/ready").status, 200);
    }
}

#[test]
fn random_bytes_never_take_a_shard_down() {
    let s = Server::start(1);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..200 {
        let len = 1 + (round * 37) % 700;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let mut c = s.client();
        c.send(&bytes);
        // Whatever the server makes of it, it must answer or close, not hang or die.
        let _ = c.stream.shutdown(std::net::Shutdown::Write);
        let _ = c.is_closed(Duration::from_secs(10));
    }
    // Valid request lines with random bodies, too.
    for round in 0..100 {
        let body: Vec<u8> = (0..(round * 13) % 300)
            .map(|i| (i * 7 + round) as u8)
            .collect();
        let r = s
            .client()
            .request("POST", "/v2/models/simple/infer", &[], &body);
        assert!(r.status == 400 || r.status == 200, "status {}", r.status);
    }
    assert_eq!(s.client().get("/v2/health/ready").status, 200);
}

#[test]
fn header_and_idle_timeouts_close_slow_connections() {
    let cfg = config_file(
        "timeouts",
        "[http]\nheader_read_timeout_ms = 300\nidle_timeout_ms = 600\n",
    );
    let s = Server::start_with(1, &["--config", cfg.to_str().unwrap()]);

    // A head that never finishes is cut after the header timeout, trickling or not.
    let mut slow = s.client();
    let started = Instant::now();
    slow.send(b"GET /v2/health/live HTTP/1.1\r\n");
    std::thread::sleep(Duration::from_millis(150));
    slow.send(b"X-Slow: 1\r\n");
    assert!(slow.is_closed(Duration::from_secs(5)));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // An idle keep-alive connection is closed after the idle timeout, not before.
    let mut idle = s.client();
    assert_eq!(idle.get("/v2/health/live").status, 200);
    assert!(!idle.is_closed(Duration::from_millis(200)));
    assert!(idle.is_closed(Duration::from_secs(5)));

    // A body that stalls is closed after the idle timeout.
    let mut stalled = s.client();
    stalled.send(b"POST /v2/models/identity/infer HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"in");
    assert!(stalled.is_closed(Duration::from_secs(5)));

    assert_eq!(s.client().get("/v2/health/live").status, 200);
}

#[test]
fn connections_over_the_limit_get_503() {
    let cfg = config_file("limit", "[http]\nmax_connections_per_shard = 2\n");
    let s = Server::start_with(1, &["--config", cfg.to_str().unwrap()]);
    let mut a = s.client();
    let mut b = s.client();
    assert_eq!(a.get("/v2/health/live").status, 200);
    assert_eq!(b.get("/v2/health/live").status, 200);
    let mut c = s.client();
    let r = c.read_response();
    assert_eq!(r.status, 503);
    assert!(r.error().contains("max_connections_per_shard"));
    assert!(r.header("retry-after").is_some());
    drop(a);
    // Once a slot frees up, new connections are served again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = s.client();
        d.send(&request_bytes("GET", "/v2/health/live", &[], b""));
        if d.read_response().status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slot never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(b.get("/v2/health/live").status, 200);
}

#[test]
fn a_client_that_stops_reading_is_cut_off_after_the_idle_timeout() {
    let cfg = config_file("slow-reader", "[http]\nidle_timeout_ms = 500\n");
    let s = Server::start_with(1, &["--config", cfg.to_str().unwrap()]);
    // 48 MiB echoed back: far more than the socket buffers hold, so the server's write blocks.
    let n = 12 << 20;
    let tail = vec![0u8; n * 4];
    let mut slow = s.client();
    let header = json!({"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,n],"parameters":{"binary_data_size":tail.len()}}],
                        "outputs":[{"name":"OUTPUT0","parameters":{"binary_data":true}}]});
    let json = header.to_string();
    let mut body = json.clone().into_bytes();
    body.extend_from_slice(&tail);
    slow.send(&common::request_bytes(
        "POST",
        "/v2/models/identity/infer",
        &[("Inference-Header-Content-Length", &json.len().to_string())],
        &body,
    ));
    // Meanwhile the shard serves others.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.client().get("/v2/health/live").status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    // Now read: the response stops short, because the server gave up on this client.
    let mut total = 0usize;
    let mut chunk = vec![0u8; 1 << 20];
    slow.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    loop {
        match std::io::Read::read(&mut slow.stream, &mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => total += k,
        }
    }
    assert!(
        total < tail.len(),
        "read {total} bytes: the whole response arrived"
    );
    assert_eq!(s.client().get("/v2/health/live").status, 200);
}

#[test]
fn a_connection_that_never_sends_is_cut_at_the_header_timeout() {
    // The header deadline runs from accept: a silent connection cannot hold a slot for the whole
    // idle timeout (here 60 s).
    let cfg = config_file(
        "silent",
        "[http]\nheader_read_timeout_ms = 300\nidle_timeout_ms = 60000\n",
    );
    let s = Server::start_with(1, &["--config", cfg.to_str().unwrap()]);
    let mut silent = s.client();
    let started = Instant::now();
    assert!(silent.is_closed(Duration::from_secs(5)));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // A connection that has been served is idle, not silent: the idle timeout applies to it.
    let mut served = s.client();
    assert_eq!(served.get("/v2/health/live").status, 200);
    assert!(!served.is_closed(Duration::from_millis(800)));
}

#[test]
fn a_chunked_body_with_a_content_length_is_framed_by_the_chunks_then_closed() {
    // Python `requests` sends Content-Length next to a manually chunked body, and Triton's HTTP
    // tests expect 200 (RFC 9112 §6.3: Transfer-Encoding wins; close after responding).
    let s = Server::start(1);
    let body = br#"{"inputs":[{"name":"INPUT0","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#;
    let mut req = format!(
        "POST /v2/models/identity/infer HTTP/1.1\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    let (r, mut c) = raw(&s, &req);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["outputs"][0]["data"], json!([1.0, 2.0]));
    assert!(r.closes(), "the response closes the connection");
    assert!(c.is_closed(Duration::from_secs(5)));
}

#[test]
fn a_trickled_body_is_cut_at_the_minimum_body_rate() {
    // One byte every 300 ms never trips the 4 s idle timeout, but stays far under 500 B/s: the
    // connection is cut once the header timeout's grace has passed.
    use std::io::Write;
    let cfg = config_file(
        "trickle",
        "[http]\nheader_read_timeout_ms = 500\nidle_timeout_ms = 4000\nmin_body_bytes_per_second = 500\n",
    );
    let s = Server::start_with(1, &["--config", cfg.to_str().unwrap()]);
    let mut c = s.client();
    c.send(b"POST /v2/models/identity/infer HTTP/1.1\r\nContent-Length: 10000\r\n\r\n");
    let started = Instant::now();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(3) {
        if c.stream.write_all(b"x").is_err() || c.is_closed(Duration::from_millis(300)) {
            cut = true;
            break;
        }
    }
    assert!(cut, "a body at about 3 B/s was still open after 3 s");
    // A body that arrives at a normal pace is unaffected.
    let r = s.client().post_json(
        "/v2/models/identity/infer",
        &json!({"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[1]}]}),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn non_finite_outputs_are_written_as_triton_writes_them() {
    // NaN and the infinities have no JSON number: Triton writes the tokens NaN, Infinity and
    // -Infinity (which Python's json reads back), never null.
    let server = Server::start(1);
    let v = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 2.5];
    let tail = f32_bytes(&v);
    let r = server.client().post_binary(
        "/v2/models/identity/infer",
        &json!({"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,4],
                "parameters":{"binary_data_size":tail.len()}}]}),
        &tail,
    );
    assert_eq!(r.status, 200);
    let body = String::from_utf8(r.body).unwrap();
    assert!(
        body.contains(r#""data":[NaN,Infinity,-Infinity,2.5]"#),
        "{body}"
    );
}

#[test]
fn nan_and_infinity_inputs_are_read_as_triton_reads_them() {
    // Python's json.dumps writes NaN and Infinity as bare tokens, and Triton reads them.
    for shards in [1, 2] {
        let server = Server::start(shards);
        let body = br#"{"id":"x","inputs":[{"name":"INPUT0","shape":[1,4],"datatype":"FP32","data":[NaN,Infinity,-Infinity,1.5]}]}"#;
        let r = server
            .client()
            .request("POST", "/v2/models/identity/infer", &[], body);
        assert_eq!(r.status, 200, "{}", r.error());
        let text = String::from_utf8(r.body).unwrap();
        assert!(text.contains(r#""id":"x""#), "{text}");
        assert!(
            text.contains(r#""data":[NaN,Infinity,-Infinity,1.5]"#),
            "{text}"
        );
        // Anything else that is not JSON is still a clear 400: other spellings, and the tokens
        // anywhere but in tensor data.
        for body in [
            br#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[nan]}]}"#
                .as_slice(),
            br#"{"id":NaN,"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[NaN]}]}"#,
        ] {
            let r = server
                .client()
                .request("POST", "/v2/models/identity/infer", &[], body);
            assert_eq!(r.status, 400);
            assert!(
                r.error().contains("failed to parse the request JSON"),
                "{}",
                r.error()
            );
        }
    }
}
