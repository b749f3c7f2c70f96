//! `toolgate ca init|export|issue`: the local certificate authority agents trust, and the
//! certificates of toolgate's own TLS listeners it signs.

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
    /// Mint a certificate for toolgate's own TLS listeners (--listen-tls-cert/-key), signed by
    /// this CA: agents that trust ca.pem trust it too. Writes OUT/toolgate.pem and
    /// OUT/toolgate-key.pem.
    Issue {
        /// The names agents reach toolgate by (DNS names or addresses).
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long, env = env::CERTS, default_value = "./certs")]
        certs: PathBuf,
        #[arg(long, default_value = "./tls")]
        out: PathBuf,
        /// How long it is valid (replace the files before then: toolgate reloads them).
        #[arg(long, default_value_t = 90)]
        days: u32,
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
        CaCommand::Issue {
            names,
            certs,
            out,
            days,
        } => match crate::ca::issue(&certs, &names, days, &out) {
            Ok((chain, key)) => {
                say!("wrote {} and {}", chain.display(), key.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("{e} (the CA must exist: `toolgate ca init`)")),
        },
        CaCommand::Export { certs } => match crate::ca::export(&certs) {
            Ok(pem) => {
                say!(raw "{pem}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("{e} (run `toolgate ca init` first)")),
        },
    }
}
