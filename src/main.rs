//! The `bcss-hub` binary: parses the command line and runs it (see `bcss_sim::cli`).

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
