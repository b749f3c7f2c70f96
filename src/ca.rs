//! The local certificate authority and its cache of leaf certificates.
//!
//! Agents trust `certs/ca.pem`; toolgate mints a leaf for each host it intercepts, each with its
//! own key (never the CA's), and caches the resulting rustls `ServerConfig` per host.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

/// File names inside the certs folder.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// How long a minted leaf is valid, and how long it is served from the cache before a new one is
/// minted (well before it expires).
const LEAF_VALIDITY: time::Duration = time::Duration::days(30);
const LEAF_REFRESH: Duration = Duration::from_secs(7 * 24 * 3600);
/// A bound on the cache so a stream of distinct hosts cannot grow memory without limit.
const LEAF_CACHE_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates a new CA in `dir` unless one is already there. Returns true when it created one.
pub fn init(dir: &Path, overwrite: bool) -> Result<bool, CaError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    if !overwrite && (cert_path.exists() || key_path.exists()) {
        if cert_path.exists() && key_path.exists() {
            return Ok(false);
        }
        return Err(CaError::Invalid(format!(
            "{} holds only half of a CA ({} and {} must both exist); remove it or run `toolgate ca init --force`",
            dir.display(),
            CA_CERT_FILE,
            CA_KEY_FILE
        )));
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "toolgate local CA");
    dn.push(DnType::OrganizationName, "toolgate");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    let cert = params.self_signed(&key)?;

    write_private(&key_path, key.serialize_pem().as_bytes())?;
    fs::write(&cert_path, cert.pem()).map_err(io_err(&cert_path))?;
    Ok(true)
}

/// Writes a file readable only by its owner (the CA key).
fn write_private(path: &Path, data: &[u8]) -> Result<(), CaError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err(path))?;
    }
    Ok(())
}

/// The most days `toolgate ca issue` gives a listener's certificate.
pub const ISSUE_MAX_DAYS: u32 = 825;

/// Mints a certificate for toolgate's own listeners (`--listen-tls`, the admin listener) for
/// `names` (DNS names or addresses), signed by the CA in `dir`, valid `days`: agents that trust
/// the CA already trust it. Written to `out` as `toolgate.pem` (the leaf, then the CA) and
/// `toolgate-key.pem` (its own key, readable by its owner only). Returns the two paths.
pub fn issue(
    dir: &Path,
    names: &[String],
    days: u32,
    out: &Path,
) -> Result<(PathBuf, PathBuf), CaError> {
    if names.is_empty() || days == 0 || days > ISSUE_MAX_DAYS {
        return Err(CaError::Invalid(format!(
            "name at least one host, and between 1 and {ISSUE_MAX_DAYS} days"
        )));
    }
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let ca_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
    let ca_key = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key)?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names[0].as_str());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    let leaf = params.signed_by(&key, &issuer)?;
    fs::create_dir_all(out).map_err(io_err(out))?;
    let (chain, private) = (out.join("toolgate.pem"), out.join("toolgate-key.pem"));
    // The key first: a listener watching these files never sees a certificate without it.
    write_private(&private, key.serialize_pem().as_bytes())?;
    fs::write(&chain, format!("{}{}", leaf.pem(), ca_pem)).map_err(io_err(&chain))?;
    Ok((chain, private))
}

/// Reads the CA certificate as PEM (for `toolgate ca export`).
pub fn export(dir: &Path) -> Result<String, CaError> {
    let path = dir.join(CA_CERT_FILE);
    fs::read_to_string(&path).map_err(io_err(&path))
}

/// The loaded CA, minting and caching a server configuration per intercepted host.
pub struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
    cache: Mutex<HashMap<String, (Instant, Arc<ServerConfig>)>>,
}

impl CertAuthority {
    /// Loads the CA from `dir`, creating it first when it is missing.
    pub fn load_or_init(dir: &Path, provider: Arc<CryptoProvider>) -> Result<Self, CaError> {
        init(dir, false)?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        let ca_der = {
            use rustls::pki_types::pem::PemObject;
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
                CaError::Invalid(format!(
                    "{}: not a PEM certificate: {e}",
                    cert_path.display()
                ))
            })?
        };
        Ok(CertAuthority {
            issuer,
            ca_der,
            provider,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate in DER form.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The TLS server configuration for `host` (a DNS name or an IP literal), minted on first
    /// use and cached.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        let host = host.to_ascii_lowercase();
        if let Some((at, cfg)) = self.lock().get(&host) {
            if at.elapsed() < LEAF_REFRESH {
                return Ok(cfg.clone());
            }
        }
        // Minting happens outside the lock; two racing handshakes may both mint, which is
        // harmless and keeps the lock short.
        let cfg = Arc::new(self.mint(&host)?);
        let mut cache = self.lock();
        if cache.len() >= LEAF_CACHE_MAX {
            cache.clear();
        }
        cache.insert(host, (Instant::now(), cfg.clone()));
        Ok(cfg)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Arc<ServerConfig>)>> {
        // A poisoned cache only holds configs; the data is still good.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mint(&self, host: &str) -> Result<ServerConfig, CaError> {
        let leaf_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![host.to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + LEAF_VALIDITY;
        let leaf = params.signed_by(&leaf_key, &self.issuer)?;

        let chain = vec![leaf.der().clone(), self.ca_der.clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_private_key_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        assert!(init(dir.path(), false).unwrap());
        assert!(!init(dir.path(), false).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(CA_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(export(dir.path()).unwrap().contains("BEGIN CERTIFICATE"));
    }

    #[test]
    fn leaves_are_cached_per_host() {
        let dir = tempfile::tempdir().unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca = CertAuthority::load_or_init(dir.path(), provider).unwrap();
        let a = ca.server_config("api.stripe.com").unwrap();
        let b = ca.server_config("API.stripe.com").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = ca.server_config("127.0.0.1").unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[test]
    fn issued_listener_certificates_chain_to_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), false).unwrap();
        let out = dir.path().join("tls");
        let names = vec!["toolgate.internal".to_string(), "10.0.0.5".to_string()];
        let (chain, key) = issue(dir.path(), &names, 90, &out).unwrap();
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&chain)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let private = PrivateKeyDer::from_pem_file(&key).unwrap();
        let provider = rustls::crypto::ring::default_provider();
        let pair = rustls::sign::CertifiedKey::from_der(certs, private, &provider).unwrap();
        assert!(pair.keys_match().is_ok(), "the key is the leaf's");
        let pem = fs::read_to_string(&chain).unwrap();
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2, "leaf and CA");
        assert!(issue(dir.path(), &[], 90, &out).is_err());
        assert!(issue(dir.path(), &names, 9999, &out).is_err());
    }

    #[test]
    fn half_a_ca_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CA_CERT_FILE), "x").unwrap();
        assert!(init(dir.path(), false).is_err());
    }
}
