//! The response cache, end to end over real sockets with 1 and 2 shards: a repeated request is
//! answered with the same bytes (apart from its `id`) without reaching the model, a one-byte
//! change misses, scheduled requests (`priority`, `timeout`) always run, a model without
//! `response_cache` never caches, a new version's answers never come from the old one's entries,
//! the bytes held stay within `--cache-size` under a stream of distinct requests, and the
//! statistics extension's `cache_hit` / `cache_miss` read through NVIDIA's tritonclient.

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

const CACHED_IDENTITY: &str = "[models.identity]\nresponse_cache = true\n";

fn identity(data: &[f32], id: Option<&str>) -> Value {
    let mut body = json!({"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1, data.len()],
        "data": data}]});
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    body
}

/// `model`'s statistics (Triton's statistics extension), summed over the shards.
fn stats(s: &Server, model: &str) -> Value {
    let r = s.client().get(&format!("/v2/models/{model}/stats"));
    assert_eq!(r.status, 200);
    r.json()["model_stats"][0].clone()
}

fn count(stats: &Value, field: &str) -> u64 {
    stats["inference_stats"][field]["count"].as_u64().unwrap()
}

#[test]
fn a_repeated_request_is_answered_from_the_cache_with_the_same_bytes() {
    let config = config_file(
        "cache-repeat",
        &format!("{CACHED_IDENTITY}[cache]\nsize_bytes = 1048576\n"),
    );
    for shards in [1, 2] {
        let s = Server::start_with(shards, &["--config", config.to_str().unwrap()]);
        // One connection: every request lands on the shard holding its entry.
        let mut c = s.client();
        let first = c.post_json(
            "/v2/models/identity/infer",
            &identity(&[1.0, 2.0, 3.0], Some("a")),
        );
        assert_eq!(first.status, 200);
        let again = c.post_json(
            "/v2/models/identity/infer",
            &identity(&[1.0, 2.0, 3.0], Some("b")),
        );
        assert_eq!(again.status, 200);
        // Byte for byte, but for the id.
        assert_eq!(
            String::from_utf8_lossy(&again.body),
            String::from_utf8_lossy(&first.body).replace(r#""id":"a""#, r#""id":"b""#)
        );
        assert_eq!(again.header("content-type"), first.header("content-type"));
        let st = stats(&s, "identity");
        assert_eq!(
            (count(&st, "cache_hit"), count(&st, "cache_miss")),
            (1, 1),
            "{st}"
        );
        // A hit is a success that ran nothing, as Triton counts it.
        assert_eq!(count(&st, "success"), 2);
        assert_eq!(st["inference_count"], 1);
        assert_eq!(st["execution_count"], 1);

        // No id: none in the answer. A longer id: spliced in, length and all.
        let bare = c.post_json(
            "/v2/models/identity/infer",
            &identity(&[1.0, 2.0, 3.0], None),
        );
        assert!(!String::from_utf8_lossy(&bare.body).contains(r#""id""#));
        let long = c.post_json(
            "/v2/models/identity/infer",
            &identity(&[1.0, 2.0, 3.0], Some("a \"quoted\" id")),
        );
        assert_eq!(long.json()["id"], "a \"quoted\" id");
        assert_eq!(long.json()["outputs"], first.json()["outputs"]);
        assert_eq!(count(&stats(&s, "identity"), "cache_hit"), 3);

        // One byte changed: a miss, with its own answer.
        let changed = c.post_json(
            "/v2/models/identity/infer",
            &identity(&[1.0, 2.0, 3.5], None),
        );
        assert_eq!(changed.json()["outputs"][0]["data"], json!([1.0, 2.0, 3.5]));
        let st = stats(&s, "identity");
        assert_eq!((count(&st, "cache_hit"), count(&st, "cache_miss")), (3, 2));

        // Binary out: the tail comes back too, and the header length is the JSON's.
        let data: Vec<u8> = [4.0f32, 5.0, 6.0, 7.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let ask = |c: &mut Client| {
            c.send(&identity_binary_request(&data, true));
            c.read_response()
        };
        let b1 = ask(&mut c);
        let b2 = ask(&mut c);
        assert_eq!(b1.status, 200);
        assert_eq!(b2.body, b1.body);
        assert_eq!(
            b2.header("inference-header-content-length"),
            b1.header("inference-header-content-length")
        );
        assert!(b2.body.ends_with(&data));
        assert_eq!(count(&stats(&s, "identity"), "cache_hit"), 4);

        // Scheduled requests always run.
        for parameters in [json!({"priority": 1}), json!({"timeout": 1_000_000})] {
            let mut body = identity(&[1.0, 2.0, 3.0], None);
            body["parameters"] = parameters;
            assert_eq!(c.post_json("/v2/models/identity/infer", &body).status, 200);
        }
        let st = stats(&s, "identity");
        assert_eq!((count(&st, "cache_hit"), count(&st, "cache_miss")), (4, 3));

        // The metrics agree with the statistics.
        let m = scrape(&s);
        let l = [("model", "identity")];
        assert_eq!(sample(&m, "friday_cache_hits_total", &l), 4.0);
        assert_eq!(sample(&m, "friday_cache_misses_total", &l), 3.0);
        assert_eq!(sample(&m, "friday_cache_entries", &l), 3.0);
        assert!(sample(&m, "friday_cache_bytes", &l) > 0.0);
        assert_eq!(sample(&m, "friday_cache_evictions_total", &l), 0.0);
        assert!(
            !m.iter().any(|x| x.name.starts_with("friday_cache")
                && x.labels.get("model").and_then(Value::as_str) == Some("simple")),
            "a model without response_cache has no cache series"
        );
    }
}

#[test]
fn a_model_without_response_cache_or_a_server_without_a_cache_never_caches() {
    // identity asks for the cache, but the server has none; simple does not ask.
    let config = config_file("cache-off", CACHED_IDENTITY);
    let s = Server::start_with(1, &["--config", config.to_str().unwrap()]);
    assert!(
        s.startup_logs().iter().any(|l| {
            l["model"] == "identity"
                && l["message"].as_str().is_some_and(|m| {
                    m.starts_with("response_cache is on but the server has no cache")
                })
        }),
        "the missing cache is logged"
    );
    let body = json!({"inputs":[
        {"name":"INPUT0","shape":[1,16],"datatype":"INT32","data":[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]},
        {"name":"INPUT1","shape":[1,16],"datatype":"INT32","data":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}]});
    let mut c = s.client();
    for _ in 0..3 {
        assert_eq!(c.post_json("/v2/models/simple/infer", &body).status, 200);
        let r = c.post_json("/v2/models/identity/infer", &identity(&[1.0], None));
        assert_eq!(r.status, 200);
    }
    for model in ["simple", "identity"] {
        let st = stats(&s, model);
        assert_eq!(
            (count(&st, "cache_hit"), count(&st, "cache_miss")),
            (0, 0),
            "{model}"
        );
        assert_eq!(st["execution_count"], 3, "{model} ran every request");
    }
    // The model configuration says which models cache.
    let config = |m: &str| s.client().get(&format!("/v2/models/{m}/config")).json();
    assert_eq!(config("identity")["response_cache"]["enable"], true);
    assert_eq!(config("simple")["response_cache"]["enable"], false);
}

#[test]
fn the_bytes_held_stay_within_the_cache_size() {
    let size: u64 = 64 << 10;
    let config = config_file(
        "cache-bound",
        &format!("{CACHED_IDENTITY}[cache]\nsize_bytes = {size}\n"),
    );
    for shards in [1, 2] {
        let s = Server::start_with(shards, &["--config", config.to_str().unwrap()]);
        let mut clients: Vec<Client> = (0..4).map(|_| s.client()).collect();
        for round in 0..6 {
            for i in 0..100 {
                let n = (round * 100 + i) as f32;
                let c = &mut clients[i % 4];
                let r = c.post_json("/v2/models/identity/infer", &identity(&[n; 64], None));
                assert_eq!(r.status, 200);
            }
            let m = scrape(&s);
            let held = sample(&m, "friday_cache_bytes", &[("model", "identity")]);
            assert!(
                held <= size as f64,
                "{shards} shard(s): {held} bytes held over {size}"
            );
        }
        let m = scrape(&s);
        let l = [("model", "identity")];
        assert!(sample(&m, "friday_cache_evictions_total", &l) > 0.0);
        assert!(sample(&m, "friday_cache_entries", &l) > 10.0);
        assert_eq!(sample(&m, "friday_cache_misses_total", &l), 600.0);
        // What was stored last is still there.
        let r = clients[3].post_json("/v2/models/identity/infer", &identity(&[599.0; 64], None));
        assert_eq!(r.status, 200);
        assert_eq!(count(&stats(&s, "identity"), "cache_hit"), 1);
    }
}

#[test]
fn a_new_version_never_answers_from_the_old_versions_entries() {
    let out = make_repository("cache-versions");
    let repo = out.join("repository");
    let config = config_file(
        "cache-versions",
        "[models.linear]\nresponse_cache = true\n[cache]\nsize_bytes = 1048576\n",
    );
    for shards in [1, 2] {
        let _ = std::fs::remove_dir_all(repo.join("linear/3"));
        let s = Server::start_with(
            shards,
            &[
                "--config",
                config.to_str().unwrap(),
                "--model-repository",
                repo.to_str().unwrap(),
                "--model-control-mode",
                "explicit",
                "--load-model",
                "linear",
            ],
        );
        let body =
            json!({"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]});
        let mut c = s.client();
        let v2 = c.post_json("/v2/models/linear/infer", &body);
        assert_eq!(v2.json()["model_version"], "2");
        assert_eq!(c.post_json("/v2/models/linear/infer", &body).body, v2.body);
        assert_eq!(count(&stats(&s, "linear"), "cache_hit"), 1);

        add_linear_version(&out, 3);
        let r = c.request("POST", "/v2/repository/models/linear/load", &[], b"");
        assert_eq!(r.status, 200);
        let v3 = c.post_json("/v2/models/linear/infer", &body);
        assert_eq!(v3.json()["model_version"], "3");
        assert_ne!(
            v3.json()["outputs"],
            v2.json()["outputs"],
            "version 3 has its own bias"
        );
        let st = stats(&s, "linear");
        assert_eq!(st["version"], "3");
        assert_eq!((count(&st, "cache_hit"), count(&st, "cache_miss")), (0, 1));
        // The old version's bytes are gone from the metrics; the new one's are there.
        let m = scrape(&s);
        assert!(!m
            .iter()
            .any(|x| x.name == "friday_cache_bytes" && x.labels["version"] == "2"));
        assert_eq!(
            sample(
                &m,
                "friday_cache_entries",
                &[("model", "linear"), ("version", "3")]
            ),
            1.0
        );
        // Unloaded and loaded again, the same version starts empty too.
        let r = c.request("POST", "/v2/repository/models/linear/unload", &[], b"");
        assert_eq!(r.status, 200);
        assert_eq!(c.post_json("/v2/models/linear/infer", &body).status, 404);
        let r = c.request("POST", "/v2/repository/models/linear/load", &[], b"");
        assert_eq!(r.status, 200);
        assert_eq!(c.post_json("/v2/models/linear/infer", &body).body, v3.body);
        let st = stats(&s, "linear");
        assert_eq!((count(&st, "cache_hit"), count(&st, "cache_miss")), (0, 1));
    }
}

#[test]
fn tritonclient_reads_the_cache_statistics() {
    ensure_python("tritonclient.http, numpy", &["tritonclient[http]", "numpy"]);
    let config = config_file(
        "cache-tritonclient",
        &format!("{CACHED_IDENTITY}[cache]\nsize_bytes = 1048576\n"),
    );
    let s = Server::start_with(1, &["--config", config.to_str().unwrap()]);
    let script = r#"
import sys
import numpy as np
import tritonclient.http as http

client = http.InferenceServerClient(sys.argv[1])
data = np.arange(8, dtype=np.float32).reshape(1, 8)
outputs = []
for binary in (True, True, False, False):
    inp = http.InferInput("INPUT0", list(data.shape), "FP32")
    inp.set_data_from_numpy(data, binary_data=binary)
    out = http.InferRequestedOutput("OUTPUT0", binary_data=binary)
    r = client.infer("identity", [inp], outputs=[out], request_id="r%d" % len(outputs))
    assert r.get_response()["id"] == "r%d" % len(outputs), r.get_response()
    outputs.append(r.as_numpy("OUTPUT0"))
for o in outputs:
    assert np.array_equal(o, data), o
stats = client.get_inference_statistics("identity")["model_stats"][0]
s = stats["inference_stats"]
# Binary and JSON answers are stored apart: 2 misses, then 2 hits.
assert s["cache_hit"]["count"] == 2, s
assert s["cache_miss"]["count"] == 2, s
assert s["cache_hit"]["ns"] > 0 and s["cache_miss"]["ns"] > 0, s
assert s["success"]["count"] == 4, s
assert stats["execution_count"] == 2, stats
print("ok", s["cache_hit"], s["cache_miss"])
"#;
    let out = Command::new("python3")
        .args(["-c", script, &s.addr.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
