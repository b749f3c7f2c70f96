use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = toolgate::cli::Cli::parse();
    let format = std::env::var(toolgate::config::env::LOG_FORMAT).ok();
    toolgate::logging::init(format.as_deref());
    toolgate::cli::main(cli).await
}
