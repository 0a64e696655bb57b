//! The v2 infer request decoder (JSON, the binary tensor extension, raw binary) against the
//! built-in models' metadata. The first input byte picks the model and how the
//! Inference-Header-Content-Length header reads; the rest is the body. It must never panic, and
//! what it accepts must be ready to run: one tensor per declared input, each of the declared
//! datatype, holding exactly the bytes its shape says.
#![no_main]

use std::sync::OnceLock;

use friday::config::Config;
use friday::http::InferenceHeader;
use friday::model::ModelRegistry;
use friday::protocol::infer_request::decode_infer_request;
use friday::tensor::element_count;
use libfuzzer_sys::fuzz_target;

fn registry() -> &'static ModelRegistry {
    static REGISTRY: OnceLock<ModelRegistry> = OnceLock::new();
    REGISTRY.get_or_init(|| ModelRegistry::from_config(&Config::default()).expect("built-ins"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let entries = registry().entries();
    let meta = entries[usize::from(pick & 0x0f) % entries.len()].model.metadata();
    let header = match pick >> 4 {
        0..=7 => InferenceHeader::Absent,
        8 => InferenceHeader::Invalid,
        9 => InferenceHeader::Length(0),
        n => InferenceHeader::Length(body.len().saturating_sub(usize::from(n - 9) * 4)),
    };
    let Ok(request) = decode_infer_request(meta, body, header) else {
        return;
    };
    assert_eq!(request.inputs.len(), meta.inputs.len());
    for (t, spec) in request.inputs.iter().zip(&meta.inputs) {
        assert_eq!(t.datatype, spec.datatype);
        if let Some(size) = t.datatype.element_size() {
            assert_eq!(t.data.len(), element_count(&t.shape).unwrap() * size);
        }
    }
});
