//! The `friday` binary: everything lives in the library; see `friday --help`.

fn main() -> std::process::ExitCode {
    friday::cli::main()
}
