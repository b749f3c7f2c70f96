//! TLS on toolgate's own listeners (`--listen-tls`, the admin listener, `--metrics-listen`): a
//! certificate chain and its key read from PEM files, served through a resolver that swaps in
//! the files' new contents when they change, so a certificate is rotated without a restart. A
//! new pair that does not load (unreadable, not PEM, a key that is not the certificate's) keeps
//! the old one in service, and the log says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tracing::{info, warn};

/// A certificate pair that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {path}: {message}")]
    File {
        flag: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{flag}: the key in {key} is not the certificate's in {cert} ({message})")]
    Mismatch {
        flag: &'static str,
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What a file looked like when it was last read: a change in any of these is a new file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}

/// The pair in service, handed to every handshake.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl Current {
    fn get(&self) -> Arc<CertifiedKey> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = key;
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// What a look at the files found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// Neither file changed since it was last read.
    Unchanged,
    /// The new pair is in service.
    Reloaded,
    /// The files changed but do not load: the old pair stays in service.
    Kept(String),
}

/// A listener's certificate: its files, the pair in service, and the server configuration that
/// serves it (ALPN `protocols`).
pub struct Served {
    flag: &'static str,
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Arc<Current>,
    /// The stamps of the files as last read (whether or not they loaded).
    seen: Mutex<(Option<Stamp>, Option<Stamp>)>,
    config: Arc<ServerConfig>,
}

impl Served {
    /// Loads `cert` (a PEM chain, leaf first) and `key` (PEM, PKCS#8, PKCS#1 or SEC1) for the
    /// listener `flag` names (in error messages), offering `protocols` by ALPN.
    pub fn load(
        flag: &'static str,
        cert: &Path,
        key: &Path,
        provider: Arc<CryptoProvider>,
        protocols: &[&[u8]],
    ) -> Result<Served, TlsError> {
        let seen = (stamp(cert), stamp(key));
        let pair = load_pair(flag, cert, key, &provider)?;
        let current = Arc::new(Current(RwLock::new(Arc::new(pair))));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Ok(Served {
            flag,
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current,
            seen: Mutex::new(seen),
            config: Arc::new(config),
        })
    }

    /// An acceptor for one connection's handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// The leaf certificate in service now (DER).
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.current.get().cert.first().cloned()
    }

    /// Reads the files again when either changed since it was last read.
    pub fn reload_if_changed(&self) -> Reload {
        let now = (stamp(&self.cert), stamp(&self.key));
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Reload::Unchanged;
            }
            // Noted before the read: a pair that does not load is reported once, not at every
            // look, and read again when either file changes once more.
            *seen = now;
        }
        match load_pair(self.flag, &self.cert, &self.key, &self.provider) {
            Ok(pair) => {
                self.current.set(Arc::new(pair));
                info!(listener = self.flag, cert = %self.cert.display(), "TLS certificate reloaded");
                Reload::Reloaded
            }
            Err(e) => {
                warn!(listener = self.flag, error = %e, "the changed TLS certificate does not load; the one in service stays");
                Reload::Kept(e.to_string())
            }
        }
    }

    /// Looks at the files every `every` until `cancel`.
    pub async fn watch(
        self: Arc<Self>,
        every: Duration,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {
                    // File reads and the key's parse: off the runtime's threads.
                    let me = self.clone();
                    let _ = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
                }
            }
        }
    }
}

/// Reads and checks a pair: the chain is not empty, the key parses and is the leaf's.
fn load_pair(
    flag: &'static str,
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let file = |path: &Path, message: String| TlsError::File {
        flag,
        path: path.to_path_buf(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| file(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file(cert, "no PEM certificate in the file".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| file(key, e.to_string()))?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| TlsError::Mismatch {
        flag,
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k, cert.der().to_vec())
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    #[test]
    fn a_changed_pair_is_served_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k, first) = pair(dir.path(), "one.test");
        let served = Served::load("--listen-tls-cert", &c, &k, provider(), &[]).unwrap();
        assert_eq!(served.leaf().unwrap().as_ref(), first.as_slice());
        assert_eq!(served.reload_if_changed(), Reload::Unchanged);

        let (_, _, second) = pair(dir.path(), "two.test");
        assert_eq!(served.reload_if_changed(), Reload::Reloaded);
        assert_eq!(served.leaf().unwrap().as_ref(), second.as_slice());

        // A key that is not the certificate's: refused, the second pair stays.
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&k, other.serialize_pem()).unwrap();
        match served.reload_if_changed() {
            Reload::Kept(why) => assert!(why.contains("is not the certificate's"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(served.leaf().unwrap().as_ref(), second.as_slice());
        // Reported once; not read again until a file changes.
        assert_eq!(served.reload_if_changed(), Reload::Unchanged);

        std::fs::write(&c, "not a certificate").unwrap();
        assert!(matches!(served.reload_if_changed(), Reload::Kept(_)));
        assert_eq!(served.leaf().unwrap().as_ref(), second.as_slice());
    }

    #[test]
    fn a_missing_or_empty_file_is_a_start_error() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k, _) = pair(dir.path(), "one.test");
        let missing = dir.path().join("nope.pem");
        let e = Served::load("--admin-tls-cert", &missing, &k, provider(), &[])
            .err()
            .unwrap();
        assert!(e.to_string().contains("--admin-tls-cert"), "{e}");
        std::fs::write(&c, "").unwrap();
        let e = Served::load("--admin-tls-cert", &c, &k, provider(), &[])
            .err()
            .unwrap();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
    }
}
