//! The protocol hot path, each step against a baseline twin: the HTTP head parser (friday's
//! decoder vs bare httparse), the KServe v2 request decoder (binary and JSON, vs parsing the same
//! JSON into a `serde_json::Value`), and the response encoder (vs serializing an equivalent
//! `Value`). The request is the one perf_analyzer sends for `identity` with `INPUT0:16`.
//! Run with `cargo bench --bench codec` (about 10 s).

use std::borrow::Cow;
use std::hint::black_box;

use friday::http::{Decoded, InferenceHeader, Limits, RequestDecoder};
use friday::model::{Identity, Model};
use friday::protocol::{decode_infer_request, encode_infer_response};
use friday::tensor::{DataType, Tensor};
use serde_json::{json, Value};

#[path = "support/mod.rs"]
mod support;

const SAMPLES: usize = 3000;

fn main() {
    support::header("codec", SAMPLES);
    let model = Identity::new();
    let meta = model.metadata();
    let values: Vec<f32> = (0..16).map(|i| i as f32 * 0.5).collect();
    let tail: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({"id":"","inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,16],"parameters":{"binary_data_size":64}}],
                        "outputs":[{"name":"OUTPUT0","parameters":{"binary_data":true}}]})
    .to_string();
    let mut binary_body = header.clone().into_bytes();
    binary_body.extend_from_slice(&tail);
    let json_body =
        json!({"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,16],"data":values}]})
            .to_string()
            .into_bytes();
    let mut http = format!(
        "POST /v2/models/identity/infer HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: libcurl-agent/1.0\r\nAccept: */*\r\nInference-Header-Content-Length: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        header.len(),
        binary_body.len()
    )
    .into_bytes();
    http.extend_from_slice(&binary_body);

    let limits = Limits {
        api_key_header: None,
        max_header_bytes: 16 << 10,
        max_body_bytes: 64 << 20,
    };
    let mut dechunked = Vec::new();
    support::measure(
        "HTTP: friday RequestDecoder (head + body framing)",
        SAMPLES,
        |_| {
            let mut d = RequestDecoder::new(limits);
            match d.decode(black_box(&http), &mut dechunked) {
                Ok(Decoded::Complete(m)) => {
                    black_box(m.consumed);
                }
                other => panic!("{other:?}"),
            }
        },
    );
    support::measure(
        "HTTP: baseline twin, bare httparse::Request::parse",
        SAMPLES,
        |_| {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Request::new(&mut headers);
            black_box(r.parse(black_box(&http)).unwrap());
        },
    );

    let ihcl = InferenceHeader::Length(header.len());
    support::measure(
        "v2 decode, binary (perf_analyzer's request)",
        SAMPLES,
        |_| {
            let r = decode_infer_request(meta, black_box(&binary_body), ihcl).unwrap();
            black_box(r.inputs.len());
        },
    );
    support::measure(
        "v2 decode, baseline twin: its JSON header into a Value",
        SAMPLES,
        |_| {
            let v: Value = serde_json::from_slice(black_box(header.as_bytes())).unwrap();
            black_box(v);
        },
    );
    support::measure("v2 decode, JSON (16 FP32 values)", SAMPLES, |_| {
        let r = decode_infer_request(meta, black_box(&json_body), InferenceHeader::Absent).unwrap();
        black_box(r.inputs.len());
    });
    support::measure(
        "v2 decode, baseline twin: the JSON body into a Value",
        SAMPLES,
        |_| {
            let v: Value = serde_json::from_slice(black_box(&json_body)).unwrap();
            black_box(v);
        },
    );

    let binary_req = decode_infer_request(meta, &binary_body, ihcl).unwrap();
    let json_req = decode_infer_request(meta, &json_body, InferenceHeader::Absent).unwrap();
    let outputs = [Tensor {
        datatype: DataType::Fp32,
        shape: smallvec::smallvec![1, 16],
        data: Cow::Borrowed(&tail[..]),
    }];
    let mut out = Vec::with_capacity(1024);
    support::measure(
        "v2 encode, binary output (JSON header + tail slice)",
        SAMPLES,
        |_| {
            let enc = encode_infer_response(meta, "1", &binary_req, &outputs, &mut out, usize::MAX)
                .unwrap();
            black_box(enc.tails.len());
        },
    );
    support::measure("v2 encode, JSON output (16 FP32 values)", SAMPLES, |_| {
        let enc =
            encode_infer_response(meta, "1", &json_req, &outputs, &mut out, usize::MAX).unwrap();
        black_box(enc.tails.len());
    });
    support::measure(
        "v2 encode, baseline twin: the same JSON from a Value",
        SAMPLES,
        |_| {
            out.clear();
            let v = json!({"model_name":"identity","model_version":"1",
            "outputs":[{"name":"OUTPUT0","datatype":"FP32","shape":[1,16],"data":values}]});
            serde_json::to_writer(&mut out, &v).unwrap();
            black_box(out.len());
        },
    );
}
