//! Memory under slow readers: a shard's connections hold at most their buffer budget
//! (`http.max_buffered_bytes_per_shard`), past which a request that needs more buffer gets 503
//! at once while small ones go on; and a client that takes a response slower than
//! `http.min_send_bytes_per_second` is cut instead of pinning it for ever.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;

/// A binary identity request of `bytes` bytes of FP32 that asks for a binary output.
fn identity_request(bytes: usize) -> Vec<u8> {
    identity_binary_request(&vec![0x3f; bytes / 4 * 4], true)
}

/// Reads a response head and returns its status, or None if the connection closed first.
fn read_status(s: &mut TcpStream) -> Option<u16> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split(' ').nth(1)?.parse().ok()
}

#[test]
fn slow_readers_cannot_take_a_shard_past_its_buffer_budget() {
    for shards in [1, 2] {
        let cfg = config_file(
            &format!("budget-{shards}"),
            &format!("[http]\nmax_buffered_bytes_per_shard = {}\n", 48 * MIB),
        );
        let s = Server::start_with(shards, &["--config", cfg.to_str().unwrap()]);
        let request = identity_request(8 * MIB);
        // Clients that send an 8 MiB request and never read the 8 MiB answer: each pins its
        // request buffer and its response on the shard. The first few fit the budget; then the
        // shard refuses requests that need more buffer, at once, before their bodies.
        let mut readers = Vec::new();
        let mut refused = 0;
        for _ in 0..12 * shards {
            let mut c = TcpStream::connect(s.addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // Small socket buffers, so the kernel holds little of the answer for the client.
            socket2::SockRef::from(&c)
                .set_recv_buffer_size(4096)
                .unwrap();
            let started = Instant::now();
            // The body may be cut short by the refusal: ignore a failed write.
            let _ = c.write_all(&request);
            std::thread::sleep(Duration::from_millis(50));
            let mut peek = [0u8; 12];
            let n = c.peek(&mut peek).unwrap_or(0);
            if peek[..n].starts_with(b"HTTP/1.1 503") {
                refused += 1;
                assert_eq!(read_status(&mut c), Some(503));
                assert!(started.elapsed() < Duration::from_secs(2));
            } else {
                readers.push(c);
            }
        }
        assert!(
            refused >= 6 * shards,
            "{refused} of {} refused: the budget did not hold",
            12 * shards
        );
        assert!(readers.len() >= 2 * shards, "{} admitted", readers.len());
        // Small requests never need more buffer: they are answered meanwhile.
        let mut c = s.client();
        for _ in 0..2 * shards {
            assert_eq!(c.get("/v2/health/ready").status, 200);
            let mut fresh = s.client();
            assert_eq!(fresh.get("/v2/health/live").status, 200);
        }
        // What the slow readers pin stays within the budgets (plus the server's own ~20 MiB and
        // the tensor buffers of the requests in flight); twelve such clients a shard would pin
        // about 200 MiB each.
        let rss = proc_status_mib(s.pid(), "VmRSS:") as usize;
        assert!(
            rss < 48 * shards + 120,
            "{rss} MiB resident with a {} MiB budget",
            48 * shards
        );
        // Once the slow readers take their answers, large requests are admitted again.
        for mut r in readers {
            assert_eq!(read_status(&mut r), Some(200));
        }
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(&request).unwrap();
        assert_eq!(read_status(&mut c), Some(200));
    }
}

#[test]
fn a_client_taking_its_answer_slower_than_the_minimum_rate_is_cut() {
    let cfg = config_file(
        "min-send",
        &format!(
            "[http]\nheader_read_timeout_ms = 1000\nmin_send_bytes_per_second = {}\n",
            MIB
        ),
    );
    let s = Server::start_with(1, &["--config", cfg.to_str().unwrap()]);
    let mut c = TcpStream::connect(s.addr).unwrap();
    socket2::SockRef::from(&c)
        .set_recv_buffer_size(4096)
        .unwrap();
    c.write_all(&identity_request(16 * MIB)).unwrap();
    // 16 KiB every 50 ms: about 320 KiB/s, always inside the idle timeout, under the minimum.
    let started = Instant::now();
    let mut got = 0;
    let mut buf = vec![0u8; 16 << 10];
    let cut = loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break true,
            Ok(n) => got += n,
        }
        if started.elapsed() > Duration::from_secs(10) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(cut, "still sending after 10 s at {got} bytes");
    assert!(got < 8 * MIB, "{got} bytes taken before the cut");
    // A client that reads at full speed gets the same answer whole.
    let mut c = s.client();
    c.send(&identity_request(16 * MIB));
    assert_eq!(c.read_response().status, 200);
}
