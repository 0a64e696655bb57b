//! The metadata documents: server metadata (`GET /v2`), model metadata, model readiness and
//! Triton's model configuration (`…/config`), which perf_analyzer reads `max_batch_size` from.
//!
//! They never change while a model version is served, so the service renders them once per
//! model at startup and answers from bytes.

use serde::Serialize;
use serde_json::json;

use crate::model::{ModelMetadata, Serving, TensorSpec};

/// The protocol extensions friday implements, as `GET /v2` lists them. Only what works is listed.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "generate",
    "generate_stream",
    "model_configuration",
    "model_repository",
    "statistics",
];

/// `GET /v2`
pub fn server_metadata(name: &str, version: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct ServerMetadata<'a> {
        name: &'a str,
        version: &'a str,
        extensions: &'a [&'a str],
    }
    serde_json::to_vec(&ServerMetadata {
        name,
        version,
        extensions: EXTENSIONS,
    })
    .expect("plain struct serializes")
}

#[derive(Serialize)]
struct TensorMetadata<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: Vec<i64>,
}

fn tensor_metadata<'a>(meta: &ModelMetadata, spec: &'a TensorSpec) -> TensorMetadata<'a> {
    let mut shape = Vec::with_capacity(spec.dims.len() + 1);
    if meta.max_batch_size > 0 {
        shape.push(-1);
    }
    shape.extend_from_slice(&spec.dims);
    TensorMetadata {
        name: &spec.name,
        datatype: spec.datatype.name(),
        shape,
    }
}

/// `GET /v2/models/{m}[/versions/{v}]`: shapes include the batch dimension (-1) for batched
/// models, as Triton reports them.
pub fn model_metadata(meta: &ModelMetadata, versions: &[&str]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Doc<'a> {
        name: &'a str,
        versions: &'a [&'a str],
        platform: &'a str,
        inputs: Vec<TensorMetadata<'a>>,
        outputs: Vec<TensorMetadata<'a>>,
    }
    serde_json::to_vec(&Doc {
        name: &meta.name,
        versions,
        platform: &meta.platform,
        inputs: meta
            .inputs
            .iter()
            .map(|s| tensor_metadata(meta, s))
            .collect(),
        outputs: meta
            .outputs
            .iter()
            .map(|s| tensor_metadata(meta, s))
            .collect(),
    })
    .expect("plain struct serializes")
}

/// `GET …/ready` for a model that is being served.
pub fn model_ready(name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({ "name": name, "ready": true })).expect("json! value serializes")
}

/// `GET …/config`: Triton's model configuration as JSON (the fields of config.pbtxt that describe
/// a model served by friday), with Triton's field names, including its `dynamic_batching`.
/// `decoupled`: the model answers a request with many responses (a generative model);
/// `runtime`: what computes it (see [`crate::model::Model::runtime`]), in `parameters.runtime`
/// and, for an ONNX model, `parameters.backend`.
pub fn model_config(
    meta: &ModelMetadata,
    serving: &Serving,
    decoupled: bool,
    runtime: &str,
) -> Vec<u8> {
    let b = &serving.dynamic_batching;
    let dynamic_batching = json!({
        "preferred_batch_size": serving.policy.preferred_batch_sizes,
        "max_queue_delay_microseconds": b.max_queue_delay_microseconds,
        "preserve_ordering": false,
        "priority_levels": b.priority_levels,
        "default_priority_level": b.default_priority_level,
        "default_queue_policy": {
            "timeout_action": "REJECT",
            "default_timeout_microseconds": b.default_timeout_microseconds,
            "allow_timeout_override": true,
            "max_queue_size": serving.policy.max_queue_size,
        },
    });
    let input: Vec<_> = meta
        .inputs
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "data_type": s.datatype.config_name(),
                "format": "FORMAT_NONE",
                "dims": s.dims,
                "is_shape_tensor": false,
                "allow_ragged_batch": false,
                "optional": false,
            })
        })
        .collect();
    let output: Vec<_> = meta
        .outputs
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "data_type": s.datatype.config_name(),
                "dims": s.dims,
                "label_filename": "",
                "is_shape_tensor": false,
            })
        })
        .collect();
    let mut parameters = json!({
        "placement": { "string_value": serving.placement.to_string() },
        "runtime": { "string_value": runtime },
    });
    // An ONNX model's backend as friday's own key too, so that this document loaded back as a
    // `config` keeps the model where it runs (`backend` above says "onnxruntime" on both, as
    // Triton's clients expect of an ONNX model).
    if matches!(runtime, "rten" | "onnxruntime") {
        parameters["backend"] = json!({ "string_value": runtime });
    }
    serde_json::to_vec(&json!({
        "name": meta.name,
        "platform": meta.platform,
        "backend": meta.backend,
        "version_policy": serving.version_policy,
        "max_batch_size": meta.max_batch_size,
        "dynamic_batching": dynamic_batching,
        "response_cache": { "enable": serving.response_cache },
        "input": input,
        "output": output,
        "batch_input": [],
        "batch_output": [],
        "instance_group": [{
            "name": meta.name,
            "kind": "KIND_CPU",
            "count": 1,
            "gpus": [],
        }],
        "default_model_filename": "",
        "parameters": parameters,
        "model_warmup": [],
        "model_transaction_policy": { "decoupled": decoupled },
    }))
    .expect("json! value serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Identity, Model, Simple};

    #[test]
    fn metadata_shapes_include_the_batch_dim() {
        let v: serde_json::Value =
            serde_json::from_slice(&model_metadata(Identity::new().metadata(), &["1"])).unwrap();
        assert_eq!(
            v,
            json!({"name":"identity","versions":["1"],"platform":"friday_builtin",
                "inputs":[{"name":"INPUT0","datatype":"FP32","shape":[-1,-1]}],
                "outputs":[{"name":"OUTPUT0","datatype":"FP32","shape":[-1,-1]}]})
        );
    }

    #[test]
    fn config_has_tritons_names() {
        let registry = crate::model::ModelRegistry::builtin();
        let simple = registry.lookup("simple", None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&model_config(
            Simple::new().metadata(),
            &simple.serving,
            false,
            "builtin",
        ))
        .unwrap();
        assert_eq!(v["dynamic_batching"]["max_queue_delay_microseconds"], 0);
        assert_eq!(
            v["dynamic_batching"]["default_queue_policy"]["max_queue_size"],
            1024
        );
        assert_eq!(v["max_batch_size"], 8);
        assert_eq!(v["input"][1]["name"], "INPUT1");
        assert_eq!(v["input"][1]["data_type"], "TYPE_INT32");
        assert_eq!(v["input"][1]["dims"], json!([16]));
        assert_eq!(v["output"][0]["data_type"], "TYPE_INT32");
    }

    #[test]
    fn server_metadata_lists_extensions() {
        let v: serde_json::Value =
            serde_json::from_slice(&server_metadata("friday", "0.1.0")).unwrap();
        assert_eq!(v["name"], "friday");
        assert_eq!(v["extensions"].as_array().unwrap().len(), EXTENSIONS.len());
    }
}
