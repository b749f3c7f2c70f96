//! A test PKI standing in for the public web's: a CA, server certificates signed by it, and the
//! TLS client configuration that trusts a PEM bundle.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority for test upstreams (standing in for the public web PKI).
pub struct Pki {
    /// The CA certificate (PEM) in a file, for `--upstream-ca`.
    pub ca_path: PathBuf,
    _dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let ca_pem = cert.pem();
        let issuer = Issuer::new(params, key);
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("upstream-ca.pem");
        std::fs::write(&ca_path, &ca_pem).unwrap();
        Pki {
            ca_path,
            _dir: dir,
            issuer,
        }
    }

    /// A certificate for `hosts` and its private key, both PEM (for servers we do not run in
    /// process, such as PostgreSQL).
    pub fn server_pem(&self, hosts: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(&self.ca_path).unwrap()
    }

    /// A certificate for `hosts` and its key written to `cert.pem` and `key.pem` in a folder of
    /// their own, for a listener toolgate serves over TLS.
    pub fn served_files(&self, hosts: &[&str]) -> ServedFiles {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let files = ServedFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            ca_pem: self.ca_pem(),
            _dir: dir,
        };
        files.write(&self.server_pem(hosts));
        files
    }

    /// A TLS server configuration for `hosts`, offering h2 and http/1.1.
    pub fn server_config(&self, hosts: &[&str]) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

pub fn root_store(pem: &str) -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    roots
}

pub fn client_tls(ca_pem: &str, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(root_store(ca_pem))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

/// A listener's certificate and key files (as `--listen-tls-cert/-key` name them), and the CA
/// that signed them.
#[derive(Clone)]
pub struct ServedFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_pem: String,
    _dir: Arc<tempfile::TempDir>,
}

impl ServedFiles {
    /// Files made elsewhere (`toolgate ca issue`), signed by `ca_pem`.
    pub fn existing(cert: PathBuf, key: PathBuf, ca_pem: String) -> ServedFiles {
        ServedFiles {
            cert,
            key,
            ca_pem,
            _dir: Arc::new(tempfile::tempdir().unwrap()),
        }
    }

    pub fn files(&self) -> toolgate::config::TlsFiles {
        toolgate::config::TlsFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    /// Replaces the files with a new pair (rotation): the key first, then the certificate,
    /// each by rename, as a secret mount updates.
    pub fn write(&self, (cert, key): &(String, String)) {
        for (path, text) in [(&self.key, key), (&self.cert, cert)] {
            let tmp = path.with_extension("new");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    }
}

/// A P-256 key, as an identity provider holds it: the signing key for jsonwebtoken and the
/// public JWK (`kid`, ES256) its JWKS publishes.
pub fn es256_key(kid: &str) -> (jsonwebtoken::EncodingKey, serde_json::Value) {
    use base64::Engine;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let public = pair.public_key().as_ref();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&public[1..33]),
                     "y": b64(&public[33..65]), "kid": kid, "alg": "ES256", "use": "sig"});
    (jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
}
