//! Scrubs the injected credential out of answers that stream to the agent. An upstream that
//! echoes request headers (a debug endpoint, an error page) must not hand the agent the key it
//! never held. The body passes through frame by frame; only the tail of a frame that could be
//! the start of a secret is held back until the next frame tells. A secret is replaced by a mark
//! of the same length, so the answer's length does not change.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::body::BoxError;

/// What stands in for a secret: as long as the secret, so that a `Content-Length` stays true.
fn mark(len: usize) -> Vec<u8> {
    const MARK: &[u8] = b"[REDACTED]";
    if len >= MARK.len() {
        let mut m = MARK.to_vec();
        m.resize(len, b'*');
        m
    } else {
        vec![b'*'; len]
    }
}

/// Needles to cut out of a stream, longest first.
#[derive(Clone, Debug, Default)]
pub struct Needles(Vec<Vec<u8>>);

impl Needles {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Needles {
        let mut v: Vec<Vec<u8>> = secrets
            .into_iter()
            .filter(|s| s.len() >= 4)
            .map(String::into_bytes)
            .collect();
        v.sort_by_key(|n| std::cmp::Reverse(n.len()));
        v.dedup();
        Needles(v)
    }

    /// The injected credential, as its secret and as the header value that carries it: what
    /// never reaches the agent, even if the upstream echoes it.
    pub fn of_credential(credential: Option<&crate::policy::Credential>) -> Needles {
        Needles::new(credential.into_iter().flat_map(|c| {
            [
                c.secret().to_string(),
                String::from_utf8_lossy(c.header_value().as_bytes()).into_owned(),
            ]
        }))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `buf` with every needle replaced.
    fn replace(&self, buf: &[u8]) -> Vec<u8> {
        if self.0.is_empty() {
            return buf.to_vec();
        }
        let mut out = buf.to_vec();
        for n in &self.0 {
            if let Some(first) = find(&out, n) {
                let mut next = Vec::with_capacity(out.len());
                let mut rest = &out[..];
                let mut at = Some(first);
                while let Some(i) = at {
                    next.extend_from_slice(&rest[..i]);
                    next.extend_from_slice(&mark(n.len()));
                    rest = &rest[i + n.len()..];
                    at = find(rest, n);
                }
                next.extend_from_slice(rest);
                out = next;
            }
        }
        out
    }

    /// The length of the longest tail of `buf` that is a proper prefix of some needle. Only
    /// places where a needle's first byte occurs are tried.
    fn partial_tail(&self, buf: &[u8]) -> usize {
        let mut best = 0;
        for n in &self.0 {
            let window = (n.len() - 1).min(buf.len());
            let from = buf.len() - window;
            // Earliest start first: the longest tail.
            for i in memchr::memchr_iter(n[0], &buf[from..]) {
                let tail = &buf[from + i..];
                if tail.len() > best && n.starts_with(tail) {
                    best = tail.len();
                    break;
                }
            }
        }
        best
    }

    /// Header values that hold a needle are replaced whole.
    pub fn scrub_headers(&self, headers: &mut HeaderMap) {
        for value in headers.values_mut() {
            if self.0.iter().any(|n| find(value.as_bytes(), n).is_some()) {
                *value = http::HeaderValue::from_static("[REDACTED]");
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// A body with the needles cut out as it streams.
pub struct Scrubbed<B> {
    inner: B,
    needles: Needles,
    carry: BytesMut,
    done: bool,
}

impl<B> Scrubbed<B> {
    pub fn new(inner: B, needles: Needles) -> Self {
        Scrubbed {
            inner,
            needles,
            carry: BytesMut::new(),
            done: false,
        }
    }
}

impl<B> Body for Scrubbed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                if this.carry.is_empty() {
                    return Poll::Ready(None);
                }
                // What is left can no longer grow into a secret.
                let rest = this.carry.split().freeze();
                return Poll::Ready(Some(Ok(Frame::data(rest))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.done = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        // The common case: nothing to cut and nothing to hold, no copy.
                        if this.carry.is_empty()
                            && !this.needles.0.iter().any(|n| find(&data, n).is_some())
                            && this.needles.partial_tail(&data) == 0
                        {
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        this.carry.extend_from_slice(&data);
                        let clean = this.needles.replace(&this.carry);
                        let hold = this.needles.partial_tail(&clean);
                        let emit = clean.len() - hold;
                        this.carry = BytesMut::from(&clean[emit..]);
                        if emit > 0 {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(
                                clean[..emit].to_vec(),
                            )))));
                        }
                    }
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.carry.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        // Marks are as long as what they replace.
        let mut hint = self.inner.size_hint();
        let carried = self.carry.len() as u64;
        hint.set_lower(hint.lower() + carried);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + carried);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    async fn run(chunks: &[&str], secrets: &[&str]) -> (String, Vec<String>) {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from(c.to_string()))))
            .collect();
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let mut s = Scrubbed::new(body, Needles::new(secrets.iter().map(|s| s.to_string())));
        let mut parts = Vec::new();
        while let Some(f) = s.frame().await {
            parts.push(String::from_utf8(f.unwrap().into_data().unwrap().to_vec()).unwrap());
        }
        (parts.concat(), parts)
    }

    #[tokio::test]
    async fn secrets_split_across_frames_are_cut_out() {
        let (all, _) = run(
            &["auth: Bearer sk_te", "st_123 and sk_test_", "123!"],
            &["sk_test_123"],
        )
        .await;
        assert_eq!(all, "auth: Bearer [REDACTED]* and [REDACTED]*!");
        let (all, _) = run(&["s", "k", "_", "test_123"], &["sk_test_123"]).await;
        assert_eq!(all, "[REDACTED]*");
    }

    #[tokio::test]
    async fn frames_that_cannot_start_a_secret_pass_at_once() {
        let (_, parts) = run(
            &["data: {\"a\":1}\n\n", "data: {\"b\":2}\n\n"],
            &["sk_test_123"],
        )
        .await;
        assert_eq!(parts, vec!["data: {\"a\":1}\n\n", "data: {\"b\":2}\n\n"]);
        // A tail that might start a secret waits, then goes out when it does not.
        let (all, _) = run(&["as s sk_te", "st_123"], &["sk_test_123"]).await;
        assert_eq!(all, "as s [REDACTED]*");
        let (all, parts) = run(&["x sk_", "nope"], &["sk_test_123"]).await;
        assert_eq!(all, "x sk_nope");
        assert_eq!(parts[0], "x ");
    }
}
