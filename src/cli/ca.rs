//! `toolgate ca init|export`: the local certificate authority agents trust.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::config::env;

use super::fail;

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create certs/ca.pem and certs/ca-key.pem (the key is readable by its owner only).
    Init {
        #[arg(long, env = env::CERTS, default_value = "./certs")]
        certs: PathBuf,
        /// Replace an existing CA (agents must then trust the new one).
        #[arg(long)]
        force: bool,
    },
    /// Print the CA certificate (PEM) for agents to trust.
    Export {
        #[arg(long, env = env::CERTS, default_value = "./certs")]
        certs: PathBuf,
    },
}

pub(super) fn run(command: CaCommand) -> ExitCode {
    match command {
        CaCommand::Init { certs, force } => {
            let path = certs.join(crate::ca::CA_CERT_FILE);
            match crate::ca::init(&certs, force) {
                Ok(true) => say!("created {}", path.display()),
                Ok(false) => say!(
                    "{} already exists; use --force to replace it",
                    path.display()
                ),
                Err(e) => return fail(&e.to_string()),
            }
            ExitCode::SUCCESS
        }
        CaCommand::Export { certs } => match crate::ca::export(&certs) {
            Ok(pem) => {
                say!(raw "{pem}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("{e} (run `toolgate ca init` first)")),
        },
    }
}
