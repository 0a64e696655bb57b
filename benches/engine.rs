//! The engine hop: what one receive plus one send costs through friday's engines, against a
//! blocking-socket twin.
//!
//! A client thread pinned to one CPU sends 64 bytes over loopback TCP and waits for them back; the
//! server, pinned to another CPU, echoes them:
//! - `io_uring` / `epoll`: `friday::runtime::engine::Engine` itself, as a shard drives it (post a
//!   receive, wait, post the send, wait), with busy polling off (each wait may sleep) and on (it
//!   polls with a zero timeout, as `shards.busy_poll_us` does);
//! - baseline twin: a blocking `std::net::TcpStream` read and write.
//!
//! Each row is the client's round trip, so the kernel's loopback TCP and the wake-ups are in every
//! row; the difference between rows is the engine. Run with `cargo bench --bench engine`; it takes
//! about 10 s.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use friday::runtime::engine::{Doorbell, Engine, EngineKind, Event};
use hdrhistogram::Histogram;

mod support;

const ROUND_TRIPS: usize = 20_000;
const WARMUP: usize = 1_000;
const MESSAGE: usize = 64;

/// Round trips, in nanoseconds.
struct Stats(Histogram<u64>);

impl Stats {
    fn new() -> Self {
        Stats(Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid bounds"))
    }

    fn record(&mut self, d: Duration) {
        self.0.saturating_record(d.as_nanos() as u64);
    }

    fn print(&self, name: &str) {
        let us = |q: f64| self.0.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "  {name:<46} round trip µs: p50 {:>7.2}  p99 {:>7.2}  p99.9 {:>8.2}  max {:>8.2}",
            us(0.5),
            us(0.99),
            us(0.999),
            self.0.max() as f64 / 1000.0
        );
    }
}

/// Runs the client against `addr` and returns its round trips.
fn client(addr: std::net::SocketAddr, cpu: usize) -> std::thread::JoinHandle<Stats> {
    std::thread::spawn(move || {
        friday::topology::pin_current_thread(cpu);
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).unwrap();
        let mut stats = Stats::new();
        let out = [7u8; MESSAGE];
        let mut back = [0u8; MESSAGE];
        for i in 0..ROUND_TRIPS {
            let t0 = Instant::now();
            s.write_all(&out).unwrap();
            s.read_exact(&mut back).unwrap();
            if i >= WARMUP {
                stats.record(t0.elapsed());
            }
        }
        stats
    })
}

fn engine_echo(kind: EngineKind, poll: bool, server_cpu: usize, client_cpu: usize) -> Stats {
    friday::topology::pin_current_thread(server_cpu);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let bell = Doorbell::new().unwrap();
    let client = client(addr, client_cpu);
    let (stream, _) = listener.accept().unwrap();
    stream.set_nodelay(true).unwrap();
    stream.set_nonblocking(true).unwrap();
    // As friday's listeners are: the epoll engine accepts until EAGAIN.
    listener.set_nonblocking(true).unwrap();
    let fd: OwnedFd = stream.into();
    // The engine's listener is never accepted on here: the connection came from `accept` above.
    let mut engine = Engine::new(kind, listener.as_raw_fd(), bell.as_raw_fd()).unwrap();
    engine.add(0, fd.as_raw_fd()).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut events = Vec::new();
    let timeout = if poll {
        Duration::ZERO
    } else {
        Duration::from_secs(1)
    };
    for _ in 0..ROUND_TRIPS {
        let mut got = 0;
        while got < MESSAGE {
            // SAFETY: `buf` outlives the operation, which ends in the wait loop below.
            unsafe { engine.recv(0, fd.as_raw_fd(), buf[got..].as_mut_ptr(), MESSAGE - got) };
            got += wait_for(&mut engine, &mut events, timeout, true);
        }
        let mut sent = 0;
        while sent < MESSAGE {
            // SAFETY: as above.
            unsafe { engine.send(0, fd.as_raw_fd(), buf[sent..].as_ptr(), MESSAGE - sent) };
            sent += wait_for(&mut engine, &mut events, timeout, false);
        }
    }
    let stats = client.join().unwrap();
    engine.remove(0, fd.as_raw_fd());
    drop(fd);
    stats
}

/// Waits until the receive (or send) ends; returns its byte count.
fn wait_for(engine: &mut Engine, events: &mut Vec<Event>, timeout: Duration, recv: bool) -> usize {
    loop {
        engine.wait(Some(timeout), events).unwrap();
        for e in events.drain(..) {
            match e {
                Event::Received { result, .. } if recv => return result.unwrap(),
                Event::Sent { result, .. } if !recv => return result.unwrap(),
                _ => {}
            }
        }
    }
}

fn blocking_echo(server_cpu: usize, client_cpu: usize) -> Stats {
    friday::topology::pin_current_thread(server_cpu);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = client(listener.local_addr().unwrap(), client_cpu);
    let (mut s, _) = listener.accept().unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = [0u8; MESSAGE];
    for _ in 0..ROUND_TRIPS {
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    }
    client.join().unwrap()
}

fn main() {
    let cpus = friday::topology::affinity_cpus().expect("read the affinity mask");
    let server = cpus[0];
    let client_cpu = cpus.get(1).copied().unwrap_or(server);
    println!(
        "engine hop: {ROUND_TRIPS} round trips of {MESSAGE} bytes over loopback TCP ({WARMUP} warm-up), server on CPU {server}, client on CPU {client_cpu}: {}",
        support::machine()
    );
    let started = Instant::now();
    let uring = friday::runtime::engine::select(friday::config::EngineChoice::IoUring).is_ok();
    for poll in [false, true] {
        let how = if poll { "polling" } else { "sleeping" };
        if uring {
            engine_echo(EngineKind::IoUring, poll, server, client_cpu)
                .print(&format!("io_uring engine, {how}"));
        } else {
            println!("  io_uring engine: skipped, io_uring is unavailable here");
        }
        engine_echo(EngineKind::Epoll, poll, server, client_cpu)
            .print(&format!("epoll engine, {how}"));
    }
    blocking_echo(server, client_cpu).print("baseline twin: blocking std::net::TcpStream");
    println!("\n(took {:.1} s)", started.elapsed().as_secs_f64());
}
