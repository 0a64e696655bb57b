//! The deployment files as their tools read them: the systemd unit passes `systemd-analyze
//! verify` (skipped, saying why, where systemd's tools are missing) and holds the settings
//! friday's behaviour depends on; the Kubernetes manifests (Deployment, Service, KServe
//! ServingRuntime) parse and fit friday's ports, probes, drain and CPU pinning.

mod common;

use std::process::Command;

/// The units, with where each runs friday from.
const UNITS: [(&str, &str, &str); 2] = [
    (
        "friday.service",
        include_str!("../deploy/systemd/friday.service"),
        "/usr/local/bin/friday",
    ),
    (
        "friday@.service",
        include_str!("../deploy/systemd/friday@.service"),
        "/opt/friday/%i/friday",
    ),
];

/// The unit's `[Service]` value of `key`, if set (uncommented).
fn service(unit: &'static str, key: &str) -> Option<&'static str> {
    unit.lines()
        .skip_while(|l| l.trim() != "[Service]")
        .take_while(|l| !l.starts_with('[') || l.trim() == "[Service]")
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn the_systemd_units_fit_how_friday_starts_drains_and_fails() {
    for (name, unit, _) in UNITS {
        let service = |key| service(unit, key);
        let exec = service("ExecStart").expect("ExecStart");
        assert!(exec.contains(" serve "), "{name}: {exec}");
        // friday says READY=1 once it serves; systemd must wait for it.
        assert_eq!(service("Type"), Some("notify"), "{name}");
        // A stop must outlast the drain, or systemd kills requests the drain would have finished.
        let stop = service("TimeoutStopSec").expect("TimeoutStopSec");
        let stop_s: u64 = stop.trim_end_matches('s').parse().unwrap();
        let drain_s = friday::config::DEFAULT_DRAIN_TIMEOUT_MS / 1000;
        assert!(
            stop_s > drain_s,
            "{name}: TimeoutStopSec {stop} against a {drain_s} s drain"
        );
        assert_eq!(service("KillSignal"), Some("SIGTERM"), "{name}");
        // A shard panic (exit 70) restarts; a bad configuration (exit 2) does not.
        assert_eq!(service("Restart"), Some("on-failure"), "{name}");
        let prevent = service("RestartPreventExitStatus").expect("RestartPreventExitStatus");
        assert!(prevent.split(' ').any(|s| s == "2"), "{name}: {prevent}");
        assert!(service("LimitMEMLOCK").is_some(), "{name}");
        assert!(
            service("SystemCallFilter").is_none(),
            "{name}: a system call filter would block io_uring"
        );
    }
    // The blue-green template shares the port, and both colours run as one user (the kernel
    // shares a port only within one user).
    let (_, template, _) = UNITS[1];
    assert!(service(template, "ExecStart")
        .unwrap()
        .contains("--http-reuse-port"));
    assert_eq!(service(template, "User"), Some("friday"));
    // A colour that fails to start must not restart in a loop: the switch waits on its start.
    assert_eq!(service(template, "RestartPreventExitStatus"), Some("1 2"));
}

#[test]
fn the_systemd_units_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIPPED: systemd-analyze is not installed (Debian: apt-get install systemd)");
        return;
    }
    for (name, unit, binary) in UNITS {
        // The unit as installed, with ExecStart pointing at this build (verify checks it exists);
        // the template as its blue instance.
        let dir = std::env::temp_dir().join(format!("friday-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(name),
            unit.replace(binary, env!("CARGO_BIN_EXE_friday")),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(dir.join(name.replace("@.", "@blue.")))
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{name}: systemd-analyze verify failed: {said}"
        );
        // Unknown keys and other mistakes are warnings that still exit 0.
        assert!(
            said.trim().is_empty(),
            "{name}: systemd-analyze verify warned: {said}"
        );
    }
}

/// The Kubernetes manifests in `deploy/kubernetes/{file}` as JSON documents (read by PyYAML).
fn manifests(file: &str) -> Vec<serde_json::Value> {
    common::ensure_python("yaml", &["pyyaml"]);
    let path = format!("{}/deploy/kubernetes/{file}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
            &path,
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
    let docs = manifests("friday.yaml");
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
fn the_blue_green_manifests_put_one_colour_behind_the_service() {
    let docs = manifests("bluegreen.yaml");
    let service = kind(&docs, "Service");
    let selector = service["spec"]["selector"].as_object().unwrap();
    assert_eq!(selector["slot"], "blue", "blue serves first");
    let deployments: Vec<&serde_json::Value> =
        docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    assert_eq!(deployments.len(), 2);
    for (d, colour) in deployments.iter().zip(["blue", "green"]) {
        // bluegreen.sh finds each colour by this name and switches by the slot label.
        assert_eq!(d["metadata"]["name"], format!("friday-{colour}"));
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["slot"], colour);
        assert_eq!(d["spec"]["selector"]["matchLabels"]["slot"], colour);
        // Everything but the slot matches the Service, so patching the slot moves the traffic.
        for (k, v) in selector.iter().filter(|(k, _)| *k != "slot") {
            assert_eq!(&labels[k], v, "{colour}: label {k}");
        }
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            c["ports"][0]["name"],
            service["spec"]["ports"][0]["targetPort"]
        );
        assert_eq!(
            c["ports"][0]["name"], "http",
            "bluegreen.sh forwards to the port named http"
        );
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/v2/health/ready");
    }
}

#[test]
fn the_probe_paths_answer_on_a_real_server() {
    let s = common::Server::start(1);
    for path in ["/v2/health/live", "/v2/health/ready"] {
        assert_eq!(s.client().get(path).status, 200, "{path}");
    }
}

#[test]
fn friday_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let path = std::env::temp_dir().join(format!("friday-notify-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut cmd = common::Server::command(1, &[]);
    cmd.env("NOTIFY_SOCKET", &path);
    let mut s = common::Server::spawn(cmd);
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 from friday");
    let said = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(said.starts_with("READY=1\n"), "{said}");
    assert!(
        said.contains(&format!("STATUS=listening on {}", s.addr)),
        "{said}"
    );
    // Ready means serving: models loaded, shards accepting.
    assert_eq!(s.client().get("/v2/health/ready").status, 200);
    s.signal(libc::SIGTERM);
    let n = socket.recv(&mut buf).expect("STOPPING=1 from friday");
    assert_eq!(&buf[..n], b"STOPPING=1\n");
    assert!(s
        .wait_exit(std::time::Duration::from_secs(20))
        .is_some_and(|e| e.success()));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn the_dockerfile_builds_with_a_toolchain_friday_accepts_and_runs_what_it_built() {
    let dockerfile = include_str!("../Dockerfile");
    let manifest = include_str!("../Cargo.toml");
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "a build stage and a run stage");
    // rust:1.92-bookworm AS build: at least Cargo.toml's rust-version.
    let (image, _) = froms[0].split_once(" AS ").expect("a named build stage");
    let (rust, release) = image
        .strip_prefix("rust:")
        .and_then(|t| t.split_once('-'))
        .expect("rust:VERSION-RELEASE");
    let wanted = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    let version = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap()).collect() };
    assert!(
        version(rust) >= version(wanted),
        "rust {rust} < rust-version {wanted}"
    );
    // The binary links the build image's glibc: run it on the same Debian release.
    assert_eq!(froms[1], format!("debian:{release}-slim"));
    assert!(
        dockerfile.contains("COPY --from=build /src/target/release/friday /usr/local/bin/friday")
    );
    assert!(dockerfile.contains("cargo build --release --locked --bin friday"));
    assert!(dockerfile.contains(&format!("EXPOSE {}", friday::config::DEFAULT_HTTP_PORT)));
    assert!(dockerfile.contains("STOPSIGNAL SIGTERM"));
    assert!(dockerfile.contains("ENTRYPOINT [\"friday\"]\nCMD [\"serve\"]"));
    // The build context leaves out what is large and not needed.
    let ignored = include_str!("../.dockerignore");
    assert!(ignored.lines().any(|l| l == "target"));
}
