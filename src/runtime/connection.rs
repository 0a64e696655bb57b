//! One connection as a state machine: bytes in, every complete request answered in order, bytes
//! out, driven by the shard loop's events.
//!
//! A connection has at most one receive and one send in flight on the shard's engine. Responses
//! are encoded into `write`; a send takes the whole of it (the buffers swap, so encoding goes on
//! while the send is on the wire) and partial sends continue from where they stopped. Pipelined
//! requests are answered one after another into `write`, so they leave in order; decoding pauses
//! once [`FLUSH_THRESHOLD_BYTES`] wait to be sent, which bounds what a client that pipelines and
//! never reads can pin.
//!
//! A request that needs more than this thread can answer now parks the connection: an infer
//! request waiting for its batch (unless the model is inline and idle, when it runs at once on
//! the bytes it arrived in), or a statistics gather waiting for the other shards. Responses to
//! earlier pipelined requests are sent before it parks, so they never wait on a later batch. The
//! shard resumes the connection when the outcome is ready.
//!
//! A generate request parks too, in its model's decoder: a stream writes its response head at
//! once and then one chunk of events each time the decoder releases text, while the client is
//! sent what came before; past `generate.stream_buffer_bytes` unsent, its sequence sits out of
//! the running batch until the client takes some. Large binary tails can go zero-copy; the
//! kernel may then read their memory (and the read buffer) until its completions, so nothing is
//! read or decoded until the last one.
//!
//! Buffers come from the shard's pools, grow with what actually arrives (never with what a
//! header merely claims), shrink back after a run of small requests, and go back to the pools on
//! close. A framing error answers 400/413/431/501 and closes the connection, since the byte
//! stream can no longer be trusted; a bad request body only fails that request. A panic while
//! decoding or handling a request answers 500 and closes the connection; it never unwinds into
//! the shard. A server-side close lingers: the write side is shut and what the client still
//! sends is read and discarded for a bounded time, so a reset cannot destroy the last response.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use std::rc::Rc;

use super::batcher::{Batcher, Outcome};
use super::buffers::BufferPool;
use super::buffers::RETAIN_MAX_BYTES;
use super::engine::{Engine, Event};
use super::mesh::{GatherStart, Snapshot};
use super::shard::Core;
use crate::batch::assemble::{self, within, BatchResult};
use crate::error::{ApiError, ErrorKind};
use crate::generate::decoder::Taken;
use crate::generate::Finish;
use crate::http::{
    write_chunk, Body, Decoded, Deferred, Message, Method, RequestDecoder, Responder, ResponseMode,
    TailPart, CONTINUE_100, ENCODE_SLICE_BYTES, EVENT_STREAM, LAST_CHUNK,
};
use crate::protocol::generate::{write_error_event, write_generate_output, write_output_event};
use crate::service::{Action, Gather, GenerateJob, InferJob, Ran, Request};
use crate::stats::{RequestTimes, StatsSnapshot};

/// Stop decoding pipelined requests while this much output waits to be sent.
const FLUSH_THRESHOLD_BYTES: usize = 64 << 10;
/// The most one receive or send moves: the kernel copies (and faults in) that much at most for
/// one connection in one loop turn, so a few clients moving tens of MiB each take turns with
/// everyone else instead of holding the shard for milliseconds each.
const MAX_IO_BYTES: usize = 512 << 10;
/// Before closing a connection the client may still be writing to, how long to keep reading
/// (and discarding).
pub(crate) const LINGER_TIME: Duration = Duration::from_millis(500);
/// ... and how many bytes at most.
const LINGER_MAX_BYTES: usize = 1 << 20;
/// Buffers that grew past `RETAIN_MAX_BYTES` shrink back after this many small requests in a
/// row, so one large request does not pin its memory, and a stream of large ones does not
/// reallocate on every request.
const SHRINK_AFTER_SMALL_REQUESTS: u32 = 8;

/// A connection's read buffer: `buf[start..]` is received and not yet consumed. Receives go
/// into the spare capacity past `buf.len()`, so growing the buffer neither zeroes it nor touches
/// its pages: the kernel faults them in as bytes arrive, a receive at a time, rather than the
/// shard all at once when a large body's buffer doubles.
pub(crate) struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
}

impl ReadBuf {
    fn new(mut buf: Vec<u8>) -> Self {
        buf.clear();
        ReadBuf { buf, start: 0 }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Where the next received byte goes.
    fn end(&self) -> usize {
        self.buf.len()
    }

    /// Bytes it can hold without growing.
    fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Forgets everything received.
    fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// The spare capacity a receive may fill.
    fn spare(&mut self) -> &mut [std::mem::MaybeUninit<u8>] {
        self.buf.spare_capacity_mut()
    }

    /// Counts `n` bytes a receive wrote into the spare capacity.
    ///
    /// # Safety
    /// The first `n` bytes of [`ReadBuf::spare`] were written.
    unsafe fn received(&mut self, n: usize) {
        debug_assert!(self.buf.len() + n <= self.buf.capacity());
        // SAFETY: the caller says those bytes were written; they are within the capacity.
        unsafe { self.buf.set_len(self.buf.len() + n) };
    }

    /// Makes room to read: afterwards the spare capacity is non-empty. `need` is how many bytes
    /// the current request needs from `start`; the buffer grows toward it by doubling, so memory
    /// follows the bytes that actually arrive, not a Content-Length a client merely claims. A
    /// `need` of one byte more than is pending means the size is unknown (a head, a chunked
    /// body): the buffer doubles, so a large chunked body is not read a byte at a time.
    fn make_room(&mut self, need: usize) {
        if self.start == self.end() {
            self.clear();
        }
        let pending = self.end() - self.start;
        let need = need.max(pending + 1);
        if self.start > 0 && self.capacity() - self.start < need {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.end() == self.capacity() {
            let cap = self.capacity().max(1);
            let doubled = cap.saturating_mul(2);
            let unknown = need <= pending + 1;
            let new_cap = if unknown { doubled } else { need.min(doubled) };
            self.buf
                .reserve_exact(new_cap.max(self.end() + 1) - self.end());
        }
    }

    /// Returns to `initial` bytes if the buffer grew past the retention limit and what is
    /// pending fits.
    fn shrink(&mut self, initial: usize) {
        let pending = self.end() - self.start;
        if self.capacity() > RETAIN_MAX_BYTES && pending <= initial {
            let mut small = Vec::with_capacity(initial);
            small.extend_from_slice(self.pending());
            self.buf = small;
            self.start = 0;
        }
    }
}

/// What a connection is doing, for the shard's timeout sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Between requests, nothing buffered.
    Idle,
    /// Part of a request head has arrived.
    Head,
    /// The head is in; the body is arriving.
    Body,
    /// Answering; never timed out (the model may take a while).
    Busy,
    /// Waiting for the client to take a response; timed out like `Idle`, restarted by progress.
    Write,
    /// Closing by the server: reading and discarding for at most [`LINGER_TIME`].
    Linger,
    /// Resting in a saturated model's line: nothing is read until the model has room (at most
    /// [`super::batcher::MAX_HOLD`]); not timed out.
    Held,
}

/// Why the connection is closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// The client asked (`Connection: close`, HTTP/1.0) or hung up.
    Client,
    /// The server decided (framing error, drain, panic): the client may still be sending.
    Server,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    /// Serving requests.
    Open,
    /// Write side shut; discarding what the client still sends.
    Linger,
    /// Socket shut down; waiting for its operations to end.
    Closing,
}

/// What a parked connection waits for, and what it needs to answer then.
// Kept in the connection, not boxed: boxing would allocate for every parked request.
#[allow(clippy::large_enum_variant)]
enum Parked {
    /// An infer request in its model's batcher.
    Infer {
        job: InferJob<'static>,
        ticket: usize,
        head: HeadInfo,
    },
    /// A statistics or metrics gather across shards.
    Gather {
        what: Gather,
        ticket: u64,
        head: HeadInfo,
    },
    /// A repository call to the model manager.
    Repository { ticket: u64, head: HeadInfo },
    /// A generate request in its model's decoder: streaming its tokens as they come
    /// (`stream: Some(chunked)`, the response head already written), or waiting for the end.
    Generate {
        slot: usize,
        ticket: usize,
        head: HeadInfo,
        stream: Option<bool>,
        /// The stream's head said keep-alive.
        keep_alive: bool,
    },
}

/// What answering a request needs to know of its head once its bytes are gone.
#[derive(Debug, Clone, Copy)]
struct HeadInfo {
    keep_alive: bool,
    head_only: bool,
    http_1_0: bool,
}

impl HeadInfo {
    /// The response mode, decided when the response is written: a response written while the
    /// shard drains closes its connection.
    fn mode(&self, draining: bool) -> ResponseMode {
        ResponseMode {
            keep_alive: self.keep_alive && !draining,
            head_only: self.head_only,
            http_1_0: self.http_1_0,
        }
    }
}

/// How answering one request went, for the connection.
struct Answered {
    /// The response keeps the connection open.
    keep_open: bool,
    /// The client left before its request was batched.
    client_gone: bool,
    /// The connection went into its model's line (see [`Batcher::hold`]).
    held: bool,
    /// What the response's deferred tails lie in (see [`Responder::deferring`]).
    keep: Keep,
}

impl Answered {
    fn new(keep_open: bool) -> Self {
        Answered {
            keep_open,
            client_gone: false,
            held: false,
            keep: Keep::Nothing,
        }
    }
}

/// Memory a response's deferred tails lie in, kept alive until they are sent: beyond the
/// connection's own read and dechunk buffers (which stay put meanwhile), the buffers of the batch
/// that computed them.
enum Keep {
    Nothing,
    /// The buffers of a batch run on the idle fast path.
    Buffers(SmallVec<[Vec<u8>; 2]>),
    /// A queued request's batch, shared with the other requests in it.
    Batch(Rc<BatchResult<'static>>),
}

impl Keep {
    fn holds(&self, addr: usize, len: usize) -> bool {
        match self {
            Keep::Nothing => false,
            Keep::Buffers(bufs) => bufs.iter().any(|b| within(b, addr, len)),
            Keep::Batch(result) => result.holds(addr, len),
        }
    }

    /// Lets go of the memory: back to the tensor pool.
    fn recycle(self, pool: &BufferPool) {
        match self {
            Keep::Nothing => {}
            Keep::Buffers(bufs) => bufs.into_iter().for_each(|b| pool.give(b)),
            Keep::Batch(result) => Batcher::recycle(result, pool),
        }
    }
}

/// What the last response left to send after what `write` held when it was answered (see
/// [`Responder::deferring`]): large binary tensor data, sent from where it lies, or large tensors'
/// JSON data, written a slice per loop turn in chunked coding. Until it has all gone, the
/// connection decodes and reads nothing (its read and dechunk buffers may be where the data
/// lies), so nothing can come between.
struct Tails {
    /// The parts, in order; no `Raw` part is empty.
    d: Deferred,
    /// The part being sent, and how much of it has gone.
    next: usize,
    off: usize,
    keep: Keep,
    /// What `keep` holds for this answer, for the shard's buffer count (see
    /// [`Connection::secure_tails`]).
    kept_bytes: usize,
    /// The first part has started: what `write` held before the tails has gone.
    started: bool,
}

impl Tails {
    fn new() -> Self {
        Tails {
            d: Deferred::default(),
            next: 0,
            off: 0,
            keep: Keep::Nothing,
            kept_bytes: 0,
            started: false,
        }
    }

    fn pending(&self) -> bool {
        self.next < self.d.parts.len()
    }

    /// Counts `n` bytes sent of the current (`Raw`) part; says whether any are left.
    fn advance(&mut self, n: usize) -> bool {
        self.off += n;
        if let TailPart::Raw { len, .. } = self.d.parts[self.next] {
            if self.off == len {
                self.next += 1;
                self.off = 0;
            }
        }
        self.pending()
    }

    /// Writes the next chunk of a chunked body into `out`: the text parts up to the next slice
    /// of encoded data, and that slice; after the last part, the last chunk.
    fn write_next_chunk(&mut self, scratch: &mut Vec<u8>, out: &mut Vec<u8>) {
        self.started = true;
        scratch.clear();
        while let Some(part) = self.d.parts.get(self.next) {
            match part {
                TailPart::Text(text) => {
                    scratch.extend_from_slice(text);
                    self.next += 1;
                }
                &TailPart::Encoded {
                    addr,
                    len,
                    datatype,
                    encode,
                } => {
                    let element = datatype.element_size().unwrap_or(1).max(1);
                    let take = (len - self.off).min(ENCODE_SLICE_BYTES / element * element);
                    if self.off > 0 {
                        scratch.push(b',');
                    }
                    // SAFETY: `secure_tails` checked that the data lies in memory this
                    // connection keeps until the tails have gone (or dropped them).
                    let data =
                        unsafe { std::slice::from_raw_parts((addr + self.off) as *const u8, take) };
                    encode(datatype, data, scratch);
                    self.off += take;
                    if self.off >= len {
                        self.next += 1;
                        self.off = 0;
                    }
                    break;
                }
                TailPart::Raw { .. } => unreachable!("a chunked body has no raw parts"),
            }
        }
        write_chunk(out, scratch);
        if !self.pending() {
            out.extend_from_slice(LAST_CHUNK);
        }
    }

    /// Forgets the parts still to send, keeping their memory (the kernel may still read it).
    fn forget_parts(&mut self) {
        self.d.clear();
        self.next = 0;
        self.off = 0;
        self.started = false;
    }

    /// Forgets the tails (sent, or the client is gone) and lets go of their memory.
    fn finish(&mut self, pool: &BufferPool) {
        self.d.clear();
        self.next = 0;
        self.off = 0;
        self.kept_bytes = 0;
        self.started = false;
        std::mem::replace(&mut self.keep, Keep::Nothing).recycle(pool);
    }
}

/// One accepted connection.
pub(crate) struct Connection {
    fd: OwnedFd,
    read: ReadBuf,
    /// Responses being encoded.
    write: Vec<u8>,
    /// Responses on the wire; `sent` bytes of it have left.
    sending: Vec<u8>,
    sent: usize,
    scratch: Vec<u8>,
    dechunked: Vec<u8>,
    /// Text a generate request's decoder released, on its way into an event or an answer.
    generated: Vec<u8>,
    /// The last response's binary tensor data, still to be sent from where it lies.
    tails: Tails,
    /// The send in flight is from `tails`.
    tail_in_flight: bool,
    /// Zero-copy sends of tails whose buffers the kernel may still read (an
    /// [`Event::ZeroCopyDone`] is owed for each): until none is left, the tails' memory and the
    /// read buffer stay as they are.
    zc_outstanding: u32,
    small_streak: u32,
    decoder: RequestDecoder,
    /// When the last bytes arrived.
    received: Instant,
    /// How many bytes the request being read needs from `read.start`.
    need: usize,
    recv_in_flight: bool,
    send_in_flight: bool,
    parked: Option<Parked>,
    /// Close once the responses written so far are sent.
    close_after: Option<Close>,
    life: Life,
    /// The client closed its side: no more bytes will come.
    eof: bool,
    /// Decoding stopped with complete requests possibly still buffered (too much output waited,
    /// or a request parked): read nothing more until they are answered.
    backlog: bool,
    lingered: usize,
    phase: Phase,
    since: Instant,
    /// Our own shutdowns so far (`SHUT_RD`, `SHUT_WR` or `SHUT_RDWR` for the sweep, the drain
    /// or a close): what the socket then reports is not the client leaving.
    shut_read: bool,
    shut_write: bool,
    /// The client hung up while a request was parked.
    gone: bool,
    /// A request has arrived on it: until then, the header deadline runs from accept.
    served: bool,
    /// It rests in a model's line (see [`Batcher::hold`]): nothing more is read or decoded until
    /// the batcher releases it.
    held: bool,
    /// Unique among the shard's connections for its life (slab keys are reused).
    id: u64,
    /// It has just come out of a model's line: its next infer request takes the slot it was
    /// let out for, rather than going behind the others still resting.
    from_line: bool,
    /// Bytes received since accept, and the count when the current body began (with when), for
    /// the minimum body rate.
    received_bytes: u64,
    body_start: (Instant, u64),
    /// Bytes sent since accept, and the count when the current run of sending began (with
    /// when), for the minimum send rate.
    sent_bytes: u64,
    send_start: (Instant, u64),
    /// Sends follow one another without a pause (a response in parts, pipelined responses):
    /// the minimum send rate is measured over the whole run.
    send_run: bool,
    /// Bytes of buffer this connection has counted into the shard's `buffered`.
    footprint: usize,
    /// The size the request being read was admitted at against the buffer budget (its
    /// Content-Length, reserved at once so that other connections see it), or 0.
    reserved: usize,
}

impl Connection {
    /// A connection on `fd`, with buffers from the shard's pools.
    pub(crate) fn new(fd: OwnedFd, core: &Core, now: Instant) -> Self {
        Connection {
            fd,
            read: ReadBuf::new(core.pools.read.take()),
            write: core.pools.write.take(),
            sending: core.pools.write.take(),
            sent: 0,
            scratch: core.pools.write.take(),
            dechunked: Vec::new(),
            generated: Vec::new(),
            tails: Tails::new(),
            tail_in_flight: false,
            zc_outstanding: 0,
            small_streak: 0,
            decoder: RequestDecoder::new(core.limits),
            received: now,
            need: 0,
            recv_in_flight: false,
            send_in_flight: false,
            parked: None,
            close_after: None,
            life: Life::Open,
            eof: false,
            backlog: false,
            lingered: 0,
            phase: Phase::Idle,
            since: now,
            shut_read: false,
            shut_write: false,
            gone: false,
            served: false,
            held: false,
            id: core.accepted(),
            from_line: false,
            received_bytes: 0,
            body_start: (now, 0),
            sent_bytes: 0,
            send_start: (now, 0),
            send_run: false,
            footprint: 0,
            reserved: 0,
        }
    }

    /// The socket.
    pub(crate) fn fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// What it is doing, and since when.
    pub(crate) fn phase(&self) -> (Phase, Instant) {
        (self.phase, self.since)
    }

    /// Whether its read side is shut (by the drain, a timeout or a close): its receive ends, and
    /// a hang-up seen on it may be our own doing.
    pub(crate) fn is_read_shut(&self) -> bool {
        self.shut_read
    }

    /// Whether both sides are shut: nothing more to do to it.
    pub(crate) fn is_shut(&self) -> bool {
        self.shut_read && self.shut_write
    }

    /// When the body being read began, and how many of its bytes have arrived since.
    pub(crate) fn body_progress(&self) -> (Instant, u64) {
        (self.body_start.0, self.received_bytes - self.body_start.1)
    }

    /// When the current run of sending began, and how many bytes have left since.
    pub(crate) fn send_progress(&self) -> (Instant, u64) {
        (self.send_start.0, self.sent_bytes - self.send_start.1)
    }

    /// Whether a request has arrived on it (a silent new connection is timed out like a head).
    pub(crate) fn has_served(&self) -> bool {
        self.served
    }

    /// Whether its client hung up while a request was parked.
    pub(crate) fn is_gone(&self) -> bool {
        self.gone
    }

    /// Marks its client as gone (the sweep saw a hang-up while a request was parked).
    pub(crate) fn set_gone(&mut self) {
        self.gone = true;
    }

    /// Shuts the socket down (`how` as for `shutdown(2)`): its pending receive ends.
    pub(crate) fn shut_down(&mut self, how: i32) {
        // SAFETY: shutdown on a socket this connection owns; no memory is involved.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), how) };
        self.shut_read |= how != libc::SHUT_WR;
        self.shut_write |= how != libc::SHUT_RD;
    }

    /// Cuts a client that does not take its response: shuts the socket down like
    /// [`Connection::shut_down`], and makes the close a reset, so the kernel drops what its
    /// send buffer still holds for the client rather than keep it until the client reads it.
    pub(crate) fn reset(&mut self) {
        if self.zc_outstanding > 0 {
            // Shutting down would leave the data (and the buffers it was sent from) queued for a
            // client that does not read; only aborting frees them. Nothing more is answered.
            self.close_after = Some(Close::Client);
            return self.abort();
        }
        let _ = socket2::SockRef::from(&self.fd).set_linger(Some(Duration::ZERO));
        self.shut_down(libc::SHUT_RDWR);
    }

    /// Whether it has ended: closing, with no operation in flight. The shard then frees it.
    pub(crate) fn is_finished(&self) -> bool {
        self.life == Life::Closing && !self.has_io_in_flight()
    }

    /// Whether an operation is still on the engine, or the kernel may still read a zero-copy
    /// send's buffer (its buffers must stay put).
    pub(crate) fn has_io_in_flight(&self) -> bool {
        self.recv_in_flight || self.send_in_flight || self.zc_outstanding > 0
    }

    /// Whether a response's tails are still being sent, or their memory still read by the
    /// kernel: nothing is read or decoded meanwhile (the tails may lie in the read buffer).
    fn tails_busy(&self) -> bool {
        self.tails.pending() || self.zc_outstanding > 0
    }

    /// Lets go of the tails: their memory at once, or once the kernel is done with it.
    fn finish_tails(&mut self, core: &Core) {
        if self.zc_outstanding == 0 {
            self.tails.finish(&core.pools.tensor);
        } else {
            self.tails.forget_parts();
        }
    }

    /// The kernel no longer reads the buffer of one of its zero-copy sends.
    pub(crate) fn on_zero_copy_done(&mut self, key: usize, core: &mut Core, engine: &mut Engine) {
        self.zc_outstanding = self.zc_outstanding.saturating_sub(1);
        if self.zc_outstanding == 0 && !self.tails.pending() {
            self.tails.finish(&core.pools.tensor);
        }
        self.advance(key, core, engine);
    }

    /// Gives up on it at the drain deadline: shut down, or aborted if the kernel holds zero-copy
    /// buffers of its (which a shutdown would leave queued for a client that does not read).
    pub(crate) fn abandon(&mut self) {
        if self.zc_outstanding > 0 {
            self.abort();
        } else {
            self.shut_down(libc::SHUT_RDWR);
        }
    }

    /// Aborts the TCP connection: the kernel drops what it still holds to send (and so lets go
    /// of zero-copy buffers, whose completions then come) and sends a reset.
    fn abort(&mut self) {
        // SAFETY: connect(2) with an AF_UNSPEC address we own on our socket: for TCP this
        // disconnects (tcp_disconnect); no memory of ours is kept.
        let r = unsafe {
            let mut addr: libc::sockaddr = std::mem::zeroed();
            addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
            libc::connect(
                self.fd.as_raw_fd(),
                &addr,
                std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
            )
        };
        if r != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "cannot abort a connection");
        }
        self.shut_down(libc::SHUT_RDWR);
    }

    /// Forgets an operation whose event came after the shard gave up on the connection (drain
    /// deadline): nothing more is done with it.
    pub(crate) fn forget_io(&mut self, event: &Event) {
        match event {
            Event::Received { .. } => self.recv_in_flight = false,
            Event::Sent { .. } => self.send_in_flight = false,
            Event::ZeroCopyDone { .. } => {
                self.zc_outstanding = self.zc_outstanding.saturating_sub(1)
            }
            Event::Accepted(_) | Event::Doorbell => {}
        }
    }

    /// Gives its buffers back to the pools (the shard calls this once it is finished).
    pub(crate) fn release(mut self, core: &mut Core) -> OwnedFd {
        core.buffered -= self.footprint;
        self.tails.finish(&core.pools.tensor);
        core.pools.read.give(self.read.buf);
        core.pools.write.give(self.write);
        core.pools.write.give(self.sending);
        core.pools.write.give(self.scratch);
        self.fd
    }

    /// Starts serving: the first receive.
    pub(crate) fn start(&mut self, key: usize, core: &mut Core, engine: &mut Engine) {
        self.advance(key, core, engine);
    }

    /// A receive ended.
    pub(crate) fn on_received(
        &mut self,
        key: usize,
        result: io::Result<usize>,
        core: &mut Core,
        engine: &mut Engine,
    ) {
        self.recv_in_flight = false;
        match (self.life, result) {
            (Life::Open, Ok(n)) if n > 0 => {
                // SAFETY: the receive wrote `n` bytes into the spare capacity it was given.
                unsafe { self.read.received(n) };
                self.received = Instant::now();
                self.received_bytes += n as u64;
            }
            (Life::Open, _) if self.parked.is_some() => self.left_while_parked(core),
            // End of stream: answer every request already buffered, then close (`process`
            // closes at the first incomplete request once `eof` is set).
            (Life::Open, Ok(_)) => self.eof = true,
            (Life::Open, Err(_)) => self.close_after = Some(Close::Client),
            (Life::Linger, Ok(n)) if n > 0 && self.lingered + n <= LINGER_MAX_BYTES => {
                self.lingered += n;
                // SAFETY: as above; the bytes are then discarded.
                unsafe { self.read.received(n) };
                self.read.clear();
            }
            (Life::Linger, _) => self.life = Life::Closing,
            (Life::Closing, _) => {}
        }
        self.advance(key, core, engine);
    }

    /// A send ended.
    pub(crate) fn on_sent(
        &mut self,
        key: usize,
        result: io::Result<usize>,
        core: &mut Core,
        engine: &mut Engine,
    ) {
        self.send_in_flight = false;
        let tail = std::mem::take(&mut self.tail_in_flight);
        match result {
            Ok(n) if n > 0 => {
                self.sent_bytes += n as u64;
                if tail {
                    if self.tails.advance(n) {
                        // Progress: the client is reading. Send the rest (which restarts the
                        // clock).
                        self.send_tail(key, core, engine);
                        return;
                    }
                    self.finish_tails(core);
                } else {
                    self.sent += n;
                    if self.sent < self.sending.len() {
                        // Progress: the client is reading. Send the rest (which restarts the
                        // clock).
                        self.send_from_sending(key, engine);
                        return;
                    }
                    self.sending.clear();
                    self.sent = 0;
                }
                self.since = Instant::now();
                // The run goes on if more output already waits (`advance` sends it now).
                self.send_run = !self.write.is_empty() || self.tails.pending();
            }
            _ => {
                // The client is gone (reset, or a socket the sweep shut down): nothing more can
                // reach it.
                self.sending.clear();
                self.write.clear();
                self.finish_tails(core);
                self.sent = 0;
                if self.parked.is_some() {
                    self.left_while_parked(core);
                } else {
                    self.life = Life::Closing;
                }
            }
        }
        self.advance(key, core, engine);
    }

    /// The client closed its side (or the socket failed) while its request waits: the batcher
    /// drops the request if it has not run yet; otherwise the answer is still written, and the
    /// connection closes after it.
    fn left_while_parked(&mut self, core: &mut Core) {
        self.eof = true;
        self.gone = true;
        core.client_gone();
    }

    /// The outcome a parked request waited for is ready.
    pub(crate) fn resume(&mut self, key: usize, core: &mut Core, engine: &mut Engine) {
        if matches!(self.parked, Some(Parked::Generate { .. })) {
            self.resume_generate(core);
            self.advance(key, core, engine);
            return;
        }
        let Some(parked) = self.parked.take() else {
            return;
        };
        let draining = core.service.is_draining();
        let date = core.service.date();
        let mark = self.write.len();
        let (answered, keep_alive) = match parked {
            Parked::Infer { job, ticket, head } => {
                let outcome = match core.batchers.get_mut(job.model) {
                    Some(b) => b.take(ticket),
                    None => Outcome::Failed(ApiError::internal(
                        "the request's model version is gone from this shard; this is a bug in \
                         friday",
                    )),
                };
                let mut resp = Responder::new(
                    &mut self.write,
                    &mut self.scratch,
                    &date,
                    head.mode(draining),
                )
                .deferring(&mut self.tails.d);
                let answered = catch_unwind(AssertUnwindSafe(|| {
                    answer_infer(core, &job, outcome, &mut resp)
                }));
                // Others wait for room in this model: take a turn behind them rather than read
                // a next request that would only be refused.
                let answered = answered.map(|mut a| {
                    a.held = a.keep_open
                        && !draining
                        && core.service.state().registry().slot(job.model).is_some()
                        && core
                            .batchers
                            .get_mut(job.model)
                            .is_some_and(|b| hold_if_saturated(b, key, self.id));
                    a
                });
                (answered.ok(), head.keep_alive)
            }
            Parked::Repository { ticket, head } => {
                let result = core.mesh.take_call(ticket);
                let mut resp = Responder::new(
                    &mut self.write,
                    &mut self.scratch,
                    &date,
                    head.mode(draining),
                );
                match result {
                    Ok(body) => resp.bytes(200, crate::http::JSON, &body),
                    Err(e) => resp.error(&e),
                }
                (Some(Answered::new(resp.keep_alive())), head.keep_alive)
            }
            Parked::Gather { what, ticket, head } => {
                let gathered = core.mesh.take(ticket);
                let mut resp = Responder::new(
                    &mut self.write,
                    &mut self.scratch,
                    &date,
                    head.mode(draining),
                );
                let answered = catch_unwind(AssertUnwindSafe(|| {
                    answer_gather(core, what, gathered, &mut resp);
                    Answered::new(resp.keep_alive())
                }));
                (answered.ok(), head.keep_alive)
            }
            Parked::Generate { .. } => unreachable!("resumed by resume_generate"),
        };
        let answered = answered.unwrap_or_else(|| {
            self.write.truncate(mark);
            self.tails.d.clear();
            internal_error(core, &mut self.write, &mut self.scratch);
            Answered::new(false)
        });
        self.after_answer(&answered, keep_alive);
        self.secure_tails(answered.keep, core);
        self.advance(key, core, engine);
    }

    /// Its generate request's decoder has something for it: tokens to stream, or the end. A
    /// stream writes one event per wake-up (the text released since the last one), its last
    /// event with `finish_reason`, or an error event; a one-shot request answers once its
    /// sequence has ended. A sequence whose client left ends without a word, and the connection
    /// closes.
    fn resume_generate(&mut self, core: &mut Core) {
        let Some(Parked::Generate {
            slot,
            ticket,
            head,
            stream,
            keep_alive,
        }) = self.parked
        else {
            return;
        };
        let mut text = std::mem::take(&mut self.generated);
        text.clear();
        let taken = match core.decoder(slot) {
            Some(d) if stream.is_none() && !d.ended(ticket) => {
                self.generated = text;
                return;
            }
            Some(d) => d.take(ticket, &mut text),
            None => Taken::gone(),
        };
        let draining = core.service.is_draining();
        let keep_open = match stream {
            Some(chunked) => {
                self.write_events(core, slot, &text, taken.ended.as_ref(), chunked);
                keep_alive && chunked && !draining
            }
            None => {
                let date = core.service.date();
                let mut resp = Responder::new(
                    &mut self.write,
                    &mut self.scratch,
                    &date,
                    head.mode(draining),
                );
                let (name, version) = core
                    .service
                    .slot(slot)
                    .map_or(("?", "?"), |e| (e.name(), e.version.as_str()));
                match &taken.ended {
                    Some(Finish::Cancelled) | None => {}
                    Some(why @ (Finish::Stop | Finish::Length)) => {
                        write_generate_output(name, version, &text, why.reason(), resp.scratch());
                        resp.send_scratch(200, &[]);
                    }
                    Some(why) => resp.error(&generate_error(why, name)),
                }
                resp.keep_alive()
            }
        };
        self.generated = text;
        let Some(why) = taken.ended else { return };
        if let Some(d) = core.decoder(slot) {
            d.remove(ticket);
        }
        let now = Instant::now();
        if matches!(why, Finish::TimedOut | Finish::Failed(_)) {
            core.service
                .stats()
                .record_failure(slot, taken.received, now);
        }
        if matches!(why, Finish::Stop | Finish::Length) {
            // Triton's statistics: a generation is one inference; its compute is the whole
            // generation (the running batch is shared, so no batch of its own is counted).
            core.service.stats().record_success(
                slot,
                1,
                &RequestTimes {
                    received: taken.received,
                    decoded: taken.admitted,
                    dispatched: taken.admitted,
                    infer_start: taken.admitted,
                    infer_end: now,
                    encode_start: now,
                    encoded: now,
                },
            );
        }
        self.parked = None;
        let cancelled = why == Finish::Cancelled;
        let answered = Answered {
            client_gone: cancelled,
            ..Answered::new(keep_open && !cancelled)
        };
        self.after_answer(&answered, head.keep_alive);
    }

    /// Writes a stream's events for the text a step released and, if it has ended, its last
    /// event (or an error event) and the end of the body.
    fn write_events(
        &mut self,
        core: &Core,
        slot: usize,
        text: &[u8],
        ended: Option<&Finish>,
        chunked: bool,
    ) {
        let (name, version) = core
            .service
            .slot(slot)
            .map_or(("?", "?"), |e| (e.name(), e.version.as_str()));
        let events = &mut self.scratch;
        events.clear();
        match ended {
            None if text.is_empty() => {}
            None => write_output_event(name, version, text, None, events),
            Some(Finish::Cancelled) => {}
            Some(why @ (Finish::Stop | Finish::Length)) => {
                write_output_event(name, version, text, why.reason(), events)
            }
            Some(why) => {
                if !text.is_empty() {
                    write_output_event(name, version, text, None, events);
                }
                write_error_event(&generate_error(why, name).message, events);
            }
        }
        if chunked {
            write_chunk(&mut self.write, events);
            if ended.is_some() {
                self.write.extend_from_slice(LAST_CHUNK);
            }
        } else {
            self.write.extend_from_slice(events);
        }
    }

    /// Lets its streaming sequence run while what waits to be sent is under the stream buffer
    /// bound, and holds it out of the running batch past it.
    fn update_room(&mut self, core: &mut Core) {
        if let Some(Parked::Generate {
            slot,
            ticket,
            stream: Some(_),
            ..
        }) = self.parked
        {
            let unsent = self.write.len() + self.sending.len() - self.sent;
            let room = unsent < core.generate.stream_buffer_bytes;
            if let Some(d) = core.decoder(slot) {
                d.set_room(ticket, room);
            }
        }
    }

    /// Whether it is connection `id` and rests in a line.
    pub(crate) fn is_resting(&self, id: u64) -> bool {
        self.held && self.id == id
    }

    /// Its model's batcher let it out of the line: read and answer again.
    pub(crate) fn release_hold(
        &mut self,
        key: usize,
        id: u64,
        core: &mut Core,
        engine: &mut Engine,
    ) {
        if !self.is_resting(id) {
            // A connection that closed while it rested, and whose slot a new one took.
            return;
        }
        self.held = false;
        self.from_line = true;
        self.since = Instant::now();
        self.advance(key, core, engine);
    }

    /// Answers what it can, sends what it wrote, and asks for more bytes, or closes; then
    /// brings its share of the shard's buffer count up to date.
    fn advance(&mut self, key: usize, core: &mut Core, engine: &mut Engine) {
        self.step(key, core, engine);
        self.update_room(core);
        let footprint = self.read.capacity().max(self.reserved)
            + self.write.capacity()
            + self.sending.capacity()
            + self.scratch.capacity()
            + self.dechunked.capacity()
            + self.generated.capacity()
            + self.tails.kept_bytes;
        core.buffered = core.buffered - self.footprint + footprint;
        self.footprint = footprint;
    }

    fn step(&mut self, key: usize, core: &mut Core, engine: &mut Engine) {
        if self.life == Life::Open
            && self.parked.is_none()
            && self.close_after.is_none()
            && !self.held
            && !self.tails_busy()
        {
            self.process(key, core);
        }
        if !self.send_in_flight && self.life != Life::Closing {
            // Deferred tails follow what `write` held when they were deferred; nothing is
            // written meanwhile, so once `write` has gone, they are next.
            if self.tails.pending() && (self.tails.started || self.write.is_empty()) {
                if self.tails.d.chunked {
                    self.tails
                        .write_next_chunk(&mut self.scratch, &mut self.write);
                    if !self.tails.pending() {
                        self.tails.finish(&core.pools.tensor);
                    }
                } else {
                    self.send_tail(key, core, engine);
                }
            }
            if !self.send_in_flight && !self.write.is_empty() {
                std::mem::swap(&mut self.write, &mut self.sending);
                self.sent = 0;
                self.send_from_sending(key, engine);
            }
        }
        if self.life == Life::Open
            && !self.send_in_flight
            && self.parked.is_none()
            && !self.tails_busy()
        {
            match self.close_after {
                Some(Close::Client) => self.life = Life::Closing,
                Some(Close::Server) => {
                    self.shut_down(libc::SHUT_WR);
                    self.life = Life::Linger;
                    self.phase = Phase::Linger;
                    self.since = Instant::now();
                }
                None => {}
            }
        }
        match self.life {
            Life::Closing => {
                if self.has_io_in_flight() && !self.is_shut() {
                    self.abandon();
                }
                return;
            }
            Life::Linger => {
                if !self.recv_in_flight {
                    self.read.clear();
                    self.read.make_room(0);
                    self.receive(key, engine);
                }
                return;
            }
            Life::Open => {}
        }
        let wants_bytes = self.parked.is_none()
            && !self.held
            && !self.tails_busy()
            && self.close_after.is_none()
            && !self.eof
            && !self.backlog
            && self.write.len() < FLUSH_THRESHOLD_BYTES;
        if wants_bytes && !self.recv_in_flight {
            self.read.make_room(self.need);
            self.receive(key, engine);
        }
        self.update_phase();
    }

    fn update_phase(&mut self) {
        // A stream waiting for its client to take what it sent is timed out like any response a
        // client does not take; waiting for its next token, it is busy.
        let streaming = matches!(
            self.parked,
            Some(Parked::Generate {
                stream: Some(_),
                ..
            })
        );
        // Zero-copy data the kernel holds until the client acknowledges it is a response the
        // client has not taken yet.
        let sending = self.send_in_flight || self.zc_outstanding > 0;
        let phase = if self.parked.is_some() && !(streaming && sending) {
            Phase::Busy
        } else if sending {
            Phase::Write
        } else if self.held {
            Phase::Held
        } else if self.read.start == self.read.end() && self.decoder.is_idle() {
            Phase::Idle
        } else if self.decoder.is_idle() {
            Phase::Head
        } else {
            Phase::Body
        };
        // A head keeps its first timestamp, so trickling bytes cannot extend the header timeout;
        // a body restarts the clock with every read (a stalled body is timed out like an idle
        // connection); the idle clock starts when the last response left (`on_sent` set `since`)
        // or the last bytes arrived; a send sets its own clock, restarted by progress.
        let changed = self.phase != phase;
        match phase {
            Phase::Idle if changed => self.since = self.since.max(self.received),
            Phase::Head | Phase::Busy if changed => self.since = self.received,
            Phase::Held if changed => self.since = Instant::now(),
            Phase::Body => {
                if changed {
                    self.body_start = (self.received, self.received_bytes);
                }
                self.since = self.received;
            }
            _ => {}
        }
        self.phase = phase;
    }

    fn receive(&mut self, key: usize, engine: &mut Engine) {
        let spare = self.read.spare();
        let len = spare.len().min(MAX_IO_BYTES);
        // SAFETY: `read.buf` is not moved, resized or written by anything else until this
        // receive's event: `make_room`, `shrink` and the linger reset run only when no receive is
        // in flight, and the buffer is freed only once the connection has finished.
        unsafe { engine.recv(key, self.fd.as_raw_fd(), spare.as_mut_ptr().cast(), len) };
        self.recv_in_flight = true;
    }

    fn send_from_sending(&mut self, key: usize, engine: &mut Engine) {
        let rest = &self.sending[self.sent..];
        let len = rest.len().min(MAX_IO_BYTES);
        // SAFETY: `sending` is neither changed nor freed until this send's event: responses are
        // encoded into `write`, and the buffers swap only when no send is in flight.
        unsafe { engine.send(key, self.fd.as_raw_fd(), rest.as_ptr(), len) };
        self.sending_started();
    }

    /// Sends the rest of the current deferred tail from where it lies; zero-copy if the tail is
    /// large enough (`http.zerocopy_send_min_bytes`).
    fn send_tail(&mut self, key: usize, core: &mut Core, engine: &mut Engine) {
        let TailPart::Raw { addr, len } = self.tails.d.parts[self.tails.next] else {
            unreachable!("only raw parts are sent as they lie");
        };
        let off = self.tails.off;
        let zero_copy = core.zerocopy_min > 0 && len >= core.zerocopy_min;
        let len = (len - off).min(MAX_IO_BYTES);
        let buf = (addr + off) as *const u8;
        // SAFETY: `secure_tails` checked that the stretch lies in memory this connection keeps:
        // its read or dechunk buffer, which are neither changed nor freed while tails are
        // pending (nothing is read or decoded), or `tails.keep`, freed only once they are sent or
        // the connection has finished; after a zero-copy send, the same holds until its
        // `ZeroCopyDone` (see `tails_busy` and `finish_tails`).
        if zero_copy {
            if unsafe { engine.send_zc(key, self.fd.as_raw_fd(), buf, len) } {
                core.zerocopy_sends += 1;
                self.zc_outstanding += 1;
            }
        } else {
            unsafe { engine.send(key, self.fd.as_raw_fd(), buf, len) };
        }
        self.tail_in_flight = true;
        self.tails.started = true;
        self.sending_started();
    }

    /// After a response's tails were deferred (see [`Responder::deferring`]): keeps the memory
    /// they lie in until they are sent. Every output lies in its batch's buffers or in the
    /// inputs it borrows, which lie in those buffers or in this connection's read or dechunk
    /// buffer; a part found anywhere else would be a bug, and rather than send from memory
    /// nobody keeps, the connection is cut after what it has written (the client sees a short
    /// answer, never another's bytes).
    fn secure_tails(&mut self, keep: Keep, core: &Core) {
        let parts = &mut self.tails.d.parts;
        parts.retain(|p| !matches!(p, TailPart::Raw { len: 0, .. }));
        if parts.is_empty() {
            self.tails.d.clear();
            keep.recycle(&core.pools.tensor);
            return;
        }
        let (read, dechunked) = (self.read.buf.as_slice(), self.dechunked.as_slice());
        let mut kept = true;
        let mut batch_share = 0;
        for p in parts.iter() {
            if let TailPart::Raw { addr, len } | TailPart::Encoded { addr, len, .. } = *p {
                if within(read, addr, len) || within(dechunked, addr, len) {
                    continue;
                }
                kept &= keep.holds(addr, len);
                batch_share += len;
            }
        }
        if !kept {
            debug_assert!(false, "a deferred tail lies outside the memory kept for it");
            tracing::error!("a response's tail lies outside the memory kept for it; closing");
            self.tails.finish(&core.pools.tensor);
            keep.recycle(&core.pools.tensor);
            self.close_after = Some(Close::Client);
            return;
        }
        // Counted for the shard's budget: the buffers kept for this answer alone, or its share
        // of a batch that other requests share (the read and dechunk buffers count as such).
        self.tails.kept_bytes = match &keep {
            Keep::Buffers(bufs) => bufs.iter().map(Vec::capacity).sum(),
            Keep::Batch(_) | Keep::Nothing => batch_share,
        };
        self.tails.keep = keep;
    }

    /// A send went on the engine: the send clock and the minimum-rate run start.
    fn sending_started(&mut self) {
        self.send_in_flight = true;
        let now = Instant::now();
        if !self.send_run {
            self.send_run = true;
            self.send_start = (now, self.sent_bytes);
        }
        self.phase = Phase::Write;
        self.since = now;
    }

    /// Answers every complete request already buffered, until one parks, one closes the
    /// connection, or enough output waits.
    fn process(&mut self, key: usize, core: &mut Core) {
        // Complete requests may be left in the buffer when this stops for output or a park; no
        // bytes are read ahead of them until they are answered.
        self.backlog = true;
        while self.parked.is_none()
            && !self.held
            && self.close_after.is_none()
            && !self.tails_busy()
            && self.write.len() < FLUSH_THRESHOLD_BYTES
        {
            let (read, dechunked) = (&self.read, &mut self.dechunked);
            let decoder = &mut self.decoder;
            let decoded = catch_unwind(AssertUnwindSafe(|| {
                decoder.decode(read.pending(), dechunked)
            }));
            match decoded {
                Ok(Ok(Decoded::Complete(msg))) => self.answer(key, core, msg),
                Ok(Ok(Decoded::Incomplete {
                    send_continue,
                    need,
                })) => {
                    self.need = need;
                    self.backlog = false;
                    if let Some(e) = self.admit(need, core) {
                        self.fail_and_close(core, &e);
                    } else if self.eof {
                        // No more bytes will come: this request can never complete.
                        self.close_after = Some(Close::Client);
                    } else if send_continue {
                        self.write.extend_from_slice(CONTINUE_100);
                    }
                    return;
                }
                Ok(Err(e)) => self.fail_and_close(core, &ApiError::from(e)),
                Err(_) => {
                    internal_error(core, &mut self.write, &mut self.scratch);
                    self.close_after = Some(Close::Server);
                }
            }
        }
    }

    /// Answers `e` and closes the connection once it is sent (the byte stream can no longer be
    /// trusted, or the request's body will not be read).
    fn fail_and_close(&mut self, core: &Core, e: &ApiError) {
        let date = core.service.date();
        Responder::new(
            &mut self.write,
            &mut self.scratch,
            &date,
            ResponseMode::CLOSE,
        )
        .error(e);
        self.close_after = Some(Close::Server);
    }

    /// Why the request being read cannot have the buffer it needs (`need` bytes from
    /// `read.start`) without taking the shard past its buffer budget, if it cannot. A request
    /// that fits the buffer it has always proceeds; one that needs more is refused while the
    /// shard's connections hold too much (large responses that slow readers have not taken,
    /// other large requests). A body of known size is checked once, when its head has arrived
    /// and before any of it is read, and its size is reserved at once; a chunked body, whose
    /// size is unknown, is checked each time its buffer doubles.
    fn admit(&mut self, need: usize, core: &Core) -> Option<ApiError> {
        let (len, pending) = (self.read.capacity(), self.read.end() - self.read.start);
        let known = need > pending + 1;
        if known && self.reserved > 0 {
            return None;
        }
        let target = if known {
            need
        } else if self.read.end() == len {
            // The size is unknown (a head, a chunked body) and the buffer is full: it doubles.
            len.saturating_mul(2)
        } else {
            0
        };
        let extra = target.saturating_sub(len);
        if extra == 0 || core.buffered.saturating_add(extra) <= core.buffer_budget {
            if known {
                self.reserved = need;
            }
            return None;
        }
        Some(ApiError::unavailable(format!(
            "this shard's connections hold {} MiB of requests and responses and this request \
             needs {} MiB more (http.max_buffered_bytes_per_shard = {} MiB); retry later",
            core.buffered >> 20,
            extra.div_ceil(1 << 20),
            core.buffer_budget >> 20
        )))
    }

    /// Answers one complete request, or parks it.
    fn answer(&mut self, key: usize, core: &mut Core, msg: Message) {
        self.served = true;
        self.reserved = 0;
        // Out of a line, the first request takes the slot it was let out for; later ones queue
        // like anyone's.
        let from_line = std::mem::take(&mut self.from_line);
        let received = self.received;
        let tensor_pool = core.pools.tensor.clone();
        let bytes = &self.read.buf[self.read.start..self.read.start + msg.consumed];
        let head = &msg.head;
        let body: &[u8] = match &msg.body {
            Body::Empty => &[],
            Body::InBuffer(range) => &bytes[range.clone()],
            Body::Dechunked => &self.dechunked,
        };
        let request = Request {
            method: head.method,
            // httparse admits only visible ASCII and UTF-8 in a request target; anything else
            // was rejected as malformed.
            path: std::str::from_utf8(&bytes[head.path.clone()]).unwrap_or(""),
            body,
            inference_header: head.inference_header,
            received,
            api_key: head.api_key.clone().map(|r| &bytes[r]),
            buffers: &*tensor_pool,
        };
        let info = HeadInfo {
            keep_alive: head.keep_alive,
            head_only: head.method == Method::Head,
            http_1_0: head.minor_version == 0,
        };
        let mark = self.write.len();
        let date = core.service.date();
        let mode = info.mode(core.service.is_draining());
        let mut resp = Responder::new(&mut self.write, &mut self.scratch, &date, mode)
            .deferring(&mut self.tails.d);
        let handled = catch_unwind(AssertUnwindSafe(|| {
            let action = core.service.handle(&request, &mut resp);
            match action {
                Action::Done => Step::Answered(Answered::new(resp.keep_alive())),
                Action::Gather(what) => {
                    let local = core.snapshot(what);
                    match core.mesh.start_gather(key, what, local, Instant::now()) {
                        Ok(GatherStart::Done(all)) => {
                            answer_gather(core, what, Ok(all), &mut resp);
                            Step::Answered(Answered::new(resp.keep_alive()))
                        }
                        Ok(GatherStart::Pending(ticket)) => Step::Gather { what, ticket },
                        Err(e) => {
                            resp.error(&e);
                            Step::Answered(Answered::new(resp.keep_alive()))
                        }
                    }
                }
                Action::Infer(job) => infer(core, (key, self.id), from_line, job, &mut resp),
                Action::Generate(job) => generate(core, key, job, &mut resp),
                Action::Repository(call) => match core.mesh.start_call(key, call, Instant::now()) {
                    Ok(ticket) => Step::Repository { ticket },
                    Err(e) => {
                        resp.error(&e);
                        Step::Answered(Answered::new(resp.keep_alive()))
                    }
                },
            }
        }));
        let step = handled.unwrap_or_else(|_| {
            // `resp` is not used past here, so `write` is ours again: drop whatever the panicked
            // handler had half-written.
            self.write.truncate(mark);
            self.tails.d.clear();
            internal_error(core, &mut self.write, &mut self.scratch);
            Step::Answered(Answered::new(false))
        });
        let response_bytes = self.write.len() - mark;
        self.read.start += msg.consumed;
        match step {
            Step::Answered(answered) => {
                self.after_answer(&answered, info.keep_alive);
                self.secure_tails(answered.keep, core);
                self.observe(msg.consumed, response_bytes, core);
            }
            Step::Infer { job, ticket } => {
                self.parked = Some(Parked::Infer {
                    job,
                    ticket,
                    head: info,
                });
                self.phase = Phase::Busy;
            }
            Step::Gather { what, ticket } => {
                self.parked = Some(Parked::Gather {
                    what,
                    ticket,
                    head: info,
                });
                self.phase = Phase::Busy;
            }
            Step::Repository { ticket } => {
                self.parked = Some(Parked::Repository { ticket, head: info });
                self.phase = Phase::Busy;
            }
            Step::Generate {
                slot,
                ticket,
                stream,
                keep_alive,
            } => {
                if stream.is_some() {
                    // The kernel's send buffer would otherwise grow (autotuning) to megabytes of
                    // events for a client that does not read: bound it like the stream's own
                    // buffer, so a slow reader holds the model back within a few hundred KiB.
                    // (It stays so for the connection's later requests.)
                    let _ = socket2::SockRef::from(&self.fd)
                        .set_send_buffer_size(core.generate.stream_buffer_bytes);
                }
                self.parked = Some(Parked::Generate {
                    slot,
                    ticket,
                    head: info,
                    stream,
                    keep_alive,
                });
                self.phase = Phase::Busy;
            }
        }
    }

    fn after_answer(&mut self, answered: &Answered, keep_alive_asked: bool) {
        self.held = answered.held;
        if !answered.keep_open {
            self.close_after = Some(if keep_alive_asked && !answered.client_gone {
                Close::Server
            } else {
                Close::Client
            });
        }
    }

    /// Records one request's size; after a run of small ones, shrinks what grew.
    fn observe(&mut self, request_bytes: usize, response_bytes: usize, core: &Core) {
        if request_bytes > RETAIN_MAX_BYTES || response_bytes > RETAIN_MAX_BYTES {
            self.small_streak = 0;
            return;
        }
        self.small_streak += 1;
        if self.small_streak < SHRINK_AFTER_SMALL_REQUESTS || self.tails_busy() {
            return;
        }
        self.small_streak = 0;
        if !self.recv_in_flight {
            self.read.shrink(core.pools.read_initial);
        }
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

/// Where handling a request left it.
// Returned by value and consumed at once: boxing the large variant would allocate per request.
#[allow(clippy::large_enum_variant)]
enum Step {
    /// Its response is written.
    Answered(Answered),
    /// It waits in its model's batcher.
    Infer {
        job: InferJob<'static>,
        ticket: usize,
    },
    /// It waits for the other shards' numbers.
    Gather { what: Gather, ticket: u64 },
    /// It waits for the model manager.
    Repository { ticket: u64 },
    /// It runs in its model's decoder (see [`Parked::Generate`]).
    Generate {
        slot: usize,
        ticket: usize,
        stream: Option<bool>,
        keep_alive: bool,
    },
}

/// Admits a generate request to its model's decoder; a stream's response head is written now.
fn generate(core: &mut Core, key: usize, job: GenerateJob, resp: &mut Responder<'_>) -> Step {
    let admitted = match core.decoder(job.model) {
        Some(d) => d.admit(key, &job.params, job.stream, job.received),
        None => Err(ApiError::unavailable(format!(
            "model '{}' cannot generate on this shard: it has no decoder here; this is a bug in \
             friday",
            core.service.slot(job.model).map_or("?", |e| e.name())
        ))),
    };
    match admitted {
        Ok(ticket) => {
            let stream = job.stream.then(|| resp.start_stream(200, EVENT_STREAM));
            Step::Generate {
                slot: job.model,
                ticket,
                stream,
                keep_alive: resp.keep_alive(),
            }
        }
        Err(e) => {
            core.service.record_refused(job.model, job.received, &e);
            resp.error(&e);
            Step::Answered(Answered::new(resp.keep_alive()))
        }
    }
}

/// The error a generate request that did not end normally answers (or sends as its stream's
/// last event).
fn generate_error(why: &Finish, model: &str) -> ApiError {
    match why {
        Finish::TimedOut => ApiError::new(
            ErrorKind::TimedOut,
            format!("model '{model}': the request's timeout passed while it was generating"),
        ),
        Finish::Failed(e) => ApiError::internal(e.clone()),
        Finish::Stop | Finish::Length | Finish::Cancelled => {
            ApiError::internal("a generate request ended normally; this is a bug in friday")
        }
    }
}

/// Runs an infer request at once if its model is inline and idle; otherwise submits it.
/// `from_line`: the connection was just let out of a line; otherwise, while connections rest in
/// the model's line, the request is refused and its connection goes behind them, so that a
/// slot freed for a resting connection is not taken by a newcomer (first come, first served).
fn infer(
    core: &mut Core,
    (key, id): (usize, u64),
    from_line: bool,
    mut job: InferJob<'_>,
    resp: &mut Responder<'_>,
) -> Step {
    let Some(batcher) = core.batchers.get_mut(job.model) else {
        let name = core.service.slot(job.model).map_or("?", |e| e.name());
        let e = ApiError::unavailable(format!(
            "model '{name}' cannot be served on this shard: its batcher did not start (see the \
             server log)"
        ));
        core.service.finish_infer(&job, Err(e), resp);
        return Step::Answered(Answered::new(resp.keep_alive()));
    };
    if !from_line && batcher.has_line() && !core.service.is_draining() {
        let e = ApiError::new(
            ErrorKind::Overloaded,
            format!(
                "model '{}' has {} clients waiting for room in its queue on this shard \
                 (max_queue_size {}); retry later",
                batcher.model().metadata().name,
                batcher.line_len(),
                batcher.max_queue_size()
            ),
        );
        return refuse(core, (key, id), &job, e, resp);
    }
    if batcher.idle_inline() {
        let inputs = std::mem::take(&mut job.request.inputs);
        let sizes: SmallVec<[usize; 1]> = SmallVec::from_buf([job.request.batch_size]);
        let dispatched = Instant::now();
        let result = assemble::run(batcher.model(), inputs, &sizes, batcher.batched());
        let infer_end = Instant::now();
        let infer = infer_end - dispatched;
        batcher.ran_inline(infer);
        if let Some(m) = core.service.metrics().model(job.model) {
            m.batch(infer.as_nanos() as u64, job.request.batch_size);
        }
        core.service.stats().record_execution(
            job.model,
            job.request.batch_size,
            Duration::ZERO,
            infer,
        );
        match result {
            Ok(result) => {
                let outputs = result.view(0);
                let ran = Ran {
                    outputs: &outputs,
                    dispatched,
                    infer_start: dispatched,
                    infer_end,
                };
                core.service.finish_infer(&job, Ok(ran), resp);
                drop(outputs);
                if resp.deferred() {
                    // Its tails are sent from these buffers (or the bytes the request came in).
                    let keep = Keep::Buffers(result.into_buffers().collect());
                    return Step::Answered(Answered {
                        keep,
                        ..Answered::new(resp.keep_alive())
                    });
                }
                for buf in result.into_buffers() {
                    core.pools.tensor.give(buf);
                }
            }
            Err(e) => {
                tracing::warn!(model = job.model, error = %e, "a batch failed");
                let e = ApiError::internal(format!(
                    "model '{}' failed: {e}",
                    batcher.model().metadata().name
                ));
                core.service.finish_infer(&job, Err(e), resp);
            }
        }
        return Step::Answered(Answered::new(resp.keep_alive()));
    }
    match batcher.submit(&mut job, key, &core.pools.tensor) {
        Ok(ticket) => Step::Infer {
            job: job.detach(),
            ticket,
        },
        Err(e) => refuse(core, (key, id), &job, e, resp),
    }
}

/// Answers an infer request that was not admitted; refused for a full queue (429), its
/// connection rests in the model's line before reading again, so a client retrying at once
/// does not cost the shard a 429 per retry.
fn refuse(
    core: &mut Core,
    (key, id): (usize, u64),
    job: &InferJob<'_>,
    e: ApiError,
    resp: &mut Responder<'_>,
) -> Step {
    let full = e.kind == ErrorKind::Overloaded;
    core.service.finish_infer(job, Err(e), resp);
    let mut answered = Answered::new(resp.keep_alive());
    if full && answered.keep_open && !core.service.is_draining() {
        if let Some(b) = core.batchers.get_mut(job.model) {
            b.hold(key, id, Instant::now());
            answered.held = true;
        }
    }
    Step::Answered(answered)
}

/// Puts connection `key` (`id`) in `batcher`'s line if the model has no room; says whether it
/// did.
fn hold_if_saturated(batcher: &mut Batcher, key: usize, id: u64) -> bool {
    let saturated = batcher.saturated();
    if saturated {
        batcher.hold(key, id, Instant::now());
    }
    saturated
}

/// Answers an infer request once its batcher is done with it.
fn answer_infer(
    core: &Core,
    job: &InferJob<'_>,
    outcome: Outcome,
    resp: &mut Responder<'_>,
) -> Answered {
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
            core.service.finish_infer(job, Ok(ran), resp);
            drop(outputs);
            if resp.deferred() {
                // Its tails are sent from the batch's buffers.
                return Answered {
                    keep: Keep::Batch(result),
                    ..Answered::new(resp.keep_alive())
                };
            }
            Batcher::recycle(result, &core.pools.tensor);
            Answered::new(resp.keep_alive())
        }
        Outcome::Failed(e) => {
            core.service.finish_infer(job, Err(e), resp);
            Answered::new(resp.keep_alive())
        }
        Outcome::Dropped => {
            core.service.record_cancelled(job.model);
            Answered {
                client_gone: true,
                ..Answered::new(false)
            }
        }
    }
}

/// Answers a request that needed every shard's numbers.
fn answer_gather(
    core: &Core,
    what: Gather,
    gathered: Result<Vec<Snapshot>, ApiError>,
    resp: &mut Responder<'_>,
) {
    let all = match gathered {
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
            core.service.answer_stats(only, &merged, resp);
        }
        Gather::Metrics => {
            let shards: Vec<_> = all
                .into_iter()
                .filter_map(|s| match s {
                    Snapshot::Metrics(m) => Some(m),
                    Snapshot::Stats(_) => None,
                })
                .collect();
            core.service.answer_metrics(&shards, resp);
        }
    }
}

/// Answers 500 after a panic, closing the connection.
fn internal_error(core: &Core, write: &mut Vec<u8>, scratch: &mut Vec<u8>) {
    tracing::error!(
        shard = core.id,
        "a request panicked; answered 500 and closed its connection"
    );
    let date = core.service.date();
    Responder::new(write, scratch, &date, ResponseMode::CLOSE).error(&ApiError::internal(
        "internal error; this is a bug in friday",
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fills the spare capacity up to `end` with `byte` (as a receive would).
    fn fill_to(r: &mut ReadBuf, end: usize, byte: u8) {
        let n = end - r.end();
        for b in &mut r.spare()[..n] {
            b.write(byte);
        }
        // SAFETY: just written.
        unsafe { r.received(n) };
    }

    #[test]
    fn make_room_compacts_then_grows_by_doubling() {
        let mut r = ReadBuf::new(Vec::with_capacity(8));
        assert_eq!(r.capacity(), 8);
        r.buf.extend_from_slice(b"abcdefgh");
        r.start = 6;
        r.make_room(4);
        assert_eq!((r.start, r.end()), (0, 2));
        assert_eq!(r.pending(), b"gh");
        fill_to(&mut r, 8, b'x');
        r.make_room(1 << 30);
        assert_eq!(
            r.capacity(),
            16,
            "a claimed size does not allocate up front"
        );
        assert_eq!(&r.buf[..2], b"gh");
        fill_to(&mut r, 16, b'y');
        r.make_room(20);
        assert_eq!(r.capacity(), 20, "never beyond what the request needs");
        r.start = r.end();
        r.make_room(1);
        assert_eq!((r.start, r.end()), (0, 0));
    }

    #[test]
    fn make_room_doubles_when_the_size_is_unknown() {
        // A chunked body asks for one byte more than is buffered: grow by doubling, never by
        // the one byte asked for.
        let mut r = ReadBuf::new(Vec::with_capacity(16));
        fill_to(&mut r, 16, b'a');
        r.make_room(17);
        assert_eq!(r.capacity(), 32);
        fill_to(&mut r, 32, b'b');
        r.make_room(33);
        assert_eq!(r.capacity(), 64);
        assert_eq!(&r.pending()[14..18], b"aabb");
    }

    #[test]
    fn make_room_always_leaves_space_to_read() {
        let mut r = ReadBuf::new(Vec::with_capacity(4));
        fill_to(&mut r, 4, b'a');
        r.make_room(0);
        assert!(!r.spare().is_empty());
    }

    #[test]
    fn shrink_keeps_pending_bytes() {
        let mut r = ReadBuf::new(Vec::with_capacity(RETAIN_MAX_BYTES + 1));
        fill_to(&mut r, 100, 0);
        r.buf.extend_from_slice(b"xyz");
        r.start = 100;
        r.shrink(16);
        assert_eq!(r.capacity(), 16);
        assert_eq!(r.pending(), b"xyz");
    }
}
