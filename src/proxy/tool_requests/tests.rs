use proptest::prelude::*;
use serde_json::json;

use super::*;

const MAX_CALLS: usize = 32;
const MAX_ARGUMENTS: usize = 8 * 1024;

fn limits(tool_calls: usize, argument_bytes: usize, text_bytes: usize) -> ModelAnswerLimits {
    ModelAnswerLimits {
        tool_calls,
        argument_bytes,
        text_bytes,
    }
}

fn of(events: &[Value]) -> Value {
    let mut t = ToolRequests::default();
    for e in events {
        t.see(e);
    }
    t.finish().expect("tool calls")
}

#[test]
fn openai_chat_whole_and_streamed_give_the_same_calls() {
    let whole = json!({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "refund_payment", "arguments": "{\"payment_intent\":\"pi_123\",\"amount\":500}"}}]}}]});
    let streamed = [
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "refund_payment", "arguments": ""}}]}}]}),
        json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"payment_intent\":"}}]}}]}),
        json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"pi_123\",\"amount\":500}"}}]}}]}),
        json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
    ];
    let expected = json!({"answer_id": "chatcmpl-1", "tool_calls": [{"name": "refund_payment", "id": "call_a",
        "arguments": {"payment_intent": "pi_123", "amount": 500}}]});
    assert_eq!(of(&[whole]), expected);
    assert_eq!(of(&streamed), expected);
}

#[test]
fn openai_responses_function_calls_are_read_once() {
    let item = json!({"type": "function_call", "id": "fc_1", "call_id": "call_b", "name": "get_ticket", "arguments": "{\"id\":\"T-1\"}"});
    let whole = json!({"id": "resp_1", "object": "response", "output": [
        {"type": "message", "content": [{"type": "output_text", "text": "thinking"}]}, item.clone()]});
    let streamed = [
        json!({"type": "response.created", "response": {"id": "resp_1", "object": "response", "output": []}}),
        json!({"type": "response.output_item.done", "output_index": 1, "item": item}),
        json!({"type": "response.completed", "response": whole.clone()}),
    ];
    let expected = json!({"answer_id": "resp_1", "tool_calls": [{"name": "get_ticket", "id": "call_b", "arguments": {"id": "T-1"}}]});
    assert_eq!(of(&[whole]), expected);
    assert_eq!(of(&streamed), expected);
}

#[test]
fn anthropic_tool_use_whole_and_streamed_give_the_same_calls() {
    let whole = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [
        {"type": "text", "text": "I will refund it."},
        {"type": "tool_use", "id": "toolu_1", "name": "refund_payment", "input": {"payment_intent": "pi_123", "amount": 500}}]});
    let streamed = [
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "content": [], "usage": {"input_tokens": 10}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "I will"}}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "refund_payment", "input": {}}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"payment_intent\": \"pi_"}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "123\", \"amount\": 500}"}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 30}}),
    ];
    let expected = json!({"answer_id": "msg_1", "tool_calls": [{"name": "refund_payment", "id": "toolu_1",
        "arguments": {"payment_intent": "pi_123", "amount": 500}}]});
    assert_eq!(of(&[whole]), expected);
    assert_eq!(of(&streamed), expected);
}

#[test]
fn an_answer_without_tool_calls_records_nothing_and_text_is_never_kept() {
    let mut t = ToolRequests::default();
    t.see(&json!({"id": "chatcmpl-2", "choices": [{"message": {"content": "my diary says"}}]}));
    assert!(t.finish().is_none());
    let kept = of(&[json!({"id": "msg_2", "type": "message", "content": [
        {"type": "text", "text": "secret plan"}, {"type": "tool_use", "id": "t", "name": "n", "input": {"a": 1}}]})]);
    assert!(!kept.to_string().contains("secret plan"));
}

#[test]
fn what_is_kept_is_bounded() {
    let calls: Vec<Value> = (0..100)
        .map(|i| json!({"index": i, "id": format!("c{i}"), "function": {"name": "f", "arguments": "{}"}}))
        .collect();
    let many = of(&[json!({"id": "x", "choices": [{"delta": {"tool_calls": calls}}]})]);
    assert_eq!(many["tool_calls"].as_array().unwrap().len(), MAX_CALLS);
    assert_eq!(many["more_tool_calls_not_recorded"], true);
    let huge = "a".repeat(MAX_ARGUMENTS * 3);
    let big = of(&[json!({"id": "y", "choices": [{"message": {"tool_calls": [
        {"id": "c", "function": {"name": "f", "arguments": format!("{{\"t\":\"{huge}\"}}")}}]}}]})]);
    let args = big["tool_calls"][0]["arguments"].as_str().unwrap();
    assert!(args.len() <= MAX_ARGUMENTS);
    assert_eq!(big["tool_calls"][0]["arguments_cut_at"], MAX_ARGUMENTS);
}

#[test]
fn a_policy_sets_how_much_is_kept_and_may_keep_the_models_text() {
    let answer = json!({"id": "msg_3", "type": "message", "content": [
        {"type": "text", "text": "I will refund the payment now, as asked."},
        {"type": "tool_use", "id": "t1", "name": "refund_payment", "input": {"amount": 500}},
        {"type": "tool_use", "id": "t2", "name": "notify", "input": {"to": "someone"}}]});
    let mut t = ToolRequests::new(limits(1, 8, 12));
    t.see(&answer);
    let kept = t.finish().unwrap();
    assert_eq!(kept["tool_calls"].as_array().unwrap().len(), 1);
    assert_eq!(kept["more_tool_calls_not_recorded"], true);
    // Cut in a word, the word is left out (a key cut in two is no longer one redaction knows).
    assert_eq!(kept["text"], "I will ");
    assert_eq!(kept["text_cut_at"], 12);
    // Streamed text (Anthropic deltas, Chat deltas) is kept alike, never beyond the bound.
    let mut t = ToolRequests::new(limits(4, 64, 64));
    for piece in ["Re", "funding ", "now"] {
        t.see(&json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}));
    }
    assert_eq!(t.finish().unwrap()["text"], "Refunding now");
    let mut t = ToolRequests::new(limits(4, 64, 9));
    for piece in ["Hé", "llo", " there"] {
        t.see(&json!({"id": "c", "choices": [{"index": 0, "delta": {"content": piece}}]}));
    }
    let kept = t.finish().unwrap();
    assert_eq!(kept["text"], "Héllo ");
    assert_eq!(kept["tool_calls"], json!([]));
    // No calls kept at all still says the answer asked for some.
    let mut t = ToolRequests::new(limits(0, 64, 0));
    t.see(&answer);
    let kept = t.finish().unwrap();
    assert_eq!(kept["tool_calls"], json!([]));
    assert_eq!(kept["more_tool_calls_not_recorded"], true);
    assert!(kept.get("text").is_none());
}

#[test]
fn a_cut_never_keeps_the_first_part_of_a_key() {
    // Streamed arguments cut inside a secret: none of it is kept (the audit could not tell it
    // is one), and neither is it in text.
    let key = "sk_live_51HfakeSecretValue99";
    let args = format!("{{\"note\": \"key {key}\"}}");
    let mut t = ToolRequests::new(limits(4, 20, 16));
    t.see(&json!({"id": "c", "choices": [{"index": 0, "delta": {"content": format!("use {key} now"), "tool_calls": [
        {"index": 0, "id": "c1", "function": {"name": "f", "arguments": args}}]}}]}));
    let kept = t.finish().unwrap();
    assert_eq!(kept["tool_calls"][0]["arguments"], "{\"note\": \"key ");
    assert_eq!(kept["text"], "use ");
    assert!(!kept.to_string().contains("sk_"), "{kept}");
    // A whole input (Anthropic's, not streamed) is bounded alike.
    let mut t = ToolRequests::new(limits(4, 20, 0));
    t.see(&json!({"id": "msg", "type": "message", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": {"note": format!("key {key}")}}]}));
    let kept = t.finish().unwrap();
    let call = &kept["tool_calls"][0];
    assert_eq!(call["arguments"], "{\"note\":\"key ");
    assert_eq!(call["arguments_cut_at"], 20);
    // One that fits is kept whole, as JSON.
    let mut t = ToolRequests::new(limits(4, 64, 0));
    t.see(&json!({"id": "msg", "type": "message", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]}));
    assert_eq!(
        t.finish().unwrap()["tool_calls"][0]["arguments"],
        json!({"a": 1})
    );
}

#[test]
fn a_responses_stream_keeps_its_text_once() {
    let message = json!({"type": "message", "content": [{"type": "output_text", "text": "done"}]});
    let mut t = ToolRequests::new(limits(4, 64, 64));
    t.see(&json!({"type": "response.output_text.delta", "delta": "done"}));
    t.see(&json!({"type": "response.output_item.done", "item": message}));
    t.see(&json!({"type": "response.completed", "response": {"id": "resp_1", "object": "response", "output": [message]}}));
    assert_eq!(t.finish().unwrap()["text"], "done");
}

proptest! {
    #[test]
    fn any_json_is_read_without_panic_and_within_bounds(events in proptest::collection::vec(any::<u8>(), 0..64), fragment in ".{0,200}", text_bytes in 0usize..64, argument_bytes in 0usize..300) {
        let mut t = ToolRequests::new(limits(MAX_CALLS, argument_bytes, text_bytes));
        for (i, b) in events.iter().enumerate() {
            let e = match b % 5 {
                0 => json!({"choices": [{"delta": {"tool_calls": [{"index": b % 40, "function": {"name": fragment, "arguments": fragment}}]}}]}),
                1 => json!({"type": "content_block_start", "index": i, "content_block": {"type": "tool_use", "name": fragment}}),
                2 => json!({"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": fragment}}),
                3 => json!({"type": "response.output_item.done", "item": {"type": "function_call", "call_id": fragment, "name": "f", "arguments": fragment}}),
                4 if i % 2 == 0 => json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": fragment}}),
                4 if i % 3 == 0 => json!({"type": "message", "content": [{"type": "tool_use", "id": fragment, "name": "f", "input": {"t": fragment}}]}),
                _ => json!(fragment),
            };
            t.see(&e);
        }
        if let Some(v) = t.finish() {
            let calls = v["tool_calls"].as_array().unwrap();
            prop_assert!(calls.len() <= MAX_CALLS);
            prop_assert!(v["text"].as_str().unwrap_or("").len() <= text_bytes);
            for c in calls {
                let kept = match &c["arguments"] {
                    Value::String(a) => a.len(),
                    other => other.to_string().len(),
                };
                prop_assert!(kept <= argument_bytes.max(2), "{c}");
            }
        }
    }
}
