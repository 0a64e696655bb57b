//! JSON tensor data, both ways: any text decodes to elements of the datatype the first input
//! byte picks, or to a clear error, never a panic; and what decoded encodes back to JSON that
//! decodes to the same bytes.
#![no_main]

use friday::protocol::json_data::{decode_json_data, JsonData};
use friday::tensor::DataType;
use libfuzzer_sys::fuzz_target;


fuzz_target!(|data: &[u8]| {
    let Some((&pick, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let datatype = DataType::ALL[usize::from(pick) % DataType::ALL.len()];
    let mut bytes = Vec::new();
    let Ok(count) = decode_json_data(datatype, text, &mut bytes) else {
        return;
    };
    if let Some(size) = datatype.element_size() {
        assert_eq!(bytes.len(), count * size);
    }
    let Ok(json) = serde_json::to_string(&JsonData {
        datatype,
        data: &bytes,
    }) else {
        // Only BYTES elements that are not UTF-8 cannot be JSON.
        assert_eq!(datatype, DataType::Bytes);
        return;
    };
    let mut again = Vec::new();
    let n = decode_json_data(datatype, &json, &mut again).expect("what friday writes, it reads");
    assert_eq!((n, again), (count, bytes), "{json}");
});
