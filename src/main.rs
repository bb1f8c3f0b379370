//! The `bcss-hub` binary: parses the command line and runs it (see `bcss_sim::cli`).

/// mimalloc instead of glibc's malloc: under load the hub allocates and frees small buffers on
/// both worker threads, and glibc's arenas cost 14 % of its CPU samples plus lock waits
/// (docs/BENCHMARKS.md, "Profile, second round").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match bcss_sim::cli::main().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
