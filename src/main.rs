//! The `billstream` command: see `billstream --help`.

fn main() -> std::process::ExitCode {
    billstream::cli::main()
}
