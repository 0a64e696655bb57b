//! Triton's `config.pbtxt`: a `ModelConfig` in the protobuf text format, read against Triton's
//! schema (`proto/model_config.proto`, compiled by `build.rs`) with prost-reflect, so that a
//! file Triton accepts parses here and a malformed one fails with its line and column.
//!
//! friday acts on:
//! - `name` (must match the folder), `default_model_filename`;
//! - `platform: "onnxruntime_onnx"` (rten, or ONNX Runtime for a model rten cannot run) and
//!   `backend: "onnxruntime"` (ONNX Runtime);
//! - `max_batch_size`, `version_policy`;
//! - `input` and `output`: `name`, `data_type`, `dims`, `reshape` (checked against the ONNX graph
//!   and used as the served signature);
//! - `dynamic_batching`: `preferred_batch_size`, `max_queue_delay_microseconds`,
//!   `priority_levels`, `default_priority_level`, and `default_queue_policy`'s `max_queue_size`
//!   and `default_timeout_microseconds`;
//! - `model_warmup` (zero, random or file data);
//! - `parameters { key: "placement" value { string_value: "inline" | "worker" } }` and
//!   `parameters { key: "backend" value { string_value: "rten" | "onnxruntime" } }`.
//!
//! Every other field that is set is returned in [`ModelConfigFile::ignored`] for the loader to
//! log: never silently dropped.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::{Map, Value};

use crate::config::{DynamicBatching, ModelSettings, OnnxBackend, Placement, VersionPolicy};
use crate::tensor::DataType;

/// Triton's schema, compiled by `build.rs`.
static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/model_config.bin"));

/// One input or output as `config.pbtxt` declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorDecl {
    /// Its name in the model.
    pub name: String,
    /// Its element type.
    pub datatype: DataType,
    /// Its dimensions without the batch dimension; -1 is any size.
    pub dims: Vec<i64>,
    /// The shape the model itself takes or gives, if it differs from `dims`.
    pub reshape: Option<Vec<i64>>,
}

/// Where a warm-up input's values come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WarmupData {
    /// Zeros (empty strings for BYTES).
    Zero,
    /// Random values.
    Random,
    /// The raw bytes of this file, in the model folder's `warmup/` folder.
    File(String),
}

/// One input of a warm-up sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmupInput {
    /// The input's name.
    pub name: String,
    /// Its element type.
    pub datatype: DataType,
    /// Its dimensions without the batch dimension.
    pub dims: Vec<i64>,
    /// Its values.
    pub data: WarmupData,
}

/// A `model_warmup` entry: requests the model runs before it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmupSample {
    /// Its name, for the log.
    pub name: String,
    /// Items per request (0 for a model without a batch dimension).
    pub batch_size: usize,
    /// Its inputs.
    pub inputs: Vec<WarmupInput>,
    /// How many times it runs.
    pub count: usize,
}

/// What friday takes from a `config.pbtxt`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelConfigFile {
    /// Serving settings, as `[models.<name>]` would give them.
    pub settings: ModelSettings,
    /// Declared inputs (empty: completed from the ONNX graph).
    pub inputs: Vec<TensorDecl>,
    /// Declared outputs (empty: completed from the ONNX graph).
    pub outputs: Vec<TensorDecl>,
    /// Warm-up samples (empty: friday's own warm-up).
    pub warmup: Vec<WarmupSample>,
    /// The model file's name in a version folder, if not `model.onnx`.
    pub default_model_filename: Option<String>,
    /// Fields that are set but that friday does not act on, as dotted paths.
    pub ignored: Vec<String>,
}

fn model_config_descriptor() -> &'static MessageDescriptor {
    static DESC: OnceLock<MessageDescriptor> = OnceLock::new();
    DESC.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTORS)
            .expect("build.rs wrote a valid descriptor set")
            .get_message_by_name("inference.ModelConfig")
            .expect("the schema declares inference.ModelConfig")
    })
}

/// Reads `text` (a `config.pbtxt`) for the model in folder `folder_name`.
pub fn parse(text: &str, folder_name: &str) -> Result<ModelConfigFile, String> {
    let text = colons_before_lists(text);
    let message = DynamicMessage::parse_text_format(model_config_descriptor().clone(), &text)
        .map_err(|e| {
            let at = miette::Diagnostic::labels(&e)
                .and_then(|mut l| l.next())
                .map(|l| l.offset());
            match at {
                Some(offset) => {
                    let (line, col) = line_col(&text, offset);
                    format!("line {line}, column {col}: {e}")
                }
                None => {
                    let (line, col) = line_col(&text, text.len());
                    format!("line {line}, column {col} (the end of the file): {e}")
                }
            }
        })?;
    let sets_max_batch_size = top_level_names(&text).any(|n| n == "max_batch_size");
    interpret_message(&message, folder_name, sets_max_batch_size)
}

/// Reads a load request's `config` parameter (Triton's model configuration as JSON, field names
/// as in the schema or in their JSON form) for model `model`.
pub fn parse_json(text: &str, model: &str) -> Result<ModelConfigFile, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let message = DynamicMessage::deserialize(model_config_descriptor().clone(), &mut de)
        .map_err(|e| e.to_string())?;
    let sets_max_batch_size = serde_json::from_str::<Map<String, Value>>(text)
        .is_ok_and(|m| m.contains_key("max_batch_size") || m.contains_key("maxBatchSize"));
    interpret_message(&message, model, sets_max_batch_size)
}

/// `message` as friday's settings; `sets_max_batch_size`: the text sets `max_batch_size`, which
/// proto3 cannot tell when it sets it to 0 (no batch dimension, as opposed to no setting at all:
/// complete it from the graph).
fn interpret_message(
    message: &DynamicMessage,
    folder_name: &str,
    sets_max_batch_size: bool,
) -> Result<ModelConfigFile, String> {
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false);
    let json = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| format!("cannot read the configuration: {e}"))?;
    let Value::Object(mut doc) = json else {
        return Err("the configuration is not a message".to_string());
    };
    let mut c = interpret(&mut doc, folder_name)?;
    if c.settings.max_batch_size.is_none() && sets_max_batch_size {
        c.settings.max_batch_size = Some(0);
    }
    Ok(c)
}

/// The field names at the top level of a text-format message (outside strings, comments and
/// nested messages).
fn top_level_names(text: &str) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut depth = 0usize;
    let mut after_colon = false;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            let c = bytes[i];
            match c {
                b'"' | b'\'' => {
                    i += 1;
                    while i < bytes.len() && bytes[i] != c {
                        i += if bytes[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 1;
                    after_colon = false;
                }
                b'#' => {
                    i = text[i..].find('\n').map_or(bytes.len(), |n| i + n);
                }
                b'{' | b'<' | b'[' => {
                    depth += 1;
                    i += 1;
                    after_colon = false;
                }
                b'}' | b'>' | b']' => {
                    depth = depth.saturating_sub(1);
                    i += 1;
                }
                b':' => {
                    after_colon = true;
                    i += 1;
                }
                c if c.is_ascii_alphabetic() || c == b'_' => {
                    let start = i;
                    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_')
                    {
                        i += 1;
                    }
                    let was_value = std::mem::take(&mut after_colon);
                    if depth == 0 && !was_value {
                        return Some(&text[start..i]);
                    }
                }
                _ => i += 1,
            }
        }
        None
    })
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Triton's files write a list of messages as `input [ { … } ]`, with no colon; the text format
/// allows that, and prost-reflect 0.16 asks for the colon. This puts one between every field
/// name and the `[` that follows it (in place of a space where there is one, so that line and
/// column numbers in errors stay right), leaving strings and comments alone.
fn colons_before_lists(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 16);
    let mut i = 0;
    // The last significant character written: an identifier after ':' is a value, not a name.
    let mut last_significant = b'{';
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' || c == b'\'' {
            let start = i;
            i += 1;
            while i < bytes.len() && bytes[i] != c {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(bytes.len());
            out.push_str(&text[start..i]);
            last_significant = c;
        } else if c == b'#' {
            let end = text[i..].find('\n').map_or(bytes.len(), |n| i + n);
            out.push_str(&text[i..end]);
            i = end;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push_str(&text[start..i]);
            let is_name = last_significant != b':';
            last_significant = b'a';
            // Whitespace (and comments) up to the next significant character.
            let mut j = i;
            loop {
                while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                    j += 1;
                }
                if j < bytes.len() && bytes[j] == b'#' {
                    j = text[j..].find('\n').map_or(bytes.len(), |n| j + n);
                    continue;
                }
                break;
            }
            if is_name && j < bytes.len() && bytes[j] == b'[' {
                let gap = &text[i..j];
                match gap.find([' ', '\t']) {
                    Some(k) if !gap[..k].contains('#') => {
                        out.push_str(&gap[..k]);
                        out.push(':');
                        out.push_str(&gap[k + 1..]);
                    }
                    _ => {
                        out.push(':');
                        out.push_str(gap);
                    }
                }
                i = j;
            }
        } else {
            if !c.is_ascii_whitespace() {
                last_significant = c;
            }
            let len = text[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&text[i..i + len]);
            i += len;
        }
    }
    out
}

fn take(doc: &mut Map<String, Value>, key: &str) -> Option<Value> {
    doc.remove(key)
}

fn take_u64(doc: &mut Map<String, Value>, key: &str) -> Result<Option<u64>, String> {
    match take(doc, key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .map(Some)
            .ok_or_else(|| format!("{key} must be a non-negative integer, not {v}")),
    }
}

fn take_str(doc: &mut Map<String, Value>, key: &str) -> Option<String> {
    take(doc, key).and_then(|v| v.as_str().map(str::to_string))
}

fn take_dims(doc: &mut Map<String, Value>, key: &str) -> Result<Vec<i64>, String> {
    match take(doc, key) {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|d| {
                d.as_i64()
                    .or_else(|| d.as_str().and_then(|s| s.parse().ok()))
                    .ok_or_else(|| format!("{key} holds {d}, not an integer"))
            })
            .collect(),
        Some(v) => Err(format!("{key} must be a list, not {v}")),
    }
}

fn datatype(doc: &mut Map<String, Value>, what: &str) -> Result<DataType, String> {
    let t = take_str(doc, "data_type").unwrap_or_else(|| "TYPE_INVALID".to_string());
    DataType::from_config_name(&t)
        .ok_or_else(|| format!("{what}: data_type {t} is not a datatype friday knows"))
}

/// Records what is left of `v` (under `path`) as ignored.
fn leftovers(path: &str, v: Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                leftovers(&format!("{path}.{k}"), v, out);
            }
        }
        Value::Object(_) => {}
        _ => out.push(path.to_string()),
    }
}

fn tensors(
    doc: &mut Map<String, Value>,
    key: &str,
    ignored: &mut Vec<String>,
) -> Result<Vec<TensorDecl>, String> {
    let Some(list) = take(doc, key) else {
        return Ok(Vec::new());
    };
    let Value::Array(list) = list else {
        return Err(format!("{key} must be a list"));
    };
    list.into_iter()
        .enumerate()
        .map(|(i, t)| {
            let Value::Object(mut t) = t else {
                return Err(format!("{key}[{i}] must be a message"));
            };
            let name = take_str(&mut t, "name").ok_or_else(|| format!("{key}[{i}] has no name"))?;
            let what = format!("{key} '{name}'");
            let datatype = datatype(&mut t, &what)?;
            let dims = take_dims(&mut t, "dims")?;
            let reshape = match take(&mut t, "reshape") {
                Some(Value::Object(mut r)) => Some(take_dims(&mut r, "shape")?),
                _ => None,
            };
            if take(&mut t, "format").is_some_and(|f| f != "FORMAT_NONE") {
                ignored.push(format!("{key}[{i}].format"));
            }
            leftovers(&format!("{key}[{i}]"), Value::Object(t), ignored);
            Ok(TensorDecl {
                name,
                datatype,
                dims,
                reshape,
            })
        })
        .collect()
}

fn dynamic_batching(
    mut b: Map<String, Value>,
    ignored: &mut Vec<String>,
) -> Result<DynamicBatching, String> {
    let mut d = DynamicBatching::default();
    if let Some(p) = take(&mut b, "preferred_batch_size") {
        d.preferred_batch_size = serde_json::from_value(p)
            .map_err(|e| format!("dynamic_batching.preferred_batch_size: {e}"))?;
    }
    if let Some(v) = take_u64(&mut b, "max_queue_delay_microseconds")? {
        d.max_queue_delay_microseconds = v;
    }
    if let Some(v) = take_u64(&mut b, "priority_levels")? {
        d.priority_levels = u32::try_from(v).map_err(|_| "priority_levels is too large")?;
    }
    if let Some(v) = take_u64(&mut b, "default_priority_level")? {
        d.default_priority_level =
            u32::try_from(v).map_err(|_| "default_priority_level is too large")?;
    }
    if let Some(Value::Object(mut q)) = take(&mut b, "default_queue_policy") {
        if let Some(v) = take_u64(&mut q, "max_queue_size")? {
            d.max_queue_size = v as usize;
        }
        if let Some(v) = take_u64(&mut q, "default_timeout_microseconds")? {
            d.default_timeout_microseconds = v;
        }
        leftovers(
            "dynamic_batching.default_queue_policy",
            Value::Object(q),
            ignored,
        );
    }
    leftovers("dynamic_batching", Value::Object(b), ignored);
    Ok(d)
}

fn version_policy(p: Value) -> Result<VersionPolicy, String> {
    // The JSON form of the oneof is Triton's and friday's: {"latest": {"num_versions": 2}}.
    let mut p = p;
    if let Some(latest) = p.get_mut("latest").and_then(Value::as_object_mut) {
        latest.entry("num_versions").or_insert(Value::from(1));
    }
    serde_json::from_value(p).map_err(|e| format!("version_policy: {e}"))
}

fn warmup(list: Value, ignored: &mut Vec<String>) -> Result<Vec<WarmupSample>, String> {
    let Value::Array(list) = list else {
        return Err("model_warmup must be a list".to_string());
    };
    list.into_iter()
        .enumerate()
        .map(|(i, w)| {
            let Value::Object(mut w) = w else {
                return Err(format!("model_warmup[{i}] must be a message"));
            };
            let name = take_str(&mut w, "name").unwrap_or_else(|| format!("sample {i}"));
            let batch_size = take_u64(&mut w, "batch_size")?.unwrap_or(0) as usize;
            let count = take_u64(&mut w, "count")?.unwrap_or(1).max(1) as usize;
            let mut inputs = Vec::new();
            if let Some(Value::Object(m)) = take(&mut w, "inputs") {
                for (input, v) in m {
                    let Value::Object(mut v) = v else {
                        return Err(format!(
                            "model_warmup '{name}': input '{input}' must be a message"
                        ));
                    };
                    let what = format!("model_warmup '{name}' input '{input}'");
                    let datatype = datatype(&mut v, &what)?;
                    let dims = take_dims(&mut v, "dims")?;
                    let data = if let Some(file) = take_str(&mut v, "input_data_file") {
                        WarmupData::File(file)
                    } else if take(&mut v, "random_data").is_some() {
                        WarmupData::Random
                    } else {
                        take(&mut v, "zero_data");
                        WarmupData::Zero
                    };
                    leftovers(
                        &format!("model_warmup[{i}].inputs.{input}"),
                        Value::Object(v),
                        ignored,
                    );
                    inputs.push(WarmupInput {
                        name: input,
                        datatype,
                        dims,
                        data,
                    });
                }
            }
            leftovers(&format!("model_warmup[{i}]"), Value::Object(w), ignored);
            Ok(WarmupSample {
                name,
                batch_size,
                inputs,
                count,
            })
        })
        .collect()
}

fn interpret(doc: &mut Map<String, Value>, folder_name: &str) -> Result<ModelConfigFile, String> {
    let mut c = ModelConfigFile::default();
    if let Some(name) = take_str(doc, "name") {
        if name != folder_name {
            return Err(format!(
                "its name is '{name}' but its folder is '{folder_name}': they must match"
            ));
        }
    }
    let platform = take_str(doc, "platform");
    let backend = take_str(doc, "backend");
    let onnx = platform.as_deref().is_none_or(|p| p == "onnxruntime_onnx")
        && backend.as_deref().is_none_or(|b| b == "onnxruntime");
    if !onnx {
        return Err(format!(
            "it asks for {}; friday serves ONNX models (platform \"onnxruntime_onnx\" or backend \
             \"onnxruntime\")",
            match (&platform, &backend) {
                (Some(p), _) if p != "onnxruntime_onnx" => format!("platform \"{p}\""),
                (_, Some(b)) => format!("backend \"{b}\""),
                _ => "another backend".to_string(),
            }
        ));
    }
    if let Some(n) = take_u64(doc, "max_batch_size")? {
        c.settings.max_batch_size = Some(n as usize);
    }
    if let Some(p) = take(doc, "version_policy") {
        c.settings.version_policy = Some(version_policy(p)?);
    }
    c.inputs = tensors(doc, "input", &mut c.ignored)?;
    c.outputs = tensors(doc, "output", &mut c.ignored)?;
    if let Some(Value::Object(b)) = take(doc, "dynamic_batching") {
        c.settings.dynamic_batching = Some(dynamic_batching(b, &mut c.ignored)?);
    }
    if let Some(Value::Object(mut r)) = take(doc, "response_cache") {
        c.settings.response_cache = Some(take(&mut r, "enable") == Some(Value::Bool(true)));
        leftovers("response_cache", Value::Object(r), &mut c.ignored);
    }
    if let Some(w) = take(doc, "model_warmup") {
        c.warmup = warmup(w, &mut c.ignored)?;
    }
    if let Some(f) = take_str(doc, "default_model_filename") {
        if f.is_empty() || f.contains(['/', '\\']) || f == "." || f == ".." {
            return Err(format!(
                "default_model_filename '{f}' must be a file name in the version folder"
            ));
        }
        c.default_model_filename = Some(f);
    }
    if let Some(Value::Object(mut params)) = take(doc, "parameters") {
        if let Some(Value::Object(mut p)) = take(&mut params, "placement") {
            let value = take_str(&mut p, "string_value").unwrap_or_default();
            c.settings.placement = Some(match value.as_str() {
                "inline" => Placement::Inline,
                "worker" => Placement::Worker,
                other => {
                    return Err(format!(
                        "parameters placement is '{other}': use \"inline\" or \"worker\""
                    ))
                }
            });
        }
        if let Some(Value::Object(mut p)) = take(&mut params, "backend") {
            let value = take_str(&mut p, "string_value").unwrap_or_default();
            c.settings.backend = Some(match value.as_str() {
                "rten" => OnnxBackend::Rten,
                "onnxruntime" => OnnxBackend::OnnxRuntime,
                other => {
                    return Err(format!(
                        "parameters backend is '{other}': use \"rten\" or \"onnxruntime\""
                    ))
                }
            });
        }
        for k in params.keys() {
            c.ignored.push(format!("parameters.{k}"));
        }
    }
    // Triton's `backend: "onnxruntime"` names ONNX Runtime: friday runs the model there (a
    // `parameters` backend, friday's own key, says otherwise); `platform: "onnxruntime_onnx"`
    // alone leaves the choice to friday (rten, or ONNX Runtime for what rten cannot run).
    if backend.as_deref() == Some("onnxruntime") && c.settings.backend.is_none() {
        c.settings.backend = Some(OnnxBackend::OnnxRuntime);
    }
    for (k, v) in std::mem::take(doc) {
        leftovers(&k, v, &mut c.ignored);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
name: "m"   # the model
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "x"
    data_type: TYPE_FP32
    dims: [ 4 ]
    reshape: { shape: [ 2, 2 ] }
  }
]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] label_filename: "labels.txt" } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  default_queue_policy { max_queue_size: 16 default_timeout_microseconds: 5000 }
  priority_levels: 2
  default_priority_level: 1
  preserve_ordering: true
}
version_policy: { specific: { versions: [1, 3] } }
instance_group [ { count: 2 kind: KIND_CPU } ]
model_warmup [ { name: "w" batch_size: 2 inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } count: 3 } ]
parameters { key: "placement" value: { string_value: "inline" } }
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
optimization { execution_accelerators { cpu_execution_accelerator : [ { name : "openvino" } ] } }
default_model_filename: "m.onnx"
response_cache { enable: true }
"#;

    #[test]
    fn reads_what_friday_acts_on_and_reports_the_rest() {
        let c = parse(FULL, "m").unwrap();
        assert_eq!(c.settings.max_batch_size, Some(8));
        assert_eq!(c.settings.placement, Some(Placement::Inline));
        assert_eq!(
            c.settings.version_policy,
            Some(VersionPolicy::Specific {
                versions: vec![1, 3]
            })
        );
        let b = c.settings.dynamic_batching.as_ref().unwrap();
        assert_eq!(b.preferred_batch_size, [4, 8]);
        assert_eq!(b.max_queue_delay_microseconds, 100);
        assert_eq!(b.max_queue_size, 16);
        assert_eq!(b.default_timeout_microseconds, 5000);
        assert_eq!((b.priority_levels, b.default_priority_level), (2, 1));
        assert_eq!(
            c.inputs,
            [TensorDecl {
                name: "x".into(),
                datatype: DataType::Fp32,
                dims: vec![4],
                reshape: Some(vec![2, 2]),
            }]
        );
        assert_eq!(c.outputs[0].dims, [-1]);
        assert_eq!(c.warmup.len(), 1);
        assert_eq!(c.warmup[0].batch_size, 2);
        assert_eq!(c.warmup[0].count, 3);
        assert_eq!(c.warmup[0].inputs[0].data, WarmupData::Zero);
        assert_eq!(c.default_model_filename.as_deref(), Some("m.onnx"));
        assert_eq!(c.settings.response_cache, Some(true));
        assert_eq!(
            parse("response_cache { }\n", "m")
                .unwrap()
                .settings
                .response_cache,
            Some(false)
        );
        assert_eq!(parse("", "m").unwrap().settings.response_cache, None);
        for field in [
            "dynamic_batching.preserve_ordering",
            "instance_group",
            "optimization.execution_accelerators.cpu_execution_accelerator",
            "output[0].label_filename",
            "parameters.intra_op_thread_count",
        ] {
            assert!(
                c.ignored.iter().any(|i| i == field),
                "{field} not reported in {:?}",
                c.ignored
            );
        }
        assert!(
            !c.ignored.iter().any(|i| i.starts_with("input")),
            "{:?}",
            c.ignored
        );
    }

    #[test]
    fn a_malformed_file_fails_with_line_and_column() {
        let e = parse(
            "name: \"m\"\nmax_batch_size: 8\ninput [ { nme: \"x\" } ]\n",
            "m",
        )
        .unwrap_err();
        assert!(e.starts_with("line 3, column 11"), "{e}");
        assert!(e.contains("nme"), "{e}");
        let e = parse("max_batch_size: \"eight\"\n", "m").unwrap_err();
        assert!(e.starts_with("line 1, column 17"), "{e}");
        let e = parse("dynamic_batching { }\nsequence_batching { }\n", "m").unwrap_err();
        assert!(e.starts_with("line 2, column 19"), "{e}");
        let e = parse("input [ { name: \"x\" }\n", "m").unwrap_err();
        assert!(e.starts_with("line 2"), "{e}");
    }

    #[test]
    fn refuses_another_backend_or_name() {
        assert!(parse("platform: \"tensorrt_plan\"", "m")
            .unwrap_err()
            .contains("tensorrt_plan"));
        assert!(parse("backend: \"python\"", "m")
            .unwrap_err()
            .contains("python"));
        assert!(parse("name: \"other\"", "m")
            .unwrap_err()
            .contains("'other'"));
        assert!(parse("default_model_filename: \"../x.onnx\"", "m").is_err());
    }

    #[test]
    fn backend_onnxruntime_asks_for_onnx_runtime_and_platform_leaves_the_choice() {
        let backend = |text: &str| parse(text, "m").unwrap().settings.backend;
        assert_eq!(
            backend("backend: \"onnxruntime\""),
            Some(OnnxBackend::OnnxRuntime)
        );
        assert_eq!(backend("platform: \"onnxruntime_onnx\""), None);
        assert_eq!(backend(""), None);
        assert_eq!(
            backend(
                "backend: \"onnxruntime\"\nparameters { key: \"backend\" value { string_value: \"rten\" } }"
            ),
            Some(OnnxBackend::Rten)
        );
    }

    #[test]
    fn lists_of_messages_need_no_colon() {
        let text = "input [ { name: \"a\" data_type: TYPE_INT64 dims: [ 8 ] } ]\n\
                    output[{ name: \"s\" data_type: TYPE_INT64 dims: [8] }]\n\
                    # a comment with input [ in it\n\
                    instance_group [ { kind: KIND_CPU } ]";
        let c = parse(text, "m").unwrap();
        assert_eq!(c.inputs[0].name, "a");
        assert_eq!(c.outputs[0].name, "s");
        assert_eq!(colons_before_lists("a [1]").len(), "a [1]".len());
        assert_eq!(colons_before_lists("s: \"x [\""), "s: \"x [\"");
        assert_eq!(colons_before_lists("k: V\nl [1]"), "k: V\nl:[1]");
    }

    #[test]
    fn max_batch_size_zero_is_told_from_none() {
        let c = parse(
            "max_batch_size: 0\ninput [ { name: \"x\" data_type: TYPE_FP32 dims: [ 2 ] } ]",
            "m",
        )
        .unwrap();
        assert_eq!(c.settings.max_batch_size, Some(0));
        let c = parse(
            "input [ { name: \"max_batch_size\" data_type: TYPE_FP32 } ] # max_batch_size",
            "m",
        )
        .unwrap();
        assert_eq!(c.settings.max_batch_size, None);
        let c = parse_json(r#"{"max_batch_size": 0}"#, "m").unwrap();
        assert_eq!(c.settings.max_batch_size, Some(0));
        let c = parse_json(r#"{"maxBatchSize": "8", "dynamic_batching": {"default_queue_policy": {"max_queue_size": 5}, "preserve_ordering": true}}"#, "m").unwrap();
        assert_eq!(c.settings.max_batch_size, Some(8));
        assert_eq!(c.settings.dynamic_batching.unwrap().max_queue_size, 5);
        assert_eq!(c.ignored, ["dynamic_batching.preserve_ordering"]);
        assert!(parse_json(r#"{"no_such_field": 1}"#, "m").is_err());
        assert!(parse_json("{not json", "m").is_err());
    }

    #[test]
    fn latest_without_a_count_is_one_version() {
        let c = parse("version_policy { latest { } }", "m").unwrap();
        assert_eq!(
            c.settings.version_policy,
            Some(VersionPolicy::Latest { num_versions: 1 })
        );
        let c = parse("version_policy { all { } }", "m").unwrap();
        assert_eq!(c.settings.version_policy, Some(VersionPolicy::All {}));
    }
}
