//! One load-generator thread: a mio event loop over a pool of persistent keep-alive connections.
//!
//! Closed loop: each connection sends its next request as soon as the previous answer arrives.
//! Open loop: requests are due at the [`Schedule`]'s times whatever the server does; a due request
//! takes an idle connection, or waits in a backlog for one, and its latency counts from when it
//! was due. Connections that fail are counted by kind and reopened; nothing here panics on what a
//! server sends.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::schedule::{corrected_latency, Arrival, Schedule};

/// The most due requests that may wait for a connection before new ones are counted as dropped.
const MAX_BACKLOG: usize = 100_000;
/// How long after the end a run waits for answers still in flight.
const GRACE: Duration = Duration::from_secs(2);
/// Pause before reopening a failed connection.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// Within this of the next due request, an open-loop thread spins instead of sleeping.
const SPIN_WINDOW: Duration = Duration::from_millis(1);
/// How often a thread reports progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// How this thread drives load.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// `n` requests in flight at all times.
    Closed(usize),
    /// `rate` requests per second on a schedule.
    Open {
        /// Requests per second for this thread.
        rate: f64,
        /// Constant or Poisson.
        arrival: Arrival,
    },
}

/// Everything one thread needs.
pub struct ThreadPlan {
    /// The server.
    pub addr: SocketAddr,
    /// Encoded requests, cycled.
    pub requests: Arc<Vec<Vec<u8>>>,
    /// Closed or open loop.
    pub mode: Mode,
    /// Connections in the pool.
    pub connections: usize,
    /// When measurement starts (the warm-up ends).
    pub measure_from: Instant,
    /// When sending stops.
    pub end: Instant,
    /// Seed for the arrival schedule.
    pub seed: u64,
}

/// What one thread measured.
#[derive(Debug, Clone)]
pub struct ThreadResult {
    /// Latency of successful requests from their intended send time, ns.
    pub latency: Histogram<u64>,
    /// Latency of successful requests from their actual send time, ns.
    pub service: Histogram<u64>,
    /// Successful (2xx) responses in the measurement window.
    pub ok: u64,
    /// Failures by kind (`http_429`, `closed`, `connect`, `unanswered`, …).
    pub errors: BTreeMap<String, u64>,
    /// Requests sent in the measurement window.
    pub sent: u64,
}

impl ThreadResult {
    /// Nothing measured yet.
    pub fn empty() -> Self {
        let h =
            || Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("static bounds are valid");
        ThreadResult {
            latency: h(),
            service: h(),
            ok: 0,
            errors: BTreeMap::new(),
            sent: 0,
        }
    }

    fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &ThreadResult) {
        let _ = self.latency.add(&other.latency);
        let _ = self.service.add(&other.service);
        self.ok += other.ok;
        self.sent += other.sent;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }
}

#[derive(Debug)]
enum State {
    Connecting,
    Idle,
    /// Writing request `req`; `written` bytes are out.
    Writing {
        req: usize,
        written: usize,
    },
    /// Waiting for the answer.
    Reading,
    /// Failed; reopen at this time.
    Down(Instant),
}

struct Conn {
    stream: Option<TcpStream>,
    state: State,
    intended: Instant,
    sent: Instant,
    measured: bool,
    buf: Vec<u8>,
}

/// Where a thread sends snapshots of its results while it runs.
pub struct Progress {
    /// This thread's index.
    pub thread: usize,
    /// The collector (a full channel drops a snapshot; the next one carries everything).
    pub tx: crossbeam::channel::Sender<(usize, ThreadResult)>,
}

/// Runs one thread's share of the load, reporting to `progress` while it runs.
pub fn run(plan: ThreadPlan, progress: Option<Progress>) -> ThreadResult {
    let mut poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            let mut r = ThreadResult::empty();
            r.error(&format!("poll: {e}"));
            return r;
        }
    };
    let mut events = Events::with_capacity(1024);
    let mut result = ThreadResult::empty();
    let mut conns: Vec<Conn> = (0..plan.connections.max(1))
        .map(|_| Conn {
            stream: None,
            state: State::Down(Instant::now()),
            intended: Instant::now(),
            sent: Instant::now(),
            measured: false,
            buf: Vec::with_capacity(4096),
        })
        .collect();
    let mut schedule = match plan.mode {
        Mode::Open { rate, arrival } => {
            Some(Schedule::new(Instant::now(), rate, arrival, plan.seed))
        }
        Mode::Closed(_) => None,
    };
    let mut backlog: VecDeque<Instant> = VecDeque::new();
    let mut next_req = 0usize;
    let mut last_progress = Instant::now();
    loop {
        let now = Instant::now();
        let sending = now < plan.end;
        let in_flight = conns
            .iter()
            .filter(|c| matches!(c.state, State::Writing { .. } | State::Reading))
            .count();
        if !sending && (in_flight == 0 || now >= plan.end + GRACE) {
            break;
        }
        // Reopen failed connections.
        for (i, c) in conns.iter_mut().enumerate() {
            if let State::Down(at) = c.state {
                if sending && now >= at {
                    open(&mut poll, c, i, plan.addr, &mut result);
                }
            }
        }
        // Release due requests into the backlog.
        if let Some(s) = schedule.as_mut() {
            while sending && s.peek() <= now {
                let due = s.next_send();
                if backlog.len() < MAX_BACKLOG {
                    backlog.push_back(due);
                } else if due >= plan.measure_from {
                    result.error("backlog_full");
                }
            }
        }
        // Give work to idle connections.
        if sending {
            for c in conns.iter_mut() {
                if !matches!(c.state, State::Idle) {
                    continue;
                }
                let intended = match &schedule {
                    Some(_) => match backlog.pop_front() {
                        Some(due) => due,
                        None => break,
                    },
                    None => now,
                };
                c.intended = intended;
                c.sent = now;
                c.measured = intended >= plan.measure_from;
                if c.measured {
                    result.sent += 1;
                }
                c.state = State::Writing {
                    req: next_req % plan.requests.len(),
                    written: 0,
                };
                next_req = next_req.wrapping_add(1);
                drive(c, &plan, &mut result);
            }
        }
        // epoll sleeps in whole milliseconds: sleep until a millisecond before the next request
        // is due, then spin (poll without sleeping) so it leaves on time. The client's CPU is
        // its own (pin it with --cpus), and a late send would be charged to the server.
        let timeout = match &schedule {
            Some(s) if sending => {
                let until = s.peek().saturating_duration_since(Instant::now());
                if until > SPIN_WINDOW {
                    (until - SPIN_WINDOW).min(Duration::from_millis(10))
                } else {
                    Duration::ZERO
                }
            }
            _ => Duration::from_millis(10),
        };
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                result.error("poll");
                break;
            }
        }
        for ev in events.iter() {
            let Some(c) = conns.get_mut(ev.token().0) else {
                continue;
            };
            if matches!(c.state, State::Connecting) {
                let connected = c
                    .stream
                    .as_ref()
                    .map(|s| s.take_error().ok().flatten().is_none() && s.peer_addr().is_ok())
                    .unwrap_or(false);
                if connected {
                    c.state = State::Idle;
                } else if ev.is_error() || ev.is_write_closed() || ev.is_writable() {
                    fail(c, &mut result, "connect");
                }
                continue;
            }
            drive(c, &plan, &mut result);
        }
        if let Some(p) = &progress {
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                let _ = p.tx.try_send((p.thread, result.clone()));
            }
        }
    }
    for c in &conns {
        if c.measured && matches!(c.state, State::Writing { .. } | State::Reading) {
            result.error("unanswered");
        }
    }
    let never_sent = backlog.iter().filter(|d| **d >= plan.measure_from).count() as u64;
    if never_sent > 0 {
        *result.errors.entry("never_sent".into()).or_default() += never_sent;
    }
    result
}

fn open(poll: &mut Poll, c: &mut Conn, token: usize, addr: SocketAddr, result: &mut ThreadResult) {
    c.buf.clear();
    match TcpStream::connect(addr) {
        Ok(mut s) => {
            let _ = s.set_nodelay(true);
            match poll.registry().register(
                &mut s,
                Token(token),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                Ok(()) => {
                    c.stream = Some(s);
                    c.state = State::Connecting;
                }
                Err(_) => {
                    result.error("register");
                    c.state = State::Down(Instant::now() + RECONNECT_BACKOFF);
                }
            }
        }
        Err(_) => {
            result.error("connect");
            c.state = State::Down(Instant::now() + RECONNECT_BACKOFF);
        }
    }
}

fn fail(c: &mut Conn, result: &mut ThreadResult, kind: &str) {
    // Only requests of the measurement window count as failures; the connection dying while
    // idle is counted too, as it is what a client of the server would meet.
    if c.measured || matches!(c.state, State::Idle | State::Connecting) {
        result.error(kind);
    }
    c.stream = None;
    c.measured = false;
    c.state = State::Down(Instant::now() + RECONNECT_BACKOFF);
}

/// Advances a connection as far as it can go without blocking.
fn drive(c: &mut Conn, plan: &ThreadPlan, result: &mut ThreadResult) {
    loop {
        match c.state {
            State::Writing { req, written } => {
                let bytes = &plan.requests[req];
                let Some(stream) = c.stream.as_mut() else {
                    return;
                };
                match stream.write(&bytes[written..]) {
                    Ok(0) => return fail(c, result, "closed"),
                    Ok(n) if written + n == bytes.len() => {
                        c.buf.clear();
                        c.state = State::Reading;
                    }
                    Ok(n) => {
                        c.state = State::Writing {
                            req,
                            written: written + n,
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return fail(c, result, io_kind(&e)),
                }
            }
            State::Reading => {
                let Some(stream) = c.stream.as_mut() else {
                    return;
                };
                let mut chunk = [0u8; 16 << 10];
                match stream.read(&mut chunk) {
                    Ok(0) => return fail(c, result, "closed"),
                    Ok(n) => {
                        c.buf.extend_from_slice(&chunk[..n]);
                        match parse_response(&c.buf) {
                            Parsed::Partial => {}
                            Parsed::Bad => return fail(c, result, "bad_response"),
                            Parsed::Complete { status, close } => {
                                let done = Instant::now();
                                if c.measured {
                                    if (200..300).contains(&status) {
                                        result.ok += 1;
                                        let lat = corrected_latency(c.intended, done);
                                        result
                                            .latency
                                            .saturating_record(lat.as_nanos().max(1) as u64);
                                        result.service.saturating_record(
                                            done.saturating_duration_since(c.sent).as_nanos().max(1)
                                                as u64,
                                        );
                                    } else {
                                        result.error(&format!("http_{status}"));
                                    }
                                }
                                c.measured = false;
                                if close {
                                    c.stream = None;
                                    c.state = State::Down(Instant::now());
                                } else {
                                    c.state = State::Idle;
                                }
                                return;
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return fail(c, result, io_kind(&e)),
                }
            }
            State::Idle => {
                // An idle connection that becomes readable was closed (or sent garbage).
                let Some(stream) = c.stream.as_mut() else {
                    return;
                };
                let mut b = [0u8; 1];
                match stream.read(&mut b) {
                    Ok(0) => return fail(c, result, "closed"),
                    Ok(_) => return fail(c, result, "bad_response"),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) => return fail(c, result, io_kind(&e)),
                }
            }
            _ => return,
        }
    }
}

fn io_kind(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::ConnectionReset => "reset",
        io::ErrorKind::BrokenPipe => "closed",
        io::ErrorKind::ConnectionRefused => "connect",
        _ => "io",
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Partial,
    Bad,
    Complete { status: u16, close: bool },
}

/// Decides whether `buf` holds a whole response (friday and Triton always send Content-Length).
fn parse_response(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let head = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Bad,
    };
    let mut len = 0usize;
    let mut close = r.version == Some(0);
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
            {
                Some(n) => len = n,
                None => return Parsed::Bad,
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        }
    }
    if buf.len() < head + len {
        return Parsed::Partial;
    }
    Parsed::Complete {
        status: r.code.unwrap_or(0),
        close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_complete_on_content_length() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab";
        assert_eq!(parse_response(r), Parsed::Partial);
        let r =
            b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 2\r\nConnection: close\r\n\r\nab";
        assert_eq!(
            parse_response(r),
            Parsed::Complete {
                status: 429,
                close: true
            }
        );
        assert_eq!(parse_response(b"garbage\r\n\r\n"), Parsed::Bad);
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Parsed::Bad
        );
    }
}
