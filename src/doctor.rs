//! Host preflight: `friday doctor`, and the checks `friday serve` runs before any shard starts.
//!
//! Each check gives a verdict (ok, warn or fail), what it found, and for anything short of ok
//! the exact fix (a sysctl, a systemd setting, a flag). Only what stops friday from starting as
//! configured fails: an io_uring engine asked for where io_uring cannot run, a CPU set that
//! cannot hold the shards. The rest (frequency governor, hyper-thread siblings, NIC interrupts,
//! listen backlog, transparent huge pages, ONNX backends) cost latency or capability and warn.
//!
//! The files checked are read below a root (`/` on a real host), so tests give the checks a fake
//! `/proc` and `/sys`. What is not a file (the io_uring probe, the memlock limit, the affinity
//! mask, the kernel version) comes in a [`Probes`], taken live by [`Probes::live`].

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::{Config, EngineChoice};
use crate::topology::{format_cpu_list, parse_cpu_list, plan_shards};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Nothing to do.
    Ok,
    /// friday runs, but slower or with less than it could.
    Warn,
    /// friday cannot start as configured.
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        })
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// How it came out.
    pub verdict: Verdict,
    /// What was found.
    pub found: String,
    /// For a warning or a failure: what to do about it.
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, found: impl Into<String>) -> Check {
        Check {
            name,
            verdict: Verdict::Ok,
            found: found.into(),
            fix: None,
        }
    }

    fn short(
        name: &'static str,
        verdict: Verdict,
        found: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name,
            verdict,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<5} {:<22} {}", self.verdict, self.name, self.found)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n      {:<22} fix: {fix}", "")?;
        }
        Ok(())
    }
}

/// What the checks need that is not a file under the root.
#[derive(Debug, Clone)]
pub struct Probes {
    /// Whether an io_uring ring with every feature friday uses can be set up; if not, why.
    pub io_uring: Result<(), String>,
    /// `RLIMIT_MEMLOCK`'s soft limit in bytes (`None`: unlimited).
    pub memlock: Option<u64>,
    /// The CPUs this process may run on.
    pub affinity: Vec<usize>,
    /// The kernel's (major, minor) version.
    pub kernel: (u32, u32),
    /// Whether ONNX Runtime's library loads (its path), or why not; `None`: not checked (a start
    /// does not load the library unless a model needs it).
    pub onnxruntime: Option<Result<String, String>>,
}

impl Probes {
    /// This process on this host; `onnxruntime`: whether to try loading ONNX Runtime's library.
    pub fn live(config: &Config, onnxruntime: bool) -> Probes {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the limit into `limit`, which lives for the call.
        let memlock = if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0 {
            (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
        } else {
            Some(0)
        };
        let library = config.onnxruntime.library.as_deref();
        Probes {
            io_uring: crate::runtime::engine::probe_io_uring(),
            memlock,
            affinity: crate::topology::affinity_cpus().unwrap_or_default(),
            kernel: kernel_version(),
            onnxruntime: onnxruntime.then(|| {
                crate::model::onnxruntime::runtime(library)
                    .map(|_| {
                        library
                            .map(Path::to_path_buf)
                            .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    })
                    .map_err(|e| e.to_string())
            }),
        }
    }
}

/// The running kernel's (major, minor) version, from uname.
fn kernel_version() -> (u32, u32) {
    // SAFETY: uname fills the zeroed struct; its fields are NUL-terminated C strings.
    let release = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return (0, 0);
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    };
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (next(), next())
}

/// Locked memory one shard's io_uring ring takes on kernels that charge rings to
/// `RLIMIT_MEMLOCK` (before 5.12): its 1024 submission entries, 2048 completion entries and
/// ring headers, rounded up.
pub const RING_MEMLOCK_BYTES: u64 = 128 << 10;

/// Every check, for `config` on the host under `root` with `probes`.
pub fn checks(config: &Config, root: &Path, probes: &Probes) -> Vec<Check> {
    let read = |path: &str| std::fs::read_to_string(root.join(path.trim_start_matches('/'))).ok();
    let shards = plan_shards(&config.shards, &probes.affinity);
    let shard_cpus = shards.as_ref().map(Vec::clone).unwrap_or_default();
    let mut out = vec![
        match &shards {
            Ok(cpus) => Check::ok(
                "cpus",
                format!(
                    "{} shard(s) on CPUs {} (affinity mask {})",
                    cpus.len(),
                    format_cpu_list(cpus),
                    format_cpu_list(&probes.affinity)
                ),
            ),
            Err(e) => Check::short(
                "cpus",
                Verdict::Fail,
                "the shards do not fit the CPUs this process may use",
                e.to_string(),
            ),
        },
        io_uring(config, probes),
        memlock(config, probes, shard_cpus.len()),
    ];
    out.push(governor(&shard_cpus, &read));
    out.push(siblings(&shard_cpus, &read));
    out.push(nic_interrupts(root, &shard_cpus, &read));
    out.push(somaxconn(config, &read));
    if config.http.reuse_port {
        out.push(port_handover(&read));
    }
    out.push(huge_pages(&read));
    match &probes.onnxruntime {
        None => {}
        Some(Ok(path)) => out.push(Check::ok(
            "onnx backends",
            format!("rten, and ONNX Runtime ({path})"),
        )),
        Some(Err(why)) => out.push(Check::short(
            "onnx backends",
            Verdict::Warn,
            "rten only: models with an operator rten lacks, or that ask for ONNX Runtime, will \
             not load",
            why.clone(),
        )),
    }
    out
}

fn io_uring(config: &Config, probes: &Probes) -> Check {
    match (&probes.io_uring, config.engine) {
        (_, EngineChoice::Epoll) => Check::ok("io_uring", "not used (engine = \"epoll\")"),
        (Ok(()), _) => Check::ok("io_uring", "available: the shards run on io_uring"),
        (Err(why), EngineChoice::IoUring) => Check::short(
            "io_uring",
            Verdict::Fail,
            format!("asked for (engine = \"io_uring\") but unavailable: {why}"),
            "fix the cause above, or run with --engine epoll (or auto, which falls back to it)",
        ),
        (Err(why), EngineChoice::Auto) => Check::short(
            "io_uring",
            Verdict::Warn,
            format!("unavailable, so the shards run on epoll: {why}"),
            "fix the cause above for io_uring's lower per-request cost",
        ),
    }
}

fn memlock(config: &Config, probes: &Probes, shards: usize) -> Check {
    let limit = match probes.memlock {
        None => return Check::ok("memlock", "unlimited"),
        Some(l) => l,
    };
    let uring = config.engine != EngineChoice::Epoll && probes.io_uring.is_ok();
    // One ring per shard and the probe's.
    let need = (shards as u64 + 1) * RING_MEMLOCK_BYTES;
    let found = format!(
        "limit {} KiB; {} shard ring(s) take about {} KiB",
        limit >> 10,
        shards,
        need >> 10
    );
    if !uring || probes.kernel >= (5, 12) || limit >= need {
        let why = if probes.kernel >= (5, 12) {
            " (Linux 5.12 and later charge rings to the memory cgroup, not this limit)"
        } else {
            ""
        };
        return Check::ok("memlock", format!("{found}{why}"));
    }
    Check::short(
        "memlock",
        Verdict::Warn,
        found,
        format!(
            "raise it to at least {} KiB: `ulimit -l {}`, LimitMEMLOCK={} in the systemd unit, \
             or --ulimit memlock={}:{} for docker",
            need >> 10,
            need >> 10,
            need,
            need,
            need
        ),
    )
}

fn governor(cpus: &[usize], read: &impl Fn(&str) -> Option<String>) -> Check {
    let mut slow = Vec::new();
    let mut seen = 0;
    for &cpu in cpus {
        let path = format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor");
        if let Some(g) = read(&path) {
            seen += 1;
            if g.trim() != "performance" {
                slow.push(format!("CPU {cpu}: {}", g.trim()));
            }
        }
    }
    if seen == 0 {
        return Check::ok(
            "cpu frequency governor",
            "no cpufreq governor to check (a VM, or the firmware decides)",
        );
    }
    if slow.is_empty() {
        return Check::ok("cpu frequency governor", "performance on every shard CPU");
    }
    Check::short(
        "cpu frequency governor",
        Verdict::Warn,
        format!(
            "{}: a shard waking from idle runs slowly until the clock ramps up",
            slow.join(", ")
        ),
        format!(
            "`cpupower -c {} frequency-set -g performance` (or write performance to \
             /sys/devices/system/cpu/cpuN/cpufreq/scaling_governor)",
            format_cpu_list(cpus)
        ),
    )
}

fn siblings(cpus: &[usize], read: &impl Fn(&str) -> Option<String>) -> Check {
    let mut shared = Vec::new();
    let mut one_per_core: Vec<usize> = Vec::new();
    let mut cores: Vec<Vec<usize>> = Vec::new();
    for &cpu in cpus {
        let path = format!("/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list");
        let core = read(&path)
            .and_then(|s| parse_cpu_list(s.trim()).ok())
            .unwrap_or_else(|| vec![cpu]);
        match cores.iter().find(|c| c.contains(&cpu)) {
            Some(c) => {
                let first = c.iter().find(|x| cpus.contains(x)).copied().unwrap_or(cpu);
                shared.push(format!("{first} and {cpu}"));
            }
            None => {
                one_per_core.push(cpu);
                cores.push(core);
            }
        }
    }
    if shared.is_empty() {
        return Check::ok("hyper-thread siblings", "every shard has a core of its own");
    }
    Check::short(
        "hyper-thread siblings",
        Verdict::Warn,
        format!(
            "shards on CPUs {} share a physical core, so each gets part of it",
            shared.join(", ")
        ),
        format!(
            "one shard per core: --cpus {}",
            format_cpu_list(&one_per_core)
        ),
    )
}

/// The interrupts of the network interfaces (from their MSI vectors) and the CPUs they land on.
fn nic_interrupts(root: &Path, cpus: &[usize], read: &impl Fn(&str) -> Option<String>) -> Check {
    let mut irqs: Vec<(String, u32)> = Vec::new();
    if let Ok(nics) = std::fs::read_dir(root.join("sys/class/net")) {
        for nic in nics.flatten() {
            let name = nic.file_name().to_string_lossy().into_owned();
            let Ok(vectors) = std::fs::read_dir(nic.path().join("device/msi_irqs")) else {
                continue;
            };
            for v in vectors.flatten() {
                if let Ok(n) = v.file_name().to_string_lossy().parse() {
                    irqs.push((name.clone(), n));
                }
            }
        }
    }
    irqs.sort();
    if irqs.is_empty() {
        return Check::ok(
            "nic interrupts",
            "no network interface with MSI interrupts to check (loopback only, or a VM's)",
        );
    }
    let mut elsewhere = Vec::new();
    for (nic, irq) in &irqs {
        let Some(list) = read(&format!("/proc/irq/{irq}/smp_affinity_list")) else {
            continue;
        };
        let Ok(on) = parse_cpu_list(list.trim()) else {
            continue;
        };
        if !on.iter().any(|c| cpus.contains(c)) {
            elsewhere.push(format!("{nic} IRQ {irq} on CPUs {}", list.trim()));
        }
    }
    if elsewhere.is_empty() {
        return Check::ok(
            "nic interrupts",
            format!("{} NIC interrupt(s), each on a shard CPU", irqs.len()),
        );
    }
    Check::short(
        "nic interrupts",
        Verdict::Warn,
        format!(
            "{}: packets are received on CPUs with no shard, and every request crosses cores",
            elsewhere.join(", ")
        ),
        format!(
            "spread the NIC's queues over the shard CPUs ({}): stop irqbalance and write each \
             IRQ's CPU to /proc/irq/N/smp_affinity_list (see tuning/)",
            format_cpu_list(cpus)
        ),
    )
}

fn somaxconn(config: &Config, read: &impl Fn(&str) -> Option<String>) -> Check {
    let backlog = config.http.listen_backlog;
    match read("/proc/sys/net/core/somaxconn").and_then(|s| s.trim().parse::<u32>().ok()) {
        None => Check::ok(
            "listen backlog",
            "net.core.somaxconn unreadable; not checked",
        ),
        Some(max) if max as u64 >= backlog as u64 => Check::ok(
            "listen backlog",
            format!("net.core.somaxconn {max} holds the listen backlog of {backlog}"),
        ),
        Some(max) => Check::short(
            "listen backlog",
            Verdict::Warn,
            format!(
                "net.core.somaxconn is {max}, below http.listen_backlog {backlog}: the kernel \
                 cuts the backlog, and a burst of connections is refused"
            ),
            format!("`sysctl -w net.core.somaxconn={backlog}`"),
        ),
    }
}

/// With `http.reuse_port`, a handover closes the old process's listeners while the new one's
/// listen beside them; connections already queued on the old ones (handshake done, not yet
/// accepted) move to the new process only if the kernel migrates them (`tcp_migrate_req`, Linux
/// 5.14); otherwise they are reset.
fn port_handover(read: &impl Fn(&str) -> Option<String>) -> Check {
    let fix = "`sysctl -w net.ipv4.tcp_migrate_req=1` (and in /etc/sysctl.d/ to keep it)";
    match read("/proc/sys/net/ipv4/tcp_migrate_req").map(|s| s.trim().to_string()) {
        Some(v) if v == "1" => Check::ok(
            "port handover",
            "net.ipv4.tcp_migrate_req 1: connections queued on a draining process move to the \
             process sharing its port",
        ),
        Some(v) => Check::short(
            "port handover",
            Verdict::Warn,
            format!(
                "net.ipv4.tcp_migrate_req is {v}: in a blue-green handover, connections queued on \
                 the old process's listeners when it drains are reset instead of moving to the \
                 new process"
            ),
            fix,
        ),
        None => Check::short(
            "port handover",
            Verdict::Warn,
            "this kernel cannot migrate queued connections (net.ipv4.tcp_migrate_req, Linux \
             5.14): in a blue-green handover, connections queued on the old process's listeners \
             when it drains are reset",
            "a kernel of 5.14 or later, or switch traffic in front of friday (a load balancer) \
             instead of sharing the port",
        ),
    }
}

fn huge_pages(read: &impl Fn(&str) -> Option<String>) -> Check {
    let Some(setting) = read("/sys/kernel/mm/transparent_hugepage/enabled") else {
        return Check::ok("transparent huge pages", "not available; nothing to check");
    };
    // The kernel marks the active choice: "always [madvise] never".
    let active = setting
        .split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(['[', ']']).to_string())
        .unwrap_or_default();
    if active == "always" {
        return Check::short(
            "transparent huge pages",
            Verdict::Warn,
            "always: khugepaged compaction can stall a shard for milliseconds",
            "`echo madvise > /sys/kernel/mm/transparent_hugepage/enabled`",
        );
    }
    Check::ok("transparent huge pages", active)
}

/// The worst verdict among `checks`.
pub fn worst(checks: &[Check]) -> Verdict {
    checks
        .iter()
        .map(|c| c.verdict)
        .max()
        .unwrap_or(Verdict::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake host: files under a temporary root.
    struct Root(PathBuf);

    impl Root {
        fn new(tag: &str) -> Root {
            let dir =
                std::env::temp_dir().join(format!("friday-doctor-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Root(dir)
        }

        fn file(&self, path: &str, text: &str) -> &Self {
            let p = self.0.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
            self
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn probes() -> Probes {
        Probes {
            io_uring: Ok(()),
            memlock: Some(8 << 20),
            affinity: vec![0, 1, 2, 3],
            kernel: (6, 1),
            onnxruntime: Some(Ok("/lib/libonnxruntime.so".into())),
        }
    }

    fn config(cpus: &str) -> Config {
        let mut c = Config::default();
        c.shards.cpus = Some(cpus.into());
        c
    }

    fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn a_well_set_host_passes_every_check() {
        let root = Root::new("good");
        root.file("/proc/sys/net/core/somaxconn", "4096\n").file(
            "/sys/kernel/mm/transparent_hugepage/enabled",
            "always [madvise] never\n",
        );
        for cpu in 0..4 {
            root.file(
                &format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"),
                "performance\n",
            )
            .file(
                &format!("/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"),
                &format!("{cpu}\n"),
            );
        }
        let checks = super::checks(&config("0-3"), &root.0, &probes());
        assert_eq!(worst(&checks), Verdict::Ok, "{checks:#?}");
    }

    #[test]
    fn each_problem_is_reported_with_its_fix() {
        let root = Root::new("bad");
        root.file("/proc/sys/net/core/somaxconn", "128\n")
            .file(
                "/sys/kernel/mm/transparent_hugepage/enabled",
                "[always] madvise never\n",
            )
            .file("/sys/class/net/eth0/device/msi_irqs/40", "msi\n")
            .file("/proc/irq/40/smp_affinity_list", "3\n");
        for cpu in 0..4 {
            root.file(
                &format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"),
                "powersave\n",
            )
            // CPUs 0 and 2 share a core, as do 1 and 3.
            .file(
                &format!("/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"),
                if cpu % 2 == 0 { "0,2\n" } else { "1,3\n" },
            );
        }
        let mut p = probes();
        p.io_uring = Err("the kernel.io_uring_disabled sysctl is 2".into());
        p.onnxruntime = Some(Err("set ORT_DYLIB_PATH".into()));
        p.kernel = (5, 10);
        p.memlock = Some(64 << 10);
        let checks = super::checks(&config("0-2"), &root.0, &p);
        for c in &checks {
            println!("{c}");
        }
        let fix = |name: &str| {
            let c = find(&checks, name);
            assert_eq!(c.verdict, Verdict::Warn, "{c}");
            c.fix.clone().unwrap()
        };
        assert!(fix("cpu frequency governor").contains("frequency-set -g performance"));
        assert_eq!(
            fix("hyper-thread siblings"),
            "one shard per core: --cpus 0-1"
        );
        assert!(find(&checks, "hyper-thread siblings")
            .found
            .contains("0 and 2"));
        assert!(fix("nic interrupts").contains("/proc/irq/N/smp_affinity_list"));
        assert!(find(&checks, "nic interrupts")
            .found
            .contains("eth0 IRQ 40 on CPUs 3"));
        assert_eq!(fix("listen backlog"), "`sysctl -w net.core.somaxconn=1024`");
        // The handover check runs only where the port is shared.
        assert!(!checks.iter().any(|c| c.name == "port handover"));
        let mut sharing = config("0-2");
        sharing.http.reuse_port = true;
        let shared = super::checks(&sharing, &root.0, &p);
        let handover = find(&shared, "port handover");
        assert_eq!(handover.verdict, Verdict::Warn, "{handover}");
        assert!(
            handover.fix.as_deref().unwrap().contains("5.14"),
            "{handover}"
        );
        root.file("/proc/sys/net/ipv4/tcp_migrate_req", "0\n");
        let shared = super::checks(&sharing, &root.0, &p);
        assert_eq!(
            find(&shared, "port handover").fix.as_deref().unwrap(),
            "`sysctl -w net.ipv4.tcp_migrate_req=1` (and in /etc/sysctl.d/ to keep it)"
        );
        root.file("/proc/sys/net/ipv4/tcp_migrate_req", "1\n");
        let shared = super::checks(&sharing, &root.0, &p);
        assert_eq!(find(&shared, "port handover").verdict, Verdict::Ok);
        assert!(fix("transparent huge pages").contains("madvise"));
        assert!(fix("onnx backends").contains("ORT_DYLIB_PATH"));
        assert!(find(&checks, "io_uring")
            .found
            .contains("io_uring_disabled"));
        assert_eq!(find(&checks, "io_uring").verdict, Verdict::Warn);
        // auto falls back to epoll, so the memlock limit does not matter.
        assert_eq!(find(&checks, "memlock").verdict, Verdict::Ok);
        assert_eq!(worst(&checks), Verdict::Warn);
    }

    #[test]
    fn what_stops_a_start_fails() {
        let root = Root::new("fail");
        let mut c = config("0-7");
        let checks = super::checks(&c, &root.0, &probes());
        let cpus = find(&checks, "cpus");
        assert_eq!(cpus.verdict, Verdict::Fail, "{cpus}");
        assert!(
            cpus.fix.as_deref().unwrap().contains("affinity mask"),
            "{cpus}"
        );
        c.shards.cpus = Some("0-1".into());
        c.engine = EngineChoice::IoUring;
        let mut p = probes();
        p.io_uring = Err("io_uring_setup was refused with EPERM".into());
        let checks = super::checks(&c, &root.0, &p);
        let uring = find(&checks, "io_uring");
        assert_eq!(uring.verdict, Verdict::Fail);
        assert!(uring.fix.as_deref().unwrap().contains("--engine epoll"));
        // An old kernel counts rings against a low memlock limit.
        p.io_uring = Ok(());
        p.kernel = (5, 10);
        p.memlock = Some(64 << 10);
        let checks = super::checks(&c, &root.0, &p);
        let memlock = find(&checks, "memlock");
        assert_eq!(memlock.verdict, Verdict::Warn, "{memlock}");
        assert!(memlock
            .fix
            .as_deref()
            .unwrap()
            .contains("LimitMEMLOCK=393216"));
    }
}
