//! Server-sent events (the WHATWG event-stream format), read whole and written back. The parser
//! is `sse-stream`'s, which follows the spec: lines end in CR, LF or CRLF (a CRLF may be split
//! across chunks), a leading BOM is dropped, comments are skipped, `data:` takes its value with
//! or without the one space, several data lines join with LF, and an event the stream ends
//! before finishing (no empty line after it) is dropped, as a browser drops it.
//!
//! What toolgate passes on is always what it wrote from the events it read, never the bytes as
//! they came: a client cannot see anything toolgate did not.

use std::convert::Infallible;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::Stream;

/// One event of a stream (comments are not kept).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub id: Option<String>,
    pub retry: Option<u64>,
    /// The data lines joined with LF; `None` when the event has no data field.
    pub data: Option<String>,
}

/// Why a stream could not be read (its bytes are not UTF-8 where the spec reads text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(String);

/// The events of a whole stream.
pub fn parse(body: &[u8]) -> Result<Vec<Event>, Unreadable> {
    parse_chunks([Bytes::copy_from_slice(body)])
}

/// The events of a stream that arrived in `chunks` (split anywhere).
pub fn parse_chunks(chunks: impl IntoIterator<Item = Bytes>) -> Result<Vec<Event>, Unreadable> {
    let input = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, Infallible>));
    let mut stream = pin!(sse_stream::SseByteStream::new(input));
    // Every chunk is at hand: the parser never waits, so a no-op waker drives it.
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        match stream.as_mut().poll_next(&mut cx) {
            Poll::Ready(Some(Ok(e))) => out.push(Event {
                event: e.event,
                id: e.id,
                retry: e.retry,
                data: e.data,
            }),
            Poll::Ready(Some(Err(e))) => return Err(Unreadable(e.to_string())),
            Poll::Ready(None) => return Ok(out),
            Poll::Pending => {
                return Err(Unreadable(
                    "the event stream parser waited for more input".into(),
                ))
            }
        }
    }
}

/// A body failing, as the parser's input error (a boxed error is not an `Error` itself).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BodyFailed(crate::base::body::BoxError);

/// An event stream passed on event by event as it arrives: each event read as the spec says,
/// given to `edit` (`None`: dropped), and written anew. Comments (keep-alives) are not passed
/// on; a stream that cannot be read ends with an error.
pub fn map_events(
    body: crate::base::body::ProxyBody,
    mut edit: impl FnMut(Event) -> Option<Event> + Send + 'static,
) -> crate::base::body::ProxyBody {
    use futures_util::{StreamExt, TryStreamExt};
    let data = http_body_util::BodyDataStream::new(body).map_err(BodyFailed);
    let events = sse_stream::SseByteStream::new(data).map(move |e| match e {
        Ok(e) => {
            let e = Event {
                event: e.event,
                id: e.id,
                retry: e.retry,
                data: e.data,
            };
            let written = edit(e).map(|e| write(&[e])).unwrap_or_default();
            Ok(http_body::Frame::data(Bytes::from(written)))
        }
        Err(e) => Err(crate::base::body::BoxError::from(format!(
            "the event stream could not be read: {e}"
        ))),
    });
    crate::base::body::stream(http_body_util::StreamBody::new(events))
}

/// The events written as a stream: one field a line, each line ending in LF, each event ending
/// in an empty line. A value read by [`parse`] holds no line end (a data value's LFs separate
/// its lines), so what is written reads back as the same events.
pub fn write(events: &[Event]) -> Vec<u8> {
    let mut out = String::new();
    for e in events {
        let fields = [("event", e.event.as_deref()), ("id", e.id.as_deref())];
        for (name, value) in fields {
            if let Some(v) = value {
                field(&mut out, name, v);
            }
        }
        if let Some(retry) = e.retry {
            field(&mut out, "retry", &retry.to_string());
        }
        if let Some(data) = &e.data {
            for line in data.split('\n') {
                field(&mut out, "data", line);
            }
        }
        out.push('\n');
    }
    out.into_bytes()
}

/// One `name: value` line; a CR or LF inside a value (never read so) ends the line early.
fn field(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str(": ");
    out.push_str(value.split(['\r', '\n']).next().unwrap_or(""));
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(events: &[Event]) -> Vec<Option<&str>> {
        events.iter().map(|e| e.data.as_deref()).collect()
    }

    #[test]
    fn every_line_end_of_the_spec_ends_a_line() {
        for end in ["\n", "\r", "\r\n"] {
            let body = format!("event: message{end}id: 7{end}data: {{\"a\":1}}{end}{end}data:x{end}data:  y{end}{end}");
            let events = parse(body.as_bytes()).unwrap();
            assert_eq!(events.len(), 2, "{end:?}");
            assert_eq!(events[0].event.as_deref(), Some("message"));
            assert_eq!(events[0].id.as_deref(), Some("7"));
            assert_eq!(data(&events), [Some("{\"a\":1}"), Some("x\n y")]);
        }
    }

    #[test]
    fn bom_comments_and_an_unfinished_last_event() {
        let body = b"\xEF\xBB\xBF: keep-alive\r\ndata: one\r\n\r\n:comment\ndata: two\n";
        assert_eq!(data(&parse(body).unwrap()), [Some("one")]);
        // Invalid UTF-8 in a data value is not read.
        assert!(parse(b"data: \xff\n\n").is_err());
    }

    /// An event as the parser can read it back: values without line ends.
    fn event() -> impl Strategy<Value = Event> {
        let value = "[^\r\n]{0,12}";
        (
            proptest::option::of(value),
            proptest::option::of("[^\r\n\0]{0,8}"),
            proptest::option::of(0u64..100_000),
            proptest::option::of(proptest::collection::vec(value, 1..4)),
        )
            .prop_filter("an event has a field", |(e, i, r, d)| {
                e.is_some() || i.is_some() || r.is_some() || d.is_some()
            })
            .prop_map(|(event, id, retry, data)| Event {
                event,
                id,
                retry,
                data: data.map(|lines| lines.join("\n")),
            })
    }

    /// `write`'s output with its line ends replaced by `end` (CR, LF or CRLF), with comments
    /// between the lines.
    fn framed(events: &[Event], end: &str, comments: bool) -> Vec<u8> {
        let text = String::from_utf8(write(events)).unwrap();
        let mut out = String::new();
        for line in text.split_terminator('\n') {
            if comments {
                out.push_str(": note");
                out.push_str(end);
            }
            out.push_str(line);
            out.push_str(end);
        }
        out.into_bytes()
    }

    proptest! {
        #[test]
        fn written_events_read_back_whatever_the_line_ends_and_chunks(
            events in proptest::collection::vec(event(), 0..5),
            end in prop_oneof![Just("\n"), Just("\r"), Just("\r\n")],
            comments in any::<bool>(),
            bom in any::<bool>(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut body = framed(&events, end, comments);
            if bom {
                body.splice(0..0, *b"\xEF\xBB\xBF");
            }
            prop_assert_eq!(&parse(&body).unwrap(), &events);
            // Split anywhere, into any number of chunks.
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
            at.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for to in at.into_iter().chain([body.len()]) {
                chunks.push(Bytes::copy_from_slice(&body[from..to]));
                from = to;
            }
            prop_assert_eq!(&parse_chunks(chunks).unwrap(), &events);
        }

        #[test]
        fn any_bytes_read_or_fail_and_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(events) = parse(&body) {
                // What is written from them reads back the same.
                prop_assert_eq!(parse(&write(&events)).unwrap(), events);
            }
        }
    }

    #[test]
    fn every_byte_boundary_of_a_crlf_stream() {
        let body = b"id: 1\r\ndata: {\"jsonrpc\":\"2.0\"}\r\n\r\nevent: message\rdata: b\r\r";
        let whole = parse(body).unwrap();
        assert_eq!(whole.len(), 2);
        for a in 0..=body.len() {
            for b in a..=body.len() {
                let chunks = [&body[..a], &body[a..b], &body[b..]].map(Bytes::copy_from_slice);
                assert_eq!(parse_chunks(chunks).unwrap(), whole, "cut at {a} and {b}");
            }
        }
    }

    /// A body that arrives in `chunks`.
    fn chunked(chunks: Vec<Bytes>) -> crate::base::body::ProxyBody {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, Infallible>(http_body::Frame::data(c)));
        crate::base::body::stream(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    async fn passed(chunks: Vec<Bytes>) -> Vec<u8> {
        use http_body_util::BodyExt;
        let body = map_events(chunked(chunks), Some);
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_stream_passed_event_by_event_reads_the_same_at_every_chunk_boundary() {
        for end in ["\n", "\r", "\r\n"] {
            let body = format!(
                "\u{feff}: hi{end}event: message{end}id: 1{end}data: {{\"a\":{end}data: 1}}{end}{end}data:x{end}{end}"
            );
            let body = body.as_bytes();
            let expected = write(&parse(body).unwrap());
            assert_eq!(parse(&expected).unwrap().len(), 2);
            for at in 0..=body.len() {
                let chunks = vec![
                    Bytes::copy_from_slice(&body[..at]),
                    Bytes::copy_from_slice(&body[at..]),
                ];
                assert_eq!(passed(chunks).await, expected, "{end:?} cut at {at}");
            }
            let bytewise = body.iter().map(|b| Bytes::copy_from_slice(&[*b])).collect();
            assert_eq!(passed(bytewise).await, expected, "{end:?} a byte a chunk");
        }
        // What cannot be read ends the stream with an error, never passes on.
        use http_body_util::BodyExt;
        let bad = map_events(chunked(vec![Bytes::from_static(b"data: \xff\n\n")]), Some);
        assert!(bad.collect().await.is_err());
    }
}
