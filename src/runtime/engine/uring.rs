//! The io_uring engine: one ring per shard, owned by the shard's thread.
//!
//! Set up with `SINGLE_ISSUER` (only this thread submits), `DEFER_TASKRUN` (completions are
//! processed when the shard asks for them, not by interrupting it) and `COOP_TASKRUN` where the
//! kernel has them. Connections arrive through one multishot accept; the doorbell is an eventfd
//! read kept armed on the ring. Every operation the shard asks for in a loop turn is queued on
//! the submission ring and submitted, together with the wait for completions, by one
//! `io_uring_enter` per turn.
//!
//! An operation's user data is its kind in the top byte and the connection's key below it.
//!
//! A zero-copy send (`IORING_OP_SEND_ZC`, Linux 6.0) completes twice: once with its result
//! ([`Event::Sent`]), and once more (a notification: [`Event::ZeroCopyDone`]) when the kernel no
//! longer reads the buffer, which for TCP is when the peer has acknowledged the data. Where the
//! kernel lacks the opcode, a zero-copy send is a plain send.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};

use super::Event;

/// After the multishot accept ends on an error (out of file descriptors, say), how long before it
/// is armed again, so a persistent error cannot spin the shard.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// Submission ring entries; the completion ring is twice as large, and the kernel keeps any
/// overflow (`FEAT_NODROP`), so this bounds batching, not connections.
const RING_ENTRIES: u32 = 1024;

const KIND_SHIFT: u32 = 56;
const ACCEPT: u64 = 1;
const RECV: u64 = 2;
const SEND: u64 = 3;
const DOORBELL: u64 = 4;
const CANCEL: u64 = 5;
const SEND_ZC: u64 = 6;

fn user_data(kind: u64, conn: usize) -> u64 {
    (kind << KIND_SHIFT) | conn as u64
}

/// The opcodes friday submits.
const OPCODES: [(u8, &str); 5] = [
    (opcode::AcceptMulti::CODE, "multishot accept (Linux 5.19)"),
    (opcode::Recv::CODE, "recv"),
    (opcode::Send::CODE, "send"),
    (opcode::Read::CODE, "read"),
    (opcode::AsyncCancel::CODE, "async cancel"),
];

/// Whether this process can run the io_uring engine; if not, why, naming the fix.
pub(crate) fn probe() -> Result<(), String> {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    if sysctl == 2 {
        return Err(
            "the kernel.io_uring_disabled sysctl is 2 (io_uring off for every process): \
                    `sysctl -w kernel.io_uring_disabled=0` turns it on"
                .into(),
        );
    }
    let ring =
        build_ring().map_err(|e| match e.raw_os_error() {
            Some(libc::EPERM) if sysctl == 1 => "io_uring_setup was refused with EPERM and the \
             kernel.io_uring_disabled sysctl is 1 (only members of kernel.io_uring_group may use \
             it): add friday's user to that group or `sysctl -w kernel.io_uring_disabled=0`"
                .to_string(),
            Some(errno @ (libc::EPERM | libc::ENOSYS)) => format!(
            "io_uring_setup was refused with {}: a seccomp profile blocks it (Docker's default \
             does) or the kernel lacks io_uring; allow io_uring_setup, io_uring_enter and \
             io_uring_register in the container's seccomp profile",
            if errno == libc::EPERM { "EPERM" } else { "ENOSYS" }
        ),
            Some(libc::ENOMEM) => format!(
                "io_uring_setup failed ({e}): the locked-memory limit is too low; raise it with \
             `ulimit -l` or systemd's LimitMEMLOCK="
            ),
            _ => format!("io_uring_setup failed: {e}"),
        })?;
    if !ring.params().is_feature_ext_arg() {
        return Err("the kernel's io_uring lacks IORING_FEAT_EXT_ARG (Linux 5.11)".into());
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("cannot probe io_uring's opcodes: {e}"))?;
    for (code, name) in OPCODES {
        if !probe.is_supported(code) {
            return Err(format!("the kernel's io_uring lacks {name}"));
        }
    }
    Ok(())
}

/// A ring with the flags friday wants, or as many of them as the kernel has.
fn build_ring() -> io::Result<IoUring> {
    let full = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(RING_ENTRIES);
    match full {
        Ok(ring) => Ok(ring),
        // EINVAL: a kernel older than 6.1 does not know DEFER_TASKRUN.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(RING_ENTRIES)
            .or_else(|_| IoUring::new(RING_ENTRIES)),
        Err(e) => Err(e),
    }
}

/// Whether this kernel's io_uring has zero-copy sends.
fn probe_send_zc(ring: &IoUring) -> bool {
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).is_ok() && probe.is_supported(opcode::SendZc::CODE)
}

/// One shard's ring.
pub(crate) struct UringEngine {
    ring: IoUring,
    /// The kernel has `IORING_OP_SEND_ZC`.
    send_zc: bool,
    /// Zero-copy sends on the ring: (connection, socket, buffer, length), so one the kernel
    /// refuses for lack of memory to pin (`ENOBUFS`) goes again as a plain send. At most one
    /// per connection.
    zc_sends: Vec<(usize, RawFd, *const u8, usize)>,
    /// Of those, the ones to send again by copy after this wait's completions.
    zc_retry: Vec<(usize, RawFd, *const u8, usize)>,
    listener: RawFd,
    accepting: bool,
    /// The multishot accept is on the ring (it ends on an error, or when cancelled).
    accept_armed: bool,
    /// The accept ended on an error: arm it again from then on.
    accept_retry_at: Option<Instant>,
    doorbell: RawFd,
    /// Where the kernel reads the doorbell's counter into; boxed so it never moves.
    doorbell_buf: Box<u64>,
    /// Operations the kernel refused to take: reported by the next wait.
    failed: Vec<Event>,
}

impl UringEngine {
    pub(crate) fn new(listener: RawFd, doorbell: RawFd) -> io::Result<Self> {
        let ring = build_ring()?;
        let mut engine = UringEngine {
            send_zc: probe_send_zc(&ring),
            zc_sends: Vec::new(),
            zc_retry: Vec::new(),
            ring,
            listener,
            accepting: true,
            accept_armed: false,
            accept_retry_at: None,
            doorbell,
            doorbell_buf: Box::new(0),
            failed: Vec::new(),
        };
        engine.arm_accept()?;
        engine.arm_doorbell()?;
        engine.ring.submit()?;
        Ok(engine)
    }

    /// Queues `entry`, submitting what is queued first if the ring is full.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry friday builds points at memory that stays valid until its
            // completion (the engine's contract for buffers; the doorbell buffer is boxed and
            // lives as long as the ring).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn arm_accept(&mut self) -> io::Result<()> {
        let entry = opcode::AcceptMulti::new(types::Fd(self.listener))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(ACCEPT, 0));
        self.push(entry)?;
        self.accept_armed = true;
        Ok(())
    }

    fn arm_doorbell(&mut self) -> io::Result<()> {
        let buf: *mut u64 = &mut *self.doorbell_buf;
        let entry = opcode::Read::new(types::Fd(self.doorbell), buf.cast(), 8)
            .build()
            .user_data(user_data(DOORBELL, 0));
        self.push(entry)
    }

    /// # Safety
    /// See [`super::Engine::recv`].
    pub(crate) unsafe fn recv(&mut self, conn: usize, fd: RawFd, buf: *mut u8, len: usize) {
        let len = len.min(u32::MAX as usize) as u32;
        let entry = opcode::Recv::new(types::Fd(fd), buf, len)
            .build()
            .user_data(user_data(RECV, conn));
        if let Err(e) = self.push(entry) {
            // The kernel refused the submission itself: report it as the operation's result.
            self.failed.push(Event::Received {
                conn,
                result: Err(e),
            });
        }
    }

    /// # Safety
    /// See [`super::Engine::send`].
    pub(crate) unsafe fn send(&mut self, conn: usize, fd: RawFd, buf: *const u8, len: usize) {
        let len = len.min(u32::MAX as usize) as u32;
        let entry = opcode::Send::new(types::Fd(fd), buf, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(SEND, conn));
        if let Err(e) = self.push(entry) {
            self.failed.push(Event::Sent {
                conn,
                result: Err(e),
            });
        }
    }

    /// Whether zero-copy sends are available (see [`UringEngine::send_zc`]).
    pub(crate) fn has_send_zc(&self) -> bool {
        self.send_zc
    }

    /// Sends like [`UringEngine::send`], without copying the bytes into the kernel where the
    /// kernel has `SEND_ZC`; see [`super::Engine::send_zc`] for what it returns.
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
        if !self.send_zc {
            // SAFETY: forwarded contract.
            unsafe { self.send(conn, fd, buf, len) };
            return false;
        }
        let entry = opcode::SendZc::new(types::Fd(fd), buf, len.min(u32::MAX as usize) as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(SEND_ZC, conn));
        if let Err(e) = self.push(entry) {
            self.failed.push(Event::Sent {
                conn,
                result: Err(e),
            });
            return false;
        }
        self.zc_sends.push((conn, fd, buf, len));
        true
    }

    /// Nothing to submit, no completion posted, and no completion waiting for this thread to
    /// process it (`IORING_SQ_TASKRUN`, which `TASKRUN_FLAG` makes the kernel raise).
    fn idle(&mut self) -> bool {
        let quiet = {
            let sq = self.ring.submission();
            sq.is_empty() && !sq.taskrun() && !sq.cq_overflow()
        };
        quiet && self.ring.completion().is_empty()
    }

    pub(crate) fn stop_accepting(&mut self) {
        if !self.accepting {
            return;
        }
        self.accepting = false;
        if self.accept_armed {
            let entry = opcode::AsyncCancel::new(user_data(ACCEPT, 0))
                .build()
                .user_data(user_data(CANCEL, 0));
            let _ = self.push(entry);
        }
    }

    pub(crate) fn wait(
        &mut self,
        timeout: Option<Duration>,
        events: &mut Vec<Event>,
    ) -> io::Result<()> {
        let timeout = if self.failed.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        events.append(&mut self.failed);
        if let Some(at) = self.accept_retry_at {
            if self.accepting && Instant::now() >= at {
                self.accept_retry_at = None;
                self.arm_accept()?;
            }
        }
        if timeout == Some(Duration::ZERO) && self.idle() {
            // A poll with nothing to submit and nothing completed: answer without a syscall, so a
            // shard that spins for more work (busy polling) costs no kernel entry per turn.
            return Ok(());
        }
        let waited = match timeout {
            None => self.ring.submitter().submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match waited {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        let mut rearm_doorbell = false;
        let mut accept_ended = false;
        let mut accept_failed = false;
        for cqe in self.ring.completion() {
            let data = cqe.user_data();
            let conn = (data & ((1 << KIND_SHIFT) - 1)) as usize;
            let result = cqe.result();
            let outcome = if result < 0 {
                Err(io::Error::from_raw_os_error(-result))
            } else {
                Ok(result as usize)
            };
            match data >> KIND_SHIFT {
                ACCEPT => {
                    if !cqueue::more(cqe.flags()) {
                        accept_ended = true;
                    }
                    match outcome {
                        // SAFETY: a successful accept returns a new descriptor we own.
                        Ok(fd) => events.push(Event::Accepted(Ok(unsafe {
                            OwnedFd::from_raw_fd(fd as RawFd)
                        }))),
                        // Cancelled, or failing on the listener the drain shut down.
                        Err(_) if !self.accepting => {}
                        Err(e) => {
                            accept_failed = true;
                            events.push(Event::Accepted(Err(e)));
                        }
                    }
                }
                RECV => events.push(Event::Received {
                    conn,
                    result: outcome,
                }),
                SEND => events.push(Event::Sent {
                    conn,
                    result: outcome,
                }),
                // The notification: the kernel is done with the buffer.
                SEND_ZC if cqueue::notif(cqe.flags()) => events.push(Event::ZeroCopyDone { conn }),
                SEND_ZC => {
                    let op = self
                        .zc_sends
                        .iter()
                        .position(|s| s.0 == conn)
                        .map(|i| self.zc_sends.swap_remove(i));
                    match (op, outcome) {
                        // No memory to pin the pages: the same bytes go by copy; its `Sent`
                        // comes from that send.
                        (Some(op), Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                            self.zc_retry.push(op)
                        }
                        (_, result) => events.push(Event::Sent { conn, result }),
                    }
                    // Without the flag no notification follows: the buffer is free already.
                    if !cqueue::more(cqe.flags()) {
                        events.push(Event::ZeroCopyDone { conn });
                    }
                }
                DOORBELL => {
                    events.push(Event::Doorbell);
                    rearm_doorbell = true;
                }
                _ => {}
            }
        }
        for (conn, fd, buf, len) in std::mem::take(&mut self.zc_retry) {
            // SAFETY: the buffer the connection handed to `send_zc`, still kept: its `Sent` has
            // not come yet.
            unsafe { self.send(conn, fd, buf, len) };
        }
        if accept_ended {
            self.accept_armed = false;
            if self.accepting && accept_failed {
                self.accept_retry_at = Some(Instant::now() + ACCEPT_ERROR_BACKOFF);
            } else if self.accepting {
                self.arm_accept()?;
            }
        }
        if rearm_doorbell {
            self.arm_doorbell()?;
        }
        Ok(())
    }
}
