//! Requests to model providers (`kind = "model"`): the provider, the model, the token usage and
//! the tool calls the answer asks for are recorded, also for streamed (SSE) answers, by looking
//! at each chunk as it passes, never holding the stream back.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use serde_json::Value;

/// The provider behind a host.
pub fn provider(host: &str) -> String {
    match host {
        "api.openai.com" => "openai".into(),
        "api.anthropic.com" => "anthropic".into(),
        h if h.ends_with(".openai.azure.com") => "azure-openai".into(),
        "generativelanguage.googleapis.com" => "google".into(),
        "api.mistral.ai" => "mistral".into(),
        other => other.into(),
    }
}

/// Usage found in a JSON value (OpenAI's `usage`, Anthropic's `usage` or `message.usage`).
pub fn usage_of(v: &Value) -> Option<Value> {
    v.get("usage")
        .or_else(|| v.get("message").and_then(|m| m.get("usage")))
        .filter(|u| u.is_object())
        .cloned()
}

/// Merges usage seen across stream events (Anthropic reports input and output tokens in
/// different events; OpenAI in the last one).
fn merge(into: &mut Option<Value>, more: Value) {
    match (into.as_mut().and_then(Value::as_object_mut), more) {
        (Some(acc), Value::Object(m)) => {
            for (k, v) in m {
                if !v.is_null() {
                    acc.insert(k, v);
                }
            }
        }
        (_, more) => *into = Some(more),
    }
}

/// What a model answer said about itself, once it ended: the model, the usage, and the tool
/// calls it asked for (see [`super::tool_requests`]).
pub struct Seen {
    pub model: Option<String>,
    pub usage: Option<Value>,
    pub tool_requests: Option<Value>,
}

/// Called once when a model answer ends, with what was seen.
pub type OnEnd = Box<dyn FnOnce(Seen) + Send>;

/// The longest partial line kept between chunks; longer lines are skipped, not buffered.
const MAX_LINE: usize = 64 * 1024;

/// A body that passes every frame through at once and watches SSE `data:` lines (or a whole
/// JSON answer, up to a bound) for usage. `on_end` runs once, when the stream ends.
pub struct UsageTap<B> {
    inner: B,
    sse: bool,
    line: Vec<u8>,
    overflow: bool,
    json: Vec<u8>,
    usage: Option<Value>,
    model: Option<String>,
    requests: super::tool_requests::ToolRequests,
    on_end: Option<OnEnd>,
}

impl<B> UsageTap<B> {
    pub fn new(
        inner: B,
        sse: bool,
        limits: crate::policy::ModelAnswerLimits,
        on_end: OnEnd,
    ) -> Self {
        UsageTap {
            inner,
            sse,
            line: Vec::new(),
            overflow: false,
            json: Vec::new(),
            usage: None,
            model: None,
            requests: super::tool_requests::ToolRequests::new(limits),
            on_end: Some(on_end),
        }
    }

    fn see_event(&mut self, data: &[u8]) {
        if let Ok(v) = serde_json::from_slice::<Value>(data) {
            if let Some(m) = v
                .get("model")
                .or_else(|| v.get("message").and_then(|m| m.get("model")))
                .and_then(Value::as_str)
            {
                self.model = Some(m.to_string());
            }
            if let Some(u) = usage_of(&v) {
                merge(&mut self.usage, u);
            }
            self.requests.see(&v);
        }
    }

    fn see(&mut self, chunk: &[u8]) {
        if !self.sse {
            if self.json.len() + chunk.len() <= MAX_LINE * 16 {
                self.json.extend_from_slice(chunk);
            }
            return;
        }
        for &b in chunk {
            if b == b'\n' {
                if !self.overflow {
                    let line = std::mem::take(&mut self.line);
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    if let Some(data) = line.strip_prefix(b"data:") {
                        self.see_event(data.trim_ascii());
                    }
                }
                self.line.clear();
                self.overflow = false;
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            } else {
                self.overflow = true;
            }
        }
    }

    fn finish(&mut self) {
        if !self.sse && !self.json.is_empty() {
            let json = std::mem::take(&mut self.json);
            self.see_event(&json);
        }
        if let Some(f) = self.on_end.take() {
            f(Seen {
                model: self.model.take(),
                usage: self.usage.take(),
                tool_requests: std::mem::take(&mut self.requests).finish(),
            });
        }
    }
}

impl<B> Body for UsageTap<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    self.see(&data);
                }
                // hyper stops polling once the body says it has ended.
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for UsageTap<B> {
    fn drop(&mut self) {
        // A stream the agent abandoned still records what was seen.
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// What a tap saw of `stream` fed in the chunks `cuts` makes.
    fn seen(stream: &[u8], cuts: &[usize], sse: bool) -> Option<Value> {
        let out = std::sync::Arc::new(std::sync::Mutex::new(None));
        let kept = out.clone();
        let body = http_body_util::Empty::<Bytes>::new();
        let mut tap = UsageTap::new(
            body,
            sse,
            Default::default(),
            Box::new(move |s: Seen| *kept.lock().unwrap() = s.tool_requests),
        );
        let mut at = 0;
        for &cut in cuts {
            let end = (at + cut).min(stream.len());
            tap.see(&stream[at..end]);
            at = end;
        }
        tap.see(&stream[at..]);
        tap.finish();
        let got = out.lock().unwrap().clone();
        got
    }

    fn anthropic_stream() -> Vec<u8> {
        let events = [
            json!({"type": "message_start", "message": {"id": "msg_9", "content": []}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_9", "name": "refund_payment", "input": {}}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"payment_intent\": \"pi_é"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "\", \"amount\": 500}"}}),
        ];
        events
            .iter()
            .map(|e| format!("event: x\r\ndata: {e}\r\n\r\n"))
            .collect::<String>()
            .into_bytes()
    }

    proptest! {
        #[test]
        fn streamed_tool_calls_read_alike_however_the_stream_is_cut(cuts in proptest::collection::vec(1usize..40, 0..200)) {
            let stream = anthropic_stream();
            let whole = seen(&stream, &[], true);
            prop_assert_eq!(
                whole.as_ref().map(|v| v["tool_calls"][0]["arguments"].clone()),
                Some(json!({"payment_intent": "pi_é", "amount": 500}))
            );
            prop_assert_eq!(seen(&stream, &cuts, true), whole);
        }
    }
}
