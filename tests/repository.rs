//! A Triton-layout model repository of ONNX models, served on rten: a repository written by
//! `tests/models/make_repository.py` (Python's `onnx` package), with and without `config.pbtxt`
//! files, checked through NVIDIA's tritonclient against numpy references by
//! `tests/conformance/repository_conformance.py`, with 1 and 2 shards. Models that cannot load (a
//! file that is not ONNX, an operator nobody has, a malformed or mistaken config.pbtxt, a
//! warm-up sample that does not fit) are
//! logged with the reason and not served, while the others are.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

fn not_loaded(logs: &[Value], model: &str) -> Option<String> {
    logs.iter()
        .find(|l| l["message"] == "model not loaded" && l["model"] == model)
        .map(|l| l["reason"].as_str().unwrap_or("").to_string())
}

#[test]
fn a_triton_repository_of_onnx_models_serves_through_tritonclient() {
    ensure_python("tritonclient.http, numpy", &["tritonclient[http]", "numpy"]);
    let out = make_repository("conformance");
    let repo = out.join("repository");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/conformance/repository_conformance.py"
    );
    for shards in [1, 2] {
        let s = Server::start_with(shards, &["--model-repository", repo.to_str().unwrap()]);
        let logs = s.startup_logs();
        let broken = not_loaded(logs, "broken").expect("the broken model is reported");
        assert!(broken.contains("not a valid ONNX model"), "{broken}");
        let unsupported = not_loaded(logs, "unsupported").expect("the unsupported one too");
        assert!(unsupported.contains("NoSuchOperator"), "{unsupported}");
        let malformed = not_loaded(logs, "malformed").expect("a malformed config.pbtxt too");
        assert!(
            malformed.contains("config.pbtxt: line 3, column 52"),
            "{malformed}"
        );
        let mistyped = not_loaded(logs, "mistyped").expect("a config at odds with the model");
        assert!(
            mistyped.contains("TYPE_FP32 in the model but TYPE_INT32 in config.pbtxt"),
            "{mistyped}"
        );
        let miswarmed = not_loaded(logs, "miswarmed").expect("a warm-up at odds with the model");
        assert!(
            miswarmed.contains("gives input 'x' as TYPE_INT64 [4]; the model takes TYPE_FP32 [4]"),
            "{miswarmed}"
        );
        assert!(
            logs.iter().any(|l| l["message"]
                == "config.pbtxt field ignored: friday does not act on it"
                && l["model"] == "addsub"
                && l["field"] == "instance_group"),
            "a field friday does not act on is logged"
        );
        let run = Command::new("python3")
            .arg(script)
            .arg(s.addr.to_string())
            .arg(&out)
            .output()
            .expect("run the conformance script");
        let stdout = String::from_utf8_lossy(&run.stdout);
        println!("{stdout}");
        assert!(
            run.status.success(),
            "repository conformance failed with {shards} shard(s):\n{stdout}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(stdout.contains("all checks passed"));
    }
}

#[test]
fn a_repository_model_takes_its_settings_from_the_config_file() {
    let out = make_repository("settings");
    let cfg = config_file(
        "repository-settings",
        "[models.linear]\nmax_batch_size = 16\nplacement = \"inline\"\n\
         [models.linear.dynamic_batching]\nmax_queue_delay_microseconds = 100\n",
    );
    let repo = out.join("repository");
    let s = Server::start_with(
        1,
        &[
            "--model-repository",
            repo.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    let config = s.client().get("/v2/models/linear/config").json();
    assert_eq!(config["max_batch_size"], 16, "{config}");
    assert_eq!(
        config["dynamic_batching"]["max_queue_delay_microseconds"], 100,
        "{config}"
    );
    // A batch of 16 rows is taken, 17 refused with the limit named.
    let rows = |n: usize| {
        serde_json::json!({"inputs":[{"name":"x","datatype":"FP32","shape":[n, 4],
            "data": vec![0.5f32; n * 4]}]})
    };
    let mut c = s.client();
    let r = c.post_json("/v2/models/linear/infer", &rows(16));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["outputs"][0]["shape"], serde_json::json!([16, 3]));
    let r = c.post_json("/v2/models/linear/infer", &rows(17));
    assert_eq!(r.status, 400);
    assert!(r.error().contains("16"), "{}", r.error());
}

#[test]
fn a_repository_that_is_not_there_stops_the_start_with_the_reason() {
    let missing = Path::new("/definitely/not/a/repository");
    let out = Command::new(env!("CARGO_BIN_EXE_friday"))
        .args(["serve", "--model-repository", missing.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/definitely/not/a/repository"), "{err}");
}

#[test]
fn exit_on_error_stops_the_start_when_a_model_fails_to_load() {
    let out = make_repository("exit-on-error");
    let repo = out.join("repository");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_friday"))
            .args(["serve", "--http-address", "127.0.0.1", "--http-port", "0"])
            .args([
                "--shards",
                "1",
                "--model-repository",
                repo.to_str().unwrap(),
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&["--exit-on-error"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("model_control.exit_on_error"), "{err}");
    assert!(err.contains("broken: "), "the failed model is named: {err}");
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(!logs.contains("friday listening"), "{logs}");

    // With only models that load, the flag changes nothing.
    let s = Server::start_with(
        1,
        &[
            "--model-repository",
            repo.to_str().unwrap(),
            "--model-control-mode",
            "explicit",
            "--load-model",
            "linear",
            "--exit-on-error",
        ],
    );
    assert_eq!(s.client().get("/v2/models/linear/ready").status, 200);
}

/// Resident memory of a server with `shards` shards serving `wide` once every shard has run it
/// (requests on many connections reach every shard).
fn rss_serving_wide(repo: &Path, shards: usize) -> f64 {
    let cfg = config_file(
        &format!("wide-{shards}"),
        "[models.wide]\nplacement = \"inline\"\n",
    );
    let s = Server::start_with(
        shards,
        &[
            "--model-repository",
            repo.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    let body = serde_json::json!({"inputs":[{"name":"x","datatype":"FP32","shape":[1, 2048],
        "data": vec![0.25f32; 2048]}]});
    for _ in 0..16 {
        let r = s.client().post_json("/v2/models/wide/infer", &body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            r.json()["outputs"][0]["shape"],
            serde_json::json!([1, 4096])
        );
    }
    let stats = s.client().get("/metrics");
    assert_eq!(stats.status, 200);
    proc_status_mib(s.pid(), "VmRSS:")
}

#[test]
fn shards_share_one_copy_of_a_models_weights() {
    if available_cpus() < 2 {
        println!("skipped: needs 2 CPUs to run 2 shards");
        return;
    }
    let out = make_repository_with("wide", &["--wide"]);
    let repo = out.join("repository");
    let one = rss_serving_wide(&repo, 1);
    let two = rss_serving_wide(&repo, 2);
    println!(
        "resident memory serving 32 MiB of weights: {one:.0} MiB with 1 shard, {two:.0} MiB with 2"
    );
    // A second copy of the weights would add 32 MiB; a shard's own buffers and scratch, a few.
    assert!(
        two - one < 16.0,
        "2 shards hold {two:.0} MiB against {one:.0} MiB for 1: the weights were copied"
    );
}
