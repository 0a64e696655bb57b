//! ONNX Runtime as a second backend (work in progress): a repository model served on ONNX Runtime
//! gives what rten gives. Needs the ONNX Runtime library: from `ORT_DYLIB_PATH`, or the
//! onnxruntime wheel's; without it the test says why and passes nothing.

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

/// The ONNX Runtime library: `ORT_DYLIB_PATH`, or the one in the onnxruntime wheel.
fn library() -> Option<String> {
    if let Ok(p) = std::env::var("ORT_DYLIB_PATH") {
        return Some(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import onnxruntime, os, glob; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so*')))[0])",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A server on repository `repo` whose `linear` runs on ONNX Runtime (library `lib`).
fn linear_on_onnx_runtime(tag: &str, shards: usize, repo: &std::path::Path, lib: &str) -> Server {
    let on_ort = config_file(tag, "[models.linear]\nbackend = \"onnxruntime\"\n");
    let mut cmd = Server::command(
        shards,
        &[
            "--model-repository",
            repo.to_str().unwrap(),
            "--config",
            on_ort.to_str().unwrap(),
        ],
    );
    cmd.env("ORT_DYLIB_PATH", lib);
    Server::spawn(cmd)
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
    let Some(lib) = library() else {
        println!(
            "SKIPPED: no ONNX Runtime library (set ORT_DYLIB_PATH or pip install onnxruntime)"
        );
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
    let Some(lib) = library() else {
        println!(
            "SKIPPED: no ONNX Runtime library (set ORT_DYLIB_PATH or pip install onnxruntime)"
        );
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
    let Some(lib) = library() else {
        println!(
            "SKIPPED: no ONNX Runtime library (set ORT_DYLIB_PATH or pip install onnxruntime)"
        );
        return;
    };
    // Without the library, rten alone cannot serve it.
    let mut cmd = Server::command(1, &["--model-repository", repo.to_str().unwrap()]);
    cmd.env_remove("ORT_DYLIB_PATH");
    let alone = Server::spawn(cmd);
    assert_eq!(infer(&alone).status, 404);
    for shards in [1, 2] {
        let mut cmd = Server::command(shards, &["--model-repository", repo.to_str().unwrap()]);
        cmd.env("ORT_DYLIB_PATH", &lib);
        let s = Server::spawn(cmd);
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
        let linear = s.client().get("/v2/models/linear/config").json();
        assert_eq!(linear["parameters"]["runtime"]["string_value"], "rten");
    }
}
