//! Kill switches: thrown durably in the store, mirrored in memory for the request path.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::json;

use crate::audit::{Audit, Record};
use crate::model::{KillSwitch, KillTarget};
use crate::store::{Store, StoreError, Topic};

pub struct KillSwitches {
    store: Store,
    audit: Arc<Audit>,
    thrown: RwLock<HashMap<KillTarget, KillSwitch>>,
}

impl KillSwitches {
    /// Loads the switches thrown before a restart.
    pub async fn load(store: Store, audit: Arc<Audit>) -> Result<Self, StoreError> {
        let thrown = store.kill_list().await?.into_iter().collect();
        Ok(KillSwitches {
            store,
            audit,
            thrown: RwLock::new(thrown),
        })
    }

    /// Reads the switches again from the store: replicas on a shared store see what another
    /// threw (called every second there). On an error the switches in force stay as they were.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let thrown = self.store.kill_list().await?.into_iter().collect();
        *self.thrown.write().unwrap_or_else(|p| p.into_inner()) = thrown;
        Ok(())
    }

    /// The switch thrown for `target`, if any.
    pub fn get(&self, target: &KillTarget) -> Option<KillSwitch> {
        self.thrown
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(target)
            .cloned()
    }

    /// Every thrown switch.
    pub fn all(&self) -> HashMap<KillTarget, KillSwitch> {
        self.thrown
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Throws (`Some`) or resets (`None`) a switch: durable first, audited, then in force for
    /// the very next request.
    pub async fn set(
        &self,
        target: &KillTarget,
        value: Option<KillSwitch>,
    ) -> Result<(), StoreError> {
        self.store.kill_set(target, value.as_ref()).await?;
        // Best effort: replicas also read the switches again every second.
        if let Err(e) = self.store.announce(&Topic::Kill).await {
            tracing::debug!(error = %e, "could not announce a kill switch");
        }
        let (state, by, reason) = match &value {
            Some(k) => ("disabled", k.by.clone(), k.reason.clone()),
            None => ("enabled", String::new(), String::new()),
        };
        self.audit.record(Record {
            kind: crate::audit::Kind::KillSwitch,
            payload: json!({"target": target.to_string(), "state": state, "by": by, "reason": reason}),
            ..Default::default()
        }).await;
        let mut thrown = self.thrown.write().unwrap_or_else(|p| p.into_inner());
        match value {
            Some(v) => thrown.insert(target.clone(), v),
            None => thrown.remove(target),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_thrown_switch_is_in_force_at_once_and_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let target = KillTarget::Agent("bot".into());
        {
            let store = crate::store::open(dir.path()).unwrap();
            let audit = Arc::new(Audit::open(&store).unwrap());
            let kill = KillSwitches::load(store.clone(), audit).await.unwrap();
            assert!(kill.get(&target).is_none());
            let k = KillSwitch {
                by: "carol".into(),
                reason: "incident".into(),
                at_unix: 1,
            };
            kill.set(&target, Some(k)).await.unwrap();
            assert_eq!(kill.get(&target).unwrap().by, "carol");
            assert!(kill.get(&KillTarget::Tool("bot".into())).is_none());
        }
        let store = crate::store::open(dir.path()).unwrap();
        let audit = Arc::new(Audit::open(&store).unwrap());
        let kill = KillSwitches::load(store.clone(), audit.clone())
            .await
            .unwrap();
        assert_eq!(kill.get(&target).unwrap().reason, "incident");
        kill.set(&target, None).await.unwrap();
        assert!(kill.all().is_empty());
        assert!(store.kill_list().await.unwrap().is_empty());
    }
}
