//! `friday bench`: an open-loop load generator for KServe v2 servers (friday, Triton, any other).
//!
//! | module | what it owns |
//! |---|---|
//! | [`schedule`] | open-loop arrival times (constant or Poisson) and the coordinated-omission correction |
//! | [`workload`] | the requests: built once from the model's metadata, random or perf_analyzer input data |
//! | [`client`] | one mio thread and its pool of keep-alive connections |
//! | [`report`] | results as a table and as JSON, with the machine they ran on |
//! | [`plot`] | the latency percentile spectrum as SVG |
//!
//! One client thread per `--cpus` entry, each pinned, each with its own connections; rate,
//! concurrency and connections are split among them. Open-loop latency counts from each request's
//! intended send time, so a slow server cannot make the load generator look away.

pub mod client;
pub mod plot;
pub mod report;
pub mod schedule;
pub mod workload;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::tensor::DataType;
use client::{Live, Mode, ThreadPlan, ThreadResult};
use report::{fmt_us, RunConfig, RunResult};
use schedule::Arrival;
use workload::{Encoding, Workload, WorkloadSpec};

/// Connections per open-loop run when `--connections` is not given.
pub const DEFAULT_OPEN_LOOP_CONNECTIONS: usize = 64;
/// Highest open-loop rate accepted, requests per second.
pub const MAX_RATE: f64 = 10_000_000.0;
/// Pause between the threads starting and the warm-up starting, so all begin together.
const START_DELAY: Duration = Duration::from_millis(50);

/// `friday bench` flags.
#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// Server to load, e.g. http://127.0.0.1:8000 (not needed with --compare)
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Model to infer with [default: identity]
    #[arg(long, default_value = "identity")]
    pub model: String,
    /// Plain HTTP instead of inference: GET this path (e.g. /v2/health/ready), so the same
    /// client can calibrate against any HTTP server (nginx) in the same run
    #[arg(long, value_name = "PATH", conflicts_with_all = ["shapes", "input_data", "model_version", "datatype"])]
    pub http_get: Option<String>,
    /// Model version to put in the URL [default: none, the server's choice]
    #[arg(long, value_name = "V")]
    pub model_version: Option<String>,
    /// Input shape without the batch dimension, NAME:d1,d2 (repeat per input) [default: from the model's metadata]
    #[arg(long = "shape", value_name = "NAME:D1,D2")]
    pub shapes: Vec<String>,
    /// Batch size of each request, for models with a batch dimension [default: 1]
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Expected datatype of the inputs (checked against the metadata), e.g. FP32 [default: from the metadata]
    #[arg(long, value_name = "TYPE")]
    pub datatype: Option<String>,
    /// Input data in perf_analyzer's JSON format [default: random data]
    #[arg(long, value_name = "FILE")]
    pub input_data: Option<PathBuf>,
    /// Tensor encoding in the request body [default: binary]
    #[arg(long, value_enum, default_value_t = Encoding::Binary)]
    pub encoding: Encoding,
    /// Open loop: requests per second [default: closed loop]
    #[arg(long, value_name = "R", conflicts_with_all = ["concurrency", "sweep"])]
    pub rate: Option<f64>,
    /// Open loop: how arrivals are spaced [default: poisson]
    #[arg(long, value_enum, default_value_t = Arrival::Poisson)]
    pub arrival: Arrival,
    /// Closed loop: requests in flight [default: 1 when --rate is not given]
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Open loop: connections in the pools [default: 64]
    #[arg(long, value_name = "N")]
    pub connections: Option<usize>,
    /// Measurement window, e.g. 10s, 500ms [default: 10s]
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up before the window, not measured [default: 2s]
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// CPUs for the client threads, one thread each, e.g. 1 or 2-3 [default: one unpinned thread]
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,
    /// Write the full results (and the machine) as JSON
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the latency percentile spectrum as SVG (one curve per run)
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Plot and print earlier --json results instead of running
    #[arg(long, value_name = "JSON", num_args = 1..)]
    pub compare: Vec<PathBuf>,
    /// Name of this run in tables and legends [default: the load, e.g. "2000 req/s"]
    #[arg(long)]
    pub label: Option<String>,
    /// Run once per value: open-loop rates (e.g. 1000,2000,4000 or 1000:8000:1000), or concurrencies with --concurrency
    #[arg(long, value_name = "LIST")]
    pub sweep: Option<String>,
    /// With --sweep: report the highest value whose p99 stays under this latency, e.g. 1ms
    #[arg(long, value_parser = parse_duration)]
    pub slo: Option<Duration>,
    /// A request without an answer after this long fails with `timeout` [default: 10s]
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Seed for random data and Poisson arrivals [default: 1]
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// No live progress line
    #[arg(long)]
    pub quiet: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (write e.g. 10s, 500ms)"))
}

/// Parses a sweep: `a,b,c` or `start:end:step`.
pub fn parse_sweep(s: &str) -> Result<Vec<f64>, String> {
    let bad =
        || format!("--sweep {s}: write a list (1000,2000) or start:end:step (1000:8000:1000)");
    let parts: Vec<&str> = s.split(':').collect();
    let values = match parts.as_slice() {
        [list] => list
            .split(',')
            .map(|v| v.trim().parse::<f64>().map_err(|_| bad()))
            .collect::<Result<Vec<_>, _>>()?,
        [a, b, step] => {
            let (a, b, step): (f64, f64, f64) = (
                a.parse().map_err(|_| bad())?,
                b.parse().map_err(|_| bad())?,
                step.parse().map_err(|_| bad())?,
            );
            if step <= 0.0 || b < a || (b - a) / step > 1000.0 {
                return Err(bad());
            }
            let mut v = Vec::new();
            let mut x = a;
            while x <= b + 1e-9 {
                v.push(x);
                x += step;
            }
            v
        }
        _ => return Err(bad()),
    };
    if values.is_empty()
        || values
            .iter()
            .any(|v| v.is_nan() || *v <= 0.0 || !v.is_finite())
    {
        return Err(bad());
    }
    Ok(values)
}

/// `http://host:port[/…]` → (address, host header).
fn resolve(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url {url}: only http:// URLs are supported"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let with_port = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("--url {url}: {e}"))?
        .next()
        .ok_or_else(|| format!("--url {url}: no address"))?;
    Ok((addr, hostport.to_string()))
}

/// The load of one run.
#[derive(Debug, Clone, Copy)]
enum Load {
    Rate(f64),
    Concurrency(usize),
}

/// Runs `friday bench`.
pub fn main(args: &BenchArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("friday bench: {e}");
            ExitCode::from(2)
        }
    }
}

/// What `--model`, `--shape` and the other inference flags ask for.
fn workload_spec(args: &BenchArgs) -> Result<WorkloadSpec, String> {
    Ok(WorkloadSpec {
        model: args.model.clone(),
        version: args.model_version.clone(),
        shapes: args
            .shapes
            .iter()
            .map(|s| workload::parse_shape(s))
            .collect::<Result<_, _>>()?,
        batch_size: args.batch_size.max(1),
        datatype: match &args.datatype {
            Some(d) => Some(
                DataType::from_name(&d.to_uppercase())
                    .ok_or_else(|| format!("--datatype {d}: unknown"))?,
            ),
            None => None,
        },
        input_data: match &args.input_data {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| format!("--input-data {}: {e}", p.display()))
                    .and_then(|t| {
                        serde_json::from_str(&t)
                            .map_err(|e| format!("--input-data {}: {e}", p.display()))
                    })?,
            ),
            None => None,
        },
        encoding: args.encoding,
        seed: args.seed,
    })
}

fn run(args: &BenchArgs) -> Result<(), String> {
    if !args.compare.is_empty() {
        return compare(args);
    }
    let url = args
        .url
        .as_deref()
        .ok_or("--url is required (or --compare files)")?;
    let (addr, host) = resolve(url)?;
    let workload = match &args.http_get {
        Some(path) => workload::http_get(path, &host)?,
        None => workload::prepare(&workload_spec(args)?, addr, &host)?,
    };
    let cpus = match &args.cpus {
        Some(list) => crate::topology::parse_cpu_list(list).map_err(|e| format!("--cpus: {e}"))?,
        None => Vec::new(),
    };
    let loads: Vec<Load> = match (&args.sweep, args.rate) {
        (Some(s), _) if args.concurrency.is_some() => parse_sweep(s)?
            .into_iter()
            .map(|c| Load::Concurrency(c.round().max(1.0) as usize))
            .collect(),
        (Some(s), _) => parse_sweep(s)?.into_iter().map(Load::Rate).collect(),
        (None, Some(r)) => vec![Load::Rate(r)],
        (None, None) => vec![Load::Concurrency(args.concurrency.unwrap_or(1).max(1))],
    };
    if let Some(bad) = loads.iter().find_map(|l| match l {
        Load::Rate(r) if !(r.is_finite() && *r > 0.0 && *r <= MAX_RATE) => Some(*r),
        _ => None,
    }) {
        return Err(format!(
            "rate {bad}: must be above 0 and at most {MAX_RATE} req/s"
        ));
    }
    let sweeping = args.sweep.is_some();
    let mut results = Vec::new();
    for load in loads {
        let r = run_once(args, url, addr, &workload, &cpus, load)?;
        if sweeping {
            println!("{}", sweep_line(&r, args.slo));
        } else {
            print!("{}", r.table());
        }
        results.push(r);
    }
    if let (true, Some(slo)) = (sweeping, args.slo) {
        let slo_us = slo.as_secs_f64() * 1e6;
        let (knee, later) = knee(&results, slo_us);
        match knee {
            Some(best) => println!(
                "highest load with p99 under {} before the first miss: {} ({:.0} req/s, p99 {})",
                fmt_us(slo_us),
                best.label,
                best.throughput,
                fmt_us(best.latency_us.p99)
            ),
            None => println!(
                "the first load already missed the SLO (p99 under {}, no errors)",
                fmt_us(slo_us)
            ),
        }
        if !later.is_empty() {
            let labels: Vec<&str> = later.iter().map(|r| r.label.as_str()).collect();
            println!(
                "  later steps within the SLO after a miss (noise near the knee; repeat there): {}",
                labels.join(", ")
            );
        }
    }
    if let Some(path) = &args.json {
        let text = if results.len() == 1 && !sweeping {
            serde_json::to_string_pretty(&results[0])
        } else {
            serde_json::to_string_pretty(&results)
        }
        .expect("results serialize");
        std::fs::write(path, text).map_err(|e| format!("--json {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let title = format!("{}: latency by percentile", args.model);
        std::fs::write(path, plot::render(&results, &title))
            .map_err(|e| format!("--plot {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Whether a run met the SLO: something succeeded, nothing failed, p99 within it.
fn within_slo(r: &RunResult, slo_us: f64) -> bool {
    r.ok > 0 && r.error_count() == 0 && r.latency_us.p99 <= slo_us
}

/// The knee of a sweep, in the order it ran: the last step of the leading run of steps within the
/// SLO, and the steps that met it again after the first miss (a sweep that dips back under the
/// SLO past the knee is noise, not capacity).
fn knee(results: &[RunResult], slo_us: f64) -> (Option<&RunResult>, Vec<&RunResult>) {
    let leading = results.iter().take_while(|r| within_slo(r, slo_us)).count();
    let later = results[leading..]
        .iter()
        .filter(|r| within_slo(r, slo_us))
        .collect();
    (leading.checked_sub(1).map(|i| &results[i]), later)
}

fn sweep_line(r: &RunResult, slo: Option<Duration>) -> String {
    let verdict = match slo {
        Some(slo) if within_slo(r, slo.as_secs_f64() * 1e6) => "  within SLO",
        Some(_) => "  over SLO",
        None => "",
    };
    format!(
        "{:>14}  {:>10.1} req/s  p50 {:>9}  p99 {:>9}  p99.9 {:>9}  errors {}{verdict}",
        r.label,
        r.throughput,
        fmt_us(r.latency_us.p50),
        fmt_us(r.latency_us.p99),
        fmt_us(r.latency_us.p999),
        r.error_count()
    )
}

fn run_once(
    args: &BenchArgs,
    url: &str,
    addr: SocketAddr,
    workload: &Workload,
    cpus: &[usize],
    load: Load,
) -> Result<RunResult, String> {
    // A closed loop never runs more threads than requests in flight.
    let threads = match load {
        Load::Rate(_) => cpus.len().max(1),
        Load::Concurrency(n) => cpus.len().max(1).min(n),
    };
    let connections = match load {
        Load::Rate(_) => args
            .connections
            .unwrap_or(DEFAULT_OPEN_LOOP_CONNECTIONS)
            .max(threads),
        Load::Concurrency(n) => n,
    };
    let start = Instant::now() + START_DELAY;
    let too_long = || {
        format!(
            "--warmup {:?} plus --duration {:?} is too long",
            args.warmup, args.duration
        )
    };
    let measure_from = start.checked_add(args.warmup).ok_or_else(too_long)?;
    let end = measure_from
        .checked_add(args.duration)
        .ok_or_else(too_long)?;
    let requests = Arc::new(workload.requests.clone());
    let (tx, rx) = crossbeam::channel::bounded::<(usize, Live)>(threads * 4);
    let share = |total: usize, i: usize| total / threads + usize::from(i < total % threads);
    let mut handles = Vec::new();
    for i in 0..threads {
        let mode = match load {
            Load::Rate(r) => Mode::Open {
                rate: r / threads as f64,
                arrival: args.arrival,
                // Interleave the threads' schedules: thread i starts i/rate later.
                start: start + Duration::from_secs_f64(i as f64 / r),
            },
            Load::Concurrency(_) => Mode::Closed,
        };
        let plan = ThreadPlan {
            addr,
            requests: requests.clone(),
            mode,
            connections: share(connections, i).max(1),
            measure_from,
            end,
            request_timeout: args.timeout,
            seed: args.seed.wrapping_add(i as u64),
        };
        let cpu = cpus.get(i).copied();
        let progress = (!args.quiet).then(|| client::Progress {
            thread: i,
            tx: tx.clone(),
        });
        handles.push(std::thread::spawn(move || {
            if let Some(cpu) = cpu {
                crate::topology::pin_current_thread(cpu);
            }
            std::thread::sleep(start.saturating_duration_since(Instant::now()));
            client::run(plan, progress)
        }));
    }
    drop(tx);
    let label = args
        .label
        .clone()
        .filter(|_| args.sweep.is_none())
        .unwrap_or(match load {
            Load::Rate(r) => format!("{r:.0} req/s"),
            Load::Concurrency(n) => format!("concurrency {n}"),
        });
    // Live progress while the threads run (counts include the warm-up; percentiles are the
    // worst thread's, of the measured requests).
    let mut latest: Vec<Live> = vec![Live::default(); threads];
    let mut last = (Instant::now(), 0u64);
    while let Ok((i, live)) = rx.recv() {
        latest[i] = live;
        if last.0.elapsed() < Duration::from_millis(900) {
            continue;
        }
        let ok: u64 = latest.iter().map(|l| l.ok).sum();
        let errors: u64 = latest.iter().map(|l| l.errors).sum();
        let p50 = latest.iter().map(|l| l.p50_us).fold(0.0, f64::max);
        let p99 = latest.iter().map(|l| l.p99_us).fold(0.0, f64::max);
        let now = Instant::now();
        let rate = ok.saturating_sub(last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, ok);
        let phase = if now < measure_from {
            "warm-up"
        } else {
            "measuring"
        };
        eprint!(
            "\r{label} {phase}: {ok} ok, {errors} errors, {rate:.0} req/s, p50 {}, p99 {}     ",
            fmt_us(p50),
            fmt_us(p99)
        );
    }
    if !args.quiet {
        eprint!("\r{:100}\r", "");
    }
    let mut merged = ThreadResult::empty();
    for h in handles {
        match h.join() {
            Ok(r) => merged.merge(&r),
            Err(_) => {
                *merged
                    .errors
                    .entry("client_thread_panicked".into())
                    .or_default() += 1
            }
        }
    }
    let config = RunConfig {
        url: url.to_string(),
        model: args.model.clone(),
        workload: workload.description.clone(),
        mode: match load {
            Load::Rate(_) => "open",
            Load::Concurrency(_) => "closed",
        }
        .into(),
        rate: match load {
            Load::Rate(r) => Some(r),
            Load::Concurrency(_) => None,
        },
        arrival: match load {
            Load::Rate(_) => Some(format!("{:?}", args.arrival).to_lowercase()),
            Load::Concurrency(_) => None,
        },
        concurrency: match load {
            Load::Concurrency(n) => Some(n),
            Load::Rate(_) => None,
        },
        connections,
        threads,
        duration_s: args.duration.as_secs_f64(),
        warmup_s: args.warmup.as_secs_f64(),
    };
    Ok(RunResult::new(label, config, &merged))
}

fn compare(args: &BenchArgs) -> Result<(), String> {
    let mut runs = Vec::new();
    for path in &args.compare {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--compare {}: {e}", path.display()))?;
        match serde_json::from_str::<RunResult>(&text) {
            Ok(r) => runs.push(r),
            Err(_) => runs.extend(serde_json::from_str::<Vec<RunResult>>(&text).map_err(|e| {
                format!("--compare {}: not friday bench JSON ({e})", path.display())
            })?),
        }
    }
    for r in &runs {
        print!("{}", r.table());
    }
    let path = args
        .plot
        .as_ref()
        .ok_or("--compare needs --plot FILE.svg")?;
    let models: Vec<&str> = runs.iter().map(|r| r.config.model.as_str()).collect();
    let title = format!(
        "{}: latency by percentile",
        models.first().copied().unwrap_or("")
    );
    std::fs::write(path, plot::render(&runs, &title))
        .map_err(|e| format!("--plot {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_parse() {
        assert_eq!(parse_sweep("1000,2000").unwrap(), vec![1000.0, 2000.0]);
        assert_eq!(parse_sweep("1:4:1").unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert!(parse_sweep("1:4:0").is_err());
        assert!(parse_sweep("a").is_err());
        assert!(parse_sweep("0,1").is_err());
        assert!(parse_sweep("1:1000000:1").is_err());
    }

    #[test]
    fn the_knee_is_the_last_step_before_the_first_miss() {
        let step = |label: &str, p99: f64, errors: u64| {
            let mut r = RunResult::new(label.into(), report::test_config(), &ThreadResult::empty());
            r.ok = 100;
            r.latency_us.p99 = p99;
            if errors > 0 {
                r.errors.insert("http_429".into(), errors);
            }
            r
        };
        let sweep = [
            step("10k", 200.0, 0),
            step("20k", 400.0, 0),
            step("30k", 1200.0, 0),
            step("40k", 900.0, 0),
            step("50k", 800.0, 3),
        ];
        let (found, later) = knee(&sweep, 1000.0);
        assert_eq!(found.unwrap().label, "20k");
        let later: Vec<&str> = later.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(later, ["40k"]);
        let (none, later) = knee(&sweep[2..], 1000.0);
        assert!(none.is_none());
        assert_eq!(later.len(), 1);
        let mut empty = step("0", 1.0, 0);
        empty.ok = 0;
        assert!(knee(&[empty], 1000.0).0.is_none());
    }

    #[test]
    fn urls_resolve() {
        let (addr, host) = resolve("http://127.0.0.1:8123/v2").unwrap();
        assert_eq!(addr.port(), 8123);
        assert_eq!(host, "127.0.0.1:8123");
        assert!(resolve("https://x").is_err());
        assert_eq!(resolve("http://127.0.0.1").unwrap().0.port(), 80);
    }
}
