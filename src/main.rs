use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// mimalloc: the request path and the audit writer allocate many small, short-lived buffers
/// across threads, where glibc's allocator spent a fifth of the CPU under load. Built without
/// transparent huge pages (Cargo.toml says why).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = toolgate::cli::Cli::parse();
    let format = std::env::var(toolgate::config::env::LOG_FORMAT).ok();
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
    // Traces (serve and demo with an OTLP endpoint): the exporter runs on the runtime, and its
    // layer is installed with the log's.
    let traces = match cli.traces() {
        Ok(Some(settings)) => {
            let _entered = runtime.enter();
            match toolgate::telemetry::start(&settings) {
                Ok(started) => Some(started),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        Ok(None) => None,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (telemetry, layer) = match traces {
        Some((telemetry, layer)) => (Some(telemetry), Some(layer)),
        None => (None, None),
    };
    toolgate::logging::init(format.as_deref(), layer);
    let code = runtime.block_on(toolgate::cli::main(cli, telemetry));
    // `run` already gave in-flight requests the grace period: whatever is still running now
    // (a stuck upstream read, say) must not keep the process alive past SIGTERM.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}
