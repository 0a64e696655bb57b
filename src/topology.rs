//! Which CPUs friday may use, and which CPU each shard gets.
//!
//! Pure functions over CPU lists, plus one syscall ([`affinity_cpus`]) to read the process's
//! affinity mask. The shard plan honours `taskset`/cgroup cpusets: by default one shard per CPU
//! the process may run on, never a CPU outside that set.

use crate::config::ShardsConfig;
use crate::error::StartupError;

/// Parses a Linux CPU list such as `0,2-3,8` into sorted, de-duplicated CPU ids.
pub fn parse_cpu_list(list: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(format!("empty entry in CPU list `{list}`"));
        }
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.trim(), hi.trim()),
            None => (part, part),
        };
        let lo: usize = lo
            .parse()
            .map_err(|_| format!("`{part}` is not a CPU number or range in `{list}`"))?;
        let hi: usize = hi
            .parse()
            .map_err(|_| format!("`{part}` is not a CPU number or range in `{list}`"))?;
        if lo > hi {
            return Err(format!("range `{part}` runs backwards in `{list}`"));
        }
        if hi >= 4096 {
            return Err(format!("CPU {hi} is beyond 4095 in `{list}`"));
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Formats CPU ids compactly (`0-3,6`), for messages.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
}

/// The CPUs this process may run on (its `sched_getaffinity` mask).
pub fn affinity_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set, and sched_getaffinity writes
    // at most size_of::<cpu_set_t>() bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect())
    }
}

/// Pins the calling thread to `cpu` (ignored beyond `CPU_SETSIZE`, which no affinity mask holds).
pub fn pin_current_thread(cpu: usize) {
    if cpu >= libc::CPU_SETSIZE as usize {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it (checked above);
    // sched_setaffinity(0) applies to the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Chooses one CPU per shard from the config and the affinity mask.
pub fn plan_shards(shards: &ShardsConfig, allowed: &[usize]) -> Result<Vec<usize>, StartupError> {
    if allowed.is_empty() {
        return Err(StartupError::new(
            "the process's CPU affinity mask is empty: run friday without taskset restrictions",
        ));
    }
    let allowed_list = format_cpu_list(allowed);
    if let Some(list) = &shards.cpus {
        let cpus = parse_cpu_list(list).map_err(|e| StartupError::new(format!("--cpus: {e}")))?;
        if let Some(bad) = cpus.iter().find(|c| !allowed.contains(c)) {
            return Err(StartupError::new(format!(
                "CPU {bad} (from --cpus {list}) is not in this process's affinity mask \
                 ({allowed_list}): pick CPUs from that set or widen it (taskset, cgroup cpuset)"
            )));
        }
        return Ok(cpus);
    }
    match shards.count {
        Some(n) if n > allowed.len() => Err(StartupError::new(format!(
            "--shards {n} needs {n} CPUs but this process may run on {} ({allowed_list}): \
             lower --shards or widen the affinity mask (taskset, cgroup cpuset)",
            allowed.len()
        ))),
        Some(0) => Err(StartupError::new("--shards must be at least 1")),
        Some(n) => Ok(allowed[..n].to_vec()),
        None => Ok(allowed.to_vec()),
    }
}

/// The memory this process may use, in bytes: the machine's physical memory, or the cgroup's
/// limit (`memory.max`, cgroup v2) where that is lower, as in a container.
pub fn physical_memory() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for a name it does not know.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let machine = if pages > 0 && page > 0 {
        pages as u64 * page as u64
    } else {
        u64::MAX
    };
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    machine.min(cgroup)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_lists_and_ranges() {
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("0,2-4, 7").unwrap(), vec![0, 2, 3, 4, 7]);
        assert_eq!(parse_cpu_list("3,1-2,2").unwrap(), vec![1, 2, 3]);
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("1,,2").is_err());
        assert!(parse_cpu_list("4-2").is_err());
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("99999").is_err());
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 6]), "0-3,6");
        assert_eq!(format_cpu_list(&[5]), "5");
        assert_eq!(format_cpu_list(&[]), "");
    }

    #[test]
    fn plans_from_the_mask() {
        let allowed = [0, 1, 2, 3];
        let none = ShardsConfig::default();
        assert_eq!(plan_shards(&none, &allowed).unwrap(), vec![0, 1, 2, 3]);
        let two = ShardsConfig {
            count: Some(2),
            cpus: None,
            ..ShardsConfig::default()
        };
        assert_eq!(plan_shards(&two, &allowed).unwrap(), vec![0, 1]);
        let many = ShardsConfig {
            count: Some(5),
            cpus: None,
            ..ShardsConfig::default()
        };
        let e = plan_shards(&many, &allowed).unwrap_err().0;
        assert!(e.contains("lower --shards"), "{e}");
        let listed = ShardsConfig {
            count: None,
            cpus: Some("1,3".into()),
            ..ShardsConfig::default()
        };
        assert_eq!(plan_shards(&listed, &allowed).unwrap(), vec![1, 3]);
        let outside = ShardsConfig {
            count: None,
            cpus: Some("7".into()),
            ..ShardsConfig::default()
        };
        assert!(plan_shards(&outside, &allowed)
            .unwrap_err()
            .0
            .contains("CPU 7"));
    }

    #[test]
    fn reads_this_process_mask() {
        assert!(!affinity_cpus().unwrap().is_empty());
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(mut cpus in proptest::collection::vec(0usize..256, 1..40)) {
            cpus.sort_unstable();
            cpus.dedup();
            prop_assert_eq!(parse_cpu_list(&format_cpu_list(&cpus)).unwrap(), cpus);
        }
    }
}
