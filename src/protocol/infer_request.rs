//! Decoding `POST …/infer` bodies: JSON, the binary tensor extension, and raw binary.
//!
//! The body is decoded against the model's metadata in one pass, so what comes out is ready to
//! run: inputs in metadata order with the declared datatypes, shapes that fit the declared dims
//! and batch size, and data whose length matches the shape. Binary tensor data is borrowed from
//! the body, never copied. Every error names the input and what was expected versus what came.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use smallvec::SmallVec;

use super::json_data::{self, decode_json_data};
use crate::error::ApiError;
use crate::http::InferenceHeader;
use crate::model::{ModelMetadata, TensorSpec};
use crate::tensor::{count_bytes_elements, element_count, DataType, Shape, Tensor};

/// One output the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputChoice {
    /// Index into the model's outputs.
    pub index: usize,
    /// Return its data in the binary tail rather than as JSON.
    pub binary: bool,
}

/// A decoded, validated infer request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest<'a> {
    /// The request id, echoed in the response.
    pub id: Option<Cow<'a, str>>,
    /// Inputs in the model's metadata order.
    pub inputs: SmallVec<[Tensor<'a>; 2]>,
    /// Outputs to return, in the order they will appear in the response.
    pub outputs: SmallVec<[OutputChoice; 2]>,
    /// Batch size: the first dimension for batched models, 1 otherwise.
    pub batch_size: usize,
    /// The `priority` parameter (schedule_policy extension; 1 is highest, 0 the default).
    pub priority: Option<u64>,
    /// The `timeout` parameter in microseconds (schedule_policy extension).
    pub timeout_us: Option<u64>,
}

impl InferRequest<'_> {
    /// The request without its inputs (a batcher took them), owning what it still borrowed, so
    /// it can wait for its batch after the bytes it arrived in are reused. Allocates only for an
    /// `id`.
    pub fn detach(self) -> InferRequest<'static> {
        InferRequest {
            id: self.id.map(|id| Cow::Owned(id.into_owned())),
            inputs: SmallVec::new(),
            outputs: self.outputs,
            batch_size: self.batch_size,
            priority: self.priority,
            timeout_us: self.timeout_us,
        }
    }
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    parameters: Option<RequestParameters>,
    #[serde(borrow)]
    inputs: SmallVec<[RawInput<'a>; 2]>,
    #[serde(borrow, default)]
    outputs: Option<SmallVec<[RawOutput<'a>; 2]>>,
}

/// Request-level parameters friday reads; others are accepted and ignored, as Triton passes
/// unknown ones to the backend.
#[derive(Deserialize, Default)]
struct RequestParameters {
    #[serde(default)]
    binary_data_output: Option<bool>,
    #[serde(default)]
    priority: Option<u64>,
    #[serde(default)]
    timeout: Option<u64>,
}

#[derive(Deserialize)]
struct RawInput<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    shape: SmallVec<[i64; 4]>,
    #[serde(borrow)]
    datatype: Cow<'a, str>,
    #[serde(default)]
    parameters: Option<InputParameters>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct InputParameters {
    #[serde(default)]
    binary_data_size: Option<u64>,
    #[serde(default)]
    shared_memory_region: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct RawOutput<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default)]
    parameters: Option<OutputParameters>,
}

#[derive(Deserialize, Default)]
struct OutputParameters {
    #[serde(default)]
    binary_data: Option<bool>,
    #[serde(default)]
    classification: Option<IgnoredAny>,
    #[serde(default)]
    shared_memory_region: Option<IgnoredAny>,
}

/// Decodes and validates an infer request body for the model described by `meta`.
pub fn decode_infer_request<'a>(
    meta: &ModelMetadata,
    body: &'a [u8],
    header: InferenceHeader,
) -> Result<InferRequest<'a>, ApiError> {
    decode_infer_request_into(meta, body, header, &mut Vec::with_capacity)
}

/// [`decode_infer_request`], taking the buffers of tensors it must decode (JSON data) from
/// `buffer`, which gives an empty buffer for at least that many bytes (the runtime's pool).
pub fn decode_infer_request_into<'a>(
    meta: &ModelMetadata,
    body: &'a [u8],
    header: InferenceHeader,
    buffer: &mut dyn FnMut(usize) -> Vec<u8>,
) -> Result<InferRequest<'a>, ApiError> {
    let (json, tail) = match header {
        InferenceHeader::Absent => (body, &[][..]),
        InferenceHeader::Length(0) => return decode_raw_binary(meta, body, buffer),
        InferenceHeader::Length(n) if n <= body.len() => body.split_at(n),
        InferenceHeader::Length(n) => {
            return Err(ApiError::invalid(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            )))
        }
        InferenceHeader::Invalid => {
            return Err(ApiError::invalid(
                "Inference-Header-Content-Length must be a non-negative integer",
            ))
        }
    };
    match serde_json::from_slice::<RawRequest<'a>>(json) {
        Ok(raw) => {
            let (mut request, id) = decode_parsed(meta, raw, tail, buffer)?;
            request.id = id;
            Ok(request)
        }
        Err(e) => {
            // Triton reads the tokens NaN, Infinity and -Infinity as numbers (RapidJSON's
            // kParseNanAndInfFlag), and Python's json writes them: spell them so serde_json
            // can read them, and try once more. Only a body that failed pays for this.
            let Some(spelled) = json_data::spell_non_finite(json) else {
                return Err(ApiError::invalid(format!(
                    "failed to parse the request JSON: {e}"
                )));
            };
            // If it still fails, the first error is the one about what the client sent.
            let raw: RawRequest<'_> = serde_json::from_slice(&spelled)
                .map_err(|_| ApiError::invalid(format!("failed to parse the request JSON: {e}")))?;
            let (mut request, id) = decode_parsed(meta, raw, tail, buffer)?;
            request.id = id.map(|id| Cow::Owned(id.into_owned()));
            Ok(request)
        }
    }
}

/// Checks a parsed request against the model and decodes its tensors; the id (borrowed from
/// the JSON, which may not be the body) is returned apart.
fn decode_parsed<'j, 'a>(
    meta: &ModelMetadata,
    raw: RawRequest<'j>,
    tail: &'a [u8],
    buffer: &mut dyn FnMut(usize) -> Vec<u8>,
) -> Result<(InferRequest<'a>, Option<Cow<'j, str>>), ApiError> {
    let params = raw.parameters.unwrap_or_default();
    let binary_default = params.binary_data_output.unwrap_or(false);

    let mut slots: SmallVec<[Option<Tensor<'a>>; 2]> = SmallVec::new();
    slots.resize(meta.inputs.len(), None);
    let mut tail_pos = 0usize;
    for input in raw.inputs {
        let (index, spec) = meta
            .inputs
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == input.name)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "unexpected inference input '{}' for model '{}': it takes {}",
                    input.name,
                    meta.name,
                    names(&meta.inputs)
                ))
            })?;
        if slots[index].is_some() {
            return Err(ApiError::invalid(format!(
                "input '{}' appears more than once",
                input.name
            )));
        }
        slots[index] = Some(decode_input(
            meta,
            spec,
            input,
            tail,
            &mut tail_pos,
            buffer,
        )?);
    }
    if tail_pos != tail.len() {
        return Err(ApiError::invalid(format!(
            "{} bytes of binary data follow the JSON header but no input claims them \
             (check binary_data_size)",
            tail.len() - tail_pos
        )));
    }
    let mut inputs = SmallVec::new();
    for (slot, spec) in slots.into_iter().zip(&meta.inputs) {
        inputs.push(slot.ok_or_else(|| {
            ApiError::invalid(format!(
                "model '{}' expects input '{}', which the request lacks",
                meta.name, spec.name
            ))
        })?);
    }
    let batch_size = batch_size(meta, &inputs)?;

    let outputs = match raw.outputs {
        None => (0..meta.outputs.len())
            .map(|index| OutputChoice {
                index,
                binary: binary_default,
            })
            .collect(),
        Some(requested) => {
            let mut chosen: SmallVec<[OutputChoice; 2]> = SmallVec::new();
            for out in requested {
                let params = out.parameters.unwrap_or_default();
                if params.classification.is_some() {
                    return Err(ApiError::invalid(format!(
                        "output '{}': the classification extension is not supported",
                        out.name
                    )));
                }
                if params.shared_memory_region.is_some() {
                    return Err(ApiError::invalid(format!(
                        "output '{}': the shared-memory extension is not supported",
                        out.name
                    )));
                }
                let index = meta
                    .outputs
                    .iter()
                    .position(|s| s.name == out.name)
                    .ok_or_else(|| {
                        ApiError::invalid(format!(
                            "unexpected inference output '{}' for model '{}': it has {}",
                            out.name,
                            meta.name,
                            names(&meta.outputs)
                        ))
                    })?;
                if chosen.iter().any(|c| c.index == index) {
                    return Err(ApiError::invalid(format!(
                        "output '{}' is requested more than once",
                        out.name
                    )));
                }
                chosen.push(OutputChoice {
                    index,
                    binary: params.binary_data.unwrap_or(binary_default),
                });
            }
            chosen
        }
    };
    let request = InferRequest {
        id: None,
        inputs,
        outputs,
        batch_size,
        priority: params.priority,
        timeout_us: params.timeout,
    };
    Ok((request, raw.id))
}

fn decode_input<'a>(
    meta: &ModelMetadata,
    spec: &TensorSpec,
    input: RawInput<'_>,
    tail: &'a [u8],
    tail_pos: &mut usize,
    buffer: &mut dyn FnMut(usize) -> Vec<u8>,
) -> Result<Tensor<'a>, ApiError> {
    let name = &input.name;
    let datatype = DataType::from_name(&input.datatype).ok_or_else(|| {
        ApiError::invalid(format!(
            "input '{name}': unknown datatype '{}'",
            input.datatype
        ))
    })?;
    if datatype != spec.datatype {
        return Err(ApiError::invalid(format!(
            "input '{name}' has datatype {}, but model '{}' expects {}",
            datatype.name(),
            meta.name,
            spec.datatype.name()
        )));
    }
    let mut shape = Shape::new();
    for &d in &input.shape {
        shape.push(usize::try_from(d).map_err(|_| {
            ApiError::invalid(format!(
                "input '{name}': shape {:?} has a negative dimension",
                input.shape.as_slice()
            ))
        })?);
    }
    check_shape(meta, spec, &shape)?;
    let count = element_count(&shape)
        .ok_or_else(|| ApiError::invalid(format!("input '{name}': shape is too large")))?;
    let params = input.parameters.unwrap_or_default();
    if params.shared_memory_region.is_some() {
        return Err(ApiError::invalid(format!(
            "input '{name}': the shared-memory extension is not supported"
        )));
    }
    let data = match (params.binary_data_size, input.data) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(format!(
                "input '{name}' has both JSON data and binary_data_size"
            )))
        }
        (None, None) => {
            return Err(ApiError::invalid(format!(
                "input '{name}' has no data: send \"data\" or binary_data_size"
            )))
        }
        (Some(size), None) => {
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            let end = tail_pos
                .checked_add(size)
                .filter(|&end| end <= tail.len())
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "input '{name}': binary_data_size {size} runs past the end of the body \
                         ({} binary bytes left)",
                        tail.len() - *tail_pos
                    ))
                })?;
            let bytes = &tail[*tail_pos..end];
            *tail_pos = end;
            check_binary_size(name, datatype, &shape, count, bytes)?;
            Cow::Borrowed(bytes)
        }
        (None, Some(raw)) => {
            // Each JSON element takes at least two characters, which bounds the reservation
            // by what the client actually sent rather than by the shape it claims.
            let elements = count.min(raw.get().len() / 2 + 1);
            let mut bytes = buffer(elements * datatype.element_size().unwrap_or(8));
            let got = decode_json_data(datatype, raw.get(), &mut bytes)
                .map_err(|e| ApiError::invalid(format!("input '{name}': {e}")))?;
            if got != count {
                return Err(ApiError::invalid(format!(
                    "input '{name}': shape {:?} has {count} elements but data has {got}",
                    shape.as_slice()
                )));
            }
            Cow::Owned(bytes)
        }
    };
    Ok(Tensor {
        datatype,
        shape,
        data,
    })
}

fn check_binary_size(
    name: &str,
    datatype: DataType,
    shape: &[usize],
    count: usize,
    bytes: &[u8],
) -> Result<(), ApiError> {
    match datatype.element_size() {
        Some(size) => {
            let expected = count.saturating_mul(size);
            if bytes.len() != expected {
                return Err(ApiError::invalid(format!(
                    "input '{name}': shape {shape:?} of {} needs {expected} bytes but \
                     binary_data_size is {}",
                    datatype.name(),
                    bytes.len()
                )));
            }
        }
        None => {
            let got = count_bytes_elements(bytes).map_err(|at| {
                ApiError::invalid(format!(
                    "input '{name}': malformed BYTES data at byte {at} (each element is a \
                     4-byte little-endian length and its bytes)"
                ))
            })?;
            if got != count {
                return Err(ApiError::invalid(format!(
                    "input '{name}': shape {shape:?} has {count} elements but the BYTES data \
                     has {got}"
                )));
            }
        }
    }
    Ok(())
}

/// Checks a request shape against the model's dims and batch rules.
fn check_shape(meta: &ModelMetadata, spec: &TensorSpec, shape: &[usize]) -> Result<(), ApiError> {
    let batched = meta.max_batch_size > 0;
    let dims = if batched { shape.get(1..) } else { Some(shape) };
    let fits = dims.is_some_and(|dims| {
        dims.len() == spec.dims.len()
            && dims
                .iter()
                .zip(&spec.dims)
                .all(|(&got, &want)| want < 0 || got as i64 == want)
    });
    if !fits {
        let mut expected: Vec<i64> = spec.dims.clone();
        if batched {
            expected.insert(0, -1);
        }
        return Err(ApiError::invalid(format!(
            "unexpected shape for input '{}' for model '{}': expected {expected:?}, got {shape:?}",
            spec.name, meta.name
        )));
    }
    if batched {
        let batch = shape[0];
        if batch == 0 || batch > meta.max_batch_size {
            return Err(ApiError::invalid(format!(
                "input '{}': batch size {batch} is outside 1..={} for model '{}'",
                spec.name, meta.max_batch_size, meta.name
            )));
        }
    }
    Ok(())
}

fn batch_size(meta: &ModelMetadata, inputs: &[Tensor<'_>]) -> Result<usize, ApiError> {
    if meta.max_batch_size == 0 {
        return Ok(1);
    }
    let first = inputs.first().map_or(1, |t| t.shape[0]);
    if let Some((t, spec)) = inputs
        .iter()
        .zip(&meta.inputs)
        .find(|(t, _)| t.shape[0] != first)
    {
        return Err(ApiError::invalid(format!(
            "input '{}' has batch size {} but '{}' has {first}: all inputs must share one batch size",
            spec.name, t.shape[0], meta.inputs[0].name
        )));
    }
    Ok(first)
}

/// `Inference-Header-Content-Length: 0`: the whole body is the data of the model's only input,
/// batch 1, and every output comes back binary.
fn decode_raw_binary<'a>(
    meta: &ModelMetadata,
    body: &'a [u8],
    buffer: &mut dyn FnMut(usize) -> Vec<u8>,
) -> Result<InferRequest<'a>, ApiError> {
    let [spec] = meta.inputs.as_slice() else {
        return Err(ApiError::invalid(format!(
            "a raw binary request (Inference-Header-Content-Length: 0) needs a model with one \
             input; '{}' has {}",
            meta.name,
            meta.inputs.len()
        )));
    };
    let mut shape = Shape::new();
    if meta.max_batch_size > 0 {
        shape.push(1);
    }
    match spec.datatype.element_size() {
        Some(size) => {
            let known: usize = spec
                .dims
                .iter()
                .filter(|&&d| d >= 0)
                .map(|&d| d as usize)
                .product();
            let wildcards = spec.dims.iter().filter(|&&d| d < 0).count();
            let total = known.checked_mul(size).filter(|&t| t > 0);
            let fill = match (wildcards, total) {
                (0, Some(t)) if body.len() == t => None,
                (1, Some(t)) if body.len().is_multiple_of(t) => Some(body.len() / t),
                _ => {
                    return Err(ApiError::invalid(format!(
                        "raw binary request: {} bytes do not fit input '{}' ({} {:?})",
                        body.len(),
                        spec.name,
                        spec.datatype.name(),
                        spec.dims
                    )))
                }
            };
            shape.extend(
                spec.dims
                    .iter()
                    .map(|&d| if d < 0 { fill.unwrap_or(0) } else { d as usize }),
            );
        }
        None => {
            if spec.dims.iter().any(|&d| d != 1 && d != -1) {
                return Err(ApiError::invalid(
                    "raw binary BYTES requests need an input of shape [1]",
                ));
            }
            let len = u32::try_from(body.len())
                .map_err(|_| ApiError::invalid("raw binary BYTES element is larger than 4 GiB"))?;
            shape.extend(spec.dims.iter().map(|_| 1));
            let mut data = buffer(body.len() + 4);
            data.extend_from_slice(&len.to_le_bytes());
            data.extend_from_slice(body);
            return Ok(raw_request(meta, shape, spec.datatype, Cow::Owned(data)));
        }
    }
    Ok(raw_request(meta, shape, spec.datatype, Cow::Borrowed(body)))
}

fn raw_request<'a>(
    meta: &ModelMetadata,
    shape: Shape,
    datatype: DataType,
    data: Cow<'a, [u8]>,
) -> InferRequest<'a> {
    InferRequest {
        id: None,
        inputs: smallvec::smallvec![Tensor {
            datatype,
            shape,
            data
        }],
        outputs: (0..meta.outputs.len())
            .map(|index| OutputChoice {
                index,
                binary: true,
            })
            .collect(),
        batch_size: 1,
        priority: None,
        timeout_us: None,
    }
}

fn names(specs: &[TensorSpec]) -> String {
    let list: Vec<String> = specs.iter().map(|s| format!("'{}'", s.name)).collect();
    list.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Identity, Model, Simple};
    use proptest::prelude::*;

    fn identity() -> ModelMetadata {
        Identity::new().metadata().clone()
    }

    fn simple() -> ModelMetadata {
        Simple::new().metadata().clone()
    }

    fn json(meta: &ModelMetadata, body: &str) -> Result<InferRequest<'static>, ApiError> {
        let body: &'static [u8] = Box::leak(body.as_bytes().to_vec().into_boxed_slice());
        decode_infer_request(meta, body, InferenceHeader::Absent)
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn json_request_decodes() {
        let r = json(
            &identity(),
            r#"{"id":"7","inputs":[{"name":"INPUT0","shape":[1,3],"datatype":"FP32","data":[[1,2,3]]}]}"#,
        )
        .unwrap();
        assert_eq!(r.id.as_deref(), Some("7"));
        assert_eq!(r.batch_size, 1);
        assert_eq!(r.inputs[0].shape.as_slice(), &[1, 3]);
        assert_eq!(&r.inputs[0].data[..], &f32_bytes(&[1.0, 2.0, 3.0])[..]);
        assert_eq!(
            r.outputs.as_slice(),
            &[OutputChoice {
                index: 0,
                binary: false
            }]
        );
    }

    #[test]
    fn schedule_parameters_are_read() {
        let r = json(
            &identity(),
            r#"{"parameters":{"priority":2,"timeout":1500,"other":"x"},"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[1]}]}"#,
        )
        .unwrap();
        assert_eq!(r.priority, Some(2));
        assert_eq!(r.timeout_us, Some(1500));
        let e = err(
            &identity(),
            r#"{"parameters":{"timeout":-1},"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[1]}]}"#,
        );
        assert!(e.contains("-1"), "{e}");
    }

    #[test]
    fn binary_request_borrows_the_tail() {
        let header = r#"{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[2,2],"parameters":{"binary_data_size":16}}],"outputs":[{"name":"OUTPUT0","parameters":{"binary_data":true}}]}"#;
        let mut body = header.as_bytes().to_vec();
        body.extend_from_slice(&f32_bytes(&[1.0, 2.0, 3.0, 4.0]));
        let r = decode_infer_request(&identity(), &body, InferenceHeader::Length(header.len()))
            .unwrap();
        assert!(matches!(r.inputs[0].data, Cow::Borrowed(_)));
        assert_eq!(r.batch_size, 2);
        assert_eq!(
            r.outputs.as_slice(),
            &[OutputChoice {
                index: 0,
                binary: true
            }]
        );
    }

    #[test]
    fn simple_orders_inputs_by_metadata() {
        let data: Vec<i32> = (0..16).collect();
        let body = format!(
            r#"{{"inputs":[{{"name":"INPUT1","shape":[1,16],"datatype":"INT32","data":{data:?}}},{{"name":"INPUT0","shape":[1,16],"datatype":"INT32","data":{data:?}}}],"parameters":{{"binary_data_output":true}}}}"#
        );
        let r = json(&simple(), &body).unwrap();
        assert_eq!(r.inputs.len(), 2);
        assert!(r.outputs.iter().all(|o| o.binary));
    }

    #[test]
    fn raw_binary_fills_the_variable_dim() {
        let body = f32_bytes(&[1.0, 2.0, 3.0]);
        let r = decode_infer_request(&identity(), &body, InferenceHeader::Length(0)).unwrap();
        assert_eq!(r.inputs[0].shape.as_slice(), &[1, 3]);
        assert!(r.outputs[0].binary);
        assert!(decode_infer_request(&simple(), &body, InferenceHeader::Length(0)).is_err());
        assert!(decode_infer_request(&identity(), &body[..5], InferenceHeader::Length(0)).is_err());
    }

    fn err(meta: &ModelMetadata, body: &str) -> String {
        let e = json(meta, body).unwrap_err();
        assert_eq!(e.status(), 400, "{}", e.message);
        e.message.into_owned()
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let id = identity();
        let cases: &[(&str, &str)] = &[
            ("{", "failed to parse the request JSON"),
            (r#"{"inputs":[]}"#, "lacks"),
            (
                r#"{"inputs":[{"name":"X","shape":[1],"datatype":"FP32","data":[1]}]}"#,
                "unexpected inference input 'X'",
            ),
            (
                r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"INT32","data":[1]}]}"#,
                "expects FP32",
            ),
            (
                r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP33","data":[1]}]}"#,
                "unknown datatype",
            ),
            (
                r#"{"inputs":[{"name":"INPUT0","shape":[1,3],"datatype":"FP32","data":[1,2]}]}"#,
                "has 3 elements but data has 2",
            ),
            (
                r#"{"inputs":[{"name":"INPUT0","shape":[1,-3],"datatype":"FP32","data":[1]}]}"#,
                "negative",
            ),
            (
                r#"{"inputs":[{"name":"INPUT0","shape":[3],"datatype":"FP32","data":[1,2,3]}]}"#,
                "unexpected shape",
            ),
            (
                r#"{"inputs":[{"name":"INPUT0","shape":[65,1],"datatype":"FP32","data":[1]}]}"#,
                "batch size 65",
            ),
            (
                r#"{"inputs":[{"name":"INPUT0","shape":[0,1],"datatype":"FP32","data":[]}]}"#,
                "batch size 0",
            ),
            (
                r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32"}]}"#,
                "has no data",
            ),
            (
                r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":["a"]}]}"#,
                "got string",
            ),
            (
                r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[1]},{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[1]}]}"#,
                "more than once",
            ),
            (
                r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[1]}],"outputs":[{"name":"NOPE"}]}"#,
                "unexpected inference output 'NOPE'",
            ),
            (
                r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[1],"parameters":{"binary_data_size":4}}]}"#,
                "both JSON data and binary_data_size",
            ),
            (
                r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#,
                "runs past the end",
            ),
        ];
        for (body, want) in cases {
            let got = err(&id, body);
            assert!(got.contains(want), "{body}\n  wanted: {want}\n  got: {got}");
        }
        let data: Vec<i32> = (0..16).collect();
        let body = format!(
            r#"{{"inputs":[{{"name":"INPUT0","shape":[1,16],"datatype":"INT32","data":{data:?}}},{{"name":"INPUT1","shape":[2,16],"datatype":"INT32","data":{:?}}}]}}"#,
            [data.clone(), data.clone()].concat()
        );
        assert!(err(&simple(), &body).contains("batch size"));
    }

    #[test]
    fn binary_size_must_match_the_shape() {
        let header = r#"{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,3],"parameters":{"binary_data_size":8}}]}"#;
        let mut body = header.as_bytes().to_vec();
        body.extend_from_slice(&[0u8; 8]);
        let e = decode_infer_request(&identity(), &body, InferenceHeader::Length(header.len()))
            .unwrap_err();
        assert!(e.message.contains("needs 12 bytes"), "{}", e.message);
        let header = r#"{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,2],"parameters":{"binary_data_size":8}}]}"#;
        let mut body = header.as_bytes().to_vec();
        body.extend_from_slice(&[0u8; 12]);
        let e = decode_infer_request(&identity(), &body, InferenceHeader::Length(header.len()))
            .unwrap_err();
        assert!(
            e.message.contains("4 bytes of binary data"),
            "{}",
            e.message
        );
        let e =
            decode_infer_request(&identity(), &body, InferenceHeader::Length(10_000)).unwrap_err();
        assert!(e.message.contains("only"), "{}", e.message);
        let e = decode_infer_request(&identity(), &body, InferenceHeader::Invalid).unwrap_err();
        assert_eq!(e.status(), 400);
    }

    proptest! {
        #[test]
        fn any_body_is_a_request_or_an_error(body in proptest::collection::vec(any::<u8>(), 0..300), split in proptest::option::of(0usize..300)) {
            let header = match split { Some(n) => InferenceHeader::Length(n), None => InferenceHeader::Absent };
            for meta in [identity(), simple()] {
                if let Ok(r) = decode_infer_request(&meta, &body, header) {
                    prop_assert_eq!(r.inputs.len(), meta.inputs.len());
                }
            }
        }

        #[test]
        fn valid_binary_requests_round_trip(values in proptest::collection::vec(any::<f32>(), 1..64), batch in 1usize..4) {
            let per = values.len();
            let all: Vec<f32> = std::iter::repeat_n(values.iter().copied(), batch).flatten().collect();
            let tail = f32_bytes(&all);
            let header = format!(r#"{{"inputs":[{{"name":"INPUT0","datatype":"FP32","shape":[{batch},{per}],"parameters":{{"binary_data_size":{}}}}}]}}"#, tail.len());
            let mut body = header.clone().into_bytes();
            body.extend_from_slice(&tail);
            let r = decode_infer_request(&identity(), &body, InferenceHeader::Length(header.len())).unwrap();
            prop_assert_eq!(r.batch_size, batch);
            prop_assert_eq!(&r.inputs[0].data[..], &tail[..]);
        }
    }
}
