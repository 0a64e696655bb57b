//! One connection: read bytes, answer every complete request in order, write, repeat.
//!
//! Pipelined requests are answered in order because they are answered one after another into one
//! output buffer, which is flushed once when no complete request is left (or when it grows past
//! [`FLUSH_THRESHOLD_BYTES`]). Buffers come from the shard's pools, grow with what actually
//! arrives (never with what a header merely claims), shrink back after a run of small requests,
//! and go back to the pools on close. A framing error answers 400/413/431/501 and closes the
//! connection, since the byte stream can no longer be trusted; a bad request body only fails that
//! request. A panic while decoding or handling a request answers 500 and closes the connection;
//! it never unwinds into the shard.
//!
//! This task must never block the reactor and never hold a request hostage: the only await points
//! are the socket read, the socket write, the bounded statistics gather, and an infer request's
//! ticket (bounded by its deadline, its batch, or its client leaving). Before awaiting a ticket it
//! sends the responses of earlier pipelined requests, so they never wait on a later batch.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::batcher::Outcome;
use super::buffers::RETAIN_MAX_BYTES;
use super::conn_table::{ConnHandle, Phase};
use super::mesh::{Snapshot, SnapshotSource};
use super::shard::Shard;
use crate::error::ApiError;
use crate::http::{Body, Decoded, Method, RequestDecoder, Responder, ResponseMode, CONTINUE_100};
use crate::service::{Action, Gather, InferJob, Ran, Request};
use crate::stats::StatsSnapshot;

/// Flush the output buffer mid-pipeline once it holds this much.
const FLUSH_THRESHOLD_BYTES: usize = 64 << 10;
/// Before closing a connection the client may still be writing to, how long to keep reading
/// (and discarding).
const LINGER_TIME: Duration = Duration::from_millis(500);
/// ... and how many bytes at most.
const LINGER_MAX_BYTES: usize = 1 << 20;
/// Buffers that grew past `RETAIN_MAX_BYTES` shrink back after this many small requests in a
/// row, so one large request does not pin its memory, and a stream of large ones does not
/// reallocate on every request.
const SHRINK_AFTER_SMALL_REQUESTS: u32 = 8;

/// A connection's read buffer: `buf[start..end]` is received and not yet consumed. `buf` is fully
/// initialized (its length is its capacity) so reads can go straight into `buf[end..]`.
struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    fn new(mut buf: Vec<u8>) -> Self {
        let cap = buf.capacity();
        buf.resize(cap, 0);
        ReadBuf {
            buf,
            start: 0,
            end: 0,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Makes room to read: afterwards `buf[end..]` is non-empty. `need` is how many bytes the
    /// current request needs from `start`; the buffer grows toward it by doubling, so memory
    /// follows the bytes that actually arrive, not a Content-Length a client merely claims.
    fn make_room(&mut self, need: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let pending = self.end - self.start;
        let need = need.max(pending + 1);
        if self.start > 0 && self.buf.len() - self.start < need {
            self.buf.copy_within(self.start..self.end, 0);
            self.end = pending;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let len = self.buf.len().max(1);
            let new_len = need.min(len.saturating_mul(2)).max(self.end + 1);
            self.buf.resize(new_len, 0);
        }
    }

    /// Returns to `initial` bytes if the buffer grew past the retention limit and what is
    /// pending fits.
    fn shrink(&mut self, initial: usize) {
        let pending = self.end - self.start;
        if self.buf.len() > RETAIN_MAX_BYTES && pending <= initial {
            let mut small = vec![0; initial];
            small[..pending].copy_from_slice(self.pending());
            self.buf = small;
            self.start = 0;
            self.end = pending;
        }
    }
}

/// Why the connection is closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// The client asked (`Connection: close`, HTTP/1.0) or hung up.
    Client,
    /// The server decided (framing error, drain, panic): the client may still be sending.
    Server,
}

/// A connection's buffers, taken from the shard's pools.
struct Buffers {
    read: ReadBuf,
    write: Vec<u8>,
    scratch: Vec<u8>,
    dechunked: Vec<u8>,
    small_streak: u32,
}

impl Buffers {
    fn take(shard: &Shard) -> Self {
        Buffers {
            read: ReadBuf::new(shard.read_pool.take()),
            write: shard.write_pool.take(),
            scratch: shard.write_pool.take(),
            dechunked: Vec::new(),
            small_streak: 0,
        }
    }

    fn give_back(self, shard: &Shard) {
        shard.read_pool.give(self.read.buf);
        shard.write_pool.give(self.write);
        shard.write_pool.give(self.scratch);
    }

    /// Records one request's size; after a run of small ones, shrinks what grew.
    fn observe(&mut self, request_bytes: usize, response_bytes: usize, shard: &Shard) {
        if request_bytes > RETAIN_MAX_BYTES || response_bytes > RETAIN_MAX_BYTES {
            self.small_streak = 0;
            return;
        }
        self.small_streak += 1;
        if self.small_streak < SHRINK_AFTER_SMALL_REQUESTS {
            return;
        }
        self.small_streak = 0;
        self.read.shrink(shard.read_pool_initial);
        for buf in [&mut self.scratch, &mut self.dechunked] {
            if buf.capacity() > RETAIN_MAX_BYTES {
                *buf = Vec::new();
            }
        }
        if self.write.capacity() > RETAIN_MAX_BYTES && self.write.len() <= RETAIN_MAX_BYTES {
            self.write.shrink_to(RETAIN_MAX_BYTES);
        }
    }
}

/// Serves one accepted connection until the peer closes, an error closes it, or the shard drains.
pub(crate) async fn serve(shard: Rc<Shard>, mut stream: TcpStream, conn: ConnHandle) {
    let mut bufs = Buffers::take(&shard);
    match run(&shard, &mut stream, &conn, &mut bufs).await {
        Ok(Close::Server) => linger(&mut stream, &mut bufs.read.buf).await,
        Ok(Close::Client) => {}
        Err(e) => tracing::debug!(shard = shard.id, error = %e, "connection ended with an error"),
    }
    bufs.give_back(&shard);
    // The entry leaves the table before the socket closes (the stream drops after `conn`), so the
    // sweeper never shuts down a file descriptor that was reused.
    drop(conn);
    drop(stream);
}

async fn run(
    shard: &Shard,
    stream: &mut TcpStream,
    conn: &ConnHandle,
    bufs: &mut Buffers,
) -> io::Result<Close> {
    let mut decoder = RequestDecoder::new(shard.limits);
    let mut received = Instant::now();
    loop {
        let mut close = None;
        let mut need = 0;
        // Answer every complete request already buffered.
        loop {
            let Buffers {
                read,
                write,
                scratch,
                dechunked,
                ..
            } = &mut *bufs;
            let decoded = catch_unwind(AssertUnwindSafe(|| {
                decoder.decode(read.pending(), dechunked)
            }));
            let msg = match decoded {
                Ok(Ok(Decoded::Complete(msg))) => msg,
                Ok(Ok(Decoded::Incomplete {
                    send_continue,
                    need: n,
                })) => {
                    if send_continue {
                        write.extend_from_slice(CONTINUE_100);
                    }
                    need = n;
                    break;
                }
                Ok(Err(e)) => {
                    let date = shard.service.date();
                    Responder::new(write, scratch, &date, ResponseMode::CLOSE)
                        .error(&ApiError::from(e));
                    close = Some(Close::Server);
                    break;
                }
                Err(_) => {
                    internal_error(shard, write, scratch);
                    close = Some(Close::Server);
                    break;
                }
            };
            conn.state.enter(Phase::Busy, received);
            let bytes = &read.buf[read.start..read.start + msg.consumed];
            let head = &msg.head;
            let body: &[u8] = match &msg.body {
                Body::Empty => &[],
                Body::InBuffer(range) => &bytes[range.clone()],
                Body::Dechunked => dechunked,
            };
            let request = Request {
                method: head.method,
                // httparse admits only visible ASCII and UTF-8 in a request target; anything else
                // was rejected as malformed.
                path: std::str::from_utf8(&bytes[head.path.clone()]).unwrap_or(""),
                body,
                inference_header: head.inference_header,
                received,
            };
            let mode = ResponseMode {
                keep_alive: head.keep_alive && !shard.service.is_draining(),
                head_only: head.method == Method::Head,
                http_1_0: head.minor_version == 0,
            };
            let mut mark = write.len();
            let date = shard.service.date();
            // Scoped so that everything borrowing the request's bytes ends here.
            let (keep_open, client_gone) = {
                let mut resp = Responder::new(write, scratch, &date, mode);
                let handled = catch_unwind(AssertUnwindSafe(|| {
                    shard.service.handle(&request, &mut resp)
                }));
                match handled {
                    Ok(Action::Done) => (resp.keep_alive(), false),
                    Ok(Action::Gather(what)) => {
                        gather(shard, what, &mut resp).await;
                        (resp.keep_alive(), false)
                    }
                    Ok(Action::Infer(mut job)) => {
                        let batcher = &shard.batchers[job.model];
                        match batcher.submit(&mut job, &conn.state) {
                            Err(e) => {
                                shard.service.finish_infer(&job, Err(e), &mut resp);
                                (resp.keep_alive(), false)
                            }
                            Ok(ticket) => {
                                // `resp` has written nothing: send what earlier pipelined
                                // requests got, so they do not wait on this one's batch.
                                if !write.is_empty() {
                                    flush(stream, write, conn).await?;
                                    conn.state.enter(Phase::Busy, Instant::now());
                                    mark = 0;
                                }
                                let outcome = ticket.await;
                                let mut resp = Responder::new(write, scratch, &date, mode);
                                let answered = catch_unwind(AssertUnwindSafe(|| {
                                    answer_infer(shard, &job, outcome, &mut resp)
                                }));
                                match answered {
                                    Ok(true) => (resp.keep_alive(), false),
                                    Ok(false) => (false, true),
                                    Err(_) => {
                                        write.truncate(mark);
                                        internal_error(shard, write, scratch);
                                        (false, false)
                                    }
                                }
                            }
                        }
                    }
                    Err(_) => {
                        // `resp` is not used past here, so `write` is ours again: drop whatever
                        // the panicked handler had half-written.
                        write.truncate(mark);
                        internal_error(shard, write, scratch);
                        (false, false)
                    }
                }
            };
            let response_bytes = write.len() - mark;
            read.start += msg.consumed;
            if !keep_open {
                close = Some(if head.keep_alive && !client_gone {
                    Close::Server
                } else {
                    Close::Client
                });
                break;
            }
            bufs.observe(msg.consumed, response_bytes, shard);
            if bufs.write.len() >= FLUSH_THRESHOLD_BYTES {
                flush(stream, &mut bufs.write, conn).await?;
            }
            // A client pipelining thousands of requests must not starve the shard's other tasks.
            glommio::yield_if_needed().await;
        }
        let flushed_at = flush(stream, &mut bufs.write, conn).await?;
        if let Some(close) = close {
            return Ok(close);
        }
        let read = &mut bufs.read;
        read.make_room(need);
        match (read.start == read.end, decoder.is_idle()) {
            // The idle clock starts when the last response left, not when its request arrived.
            (true, true) => conn
                .state
                .enter(Phase::Idle, flushed_at.unwrap_or(received)),
            (false, true) => conn.state.enter(Phase::Head, received),
            (_, false) => conn.state.enter(Phase::Body, received),
        }
        // While draining, an idle connection still reads: the sweeper shuts its read side, so
        // this returns end-of-file at once, or first a request the client already sent, which is
        // then answered (with `Connection: close`).
        let n = stream.read(&mut read.buf[read.end..]).await?;
        if n == 0 {
            return Ok(Close::Client);
        }
        read.end += n;
        received = Instant::now();
    }
}

/// Answers a request that needs every shard's numbers.
async fn gather(shard: &Shard, what: Gather, resp: &mut Responder<'_>) {
    let all = match shard.mesh.gather(what, shard.snapshot(what)).await {
        Ok(all) => all,
        Err(e) => return resp.error(&e),
    };
    match what {
        Gather::Stats { only } => {
            let mut merged = StatsSnapshot::default();
            for s in &all {
                if let Snapshot::Stats(s) = s {
                    merged.merge(s);
                }
            }
            shard.service.answer_stats(only, &merged, resp);
        }
        Gather::Metrics => {
            let shards: Vec<_> = all
                .into_iter()
                .filter_map(|s| match s {
                    Snapshot::Metrics(m) => Some(m),
                    Snapshot::Stats(_) => None,
                })
                .collect();
            shard.service.answer_metrics(&shards, resp);
        }
    }
}

/// Answers an infer request once its batcher is done with it. Returns false when the client left
/// before the request was batched: there is nobody to answer.
fn answer_infer(
    shard: &Shard,
    job: &InferJob<'_>,
    outcome: Outcome,
    resp: &mut Responder<'_>,
) -> bool {
    match outcome {
        Outcome::Ran {
            result,
            index,
            dispatched,
            infer_start,
            infer_end,
        } => {
            let outputs = result.view(index);
            let ran = Ran {
                outputs: &outputs,
                dispatched,
                infer_start,
                infer_end,
            };
            shard.service.finish_infer(job, Ok(ran), resp);
            drop(outputs);
            shard.batchers[job.model].recycle(result);
            true
        }
        Outcome::Failed(e) => {
            shard.service.finish_infer(job, Err(e), resp);
            true
        }
        Outcome::Dropped => {
            shard.service.record_cancelled(job.model);
            false
        }
    }
}

/// Answers 500 after a panic, closing the connection.
fn internal_error(shard: &Shard, write: &mut Vec<u8>, scratch: &mut Vec<u8>) {
    tracing::error!(
        shard = shard.id,
        "a request panicked; answered 500 and closed its connection"
    );
    let date = shard.service.date();
    Responder::new(write, scratch, &date, ResponseMode::CLOSE).error(&ApiError::internal(
        "internal error; this is a bug in friday",
    ));
}

/// Writes and clears the output buffer. While it waits on a client that does not read, the
/// connection is in the `Write` phase, which the sweeper times out like an idle one; each bit of
/// progress restarts that clock. Returns when the write started, if there was anything to write.
async fn flush(
    stream: &mut TcpStream,
    write: &mut Vec<u8>,
    conn: &ConnHandle,
) -> io::Result<Option<Instant>> {
    if write.is_empty() {
        return Ok(None);
    }
    let started = Instant::now();
    conn.state.enter(Phase::Write, started);
    let mut sent = stream.write(write).await?;
    while sent < write.len() {
        conn.state.enter(Phase::Write, Instant::now());
        match stream.write(&write[sent..]).await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => sent += n,
        }
    }
    write.clear();
    Ok(Some(started))
}

/// Closing a socket with unread bytes makes the kernel answer with a reset, which can destroy the
/// last response before the client reads it. So when the server closes a connection the client
/// may still be writing to, shut the write side and read and discard for a bounded time first
/// (what nginx calls a lingering close).
pub(crate) async fn linger(stream: &mut TcpStream, buf: &mut [u8]) {
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    let _ = glommio::timer::timeout(LINGER_TIME, async {
        let mut total = 0;
        while let Ok(n) = stream.read(buf).await {
            total += n;
            if n == 0 || total > LINGER_MAX_BYTES {
                break;
            }
        }
        Ok(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_room_compacts_then_grows_by_doubling() {
        let mut r = ReadBuf::new(Vec::with_capacity(8));
        assert_eq!(r.buf.len(), 8);
        r.buf[..8].copy_from_slice(b"abcdefgh");
        r.start = 6;
        r.end = 8;
        r.make_room(4);
        assert_eq!((r.start, r.end), (0, 2));
        assert_eq!(r.pending(), b"gh");
        r.end = 8;
        r.make_room(1 << 30);
        assert_eq!(r.buf.len(), 16, "a claimed size does not allocate up front");
        assert_eq!(&r.buf[..2], b"gh");
        r.end = 16;
        r.make_room(20);
        assert_eq!(r.buf.len(), 20, "never beyond what the request needs");
        r.start = r.end;
        r.make_room(1);
        assert_eq!((r.start, r.end), (0, 0));
    }

    #[test]
    fn make_room_always_leaves_space_to_read() {
        let mut r = ReadBuf::new(Vec::with_capacity(4));
        r.end = 4;
        r.make_room(0);
        assert!(r.buf.len() > r.end);
    }

    #[test]
    fn shrink_keeps_pending_bytes() {
        let mut r = ReadBuf::new(Vec::with_capacity(RETAIN_MAX_BYTES + 1));
        r.buf[100..103].copy_from_slice(b"xyz");
        r.start = 100;
        r.end = 103;
        r.shrink(16);
        assert_eq!(r.buf.len(), 16);
        assert_eq!(r.pending(), b"xyz");
    }
}
