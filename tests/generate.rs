//! The response streamer end to end: Triton's generate extension on the built-in `tinylm`,
//! `generate_stream` as server-sent events in chunked coding, continuous batching across
//! concurrent streams, backpressure from slow readers, and cancellation when a client leaves.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const STREAM: &str = "/v2/models/tinylm/generate_stream";
const GENERATE: &str = "/v2/models/tinylm/generate";

fn each_shard_count(test: impl Fn(&Server)) {
    for shards in [1, 2] {
        let server = Server::start(shards);
        test(&server);
    }
}

/// Starts a stream on `c` and checks its head.
fn start_stream(c: &mut Client, body: &Value) {
    c.send(&request_bytes(
        "POST",
        STREAM,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    ));
    let (status, headers) = c.read_head();
    let header = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(status, 200, "{headers:?}");
    assert_eq!(header("content-type").as_deref(), Some("text/event-stream"));
    assert_eq!(header("transfer-encoding").as_deref(), Some("chunked"));
}

/// Reads a stream to its end: every event, in order.
fn read_stream(c: &mut Client) -> Vec<Value> {
    let mut events = Vec::new();
    while let Some(batch) = c.read_events() {
        events.extend(batch);
    }
    events
}

/// The text of a stream's events and its last event's `finish_reason`; checks that only the
/// last event has one.
fn text_of(events: &[Value]) -> (String, String) {
    let (last, rest) = events.split_last().expect("a stream has events");
    for e in rest {
        assert!(e.get("finish_reason").is_none(), "{e}");
        assert_eq!(e["model_name"], "tinylm");
        assert_eq!(e["model_version"], "1");
    }
    let text = events
        .iter()
        .map(|e| e["text_output"].as_str().unwrap_or_else(|| panic!("{e}")))
        .collect();
    (
        text,
        last["finish_reason"].as_str().unwrap_or("").to_string(),
    )
}

/// Sums a per-shard gauge of tinylm.
fn tinylm_total(server: &Server, name: &str) -> f64 {
    scrape(server)
        .iter()
        .filter(|s| {
            s.name == name && s.labels.get("model").and_then(Value::as_str) == Some("tinylm")
        })
        .map(|s| s.value)
        .sum()
}

#[test]
fn generate_and_generate_stream_write_the_same_text() {
    each_shard_count(|s| {
        let mut c = s.client();
        let body = json!({"text_input": "The harbor", "max_tokens": 64, "seed": 11});
        let one = c.post_json(GENERATE, &body);
        assert_eq!(one.status, 200, "{}", String::from_utf8_lossy(&one.body));
        let one = one.json();
        assert_eq!(one["model_name"], "tinylm");
        assert_eq!(one["finish_reason"], "length");
        let text = one["text_output"].as_str().unwrap().to_string();
        assert_eq!(text.len(), 64, "one byte per token: {text:?}");

        start_stream(&mut c, &body);
        let events = read_stream(&mut c);
        assert_eq!(events.len(), 64, "one event per token");
        let (streamed, reason) = text_of(&events);
        assert_eq!(streamed, text);
        assert_eq!(reason, "length");

        // The connection stays open after a stream: the next request on it is answered.
        assert_eq!(c.get("/v2/health/ready").status, 200);

        // A stop string ends both the same way, and is not part of the text.
        let body = json!({"text_input": "The harbor", "max_tokens": 500, "seed": 11,
            "parameters": {"stop": ["e "]}});
        let one = c.post_json(GENERATE, &body).json();
        assert_eq!(one["finish_reason"], "stop", "{one}");
        let text = one["text_output"].as_str().unwrap().to_string();
        assert!(!text.contains("e "), "{text:?}");
        start_stream(&mut c, &body);
        let (streamed, reason) = text_of(&read_stream(&mut c));
        assert_eq!((streamed, reason), (text.clone(), "stop".to_string()));

        // Another seed, another text; greedy decoding needs none.
        let other = c
            .post_json(
                GENERATE,
                &json!({"text_input": "The harbor", "max_tokens": 64, "seed": 12}),
            )
            .json();
        assert_ne!(other["text_output"], json!(text));
        let greedy = json!({"text_input": "The", "max_tokens": 32, "temperature": 0});
        assert_eq!(
            c.post_json(GENERATE, &greedy).json(),
            c.post_json(GENERATE, &greedy).json()
        );
    });
}

#[test]
fn bad_generate_requests_get_clear_errors() {
    let s = Server::start(1);
    let mut c = s.client();
    for (path, body, status, says) in [
        (GENERATE, "{\"max_tokens\": 3}", 400, "needs 'text_input'"),
        (GENERATE, "not json", 400, "not a JSON object"),
        (
            STREAM,
            "{\"text_input\": \"a\", \"top_k\": -2}",
            400,
            "'top_k' must be",
        ),
        (
            STREAM,
            "{\"text_input\": \"a\", \"wat\": 1}",
            400,
            "unexpected key 'wat'",
        ),
        (
            "/v2/models/identity/generate",
            "{\"text_input\": \"a\"}",
            400,
            "does not generate text",
        ),
        (
            "/v2/models/tinylm/infer",
            "{\"inputs\": []}",
            400,
            "decoupled",
        ),
        ("/v2/models/nope/generate_stream", "{}", 404, "nope"),
    ] {
        let r = c.request("POST", path, &[], body.as_bytes());
        assert_eq!(
            r.status,
            status,
            "{path} {body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.error().contains(says), "{path} {body}: {}", r.error());
    }
    assert_eq!(c.get(GENERATE).status, 405);
    // The shard is fine afterwards.
    let ok = c.post_json(GENERATE, &json!({"text_input": "a", "max_tokens": 2}));
    assert_eq!(ok.status, 200);
    let config = c.get("/v2/models/tinylm/config").json();
    assert_eq!(config["model_transaction_policy"]["decoupled"], true);
}

#[test]
fn a_full_shard_refuses_at_once_and_a_client_that_leaves_frees_its_slot() {
    let config = config_file("generate-one", "[generate]\nmax_sequences_per_shard = 1\n");
    let s = Server::start_with(1, &["--config", config.to_str().unwrap()]);
    let mut a = s.client();
    start_stream(&mut a, &json!({"text_input": "x", "max_tokens": 1_000_000}));
    assert!(!a.read_events().unwrap().is_empty());

    let mut b = s.client();
    let refused = b.post_json(GENERATE, &json!({"text_input": "y", "max_tokens": 4}));
    assert_eq!(refused.status, 429);
    assert!(refused.header("retry-after").is_some());
    assert!(
        refused.error().contains("max_sequences_per_shard"),
        "{}",
        refused.error()
    );

    // The client goes away mid-stream: its sequence ends and its slot takes the next request.
    let left = Instant::now();
    drop(a);
    let freed = loop {
        let r = b.post_json(GENERATE, &json!({"text_input": "y", "max_tokens": 4}));
        if r.status == 200 {
            break left.elapsed();
        }
        assert_eq!(r.status, 429);
        assert!(
            left.elapsed() < Duration::from_secs(3),
            "the slot was never freed"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    println!("a stream's slot was free {freed:?} after its client left");
    let samples = scrape(&s);
    let cancelled = sample(
        &samples,
        "friday_requests_total",
        &[("model", "tinylm"), ("outcome", "cancelled")],
    );
    assert_eq!(cancelled, 1.0);
    assert_eq!(tinylm_total(&s, "friday_generate_active_sequences"), 0.0);
}

#[test]
fn a_generation_that_outlives_its_timeout_ends_with_an_error() {
    let s = Server::start(1);
    let mut c = s.client();
    let body =
        json!({"text_input": "x", "max_tokens": 1_000_000, "parameters": {"timeout": 50_000}});
    let r = c.post_json(GENERATE, &body);
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.error().contains("timeout"), "{}", r.error());
    start_stream(&mut c, &body);
    let events = read_stream(&mut c);
    let last = events.last().unwrap();
    assert!(
        last["error"].as_str().unwrap().contains("timeout"),
        "{last}"
    );
    assert!(events.len() > 1, "tokens came before the deadline");
    assert_eq!(c.get("/v2/health/live").status, 200);
}

#[test]
fn clients_that_leave_mid_stream_end_their_work_at_once() {
    let s = Server::start(2);
    let mut streams: Vec<Client> = (0..8)
        .map(|_| {
            let mut c = s.client();
            start_stream(&mut c, &json!({"text_input": "x", "max_tokens": 1_000_000}));
            assert!(!c.read_events().unwrap().is_empty());
            c
        })
        .collect();
    assert_eq!(tinylm_total(&s, "friday_generate_active_sequences"), 8.0);
    let left = Instant::now();
    streams.clear();
    loop {
        if tinylm_total(&s, "friday_generate_active_sequences") == 0.0 {
            break;
        }
        assert!(
            left.elapsed() < Duration::from_secs(3),
            "streams still run after their clients left"
        );
    }
    println!(
        "8 streams ended {:?} after their clients left",
        left.elapsed()
    );
}

#[test]
fn a_slow_reader_pauses_its_own_stream_and_pins_no_memory() {
    let s = Server::start(1);
    let rss_before = proc_status_mib(s.pid(), "VmRSS:");
    let mut slow = s.client();
    start_stream(
        &mut slow,
        &json!({"text_input": "x", "max_tokens": 1_000_000}),
    );
    // Reads nothing more: the stream fills its buffers and stops (how soon depends on the
    // machine's speed; wait until the token count holds still for half a second).
    let mut last = -1.0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = tinylm_total(&s, "friday_generate_tokens_total");
        if now == last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stream never paused ({now} tokens)"
        );
        last = now;
    }
    let paused_at = tinylm_total(&s, "friday_generate_tokens_total");
    // Another client is served meanwhile.
    let mut other = s.client();
    let r = other.post_json(GENERATE, &json!({"text_input": "y", "max_tokens": 8}));
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(1000));
    let still = tinylm_total(&s, "friday_generate_tokens_total");
    let rss_after = proc_status_mib(s.pid(), "VmRSS:");
    println!(
        "slow reader: {paused_at} tokens before the pause, {still} a second later; RSS {rss_before:.1} -> {rss_after:.1} MiB"
    );
    // Only the other request's 8 tokens came in between.
    assert_eq!(
        still - paused_at,
        8.0,
        "the slow reader's stream kept generating"
    );
    // Unbounded, a million tokens at ~75 bytes an event would be tens of MiB; bounded, the
    // stream holds the 64 KiB stream buffer and what the kernel's socket buffers take.
    assert!(
        paused_at < 100_000.0,
        "{paused_at} tokens went out to a reader that read nothing"
    );
    assert!(
        rss_after - rss_before < 8.0,
        "RSS grew {rss_before:.1} -> {rss_after:.1} MiB"
    );
    // Reading again resumes it: once the client has taken what the buffers held (thousands of
    // tokens sit in the kernel's socket buffers), new tokens come. Each read waits at most the
    // client's timeout, so a stream that never resumes fails here.
    let deadline = Instant::now() + Duration::from_secs(20);
    while tinylm_total(&s, "friday_generate_tokens_total") <= still {
        for _ in 0..100 {
            slow.read_events().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "reading again did not resume the stream"
        );
    }
}

#[test]
fn sixty_four_streams_on_two_shards_all_complete() {
    let s = Server::start(2);
    let addr = s.addr;
    let tokens = 200;
    let start = Instant::now();
    let handles: Vec<_> = (0..64)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                start_stream(
                    &mut c,
                    &json!({"text_input": "The", "max_tokens": tokens, "seed": i}),
                );
                let events = read_stream(&mut c);
                let (text, reason) = text_of(&events);
                assert_eq!(reason, "length");
                text.len()
            })
        })
        .collect();
    let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let took = start.elapsed();
    assert_eq!(total, 64 * tokens);
    println!(
        "64 concurrent streams on 2 shards: {total} tokens in {took:?} ({:.0} tokens/s)",
        total as f64 / took.as_secs_f64()
    );
    let samples = scrape(&s);
    let ok = sample(
        &samples,
        "friday_requests_total",
        &[("model", "tinylm"), ("outcome", "success")],
    );
    assert_eq!(ok, 64.0);
    let generated = sample(
        &samples,
        "friday_generate_tokens_total",
        &[("model", "tinylm")],
    );
    assert_eq!(generated, (64 * tokens) as f64);
    let ttft = sample(
        &samples,
        "friday_time_to_first_token_seconds_count",
        &[("model", "tinylm")],
    );
    assert_eq!(ttft, 64.0);
}

#[test]
fn a_real_sse_client_reads_tokens_as_they_come() {
    ensure_python("requests", &["requests"]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/conformance/generate_stream_client.py"
    );
    for shards in [1, 2] {
        let server = Server::start(shards);
        let out = std::process::Command::new("python3")
            .arg(script)
            .arg(server.addr.to_string())
            .output()
            .expect("run the SSE client");
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{stdout}");
        assert!(
            out.status.success(),
            "the SSE client failed with {shards} shard(s):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("all checks passed"));
    }
}

#[test]
fn a_drain_lets_running_streams_finish() {
    let mut s = Server::start(2);
    let mut streams: Vec<Client> = (0..4)
        .map(|i| {
            let mut c = s.client();
            start_stream(
                &mut c,
                &json!({"text_input": "x", "max_tokens": 3000, "seed": i}),
            );
            c
        })
        .collect();
    s.signal(libc::SIGTERM);
    for c in streams.iter_mut() {
        let (text, reason) = text_of(&read_stream(c));
        assert_eq!((text.len(), reason.as_str()), (3000, "length"));
        assert!(
            c.is_closed(Duration::from_secs(5)),
            "a draining server closes after the stream"
        );
    }
    let status = s
        .wait_exit(Duration::from_secs(10))
        .expect("friday exits after the drain");
    assert!(status.success(), "{status:?}");
}

#[test]
fn an_http_1_0_client_gets_its_stream_until_the_connection_closes() {
    let s = Server::start(1);
    let mut c = s.client();
    let body = r#"{"text_input": "x", "max_tokens": 5, "seed": 1}"#;
    c.send(
        format!(
            "POST {STREAM} HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut c.stream, &mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("Connection: close") && !head.contains("chunked"),
        "{head}"
    );
    let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 5, "{body}");
    assert!(events[4].contains("\"finish_reason\":\"length\""), "{body}");
}

#[test]
fn tritons_statistics_count_generations() {
    let s = Server::start(1);
    let mut c = s.client();
    for _ in 0..3 {
        assert_eq!(
            c.post_json(GENERATE, &json!({"text_input": "a", "max_tokens": 3}))
                .status,
            200
        );
    }
    let stats = c.get("/v2/models/tinylm/stats").json();
    let m = &stats["model_stats"][0];
    assert_eq!(m["inference_count"], 3, "{m}");
    assert_eq!(m["inference_stats"]["success"]["count"], 3, "{m}");
}
