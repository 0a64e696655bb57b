//! The idle fast path (an inline model with nothing queued runs a request at once, on the bytes
//! it arrived in) answers byte for byte what the batched path answers (the same model on a
//! worker, through the batcher's queue), for random requests, pipelined on one connection and
//! from concurrent clients. Only the `Date` header may differ.

mod common;

use common::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;

/// The same model served both ways: `identity` inline with no queue delay (the fast path) and on
/// a worker (every request through the queue).
fn servers() -> (Server, Server) {
    let worker = config_file(
        "fast-path-worker",
        "[models.identity]\nplacement = \"worker\"\n",
    );
    (
        Server::start(1),
        Server::start_with(1, &["--config", worker.to_str().unwrap()]),
    )
}

/// One random infer request for `identity`, as raw HTTP bytes.
#[derive(Debug, Clone)]
struct Req {
    rows: usize,
    values: Vec<f32>,
    id: Option<String>,
    binary_in: bool,
    /// `None`: no `outputs`; `Some(b)`: ask for OUTPUT0 with `binary_data` = b.
    binary_out: Option<bool>,
}

impl Req {
    fn bytes(&self) -> Vec<u8> {
        let cols = self.values.len() / self.rows;
        let mut input = json!({"name": "INPUT0", "datatype": "FP32", "shape": [self.rows, cols]});
        let mut header = json!({});
        if let Some(id) = &self.id {
            header["id"] = json!(id);
        }
        if let Some(b) = self.binary_out {
            header["outputs"] = json!([{"name": "OUTPUT0", "parameters": {"binary_data": b}}]);
        }
        if self.binary_in {
            let data = f32_bytes(&self.values);
            input["parameters"] = json!({"binary_data_size": data.len()});
            header["inputs"] = json!([input]);
            let head = serde_json::to_vec(&header).unwrap();
            let mut body = head.clone();
            body.extend_from_slice(&data);
            let len = head.len().to_string();
            request_bytes(
                "POST",
                "/v2/models/identity/infer",
                &[("Inference-Header-Content-Length", &len)],
                &body,
            )
        } else {
            input["data"] = json!(self.values);
            header["inputs"] = json!([input]);
            request_bytes(
                "POST",
                "/v2/models/identity/infer",
                &[("Content-Type", "application/json")],
                &serde_json::to_vec(&header).unwrap(),
            )
        }
    }
}

fn req() -> impl Strategy<Value = Req> {
    (1usize..4, 1usize..9)
        .prop_flat_map(|(rows, cols)| {
            (
                Just(rows),
                prop::collection::vec(-1e6f32..1e6, rows * cols),
                prop::option::of("[a-z0-9-]{1,12}"),
                any::<bool>(),
                prop::option::of(any::<bool>()),
            )
        })
        .prop_map(|(rows, values, id, binary_in, binary_out)| Req {
            rows,
            values,
            id,
            binary_in,
            binary_out,
        })
}

/// Status, headers and body of a response.
type Comparable = (u16, Vec<(String, String)>, Vec<u8>);

/// A response with the `Date` header dropped: everything else must match.
fn comparable(r: &Response) -> Comparable {
    let headers = r
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("date"))
        .cloned()
        .collect();
    (r.status, headers, r.body.clone())
}

/// Sends every request pipelined in one write, then reads every response.
fn pipelined(server: &Server, reqs: &[Req]) -> Vec<Comparable> {
    let mut c = server.client();
    let all: Vec<u8> = reqs.iter().flat_map(Req::bytes).collect();
    c.send(&all);
    reqs.iter()
        .map(|_| comparable(&c.read_response()))
        .collect()
}

#[test]
fn fast_and_batched_paths_answer_the_same_bytes() {
    let (fast, batched) = servers();
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    let outcome = runner.run(&prop::collection::vec(req(), 1..12), |reqs| {
        let a = pipelined(&fast, &reqs);
        let b = pipelined(&batched, &reqs);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            prop_assert_eq!(
                x.0,
                200,
                "request {} failed: {}",
                i,
                String::from_utf8_lossy(&x.2)
            );
            prop_assert_eq!(x, y, "request {} ({:?})", i, &reqs[i]);
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

#[test]
fn concurrent_clients_get_the_same_bytes_on_both_paths() {
    let (fast, batched) = servers();
    let (fast, batched) = (&fast, &batched);
    let mut runner = TestRunner::deterministic();
    let batches: Vec<Vec<Req>> = (0..6)
        .map(|_| {
            prop::collection::vec(req(), 4..10)
                .new_tree(&mut runner)
                .unwrap()
                .current()
        })
        .collect();
    // Every client sends its pipeline to both servers at the same time as the others, so the
    // batched server forms batches of several clients' requests.
    let results: Vec<(Vec<_>, Vec<_>)> = std::thread::scope(|s| {
        let handles: Vec<_> = batches
            .iter()
            .map(|reqs| s.spawn(move || (pipelined(fast, reqs), pipelined(batched, reqs))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (client, (a, b)) in results.iter().enumerate() {
        assert_eq!(a, b, "client {client}");
        assert!(a.iter().all(|r| r.0 == 200));
    }
}
