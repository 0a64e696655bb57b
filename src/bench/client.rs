//! One load-generator thread: a mio event loop over a pool of persistent keep-alive connections.
//!
//! Closed loop: each connection sends its next request as soon as the previous answer arrives.
//! Open loop: requests are due at the [`Schedule`]'s times whatever the server does; a due request
//! takes an idle connection, or waits in a backlog for one, and its latency counts from when it
//! was due. Requests and connects have deadlines, so a server that swallows a request shows up as
//! an error, never as a quiet run. Failures are counted by kind: request errors (what a user
//! of the server meets in the measurement window) apart from connection events (reconnects,
//! idle closes, warm-up losses). Nothing here panics on what a server sends.

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
/// A connect that takes longer than this fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Within this of the next due request, an open-loop thread spins instead of sleeping.
const SPIN_WINDOW: Duration = Duration::from_millis(1);
/// How often a thread reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// How this thread drives load.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// One request in flight per connection at all times.
    Closed,
    /// `rate` requests per second on a schedule.
    Open {
        /// Requests per second for this thread.
        rate: f64,
        /// Constant or Poisson.
        arrival: Arrival,
        /// When this thread's schedule starts (threads are offset so constant arrivals
        /// interleave instead of arriving together).
        start: Instant,
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
    /// Connections in the pool (the concurrency, in closed loop).
    pub connections: usize,
    /// When measurement starts (the warm-up ends).
    pub measure_from: Instant,
    /// When sending stops.
    pub end: Instant,
    /// A request without an answer after this long fails with `timeout`.
    pub request_timeout: Duration,
    /// Seed for the arrival schedule.
    pub seed: u64,
}

/// What one thread measured.
#[derive(Debug, Clone)]
pub struct ThreadResult {
    /// Latency from the intended send time, ns: of successful requests, and of requests never
    /// sent (to the end of the run).
    pub latency: Histogram<u64>,
    /// Latency of successful requests from their actual send time, ns.
    pub service: Histogram<u64>,
    /// Successful (2xx) responses to requests due in the measurement window.
    pub ok: u64,
    /// Successful responses that completed inside the window (the throughput's numerator).
    pub completed_in_window: u64,
    /// Request failures in the window by kind (`http_429`, `closed`, `timeout`, `never_sent`, …).
    pub errors: BTreeMap<String, u64>,
    /// Connection events by kind (`connect_failed`, `closed_idle`, `lost_in_warmup`, …): not
    /// request failures, but worth seeing.
    pub connection_events: BTreeMap<String, u64>,
    /// Requests due in the window that were sent.
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
            completed_in_window: 0,
            errors: BTreeMap::new(),
            connection_events: BTreeMap::new(),
            sent: 0,
        }
    }

    /// A request due at `due` was never sent (no connection was free before the end, or the
    /// backlog was full): if it was due in the window, it fails as `never_sent` and its latency
    /// counts from its due time to the end of the run, so that an overloaded server can never
    /// look fast.
    fn never_sent(&mut self, due: Instant, plan: &ThreadPlan) {
        if due < plan.measure_from || due >= plan.end {
            return;
        }
        self.error("never_sent");
        let waited = plan.end.saturating_duration_since(due);
        self.latency
            .saturating_record(waited.as_nanos().max(1) as u64);
    }

    fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }

    fn event(&mut self, kind: &str) {
        *self.connection_events.entry(kind.to_string()).or_default() += 1;
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &ThreadResult) {
        let _ = self.latency.add(&other.latency);
        let _ = self.service.add(&other.service);
        self.ok += other.ok;
        self.completed_in_window += other.completed_in_window;
        self.sent += other.sent;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.connection_events {
            *self.connection_events.entry(k.clone()).or_default() += v;
        }
    }
}

/// A thread's live numbers, for the progress line (counts include the warm-up).
#[derive(Debug, Clone, Copy, Default)]
pub struct Live {
    /// Successful responses so far.
    pub ok: u64,
    /// Failed requests so far.
    pub errors: u64,
    /// Median latency so far, µs.
    pub p50_us: f64,
    /// 99th percentile so far, µs.
    pub p99_us: f64,
}

/// Where a thread sends its live numbers.
pub struct Progress {
    /// This thread's index.
    pub thread: usize,
    /// The collector (a full channel drops a report; the next one carries everything).
    pub tx: crossbeam::channel::Sender<(usize, Live)>,
}

#[derive(Debug, Clone, Copy)]
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
    /// When the current state began (connect and request deadlines).
    since: Instant,
    intended: Instant,
    sent: Instant,
    measured: bool,
    buf: Vec<u8>,
}

/// Runs one thread's share of the load, reporting to `progress` while it runs.
pub fn run(plan: ThreadPlan, progress: Option<Progress>) -> ThreadResult {
    let mut result = ThreadResult::empty();
    let mut poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            result.error(&format!("poll: {e}"));
            return result;
        }
    };
    let mut events = Events::with_capacity(1024);
    let mut conns: Vec<Conn> = (0..plan.connections.max(1))
        .map(|_| Conn {
            stream: None,
            state: State::Down(Instant::now()),
            since: Instant::now(),
            intended: Instant::now(),
            sent: Instant::now(),
            measured: false,
            buf: Vec::with_capacity(4096),
        })
        .collect();
    let mut schedule = match plan.mode {
        Mode::Open {
            rate,
            arrival,
            start,
        } => Some(Schedule::new(start, rate, arrival, plan.seed)),
        Mode::Closed => None,
    };
    let mut backlog: VecDeque<Instant> = VecDeque::new();
    let mut next_req = 0usize;
    let mut live = LiveCounter::default();
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
        for (i, c) in conns.iter_mut().enumerate() {
            match c.state {
                State::Down(at) if sending && now >= at => {
                    open(&mut poll, c, i, plan.addr, &mut result)
                }
                State::Connecting if now.duration_since(c.since) > CONNECT_TIMEOUT => {
                    fail(c, &mut result, "connect_timeout")
                }
                State::Writing { .. } | State::Reading
                    if now.duration_since(c.sent) > plan.request_timeout =>
                {
                    fail(c, &mut result, "timeout")
                }
                _ => {}
            }
        }
        // Release due requests into the backlog.
        if let Some(s) = schedule.as_mut() {
            while sending && s.peek() <= now {
                let due = s.next_send();
                if backlog.len() < MAX_BACKLOG {
                    backlog.push_back(due);
                } else {
                    result.never_sent(due, &plan);
                }
            }
        }
        // Give work to idle connections.
        if sending {
            for c in conns.iter_mut() {
                if !matches!(c.state, State::Idle) {
                    continue;
                }
                // Read the clock per request: earlier dispatches in this pass took time.
                let at = Instant::now();
                let intended = match &schedule {
                    Some(_) => match backlog.pop_front() {
                        Some(due) => due,
                        None => break,
                    },
                    None => at,
                };
                c.intended = intended;
                c.sent = at;
                c.measured = intended >= plan.measure_from && intended < plan.end;
                if c.measured {
                    result.sent += 1;
                }
                c.state = State::Writing {
                    req: next_req % plan.requests.len(),
                    written: 0,
                };
                next_req = next_req.wrapping_add(1);
                drive(c, &plan, &mut result, &mut live);
            }
        }
        let timeout = match &schedule {
            Some(s) if sending => sleep_before(s.peek().saturating_duration_since(Instant::now())),
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
                    c.since = Instant::now();
                } else if ev.is_error() || ev.is_write_closed() || ev.is_writable() {
                    fail(c, &mut result, "connect_failed");
                }
                continue;
            }
            drive(c, &plan, &mut result, &mut live);
        }
        if let Some(p) = &progress {
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                let _ = p.tx.try_send((p.thread, live.report(&result)));
            }
        }
    }
    for c in &conns {
        match c.state {
            State::Writing { .. } | State::Reading if c.measured => result.error("unanswered"),
            State::Writing { .. } | State::Reading => result.event("unanswered_outside_window"),
            State::Connecting => result.event("still_connecting"),
            _ => {}
        }
    }
    for &due in &backlog {
        result.never_sent(due, &plan);
    }
    result
}

/// How long to sleep in epoll so that a request due `until` from now leaves on time. epoll
/// sleeps in whole milliseconds and mio rounds a shorter timeout up; so sleep whole milliseconds
/// that end at least `SPIN_WINDOW` before the due time, then spin (poll without sleeping).
fn sleep_before(until: Duration) -> Duration {
    let slack = until.saturating_sub(SPIN_WINDOW);
    Duration::from_millis(slack.as_millis().min(10) as u64)
}

/// Counts for the progress line, warm-up included.
#[derive(Default)]
struct LiveCounter {
    ok: u64,
    errors: u64,
}

impl LiveCounter {
    fn report(&self, result: &ThreadResult) -> Live {
        // Percentiles of the measured requests (a few µs to compute, once a second).
        let p = |q: f64| {
            if result.latency.is_empty() {
                0.0
            } else {
                result.latency.value_at_quantile(q) as f64 / 1000.0
            }
        };
        Live {
            ok: self.ok,
            errors: self.errors,
            p50_us: p(0.5),
            p99_us: p(0.99),
        }
    }
}

fn open(poll: &mut Poll, c: &mut Conn, token: usize, addr: SocketAddr, result: &mut ThreadResult) {
    c.buf.clear();
    c.since = Instant::now();
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
                    result.event("register_failed");
                    c.state = State::Down(Instant::now() + RECONNECT_BACKOFF);
                }
            }
        }
        Err(_) => {
            result.event("connect_failed");
            c.state = State::Down(Instant::now() + RECONNECT_BACKOFF);
        }
    }
}

/// Drops a connection. A measured request in flight fails with `kind`; anything else (an idle
/// or connecting connection, a warm-up request) is a connection event.
fn fail(c: &mut Conn, result: &mut ThreadResult, kind: &str) {
    let in_flight = matches!(c.state, State::Writing { .. } | State::Reading);
    if in_flight && c.measured {
        result.error(kind);
    } else if in_flight {
        result.event(&format!("{kind}_outside_window"));
    } else {
        result.event(&format!("{kind}_idle"));
    }
    c.stream = None;
    c.measured = false;
    c.state = State::Down(Instant::now() + RECONNECT_BACKOFF);
}

/// Advances a connection as far as it can go without blocking.
fn drive(c: &mut Conn, plan: &ThreadPlan, result: &mut ThreadResult, live: &mut LiveCounter) {
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
                let (eof, parsed) = match stream.read(&mut chunk) {
                    Ok(0) => (true, parse_response(&c.buf, true)),
                    Ok(n) => {
                        c.buf.extend_from_slice(&chunk[..n]);
                        (false, parse_response(&c.buf, false))
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return fail(c, result, io_kind(&e)),
                };
                match parsed {
                    Parsed::Partial if eof => return fail(c, result, "closed"),
                    Parsed::Partial => {}
                    Parsed::Bad => return fail(c, result, "bad_response"),
                    Parsed::Complete { status, close } => {
                        complete(c, plan, result, live, status);
                        if close || eof {
                            c.stream = None;
                            c.state = State::Down(Instant::now());
                        }
                        return;
                    }
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

/// Records a response and frees the connection.
fn complete(
    c: &mut Conn,
    plan: &ThreadPlan,
    result: &mut ThreadResult,
    live: &mut LiveCounter,
    status: u16,
) {
    let done = Instant::now();
    let success = (200..300).contains(&status);
    if success {
        live.ok += 1;
    } else {
        live.errors += 1;
    }
    if success && done >= plan.measure_from && done < plan.end {
        result.completed_in_window += 1;
    }
    if c.measured {
        if success {
            result.ok += 1;
            let lat = corrected_latency(c.intended, done);
            result
                .latency
                .saturating_record(lat.as_nanos().max(1) as u64);
            result
                .service
                .saturating_record(done.saturating_duration_since(c.sent).as_nanos().max(1) as u64);
        } else {
            result.error(&format!("http_{status}"));
        }
    }
    c.measured = false;
    c.buf.clear();
    c.state = State::Idle;
    c.since = done;
}

fn io_kind(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::ConnectionReset => "reset",
        io::ErrorKind::BrokenPipe => "closed",
        io::ErrorKind::ConnectionRefused => "connect_failed",
        _ => "io",
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Partial,
    Bad,
    Complete { status: u16, close: bool },
}

/// Decides whether `buf` holds a whole response: framed by Content-Length, by chunked coding,
/// or (with neither) by the connection closing (`eof`). Interim 1xx responses are skipped. Bytes
/// after the response are an error: the client never pipelines.
fn parse_response(buf: &[u8], eof: bool) -> Parsed {
    let mut start = 0usize;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut headers);
        let head = match r.parse(&buf[start..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Bad,
        };
        let status = r.code.unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            start += head;
            continue;
        }
        let mut len: Option<usize> = None;
        let mut chunked = false;
        let mut close = r.version == Some(0);
        for h in r.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                match std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                {
                    Some(n) => len = Some(n),
                    None => return Parsed::Bad,
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = h
                    .value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("connection") {
                close = h.value.eq_ignore_ascii_case(b"close");
            }
        }
        let body = start + head;
        let end = if chunked {
            match chunked_end(&buf[body..]) {
                Some(Ok(n)) => body + n,
                Some(Err(())) => return Parsed::Bad,
                None => return Parsed::Partial,
            }
        } else if let Some(n) = len {
            match body.checked_add(n) {
                Some(end) if buf.len() >= end => end,
                Some(_) => return Parsed::Partial,
                None => return Parsed::Bad,
            }
        } else if eof {
            // Framed by the close itself.
            return Parsed::Complete {
                status,
                close: true,
            };
        } else {
            return Parsed::Partial;
        };
        return if end == buf.len() {
            Parsed::Complete { status, close }
        } else {
            Parsed::Bad
        };
    }
}

/// The length of a complete chunked body at the front of `buf`, `None` if more is needed.
fn chunked_end(buf: &[u8]) -> Option<Result<usize, ()>> {
    let mut pos = 0usize;
    loop {
        let (used, size) = match httparse::parse_chunk_size(&buf[pos..]) {
            Ok(httparse::Status::Complete(x)) => x,
            Ok(httparse::Status::Partial) => return None,
            Err(_) => return Some(Err(())),
        };
        pos += used;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let rest = &buf[pos..];
                let eol = rest.windows(2).position(|w| w == b"\r\n")?;
                pos += eol + 2;
                if eol == 0 {
                    return Some(Ok(pos));
                }
            }
        }
        let size = usize::try_from(size).ok()?;
        let next = pos.checked_add(size)?.checked_add(2)?;
        if buf.len() < next {
            return None;
        }
        if &buf[next - 2..next] != b"\r\n" {
            return Some(Err(()));
        }
        pos = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_complete_on_their_framing() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab";
        assert_eq!(parse_response(r, false), Parsed::Partial);
        assert_eq!(
            parse_response(r, true),
            Parsed::Partial,
            "EOF before Content-Length is a loss"
        );
        let r =
            b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 2\r\nConnection: close\r\n\r\nab";
        assert_eq!(
            parse_response(r, false),
            Parsed::Complete {
                status: 429,
                close: true
            }
        );
        assert_eq!(parse_response(b"garbage\r\n\r\n", false), Parsed::Bad);
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false),
            Parsed::Bad
        );
        let huge = b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n";
        assert_eq!(parse_response(huge, false), Parsed::Bad, "no overflow");
        let extra = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab";
        assert_eq!(parse_response(extra, false), Parsed::Bad, "leftover bytes");
    }

    #[test]
    fn chunked_interim_and_close_delimited_responses() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        for cut in 0..chunked.len() {
            assert_eq!(
                parse_response(&chunked[..cut], false),
                Parsed::Partial,
                "cut {cut}"
            );
        }
        assert_eq!(
            parse_response(chunked, false),
            Parsed::Complete {
                status: 200,
                close: false
            }
        );
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_response(interim, false),
            Parsed::Complete {
                status: 200,
                close: false
            }
        );
        let until_close = b"HTTP/1.0 200 OK\r\n\r\nbody";
        assert_eq!(parse_response(until_close, false), Parsed::Partial);
        assert_eq!(
            parse_response(until_close, true),
            Parsed::Complete {
                status: 200,
                close: true
            }
        );
    }

    #[test]
    fn sleeps_end_before_the_spin_window() {
        assert_eq!(sleep_before(Duration::from_micros(900)), Duration::ZERO);
        assert_eq!(
            sleep_before(Duration::from_micros(2_100)),
            Duration::from_millis(1)
        );
        assert_eq!(
            sleep_before(Duration::from_micros(2_999)),
            Duration::from_millis(1)
        );
        assert_eq!(
            sleep_before(Duration::from_secs(1)),
            Duration::from_millis(10)
        );
    }
}
