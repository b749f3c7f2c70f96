//! Wake-ups for calls held on a proposal: a decision notifies the waiting request, here and,
//! on a shared store, on every other replica (which hears it through `Backend::subscribe`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tracing::debug;

use crate::model::Outcome;
use crate::store::{Store, Topic};

/// How long the whole answer of a commit its approval sent stays here for the calls that wait
/// on it, and how many (and how large) are kept.
const ANSWER_TTL: std::time::Duration = std::time::Duration::from_secs(30);
const ANSWERS_KEPT: usize = 64;
const ANSWER_MAX_BYTES: usize = 1024 * 1024;

pub struct Waiters {
    map: Mutex<HashMap<String, Arc<Notify>>>,
    /// The answer of a commit its approval sent (`on_approval`), as the agent sees it (hidden
    /// fields out), for a call held on this replica meanwhile: it gets the whole answer, as a
    /// held call that commits itself does, instead of the stored (kept) fields.
    answers: Mutex<HashMap<String, (std::time::Instant, Outcome)>>,
    /// The store to announce on when other replicas share it.
    shared: Option<Store>,
}

impl Waiters {
    pub fn new(store: &Store) -> Self {
        Waiters {
            map: Mutex::default(),
            answers: Mutex::default(),
            shared: store.shared().then(|| store.clone()),
        }
    }

    /// Another replica announced that proposal `id` changed: wakes what waits on it here.
    pub fn heard(&self, id: &str) {
        self.get(id).notify_waiters();
    }

    /// What to wait on for proposal `id`.
    pub fn get(&self, id: &str) -> Arc<Notify> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 4096 {
            map.retain(|_, n| Arc::strong_count(n) > 1);
        }
        map.entry(id.to_string()).or_default().clone()
    }

    /// Keeps the answer of proposal `id`'s commit for the calls that wait on it here (a while).
    pub fn keep_answer(&self, id: &str, answer: &Outcome) {
        if answer.body.len() > ANSWER_MAX_BYTES {
            return;
        }
        let mut map = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (at, _)| at.elapsed() < ANSWER_TTL);
        if map.len() < ANSWERS_KEPT {
            map.insert(id.to_string(), (std::time::Instant::now(), answer.clone()));
        }
    }

    /// The answer kept for proposal `id`, if its commit ran here lately.
    pub fn answer(&self, id: &str) -> Option<Outcome> {
        let map = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id)
            .filter(|(at, _)| at.elapsed() < ANSWER_TTL)
            .map(|(_, o)| o.clone())
    }

    /// Wakes everything waiting on proposal `id`, here and on the other replicas.
    pub fn notify(&self, id: &str) {
        self.get(id).notify_waiters();
        if let Some(store) = &self.shared {
            let (store, topic) = (store.clone(), Topic::Proposal(id.to_string()));
            // Best effort: replicas also look again every second.
            tokio::spawn(async move {
                if let Err(e) = store.announce(&topic).await {
                    debug!(error = %e, "could not announce a proposal change");
                }
            });
        }
    }
}
