//! Large requests next to small ones. A large binary output is sent from where it lies (the bytes
//! the request came in, or the batch's buffers) rather than copied into the connection's output
//! buffer, and receives and sends move a bounded slice per loop turn: the answer must still
//! arrive whole, byte for byte, with pipelined answers after it in order, on either placement,
//! while the shard goes on answering other clients. (How long those others wait is measured by
//! `tuning/large-requests.py`, not timed here.)

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const MIB: usize = 1 << 20;

/// `n` FP32 values that differ from one another, as bytes.
fn pattern(n: usize) -> Vec<u8> {
    f32_bytes(
        &(0..n)
            .map(|i| (i % 65_521) as f32 - 0.5)
            .collect::<Vec<_>>(),
    )
}

/// Reads the binary tail of a response whose head `r` was read: the body past its JSON header.
fn binary_tail(r: &Response) -> &[u8] {
    let json_len: usize = r
        .header("inference-header-content-length")
        .expect("a binary answer")
        .parse()
        .unwrap();
    &r.body[json_len..]
}

fn config(placement: &str) -> std::path::PathBuf {
    config_file(
        &format!("large-{placement}"),
        &format!("[models.identity]\nplacement = \"{placement}\"\n"),
    )
}

#[test]
fn a_large_binary_answer_arrives_whole_and_before_the_next_pipelined_one() {
    for (placement, shards) in [("inline", 1), ("worker", 1), ("inline", 2)] {
        let cfg = config(placement);
        let s = Server::start_with(shards, &["--config", cfg.to_str().unwrap()]);
        let big = pattern(6 * MIB / 4);
        let small = pattern(3);
        // Three requests in one write: a large one, a small one, and a large one again.
        let mut bytes = identity_binary_request(&big, true);
        bytes.extend(identity_binary_request(&small, true));
        bytes.extend(identity_binary_request(&big[..4 * MIB], true));
        let mut c = s.client();
        c.send(&bytes);
        let first = c.read_response();
        assert_eq!(first.status, 200, "{placement}: {}", first.error());
        assert!(
            binary_tail(&first) == big.as_slice(),
            "{placement}: the large answer differs from its input"
        );
        let second = c.read_response();
        assert_eq!(second.status, 200);
        assert_eq!(binary_tail(&second), small.as_slice(), "{placement}");
        let third = c.read_response();
        assert_eq!(third.status, 200);
        assert!(binary_tail(&third) == &big[..4 * MIB], "{placement}");
        // The connection goes on serving small requests.
        let ready = c.get("/v2/health/ready");
        assert_eq!(ready.status, 200);
    }
}

#[test]
fn a_client_reading_a_large_answer_slowly_holds_up_no_one_else() {
    let cfg = config("inline");
    let s = Server::start_with(1, &["--config", cfg.to_str().unwrap()]);
    let big = pattern(16 * MIB / 4);
    let mut slow = TcpStream::connect(s.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.write_all(&identity_binary_request(&big, true))
        .unwrap();
    // Take the first bytes of the answer, then stop reading for a while: the rest waits on the
    // shard, sent as the client makes room.
    let mut got = vec![0u8; 64 << 10];
    slow.read_exact(&mut got).unwrap();
    let mut other = s.client();
    for i in 0..20 {
        let r = other.post_json(
            "/v2/models/identity/infer",
            &json!({"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,1],"data":[i]}]}),
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["outputs"][0]["data"], json!([i as f64]));
    }
    // Then the slow client takes the rest, intact.
    let mut rest = Vec::new();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    let number = |name: &str| -> usize {
        let prefix = format!("{name}: ");
        let value = head.lines().find_map(|l| l.strip_prefix(prefix.as_str()));
        value.unwrap().trim().parse().unwrap()
    };
    let (len, json_len) = (
        number("content-length"),
        number("inference-header-content-length"),
    );
    rest.extend_from_slice(&got[head_end..]);
    while rest.len() < len {
        let mut buf = vec![0u8; 1 << 20];
        let n = slow.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the answer ended after {} of {len} bytes",
            rest.len()
        );
        rest.extend_from_slice(&buf[..n]);
    }
    let header: Value = serde_json::from_slice(&rest[..json_len]).unwrap();
    assert_eq!(header["outputs"][0]["shape"], json!([1, big.len() / 4]));
    assert!(
        rest[json_len..] == big[..],
        "the slow client's answer was corrupted"
    );
}

/// The JSON `data` of the first output of answer `r`, as f32.
fn json_data(r: &Response) -> Vec<f32> {
    r.json()["outputs"][0]["data"]
        .as_array()
        .expect("JSON data")
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn a_large_json_answer_is_written_in_slices_and_equals_the_whole() {
    for (placement, shards) in [("inline", 1), ("worker", 1), ("inline", 2)] {
        let cfg = config(placement);
        let s = Server::start_with(shards, &["--config", cfg.to_str().unwrap()]);
        let n = 300_000;
        let big = pattern(n);
        let want: Vec<f32> = (0..n).map(|i| (i % 65_521) as f32 - 0.5).collect();
        // A large JSON answer, then a small one pipelined behind it.
        let mut bytes = identity_binary_request(&big, false);
        bytes.extend(identity_binary_request(&pattern(2), false));
        let mut c = s.client();
        c.send(&bytes);
        let first = c.read_response();
        assert_eq!(first.status, 200, "{placement}");
        assert_eq!(
            first.header("transfer-encoding"),
            Some("chunked"),
            "{placement}: a large JSON answer is written as it goes"
        );
        assert!(
            json_data(&first) == want,
            "{placement}: the JSON answer differs"
        );
        assert_eq!(first.json()["outputs"][0]["shape"], json!([1, n]));
        let second = c.read_response();
        assert_eq!(second.status, 200);
        assert!(
            second.header("content-length").is_some(),
            "a small one is not"
        );
        assert_eq!(json_data(&second), [-0.5, 0.5]);
        // HTTP/1.0 has no chunked coding: the whole body, with its length, and then the close.
        let mut old = s.client();
        let mut request = identity_binary_request(&big, false);
        let line_end = request.windows(2).position(|w| w == b"\r\n").unwrap();
        request.splice(line_end - 3..line_end, *b"1.0");
        old.send(&request);
        let r = old.read_response();
        assert_eq!(r.status, 200);
        assert!(r.header("transfer-encoding").is_none());
        assert!(
            json_data(&r) == want,
            "{placement}: the HTTP/1.0 answer differs"
        );
    }
}

/// FNV-1a over `bytes`: the checksum the zero-copy test compares.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[test]
fn outputs_of_1_and_64_mib_arrive_intact_with_zero_copy_sends_on_and_off() {
    for (zero_copy_min, shards) in [(0, 1), (256 << 10, 1), (256 << 10, 2)] {
        let cfg = config_file(
            &format!("zerocopy-{zero_copy_min}-{shards}"),
            &format!(
                "[http]\nzerocopy_send_min_bytes = {zero_copy_min}\nmax_body_bytes = {}\n",
                80 * MIB
            ),
        );
        let s = Server::start_with(shards, &["--config", cfg.to_str().unwrap()]);
        for size in [MIB, 64 * MIB] {
            let data = pattern(size / 4);
            let mut c = s.client();
            c.send(&identity_binary_request(&data, true));
            let r = c.read_response();
            assert_eq!(
                r.status,
                200,
                "{size} bytes: {}",
                String::from_utf8_lossy(&r.body[..200.min(r.body.len())])
            );
            let tail = binary_tail(&r);
            assert_eq!(tail.len(), size);
            assert_eq!(
                checksum(tail),
                checksum(&data),
                "{size} bytes, zero copy from {zero_copy_min}"
            );
            assert_eq!(c.get("/v2/health/ready").status, 200);
        }
        let sent_zero_copy: f64 = scrape(&s)
            .iter()
            .filter(|m| m.name == "friday_zerocopy_sends_total")
            .map(|m| m.value)
            .sum();
        println!("zero copy from {zero_copy_min} bytes, {shards} shard(s): {sent_zero_copy} zero-copy sends");
        if zero_copy_min == 0 {
            assert_eq!(sent_zero_copy, 0.0);
        } else {
            // 65 MiB in 512 KiB sends.
            assert!(sent_zero_copy >= 130.0, "{sent_zero_copy} zero-copy sends");
        }
    }
}

#[test]
fn a_client_that_stops_reading_a_zero_copy_answer_is_cut_and_freed() {
    let cfg = config_file(
        "zerocopy-stalled",
        &format!(
            "[http]\nzerocopy_send_min_bytes = 262144\nidle_timeout_ms = 1000\n\
             header_read_timeout_ms = 1000\nmax_body_bytes = {}\n",
            40 * MIB
        ),
    );
    let s = Server::start_with(1, &["--config", cfg.to_str().unwrap()]);
    let data = pattern(32 * MIB / 4);
    let mut stalled = s.client();
    stalled.send(&identity_binary_request(&data, true));
    // Never reads: the kernel holds zero-copy data the client never acknowledges, until the
    // sweep cuts the connection; the connection must then end and free its buffers.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let open: f64 = scrape(&s)
            .iter()
            .filter(|m| m.name == "friday_connections_open")
            .map(|m| m.value)
            .sum();
        // The scrape's own connection is the one left.
        if open <= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled zero-copy connection was never freed ({open} open)"
        );
    }
    drop(stalled);
    assert_eq!(s.client().get("/v2/health/ready").status, 200);
}
