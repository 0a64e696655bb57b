//! Encoding infer responses: the JSON header (with JSON data for non-binary outputs), plus the
//! binary tails for outputs the client asked to receive as binary.
//!
//! The JSON part is written into a caller buffer; binary outputs are returned as slices of the
//! model's output tensors, which the connection copies at most once (large ones go to the socket
//! from where they lie). The JSON data of large outputs can be left out of the header, for the
//! connection to write a slice at a time.

use serde::Serialize;
use smallvec::SmallVec;

use super::infer_request::InferRequest;
use super::json_data::{to_writer_triton, JsonData};
use crate::error::ApiError;
use crate::model::ModelMetadata;
use crate::tensor::{count_bytes_elements, element_count, DataType, Tensor};

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

/// The JSON data of a large output, left out of the header: its elements go at byte `at` of it,
/// between the brackets of its `"data"` array (see [`encode_infer_response`]).
#[derive(Debug)]
pub struct LeftOut<'t> {
    /// Where in the header its elements go.
    pub at: usize,
    /// Its element type.
    pub datatype: DataType,
    /// Its binary layout.
    pub data: &'t [u8],
}

/// An encoded response: the binary tails, and the large JSON data left out of the header.
#[derive(Debug, Default)]
pub struct Encoded<'t> {
    /// Binary outputs, to follow the header.
    pub tails: Tails<'t>,
    /// Large JSON data left out of the header, in order.
    pub left_out: SmallVec<[LeftOut<'t>; 1]>,
}

/// Writes the response header for `outputs` (the model's outputs, in metadata order) into `json`
/// and returns the binary tails. An output whose size disagrees with its shape is a model bug and
/// answers 500 rather than sending a corrupt tensor.
///
/// The JSON data of an output of `leave_out_min` bytes or more (of a fixed-size datatype, in a
/// response with no binary output, whose header length would have to be known) is left out: the
/// header holds an empty `"data": []` and [`Encoded::left_out`] says where its elements go, so
/// that the caller can write them a slice at a time instead of holding its thread for the whole
/// tensor. `usize::MAX` leaves nothing out.
pub fn encode_infer_response<'t>(
    meta: &'t ModelMetadata,
    version: &'t str,
    request: &'t InferRequest<'_>,
    outputs: &'t [Tensor<'_>],
    json: &mut Vec<u8>,
    leave_out_min: usize,
) -> Result<Encoded<'t>, ApiError> {
    let mut entries: SmallVec<[OutputEntry<'t>; 2]> = SmallVec::new();
    let mut encoded = Encoded::default();
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
            encoded.tails.push(data);
        }
    }
    let id = request.id.as_deref().filter(|id| !id.is_empty());
    json.clear();
    let large = |e: &OutputEntry<'_>| {
        e.data
            .as_ref()
            .is_some_and(|d| d.data.len() >= leave_out_min && d.datatype.element_size().is_some())
    };
    if !encoded.tails.is_empty() || !entries.iter().any(large) {
        let header = ResponseHeader {
            model_name: &meta.name,
            model_version: version,
            id,
            outputs: entries,
        };
        to_writer_triton(&mut *json, &header).map_err(|e| ApiError::invalid(e.to_string()))?;
        return Ok(encoded);
    }
    // The same document, written a part at a time so that the large outputs' elements can be
    // left out where they belong.
    let start = ResponseHeader {
        model_name: &meta.name,
        model_version: version,
        id,
        outputs: SmallVec::new(),
    };
    let fail = |e: serde_json::Error| ApiError::invalid(e.to_string());
    to_writer_triton(&mut *json, &start).map_err(fail)?;
    json.truncate(json.len() - br#"[]}"#.len());
    json.push(b'[');
    for (i, mut entry) in entries.into_iter().enumerate() {
        if i > 0 {
            json.push(b',');
        }
        if !large(&entry) {
            to_writer_triton(&mut *json, &entry).map_err(fail)?;
            continue;
        }
        let data = entry.data.take().expect("a large entry has JSON data");
        to_writer_triton(&mut *json, &entry).map_err(fail)?;
        json.pop();
        json.extend_from_slice(br#","data":["#);
        encoded.left_out.push(LeftOut {
            at: json.len(),
            datatype: data.datatype,
            data: data.data,
        });
        json.extend_from_slice(b"]}");
    }
    json.extend_from_slice(b"]}");
    Ok(encoded)
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
    use crate::protocol::json_data::write_json_elements;

    #[test]
    fn json_outputs_are_inline() {
        let model = Identity::new();
        let body = br#"{"id":"abc","inputs":[{"name":"INPUT0","shape":[1,2],"datatype":"FP32","data":[1.5,2]}]}"#;
        let req = decode_infer_request(model.metadata(), body, InferenceHeader::Absent).unwrap();
        let out = model.infer(&req.inputs).unwrap();
        let mut json = Vec::new();
        let enc = encode_infer_response(model.metadata(), "1", &req, &out, &mut json, usize::MAX)
            .unwrap();
        assert!(enc.tails.is_empty() && enc.left_out.is_empty());
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
        // Nothing is left out of a header whose length must be known (binary outputs follow it).
        let enc = encode_infer_response(model.metadata(), "1", &req, &out, &mut json, 0).unwrap();
        assert!(enc.left_out.is_empty());
        let tails = enc.tails;
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
        let e = encode_infer_response(model.metadata(), "1", &req, &out, &mut Vec::new(), 0)
            .unwrap_err();
        assert_eq!(e.status(), 500);
    }

    #[test]
    fn large_json_data_left_out_and_written_in_slices_is_the_same_document() {
        let model = Simple::new();
        let a: Vec<i32> = (0..16).map(|i| i * 1000 - 7).collect();
        let body = format!(
            r#"{{"id":"x","inputs":[{{"name":"INPUT0","shape":[1,16],"datatype":"INT32","data":{a:?}}},{{"name":"INPUT1","shape":[1,16],"datatype":"INT32","data":{a:?}}}]}}"#
        );
        let req = decode_infer_request(model.metadata(), body.as_bytes(), InferenceHeader::Absent)
            .unwrap();
        let out = model.infer(&req.inputs).unwrap();
        let mut whole = Vec::new();
        encode_infer_response(model.metadata(), "1", &req, &out, &mut whole, usize::MAX).unwrap();
        for slice in [1, 3, 16] {
            let mut json = Vec::new();
            let enc =
                encode_infer_response(model.metadata(), "1", &req, &out, &mut json, 64).unwrap();
            assert_eq!(enc.left_out.len(), 2, "both 64-byte outputs are left out");
            let mut spliced = Vec::new();
            let mut from = 0;
            for part in &enc.left_out {
                spliced.extend_from_slice(&json[from..part.at]);
                for (i, chunk) in part.data.chunks(slice * 4).enumerate() {
                    if i > 0 {
                        spliced.push(b',');
                    }
                    write_json_elements(part.datatype, chunk, &mut spliced);
                }
                from = part.at;
            }
            spliced.extend_from_slice(&json[from..]);
            assert_eq!(
                String::from_utf8(spliced).unwrap(),
                String::from_utf8(whole.clone()).unwrap()
            );
        }
    }
}
