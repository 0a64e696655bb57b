//! Monitoring with a real Prometheus (Debian's `prometheus` package, which `.ci/run` installs):
//! it scrapes friday with 1 and 2 shards while clients send requests, the series read back
//! through its query API count what was sent, the rules in `deploy/prometheus` load and
//! evaluate, and every query of the Grafana dashboard in `deploy/grafana` runs; `promtool check
//! rules` passes on the rules. Skipped, saying why, without the tools.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/friday-rules.yml"
);

const DASHBOARD: &str = include_str!("../deploy/grafana/friday-dashboard.json");

/// Every PromQL expression of the Grafana dashboard, with its variables set as Grafana would
/// for "all models".
fn dashboard_queries() -> Vec<String> {
    let d: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .replace("$model", ".*")
                .replace("$__rate_interval", "1m")
        })
        .collect()
}

#[test]
fn the_dashboard_shows_what_an_operator_needs() {
    let all = dashboard_queries().join("\n");
    for needed in [
        "friday_requests_total{outcome=\"success\"",
        "histogram_quantile(0.99, sum by (model, le) (rate(friday_request_duration_seconds_bucket",
        "histogram_quantile(0.5, sum by (model, le) (rate(friday_request_duration_seconds_bucket",
        "friday_queue_depth",
        "friday_batch_size",
        "rejected|timeout",
        "sum by (model, shard)",
        "friday_connections_accepted_total",
        "friday_generate_tokens_total",
        "friday_cache_hits_total",
        "friday_cache_bytes",
    ] {
        assert!(all.contains(needed), "no panel shows {needed}");
    }
}

fn installed(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

#[test]
fn promtool_passes_the_rules() {
    if !installed("promtool") {
        println!("SKIPPED: promtool is not installed (Debian: apt-get install prometheus)");
        return;
    }
    let out = Command::new("promtool")
        .args(["check", "rules", RULES])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Prometheus scraping `target` every 100 ms with friday's rules, killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(tag: &str, target: std::net::SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("friday-prom-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 100ms\n  evaluation_interval: 100ms\n\
                 rule_files:\n  - {RULES}\n\
                 scrape_configs:\n  - job_name: friday\n    static_configs:\n      \
                 - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start prometheus");
        Prometheus { child, addr, dir }
    }

    /// `GET /api/v1/<path>` with `query` (URL-encoded by curl), as JSON.
    fn api(&self, path: &str, query: Option<&str>) -> Value {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-G", &format!("http://{}/api/v1/{path}", self.addr)]);
        if let Some(q) = query {
            cmd.args(["--data-urlencode", &format!("query={q}")]);
        }
        let out = cmd.output().expect("run curl");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// The value of a query whose answer is one sample, once it has one (waiting up to 30 s
    /// for `ok` to hold on it).
    fn value_once(&self, query: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = Value::Null;
        while Instant::now() < deadline {
            last = self.api("query", Some(query));
            let v = last["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok());
            if let Some(v) = v.filter(|&v| ok(v)) {
                return v;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("Prometheus never answered {query} as wanted; last answer: {last}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` identity requests on each of `connections` keep-alive connections.
fn traffic(server: &Server, connections: usize, n: usize) {
    let body = json!({"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32",
        "data": [1.0, 2.0, 3.0, 4.0]}]});
    for _ in 0..connections {
        let mut c = server.client();
        for _ in 0..n {
            assert_eq!(c.post_json("/v2/models/identity/infer", &body).status, 200);
        }
    }
}

#[test]
fn a_real_prometheus_scrapes_friday_and_reads_the_series_back() {
    if !installed("prometheus") || !installed("curl") {
        println!("SKIPPED: prometheus or curl is not installed (Debian: apt-get install prometheus curl)");
        return;
    }
    // identity answers repeats from the response cache, so its hit rate is a series too.
    let config = config_file(
        "monitoring-cache",
        "[models.identity]\nresponse_cache = true\n[cache]\nsize_bytes = 1048576\n",
    );
    for shards in [1, 2] {
        let s = Server::start_with(shards, &["--config", config.to_str().unwrap()]);
        let prom = Prometheus::start(&format!("{shards}"), s.addr);
        // Friday is up for Prometheus.
        prom.value_once("up{job=\"friday\"}", |v| v == 1.0);
        // Two bursts a few scrapes apart, so that rates have two samples to work from.
        traffic(&s, 3, 100);
        std::thread::sleep(Duration::from_millis(500));
        traffic(&s, 3, 100);
        let ok = prom.value_once(
            "sum(friday_requests_total{model=\"identity\",outcome=\"success\"})",
            |v| v >= 600.0,
        );
        assert_eq!(ok, 600.0, "Prometheus counts what was sent");
        // One series per shard.
        prom.value_once("count(friday_connections_accepted_total)", |v| {
            v == shards as f64
        });
        // The histograms give quantiles, and the recording rules evaluate over them.
        let p99 = prom.value_once(
            "histogram_quantile(0.99, sum by (le) (rate(friday_request_duration_seconds_bucket{model=\"identity\"}[1m])))",
            |v| v > 0.0,
        );
        assert!(p99 < 1.0, "p99 {p99} s");
        prom.value_once("friday:requests:rate1m{model=\"identity\"}", |v| v > 0.0);
        let reuse = prom.value_once("friday:requests_per_connection:rate5m", |v| v > 0.0);
        assert!(
            reuse > 1.0,
            "{reuse} requests per connection on keep-alive clients"
        );
        // Every request after each connection's first is a hit (the same body).
        let hit_rate = prom.value_once("friday:cache_hit_ratio:rate5m{model=\"identity\"}", |v| {
            v > 0.9
        });
        assert!(hit_rate <= 1.0, "{hit_rate}");
        // Every panel of the dashboard is a query Prometheus accepts.
        for query in dashboard_queries() {
            let r = prom.api("query", Some(&query));
            assert_eq!(r["status"], "success", "{query}: {r}");
        }
        // Every rule loaded and evaluates without error.
        let rules = prom.api("rules", None);
        let groups = rules["data"]["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut names: Vec<&str> = groups.iter().filter_map(|g| g["name"].as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["friday-alerts", "friday-recording"], "{rules}");
        for rule in groups.iter().flat_map(|g| g["rules"].as_array().unwrap()) {
            assert_eq!(rule["health"], "ok", "{rule}");
        }
    }
}
