//! Triton's generate extension: `POST /v2/models/{m}[/versions/{v}]/generate` and
//! `…/generate_stream`.
//!
//! The request is one JSON object: keys that name the model's inputs (`text_input`), sampling
//! settings (`max_tokens`, `temperature`, `top_k`, `seed`, `stop`) either at the top level (as
//! TensorRT-LLM models take them, inputs of their own) or inside `parameters` (as vLLM's do),
//! and Triton's `timeout` parameter (µs). The answer is one JSON object with `model_name`,
//! `model_version`, `text_output` and `finish_reason`; a stream sends one such object per
//! token as a server-sent event (`data: {…}`), the last one with `finish_reason`, and an error
//! after the stream began as a `data: {"error": …}` event.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::generate::{
    GenerateParams, MAX_PROMPT_BYTES, MAX_STOP_BYTES, MAX_STOP_STRINGS, MAX_TOKENS_LIMIT,
};
use crate::model::ModelMetadata;

/// Highest temperature accepted.
const MAX_TEMPERATURE: f64 = 100.0;

/// Reads a generate request's body for `model`.
pub fn decode_generate_request(
    model: &ModelMetadata,
    body: &[u8],
) -> Result<GenerateParams, ApiError> {
    let doc: Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(format!(
            "the generate request body is not a JSON object: {e}"
        ))
    })?;
    let mut p = GenerateParams::default();
    let mut prompt = None;
    let empty = Map::new();
    let params = match doc.get("parameters") {
        None => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ApiError::invalid("'parameters' must be a JSON object")),
    };
    for (key, value) in &doc {
        match key.as_str() {
            "id" | "parameters" => {}
            "text_input" => prompt = Some(text_input(value)?),
            k if setting(&mut p, k, value)? => {}
            k => {
                let inputs: Vec<&str> = model.inputs.iter().map(|i| i.name.as_str()).collect();
                return Err(ApiError::invalid(format!(
                    "unexpected key '{k}': model '{}' takes the inputs {inputs:?} and the \
                     settings max_tokens, temperature, top_k, seed, stop and timeout",
                    model.name
                )));
            }
        }
    }
    for (key, value) in params {
        // Anything else in `parameters` is for other servers' models (`stream`, say).
        setting(&mut p, key, value)?;
    }
    p.prompt = prompt.ok_or_else(|| {
        ApiError::invalid(format!(
            "model '{}' needs 'text_input' (a string)",
            model.name
        ))
    })?;
    Ok(p)
}

/// The prompt: a string, or a list of one string (a BYTES tensor of one element).
fn text_input(value: &Value) -> Result<String, ApiError> {
    let text = match value {
        Value::String(s) => s,
        Value::Array(a) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().expect("checked to be a string")
        }
        _ => return Err(ApiError::invalid("'text_input' must be a string")),
    };
    if text.len() > MAX_PROMPT_BYTES {
        return Err(ApiError::invalid(format!(
            "'text_input' is {} bytes; the most is {MAX_PROMPT_BYTES}",
            text.len()
        )));
    }
    Ok(text.to_string())
}

/// Applies one sampling setting; returns false if `key` is not one.
fn setting(p: &mut GenerateParams, key: &str, value: &Value) -> Result<bool, ApiError> {
    let bad = |what: &str| ApiError::invalid(format!("'{key}' must be {what}"));
    let uint = |min: u64, max: u64| match value.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(bad(&format!("an integer from {min} to {max}"))),
    };
    match key {
        "max_tokens" => p.max_tokens = uint(1, MAX_TOKENS_LIMIT as u64)? as usize,
        "top_k" => p.top_k = uint(0, u32::MAX as u64)? as usize,
        "seed" => p.seed = Some(uint(0, u64::MAX)?),
        "timeout" => {
            let us = uint(0, u64::MAX)?;
            p.timeout = (us > 0).then(|| Duration::from_micros(us));
        }
        "temperature" => match value.as_f64() {
            Some(t) if (0.0..=MAX_TEMPERATURE).contains(&t) => p.temperature = t as f32,
            _ => return Err(bad(&format!("a number from 0 to {MAX_TEMPERATURE}"))),
        },
        "stop" => {
            let list: Vec<&Value> = match value {
                Value::Array(a) => a.iter().collect(),
                v => vec![v],
            };
            let what = format!(
                "a string or a list of at most {MAX_STOP_STRINGS} strings of 1 to \
                 {MAX_STOP_BYTES} bytes"
            );
            if list.len() > MAX_STOP_STRINGS {
                return Err(bad(&what));
            }
            p.stop = list
                .into_iter()
                .map(|v| match v.as_str() {
                    Some(s) if !s.is_empty() && s.len() <= MAX_STOP_BYTES => Ok(s.to_string()),
                    _ => Err(bad(&what)),
                })
                .collect::<Result<_, _>>()?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Writes one generate answer (or a stream event's JSON): the model, the text, and
/// `finish_reason` once the sequence has ended.
pub fn write_generate_output(
    model: &str,
    version: &str,
    text: &[u8],
    finish_reason: Option<&str>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"{\"model_name\":");
    write_json_string(model.as_bytes(), out);
    out.extend_from_slice(b",\"model_version\":");
    write_json_string(version.as_bytes(), out);
    out.extend_from_slice(b",\"text_output\":");
    write_json_string(text, out);
    if let Some(reason) = finish_reason {
        out.extend_from_slice(b",\"finish_reason\":");
        write_json_string(reason.as_bytes(), out);
    }
    out.push(b'}');
}

/// Writes `{"error": message}`.
pub fn write_generate_error(message: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"error\":");
    write_json_string(message.as_bytes(), out);
    out.push(b'}');
}

/// Writes one stream event with [`write_generate_output`]'s JSON.
pub fn write_output_event(
    model: &str,
    version: &str,
    text: &[u8],
    finish_reason: Option<&str>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"data: ");
    write_generate_output(model, version, text, finish_reason, out);
    out.extend_from_slice(b"\n\n");
}

/// Writes one stream event with [`write_generate_error`]'s JSON.
pub fn write_error_event(message: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    write_generate_error(message, out);
    out.extend_from_slice(b"\n\n");
}

/// Writes `s` (UTF-8; anything else becomes U+FFFD) as a JSON string.
fn write_json_string(s: &[u8], out: &mut Vec<u8>) {
    let s = String::from_utf8_lossy(s);
    serde_json::to_writer(&mut *out, &*s).expect("writing a string to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Model, TinyLm};

    fn decode(body: &str) -> Result<GenerateParams, ApiError> {
        decode_generate_request(TinyLm::new().metadata(), body.as_bytes())
    }

    #[test]
    fn reads_settings_at_the_top_level_and_in_parameters() {
        let p = decode(
            r#"{"text_input":"hi","max_tokens":5,"parameters":{"temperature":0.5,"top_k":3,"seed":9,"stop":["x","yz"],"stream":true,"timeout":2000}}"#,
        )
        .unwrap();
        assert_eq!(p.prompt, "hi");
        assert_eq!(p.max_tokens, 5);
        assert_eq!(p.temperature, 0.5);
        assert_eq!(p.top_k, 3);
        assert_eq!(p.seed, Some(9));
        assert_eq!(p.stop, vec!["x", "yz"]);
        assert_eq!(p.timeout, Some(Duration::from_millis(2)));
        let p = decode(r#"{"text_input":["hi"],"stop":"."}"#).unwrap();
        assert_eq!(p.stop, vec!["."]);
        assert_eq!(p.max_tokens, crate::generate::DEFAULT_MAX_TOKENS);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        for (body, says) in [
            ("[1]", "not a JSON object"),
            ("{}", "needs 'text_input'"),
            (r#"{"text_input":3}"#, "'text_input' must be a string"),
            (
                r#"{"text_input":"a","max_tokens":-1}"#,
                "'max_tokens' must be",
            ),
            (
                r#"{"text_input":"a","temperature":"hot"}"#,
                "'temperature' must be",
            ),
            (r#"{"text_input":"a","stop":[""]}"#, "'stop' must be"),
            (
                r#"{"text_input":"a","colour":1}"#,
                "unexpected key 'colour'",
            ),
            (
                r#"{"text_input":"a","parameters":[]}"#,
                "'parameters' must be",
            ),
        ] {
            let e = decode(body).unwrap_err();
            assert_eq!(e.status(), 400, "{body}");
            assert!(e.message.contains(says), "{body}: {}", e.message);
        }
    }

    #[test]
    fn writes_triton_shaped_outputs_and_events() {
        let mut out = Vec::new();
        write_generate_output("tinylm", "1", b"a\"b", Some("length"), &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["text_output"], "a\"b");
        assert_eq!(v["finish_reason"], "length");
        assert_eq!(v["model_name"], "tinylm");
        let mut event = Vec::new();
        write_output_event("tinylm", "1", b"a\"b", Some("length"), &mut event);
        assert_eq!(event, [b"data: ", &out[..], b"\n\n"].concat());
        let mut event = Vec::new();
        write_error_event("timed out", &mut event);
        assert_eq!(event, b"data: {\"error\":\"timed out\"}\n\n");
    }
}
