//! The results of a run: what was asked, what came back, on which machine; as a table for the
//! terminal and as JSON for files, comparisons and plots.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::client::ThreadResult;

/// How a run was driven.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Server URL.
    pub url: String,
    /// Model name.
    pub model: String,
    /// What each request carries.
    pub workload: String,
    /// `open` or `closed`.
    pub mode: String,
    /// Open loop: requests per second asked for.
    pub rate: Option<f64>,
    /// Open loop: `constant` or `poisson`.
    pub arrival: Option<String>,
    /// Closed loop: requests in flight.
    pub concurrency: Option<usize>,
    /// Connections in all pools.
    pub connections: usize,
    /// Client threads.
    pub threads: usize,
    /// Measurement window, seconds.
    pub duration_s: f64,
    /// Warm-up before it, seconds.
    pub warmup_s: f64,
}

/// The machine the load generator ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// CPUs this process may use.
    pub cpus: usize,
    /// Kernel release.
    pub kernel: String,
    /// Host name.
    pub host: String,
}

impl Machine {
    /// Reads this machine's description.
    pub fn current() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Machine {
            cpu: read("/proc/cpuinfo")
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map_or("unknown".into(), |s| s.trim().to_string()),
            cpus: crate::topology::affinity_cpus().map_or(0, |c| c.len()),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            host: read("/proc/sys/kernel/hostname").trim().to_string(),
        }
    }
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Percentiles {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Reads them from a histogram of nanoseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        let us = |v: u64| v as f64 / 1000.0;
        Percentiles {
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// One run's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Name in tables and plot legends.
    pub label: String,
    /// How it was driven.
    pub config: RunConfig,
    /// Where it ran.
    pub machine: Machine,
    /// Successful responses in the window.
    pub ok: u64,
    /// Requests due in the window that were sent.
    pub sent: u64,
    /// Request failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// Connection events by kind (reconnects, idle closes, warm-up losses).
    #[serde(default)]
    pub connection_events: BTreeMap<String, u64>,
    /// Successful responses to requests due in the window, per second: `ok` over the window,
    /// counted like every other number here (by when each request was due).
    pub throughput: f64,
    /// Successful responses that completed inside the window, whenever they were due, per
    /// second: what the server delivered in the window. Apart from requests at the window's
    /// edges it equals `throughput`; under overload an open loop's backlog makes it larger.
    #[serde(default)]
    pub delivered: f64,
    /// Latency from the intended send time (corrected for coordinated omission), µs: of the
    /// successful requests, and of those never sent (due time to the end of the run).
    pub latency_us: Percentiles,
    /// Latency from the actual send time, µs.
    pub service_us: Percentiles,
    /// The percentile spectrum: (percentile 0..100, latency µs), for plots.
    pub spectrum: Vec<(f64, f64)>,
}

impl RunResult {
    /// Summarizes what the client threads measured (merged).
    pub fn new(label: String, config: RunConfig, measured: &ThreadResult) -> Self {
        let latency = &measured.latency;
        // The spectrum stops at the highest percentile the samples resolve (1 - 1/n), where
        // the maximum sits; beyond it a plot would only extend the maximum.
        let top = 100.0 * (1.0 - 1.0 / latency.len().max(1) as f64);
        let spectrum = if latency.is_empty() {
            Vec::new()
        } else {
            let mut points: Vec<(f64, f64)> = latency
                .iter_quantiles(5)
                .map(|v| {
                    (
                        (v.quantile_iterated_to() * 100.0).min(top),
                        v.value_iterated_to() as f64 / 1000.0,
                    )
                })
                .collect();
            points.dedup_by(|b, a| a.0 == b.0 && a.1 >= b.1);
            points
        };
        RunResult {
            label,
            throughput: measured.ok as f64 / config.duration_s.max(1e-9),
            delivered: measured.completed_in_window as f64 / config.duration_s.max(1e-9),
            config,
            machine: Machine::current(),
            ok: measured.ok,
            sent: measured.sent,
            errors: measured.errors.clone(),
            connection_events: measured.connection_events.clone(),
            latency_us: Percentiles::of(latency),
            service_us: Percentiles::of(&measured.service),
            spectrum,
        }
    }

    /// Failed requests.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The table a run prints.
    pub fn table(&self) -> String {
        let c = &self.config;
        let load = match (c.rate, c.concurrency) {
            (Some(r), _) => format!(
                "open loop at {r:.0} req/s ({})",
                c.arrival.as_deref().unwrap_or("constant")
            ),
            (None, Some(n)) => format!("closed loop, concurrency {n}"),
            _ => "?".into(),
        };
        let p = |x: &Percentiles| {
            format!(
                "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                fmt_us(x.p50),
                fmt_us(x.p90),
                fmt_us(x.p99),
                fmt_us(x.p999),
                fmt_us(x.max)
            )
        };
        let mut out = format!(
            "{}: {} on {}, {load}; {:.1} s after {:.1} s warm-up, {} thread(s), {} connection(s)\n",
            self.label, c.model, c.url, c.duration_s, c.warmup_s, c.threads, c.connections
        );
        out += &format!("  workload      {}\n", c.workload);
        out += &format!(
            "  requests      {} ok, {} errors ({} sent; {} due but never sent)\n",
            self.ok,
            self.error_count(),
            self.sent,
            self.errors.get("never_sent").copied().unwrap_or(0)
        );
        if self.ok == 0 {
            out += "  WARNING       no request due in the window succeeded\n";
        }
        out += &format!("  throughput    {:.1} req/s ok\n", self.throughput);
        // (A report written before `delivered` existed reads it as 0: say nothing then.)
        if self.delivered > 0.0
            && (self.delivered - self.throughput).abs() > 0.01 * self.throughput.max(1.0)
        {
            out += &format!(
                "  delivered     {:.1} req/s ok completed in the window, whenever due\n",
                self.delivered
            );
        }
        out += &format!(
            "  latency       {}   (from intended send; never sent: to the end)\n",
            p(&self.latency_us)
        );
        out += &format!(
            "  service time  {}   (from actual send)\n",
            p(&self.service_us)
        );
        let list = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.errors.is_empty() {
            out += &format!("  errors        {}\n", list(&self.errors));
        }
        if !self.connection_events.is_empty() {
            out += &format!("  connections   {}\n", list(&self.connection_events));
        }
        out
    }
}

/// `1234.5` µs as `1.23 ms`, `98.0` as `98 µs`.
pub fn fmt_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// A plain open-loop configuration for tests.
#[cfg(test)]
pub(crate) fn test_config() -> RunConfig {
    RunConfig {
        url: "http://127.0.0.1:8000".into(),
        model: "identity".into(),
        workload: "INPUT0 FP32 [1, 16]".into(),
        mode: "open".into(),
        rate: Some(1000.0),
        arrival: Some("poisson".into()),
        concurrency: None,
        connections: 8,
        threads: 1,
        duration_s: 2.0,
        warmup_s: 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_summarize_and_round_trip_through_json() {
        let mut m = ThreadResult::empty();
        for i in 1..=1000u64 {
            m.latency.record(i * 1000).unwrap();
            m.service.record(i * 1000).unwrap();
        }
        m.ok = 1000;
        m.completed_in_window = 1000;
        m.sent = 1003;
        m.errors.insert("http_429".to_string(), 3);
        let r = RunResult::new("a".into(), test_config(), &m);
        assert_eq!(r.throughput, 500.0);
        assert!(
            (r.latency_us.p50 - 500.0).abs() < 1.0,
            "{}",
            r.latency_us.p50
        );
        assert!((r.latency_us.p99 - 990.0).abs() < 2.0);
        assert_eq!(r.error_count(), 3);
        assert!(r.spectrum.len() > 10);
        assert!(r
            .spectrum
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        let back: RunResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        // JSON keeps floats to the last digit or so.
        assert_eq!(
            (back.ok, &back.errors, &back.config),
            (r.ok, &r.errors, &r.config)
        );
        assert_eq!(back.spectrum.len(), r.spectrum.len());
        for (a, b) in back.spectrum.iter().zip(&r.spectrum) {
            assert!((a.0 - b.0).abs() < 1e-9 && (a.1 - b.1).abs() < 1e-9);
        }
        let t = r.table();
        assert!(t.contains("http_429: 3"), "{t}");
        assert!(t.contains("open loop at 1000 req/s (poisson)"));
    }

    #[test]
    fn microseconds_read_well() {
        assert_eq!(fmt_us(98.4), "98 µs");
        assert_eq!(fmt_us(1234.5), "1.23 ms");
        assert_eq!(fmt_us(2_500_000.0), "2.50 s");
    }
}
