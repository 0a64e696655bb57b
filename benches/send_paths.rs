//! Send paths for a large output: what it costs the sending thread to put N bytes of a buffer the
//! model wrote onto a TCP socket, by each way a shard could send it.
//!
//! - `copy`: copy the bytes into a connection's write buffer first, then `send` from it in 512 KiB
//!   pieces (what a response encoded into the write buffer costs);
//! - `send`: `send` straight from the model's buffer in 512 KiB pieces (friday's deferred tails);
//! - `writev`: one `sendmsg` per 512 KiB, each gathering a response head and the buffer's pieces
//!   (vectored);
//! - `msg_zerocopy`: `send(MSG_ZEROCOPY)` on a `SO_ZEROCOPY` socket (the epoll engine's option),
//!   the buffer kept until the kernel's completions are read from the error queue;
//! - `send_zc`: io_uring `IORING_OP_SEND_ZC` (the io_uring engine's option), the buffer kept until
//!   each send's notification completion.
//!
//! A receiver thread on another CPU drains the socket. Sizes from 16 KiB to 64 MiB; the median of
//! several sends per size and path, in µs and GB/s, with the sender's CPU time. The smallest size
//! from which a zero-copy path beats `send` is the threshold worth configuring. Over loopback the
//! receiving side copies anyway, so zero copy saves only the sender's copy; over a NIC it saves
//! that copy too.
//!
//! Run with `cargo bench --bench send_paths` (about 30 s). Pin it with `taskset -c 0,1`.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types, IoUring};

mod support;

/// Bytes per send call, as friday's `MAX_IO_BYTES`.
const PIECE: usize = 512 << 10;
const SIZES: [usize; 7] = [
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    64 << 20,
];

fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A connected pair over loopback: the sender's socket, and a thread on CPU 1 that reads and
/// discards everything until the socket closes.
fn pair() -> (TcpStream, std::thread::JoinHandle<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        friday::topology::pin_current_thread(1);
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n as u64,
            }
        }
    });
    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    (s, reader)
}

/// Sends all of `data` with `send(2)`, `flags`, a piece at a time (blocking socket). Returns
/// how many send calls took bytes (each is one MSG_ZEROCOPY completion to wait for).
fn send_all(fd: i32, data: &[u8], flags: i32) -> u32 {
    let mut off = 0;
    let mut calls = 0;
    while off < data.len() {
        let end = (off + PIECE).min(data.len());
        // SAFETY: a send from a live slice on an open socket.
        let n = unsafe {
            libc::send(
                fd,
                data[off..end].as_ptr().cast(),
                end - off,
                flags | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                // MSG_ZEROCOPY ran out of option memory: wait for a completion and retry.
                std::thread::yield_now();
                continue;
            }
            panic!("send: {e}");
        }
        off += n as usize;
        calls += 1;
    }
    calls
}

/// `SO_EE_ORIGIN_ZEROCOPY`: a MSG_ZEROCOPY completion in the error queue.
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;

/// Reads MSG_ZEROCOPY completions from the error queue until `calls` sends are covered (each
/// completion covers a range of send calls).
fn wait_zerocopy_completions(fd: i32, calls: u32) {
    let mut covered = 0u32;
    while covered < calls {
        let mut control = [0u64; 16];
        // SAFETY: a recvmsg on our socket into buffers we own; the control message, if any, is
        // read within the bytes the kernel wrote.
        let got = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control);
            if libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE) < 0 {
                None
            } else {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                if cmsg.is_null() {
                    None
                } else {
                    let err = libc::CMSG_DATA(cmsg) as *const libc::sock_extended_err;
                    let err = std::ptr::read_unaligned(err);
                    (err.ee_origin == SO_EE_ORIGIN_ZEROCOPY).then(|| err.ee_data - err.ee_info + 1)
                }
            }
        };
        match got {
            Some(n) => covered += n,
            None => {
                let mut p = libc::pollfd {
                    fd,
                    events: 0,
                    revents: 0,
                };
                // SAFETY: poll on one pollfd we own; POLLERR is reported whatever `events` says.
                unsafe { libc::poll(&mut p, 1, 1000) };
            }
        }
    }
}

/// Sends `data` with io_uring SEND_ZC a piece at a time, waiting for each send's result and
/// collecting every notification before returning (the buffer may be reused only then).
fn send_zc_all(ring: &mut IoUring, fd: i32, data: &[u8]) -> Result<(), std::io::Error> {
    let mut off = 0;
    let mut notifs_pending = 0;
    while off < data.len() {
        let end = (off + PIECE).min(data.len());
        let sqe = opcode::SendZc::new(types::Fd(fd), data[off..end].as_ptr(), (end - off) as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(off as u64);
        // SAFETY: the buffer outlives the operation: we wait for its notification below.
        unsafe { ring.submission().push(&sqe).expect("ring has room") };
        ring.submit_and_wait(1)?;
        let mut sent = None;
        while sent.is_none() {
            for cqe in ring.completion() {
                if cqueue::notif(cqe.flags()) {
                    notifs_pending -= 1;
                    continue;
                }
                if cqe.result() < 0 {
                    return Err(std::io::Error::from_raw_os_error(-cqe.result()));
                }
                if cqueue::more(cqe.flags()) {
                    notifs_pending += 1;
                }
                sent = Some(cqe.result() as usize);
            }
            if sent.is_none() {
                ring.submit_and_wait(1)?;
            }
        }
        off += sent.unwrap_or(0);
    }
    while notifs_pending > 0 {
        ring.submit_and_wait(1)?;
        for cqe in ring.completion() {
            if cqueue::notif(cqe.flags()) {
                notifs_pending -= 1;
            }
        }
    }
    Ok(())
}

/// Median wall and CPU time of `runs` sends of `size` bytes by `send`.
fn time(runs: usize, mut send: impl FnMut()) -> (Duration, Duration) {
    let mut wall = Vec::with_capacity(runs);
    let mut cpu = Vec::with_capacity(runs);
    send();
    for _ in 0..runs {
        let (w, c) = (Instant::now(), cpu_time());
        send();
        wall.push(w.elapsed());
        cpu.push(cpu_time() - c);
    }
    wall.sort();
    cpu.sort();
    (wall[runs / 2], cpu[runs / 2])
}

fn main() {
    println!("send paths ({})", support::machine());
    friday::topology::pin_current_thread(0);
    println!(
        "  {:<13} {:>9} {:>11} {:>9} {:>11}",
        "path", "size", "median µs", "GB/s", "CPU µs"
    );
    let data: Vec<u8> = (0..*SIZES.last().unwrap())
        .map(|i| (i % 251) as u8)
        .collect();
    let mut write_buffer: Vec<u8> = Vec::with_capacity(data.len() + 4096);
    let mut ring = IoUring::new(64).ok();
    let mut zc_ok = true;
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 00000000\r\n\r\n";
    for size in SIZES {
        let runs = (256 << 20) / size.max(1 << 20) + 4;
        let body = &data[..size];
        let row = |path: &str, (wall, cpu): (Duration, Duration)| {
            let gbps = size as f64 / wall.as_secs_f64() / 1e9;
            println!(
                "  {path:<13} {:>9} {:>11.1} {gbps:>9.2} {:>11.1}",
                human(size),
                wall.as_secs_f64() * 1e6,
                cpu.as_secs_f64() * 1e6
            );
        };
        let (s, reader) = pair();
        let fd = s.as_raw_fd();
        row(
            "copy",
            time(runs, || {
                write_buffer.clear();
                write_buffer.extend_from_slice(head);
                write_buffer.extend_from_slice(body);
                send_all(fd, &write_buffer, 0);
            }),
        );
        row(
            "send",
            time(runs, || {
                send_all(fd, body, 0);
            }),
        );
        row(
            "writev",
            time(runs, || {
                let mut off = 0;
                let mut first = true;
                while off < body.len() {
                    let end = (off + PIECE).min(body.len());
                    let mut iov = [
                        libc::iovec {
                            iov_base: head.as_ptr() as *mut _,
                            iov_len: if first { head.len() } else { 0 },
                        },
                        libc::iovec {
                            iov_base: body[off..end].as_ptr() as *mut _,
                            iov_len: end - off,
                        },
                    ];
                    // SAFETY: a sendmsg from live slices on an open socket.
                    let n = unsafe {
                        let mut msg: libc::msghdr = std::mem::zeroed();
                        msg.msg_iov = iov.as_mut_ptr();
                        msg.msg_iovlen = 2;
                        libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL)
                    };
                    assert!(n >= 0, "sendmsg: {}", std::io::Error::last_os_error());
                    let mut n = n as usize;
                    if first {
                        assert!(n >= head.len(), "the head goes out whole");
                        n -= head.len();
                        first = false;
                    }
                    off += n;
                }
            }),
        );
        drop(s);
        reader.join().unwrap();

        let (s, reader) = pair();
        let fd = s.as_raw_fd();
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a valid int option on our socket.
        let zerocopy = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ZEROCOPY,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        } == 0;
        if zerocopy {
            row(
                "msg_zerocopy",
                time(runs, || {
                    let calls = send_all(fd, body, libc::MSG_ZEROCOPY);
                    wait_zerocopy_completions(fd, calls);
                }),
            );
        } else {
            println!("  msg_zerocopy  unavailable: SO_ZEROCOPY refused");
        }
        drop(s);
        reader.join().unwrap();

        let (s, reader) = pair();
        let fd = s.as_raw_fd();
        match ring.as_mut() {
            Some(r) if zc_ok => {
                if let Err(e) = send_zc_all(r, fd, body) {
                    println!("  send_zc       unavailable: {e}");
                    zc_ok = false;
                } else {
                    row(
                        "send_zc",
                        time(runs, || {
                            send_zc_all(r, fd, body).expect("SEND_ZC worked before")
                        }),
                    );
                }
            }
            _ => println!("  send_zc       unavailable: no io_uring or SEND_ZC"),
        }
        drop(s);
        reader.join().unwrap();
    }
}

fn human(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}
