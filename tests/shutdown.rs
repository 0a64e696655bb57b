//! Graceful drain on SIGTERM and SIGINT: readiness turns 503, accepting stops, in-flight requests
//! finish, idle connections close, and the process exits 0 within the deadline.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn infer_body() -> Vec<u8> {
    json!({"inputs":[{"name":"INPUT0","shape":[1,2],"datatype":"FP32","data":[1.5,2.5]}]})
        .to_string()
        .into_bytes()
}

fn wait_for_log(server: &Server, message: &str) {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        seen.extend(server.logs());
        if seen.iter().any(|l| l["message"] == message) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no log line {message:?}; saw {seen:?}");
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    for shards in [1, 2] {
        let mut s = Server::start(shards);
        let body = infer_body();

        // In flight at the signal: one infer with half its body sent, one readiness probe with
        // half its head sent.
        let mut infer = s.client();
        let head = format!(
            "POST /v2/models/identity/infer HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        infer.send(head.as_bytes());
        infer.send(&body[..10]);
        let mut probe = s.client();
        probe.send(b"GET /v2/health/ready HTTP/1.1\r\n");
        // Idle at the signal: a keep-alive connection between requests.
        let mut idle = s.client();
        assert_eq!(idle.get("/v2/health/live").status, 200);
        std::thread::sleep(Duration::from_millis(100));

        s.signal(libc::SIGTERM);
        wait_for_log(&s, "draining");
        std::thread::sleep(Duration::from_millis(100));

        // New connections are refused.
        assert!(
            TcpStream::connect(s.addr).is_err(),
            "accepting must stop once the drain starts"
        );
        // The idle connection is closed.
        assert!(idle.is_closed(Duration::from_secs(5)));
        // Readiness is 503, and the connection closes after answering.
        probe.send(b"Host: t\r\n\r\n");
        let ready = probe.read_response();
        assert_eq!(ready.status, 503);
        assert_eq!(ready.json(), json!({"ready": false}));
        assert!(ready.closes());
        // The in-flight infer completes correctly.
        infer.send(&body[10..]);
        let r = infer.read_response();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["outputs"][0]["data"], json!([1.5, 2.5]));
        assert!(r.closes());

        let status = s
            .wait_exit(Duration::from_secs(10))
            .expect("friday exits after draining");
        assert_eq!(status.code(), Some(0));
    }
}

#[test]
fn drain_deadline_bounds_the_wait() {
    let cfg = config_file("drain", "[drain]\ntimeout_ms = 500\n");
    let mut s = Server::start_with(1, &["--config", cfg.to_str().unwrap()]);
    // A client that started a request and never finishes it.
    let mut stuck = s.client();
    stuck.send(b"POST /v2/models/identity/infer HTTP/1.1\r\nContent-Length: 100\r\n\r\n{");
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    s.signal(libc::SIGTERM);
    let status = s
        .wait_exit(Duration::from_secs(10))
        .expect("friday exits at the deadline");
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        took >= Duration::from_millis(400),
        "exited before the deadline: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(stuck.is_closed(Duration::from_secs(2)));
}

#[test]
fn sigint_drains_too() {
    let mut s = Server::start(2);
    let mut c = s.client();
    assert_eq!(c.get("/v2/health/ready").status, 200);
    s.signal(libc::SIGINT);
    let status = s
        .wait_exit(Duration::from_secs(10))
        .expect("friday exits on SIGINT");
    assert_eq!(status.code(), Some(0));
    assert!(c.is_closed(Duration::from_secs(2)));
}

#[test]
fn a_repeated_sigterm_does_not_cut_the_drain_short_but_a_second_sigint_does() {
    let cfg = config_file("drain-repeat", "[drain]\ntimeout_ms = 5000\n");
    let mut s = Server::start_with(1, &["--config", cfg.to_str().unwrap()]);
    let mut busy = s.client();
    let body = infer_body();
    let head = format!(
        "POST /v2/models/identity/infer HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    busy.send(head.as_bytes());
    std::thread::sleep(Duration::from_millis(50));
    s.signal(libc::SIGTERM);
    s.signal(libc::SIGTERM);
    wait_for_log(&s, "draining");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        s.wait_exit(Duration::from_millis(10)).is_none(),
        "still draining"
    );
    busy.send(&body);
    assert_eq!(busy.read_response().status, 200);
    assert_eq!(
        s.wait_exit(Duration::from_secs(10)).unwrap().code(),
        Some(0)
    );

    let mut s = Server::start_with(1, &["--config", cfg.to_str().unwrap()]);
    let mut stuck = s.client();
    stuck.send(head.as_bytes());
    std::thread::sleep(Duration::from_millis(50));
    s.signal(libc::SIGINT);
    wait_for_log(&s, "draining");
    s.signal(libc::SIGINT);
    let status = s
        .wait_exit(Duration::from_secs(3))
        .expect("a second SIGINT exits at once");
    assert_eq!(status.code(), Some(130));
}

#[test]
fn the_port_is_free_the_moment_the_drain_ends() {
    // A supervisor restarts friday on the same port right after it exits; nothing of the old
    // process (not even an io_uring accept the kernel has yet to cancel) may still hold it.
    for shards in [1, 2] {
        let mut s = Server::start(shards);
        assert_eq!(s.client().get("/v2/health/ready").status, 200);
        // Let the shard see that connection end: the drain then finds nothing open and the
        // process exits at once.
        std::thread::sleep(Duration::from_millis(100));
        s.signal(libc::SIGTERM);
        let status = s.wait_exit(WAIT).expect("friday exits after the drain");
        assert!(status.success(), "{status:?}");
        let rebind = std::net::TcpListener::bind(s.addr);
        assert!(rebind.is_ok(), "port still held after exit: {rebind:?}");
    }
}

/// Clients in a conversation, pausing 0-10 ms between requests (`request`), as SIGTERM arrives:
/// every request they send gets an answer (one of `statuses`). A response sent while draining
/// says `Connection: close`, and a client stops on it (as HTTP clients do); a request that finds
/// its connection closed without an answer is lost.
fn drain_under_reusing_clients(shards: usize, extra: &[&str], request: &[u8], statuses: &[u16]) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    const CLIENTS: usize = 32;
    let mut s = Server::start_with(shards, extra);
    let (lost, answered) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for id in 0..CLIENTS {
            let (lost, answered) = (&lost, &answered);
            let addr = s.addr;
            scope.spawn(move || {
                let mut c = Client::connect(addr);
                let mut rng = id as u64 * 7919 + 1;
                loop {
                    if c.stream.write_all(request).is_err() {
                        lost.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    // A response, or the connection ended without one.
                    let mut peek = [0u8; 1];
                    match c.stream.peek(&mut peek) {
                        Ok(0) | Err(_) => {
                            lost.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Ok(_) => {}
                    }
                    let r = c.read_response();
                    assert!(statuses.contains(&r.status), "{} {}", r.status, r.error());
                    answered.fetch_add(1, Ordering::Relaxed);
                    if r.closes() {
                        let mut rest = Vec::new();
                        let _ = c.stream.read_to_end(&mut rest);
                        return;
                    }
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
                    std::thread::sleep(Duration::from_micros((rng >> 33) % 10_000));
                }
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        s.signal(libc::SIGTERM);
    });
    let status = s.wait_exit(WAIT).expect("friday exits after the drain");
    assert!(status.success(), "{status:?}");
    assert!(answered.load(Ordering::Relaxed) > CLIENTS);
    assert_eq!(
        lost.load(Ordering::Relaxed),
        0,
        "{shards} shard(s): requests without an answer during the drain"
    );
}

#[test]
fn a_drain_under_clients_reusing_their_connections_answers_every_request() {
    let request = request_bytes("GET", "/v2/health/live", &[], b"");
    for shards in [1, 2] {
        drain_under_reusing_clients(shards, &[], &request, &[200]);
    }
}

#[test]
fn a_drain_answers_connections_resting_in_a_saturated_models_line() {
    // A model with room for 2 waiting requests and 32 clients: most connections rest in the
    // model's line (refused with 429, or answered while others wait) when SIGTERM arrives. The
    // drain lets them all go, and every request they send is answered.
    let cfg = config_file("drain-line", &slow_synthetic(2000, "max_queue_size = 2"));
    let body = serde_json::json!({"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[1.0]}]})
        .to_string();
    let request = request_bytes(
        "POST",
        "/v2/models/synthetic/infer",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    for shards in [1, 2] {
        drain_under_reusing_clients(
            shards,
            &["--config", cfg.to_str().unwrap()],
            &request,
            &[200, 429, 503],
        );
    }
}
