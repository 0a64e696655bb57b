//! Compiles Triton's model configuration schema (`proto/model_config.proto`) into a descriptor
//! set that `src/model/pbtxt.rs` reads `config.pbtxt` files with (protox: pure Rust, no protoc).

fn main() {
    println!("cargo:rerun-if-changed=proto/model_config.proto");
    let set = protox::compile(["model_config.proto"], ["proto"])
        .expect("proto/model_config.proto compiles");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(
        out.join("model_config.bin"),
        prost::Message::encode_to_vec(&set),
    )
    .expect("write the descriptor set");
}
