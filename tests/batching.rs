//! The request batcher end to end: batches form under concurrency with correct per-request
//! outputs, a burst beyond `max_queue_size` gets 429s while every admitted request succeeds,
//! queue deadlines fire on time, priorities order the queue, a request whose client left is
//! dropped before it runs, and `/metrics` (parsed by Prometheus's own parser) counts it all.
//! Tests that need the shard to stay responsive while a long batch runs place the model on a
//! worker: an inline batch holds the reactor for its whole duration, by design.

mod common;

use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn synthetic_body(values: &[f32], params: Value) -> Value {
    json!({"parameters": params, "inputs":[{"name":"INPUT0","shape":[1, values.len()],"datatype":"FP32","data":values}]})
}

fn server_with(shards: usize, name: &str, toml: &str) -> Server {
    let cfg = config_file(name, toml);
    Server::start_with(shards, &["--config", cfg.to_str().unwrap()])
}

/// What one request of a burst got back.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
    took: Duration,
    retry_after: bool,
}

/// Sends `body` to synthetic from `n` threads at once.
fn burst(server: &Server, n: usize, body: impl Fn(usize) -> Value + Sync) -> Vec<Answer> {
    let barrier = Barrier::new(n);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for i in 0..n {
            let (barrier, results, body) = (&barrier, &results, &body);
            s.spawn(move || {
                let mut c = server.client();
                let b = body(i);
                barrier.wait();
                let started = Instant::now();
                let r = c.post_json("/v2/models/synthetic/infer", &b);
                let took = started.elapsed();
                results.lock().unwrap().push(Answer {
                    status: r.status,
                    body: r.json(),
                    took,
                    retry_after: r.header("retry-after").is_some(),
                });
            });
        }
    });
    results.into_inner().unwrap()
}

#[test]
fn concurrent_requests_form_batches_with_correct_outputs() {
    for (shards, placement) in [(1, "worker"), (1, "inline"), (2, "worker")] {
        let s = server_with(
            shards,
            &format!("batch-{shards}-{placement}"),
            &format!(
                "[models.synthetic]\nplacement = \"{placement}\"\ncost_per_batch_us = 3000\ncost_per_item_us = 10\nmax_batch_size = 16\n\
                 [models.synthetic.dynamic_batching]\nmax_queue_delay_microseconds = 5000\n"
            ),
        );
        let results = burst(&s, 24, |i| {
            synthetic_body(&[i as f32, 0.5, -(i as f32)], json!({}))
        });
        assert_eq!(results.len(), 24);
        let mut seen = Vec::new();
        for a in &results {
            assert_eq!(a.status, 200, "{}", a.body);
            let data: Vec<f64> = a.body["outputs"][0]["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            // OUTPUT0 = 2 × INPUT0, row by row: each request gets its own rows back.
            assert_eq!(data[1], 1.0);
            assert_eq!(data[2], -data[0]);
            seen.push(data[0] as i64 / 2);
        }
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..24).collect::<Vec<_>>(),
            "every request got its own outputs"
        );

        let m = scrape(&s);
        let l = [("model", "synthetic")];
        let batches = sample(&m, "friday_batch_size_count", &l);
        let items = sample(&m, "friday_batch_size_sum", &l);
        let singles = sample(
            &m,
            "friday_batch_size_bucket",
            &[("model", "synthetic"), ("le", "1")],
        );
        assert_eq!(items, 24.0);
        assert!(
            batches < 24.0,
            "{placement}, {shards} shard(s): {batches} batches for 24 requests"
        );
        assert!(singles < batches, "some batch held more than one request");
        assert_eq!(
            sample(
                &m,
                "friday_requests_total",
                &[("model", "synthetic"), ("outcome", "success")]
            ),
            24.0
        );
        let stats = s.client().get("/v2/models/synthetic/stats").json();
        let st = &stats["model_stats"][0];
        assert_eq!(st["inference_count"], 24);
        assert_eq!(st["execution_count"].as_f64().unwrap(), batches);
    }
}

#[test]
fn a_costly_inline_model_batches_a_burst_even_without_queue_delay() {
    // With no queue delay, an idle inline model runs a lone request at once (the fast path);
    // once it has seen that its batches are costly, requests arriving together share a batch
    // instead of running one by one, each holding the shard for a whole model run.
    let s = server_with(
        1,
        "inline-costly",
        "[models.synthetic]\nplacement = \"inline\"\ncost_per_batch_us = 3000\nmax_batch_size = 16\n",
    );
    let first = s.client().post_json(
        "/v2/models/synthetic/infer",
        &synthetic_body(&[1.0], json!({})),
    );
    assert_eq!(first.status, 200, "{}", first.error());
    let results = burst(&s, 24, |i| synthetic_body(&[i as f32], json!({})));
    assert!(results.iter().all(|a| a.status == 200), "{results:?}");
    let m = scrape(&s);
    let batches = sample(&m, "friday_batch_size_count", &[("model", "synthetic")]);
    assert!(
        batches <= 13.0,
        "{batches} batches for 25 requests: the burst ran one by one"
    );
}

#[test]
fn a_burst_beyond_max_queue_size_gets_429_and_every_admitted_request_succeeds() {
    let s = server_with(1, "burst", &slow_synthetic(100000, "max_queue_size = 4"));
    let results = burst(&s, 16, |i| synthetic_body(&[i as f32], json!({})));
    let ok: Vec<_> = results.iter().filter(|r| r.status == 200).collect();
    let rejected: Vec<_> = results.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        ok.len() + rejected.len(),
        16,
        "only 200s and 429s: {results:?}"
    );
    assert!(
        ok.len() >= 4,
        "at least max_queue_size requests are admitted"
    );
    assert!(!rejected.is_empty(), "some are refused");
    for a in &rejected {
        assert!(
            a.body["error"].as_str().unwrap().contains("max_queue_size"),
            "{}",
            a.body
        );
        assert!(a.retry_after, "429 carries Retry-After");
        // One batch takes 100 ms: a refusal that waited for the queue would take at least that.
        assert!(
            a.took < Duration::from_millis(50),
            "a 429 comes at once, not after a wait: {:?}",
            a.took
        );
    }
    let mut inputs: Vec<i64> = ok
        .iter()
        .map(|a| a.body["outputs"][0]["data"][0].as_f64().unwrap() as i64 / 2)
        .collect();
    inputs.sort_unstable();
    inputs.dedup();
    assert_eq!(
        inputs.len(),
        ok.len(),
        "each admitted request got its own answer"
    );
    let m = scrape(&s);
    let l = |o: &'static str| [("model", "synthetic"), ("outcome", o)];
    assert_eq!(
        sample(&m, "friday_requests_total", &l("rejected")),
        rejected.len() as f64
    );
    assert_eq!(
        sample(&m, "friday_requests_total", &l("success")),
        ok.len() as f64
    );
}

#[test]
fn a_request_times_out_in_the_queue_near_its_deadline() {
    let s = server_with(
        1,
        "deadline",
        &slow_synthetic(300000, "default_timeout_microseconds = 40000"),
    );
    // The first request occupies the model for 300 ms.
    let blocker = std::thread::scope(|scope| {
        let h = scope.spawn(|| {
            s.client().post_json(
                "/v2/models/synthetic/infer",
                &synthetic_body(&[1.0], json!({"timeout": 10_000_000})),
            )
        });
        std::thread::sleep(Duration::from_millis(50));
        // Its own 20 ms timeout: fails at about 20 ms, not when the model frees up.
        let started = Instant::now();
        let r = s.client().post_json(
            "/v2/models/synthetic/infer",
            &synthetic_body(&[2.0], json!({"timeout": 20_000})),
        );
        let took = started.elapsed();
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
        assert!(r.error().contains("timed out"), "{}", r.error());
        assert!(
            took >= Duration::from_millis(18),
            "failed before its deadline: {took:?}"
        );
        assert!(
            took < Duration::from_millis(150),
            "failed late (the model frees up at ~250 ms): {took:?}"
        );
        // The model's default_timeout_microseconds (40 ms) applies without a parameter.
        let started = Instant::now();
        let r = s.client().post_json(
            "/v2/models/synthetic/infer",
            &synthetic_body(&[3.0], json!({})),
        );
        let took = started.elapsed();
        assert_eq!(r.status, 503);
        assert!(
            took >= Duration::from_millis(38) && took < Duration::from_millis(200),
            "{took:?}"
        );
        h.join().unwrap()
    });
    assert_eq!(blocker.status, 200);
    let m = scrape(&s);
    assert_eq!(
        sample(
            &m,
            "friday_requests_total",
            &[("model", "synthetic"), ("outcome", "timeout")]
        ),
        2.0
    );
}

#[test]
fn higher_priority_requests_run_first() {
    let s = server_with(
        1,
        "priority",
        &slow_synthetic(60000, "priority_levels = 2\ndefault_priority_level = 2"),
    );
    let order = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        let send = |name: &'static str, priority: u64, delay_ms: u64| {
            let order = order.clone();
            let s = &s;
            scope.spawn(move || {
                std::thread::sleep(Duration::from_millis(delay_ms));
                let r = s.client().post_json(
                    "/v2/models/synthetic/infer",
                    &synthetic_body(&[1.0], json!({"priority": priority})),
                );
                assert_eq!(r.status, 200);
                order.lock().unwrap().push(name);
            });
        };
        send("blocker", 0, 0);
        send("low", 2, 15);
        send("high", 1, 30);
    });
    assert_eq!(*order.lock().unwrap(), vec!["blocker", "high", "low"]);
    // As in Triton, a priority outside 1..=priority_levels means the default level.
    let r = s.client().post_json(
        "/v2/models/synthetic/infer",
        &synthetic_body(&[1.0], json!({"priority": 3})),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn a_request_whose_client_left_is_dropped_before_it_runs() {
    let s = server_with(1, "gone", &slow_synthetic(200000, ""));
    std::thread::scope(|scope| {
        let h = scope.spawn(|| {
            s.client().post_json(
                "/v2/models/synthetic/infer",
                &synthetic_body(&[1.0], json!({})),
            )
        });
        std::thread::sleep(Duration::from_millis(30));
        // Queued behind the blocker, then the client hangs up.
        let mut quitter = s.client();
        quitter.send(&request_bytes(
            "POST",
            "/v2/models/synthetic/infer",
            &[],
            synthetic_body(&[2.0], json!({})).to_string().as_bytes(),
        ));
        std::thread::sleep(Duration::from_millis(30));
        drop(quitter);
        assert_eq!(h.join().unwrap().status, 200);
    });
    std::thread::sleep(Duration::from_millis(100));
    let m = scrape(&s);
    let l = [("model", "synthetic")];
    assert_eq!(
        sample(
            &m,
            "friday_requests_total",
            &[("model", "synthetic"), ("outcome", "cancelled")]
        ),
        1.0
    );
    assert_eq!(
        sample(&m, "friday_batch_size_count", &l),
        1.0,
        "the abandoned request never ran"
    );
}

#[test]
fn metrics_parse_and_count_what_was_sent() {
    for shards in [1, 2] {
        let s = Server::start(shards);
        for i in 0..30 {
            let mut c = s.client();
            let r = c.post_json(
                "/v2/models/identity/infer",
                &json!({"inputs":[{"name":"INPUT0","shape":[1,2],"datatype":"FP32","data":[i, i]}]}),
            );
            assert_eq!(r.status, 200);
        }
        for _ in 0..3 {
            let r = s.client().post_json(
                "/v2/models/identity/infer",
                &json!({"inputs":[{"name":"INPUT0","shape":[1,2],"datatype":"INT32","data":[1, 2]}]}),
            );
            assert_eq!(r.status, 400);
        }
        let m = scrape(&s);
        let id = [("model", "identity")];
        let outcome = |o: &'static str| {
            sample(
                &m,
                "friday_requests_total",
                &[("model", "identity"), ("outcome", o)],
            )
        };
        assert_eq!(outcome("success"), 30.0);
        assert_eq!(outcome("failure"), 3.0);
        assert_eq!(outcome("rejected"), 0.0);
        assert_eq!(
            sample(&m, "friday_request_duration_seconds_count", &id),
            30.0
        );
        assert_eq!(sample(&m, "friday_queue_duration_seconds_count", &id), 30.0);
        assert_eq!(sample(&m, "friday_batch_size_sum", &id), 30.0);
        let inf = sample(
            &m,
            "friday_request_duration_seconds_bucket",
            &[("model", "identity"), ("le", "+Inf")],
        );
        assert_eq!(inf, 30.0);
        let sum = sample(&m, "friday_request_duration_seconds_sum", &id);
        assert!(sum > 0.0 && sum < 30.0, "{sum}");
        // Buckets are cumulative.
        let mut last = 0.0;
        for b in m.iter().filter(|x| {
            x.name == "friday_request_duration_seconds_bucket"
                && x.labels.get("model").and_then(|v| v.as_str()) == Some("identity")
        }) {
            assert!(b.value >= last);
            last = b.value;
        }
        // Per-shard gauges: one row per shard.
        let shards_seen = m
            .iter()
            .filter(|x| x.name == "friday_connections_open")
            .count();
        assert_eq!(shards_seen, shards);
        assert!(sample(&m, "friday_connections_accepted_total", &[("shard", "0")]) >= 1.0);
    }
}

#[test]
fn max_queue_size_bounds_waiting_requests_not_running_ones() {
    let s = server_with(
        1,
        "queue-bound",
        &slow_synthetic(300000, "max_queue_size = 2"),
    );
    std::thread::scope(|scope| {
        let send = |delay_ms: u64| {
            let s = &s;
            scope.spawn(move || {
                std::thread::sleep(Duration::from_millis(delay_ms));
                s.client()
                    .post_json(
                        "/v2/models/synthetic/infer",
                        &synthetic_body(&[1.0], json!({})),
                    )
                    .status
            })
        };
        // One runs, two wait: all three are admitted; the fourth finds the queue full.
        let running = send(0);
        let waiting = [send(40), send(60)];
        let refused = send(120);
        assert_eq!(refused.join().unwrap(), 429);
        assert_eq!(running.join().unwrap(), 200);
        for w in waiting {
            assert_eq!(w.join().unwrap(), 200);
        }
    });
}

#[test]
fn pipelined_responses_do_not_wait_for_a_later_batch() {
    let s = server_with(
        1,
        "pipeline",
        "[models.synthetic]\nplacement = \"worker\"\ncost_per_batch_us = 300000\ncost_per_item_us = 0\n",
    );
    let mut c = s.client();
    let mut burst = request_bytes(
        "POST",
        "/v2/models/identity/infer",
        &[],
        json!({"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[7]}]})
            .to_string()
            .as_bytes(),
    );
    burst.extend(request_bytes(
        "POST",
        "/v2/models/synthetic/infer",
        &[],
        synthetic_body(&[1.0], json!({})).to_string().as_bytes(),
    ));
    let started = Instant::now();
    c.send(&burst);
    let first = c.read_response();
    let first_at = started.elapsed();
    let second = c.read_response();
    let second_at = started.elapsed();
    assert_eq!(first.json()["model_name"], "identity");
    assert_eq!(second.json()["model_name"], "synthetic");
    assert!(
        first_at < Duration::from_millis(150),
        "the identity answer waited for synthetic: {first_at:?}"
    );
    assert!(second_at >= Duration::from_millis(290), "{second_at:?}");
}
