//! Test harness: boots the real `friday` binary on 127.0.0.1 with an ephemeral port and talks to
//! it over real sockets, in raw HTTP/1.1 bytes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a test waits for the server to start or a response to arrive.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running server process; killed on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    logs: std::sync::Mutex<mpsc::Receiver<String>>,
    /// JSON log lines printed before the server listened.
    startup: Vec<Value>,
}

impl Server {
    /// Starts `friday serve` with `shards` shards on an ephemeral port.
    pub fn start(shards: usize) -> Server {
        Self::start_with(shards, &[])
    }

    /// Starts `friday serve` with extra arguments.
    pub fn start_with(shards: usize, extra: &[&str]) -> Server {
        Self::spawn(Self::command(shards, extra))
    }

    /// The command `start_with` runs: `friday serve` on 127.0.0.1, an ephemeral port, JSON logs.
    /// The engine comes from `FRIDAY_ENGINE` when the environment sets it (CI runs the suite
    /// once per engine).
    pub fn command(shards: usize, extra: &[&str]) -> Command {
        let cpus = available_cpus();
        assert!(
            cpus >= shards,
            "this test needs {shards} CPUs in the affinity mask; the machine offers {cpus}"
        );
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_friday"));
        cmd.args(["serve", "--http-address", "127.0.0.1", "--http-port", "0"])
            .args(["--shards", &shards.to_string(), "--log-format", "json"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cmd
    }

    /// Spawns `cmd` (from [`Server::command`]) and waits until it listens.
    pub fn spawn(mut cmd: Command) -> Server {
        let mut child = cmd.spawn().expect("spawn the friday binary");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + WAIT;
        let mut startup = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    panic!("friday did not log 'friday listening' within {WAIT:?}");
                }
            };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if v["message"] == "friday listening" {
                break v["address"].as_str().unwrap().parse().unwrap();
            }
            startup.push(v);
        };
        Server {
            child,
            addr,
            logs: std::sync::Mutex::new(rx),
            startup,
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with the pid of our own child.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }

    /// Log lines printed before the server listened (JSON objects).
    pub fn startup_logs(&self) -> &[Value] {
        &self.startup
    }

    /// Log lines printed since the last call (JSON objects), from the time the server listened.
    pub fn logs(&self) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .try_iter()
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn available_cpus() -> usize {
    // SAFETY: cpu_set_t is plain data and sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 1;
        }
        libc::CPU_COUNT(&set) as usize
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error` message of an error body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field in {}", String::from_utf8_lossy(&self.body)))
            .to_string()
    }

    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A raw HTTP/1.1 client on one connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to friday");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to friday");
    }

    /// Reads one response (for a HEAD request pass `head = true`: no body follows).
    pub fn read_response_to(&mut self, head: bool) -> Response {
        let (status, headers) = self.read_head();
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        let body = if chunked && !head {
            self.read_chunked()
        } else {
            let len: usize = if head || status == 100 {
                0
            } else {
                headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.parse().unwrap())
                    .expect("a friday response has Content-Length or is chunked")
            };
            while self.buf.len() < len {
                self.fill();
            }
            self.buf.drain(..len).collect()
        };
        Response {
            status,
            headers,
            body,
        }
    }

    /// Reads a chunked body (its head already taken from the buffer), checking its framing.
    fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        while let Some(chunk) = self.read_chunk() {
            body.extend_from_slice(&chunk);
        }
        body
    }

    pub fn read_response(&mut self) -> Response {
        self.read_response_to(false)
    }

    /// Reads a response head only (status and headers); the body is read with
    /// [`Client::read_chunk`].
    pub fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).expect("valid response head")
            {
                let status = r.code.unwrap();
                let headers = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                self.buf.drain(..n);
                return (status, headers);
            }
            self.fill();
        }
    }

    /// Reads the next chunk of a chunked body; `None` at the last (empty) chunk.
    pub fn read_chunk(&mut self) -> Option<Vec<u8>> {
        let line_end = loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            self.fill();
        };
        let size = std::str::from_utf8(&self.buf[..line_end]).unwrap();
        let size = usize::from_str_radix(size, 16).expect("a chunk size in hex");
        while self.buf.len() < line_end + 2 + size + 2 {
            self.fill();
        }
        let data = line_end + 2;
        assert_eq!(
            &self.buf[data + size..data + size + 2],
            b"\r\n",
            "chunk framing"
        );
        let chunk = self.buf[data..data + size].to_vec();
        self.buf.drain(..data + size + 2);
        (size > 0).then_some(chunk)
    }

    /// Reads server-sent events until the stream's next chunk; `None` once the body has ended.
    /// Each event's `data:` is parsed as JSON.
    pub fn read_events(&mut self) -> Option<Vec<Value>> {
        let chunk = self.read_chunk()?;
        let text = String::from_utf8(chunk).expect("events are UTF-8");
        Some(
            text.split("\n\n")
                .filter(|e| !e.is_empty())
                .map(|e| {
                    let data = e
                        .strip_prefix("data: ")
                        .unwrap_or_else(|| panic!("not an event: {e:?}"));
                    serde_json::from_str(data)
                        .unwrap_or_else(|_| panic!("event data is not JSON: {data}"))
                })
                .collect(),
        )
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk).expect("read from friday");
        assert!(n > 0, "friday closed the connection mid-response");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// True if the server closed the connection (reads EOF, or a reset) within the timeout.
    pub fn is_closed(&mut self, timeout: Duration) -> bool {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let mut b = [0u8; 1];
        let closed = match self.stream.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
        };
        self.stream.set_read_timeout(Some(WAIT)).unwrap();
        closed
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.send(&request_bytes(method, path, headers, body));
        self.read_response_to(method == "HEAD")
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    /// POSTs a binary-extension body: the JSON `header`, then the raw tensor bytes `tail`.
    pub fn post_binary(&mut self, path: &str, header: &Value, tail: &[u8]) -> Response {
        let json = header.to_string();
        let mut body = json.clone().into_bytes();
        body.extend_from_slice(tail);
        self.request(
            "POST",
            path,
            &[
                ("Content-Type", "application/octet-stream"),
                ("Inference-Header-Content-Length", &json.len().to_string()),
            ],
            &body,
        )
    }

    pub fn post_json(&mut self, path: &str, body: &Value) -> Response {
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }
}

pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Splits a binary-extension response into its JSON header and binary tail.
pub fn split_binary(resp: &Response) -> (Value, Vec<u8>) {
    let n: usize = resp
        .header("inference-header-content-length")
        .expect("binary response has Inference-Header-Content-Length")
        .parse()
        .unwrap();
    (
        serde_json::from_slice(&resp.body[..n]).unwrap(),
        resp.body[n..].to_vec(),
    )
}

/// Writes a config file for a test and returns its path.
pub fn config_file(name: &str, toml: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("friday-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    path
}

/// A config whose `synthetic` model runs one item per batch on a worker, each batch busy for
/// `cost_per_batch_us`, followed by `dynamic_batching` lines (may be empty).
pub fn slow_synthetic(cost_per_batch_us: u64, dynamic_batching: &str) -> String {
    let mut toml = format!(
        "[models.synthetic]\nplacement = \"worker\"\ncost_per_batch_us = {cost_per_batch_us}\n\
         cost_per_item_us = 0\nmax_batch_size = 1\n"
    );
    if !dynamic_batching.is_empty() {
        toml += &format!("[models.synthetic.dynamic_batching]\n{dynamic_batching}\n");
    }
    toml
}

/// Makes sure python3 can import `modules`, installing `packages` with pip if not. Fails (never
/// skips) when it cannot.
pub fn ensure_python(modules: &str, packages: &[&str]) {
    let probe = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .status()
        .expect("python3 must be installed for this test");
    if probe.success() {
        return;
    }
    eprintln!("installing {packages:?} with pip");
    let install = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet"])
        .args(packages)
        .status()
        .expect("run pip");
    assert!(
        install.success(),
        "cannot install {packages:?}: run `python3 -m pip install {}`",
        packages.join(" ")
    );
}

/// One Prometheus sample.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: serde_json::Map<String, Value>,
    pub value: f64,
}

/// Fetches `/metrics` and parses it with the official Prometheus Python parser.
pub fn scrape(server: &Server) -> Vec<Sample> {
    ensure_python("prometheus_client", &["prometheus-client"]);
    let r = server.client().get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/conformance/parse_metrics.py"
    );
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the metrics parser");
    child.stdin.take().unwrap().write_all(&r.body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser rejected /metrics:\n{}",
        String::from_utf8_lossy(&r.body)
    );
    let families: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    families
        .iter()
        .flat_map(|f| f["samples"].as_array().unwrap().clone())
        .map(|s| Sample {
            name: s["name"].as_str().unwrap().to_string(),
            labels: s["labels"].as_object().unwrap().clone(),
            value: s["value"].as_f64().unwrap(),
        })
        .collect()
}

/// The value of the sample `name` whose labels include every pair in `labels`.
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).and_then(|x| x.as_str()) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
        .value
}

/// A binary identity request carrying `data` (FP32 bytes), asking for its output as binary
/// tensor data or as JSON.
pub fn identity_binary_request(data: &[u8], binary_out: bool) -> Vec<u8> {
    let n = data.len() / 4;
    let header = serde_json::json!({"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1, n],
        "parameters":{"binary_data_size": n * 4}}],
        "outputs":[{"name":"OUTPUT0","parameters":{"binary_data": binary_out}}]})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(data);
    request_bytes(
        "POST",
        "/v2/models/identity/infer",
        &[
            ("Content-Type", "application/octet-stream"),
            ("Inference-Header-Content-Length", &header.len().to_string()),
        ],
        &body,
    )
}

/// A memory figure of process `pid` from `/proc/<pid>/status` (`field` such as `"VmRSS:"` or
/// `"VmHWM:"`), in MiB.
pub fn proc_status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kb / 1024.0
}

/// Writes the test model repository (`tests/models/make_repository.py`) under a fresh folder.
pub fn make_repository(tag: &str) -> std::path::PathBuf {
    make_repository_with(tag, &[])
}

/// As [`make_repository`], with the script's extra arguments.
pub fn make_repository_with(tag: &str, args: &[&str]) -> std::path::PathBuf {
    ensure_python("onnx, numpy", &["onnx", "numpy"]);
    let out = std::env::temp_dir().join(format!("friday-models-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    run_make_repository(&out, args);
    out
}

/// Runs `tests/models/make_repository.py OUT ARGS…`.
fn run_make_repository(out: &std::path::Path, args: &[&str]) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/models/make_repository.py"
    );
    let made = Command::new("python3")
        .arg(script)
        .arg(out)
        .args(args)
        .output()
        .expect("run make_repository.py");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// Adds version `version` of `linear` to a repository [`make_repository`] wrote under `out`
/// (renamed into place whole).
pub fn add_linear_version(out: &std::path::Path, version: u64) {
    write_linear_version(out, version, false);
}

/// Writes version `version` of `linear` aside, in `linear/.incoming-{version}` (which a server
/// ignores), for the caller to rename into place: [`aside_linear_version`] names it.
pub fn write_linear_version(out: &std::path::Path, version: u64, aside: bool) {
    let version = version.to_string();
    let mut args = vec!["--linear-version", &version];
    if aside {
        args.push("--aside");
    }
    run_make_repository(out, &args);
}

/// Where [`write_linear_version`] leaves a version aside, and where it goes into place.
pub fn aside_linear_version(
    out: &std::path::Path,
    version: u64,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let linear = out.join("repository").join("linear");
    (
        linear.join(format!(".incoming-{version}")),
        linear.join(version.to_string()),
    )
}

/// The ONNX Runtime library: `ORT_DYLIB_PATH`, or the one in the onnxruntime wheel.
pub fn onnxruntime_library() -> Option<String> {
    if let Ok(p) = std::env::var("ORT_DYLIB_PATH") {
        return Some(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import onnxruntime, os, glob; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so*')))[0])",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
