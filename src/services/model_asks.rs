//! The tool calls models lately asked of each agent (read from the model answers that passed
//! through toolgate), for joining each contracted call to the answer that asked for it. Kept in
//! memory, per agent, for the join window (`--model-join-window`, [`WINDOW`] by default) and at
//! most [`PER_AGENT`] calls. A tool call asked in a job (`Toolgate-Job`), or for a person, is
//! carried out in that job and for that person: a call in another job, or for someone else,
//! is not joined to it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a model's tool call waits to be carried out, unless `--model-join-window` says.
pub const WINDOW: Duration = crate::config::MODEL_JOIN_WINDOW;
/// Tool calls kept per agent.
pub const PER_AGENT: usize = 256;

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
    /// The job the model call named, if it named one.
    pub job: Option<String>,
    /// The person the model call acted for, if any.
    pub user: Option<String>,
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
            job: None,
            user: None,
            at: Instant::now(),
        }
    }

    /// The same, asked at `at` (an answer another replica recorded).
    pub fn asked_at(mut self, at: Instant) -> ModelAsk {
        self.at = at;
        self
    }

    /// The same, asked in `job` for `user` (each when the model call named one).
    pub fn within(mut self, job: Option<String>, user: Option<String>) -> ModelAsk {
        self.job = job;
        self.user = user;
        self
    }

    /// Whether a call in `job` for `user` may carry this out: a tool call asked in a job is
    /// carried out in it, and one asked for a person is carried out for them; where either
    /// side names none, the call joins freely (a model call and its tool call often go
    /// through different tunnels, only one of which names the job).
    fn fits(&self, whose: &Whose<'_>) -> bool {
        let same = |asked: Option<&str>, call: Option<&str>| match (asked, call) {
            (Some(asked), Some(call)) => asked == call,
            _ => true,
        };
        same(self.job.as_deref(), whose.job) && same(self.user.as_deref(), whose.user)
    }
}

/// Whose call is joined: the agent's, in a job, for a person.
#[derive(Debug, Clone, Copy)]
pub struct Whose<'a> {
    pub agent: &'a str,
    pub job: Option<&'a str>,
    pub user: Option<&'a str>,
}

/// The recent model tool calls of every agent, and when a model last answered it.
pub struct ModelAsks {
    by_agent: Mutex<HashMap<String, Recent>>,
    window: Duration,
}

impl Default for ModelAsks {
    fn default() -> Self {
        ModelAsks::new(WINDOW)
    }
}

struct Recent {
    asks: VecDeque<ModelAsk>,
    last_answer: Instant,
}

impl ModelAsks {
    /// Joins within `window`.
    pub fn new(window: Duration) -> ModelAsks {
        ModelAsks {
            by_agent: Mutex::default(),
            window,
        }
    }

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
        recent.asks.retain(|a| a.at.elapsed() < self.window);
    }

    /// The recent tool calls of `agent` that a call in `job` may carry out and `matches`
    /// accepts, with how it matched: those noted here, and `elsewhere` (what the other replicas
    /// recorded lately; `None` when they recorded no model answer to the agent). `None` when no
    /// model answered the agent through toolgate within the window (nothing to join).
    pub fn find(
        &self,
        whose: &Whose<'_>,
        elsewhere: Option<Vec<ModelAsk>>,
        matches: impl Fn(&ModelAsk) -> Option<&'static str>,
    ) -> Option<Vec<(ModelAsk, &'static str)>> {
        let map = self.by_agent.lock().unwrap_or_else(|p| p.into_inner());
        let here = map
            .get(whose.agent)
            .filter(|r| r.last_answer.elapsed() < self.window);
        if here.is_none() && elsewhere.is_none() {
            return None;
        }
        let here: Vec<&ModelAsk> = here.into_iter().flat_map(|r| r.asks.iter()).collect();
        let known = |a: &ModelAsk| {
            here.iter()
                .any(|h| h.request_id == a.request_id && h.call_id == a.call_id)
        };
        let elsewhere: Vec<ModelAsk> = (elsewhere.into_iter().flatten())
            .filter(|a| !known(a))
            .collect();
        Some(
            (here.into_iter().chain(elsewhere.iter()))
                .filter(|a| a.at.elapsed() < self.window && a.fits(whose))
                .filter_map(|a| matches(a).map(|how| (a.clone(), how)))
                .collect(),
        )
    }

    /// How long a model's tool call waits to be carried out.
    pub fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ask(job: Option<&str>) -> ModelAsk {
        let call = json!({"name": "refund_payment", "id": "c1", "arguments": {"amount": 5}});
        ModelAsk::new("req_m", None, None, &call).within(job.map(str::to_string), None)
    }

    fn whose<'a>(agent: &'a str, job: Option<&'a str>) -> Whose<'a> {
        Whose {
            agent,
            job,
            user: None,
        }
    }

    fn found(asks: &ModelAsks, job: Option<&str>) -> Option<usize> {
        asks.find(&whose("bot", job), None, |_| Some("name"))
            .map(|v| v.len())
    }

    #[test]
    fn a_tool_call_asked_in_a_job_is_carried_out_in_that_job() {
        let asks = ModelAsks::default();
        asks.asked("bot", vec![ask(Some("job-a"))]);
        assert_eq!(found(&asks, Some("job-a")), Some(1));
        assert_eq!(found(&asks, Some("job-b")), Some(0));
        assert_eq!(found(&asks, None), Some(1));
        asks.asked("bot", vec![ask(None)]);
        assert_eq!(found(&asks, Some("job-b")), Some(1));
        let other = |elsewhere| asks.find(&whose("other", None), elsewhere, |_| Some("name"));
        assert_eq!(other(None).map(|v| v.len()), None);
        // Another replica's answers count, once each.
        assert_eq!(other(Some(vec![])).map(|v| v.len()), Some(0));
        assert_eq!(other(Some(vec![ask(None)])).map(|v| v.len()), Some(1));
        let twice = asks.find(&whose("bot", None), Some(vec![ask(None)]), |_| Some("name"));
        assert_eq!(
            twice.map(|v| v.len()),
            Some(2),
            "each noted here once, not again"
        );
    }

    #[test]
    fn a_tool_call_asked_for_a_person_is_carried_out_for_them() {
        let asks = ModelAsks::default();
        let call = json!({"name": "refund_payment", "id": "c1", "arguments": {}});
        let for_alice =
            ModelAsk::new("req_m", None, None, &call).within(None, Some("alice".into()));
        asks.asked("bot", vec![for_alice]);
        let for_user = |user| Whose {
            agent: "bot",
            job: None,
            user,
        };
        let n = |w: Whose<'_>| asks.find(&w, None, |_| Some("name")).map(|v| v.len());
        assert_eq!(n(for_user(Some("alice"))), Some(1));
        assert_eq!(n(for_user(Some("bob"))), Some(0));
        assert_eq!(n(for_user(None)), Some(1));
    }

    #[test]
    fn nothing_is_joined_after_the_window() {
        let asks = ModelAsks::new(Duration::ZERO);
        asks.asked("bot", vec![ask(None)]);
        assert_eq!(found(&asks, None), None);
    }
}
