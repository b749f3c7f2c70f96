use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// mimalloc: the request path and the audit writer allocate many small, short-lived buffers
/// across threads, where glibc's allocator spent a fifth of the CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = toolgate::cli::Cli::parse();
    let format = std::env::var(toolgate::config::env::LOG_FORMAT).ok();
    toolgate::logging::init(format.as_deref());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(toolgate::cli::main(cli));
    // `run` already gave in-flight requests the grace period: whatever is still running now
    // (a stuck upstream read, say) must not keep the process alive past SIGTERM.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}
