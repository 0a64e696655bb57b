//! The shard's table of open connections: the connection limit, timeouts, and drain.
//!
//! Each connection task records its phase (idle between requests, reading a head, reading a
//! body, busy answering, waiting for the client to take a response) and since when. Instead of a timer per read, one housekeeping task
//! sweeps the table a few times a second and shuts down the sockets that overstayed; the blocked
//! read then returns end-of-file and the connection task ends itself. A drain shuts down the read
//! side of idle connections the same way. The same sweep notices busy connections whose client
//! has hung up (one `poll` for all of them), so their queued requests are dropped before they are
//! batched. The request path pays one `Cell` write per phase change.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use slab::Slab;

/// What a connection is doing.
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
}

/// One connection's entry.
pub(crate) struct ConnState {
    fd: RawFd,
    phase: Cell<Phase>,
    since: Cell<Instant>,
    shut: Cell<bool>,
    gone: Cell<bool>,
}

impl ConnState {
    /// Whether the client has hung up (seen by the last sweep).
    pub(crate) fn is_gone(&self) -> bool {
        self.gone.get()
    }

    /// Records the phase; `at` is when it started. A head keeps its first timestamp, so trickling
    /// bytes cannot extend the header timeout.
    pub(crate) fn enter(&self, phase: Phase, at: Instant) {
        if phase != Phase::Head || self.phase.get() != Phase::Head {
            self.since.set(at);
        }
        self.phase.set(phase);
    }
}

/// The connection limit and timeouts the sweeper enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// From the first byte of a head to its end.
    pub header: Duration,
    /// Idle between requests, or no progress on a body or on a response the client is not reading.
    pub idle: Duration,
}

/// Open connections of one shard.
pub(crate) struct ConnTable {
    slots: RefCell<Slab<Rc<ConnState>>>,
    limit: usize,
    accepted: Cell<u64>,
}

/// A registered connection; dropping it removes the entry.
pub(crate) struct ConnHandle {
    table: Rc<ConnTable>,
    key: usize,
    /// The entry the connection task updates.
    pub(crate) state: Rc<ConnState>,
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        self.table.slots.borrow_mut().remove(self.key);
    }
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Swept {
    /// Connections closed for a timeout.
    pub timed_out: usize,
    /// Idle connections closed because the shard drains.
    pub drained: usize,
}

impl ConnTable {
    /// A table holding at most `limit` connections.
    pub(crate) fn new(limit: usize) -> Rc<Self> {
        Rc::new(ConnTable {
            slots: RefCell::new(Slab::with_capacity(limit.min(1024))),
            limit,
            accepted: Cell::new(0),
        })
    }

    /// Registers a connection, or `None` when the shard is at its limit.
    pub(crate) fn register(self: &Rc<Self>, fd: RawFd, now: Instant) -> Option<ConnHandle> {
        let mut slots = self.slots.borrow_mut();
        if slots.len() >= self.limit {
            return None;
        }
        let state = Rc::new(ConnState {
            fd,
            phase: Cell::new(Phase::Idle),
            since: Cell::new(now),
            shut: Cell::new(false),
            gone: Cell::new(false),
        });
        let key = slots.insert(state.clone());
        self.accepted.set(self.accepted.get() + 1);
        Some(ConnHandle {
            table: self.clone(),
            key,
            state,
        })
    }

    /// Open connections.
    pub(crate) fn len(&self) -> usize {
        self.slots.borrow().len()
    }

    /// Connections accepted since start.
    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.get()
    }

    /// Marks busy connections whose client hung up (closed, reset, or shut its sending side, which
    /// HTTP clients do only when they are done), in one `poll` call for all of them. Returns
    /// whether it marked any.
    pub(crate) fn detect_gone(&self) -> bool {
        let slots = self.slots.borrow();
        let busy: Vec<&Rc<ConnState>> = slots
            .iter()
            .map(|(_, c)| c)
            // A socket whose read side we shut ourselves (drain) reports POLLRDHUP too: that
            // is not its client leaving.
            .filter(|c| c.phase.get() == Phase::Busy && !c.gone.get() && !c.shut.get())
            .collect();
        if busy.is_empty() {
            return false;
        }
        let mut fds: Vec<libc::pollfd> = busy
            .iter()
            .map(|c| libc::pollfd {
                fd: c.fd,
                events: libc::POLLRDHUP,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds; timeout 0 never blocks. Every fd
        // belongs to a live connection (see `sweep`).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        if n <= 0 {
            return false;
        }
        let mut marked = false;
        for (c, p) in busy.iter().zip(&fds) {
            if p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
                c.gone.set(true);
                marked = true;
            }
        }
        marked
    }

    /// Shuts down connections that overstayed their phase, and, when `draining`, idle ones.
    pub(crate) fn sweep(&self, now: Instant, t: &Timeouts, draining: bool) -> Swept {
        let mut swept = Swept::default();
        for (_, c) in self.slots.borrow().iter() {
            if c.shut.get() {
                continue;
            }
            let age = now.saturating_duration_since(c.since.get());
            let how = match c.phase.get() {
                // Drain closes idle connections by their read side: a request already on its
                // way is still read and answered (with `Connection: close`), then the connection
                // ends.
                Phase::Idle if draining => Some((libc::SHUT_RD, &mut swept.drained)),
                Phase::Idle | Phase::Body | Phase::Write if age > t.idle => {
                    Some((libc::SHUT_RDWR, &mut swept.timed_out))
                }
                Phase::Head if age > t.header => Some((libc::SHUT_RDWR, &mut swept.timed_out)),
                _ => None,
            };
            if let Some((how, counter)) = how {
                // SAFETY: `fd` belongs to a connection whose task is alive: the entry is removed
                // (ConnHandle::drop) before that task closes its socket, on this same thread.
                unsafe { libc::shutdown(c.fd, how) };
                c.shut.set(true);
                *counter += 1;
            }
        }
        swept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_and_removal() {
        let t = ConnTable::new(2);
        let now = Instant::now();
        let a = t.register(-1, now).unwrap();
        let _b = t.register(-1, now).unwrap();
        assert!(t.register(-1, now).is_none());
        drop(a);
        assert_eq!(t.len(), 1);
        assert!(t.register(-1, now).is_some());
    }

    #[test]
    fn detects_clients_that_hung_up() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let t = ConnTable::new(4);
        let c = t
            .register(std::os::fd::AsRawFd::as_raw_fd(&server), Instant::now())
            .unwrap();
        c.state.enter(Phase::Busy, Instant::now());
        assert!(!t.detect_gone());
        assert!(!c.state.is_gone());
        // Our own drain shutdown is not the client leaving.
        unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&server), libc::SHUT_RD) };
        c.state.shut.set(true);
        assert!(!t.detect_gone());
        c.state.shut.set(false);
        drop(client);
        std::thread::sleep(Duration::from_millis(20));
        assert!(t.detect_gone());
        assert!(c.state.is_gone());
    }

    #[test]
    fn sweeps_by_phase() {
        let t = ConnTable::new(8);
        let t0 = Instant::now();
        let timeouts = Timeouts {
            header: Duration::from_secs(1),
            idle: Duration::from_secs(10),
        };
        let idle = t.register(-1, t0).unwrap();
        let head = t.register(-1, t0).unwrap();
        let busy = t.register(-1, t0).unwrap();
        let writing = t.register(-1, t0).unwrap();
        writing
            .state
            .enter(Phase::Write, t0 + Duration::from_secs(5));
        head.state.enter(Phase::Head, t0);
        // Trickled bytes do not restart the header clock.
        head.state
            .enter(Phase::Head, t0 + Duration::from_millis(900));
        busy.state.enter(Phase::Busy, t0);
        let s = t.sweep(t0 + Duration::from_secs(2), &timeouts, false);
        assert_eq!(
            s,
            Swept {
                timed_out: 1,
                drained: 0
            }
        );
        assert!(head.state.shut.get());
        let s = t.sweep(t0 + Duration::from_secs(11), &timeouts, false);
        assert_eq!(s.timed_out, 1, "the idle one; busy is never timed out");
        assert!(idle.state.shut.get());
        assert!(!busy.state.shut.get());
        assert!(!writing.state.shut.get(), "its clock restarted at t0+5s");
        let s = t.sweep(t0 + Duration::from_secs(16), &timeouts, false);
        assert_eq!(s.timed_out, 1);
        assert!(
            writing.state.shut.get(),
            "a client that stopped reading is cut off"
        );
        busy.state.enter(Phase::Idle, t0);
        let s = t.sweep(t0, &timeouts, true);
        assert_eq!(s.drained, 1);
    }
}
