//! The command line as a user meets it: help, `--check-config`, startup errors that name their
//! fix, and `friday doctor`.

mod common;

use std::process::Command;

use common::config_file;

fn friday(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_friday"))
        .args(args)
        .output()
        .expect("run friday");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_documents_every_flag_with_its_default() {
    let (code, out, _) = friday(&["serve", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--config",
        "--http-address",
        "--http-port",
        "--shards",
        "--cpus",
        "--model-repository",
        "--log-format",
        "--check-config",
    ] {
        assert!(out.contains(flag), "help lacks {flag}:\n{out}");
    }
    assert!(out.contains("[default: 8000]"));
    assert!(out.contains("[default: 0.0.0.0]"));
    let (code, out, _) = friday(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("serve"));
}

#[test]
fn check_config_prints_the_effective_config() {
    let file = config_file(
        "check-ok",
        "[http]\nport = 9100\n[log]\nformat = \"json\"\n",
    );
    let (code, out, err) = friday(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--http-port",
        "9200",
        "--check-config",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration OK"));
    assert!(
        out.contains("port = 9200"),
        "flags override the file:\n{out}"
    );
    assert!(out.contains("format = \"json\""));
}

#[test]
fn check_config_names_the_bad_key() {
    let file = config_file("check-typo", "[http]\nprot = 9100\n");
    let (code, _, err) = friday(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--check-config",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("prot"), "{err}");

    let file = config_file("check-bad", "[http]\naddress = \"localhost\"\n");
    let (code, _, err) = friday(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--check-config",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("http.address"), "{err}");

    let (code, _, err) = friday(&["serve", "--cpus", "3-1", "--check-config"]);
    assert_eq!(code, 2);
    assert!(err.contains("shards.cpus"), "{err}");

    let (code, _, err) = friday(&["serve", "--config", "/no/such/file.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/no/such/file.toml"), "{err}");
}

/// `friday serve` on 127.0.0.1 with `args`, which must fail at startup (exit 1); its stderr.
fn serve_error(args: &[&str]) -> String {
    let mut all = vec!["serve", "--http-address", "127.0.0.1"];
    all.extend_from_slice(args);
    let (code, _, err) = friday(&all);
    assert_eq!(code, 1, "{all:?}: {err}");
    err
}

#[test]
fn startup_errors_name_the_fix() {
    let err = serve_error(&["--http-port", "0", "--shards", "4096"]);
    assert!(err.contains("lower --shards"), "{err}");

    let err = serve_error(&["--http-port", "0", "--cpus", "4000"]);
    assert!(err.contains("affinity mask"), "{err}");

    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let err = serve_error(&["--http-port", &port, "--shards", "1"]);
    assert!(err.contains("--http-port"), "{err}");
}

#[test]
fn doctor_passes_this_host_and_fails_a_start_that_cannot_happen() {
    let (code, out, err) = friday(&["doctor"]);
    assert_eq!(code, 0, "{out}{err}");
    for check in [
        "cpus",
        "io_uring",
        "memlock",
        "cpu frequency governor",
        "hyper-thread siblings",
        "nic interrupts",
        "listen backlog",
        "transparent huge pages",
        "onnx backends",
    ] {
        assert!(out.contains(check), "no '{check}' check in:\n{out}");
    }
    assert!(out.contains(" 0 failure(s)"), "{out}");
    let (code, out, _) = friday(&["doctor", "--cpus", "4000"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  cpus") && out.contains("affinity mask"),
        "{out}"
    );
}

#[test]
fn every_tuning_profile_is_a_valid_configuration() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/profiles");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let (code, out, err) = friday(&[
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--check-config",
        ]);
        assert_eq!(code, 0, "{}: {err}", path.display());
        assert!(out.starts_with("# configuration OK"), "{out}");
        // One process per NUMA node on one port: the second must join the first.
        let numa = path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("numa");
        assert_eq!(
            out.contains("reuse_port = true"),
            numa,
            "{}: {out}",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 3, "{seen} profiles in {dir}");
}
