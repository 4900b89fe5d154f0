//! The `billstream` command: see `billstream --help`.

fn main() -> std::process::ExitCode {
    billstream::cli::main()
}

// mimalloc: the core-path benchmark measured it well ahead of the system
// allocator for billstream's many small, short-lived allocations
// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
