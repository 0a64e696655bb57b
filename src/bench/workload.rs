//! What `friday bench` sends: infer requests built once, before the run, from the model's own
//! metadata (any KServe v2 server), with random data or perf_analyzer's `--input-data` JSON.
//!
//! Requests are encoded up front (a handful of variants, cycled), so the load generator spends
//! its time sending and timing, not encoding.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

use crate::protocol::json_data::{decode_json_data, JsonData};
use crate::tensor::{element_count, DataType};

/// How tensors travel in the request body.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The binary tensor extension (what perf_analyzer and tritonclient send by default).
    Binary,
    /// JSON tensors.
    Json,
}

/// How to build the requests.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// Model name.
    pub model: String,
    /// Model version, if the URL should name one.
    pub version: Option<String>,
    /// Shapes for inputs, without the batch dimension (`NAME:d1,d2`), as perf_analyzer takes them.
    pub shapes: Vec<(String, Vec<usize>)>,
    /// Batch size for models with a batch dimension.
    pub batch_size: usize,
    /// Expected datatype of every input, checked against the metadata.
    pub datatype: Option<DataType>,
    /// perf_analyzer-format input data.
    pub input_data: Option<Value>,
    /// Body encoding.
    pub encoding: Encoding,
    /// Seed for random data.
    pub seed: u64,
}

/// One input as the requests carry it.
#[derive(Debug, Clone, PartialEq)]
struct InputPlan {
    name: String,
    datatype: DataType,
    shape: Vec<usize>,
}

/// The encoded requests of a run.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Complete HTTP requests, cycled through.
    pub requests: Vec<Vec<u8>>,
    /// A one-line description (`INPUT0 FP32 [1,16], binary`).
    pub description: String,
}

/// Random variants built when no input data is given.
const RANDOM_VARIANTS: u64 = 16;

/// Parses `NAME:d1,d2,…`.
pub fn parse_shape(arg: &str) -> Result<(String, Vec<usize>), String> {
    let (name, dims) = arg
        .rsplit_once(':')
        .ok_or_else(|| format!("--shape {arg}: write NAME:d1,d2"))?;
    let dims = dims
        .split(',')
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("--shape {arg}: dimensions must be non-negative integers"))?;
    if name.is_empty() {
        return Err(format!("--shape {arg}: the input name is empty"));
    }
    Ok((name.to_string(), dims))
}

/// A plain `GET path` workload (`--http-get`): no model, any HTTP server.
pub fn http_get(path: &str, host: &str) -> Result<Workload, String> {
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "--http-get {path}: write an absolute path without spaces, e.g. /v2/health/ready"
        ));
    }
    Ok(Workload {
        requests: vec![format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()],
        description: format!("GET {path}"),
    })
}

/// Builds the workload against the server at `addr` (`host` goes in the Host header).
pub fn prepare(spec: &WorkloadSpec, addr: SocketAddr, host: &str) -> Result<Workload, String> {
    let base = match &spec.version {
        Some(v) => format!("/v2/models/{}/versions/{v}", spec.model),
        None => format!("/v2/models/{}", spec.model),
    };
    let metadata = get_json(addr, host, &base)?;
    // The model configuration says whether the first metadata dimension is the batch; servers
    // without the extension are taken as unbatched.
    let max_batch = get_json(addr, host, &format!("{base}/config"))
        .ok()
        .and_then(|c| c["max_batch_size"].as_u64())
        .unwrap_or(0);
    let plans = plan_inputs(spec, &metadata, max_batch > 0)?;
    let outputs: Vec<String> = metadata["outputs"]
        .as_array()
        .map(|o| {
            o.iter()
                .filter_map(|t| t["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let path = format!("{base}/infer");
    let datasets = match &spec.input_data {
        Some(file) => data_from_file(file, &plans)?,
        None => (0..RANDOM_VARIANTS)
            .map(|v| {
                plans
                    .iter()
                    .map(|p| random_data(p, spec.seed.wrapping_add(v)))
                    .collect()
            })
            .collect(),
    };
    let requests = datasets
        .iter()
        .map(|data| encode_request(&path, host, &plans, data, &outputs, spec.encoding))
        .collect::<Result<Vec<_>, _>>()?;
    let description = plans
        .iter()
        .map(|p| format!("{} {} {:?}", p.name, p.datatype.name(), p.shape))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Workload {
        requests,
        description: format!(
            "{description}, {} tensors",
            match spec.encoding {
                Encoding::Binary => "binary",
                Encoding::Json => "JSON",
            }
        ),
    })
}

fn plan_inputs(
    spec: &WorkloadSpec,
    metadata: &Value,
    batched: bool,
) -> Result<Vec<InputPlan>, String> {
    let inputs = metadata["inputs"]
        .as_array()
        .ok_or_else(|| format!("model metadata has no inputs: {metadata}"))?;
    let mut plans = Vec::new();
    for input in inputs {
        let name = input["name"]
            .as_str()
            .ok_or("an input without a name")?
            .to_string();
        let datatype = input["datatype"]
            .as_str()
            .and_then(DataType::from_name)
            .ok_or_else(|| format!("input {name} has an unknown datatype"))?;
        if let Some(want) = spec.datatype {
            if want != datatype {
                return Err(format!(
                    "--datatype {} but input {name} is {}",
                    want.name(),
                    datatype.name()
                ));
            }
        }
        let mut dims: Vec<i64> = input["shape"]
            .as_array()
            .ok_or_else(|| format!("input {name} has no shape"))?
            .iter()
            .map(|d| d.as_i64().unwrap_or(-1))
            .collect();
        if batched && !dims.is_empty() {
            dims.remove(0);
        }
        let shape = match spec.shapes.iter().find(|(n, _)| *n == name) {
            Some((_, given)) => given.clone(),
            None if dims.iter().all(|&d| d >= 0) => dims.iter().map(|&d| d as usize).collect(),
            None => {
                return Err(format!(
                    "input {name} has a variable dimension ({dims:?}): pass --shape {name}:…"
                ))
            }
        };
        let mut full = Vec::with_capacity(shape.len() + 1);
        if batched {
            full.push(spec.batch_size);
        }
        full.extend(shape);
        plans.push(InputPlan {
            name,
            datatype,
            shape: full,
        });
    }
    Ok(plans)
}

/// Random data valid for the datatype (the generator is seeded: runs repeat).
fn random_data(plan: &InputPlan, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let n = element_count(&plan.shape).unwrap_or(0);
    let mut out = Vec::new();
    for _ in 0..n {
        match plan.datatype {
            DataType::Bool => out.push(rng.bool() as u8),
            DataType::Bytes => {
                let s: String = (0..8).map(|_| rng.alphanumeric()).collect();
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            DataType::Fp32 => out.extend_from_slice(&rng.f32().to_le_bytes()),
            DataType::Fp64 => out.extend_from_slice(&rng.f64().to_le_bytes()),
            DataType::Fp16 => out.extend_from_slice(&half::f16::from_f32(rng.f32()).to_le_bytes()),
            DataType::Bf16 => out.extend_from_slice(&half::bf16::from_f32(rng.f32()).to_le_bytes()),
            // Small non-negative integers fit every integer type.
            d => {
                let size = d.element_size().expect("fixed-size type");
                let v = rng.u64(0..100);
                out.extend_from_slice(&v.to_le_bytes()[..size]);
            }
        }
    }
    out
}

/// perf_analyzer's input-data format: `{"data": [{"INPUT0": [..] | {"content": [..], "shape": [..]}}]}`.
fn data_from_file(file: &Value, plans: &[InputPlan]) -> Result<Vec<Vec<Vec<u8>>>, String> {
    let entries = file["data"]
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or("--input-data: expected {\"data\": [ {INPUT: values}, … ]}")?;
    entries
        .iter()
        .map(|entry| {
            plans
                .iter()
                .map(|p| {
                    let v = &entry[&p.name];
                    let content = if v.is_object() { &v["content"] } else { v };
                    if content.is_null() {
                        return Err(format!("--input-data: an entry lacks input {}", p.name));
                    }
                    let mut out = Vec::new();
                    let n = decode_json_data(p.datatype, &content.to_string(), &mut out)
                        .map_err(|e| format!("--input-data, input {}: {e}", p.name))?;
                    let want = element_count(&p.shape).unwrap_or(0);
                    if n != want {
                        return Err(format!(
                            "--input-data, input {}: {n} values for shape {:?} ({want})",
                            p.name, p.shape
                        ));
                    }
                    Ok(out)
                })
                .collect()
        })
        .collect()
}

fn encode_request(
    path: &str,
    host: &str,
    plans: &[InputPlan],
    data: &[Vec<u8>],
    outputs: &[String],
    encoding: Encoding,
) -> Result<Vec<u8>, String> {
    let (body, header_len) = match encoding {
        Encoding::Binary => {
            let inputs: Vec<Value> = plans
                .iter()
                .zip(data)
                .map(|(p, d)| {
                    json!({"name": p.name, "datatype": p.datatype.name(), "shape": p.shape,
                           "parameters": {"binary_data_size": d.len()}})
                })
                .collect();
            let outs: Vec<Value> = outputs
                .iter()
                .map(|o| json!({"name": o, "parameters": {"binary_data": true}}))
                .collect();
            let header = json!({"inputs": inputs, "outputs": outs}).to_string();
            let mut body = header.clone().into_bytes();
            for d in data {
                body.extend_from_slice(d);
            }
            (body, Some(header.len()))
        }
        Encoding::Json => {
            let inputs = plans
                .iter()
                .zip(data)
                .map(|(p, d)| {
                    let values = serde_json::to_value(JsonData {
                        datatype: p.datatype,
                        data: d,
                    })
                    .map_err(|e| format!("input {} cannot be JSON: {e}", p.name))?;
                    Ok(json!({"name": p.name, "datatype": p.datatype.name(), "shape": p.shape, "data": values}))
                })
                .collect::<Result<Vec<Value>, String>>()?;
            (json!({"inputs": inputs}).to_string().into_bytes(), None)
        }
    };
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\n").into_bytes();
    match header_len {
        Some(n) => req.extend_from_slice(
            format!("Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {n}\r\n")
                .as_bytes(),
        ),
        None => req.extend_from_slice(b"Content-Type: application/json\r\n"),
    }
    req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    req.extend_from_slice(&body);
    Ok(req)
}

/// A blocking GET that returns the JSON body (only before a run, never during one).
fn get_json(addr: SocketAddr, host: &str, path: &str) -> Result<Value, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| format!("GET {path}: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let n = match r.parse(&buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(format!("GET {path}: not an HTTP response")),
    };
    let code = r.code.unwrap_or(0);
    let body = &buf[n..];
    if code != 200 {
        return Err(format!(
            "GET {path}: {code} {}",
            String::from_utf8_lossy(body)
        ));
    }
    serde_json::from_slice(body).map_err(|e| format!("GET {path}: not JSON ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WorkloadSpec {
        WorkloadSpec {
            model: "m".into(),
            version: None,
            shapes: vec![],
            batch_size: 1,
            datatype: None,
            input_data: None,
            encoding: Encoding::Binary,
            seed: 1,
        }
    }

    #[test]
    fn shapes_parse() {
        assert_eq!(
            parse_shape("INPUT0:1,16").unwrap(),
            ("INPUT0".into(), vec![1, 16])
        );
        assert!(parse_shape("INPUT0").is_err());
        assert!(parse_shape("INPUT0:a").is_err());
        assert!(parse_shape(":1").is_err());
    }

    #[test]
    fn inputs_follow_the_metadata_and_the_batch_dim() {
        let meta = json!({"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[-1,-1]}]});
        let e = plan_inputs(&spec(), &meta, true).unwrap_err();
        assert!(e.contains("--shape INPUT0"), "{e}");
        let mut s = spec();
        s.shapes = vec![("INPUT0".into(), vec![16])];
        s.batch_size = 4;
        let plans = plan_inputs(&s, &meta, true).unwrap();
        assert_eq!(plans[0].shape, vec![4, 16]);
        let fixed = json!({"inputs":[{"name":"A","datatype":"INT32","shape":[-1,3]}]});
        assert_eq!(
            plan_inputs(&spec(), &fixed, true).unwrap()[0].shape,
            vec![1, 3]
        );
        s.datatype = Some(DataType::Int32);
        assert!(plan_inputs(&s, &meta, true)
            .unwrap_err()
            .contains("--datatype"));
    }

    #[test]
    fn requests_are_complete_http_messages() {
        let plans = vec![InputPlan {
            name: "INPUT0".into(),
            datatype: DataType::Fp32,
            shape: vec![1, 4],
        }];
        let data = vec![random_data(&plans[0], 3)];
        for encoding in [Encoding::Binary, Encoding::Json] {
            let req = encode_request(
                "/v2/models/m/infer",
                "h",
                &plans,
                &data,
                &["OUT".into()],
                encoding,
            )
            .unwrap();
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut r = httparse::Request::new(&mut headers);
            let n = match r.parse(&req).unwrap() {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => panic!("partial"),
            };
            let len: usize = r
                .headers
                .iter()
                .find(|h| h.name == "Content-Length")
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .unwrap();
            assert_eq!(req.len() - n, len, "{encoding:?}");
        }
    }

    #[test]
    fn input_data_files_in_perf_analyzer_format() {
        let plans = vec![InputPlan {
            name: "INPUT0".into(),
            datatype: DataType::Int32,
            shape: vec![1, 2],
        }];
        let file =
            json!({"data": [{"INPUT0": [1, 2]}, {"INPUT0": {"content": [3, 4], "shape": [2]}}]});
        let sets = data_from_file(&file, &plans).unwrap();
        assert_eq!(sets.len(), 2);
        assert_eq!(
            sets[1][0],
            [3i32.to_le_bytes(), 4i32.to_le_bytes()].concat()
        );
        assert!(data_from_file(&json!({"data": [{"INPUT0": [1]}]}), &plans).is_err());
        assert!(data_from_file(&json!({"data": []}), &plans).is_err());
    }
}
