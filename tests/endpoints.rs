//! Every KServe v2 endpoint, over real sockets, with 1 shard and with 2.

mod common;

use common::*;
use serde_json::{json, Value};

fn each_shard_count(test: impl Fn(&Server)) {
    for shards in [1, 2] {
        let server = Server::start(shards);
        test(&server);
    }
}

#[test]
fn health_and_server_metadata() {
    each_shard_count(|s| {
        let mut c = s.client();
        let live = c.get("/v2/health/live");
        assert_eq!(live.status, 200);
        assert_eq!(live.json(), json!({"live": true}));
        let ready = c.get("/v2/health/ready");
        assert_eq!(ready.status, 200);
        assert_eq!(ready.json(), json!({"ready": true}));
        assert!(ready.header("date").is_some());

        let meta = c.get("/v2").json();
        assert_eq!(meta["name"], "friday");
        assert!(meta["version"].is_string());
        let ext: Vec<&str> = meta["extensions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for e in ["binary_tensor_data", "model_configuration", "statistics"] {
            assert!(ext.contains(&e), "{ext:?} lacks {e}");
        }
    });
}

#[test]
fn model_metadata_ready_and_config() {
    each_shard_count(|s| {
        let mut c = s.client();
        for path in ["/v2/models/identity", "/v2/models/identity/versions/1"] {
            let m = c.get(path);
            assert_eq!(m.status, 200, "{path}");
            assert_eq!(
                m.json(),
                json!({"name":"identity","versions":["1"],"platform":"friday_builtin",
                    "inputs":[{"name":"INPUT0","datatype":"FP32","shape":[-1,-1]}],
                    "outputs":[{"name":"OUTPUT0","datatype":"FP32","shape":[-1,-1]}]})
            );
        }
        let simple = c.get("/v2/models/simple").json();
        assert_eq!(
            simple["inputs"][1],
            json!({"name":"INPUT1","datatype":"INT32","shape":[-1,16]})
        );
        assert_eq!(simple["outputs"].as_array().unwrap().len(), 2);

        let ready = c.get("/v2/models/simple/ready");
        assert_eq!(ready.status, 200);
        assert_eq!(ready.json(), json!({"name":"simple","ready":true}));
        assert_eq!(c.get("/v2/models/simple/versions/1/ready").status, 200);

        let config = c.get("/v2/models/identity/config").json();
        assert_eq!(config["name"], "identity");
        assert_eq!(config["max_batch_size"], 64);
        assert_eq!(config["input"][0]["data_type"], "TYPE_FP32");
        assert_eq!(config["input"][0]["dims"], json!([-1]));
        let config = c.get("/v2/models/simple/config").json();
        assert_eq!(config["max_batch_size"], 8);
        assert_eq!(config["output"][1]["name"], "OUTPUT1");

        let unknown = c.get("/v2/models/nope");
        assert_eq!(unknown.status, 404);
        assert!(unknown.error().contains("nope"));
        let version = c.get("/v2/models/identity/versions/9");
        assert_eq!(version.status, 404);
        assert!(version.error().contains("version '9'"));
        assert_eq!(c.get("/v2/models/nope/ready").status, 404);
    });
}

fn identity_json(id: &str, values: &[f32]) -> Value {
    json!({"id": id, "inputs": [{"name": "INPUT0", "shape": [1, values.len()], "datatype": "FP32", "data": values}]})
}

#[test]
fn infer_identity_json() {
    each_shard_count(|s| {
        let mut c = s.client();
        let r = c.post_json(
            "/v2/models/identity/infer",
            &identity_json("req-1", &[1.5, -2.0, 3.25]),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.json(),
            json!({"model_name":"identity","model_version":"1","id":"req-1",
                "outputs":[{"name":"OUTPUT0","datatype":"FP32","shape":[1,3],"data":[1.5,-2.0,3.25]}]})
        );
        // Nested data in the tensor's shape, a batch of two, versioned path.
        let nested = json!({"inputs":[{"name":"INPUT0","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]}]});
        let r = c.post_json("/v2/models/identity/versions/1/infer", &nested);
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["outputs"][0]["shape"], json!([2, 2]));
        assert_eq!(v["outputs"][0]["data"], json!([1.0, 2.0, 3.0, 4.0]));
        assert!(v.get("id").is_none(), "no id in, no id out");
    });
}

#[test]
fn infer_identity_binary() {
    each_shard_count(|s| {
        let mut c = s.client();
        let values: Vec<f32> = (0..16).map(|i| i as f32 * 0.5).collect();
        let tail = f32_bytes(&values);
        let r = c.post_binary("/v2/models/identity/infer", &json!({"id":"","inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,16],"parameters":{"binary_data_size":tail.len()}}],
                    "outputs":[{"name":"OUTPUT0","parameters":{"binary_data":true}}]}), &tail);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
        let (header, data) = split_binary(&r);
        assert_eq!(
            header,
            json!({"model_name":"identity","model_version":"1",
                "outputs":[{"name":"OUTPUT0","datatype":"FP32","shape":[1,16],"parameters":{"binary_data_size":64}}]})
        );
        assert_eq!(data, tail);

        // binary_data_output asks for every output in binary.
        let r = c.post_binary("/v2/models/identity/infer", &json!({"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,16],"parameters":{"binary_data_size":64}}],
                    "parameters":{"binary_data_output":true}}), &tail);
        assert_eq!(split_binary(&r).1, tail);

        // Raw binary: the body is the tensor.
        let r = c.request(
            "POST",
            "/v2/models/identity/infer",
            &[("Inference-Header-Content-Length", "0")],
            &tail,
        );
        assert_eq!(r.status, 200);
        let (header, data) = split_binary(&r);
        assert_eq!(header["outputs"][0]["shape"], json!([1, 16]));
        assert_eq!(data, tail);
    });
}

#[test]
fn infer_simple_json_binary_and_output_filter() {
    each_shard_count(|s| {
        let mut c = s.client();
        let a: Vec<i32> = (0..16).collect();
        let b: Vec<i32> = (0..16).map(|i| 100 - i * 3).collect();
        let sum: Vec<i32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        let diff: Vec<i32> = a.iter().zip(&b).map(|(x, y)| x - y).collect();

        let r = c.post_json(
            "/v2/models/simple/infer",
            &json!({"inputs":[
                {"name":"INPUT0","shape":[1,16],"datatype":"INT32","data":a},
                {"name":"INPUT1","shape":[1,16],"datatype":"INT32","data":b}]}),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        assert_eq!(v["outputs"][0]["name"], "OUTPUT0");
        assert_eq!(v["outputs"][0]["data"], json!(sum));
        assert_eq!(v["outputs"][1]["data"], json!(diff));

        // Binary inputs, only OUTPUT1 back, binary.
        let mut tail = i32_bytes(&a);
        tail.extend(i32_bytes(&b));
        let r = c.post_binary("/v2/models/simple/infer", &json!({"inputs":[
                {"name":"INPUT0","shape":[1,16],"datatype":"INT32","parameters":{"binary_data_size":64}},
                {"name":"INPUT1","shape":[1,16],"datatype":"INT32","parameters":{"binary_data_size":64}}],
                "outputs":[{"name":"OUTPUT1","parameters":{"binary_data":true}}]}), &tail);
        assert_eq!(r.status, 200);
        let (header, data) = split_binary(&r);
        assert_eq!(header["outputs"].as_array().unwrap().len(), 1);
        assert_eq!(header["outputs"][0]["name"], "OUTPUT1");
        assert_eq!(data, i32_bytes(&diff));

        // A batch of two.
        let r = c.post_json(
            "/v2/models/simple/infer",
            &json!({"inputs":[
                {"name":"INPUT0","shape":[2,16],"datatype":"INT32","data":[a.clone(), a.clone()]},
                {"name":"INPUT1","shape":[2,16],"datatype":"INT32","data":[b.clone(), a.clone()]}],
                "outputs":[{"name":"OUTPUT0"}]}),
        );
        let v = r.json();
        assert_eq!(v["outputs"][0]["shape"], json!([2, 16]));
        let doubled: Vec<i32> = a.iter().map(|x| x * 2).collect();
        assert_eq!(v["outputs"][0]["data"], json!([sum, doubled].concat()));
    });
}

#[test]
fn head_method_and_unknown_paths() {
    each_shard_count(|s| {
        let mut c = s.client();
        let r = c.request("HEAD", "/v2/health/live", &[], b"");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some("13"));
        assert!(r.body.is_empty());
        let r = c.get("/v3/whatever");
        assert_eq!(r.status, 404);
        assert!(r.error().contains("/v3/whatever"));
        let r = c.get("/v2/models/identity/infer");
        assert_eq!(r.status, 405);
        assert!(r.header("allow").is_some());
        let r = c.request("DELETE", "/v2/health/live", &[], b"");
        assert_eq!(r.status, 405);
        // Still serving on the same connection.
        assert_eq!(c.get("/v2/health/live").status, 200);
    });
}

fn stats_of(c: &mut Client, model: &str) -> Value {
    let r = c.get(&format!("/v2/models/{model}/stats"));
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["model_stats"].as_array().unwrap().len(), 1);
    v["model_stats"][0].clone()
}

#[test]
fn statistics_count_every_request_on_every_shard() {
    each_shard_count(|s| {
        let mut probe = s.client();
        let before = stats_of(&mut probe, "identity");
        let fails_before = before["inference_stats"]["fail"]["count"].as_u64().unwrap();
        // Many connections, so with two shards both take requests.
        let mut sent = 0u64;
        let mut items = 0u64;
        for conn in 0..8 {
            let mut c = s.client();
            for i in 0..5 {
                let batch = 1 + (conn + i) % 3;
                let body = json!({"inputs":[{"name":"INPUT0","shape":[batch, 2],"datatype":"FP32","data":vec![1.0f32; batch * 2]}]});
                assert_eq!(c.post_json("/v2/models/identity/infer", &body).status, 200);
                sent += 1;
                items += batch as u64;
            }
            let bad =
                json!({"inputs":[{"name":"INPUT0","shape":[1,2],"datatype":"INT32","data":[1,2]}]});
            assert_eq!(c.post_json("/v2/models/identity/infer", &bad).status, 400);
        }
        let after = stats_of(&mut probe, "identity");
        let delta = |v: &Value, path: &[&str]| {
            let get = |x: &Value| {
                path.iter()
                    .fold(x.clone(), |acc, k| acc[*k].clone())
                    .as_u64()
                    .unwrap()
            };
            get(v) - get(&before)
        };
        assert_eq!(after["name"], "identity");
        assert_eq!(after["version"], "1");
        assert_eq!(delta(&after, &["execution_count"]), sent);
        assert_eq!(delta(&after, &["inference_count"]), items);
        assert_eq!(
            delta(&after, &["inference_stats", "success", "count"]),
            sent
        );
        assert_eq!(
            delta(&after, &["inference_stats", "compute_infer", "count"]),
            sent
        );
        assert!(delta(&after, &["inference_stats", "success", "ns"]) > 0);
        assert_eq!(
            after["inference_stats"]["fail"]["count"].as_u64().unwrap() - fails_before,
            8
        );
        let batch_sizes: Vec<u64> = after["batch_stats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["batch_size"].as_u64().unwrap())
            .collect();
        assert_eq!(batch_sizes, vec![1, 2, 3]);
        assert!(after["last_inference"].as_u64().unwrap() > 1_600_000_000_000);

        let all = probe.get("/v2/models/stats").json();
        let names: Vec<&str> = all["model_stats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["identity", "simple", "synthetic", "tinylm"]);
        assert_eq!(probe.get("/v2/models/nope/stats").status, 404);
    });
}
