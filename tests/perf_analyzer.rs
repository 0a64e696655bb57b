//! Triton's own load generator, perf_analyzer, against friday: it reads the model metadata,
//! config and statistics, sends binary-extension infer requests over keep-alive connections, and
//! must finish a measurement without errors. `tuning/perf-analyzer.sh` installs it from public
//! packages when it is missing; this test fails (never skips) if it cannot.

mod common;

use std::process::Command;

use common::*;

#[test]
fn perf_analyzer_completes_against_identity() {
    let tool = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/perf-analyzer.sh");
    let install = Command::new("bash")
        .args([tool, "install"])
        .status()
        .expect("run bash");
    assert!(
        install.success(),
        "cannot install perf_analyzer with {tool} install"
    );
    for shards in [1, 2] {
        let server = Server::start(shards);
        let csv =
            std::env::temp_dir().join(format!("friday-pa-{}-{shards}.csv", std::process::id()));
        let out = Command::new("bash")
            .arg(tool)
            .args([
                "-m",
                "identity",
                "-u",
                &server.addr.to_string(),
                "-i",
                "http",
            ])
            .args(["--shape", "INPUT0:16", "--concurrency-range", "4:4"])
            .args(["-p", "500", "-s", "50", "--max-trials", "10"])
            .arg("-f")
            .arg(&csv)
            .output()
            .expect("run perf_analyzer");
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "perf_analyzer failed against {shards} shard(s)"
        );
        // perf_analyzer reads the server-side counts from the statistics extension.
        assert!(
            stdout.contains("Successful request count"),
            "no server statistics in the report"
        );
        let table =
            std::fs::read_to_string(&csv).expect("perf_analyzer writes its CSV once stable");
        let row = table.lines().nth(1).expect("a CSV row");
        let throughput: f64 = row.split(',').nth(1).unwrap().parse().unwrap();
        assert!(throughput > 100.0, "throughput {throughput} infer/s");
        let _ = std::fs::remove_file(&csv);
    }
}
