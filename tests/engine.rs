//! Engine selection against the real binary: `--engine` picks one, and where a seccomp filter
//! refuses `io_uring_setup` (as Docker's default profile does) `auto` falls back to epoll with a
//! log line that says why, while asking for io_uring there is a startup error naming the fix.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::*;
use serde_json::{json, Value};

/// `io_uring_setup`'s syscall number (the same on every Linux architecture).
const SYS_IO_URING_SETUP: u32 = 425;

/// Makes the child's `io_uring_setup` fail with EPERM, as a container's seccomp profile does.
/// Runs between fork and exec: only async-signal-safe calls (two prctls).
fn refuse_io_uring(cmd: &mut Command) {
    // SAFETY: the closure only calls prctl with pointers to data it owns, which is
    // async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            let offset_of_nr = 0; // struct seccomp_data { int nr; … }
            let filter = [
                libc::sock_filter {
                    code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
                    jt: 0,
                    jf: 0,
                    k: offset_of_nr,
                },
                libc::sock_filter {
                    code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 1,
                    k: SYS_IO_URING_SETUP,
                },
                libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
                },
                libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ALLOW,
                },
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn engine_line(server: &Server) -> Value {
    server
        .startup_logs()
        .iter()
        .find(|l| l["message"] == "I/O engine")
        .cloned()
        .expect("friday logs which engine runs")
}

/// The server answers on this engine: health and an identity infer.
fn serves(server: &Server) {
    let mut c = server.client();
    assert_eq!(c.get("/v2/health/ready").status, 200);
    let r = c.post_json(
        "/v2/models/identity/infer",
        &json!({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["outputs"][0]["data"], json!([1.0, 2.0, 3.0]));
}

#[test]
fn the_flag_picks_the_engine() {
    for engine in ["epoll", "io_uring"] {
        let s = Server::start_with(1, &["--engine", engine]);
        let line = engine_line(&s);
        assert_eq!(line["engine"], engine, "{line}");
        assert!(
            line["reason"].as_str().unwrap().contains("configured"),
            "{line}"
        );
        serves(&s);
    }
}

#[test]
fn auto_falls_back_to_epoll_when_seccomp_refuses_io_uring() {
    for shards in [1, 2] {
        let mut cmd = Server::command(shards, &["--engine", "auto"]);
        refuse_io_uring(&mut cmd);
        let s = Server::spawn(cmd);
        let line = engine_line(&s);
        assert_eq!(line["engine"], "epoll", "{line}");
        let reason = line["reason"].as_str().unwrap();
        assert!(
            reason.contains("seccomp") && reason.contains("EPERM"),
            "the reason names the cause: {reason}"
        );
        serves(&s);
    }
}

#[test]
fn asking_for_io_uring_where_it_is_refused_names_the_fix() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_friday"));
    cmd.args(["serve", "--http-address", "127.0.0.1", "--http-port", "0"])
        .args(["--shards", "1", "--engine", "io_uring"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    refuse_io_uring(&mut cmd);
    let out = cmd.output().expect("run friday");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("seccomp"), "{err}");
    assert!(err.contains("--engine epoll"), "{err}");
}

/// CPU seconds the process has used (user + system), from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // Fields after the command: state is [0], utime [11], stime [12], in clock ticks.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf takes no pointers.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[test]
fn running_out_of_descriptors_neither_spins_nor_stops_accepting() {
    for engine in ["io_uring", "epoll"] {
        let mut cmd = Server::command(1, &["--engine", engine]);
        // SAFETY: setrlimit with a struct we own is async-signal-safe, as pre_exec requires.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 48,
                    rlim_max: 48,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let s = Server::spawn(cmd);
        let mut first = s.client();
        assert_eq!(first.get("/v2/health/ready").status, 200);
        // More connections than the server has descriptors: the rest wait in the backlog while
        // accepting fails with EMFILE.
        let crowd: Vec<_> = (0..64)
            .map(|_| std::net::TcpStream::connect(s.addr).unwrap())
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let before = cpu_seconds(s.pid());
        std::thread::sleep(std::time::Duration::from_secs(1));
        let used = cpu_seconds(s.pid()) - before;
        assert!(
            used < 0.5,
            "{engine}: {used:.2} CPU seconds in one second of EMFILE"
        );
        // Connections it has keep being served.
        assert_eq!(first.get("/v2/health/live").status, 200, "{engine}");
        // Once descriptors are free again, new connections are accepted and served.
        drop(crowd);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut late = s.client();
        assert_eq!(late.get("/v2/health/ready").status, 200, "{engine}");
    }
}
