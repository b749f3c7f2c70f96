//! The tool calls models lately asked of each agent (read from the model answers that passed
//! through toolgate), for joining each contracted call to the answer that asked for it. Kept in
//! memory, per agent, for [`WINDOW`] and at most [`PER_AGENT`] calls.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a model's tool call waits to be carried out.
pub const WINDOW: Duration = Duration::from_secs(600);
/// Tool calls kept per agent.
const PER_AGENT: usize = 256;

/// One tool call a model asked for.
#[derive(Debug, Clone)]
pub struct ModelAsk {
    /// The model call's request id.
    pub request_id: String,
    pub model: Option<String>,
    pub answer_id: Option<String>,
    pub call_id: Option<String>,
    pub name: String,
    pub arguments: Value,
    at: Instant,
}

impl ModelAsk {
    pub fn new(
        request_id: &str,
        model: Option<String>,
        answer_id: Option<String>,
        call: &Value,
    ) -> ModelAsk {
        ModelAsk {
            request_id: request_id.to_string(),
            model,
            answer_id,
            call_id: call["id"].as_str().map(str::to_string),
            name: call["name"].as_str().unwrap_or("").to_string(),
            arguments: call["arguments"].clone(),
            at: Instant::now(),
        }
    }
}

/// The recent model tool calls of every agent, and when a model last answered it.
#[derive(Default)]
pub struct ModelAsks {
    by_agent: Mutex<HashMap<String, Recent>>,
}

struct Recent {
    asks: VecDeque<ModelAsk>,
    last_answer: Instant,
}

impl ModelAsks {
    /// Notes a model answer to `agent` and the tool calls it asked for (perhaps none).
    pub fn asked(&self, agent: &str, asks: Vec<ModelAsk>) {
        let mut map = self.by_agent.lock().unwrap_or_else(|p| p.into_inner());
        let recent = map.entry(agent.to_string()).or_insert_with(|| Recent {
            asks: VecDeque::new(),
            last_answer: Instant::now(),
        });
        recent.last_answer = Instant::now();
        recent.asks.extend(asks);
        while recent.asks.len() > PER_AGENT {
            recent.asks.pop_front();
        }
        recent.asks.retain(|a| a.at.elapsed() < WINDOW);
    }

    /// The recent tool calls of `agent` that `matches` accepts, with how it matched; `None`
    /// when no model answered the agent through toolgate within the window (nothing to join).
    pub fn find(
        &self,
        agent: &str,
        matches: impl Fn(&ModelAsk) -> Option<&'static str>,
    ) -> Option<Vec<(ModelAsk, &'static str)>> {
        let map = self.by_agent.lock().unwrap_or_else(|p| p.into_inner());
        let recent = map
            .get(agent)
            .filter(|r| r.last_answer.elapsed() < WINDOW)?;
        Some(
            recent
                .asks
                .iter()
                .filter(|a| a.at.elapsed() < WINDOW)
                .filter_map(|a| matches(a).map(|how| (a.clone(), how)))
                .collect(),
        )
    }
}
