//! The body type that flows through the proxy in both directions: streamed, never buffered
//! unless a phase needs the whole body.

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed, streaming body.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes` in full.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any streaming body (hyper's `Incoming`, for one) without reading it.
pub fn stream<B>(body: B) -> ProxyBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Reads a body whole, keeping at most `cap` bytes (the rest is read and dropped). A read error
/// ends it early.
pub async fn collect_capped(mut body: ProxyBody, cap: usize) -> Bytes {
    let mut out = bytes::BytesMut::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            let room = cap.saturating_sub(out.len());
            out.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    out.freeze()
}

/// How a request body that its reader left unfinished is finished: read and dropped up to `cap`
/// bytes within `within`, then given up on.
#[derive(Debug, Clone, Copy)]
pub struct Finish {
    pub cap: usize,
    pub within: std::time::Duration,
}

/// A client's request body that finishes itself when a phase drops it unread (a refusal before
/// or while reading it, an upstream that failed mid-body).
///
/// Dropping a body that is still arriving makes hyper end the exchange early: HTTP/2 resets the
/// stream (clients such as curl then report a stream error instead of the answer, even one sent
/// first), and HTTP/1.1 closes the connection with the client's bytes unread (its kernel may
/// send a TCP reset that destroys the answer). So the rest is read and dropped in a task of its
/// own, bounded by [`Finish`], while the answer goes out; the exchange then ends cleanly. A body
/// the client holds back until `100 Continue` and nobody asked for is not asked for now.
pub struct Kept {
    inner: Option<ProxyBody>,
    finish: Finish,
    /// The client waits for `100 Continue` before sending the body.
    expect_continue: bool,
    /// Whether anyone read from it (which, for HTTP/1.1, sent the `100 Continue`).
    polled: bool,
}

impl Kept {
    /// Wraps `body`; `expect_continue` when the request carries `Expect: 100-continue`.
    pub fn new(body: ProxyBody, finish: Finish, expect_continue: bool) -> Kept {
        Kept {
            inner: Some(body),
            finish,
            expect_continue,
            polled: false,
        }
    }
}

impl http_body::Body for Kept {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        self.polled = true;
        let Some(inner) = self.inner.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        let polled = std::pin::Pin::new(inner).poll_frame(cx);
        // Ended, or failed (a body that failed cannot be finished): nothing left to finish.
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_)))) {
            self.inner = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let Some(rest) = self.inner.take() else {
            return;
        };
        if rest.is_end_stream() || (self.expect_continue && !self.polled) {
            return;
        }
        // Outside a runtime (never while serving) the body is simply dropped.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let finish = self.finish;
            runtime.spawn(async move {
                let _ = tokio::time::timeout(finish.within, discard(rest, finish.cap)).await;
            });
        }
    }
}

/// Reads `body` to its end and drops what it holds, stopping past `cap` bytes or at an error.
/// Returns how many bytes it read.
pub async fn discard(mut body: ProxyBody, cap: usize) -> usize {
    let mut read = 0usize;
    while read <= cap {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    read = read.saturating_add(data.len());
                }
            }
            _ => break,
        }
    }
    read
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A body fed from a channel of one slot: the sender can only run ahead if someone reads.
    fn channel() -> (tokio::sync::mpsc::Sender<Bytes>, ProxyBody) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let data = rx.recv().await?;
            Some((Ok::<_, BoxError>(http_body::Frame::data(data)), rx))
        });
        (tx, http_body_util::StreamBody::new(frames).boxed_unsync())
    }

    const FINISH: Finish = Finish {
        cap: 1000,
        within: Duration::from_secs(5),
    };

    #[tokio::test]
    async fn a_body_dropped_unread_is_read_to_its_end_then_given_up_past_the_cap() {
        let (tx, body) = channel();
        drop(Kept::new(body, FINISH, false));
        // Ten frames go through a channel of one: the rest of the body is being read.
        for _ in 0..10 {
            let sent =
                tokio::time::timeout(Duration::from_secs(5), tx.send(Bytes::from(vec![0; 10])));
            assert!(sent.await.unwrap().is_ok());
        }
        // Past the cap the reader gives up, and the sender sees the body closed.
        let mut closed = false;
        for _ in 0..200 {
            if tx.send(Bytes::from(vec![0; 100])).await.is_err() {
                closed = true;
                break;
            }
        }
        assert!(closed, "reading stopped past the cap");
    }

    #[tokio::test]
    async fn a_body_held_back_for_100_continue_is_not_asked_for() {
        let (tx, body) = channel();
        drop(Kept::new(body, FINISH, true));
        tokio::task::yield_now().await;
        assert!(tx.send(Bytes::from_static(b"x")).await.is_err());
    }
}
