//! The I/O engines: one io_uring ring per shard, or epoll (mio) where io_uring is unavailable,
//! behind one completion-style boundary.
//!
//! The shard asks for operations on a connection (receive into this buffer, send these bytes)
//! and later learns how each ended, as an [`Event`]. io_uring does exactly that; the epoll engine
//! emulates it: it performs the syscall when the socket is ready (at once when readiness is known
//! not to have been used up) and reports the result the same way. So the connection state machine
//! ([`super::connection`]) is written once, and an engine is a few hundred lines that own a
//! kernel interface and nothing else.
//!
//! The one rule both engines impose: **a buffer handed to [`Engine::recv`] or [`Engine::send`]
//! stays where it is, untouched by anything but the kernel (receive) or unchanged (send), until
//! its event arrives** (for [`Engine::send_zc`], until its [`Event::ZeroCopyDone`]). The connection keeps at most one receive and one send in flight, and
//! never moves, grows or frees a buffer with an operation on it. To abandon a connection, shut
//! its socket down ([`libc::shutdown`]): every operation on it then completes promptly.

mod epoll;
mod uring;

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

pub(crate) use epoll::EpollEngine;
pub(crate) use uring::UringEngine;

use crate::config::EngineChoice;

/// What the shard learns from its engine.
#[derive(Debug)]
pub enum Event {
    /// The listener accepted a connection (non-blocking, close-on-exec), or accepting failed.
    Accepted(io::Result<OwnedFd>),
    /// A receive on connection `conn` ended: bytes received (0 at end of stream), or the error.
    Received {
        /// The connection's key.
        conn: usize,
        /// Bytes received, or why not.
        result: io::Result<usize>,
    },
    /// A send on connection `conn` ended: bytes sent (maybe fewer than asked), or the error.
    Sent {
        /// The connection's key.
        conn: usize,
        /// Bytes sent, or why not.
        result: io::Result<usize>,
    },
    /// The kernel no longer reads the buffer of a zero-copy send on connection `conn` (see
    /// [`Engine::send_zc`]): one such event follows every zero-copy send, after its
    /// [`Event::Sent`].
    ZeroCopyDone {
        /// The connection's key.
        conn: usize,
    },
    /// Someone rang the shard's doorbell (a worker finished, a peer or the control thread sent a
    /// message).
    Doorbell,
}

/// Which engine a shard runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// One io_uring ring per shard.
    IoUring,
    /// epoll through mio.
    Epoll,
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineKind::IoUring => "io_uring",
            EngineKind::Epoll => "epoll",
        })
    }
}

/// The engine chosen for this process, and why.
#[derive(Debug, Clone)]
pub struct EngineSelection {
    /// The engine every shard runs.
    pub kind: EngineKind,
    /// Why: the configured choice, or what the io_uring probe found.
    pub reason: String,
}

/// Whether this process can run the io_uring engine; if not, why, naming the fix.
pub fn probe_io_uring() -> Result<(), String> {
    uring::probe()
}

/// Chooses the engine: the configured one, or with `auto` io_uring when a probe ring with every
/// feature friday uses can be set up, epoll otherwise. Asking for io_uring where it cannot run is
/// an error that says why.
pub fn select(choice: EngineChoice) -> Result<EngineSelection, String> {
    match (choice, uring::probe()) {
        (EngineChoice::Epoll, _) => Ok(EngineSelection {
            kind: EngineKind::Epoll,
            reason: "configured (engine = \"epoll\")".into(),
        }),
        (EngineChoice::IoUring, Ok(())) => Ok(EngineSelection {
            kind: EngineKind::IoUring,
            reason: "configured (engine = \"io_uring\")".into(),
        }),
        (EngineChoice::IoUring, Err(why)) => Err(format!(
            "engine io_uring was asked for but is unavailable: {why}; use --engine epoll (or \
             auto, which falls back to epoll by itself)"
        )),
        (EngineChoice::Auto, Ok(())) => Ok(EngineSelection {
            kind: EngineKind::IoUring,
            reason: "io_uring is available".into(),
        }),
        (EngineChoice::Auto, Err(why)) => Ok(EngineSelection {
            kind: EngineKind::Epoll,
            reason: format!("io_uring is unavailable: {why}"),
        }),
    }
}

/// One shard's engine. An enum inside, not a trait object: the shard loop calls it per operation,
/// and a `match` on two variants costs less than an indirect call and keeps both engines
/// inlinable. (Public so that `benches/engine.rs` measures this code, not a copy of it.)
pub struct Engine(Inner);

// One per shard, made once and never moved: the size gap costs a few hundred bytes per shard, a
// box would cost an indirection per operation.
#[allow(clippy::large_enum_variant)]
enum Inner {
    Uring(UringEngine),
    Epoll(EpollEngine),
}

impl Engine {
    /// Creates the engine for a shard: `listener` is its listening socket, `doorbell` the eventfd
    /// that wakes it.
    pub fn new(kind: EngineKind, listener: RawFd, doorbell: RawFd) -> io::Result<Engine> {
        Ok(Engine(match kind {
            EngineKind::IoUring => Inner::Uring(UringEngine::new(listener, doorbell)?),
            EngineKind::Epoll => Inner::Epoll(EpollEngine::new(listener, doorbell)?),
        }))
    }

    /// Starts watching a freshly accepted connection.
    pub fn add(&mut self, conn: usize, fd: RawFd) -> io::Result<()> {
        match &mut self.0 {
            Inner::Uring(_) => Ok(()),
            Inner::Epoll(e) => e.add(conn, fd),
        }
    }

    /// Stops watching a connection whose operations have all ended (before its socket closes).
    pub fn remove(&mut self, conn: usize, fd: RawFd) {
        match &mut self.0 {
            Inner::Uring(_) => {}
            Inner::Epoll(e) => e.remove(conn, fd),
        }
    }

    /// Receives into `buf[..len]`; an [`Event::Received`] follows.
    ///
    /// # Safety
    /// `buf` must stay valid, unmoved and otherwise unwritten until that event arrives.
    pub unsafe fn recv(&mut self, conn: usize, fd: RawFd, buf: *mut u8, len: usize) {
        match &mut self.0 {
            // SAFETY: forwarded contract.
            Inner::Uring(e) => unsafe { e.recv(conn, fd, buf, len) },
            // SAFETY: forwarded contract.
            Inner::Epoll(e) => unsafe { e.recv(conn, fd, buf, len) },
        }
    }

    /// Sends `buf[..len]`; an [`Event::Sent`] follows.
    ///
    /// # Safety
    /// `buf` must stay valid, unmoved and unchanged until that event arrives.
    pub unsafe fn send(&mut self, conn: usize, fd: RawFd, buf: *const u8, len: usize) {
        match &mut self.0 {
            // SAFETY: forwarded contract.
            Inner::Uring(e) => unsafe { e.send(conn, fd, buf, len) },
            // SAFETY: forwarded contract.
            Inner::Epoll(e) => unsafe { e.send(conn, fd, buf, len) },
        }
    }

    /// Sends like [`Engine::send`], without copying `buf` into the kernel where the engine can
    /// (io_uring's `SEND_ZC`, `MSG_ZEROCOPY` on epoll): worth it for large buffers only (see
    /// `benches/send_paths.rs`). Its [`Event::Sent`] comes as for any send, so the next send can
    /// follow at once; the kernel may still read `buf` until an [`Event::ZeroCopyDone`] for the
    /// connection follows. Returns true if that event will come (one per such send); false if
    /// this was a plain send.
    ///
    /// # Safety
    /// As for [`Engine::send`], with `buf` kept until the [`Event::ZeroCopyDone`] when it
    /// returns true.
    pub unsafe fn send_zc(&mut self, conn: usize, fd: RawFd, buf: *const u8, len: usize) -> bool {
        match &mut self.0 {
            // SAFETY: forwarded contract.
            Inner::Uring(e) => unsafe { e.send_zc(conn, fd, buf, len) },
            // SAFETY: forwarded contract.
            Inner::Epoll(e) => unsafe { e.send_zc(conn, fd, buf, len) },
        }
    }

    /// Whether [`Engine::send_zc`] can send without copying here, and if not, why.
    pub fn zero_copy(&self) -> Result<&'static str, &'static str> {
        match &self.0 {
            Inner::Uring(e) if e.has_send_zc() => Ok("io_uring SEND_ZC"),
            Inner::Uring(_) => Err("the kernel's io_uring lacks SEND_ZC (Linux 6.0)"),
            Inner::Epoll(e) => e.zero_copy(),
        }
    }

    /// Stops accepting (the shard drains). The shard closes the listener afterwards.
    pub fn stop_accepting(&mut self) {
        match &mut self.0 {
            Inner::Uring(e) => e.stop_accepting(),
            Inner::Epoll(e) => e.stop_accepting(),
        }
    }

    /// Submits what was asked and waits up to `timeout` (`None`: until something happens) for
    /// events, which are appended to `events`.
    pub fn wait(&mut self, timeout: Option<Duration>, events: &mut Vec<Event>) -> io::Result<()> {
        match &mut self.0 {
            Inner::Uring(e) => e.wait(timeout, events),
            Inner::Epoll(e) => e.wait(timeout, events),
        }
    }
}

/// The shard's doorbell: an eventfd that workers, peers and the control thread write to, and the
/// shard's engine watches. Writing to it is the only cross-thread wake-up a shard has.
#[derive(Debug)]
pub struct Doorbell(OwnedFd);

impl Doorbell {
    /// A new, non-blocking doorbell.
    pub fn new() -> io::Result<Doorbell> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(Doorbell(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Wakes the shard. Never blocks: a counter at its limit (EAGAIN) already means "wake up".
    pub fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a u64 we own to our eventfd.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Clears pending rings (epoll engine; io_uring reads the counter itself).
    pub(crate) fn clear(fd: RawFd) {
        let mut n: u64 = 0;
        // SAFETY: reads at most 8 bytes into a u64 we own; non-blocking.
        unsafe { libc::read(fd, (&mut n as *mut u64).cast(), 8) };
    }
}

impl AsRawFd for Doorbell {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Converts a negative io_uring result or a -1 syscall return into an error.
pub(crate) fn syscall_result(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}
