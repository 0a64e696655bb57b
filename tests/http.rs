//! HTTP/1.1 behaviour over real sockets: keep-alive, pipelining, chunked bodies,
//! `Expect: 100-continue`, HTTP/1.0 and `Connection: close`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn identity_body(v: f32) -> Vec<u8> {
    json!({"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[v]}]})
        .to_string()
        .into_bytes()
}

#[test]
fn a_thousand_requests_on_one_keep_alive_connection() {
    for shards in [1, 2] {
        let server = Server::start(shards);
        let mut c = server.client();
        for i in 0..1000 {
            let r = c.request(
                "POST",
                "/v2/models/identity/infer",
                &[],
                &identity_body(i as f32),
            );
            assert_eq!(r.status, 200);
            assert!(!r.closes());
            assert_eq!(r.json()["outputs"][0]["data"][0], json!(i as f64));
        }
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    for shards in [1, 2] {
        let server = Server::start(shards);
        let mut c = server.client();
        let mut burst = Vec::new();
        for i in 0..50 {
            if i % 10 == 9 {
                burst.extend(request_bytes("GET", "/v2/health/live", &[], b""));
            } else {
                burst.extend(request_bytes(
                    "POST",
                    "/v2/models/identity/infer",
                    &[],
                    &identity_body(i as f32),
                ));
            }
        }
        // One write: every request arrives in the same segment(s).
        c.send(&burst);
        for i in 0..50 {
            let r = c.read_response();
            assert_eq!(r.status, 200);
            if i % 10 == 9 {
                assert_eq!(r.json(), json!({"live": true}));
            } else {
                assert_eq!(
                    r.json()["outputs"][0]["data"][0],
                    json!(i as f64),
                    "response {i}"
                );
            }
        }
    }
}

#[test]
fn bytes_trickled_one_at_a_time_still_make_a_request() {
    let server = Server::start(1);
    let mut c = server.client();
    let req = request_bytes(
        "POST",
        "/v2/models/identity/infer",
        &[],
        &identity_body(7.0),
    );
    for b in &req {
        c.send(std::slice::from_ref(b));
    }
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["outputs"][0]["data"][0], json!(7.0));
}

#[test]
fn chunked_request_body() {
    for shards in [1, 2] {
        let server = Server::start(shards);
        let mut c = server.client();
        let body = identity_body(2.5);
        let (a, b) = body.split_at(10);
        let mut req = b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        req.extend(format!("{:x}\r\n", a.len()).as_bytes());
        req.extend(a);
        req.extend(format!("\r\n{:x};ext=1\r\n", b.len()).as_bytes());
        req.extend(b);
        req.extend(b"\r\n0\r\nX-Trailer: yes\r\n\r\n");
        c.send(&req);
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["outputs"][0]["data"][0], json!(2.5));
        // The connection stays usable.
        assert_eq!(c.get("/v2/health/live").status, 200);
    }
}

#[test]
fn expect_100_continue() {
    let server = Server::start(1);
    let mut c = server.client();
    let body = identity_body(4.0);
    let head = format!(
        "POST /v2/models/identity/infer HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.send(head.as_bytes());
    let interim = c.read_response_to(true);
    assert_eq!(interim.status, 100);
    c.send(&body);
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["outputs"][0]["data"][0], json!(4.0));

    // A body over the limit is refused before the client sends it.
    let head = "POST /v2/models/identity/infer HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 999999999999\r\n\r\n";
    c.send(head.as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 413);
    assert!(r.closes());
}

#[test]
fn connection_close_and_http_1_0() {
    let server = Server::start(1);
    let mut c = server.client();
    let r = c.request("GET", "/v2/health/live", &[("Connection", "close")], b"");
    assert_eq!(r.status, 200);
    assert!(r.closes());
    assert!(c.is_closed(Duration::from_secs(5)));

    let mut c = server.client();
    c.send(b"GET /v2/health/live HTTP/1.0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(r.closes());
    assert!(c.is_closed(Duration::from_secs(5)));

    let mut c = server.client();
    c.send(b"GET /v2/health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read_response();
    assert_eq!(
        r.header("connection"),
        Some("keep-alive"),
        "HTTP/1.0 keep-alive is confirmed"
    );
    assert_eq!(c.get("/v2/health/live").status, 200);
}

#[test]
fn large_binary_body_grows_the_buffer_and_comes_back_intact() {
    let server = Server::start(1);
    let mut c = server.client();
    // 4 MiB of FP32: far beyond the 16 KiB starting buffer.
    let n = 1 << 20;
    let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let tail = f32_bytes(&values);
    let r = c.post_binary("/v2/models/identity/infer", &json!({"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,n],"parameters":{"binary_data_size":tail.len()}}],
                "outputs":[{"name":"OUTPUT0","parameters":{"binary_data":true}}]}), &tail);
    assert_eq!(r.status, 200);
    assert!(split_binary(&r).1 == tail);
    // And small requests still work afterwards on the same connection.
    let r = c.request(
        "POST",
        "/v2/models/identity/infer",
        &[],
        &identity_body(1.0),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn a_client_that_pipelines_then_half_closes_gets_every_answer() {
    // Enough requests that their responses pass the connection's flush threshold (64 KiB), so
    // decoding pauses with requests still buffered when the end of stream is already queued.
    const N: usize = 400;
    for shards in [1, 2] {
        let server = Server::start(shards);
        let mut c = server.client();
        let one = request_bytes("GET", "/v2/models/identity/config", &[], b"");
        let all: Vec<u8> = (0..N).flat_map(|_| one.iter().copied()).collect();
        c.send(&all);
        c.stream.shutdown(std::net::Shutdown::Write).unwrap();
        for i in 0..N {
            let r = c.read_response();
            assert_eq!(r.status, 200, "response {i}");
        }
        assert!(
            c.is_closed(Duration::from_secs(2)),
            "then the server closes"
        );
    }
}

#[test]
fn a_request_and_its_end_of_stream_that_arrive_together_close_promptly() {
    // While an inline batch holds the shard for 300 ms, a second client sends a request and
    // half-closes: the shard finds the bytes and the end of stream waiting together. It must
    // answer and then close at once, not hold the connection until the idle timeout.
    let cfg = config_file(
        "eof-with-data",
        "[models.synthetic]\nplacement = \"inline\"\ncost_per_batch_us = 300000\ncost_per_item_us = 0\n",
    );
    let server = Server::start_with(1, &["--config", cfg.to_str().unwrap()]);
    // Accepted and idle before the shard gets busy.
    let mut c = server.client();
    assert_eq!(c.get("/v2/health/live").status, 200);
    let mut busy = server.client();
    let body = json!({"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[1.0]}]});
    busy.send(&request_bytes(
        "POST",
        "/v2/models/synthetic/infer",
        &[],
        body.to_string().as_bytes(),
    ));
    std::thread::sleep(Duration::from_millis(100));
    c.send(&request_bytes("GET", "/v2/health/ready", &[], b""));
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(busy.read_response().status, 200);
    assert_eq!(c.read_response().status, 200);
    assert!(
        c.is_closed(Duration::from_secs(2)),
        "closed after the answer, not after the idle timeout"
    );
}

/// A JSON identity request of about `mb` MB as one string.
fn large_identity_body(mb: usize) -> Vec<u8> {
    let n = mb * 1_000_000 / 12;
    let data = vec![1.234_567_f32; n];
    json!({"inputs":[{"name":"INPUT0","shape":[1, n],"datatype":"FP32","data": data}]})
        .to_string()
        .into_bytes()
}

/// Sends `body` to identity, chunked (64 KiB chunks) or with Content-Length; returns the time to
/// the response.
fn upload(server: &Server, body: &[u8], chunked: bool) -> Duration {
    let mut c = server.client();
    let started = std::time::Instant::now();
    if chunked {
        c.send(b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
        for chunk in body.chunks(64 << 10) {
            c.send(format!("{:x}\r\n", chunk.len()).as_bytes());
            c.send(chunk);
            c.send(b"\r\n");
        }
        c.send(b"0\r\n\r\n");
    } else {
        c.send(&request_bytes(
            "POST",
            "/v2/models/identity/infer",
            &[],
            body,
        ));
    }
    let r = c.read_response();
    assert_eq!(
        r.status,
        200,
        "{}",
        String::from_utf8_lossy(&r.body[..200.min(r.body.len())])
    );
    started.elapsed()
}

#[test]
fn a_large_chunked_upload_costs_about_what_content_length_does_and_stalls_nobody() {
    let server = Server::start(1);
    let body = large_identity_body(4);
    let with_length = upload(&server, &body, false);
    // Another client keeps asking for readiness while the chunked upload runs.
    let done = std::sync::atomic::AtomicBool::new(false);
    let (chunked, worst) = std::thread::scope(|s| {
        let prober = s.spawn(|| {
            let mut c = server.client();
            let mut worst = Duration::ZERO;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let t = std::time::Instant::now();
                assert_eq!(c.get("/v2/health/ready").status, 200);
                worst = worst.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(2));
            }
            worst
        });
        let chunked = upload(&server, &body, true);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (chunked, prober.join().unwrap())
    });
    // Read a byte at a time, the chunked upload took 85 times as long as the same body with a
    // Content-Length (2.96 s against 0.035 s); bounds generous enough for a shared machine.
    assert!(
        chunked < with_length * 3 + Duration::from_millis(200),
        "chunked {chunked:?} against Content-Length {with_length:?}"
    );
    assert!(
        worst < Duration::from_millis(250),
        "a readiness probe waited {worst:?} behind the upload"
    );
}
