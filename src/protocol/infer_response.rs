//! Encoding infer responses: the JSON header (with JSON data for non-binary outputs), plus the
//! binary tails for outputs the client asked to receive as binary.
//!
//! The JSON part is written into a caller buffer; binary outputs are returned as slices of the
//! model's output tensors, so the connection copies them exactly once, into the socket buffer.

use serde::Serialize;
use smallvec::SmallVec;

use super::infer_request::InferRequest;
use super::json_data::{to_writer_triton, JsonData};
use crate::error::ApiError;
use crate::model::ModelMetadata;
use crate::tensor::{count_bytes_elements, element_count, Tensor};

#[derive(Serialize)]
struct ResponseHeader<'r> {
    model_name: &'r str,
    model_version: &'r str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'r str>,
    outputs: SmallVec<[OutputEntry<'r>; 2]>,
}

#[derive(Serialize)]
struct OutputEntry<'r> {
    name: &'r str,
    datatype: &'static str,
    shape: &'r [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'r>>,
}

#[derive(Serialize)]
struct BinaryParameters {
    binary_data_size: usize,
}

/// Binary output data to send after the JSON header, in response order.
pub type Tails<'t> = SmallVec<[&'t [u8]; 2]>;

/// Writes the response header for `outputs` (the model's outputs, in metadata order) into `json`
/// and returns the binary tails. An output whose size disagrees with its shape is a model bug and
/// answers 500 rather than sending a corrupt tensor.
pub fn encode_infer_response<'t>(
    meta: &'t ModelMetadata,
    version: &'t str,
    request: &'t InferRequest<'_>,
    outputs: &'t [Tensor<'_>],
    json: &mut Vec<u8>,
) -> Result<Tails<'t>, ApiError> {
    let mut entries = SmallVec::new();
    let mut tails = Tails::new();
    for choice in &request.outputs {
        let spec = &meta.outputs[choice.index];
        let tensor = outputs.get(choice.index).ok_or_else(|| {
            ApiError::internal(format!(
                "model '{}' returned {} outputs but declares {}",
                meta.name,
                outputs.len(),
                meta.outputs.len()
            ))
        })?;
        check_output(&meta.name, &spec.name, tensor)?;
        let data: &'t [u8] = &tensor.data;
        entries.push(OutputEntry {
            name: &spec.name,
            datatype: tensor.datatype.name(),
            shape: &tensor.shape,
            parameters: choice.binary.then_some(BinaryParameters {
                binary_data_size: data.len(),
            }),
            data: (!choice.binary).then_some(JsonData {
                datatype: tensor.datatype,
                data,
            }),
        });
        if choice.binary {
            tails.push(data);
        }
    }
    let header = ResponseHeader {
        model_name: &meta.name,
        model_version: version,
        id: request.id.as_deref().filter(|id| !id.is_empty()),
        outputs: entries,
    };
    json.clear();
    to_writer_triton(&mut *json, &header).map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(tails)
}

fn check_output(model: &str, name: &str, t: &Tensor<'_>) -> Result<(), ApiError> {
    let count = element_count(&t.shape);
    let ok = match t.datatype.element_size() {
        Some(size) => count.and_then(|c| c.checked_mul(size)) == Some(t.data.len()),
        None => count.is_some() && count_bytes_elements(&t.data).ok() == count,
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::internal(format!(
            "model '{model}' produced output '{name}' whose {} bytes do not match shape {:?}",
            t.data.len(),
            t.shape.as_slice()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::InferenceHeader;
    use crate::model::{Identity, Model, Simple};
    use crate::protocol::decode_infer_request;

    #[test]
    fn json_outputs_are_inline() {
        let model = Identity::new();
        let body = br#"{"id":"abc","inputs":[{"name":"INPUT0","shape":[1,2],"datatype":"FP32","data":[1.5,2]}]}"#;
        let req = decode_infer_request(model.metadata(), body, InferenceHeader::Absent).unwrap();
        let out = model.infer(&req.inputs).unwrap();
        let mut json = Vec::new();
        let tails = encode_infer_response(model.metadata(), "1", &req, &out, &mut json).unwrap();
        assert!(tails.is_empty());
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"model_name":"identity","model_version":"1","id":"abc",
                "outputs":[{"name":"OUTPUT0","datatype":"FP32","shape":[1,2],"data":[1.5,2.0]}]})
        );
    }

    #[test]
    fn binary_outputs_go_to_the_tail() {
        let model = Simple::new();
        let a: Vec<i32> = (0..16).collect();
        let body = format!(
            r#"{{"inputs":[{{"name":"INPUT0","shape":[1,16],"datatype":"INT32","data":{a:?}}},{{"name":"INPUT1","shape":[1,16],"datatype":"INT32","data":{a:?}}}],"outputs":[{{"name":"OUTPUT1","parameters":{{"binary_data":true}}}},{{"name":"OUTPUT0"}}]}}"#
        );
        let req = decode_infer_request(model.metadata(), body.as_bytes(), InferenceHeader::Absent)
            .unwrap();
        let out = model.infer(&req.inputs).unwrap();
        let mut json = Vec::new();
        let tails = encode_infer_response(model.metadata(), "1", &req, &out, &mut json).unwrap();
        assert_eq!(tails.len(), 1);
        assert_eq!(tails[0], &[0u8; 64][..], "OUTPUT1 = a - a = 0");
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["outputs"][0]["name"], "OUTPUT1");
        assert_eq!(v["outputs"][0]["parameters"]["binary_data_size"], 64);
        assert_eq!(v["outputs"][1]["name"], "OUTPUT0");
        assert_eq!(v["outputs"][1]["data"][3], 6);
        assert!(v.get("id").is_none());
    }

    #[test]
    fn a_model_that_lies_about_its_shape_is_a_500() {
        let model = Identity::new();
        let body =
            br#"{"inputs":[{"name":"INPUT0","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#;
        let req = decode_infer_request(model.metadata(), body, InferenceHeader::Absent).unwrap();
        let mut out = model.infer(&req.inputs).unwrap();
        out[0].shape = smallvec::smallvec![1, 3];
        let e =
            encode_infer_response(model.metadata(), "1", &req, &out, &mut Vec::new()).unwrap_err();
        assert_eq!(e.status(), 500);
    }
}
