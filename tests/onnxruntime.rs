//! ONNX Runtime as a second backend: a model rten cannot run is served on it, a model on it gives
//! what rten gives (with its `config.pbtxt` applied the same way), it starts no threads of its
//! own, and its shards hold the weights once. Needs the ONNX Runtime library: from
//! `ORT_DYLIB_PATH`, or the onnxruntime wheel's; without it a test says why and passes nothing.

mod common;

use common::*;
use serde_json::{json, Value};

const NO_LIBRARY: &str =
    "SKIPPED: no ONNX Runtime library (set ORT_DYLIB_PATH or pip install onnxruntime)";

/// A server on repository `repo` with ONNX Runtime's library `lib` (None: without it).
fn serve(shards: usize, repo: &std::path::Path, lib: Option<&str>, extra: &[&str]) -> Server {
    let mut args = vec!["--model-repository", repo.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut cmd = Server::command(shards, &args);
    match lib {
        Some(lib) => cmd.env("ORT_DYLIB_PATH", lib),
        None => cmd.env_remove("ORT_DYLIB_PATH"),
    };
    Server::spawn(cmd)
}

/// A server on repository `repo` whose `linear` runs on ONNX Runtime (library `lib`).
fn linear_on_onnx_runtime(tag: &str, shards: usize, repo: &std::path::Path, lib: &str) -> Server {
    let on_ort = config_file(tag, "[models.linear]\nbackend = \"onnxruntime\"\n");
    serve(
        shards,
        repo,
        Some(lib),
        &["--config", on_ort.to_str().unwrap()],
    )
}

fn outputs(server: &Server) -> Value {
    let r = server.client().post_json(
        "/v2/models/linear/infer",
        &json!({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
            "data": [1.0, 2.0, 3.0, 4.0, -1.0, 0.5, 0.25, 2.0]}]}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["outputs"][0].clone()
}

#[test]
fn a_model_on_onnx_runtime_agrees_with_rten() {
    let Some(lib) = onnxruntime_library() else {
        println!("{NO_LIBRARY}");
        return;
    };
    let dir = make_repository("ort");
    let repo = dir.join("repository");
    for shards in [1, 2] {
        let ort = linear_on_onnx_runtime("ort", shards, &repo, &lib);
        let rten = Server::start_with(shards, &["--model-repository", repo.to_str().unwrap()]);
        let (a, b) = (outputs(&ort), outputs(&rten));
        assert_eq!(a["shape"], b["shape"]);
        for (x, y) in a["data"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["data"].as_array().unwrap())
        {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{x} vs {y}");
        }
        let meta = ort.client().get("/v2/models/linear").json();
        assert_eq!(meta["inputs"][0]["shape"], json!([-1, 4]), "{meta}");
    }
}

/// Threads of process `pid`.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

#[test]
fn onnx_runtime_adds_no_threads_to_the_shards() {
    let Some(lib) = onnxruntime_library() else {
        println!("{NO_LIBRARY}");
        return;
    };
    let dir = make_repository("ort-threads");
    let repo = dir.join("repository");
    let shards = available_cpus().min(2);
    let ort = linear_on_onnx_runtime("ort-threads", shards, &repo, &lib);
    let rten = Server::start_with(shards, &["--model-repository", repo.to_str().unwrap()]);
    let idle = threads(ort.pid());
    // Under load: every shard has run the model.
    for s in [&ort, &rten] {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let addr = s.addr;
                std::thread::spawn(move || {
                    let server_client = Client::connect(addr);
                    let mut c = server_client;
                    for _ in 0..50 {
                        let r = c.post_json(
                            "/v2/models/linear/infer",
                            &json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                "data": [1.0, 2.0, 3.0, 4.0]}]}),
                        );
                        assert_eq!(r.status, 200);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
    let (a, b) = (threads(ort.pid()), threads(rten.pid()));
    println!(
        "threads with {shards} shard(s): ONNX Runtime {idle} idle, {a} under load; rten {b} under load"
    );
    assert_eq!(
        a, idle,
        "ONNX Runtime started threads of its own under load"
    );
    assert!(
        a <= b,
        "more threads on ONNX Runtime ({a}) than on rten ({b})"
    );
}

#[test]
fn a_model_rten_cannot_run_is_served_on_onnx_runtime() {
    let dir = make_repository_with("ort-shrink", &["--shrink"]);
    let repo = dir.join("repository");
    let infer = |s: &Server| {
        s.client().post_json(
            "/v2/models/shrink/infer",
            &json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                "data": [1.0, -1.0, 0.3, 2.0]}]}),
        )
    };
    // Without the library, rten alone cannot serve it, and the index says what would.
    let alone = serve(1, &repo, None, &[]);
    assert_eq!(infer(&alone).status, 404);
    let reason = index(&alone)["shrink"]["reason"].clone();
    assert!(
        reason
            .as_str()
            .unwrap()
            .contains("ONNX Runtime might run it"),
        "{reason}"
    );
    let Some(lib) = onnxruntime_library() else {
        println!("{NO_LIBRARY}");
        return;
    };
    for shards in [1, 2] {
        let s = serve(shards, &repo, Some(&lib), &[]);
        let r = infer(&s);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            r.json()["outputs"][0]["data"],
            json!([0.75, -0.75, 0.0, 1.75])
        );
        let config = s.client().get("/v2/models/shrink/config").json();
        assert_eq!(
            config["parameters"]["runtime"]["string_value"],
            "onnxruntime"
        );
        assert_eq!(config["backend"], "onnxruntime");
        assert_eq!(
            config["parameters"]["backend"]["string_value"],
            "onnxruntime"
        );
        let linear = s.client().get("/v2/models/linear/config").json();
        assert_eq!(linear["parameters"]["runtime"]["string_value"], "rten");
        // Loaded back as a `config`, the document keeps linear on rten.
        assert_eq!(linear["parameters"]["backend"]["string_value"], "rten");
        let rows = index(&s);
        assert_eq!(rows["shrink"]["runtime"], "onnxruntime");
        assert_eq!(rows["linear"]["runtime"], "rten");
    }
}

/// `GET /v2/repository/index` as rows keyed by model name.
fn index(server: &Server) -> std::collections::HashMap<String, Value> {
    let r = server
        .client()
        .post_json("/v2/repository/index", &json!({}));
    assert_eq!(r.status, 200);
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row["name"].as_str().unwrap().to_string(), row.clone()))
        .collect()
}

#[test]
fn backend_onnxruntime_in_config_pbtxt_runs_the_model_there_with_its_declarations() {
    let dir = make_repository("ort-pbtxt");
    let repo = dir.join("repository");
    // reshaped: served as [batch, 4], computed as [batch, 2, 2]; addsub: its inputs and outputs
    // as declared, dynamic batching, warm-up. Both now name ONNX Runtime as their backend.
    // addsub's config.pbtxt declares its inputs and outputs in the reverse of the graph's order.
    let swap = |text: String, x: &str, y: &str| {
        let (lx, ly) = (
            format!("{{ name: \"{x}\" data_type: TYPE_INT64 dims: [ 8 ] }}"),
            format!("{{ name: \"{y}\" data_type: TYPE_INT64 dims: [ 8 ] }}"),
        );
        assert!(text.contains(&lx) && text.contains(&ly), "{text}");
        text.replace(&lx, "@").replace(&ly, &lx).replace('@', &ly)
    };
    for model in ["reshaped", "addsub"] {
        let path = repo.join(model).join("config.pbtxt");
        let mut text = std::fs::read_to_string(&path).unwrap();
        if model == "addsub" {
            text = swap(swap(text, "a", "b"), "sum", "diff");
        }
        std::fs::write(&path, format!("backend: \"onnxruntime\"\n{text}")).unwrap();
    }
    let requests = [
        (
            "reshaped",
            json!({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                "data": [1.0, 2.0, 3.0, 4.0, -1.0, 0.5, 0.25, 2.0]}]}),
        ),
        (
            "addsub",
            json!({"inputs": [
                {"name": "a", "shape": [1, 8], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6, 7, 8]},
                {"name": "b", "shape": [1, 8], "datatype": "INT64", "data": [8, 7, 6, 5, 4, 3, 2, 1]}]}),
        ),
    ];
    // Without the library, a model that names ONNX Runtime does not load, and says why.
    let alone = serve(1, &repo, None, &[]);
    let rows = index(&alone);
    assert_eq!(
        rows["reshaped"]["state"], "UNAVAILABLE",
        "{:?}",
        rows["reshaped"]
    );
    let reason = rows["reshaped"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("ONNX Runtime") && reason.contains("ORT_DYLIB_PATH"),
        "{reason}"
    );
    assert_eq!(rows["linear"]["runtime"], "rten");
    drop(alone);
    let Some(lib) = onnxruntime_library() else {
        println!("{NO_LIBRARY}");
        return;
    };
    // The library from ORT_DYLIB_PATH with 1 shard, from friday's configuration with 2.
    let configured = config_file("ort-pbtxt", &format!("[onnxruntime]\nlibrary = {lib:?}\n"));
    for shards in [1, 2] {
        let s = match shards {
            1 => serve(1, &repo, Some(&lib), &[]),
            _ => serve(
                shards,
                &repo,
                None,
                &["--config", configured.to_str().unwrap()],
            ),
        };
        let rows = index(&s);
        for model in ["reshaped", "addsub"] {
            assert_eq!(rows[model]["state"], "READY", "{:?}", rows[model]);
            assert_eq!(rows[model]["runtime"], "onnxruntime", "{:?}", rows[model]);
        }
        assert_eq!(rows["linear"]["runtime"], "rten");
        let reshaped = s
            .client()
            .post_json("/v2/models/reshaped/infer", &requests[0].1);
        assert_eq!(
            reshaped.status,
            200,
            "{}",
            String::from_utf8_lossy(&reshaped.body)
        );
        let y = &reshaped.json()["outputs"][0];
        assert_eq!(y["shape"], json!([2, 4]));
        assert_eq!(y["data"], json!([2.0, 4.0, 6.0, 8.0, -2.0, 1.0, 0.5, 4.0]));
        let addsub = s
            .client()
            .post_json("/v2/models/addsub/infer", &requests[1].1);
        assert_eq!(
            addsub.status,
            200,
            "{}",
            String::from_utf8_lossy(&addsub.body)
        );
        let out = addsub.json();
        let names: Vec<&str> = out["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["diff", "sum"],
            "the outputs in config.pbtxt's order"
        );
        assert_eq!(
            out["outputs"][0]["data"],
            json!([-7, -5, -3, -1, 1, 3, 5, 7])
        );
        assert_eq!(out["outputs"][1]["data"], json!([9, 9, 9, 9, 9, 9, 9, 9]));
        let meta = s.client().get("/v2/models/addsub").json();
        assert_eq!(meta["inputs"][0]["name"], "b", "{meta}");
        assert_eq!(meta["inputs"][1]["name"], "a", "{meta}");
        // The same datatype and shape errors as on rten.
        let wrong = s.client().post_json(
            "/v2/models/reshaped/infer",
            &json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT32",
                "data": [1, 2, 3, 4]}]}),
        );
        assert_eq!(wrong.status, 400);
        let short = s.client().post_json(
            "/v2/models/reshaped/infer",
            &json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                "data": [1.0, 2.0, 3.0]}]}),
        );
        assert_eq!(short.status, 400);
        assert!(short.json()["error"].is_string());
    }
}

/// `friday serve` on `repo` with `shards` shards and the library: the resident memory, in
/// MiB, once every shard has looked rows up (and the lookups were right).
fn rss_serving_lookup(repo: &std::path::Path, lib: &str, shards: usize) -> f64 {
    let s = serve(shards, repo, Some(lib), &[]);
    assert_eq!(index(&s)["lookup"]["runtime"], "onnxruntime");
    let body = json!({"inputs": [{"name": "ids", "shape": [1, 4], "datatype": "INT64",
        "data": [0, 1, 4097, 8191]}]});
    for _ in 0..16 {
        let r = s.client().post_json("/v2/models/lookup/infer", &body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let y = &r.json()["outputs"][0];
        assert_eq!(y["shape"], json!([1, 4, 1024]));
        let data = y["data"].as_array().unwrap();
        for (row, id) in [0.0, 1.0, 4097.0, 8191.0].iter().enumerate() {
            for j in [0usize, 1, 511, 1023] {
                // FP32 on the wire, exact: E[i, j] = i + j / 1024.
                let got = data[row * 1024 + j].as_f64().unwrap() as f32;
                assert_eq!(got, (id + j as f64 / 1024.0) as f32);
            }
        }
    }
    proc_status_mib(s.pid(), "VmRSS:")
}

#[test]
fn onnx_runtime_sessions_hold_the_weights_once() {
    if available_cpus() < 2 {
        println!("SKIPPED: needs 2 CPUs to run 2 shards");
        return;
    }
    let Some(lib) = onnxruntime_library() else {
        println!("{NO_LIBRARY}");
        return;
    };
    let dir = make_repository_with("ort-lookup", &["--lookup"]);
    let repo = dir.join("repository");
    let one = rss_serving_lookup(&repo, &lib, 1);
    let two = rss_serving_lookup(&repo, &lib, 2);
    println!(
        "resident memory serving 32 MiB of weights on ONNX Runtime: {one:.0} MiB with 1 shard, \
         {two:.0} MiB with 2"
    );
    // A session of its own weights would add 32 MiB; a session's buffers, a few.
    assert!(
        two - one < 16.0,
        "2 shards hold {two:.0} MiB against {one:.0} MiB for 1: the weights were copied"
    );
}
