//! The deployment files as their tools read them: the systemd unit passes `systemd-analyze
//! verify` (skipped, saying why, where systemd's tools are missing) and holds the settings
//! friday's behaviour depends on; the Kubernetes manifests (Deployment, Service, KServe
//! ServingRuntime) parse and fit friday's ports, probes, drain and CPU pinning.

mod common;

use std::process::Command;

const UNIT: &str = include_str!("../deploy/systemd/friday.service");

/// The unit's `[Service]` value of `key`, if set (uncommented).
fn service(key: &str) -> Option<&'static str> {
    UNIT.lines()
        .skip_while(|l| l.trim() != "[Service]")
        .take_while(|l| !l.starts_with('[') || l.trim() == "[Service]")
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn the_systemd_unit_fits_how_friday_starts_drains_and_fails() {
    let exec = service("ExecStart").expect("ExecStart");
    assert!(exec.contains(" serve "), "{exec}");
    // A stop must outlast the drain, or systemd kills requests the drain would have finished.
    let stop = service("TimeoutStopSec").expect("TimeoutStopSec");
    let stop_s: u64 = stop.trim_end_matches('s').parse().unwrap();
    let drain_s = friday::config::DEFAULT_DRAIN_TIMEOUT_MS / 1000;
    assert!(
        stop_s > drain_s,
        "TimeoutStopSec {stop} against a {drain_s} s drain"
    );
    assert_eq!(service("KillSignal"), Some("SIGTERM"));
    // A shard panic (exit 70) restarts; a bad configuration (exit 2) does not.
    assert_eq!(service("Restart"), Some("on-failure"));
    assert_eq!(service("RestartPreventExitStatus"), Some("2"));
    assert!(service("LimitMEMLOCK").is_some());
    assert!(
        service("SystemCallFilter").is_none(),
        "a system call filter would block io_uring"
    );
}

#[test]
fn the_systemd_unit_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIPPED: systemd-analyze is not installed (Debian: apt-get install systemd)");
        return;
    }
    // The unit as installed, with ExecStart pointing at this build (verify checks it exists).
    let dir = std::env::temp_dir().join(format!("friday-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("friday.service");
    std::fs::write(
        &unit,
        UNIT.replace("/usr/local/bin/friday", env!("CARGO_BIN_EXE_friday")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {said}"
    );
    // Unknown keys and other mistakes are warnings that still exit 0.
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify warned: {said}"
    );
}

/// The Kubernetes manifests as JSON documents (read by PyYAML).
fn manifests() -> Vec<serde_json::Value> {
    common::ensure_python("yaml", &["pyyaml"]);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes/friday.yaml");
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
            path,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kind<'a>(docs: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// The value after `flag` in a container's args.
fn arg<'a>(container: &'a serde_json::Value, flag: &str) -> &'a str {
    let args = container["args"].as_array().unwrap();
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag}"));
    args[i + 1].as_str().unwrap()
}

#[test]
fn the_kubernetes_manifests_fit_friday() {
    let docs = manifests();
    let deployment = kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["args"][0], "serve");
    let port: u64 = arg(c, "--http-port").parse().unwrap();
    assert_eq!(c["ports"][0]["containerPort"], port);
    // The probes are friday's v2 health endpoints, on its port.
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/v2/health/live");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/v2/health/ready");
    // The grace period covers preStop and the whole drain.
    let pre_stop: u64 = c["lifecycle"]["preStop"]["exec"]["command"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let drain_s = friday::config::DEFAULT_DRAIN_TIMEOUT_MS / 1000;
    assert!(
        grace > pre_stop + drain_s,
        "grace {grace} s, preStop {pre_stop} s, drain {drain_s} s"
    );
    // Guaranteed QoS with whole CPUs, for the static CPU manager to pin.
    let r = &c["resources"];
    assert_eq!(r["requests"], r["limits"]);
    assert!(r["limits"]["cpu"].as_str().unwrap().parse::<u32>().is_ok());
    // The Service sends to these pods, on the container's port.
    let service = kind(&docs, "Service");
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&deployment["spec"]["template"]["metadata"]["labels"][k], v);
    }
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"],
        c["ports"][0]["name"]
    );
    // KServe: ONNX models over v2, friday reading KServe's model folder.
    let runtime = kind(&docs, "ServingRuntime");
    assert_eq!(runtime["spec"]["supportedModelFormats"][0]["name"], "onnx");
    assert_eq!(runtime["spec"]["protocolVersions"][0], "v2");
    let k = &runtime["spec"]["containers"][0];
    assert_eq!(arg(k, "--model-repository"), "/mnt/models");
    assert_eq!(arg(k, "--http-port"), "8080");
}

#[test]
fn the_probe_paths_answer_on_a_real_server() {
    let s = common::Server::start(1);
    for path in ["/v2/health/live", "/v2/health/ready"] {
        assert_eq!(s.client().get(path).status, 200, "{path}");
    }
}
