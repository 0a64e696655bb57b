//! Generation: what continuous batching buys per core, and what a client sees end to end.
//!
//! 1. **Compute** (in process, one thread on CPU 0): `tinylm` tokens per second when 64
//!    requests of 128 tokens run one at a time, against all of them in one running batch
//!    (the shard's decoder, continuous batching).
//! 2. **End to end**: `friday serve` with one shard on CPU 0, clients on CPU 1, each holding one
//!    `generate_stream` at a time for a few seconds (closed loop) at 1, 16 and 64 concurrent
//!    streams: time to first token (request written → first event read) and inter-token time
//!    (between events) p50/p99, and tokens per second, measured by the clients.
//!
//! Run with `cargo bench --bench generate` (about 40 s).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use friday::generate::{Decoder, GenerateParams};
use friday::model::TinyLm;

mod support;

const REQUESTS: usize = 64;
const TOKENS: usize = 128;
const RUN: Duration = Duration::from_secs(5);

fn params(seed: u64, max_tokens: usize) -> GenerateParams {
    GenerateParams {
        prompt: "The harbor".into(),
        max_tokens,
        seed: Some(seed),
        ..GenerateParams::default()
    }
}

/// Runs `REQUESTS` requests of `TOKENS` tokens through one decoder, `together` at a time;
/// returns tokens per second.
fn compute(together: usize) -> f64 {
    let model = Arc::new(TinyLm::new());
    let mut d = Decoder::new(model, together).expect("tinylm is generative");
    let mut ready = Vec::new();
    let now = Instant::now();
    let start = Instant::now();
    let mut admitted = 0;
    let mut live: Vec<usize> = Vec::new();
    let mut text = Vec::new();
    loop {
        while live.len() < together && admitted < REQUESTS {
            live.push(
                d.admit(0, &params(admitted as u64, TOKENS), false, now)
                    .unwrap(),
            );
            admitted += 1;
        }
        if live.is_empty() {
            break;
        }
        d.step(now, |_| false, &mut ready, None);
        live.retain(|&t| {
            if d.ended(t) {
                d.take(t, &mut text);
                d.remove(t);
                false
            } else {
                true
            }
        });
    }
    (REQUESTS * TOKENS) as f64 / start.elapsed().as_secs_f64()
}

/// One client connection running streams back to back until `until`; records into `ttft` and
/// `itl` (µs) and returns the tokens it received.
fn client(
    addr: SocketAddr,
    until: Instant,
    seed: u64,
    ttft: &mut Histogram<u64>,
    itl: &mut Histogram<u64>,
) -> u64 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    let body = format!(r#"{{"text_input":"The harbor","max_tokens":{TOKENS},"seed":{seed}}}"#);
    let request = format!(
        "POST /v2/models/tinylm/generate_stream HTTP/1.1\r\nHost: b\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut tokens = 0;
    let mut buf = vec![0u8; 1 << 16];
    while Instant::now() < until {
        let sent = Instant::now();
        s.write_all(request.as_bytes()).unwrap();
        let mut last: Option<Instant> = None;
        let mut pending = Vec::new();
        // Events end with "\n\n"; the body ends with the last chunk "0\r\n\r\n".
        loop {
            let n = s.read(&mut buf).expect("read");
            assert!(n > 0, "the server closed the stream");
            let now = Instant::now();
            pending.extend_from_slice(&buf[..n]);
            let (events, seen) = events_in(&pending);
            if events > 0 {
                let us = |d: Duration| d.as_micros() as u64;
                match last {
                    None => ttft.saturating_record(us(now - sent)),
                    Some(t) => itl.saturating_record(us(now - t)),
                }
                // Several events in one read arrived together: the others had no wait of their own.
                for _ in 1..events {
                    itl.saturating_record(0);
                }
                tokens += events as u64;
                last = Some(now);
            }
            if pending.ends_with(b"\r\n0\r\n\r\n") {
                break;
            }
            // Everything up to the last event's "data: " is counted.
            pending.drain(..seen);
        }
    }
    tokens
}

/// Events that start in `bytes`, and how many bytes up to the end of the last one's `data: `.
fn events_in(bytes: &[u8]) -> (usize, usize) {
    let mut n = 0;
    let mut seen = 0;
    for (i, w) in bytes.windows(6).enumerate() {
        if w == b"data: " {
            n += 1;
            seen = i + 6;
        }
    }
    (n, seen)
}

/// Microseconds up to a minute, to 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn main() {
    println!("generation ({})", support::machine());
    friday::topology::pin_current_thread(0);
    let one = compute(1);
    let batched = compute(REQUESTS);
    println!(
        "  compute, CPU 0: {REQUESTS} requests of {TOKENS} tokens: one at a time {one:.0} tokens/s, \
         continuous batching {batched:.0} tokens/s ({:.1}x)",
        batched / one
    );

    let mut server = Command::new("taskset")
        .args(["-c", "0", env!("CARGO_BIN_EXE_friday"), "serve"])
        .args([
            "--http-address",
            "127.0.0.1",
            "--http-port",
            "0",
            "--shards",
            "1",
        ])
        .args(["--log-format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start friday serve");
    let mut out = std::io::BufReader::new(server.stdout.take().unwrap());
    let addr: SocketAddr = loop {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut out, &mut line).unwrap() == 0 {
            panic!("friday exited before listening");
        }
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if v["message"] == "friday listening" {
                break v["address"].as_str().unwrap().parse().unwrap();
            }
        }
    };
    friday::topology::pin_current_thread(1);
    println!(
        "  end to end, server on CPU 0, clients on CPU 1, {TOKENS}-token streams, {}s each:",
        RUN.as_secs()
    );
    println!(
        "  {:>8} {:>11} {:>11} {:>11} {:>11} {:>10}",
        "streams", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99", "tokens/s"
    );
    for streams in [1, 16, 64] {
        let until = Instant::now() + RUN;
        let start = Instant::now();
        let handles: Vec<_> = (0..streams)
            .map(|i| {
                std::thread::spawn(move || {
                    friday::topology::pin_current_thread(1);
                    let mut ttft = histogram();
                    let mut itl = histogram();
                    let tokens = client(addr, until, i as u64, &mut ttft, &mut itl);
                    (tokens, ttft, itl)
                })
            })
            .collect();
        let mut ttft = histogram();
        let mut itl = histogram();
        let mut tokens = 0;
        for h in handles {
            let (t, a, b) = h.join().unwrap();
            tokens += t;
            ttft.add(a).unwrap();
            itl.add(b).unwrap();
        }
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "  {streams:>8} {:>8.2} ms {:>8.2} ms {:>8.3} ms {:>8.3} ms {:>10.0}",
            ms(&ttft, 0.5),
            ms(&ttft, 0.99),
            ms(&itl, 0.5),
            ms(&itl, 0.99),
            tokens as f64 / start.elapsed().as_secs_f64()
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}
