//! The command line: `friday serve` and its flags, `friday bench`, `friday doctor`.
//!
//! Flags override the config file, which overrides the built-in defaults. Every flag's help
//! names its default; a test keeps those texts in step with the constants in [`crate::config`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, EngineChoice, LogFormat, ModelControlMode};

/// friday: a thread-per-core KServe v2 inference server.
#[derive(Debug, Parser)]
#[command(name = "friday", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the KServe v2 protocol over HTTP/1.1, one pinned shard per CPU.
    Serve(ServeArgs),
    /// Load a KServe v2 server (friday, Triton, …): open or closed loop, latency percentiles, plots.
    Bench(Box<crate::bench::BenchArgs>),
    /// Check this host for `friday serve` with the same flags: a verdict per check and the fix
    /// for each problem; exits 1 if friday could not start as configured.
    Doctor(ServeArgs),
}

/// `friday serve` flags. Unset flags fall back to the config file, then to the defaults.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// TOML config file (keys as in the README's config table) [default: none, built-in defaults]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// IP address to listen on [default: 0.0.0.0]
    #[arg(long, value_name = "ADDR")]
    pub http_address: Option<String>,
    /// TCP port to listen on; 0 picks a free port [default: 8000]
    #[arg(long, value_name = "PORT")]
    pub http_port: Option<u16>,
    /// Join other friday processes already listening on the port (SO_REUSEPORT) instead of
    /// refusing it: a blue-green handover on one host (deploy/systemd/bluegreen.sh)
    /// [default: off]
    #[arg(long)]
    pub http_reuse_port: bool,
    /// Number of shards, on the first CPUs of the affinity mask [default: one per CPU in the mask]
    #[arg(long, value_name = "N", conflicts_with = "cpus")]
    pub shards: Option<usize>,
    /// CPUs to run one shard each on, e.g. 0,2-3 [default: every CPU in the affinity mask]
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,
    /// A Triton-layout repository of ONNX models to serve beside the built-in ones
    /// [default: none, the built-in models only]
    #[arg(long, value_name = "DIR")]
    pub model_repository: Option<PathBuf>,
    /// How models are loaded and unloaded at run time, as Triton's: none (every repository model
    /// at start), poll (and rescan the repository), explicit (only --load-model at start; the
    /// repository API loads and unloads) [default: none]
    #[arg(long, value_name = "MODE", value_enum)]
    pub model_control_mode: Option<ModelControlMode>,
    /// In explicit mode, a model to load at start (repeatable; * loads every model)
    /// [default: none]
    #[arg(long = "load-model", value_name = "NAME")]
    pub load_model: Vec<String>,
    /// In poll mode, seconds between two scans of the repository [default: 15]
    #[arg(long, value_name = "SECS")]
    pub repository_poll_secs: Option<u64>,
    /// Bytes the response cache may hold across the server, split among the shards; models opt
    /// in with response_cache [default: 0, no cache]
    #[arg(long, value_name = "BYTES", conflicts_with = "cache_config")]
    pub cache_size: Option<u64>,
    /// Triton's spelling of --cache-size: local,size=BYTES
    #[arg(long, value_name = "SPEC")]
    pub cache_config: Option<String>,
    /// Stop the start if a model fails to load, as Triton's --exit-on-error [default: off]
    #[arg(long)]
    pub exit_on_error: bool,
    /// Restrict the model repository API to requests carrying this header and value, as
    /// Triton's: model-repository:HEADER=VALUE [default: unrestricted]
    #[arg(long, value_name = "SPEC")]
    pub http_restricted_api: Option<String>,
    /// I/O engine: io_uring where the host allows it, else epoll (auto), or one of them
    /// [default: auto]
    #[arg(long, value_name = "ENGINE", value_enum, env = "FRIDAY_ENGINE")]
    pub engine: Option<EngineChoice>,
    /// Log format [default: text]
    #[arg(long, value_name = "FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Validate the configuration, print it, and exit (0 if valid, 2 if not)
    #[arg(long)]
    pub check_config: bool,
}

impl ServeArgs {
    /// The config file (or defaults) with these flags applied, validated.
    pub fn config(&self) -> Result<Config, String> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(a) = &self.http_address {
            config.http.address = a.clone();
        }
        if let Some(p) = self.http_port {
            config.http.port = p;
        }
        if self.http_reuse_port {
            config.http.reuse_port = true;
        }
        // One flag replaces whatever the file said about shards.
        if let Some(n) = self.shards {
            config.shards.count = Some(n);
            config.shards.cpus = None;
        }
        if let Some(c) = &self.cpus {
            config.shards.cpus = Some(c.clone());
            config.shards.count = None;
        }
        if let Some(r) = &self.model_repository {
            config.model_repository = Some(r.clone());
        }
        if let Some(m) = self.model_control_mode {
            config.model_control.mode = m;
        }
        if !self.load_model.is_empty() {
            config.model_control.load = self.load_model.clone();
        }
        if let Some(s) = self.repository_poll_secs {
            config.model_control.poll_secs = s;
        }
        if let Some(n) = self.cache_size {
            config.cache.size_bytes = n;
        }
        if let Some(spec) = &self.cache_config {
            config.cache.size_bytes = parse_cache_config(spec)?;
        }
        if self.exit_on_error {
            config.model_control.exit_on_error = true;
        }
        if let Some(spec) = &self.http_restricted_api {
            let rest = spec.strip_prefix("model-repository:").ok_or_else(|| {
                format!(
                    "--http-restricted-api {spec}: friday restricts the model-repository API \
                     only; write model-repository:HEADER=VALUE"
                )
            })?;
            config.model_control.restricted_api = Some(rest.to_string());
        }
        if let Some(e) = self.engine {
            config.engine = e;
        }
        if let Some(f) = self.log_format {
            config.log.format = f;
        }
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Bench(args) => crate::bench::main(&args),
        Command::Doctor(args) => doctor(&args),
    }
}

/// The configuration `args` give, or the exit status (2) once the error is printed.
fn checked_config(args: &ServeArgs) -> Result<Config, ExitCode> {
    args.config().map_err(|e| {
        eprintln!("friday: invalid configuration: {e}");
        ExitCode::from(2)
    })
}

/// `friday doctor`: every check, printed, then a summary.
fn doctor(args: &ServeArgs) -> ExitCode {
    let config = match checked_config(args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let checks = crate::doctor::checks(
        &config,
        std::path::Path::new("/"),
        &crate::doctor::Probes::live(&config, true),
    );
    for c in &checks {
        println!("{c}");
    }
    let count = |v| checks.iter().filter(|c| c.verdict == v).count();
    use crate::doctor::Verdict;
    println!(
        "{} ok, {} warning(s), {} failure(s)",
        count(Verdict::Ok),
        count(Verdict::Warn),
        count(Verdict::Fail)
    );
    if crate::doctor::worst(&checks) == Verdict::Fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The preflight `serve` runs before any shard starts: warnings are logged with their fix; a
/// failure stops the start with its message and fix (exit 1).
fn preflight(config: &Config) -> Result<(), String> {
    use crate::doctor::{checks, Probes, Verdict};
    let checks = checks(
        config,
        std::path::Path::new("/"),
        &Probes::live(config, false),
    );
    let mut failed = Vec::new();
    for c in &checks {
        let fix = c.fix.as_deref().unwrap_or("");
        match c.verdict {
            Verdict::Ok => {}
            Verdict::Warn => tracing::warn!(check = c.name, found = %c.found, fix, "preflight"),
            Verdict::Fail => failed.push(format!("{}: {}; {fix}", c.name, c.found)),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("preflight failed: {}", failed.join("; ")))
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let config = match checked_config(args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if args.check_config {
        println!("# configuration OK\n{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    crate::telemetry::init(&config.log);
    // rten prepacks a model's weights at load on its global pool, sized to the machine unless
    // told otherwise; inference runs on pools of one thread per calling thread (see
    // `model::onnx`). One thread suffices for loads, and no idle pool waits beside the shards.
    // Set here, before any other thread exists.
    if std::env::var_os("RTEN_NUM_THREADS").is_none() {
        std::env::set_var("RTEN_NUM_THREADS", "1");
    }
    if let Err(e) = preflight(&config) {
        tracing::error!("{e}");
        eprintln!("friday: {e}");
        return ExitCode::FAILURE;
    }
    match crate::runtime::serve(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("friday: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Triton's `--cache-config local,size=N`: the local cache's size in bytes.
fn parse_cache_config(spec: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "--cache-config {spec}: friday has Triton's local cache only; write \
             local,size=BYTES (or --cache-size BYTES)"
        )
    };
    let rest = spec.strip_prefix("local,").ok_or_else(bad)?;
    let size = rest.strip_prefix("size=").ok_or_else(bad)?;
    size.parse().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_HTTP_ADDRESS, DEFAULT_HTTP_PORT};
    use clap::CommandFactory;

    #[test]
    fn help_names_the_real_defaults() {
        let mut cmd = Cli::command();
        let serve = cmd.find_subcommand_mut("serve").unwrap();
        let help = serve.render_help().to_string();
        assert!(
            help.contains(&format!("[default: {DEFAULT_HTTP_PORT}]")),
            "{help}"
        );
        assert!(
            help.contains(&format!("[default: {DEFAULT_HTTP_ADDRESS}]")),
            "{help}"
        );
        assert!(help.contains("--check-config"));
        assert!(
            help.contains(&format!(
                "[default: {}]",
                crate::config::DEFAULT_REPOSITORY_POLL_SECS
            )),
            "{help}"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("friday-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[http]\nport = 9000\n[shards]\ncpus = \"0\"\n").unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            shards: Some(1),
            ..ServeArgs::default()
        };
        let c = args.config().unwrap();
        assert_eq!(c.http.port, 9000);
        assert_eq!(c.shards.count, Some(1));
        assert_eq!(c.shards.cpus, None);
        let args = ServeArgs {
            config: Some(file),
            http_port: Some(1234),
            ..ServeArgs::default()
        };
        assert_eq!(args.config().unwrap().http.port, 1234);
    }

    #[test]
    fn the_cache_size_comes_from_either_spelling() {
        let size = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["friday", "serve"], args].concat()).unwrap();
            let Command::Serve(args) = cli.command else {
                unreachable!()
            };
            args.config().map(|c| c.cache.size_bytes)
        };
        assert_eq!(size(&[]), Ok(0));
        assert_eq!(size(&["--cache-size", "1048576"]), Ok(1 << 20));
        assert_eq!(size(&["--cache-config", "local,size=4096"]), Ok(4096));
        let e = size(&["--cache-config", "redis,host=x"]).unwrap_err();
        assert!(e.contains("local,size=BYTES"), "{e}");
        assert!(Cli::try_parse_from([
            "friday",
            "serve",
            "--cache-size",
            "1",
            "--cache-config",
            "local,size=2"
        ])
        .is_err());
    }

    #[test]
    fn conflicting_flags_are_refused() {
        assert!(Cli::try_parse_from(["friday", "serve", "--shards", "1", "--cpus", "0"]).is_err());
    }
}
