//! Sealing small records at rest, for both stores.

use std::path::Path;

use super::StoreError;

/// Seals small records at rest (ChaCha20-Poly1305 under a key in `seal.key` beside the store,
/// readable by its owner only): what a held call will send may contain values that look like
/// secrets, which are shown redacted but must be sent as they were.
#[derive(Clone)]
pub struct Sealer {
    key: std::sync::Arc<ring::aead::LessSafeKey>,
}

impl Sealer {
    pub(super) fn open(dir: &Path) -> Result<Sealer, StoreError> {
        let path = dir.join("seal.key");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                match write_private(&path, &key) {
                    Ok(()) => key.to_vec(),
                    // Another replica sharing the directory wrote it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(&path)
                        .map_err(|e| {
                            StoreError::from_message(format!("{}: {e}", path.display()))
                        })?,
                    Err(e) => {
                        return Err(StoreError::from_message(format!("{}: {e}", path.display())))
                    }
                }
            }
            Err(e) => return Err(StoreError::from_message(format!("{}: {e}", path.display()))),
        };
        let key =
            ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &bytes).map_err(|_| {
                StoreError::from_message(format!("{}: not a 32-byte key", path.display()))
            })?;
        Ok(Sealer {
            key: std::sync::Arc::new(ring::aead::LessSafeKey::new(key)),
        })
    }

    /// Base64 of nonce and ciphertext.
    pub fn seal(&self, plain: &[u8]) -> Result<String, StoreError> {
        use base64::Engine;
        let nonce: [u8; 12] = rand::random();
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::empty(),
                &mut buf,
            )
            .map_err(|_| StoreError::from_message("could not seal a record".to_string()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// The plain text of a sealed record; `None` when it was altered or sealed under another key.
    pub fn open_sealed(&self, sealed: &str) -> Option<Vec<u8>> {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .ok()?;
        if raw.len() < 12 {
            return None;
        }
        let (nonce, rest) = raw.split_at(12);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, ring::aead::Aad::empty(), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_records_open_only_unaltered_and_under_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = Sealer::open(dir.path())
            .unwrap()
            .seal(b"x-token: sk_live_1")
            .unwrap();
        assert!(!sealed.contains("sk_live"));
        // The key is kept beside the store: opened again, it opens what it sealed.
        let sealer = Sealer::open(dir.path()).unwrap();
        assert_eq!(sealer.open_sealed(&sealed).unwrap(), b"x-token: sk_live_1");
        let mut bad = sealed.into_bytes();
        bad[20] = if bad[20] == b'A' { b'B' } else { b'A' };
        assert!(sealer
            .open_sealed(&String::from_utf8(bad).unwrap())
            .is_none());
        let other = tempfile::tempdir().unwrap();
        let sealed = Sealer::open(other.path()).unwrap().seal(b"x").unwrap();
        assert!(sealer.open_sealed(&sealed).is_none());
    }
}
