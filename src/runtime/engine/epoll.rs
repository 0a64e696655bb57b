//! The epoll engine (mio), for hosts where io_uring is off: completion events emulated over
//! readiness.
//!
//! Every socket is registered once, edge-triggered, for reading and writing, so no operation
//! costs an `epoll_ctl`. A connection remembers whether its last readiness edge may still have
//! bytes (or room) behind it: a receive is tried at once when it may, and otherwise waits for the
//! next edge. A short read or write means the edge is used up (the kernel buffer was drained or
//! filled), which saves the `EAGAIN` round trip nginx also saves.
//!
//! A zero-copy send is `send(MSG_ZEROCOPY)` on a socket with `SO_ZEROCOPY`. Its [`Event::Sent`]
//! comes as for any send; the kernel says when it no longer reads the buffer by a completion on
//! the socket's error queue (which raises `EPOLLERR`), reported as [`Event::ZeroCopyDone`]. Where
//! the socket refuses `SO_ZEROCOPY`, or the kernel runs out of option memory for a send
//! (`ENOBUFS`), the send is a plain one, and its `ZeroCopyDone` follows its `Sent` at once.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::{syscall_result, Doorbell, Event};

/// Token of the listening socket.
const LISTENER: Token = Token(usize::MAX - 1);
/// Token of the shard's doorbell.
const DOORBELL: Token = Token(usize::MAX - 2);
/// Readiness events taken per wait.
const EVENTS_PER_WAIT: usize = 1024;
/// Connections accepted per wait at most, so a connection storm cannot starve the shard's
/// requests; the rest are accepted on the next turn.
const ACCEPTS_PER_WAIT: usize = 128;

/// After accepting fails (out of file descriptors, say), how long before it is tried again: the
/// listener is edge-triggered, so nothing else would retry it, and retrying at once would spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// `SO_EE_ORIGIN_ZEROCOPY`: a MSG_ZEROCOPY completion in the error queue.
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;

/// Turns `SO_ZEROCOPY` on for socket `fd`; says whether it took.
fn set_zerocopy(fd: RawFd) -> bool {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we hold, with a c_int we own.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ZEROCOPY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// A pending operation: buffer and length, valid until its event (the engine's contract).
#[derive(Clone, Copy)]
struct Op<P> {
    buf: P,
    len: usize,
}

#[derive(Default)]
struct Slot {
    fd: RawFd,
    /// The last edge may still have bytes to read behind it.
    readable: bool,
    /// The last edge may still have room to write behind it.
    writable: bool,
    /// The peer closed its side (or the socket failed): end of stream is pending behind whatever
    /// data is left, so a short read does not use the edge up.
    read_closed: bool,
    recv: Option<Op<*mut u8>>,
    send: Option<Op<*const u8>>,
    /// The pending send was asked to go zero-copy: a `ZeroCopyDone` is owed for it, however it
    /// goes out.
    zc_owed: bool,
    /// The pending send goes out with `MSG_ZEROCOPY` (cleared if the kernel is out of option
    /// memory for it, `ENOBUFS`: it then goes by copy).
    send_zc: bool,
    /// `SO_ZEROCOPY` is on for the socket.
    zerocopy: bool,
    /// Zero-copy sends the socket has made, and how many of them the kernel has completed (it
    /// numbers its completions by this count, wrapping).
    zc_made: u32,
    zc_completed: u32,
}

/// One shard's epoll engine.
pub(crate) struct EpollEngine {
    poll: Poll,
    events: Events,
    listener: RawFd,
    accepting: bool,
    /// The accept loop stopped at its per-turn cap: more may be waiting.
    accept_backlog: bool,
    /// Accepting failed: try again from then on.
    accept_retry_at: Option<Instant>,
    doorbell: RawFd,
    slots: Vec<Slot>,
    /// Operations that completed when they were asked for.
    done: Vec<Event>,
    /// (token, readable, writable, read side closed, error) per event of the last wait.
    ready: Vec<(Token, bool, bool, bool, bool)>,
    /// A socket refused `SO_ZEROCOPY`: zero-copy sends are plain ones from then on.
    zerocopy_refused: bool,
}

impl EpollEngine {
    pub(crate) fn new(listener: RawFd, doorbell: RawFd) -> io::Result<Self> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut SourceFd(&listener), LISTENER, Interest::READABLE)?;
        poll.registry()
            .register(&mut SourceFd(&doorbell), DOORBELL, Interest::READABLE)?;
        Ok(EpollEngine {
            poll,
            events: Events::with_capacity(EVENTS_PER_WAIT),
            listener,
            accepting: true,
            accept_backlog: true,
            accept_retry_at: None,
            doorbell,
            slots: Vec::new(),
            done: Vec::new(),
            ready: Vec::new(),
            zerocopy_refused: false,
        })
    }

    pub(crate) fn add(&mut self, conn: usize, fd: RawFd) -> io::Result<()> {
        self.poll.registry().register(
            &mut SourceFd(&fd),
            Token(conn),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        if self.slots.len() <= conn {
            self.slots.resize_with(conn + 1, Slot::default);
        }
        self.slots[conn] = Slot {
            fd,
            readable: true,
            writable: true,
            read_closed: false,
            recv: None,
            send: None,
            zc_owed: false,
            send_zc: false,
            zerocopy: false,
            zc_made: 0,
            zc_completed: 0,
        };
        Ok(())
    }

    pub(crate) fn remove(&mut self, conn: usize, fd: RawFd) {
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        if let Some(slot) = self.slots.get_mut(conn) {
            *slot = Slot::default();
        }
    }

    /// # Safety
    /// See [`super::Engine::recv`].
    pub(crate) unsafe fn recv(&mut self, conn: usize, fd: RawFd, buf: *mut u8, len: usize) {
        let slot = &mut self.slots[conn];
        debug_assert_eq!(slot.fd, fd);
        debug_assert!(slot.recv.is_none(), "one receive in flight per connection");
        slot.recv = Some(Op { buf, len });
        if slot.readable {
            self.try_recv(conn);
        }
    }

    /// # Safety
    /// See [`super::Engine::send`].
    pub(crate) unsafe fn send(&mut self, conn: usize, fd: RawFd, buf: *const u8, len: usize) {
        self.queue_send(conn, fd, Op { buf, len }, false);
    }

    /// Takes a send (zero-copy or not) and tries it at once if the socket may have room.
    fn queue_send(&mut self, conn: usize, fd: RawFd, op: Op<*const u8>, zero_copy: bool) {
        let slot = &mut self.slots[conn];
        debug_assert_eq!(slot.fd, fd);
        debug_assert!(slot.send.is_none(), "one send in flight per connection");
        slot.send = Some(op);
        slot.send_zc = zero_copy;
        slot.zc_owed = zero_copy;
        if slot.writable {
            self.try_send(conn);
        }
    }

    /// Whether zero-copy sends can work here: a TCP socket takes `SO_ZEROCOPY`.
    pub(crate) fn zero_copy(&self) -> Result<&'static str, &'static str> {
        let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None);
        match probe {
            Ok(sock) if !self.zerocopy_refused && set_zerocopy(sock.as_raw_fd()) => {
                Ok("MSG_ZEROCOPY")
            }
            _ => Err("a TCP socket refuses SO_ZEROCOPY (Linux 4.14)"),
        }
    }

    /// Sends like [`EpollEngine::send`], with `MSG_ZEROCOPY` where the socket takes
    /// `SO_ZEROCOPY`; see [`super::Engine::send_zc`] for what it returns.
    ///
    /// # Safety
    /// See [`super::Engine::send`].
    pub(crate) unsafe fn send_zc(
        &mut self,
        conn: usize,
        fd: RawFd,
        buf: *const u8,
        len: usize,
    ) -> bool {
        let refused = &mut self.zerocopy_refused;
        let slot = &mut self.slots[conn];
        if !slot.zerocopy && !*refused {
            slot.zerocopy = set_zerocopy(fd);
            *refused = !slot.zerocopy;
        }
        let zc = slot.zerocopy;
        self.queue_send(conn, fd, Op { buf, len }, zc);
        zc
    }

    /// Reads the zero-copy completions on connection `conn`'s error queue, until it is empty:
    /// one [`Event::ZeroCopyDone`] per send they cover. The kernel reports each send exactly
    /// once, in ranges that are usually but not always in order, so they are counted, never
    /// taken to cover earlier sends.
    fn read_zc_completions(&mut self, conn: usize) {
        let slot = &mut self.slots[conn];
        if slot.zc_completed == slot.zc_made {
            return;
        }
        loop {
            let mut control = [0u64; 16];
            // SAFETY: a recvmsg on the connection's socket into buffers we own; the control
            // message, if any, is read within the bytes the kernel wrote.
            let range = unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_control = control.as_mut_ptr().cast();
                msg.msg_controllen = std::mem::size_of_val(&control);
                if libc::recvmsg(slot.fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) < 0 {
                    return;
                }
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                if cmsg.is_null() {
                    continue;
                }
                let err = std::ptr::read_unaligned(
                    libc::CMSG_DATA(cmsg) as *const libc::sock_extended_err
                );
                if err.ee_origin != SO_EE_ORIGIN_ZEROCOPY {
                    continue;
                }
                (err.ee_info, err.ee_data)
            };
            // The range `range.0..=range.1` (wrapping) names sends not reported before.
            let outstanding = slot.zc_made.wrapping_sub(slot.zc_completed);
            let n = range
                .1
                .wrapping_sub(range.0)
                .wrapping_add(1)
                .min(outstanding);
            slot.zc_completed = slot.zc_completed.wrapping_add(n);
            for _ in 0..n {
                self.done.push(Event::ZeroCopyDone { conn });
            }
        }
    }

    fn try_recv(&mut self, conn: usize) {
        let slot = &mut self.slots[conn];
        let Some(op) = slot.recv else { return };
        let result = loop {
            // SAFETY: the buffer is valid for `len` bytes until this operation's event (the
            // engine's contract), and nothing else writes it meanwhile.
            let r = unsafe { libc::recv(slot.fd, op.buf.cast(), op.len, 0) };
            match syscall_result(r) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    slot.readable = false;
                    return;
                }
                Ok(n) if n > 0 && n < op.len => {
                    // Data and a FIN can share one edge: then the end of stream is still to be
                    // read, and no new edge will announce it.
                    slot.readable = slot.read_closed;
                    break Ok(n);
                }
                other => break other,
            }
        };
        slot.recv = None;
        self.done.push(Event::Received { conn, result });
    }

    fn try_send(&mut self, conn: usize) {
        let slot = &mut self.slots[conn];
        let Some(op) = slot.send else { return };
        let mut zero_copied;
        let result = loop {
            zero_copied = slot.send_zc;
            let flags = if slot.send_zc {
                libc::MSG_NOSIGNAL | libc::MSG_ZEROCOPY
            } else {
                libc::MSG_NOSIGNAL
            };
            // SAFETY: the buffer is valid and unchanged for `len` bytes until this operation's
            // event (the engine's contract).
            let r = unsafe { libc::send(slot.fd, op.buf.cast(), op.len, flags) };
            match syscall_result(r) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Out of option memory for the completion: send it the plain way.
                Err(e) if zero_copied && e.raw_os_error() == Some(libc::ENOBUFS) => {
                    slot.send_zc = false;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    slot.writable = false;
                    return;
                }
                Ok(n) if n < op.len => {
                    slot.writable = false;
                    break Ok(n);
                }
                other => break other,
            }
        };
        slot.send = None;
        slot.send_zc = false;
        let owed = std::mem::take(&mut slot.zc_owed);
        // Only a zero-copy send that moved bytes takes a number (and gets a completion).
        let went_zero_copy = zero_copied && result.as_ref().is_ok_and(|&n| n > 0);
        self.done.push(Event::Sent { conn, result });
        if went_zero_copy {
            // The kernel may read the buffer until the completion for this send's number.
            slot.zc_made = slot.zc_made.wrapping_add(1);
            self.read_zc_completions(conn);
        } else if owed {
            // Sent by copy after all (or not at all): the buffer is free already.
            self.done.push(Event::ZeroCopyDone { conn });
        }
    }

    pub(crate) fn stop_accepting(&mut self) {
        if self.accepting {
            self.accepting = false;
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&self.listener));
        }
    }

    fn accept(&mut self, events: &mut Vec<Event>) {
        self.accept_backlog = false;
        for _ in 0..ACCEPTS_PER_WAIT {
            // SAFETY: accept4 with null address pointers only returns a descriptor.
            let fd = unsafe {
                libc::accept4(
                    self.listener,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: a new descriptor that nobody else owns.
                events.push(Event::Accepted(Ok(unsafe { OwnedFd::from_raw_fd(fd) })));
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return,
                io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => continue,
                _ => {
                    self.accept_retry_at = Some(Instant::now() + ACCEPT_ERROR_BACKOFF);
                    events.push(Event::Accepted(Err(e)));
                    return;
                }
            }
        }
        self.accept_backlog = true;
    }

    pub(crate) fn wait(
        &mut self,
        timeout: Option<Duration>,
        events: &mut Vec<Event>,
    ) -> io::Result<()> {
        let busy = !self.done.is_empty() || (self.accepting && self.accept_backlog);
        let timeout = if busy { Some(Duration::ZERO) } else { timeout };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        events.append(&mut self.done);
        let mut ready = std::mem::take(&mut self.ready);
        // An error readiness is a failed socket (whose receive and send then fail at once) or a
        // zero-copy completion waiting in the error queue; it does not mean the peer closed.
        ready.extend(self.events.iter().map(|e| {
            (
                e.token(),
                e.is_readable() || e.is_read_closed() || e.is_error(),
                e.is_writable() || e.is_write_closed() || e.is_error(),
                e.is_read_closed(),
                e.is_error(),
            )
        }));
        let retry = self.accept_retry_at.is_some_and(|at| Instant::now() >= at);
        if retry {
            self.accept_retry_at = None;
        }
        let mut accept = self.accepting && (self.accept_backlog || retry);
        for &(token, readable, writable, read_closed, error) in &ready {
            match token {
                LISTENER => accept = self.accepting,
                DOORBELL => {
                    Doorbell::clear(self.doorbell);
                    events.push(Event::Doorbell);
                }
                Token(conn) => {
                    // A connection removed earlier in this batch has an empty slot.
                    let Some(slot) = self.slots.get_mut(conn) else {
                        continue;
                    };
                    slot.readable |= readable;
                    slot.writable |= writable;
                    slot.read_closed |= read_closed;
                    if readable {
                        self.try_recv(conn);
                    }
                    if writable {
                        self.try_send(conn);
                    }
                    if error {
                        self.read_zc_completions(conn);
                    }
                }
            }
        }
        ready.clear();
        self.ready = ready;
        if accept {
            self.accept(events);
        }
        events.append(&mut self.done);
        Ok(())
    }
}
