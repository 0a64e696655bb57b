//! Conformance with a real client nobody here wrote: NVIDIA's Python `tritonclient.http`.
//! The script is `tests/conformance/tritonclient_conformance.py`; this test installs the client
//! with pip when it is missing, and fails (never skips) if it cannot.

mod common;

use std::process::Command;

use common::*;

#[test]
fn tritonclient_http_agrees_with_friday() {
    ensure_python("tritonclient.http, numpy", &["tritonclient[http]", "numpy"]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/conformance/tritonclient_conformance.py"
    );
    for shards in [1, 2] {
        let server = Server::start(shards);
        let out = Command::new("python3")
            .arg(script)
            .arg(server.addr.to_string())
            .output()
            .expect("run the conformance script");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("{stdout}");
        assert!(
            out.status.success(),
            "tritonclient conformance failed with {shards} shard(s):\n{stdout}\n{stderr}"
        );
        assert!(stdout.contains("all checks passed"));
    }
}
