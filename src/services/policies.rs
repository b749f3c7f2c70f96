//! The policy set in force, and its reload: a new set replaces the old one whole, or not at all.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::json;
use tracing::{info, warn};

use crate::audit::{Audit, Record};
use crate::policy::{Policy, PolicyError};

pub struct Policies {
    dir: PathBuf,
    current: RwLock<Arc<Policy>>,
    /// The fingerprint of the folder the policy in force (or the last broken set) was read from.
    fingerprint: Mutex<u64>,
    audit: Arc<Audit>,
}

impl Policies {
    /// Loads the folder; a broken set is an error (toolgate does not start on it).
    pub fn load(dir: &Path, audit: Arc<Audit>) -> Result<Self, PolicyError> {
        let print = fingerprint(dir);
        let policy = Policy::load_dir(dir)?;
        audit.redactor.set_secrets(policy.secrets());
        Ok(Policies {
            dir: dir.to_path_buf(),
            current: RwLock::new(Arc::new(policy)),
            fingerprint: Mutex::new(print),
            audit,
        })
    }

    /// The policy set in force now.
    pub fn current(&self) -> Arc<Policy> {
        // A poisoned lock still holds a complete policy: writers only swap an Arc.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Loads the folder again. If it fails to load, the old set stays in force and the reason
    /// is returned (and logged, and audited).
    pub fn reload(&self) -> Result<(), PolicyError> {
        let print = fingerprint(&self.dir);
        // Remember the fingerprint either way, so a broken set is not retried every tick.
        *self.fingerprint.lock().unwrap_or_else(|p| p.into_inner()) = print;
        match Policy::load_dir(&self.dir) {
            Ok(new) => {
                let tools = new.tools().len();
                self.audit.redactor.set_secrets(new.secrets());
                self.audit.record_now(Record {
                    kind: crate::audit::Kind::PolicyReload,
                    payload: json!({"result": "loaded", "tools": tools}),
                    ..Default::default()
                });
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
                info!(tools, "policies reloaded");
                Ok(())
            }
            Err(e) => {
                warn!(error = %e, "policy reload failed; the previous policies stay in force");
                self.audit.record_now(Record {
                    kind: crate::audit::Kind::PolicyReload,
                    payload: json!({"result": "refused; the previous policies stay in force", "error": e.to_string()}),
                    ..Default::default()
                });
                Err(e)
            }
        }
    }

    /// Reloads when any file under the folder changed since the last load.
    pub fn reload_if_changed(&self) {
        let last = *self.fingerprint.lock().unwrap_or_else(|p| p.into_inner());
        if fingerprint(&self.dir) != last {
            let _ = self.reload();
        }
    }
}

/// A cheap fingerprint of every file under `dir` (names, sizes, modification times), so that an
/// edit to a policy, a schema or a secret file triggers a reload.
fn fingerprint(dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64, Option<std::time::SystemTime>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // Follow symlinks: mounted config maps swap a symlink on update.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                walk(&path, out);
            } else {
                out.push((path, meta.len(), meta.modified().ok()));
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    files.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOOL: &str = r#"
[[tool]]
name = "t.read"
host = "api.example.test"
method = "GET"
path = "/v1/x"
mode = "auto"
"#;

    #[test]
    fn a_broken_reload_keeps_the_set_in_force() {
        let data = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), TOOL).unwrap();
        let store = crate::store::open(data.path()).unwrap();
        let audit = Arc::new(Audit::open(&store).unwrap());
        let policies = Policies::load(dir.path(), audit).unwrap();
        assert_eq!(policies.current().tools().len(), 1);
        std::fs::write(dir.path().join("b.toml"), "[[tool]]\nname = 3\n").unwrap();
        assert!(policies.reload().is_err());
        assert_eq!(policies.current().tools().len(), 1);
        std::fs::remove_file(dir.path().join("b.toml")).unwrap();
        std::fs::write(
            dir.path().join("b.toml"),
            TOOL.replace("t.read", "t.other").replace("/v1/x", "/v1/y"),
        )
        .unwrap();
        policies.reload_if_changed();
        assert_eq!(policies.current().tools().len(), 2);
    }
}
