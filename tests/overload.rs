//! Overload against the real server, for a model on each placement: `friday bench` finds the
//! peak at a modest concurrency, then offers ten times as much, closed loop and open loop, while
//! a probe asks for readiness on a connection of its own. The model keeps most of its goodput,
//! clients retrying at once cost the shard few 429s against its answers (a refused connection
//! rests until its model has room), readiness stays prompt, and memory stays put.
//!
//! The bounds here are loose enough for a shared 2-core machine running the load, the probe and
//! the server at once; `tuning/bench-overload.sh` measures the same thing pinned, and the README
//! quotes it. Before connections rested, a storm like this kept 6-26 % of the peak and cost
//! hundreds of thousands of 429s.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{config_file, proc_status_mib, Server};
use serde_json::Value;

/// The tests measure throughput: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const PEAK_CONCURRENCY: usize = 4;
const STORM_CONNECTIONS: usize = 10 * PEAK_CONCURRENCY;
const QUEUE: usize = 8;

fn bench(url: &str, name: &str, load: &str) -> Value {
    let json = std::env::temp_dir().join(format!(
        "friday-overload-{}-{name}.json",
        std::process::id()
    ));
    let args = format!(
        "bench --url {url} --model synthetic --shape INPUT0:4 --duration 1500ms --warmup 500ms \
         --quiet --json {} {load}",
        json.to_str().unwrap()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_friday"))
        .args(args.split_whitespace())
        .output()
        .expect("run friday bench");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

/// Asks for readiness every 10 ms on one keep-alive connection until `stop`; returns each
/// answer's latency.
fn probe(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Duration>> {
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut took = Vec::new();
        let mut buf = [0u8; 1024];
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            s.write_all(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let n = s.read(&mut buf).expect("readiness answered within 5 s");
            assert!(
                buf[..n].starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&buf[..n])
            );
            took.push(t.elapsed());
            std::thread::sleep(Duration::from_millis(10));
        }
        took
    })
}

fn overload(placement: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = config_file(
        &format!("overload-{placement}"),
        &format!(
            "[models.synthetic]\nplacement = \"{placement}\"\n\
             [models.synthetic.dynamic_batching]\nmax_queue_size = {QUEUE}\n"
        ),
    );
    let s = Server::start_with(1, &["--config", cfg.to_str().unwrap()]);
    let url = s.url();
    let peak = bench(&url, "peak", &format!("--concurrency {PEAK_CONCURRENCY}"));
    let peak_rate = peak["throughput"].as_f64().unwrap();
    assert!(peak_rate > 100.0, "{peak}");
    let storms = [
        ("closed", format!("--concurrency {STORM_CONNECTIONS}")),
        (
            "open",
            format!(
                "--rate {} --connections {STORM_CONNECTIONS}",
                (10.0 * peak_rate) as u64
            ),
        ),
    ];
    for (name, load) in storms {
        let stop = Arc::new(AtomicBool::new(false));
        let prober = probe(s.addr, stop.clone());
        let r = bench(&url, name, &load);
        stop.store(true, Ordering::Relaxed);
        let mut ready = prober.join().unwrap();
        // Under 10x the load the model still delivers most of its peak (the open loop's
        // backlog makes `ok` by due time meaningless there: count what was delivered).
        let delivered = r["delivered"].as_f64().unwrap();
        assert!(
            delivered >= 0.6 * peak_rate,
            "{placement} {name}: {delivered:.0} ok/s under 10x load against a peak of {peak_rate:.0}: {r}"
        );
        // A refused client rests until there is room, so a 429 costs the client a turn, not
        // one answer per retry: fewer 429s than answers. (Before connections rested, a storm
        // like this got thousands of 429s per answer. A few 429s remain by design: each time
        // the line empties, the next burst finds the queue full again; how often that happens
        // depends on how fast the client turns around, so the bound is a ratio. Measured: 0 to
        // 6 % of answers in most runs, 27 % in a run where the client got little CPU.)
        let refused = r["errors"]["http_429"].as_u64().unwrap_or(0);
        let ok = r["ok"].as_u64().unwrap();
        assert!(
            refused <= ok,
            "{placement} {name}: {refused} 429s for {ok} answers: {r}"
        );
        ready.sort();
        eprintln!(
            "{placement} {name}: {delivered:.0} ok/s delivered (peak {peak_rate:.0}), {refused} 429s \
             for {ok} answers, readiness p99 {:?}",
            ready.get(ready.len() * 99 / 100)
        );
        assert!(ready.len() > 50, "{} probes", ready.len());
        let p99 = ready[ready.len() * 99 / 100];
        assert!(
            p99 < Duration::from_millis(50),
            "{placement} {name}: readiness p99 {p99:?} during the storm"
        );
    }
    let rss = proc_status_mib(s.pid(), "VmHWM:");
    assert!(rss < 256.0, "{placement}: peak RSS {rss:.0} MiB");
}

#[test]
fn a_worker_model_keeps_its_goodput_under_ten_times_its_load() {
    overload("worker");
}

#[test]
fn an_inline_model_keeps_its_goodput_under_ten_times_its_load() {
    overload("inline");
}
