//! Reading the first bytes of a tunnel to tell TLS from plain HTTP, then handing the stream on
//! with those bytes put back.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// A stream whose first bytes were read already and are replayed before the rest.
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Rewind { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What the first bytes of a tunnel say it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tls,
    Http,
}

/// Why a tunnel was closed before anything was served.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("the client sent nothing within {0:?}")]
    Timeout(Duration),
    #[error("the client closed the tunnel before sending anything")]
    Closed,
    #[error("the tunnel carries neither TLS nor HTTP (first bytes {0:02x?})")]
    Unknown(Vec<u8>),
    #[error("reading the tunnel failed: {0}")]
    Io(#[from] io::Error),
}

/// The longest HTTP method token we wait for before deciding.
const MAX_METHOD: usize = 16;

/// Reads just enough of `io` to classify it, within `limit`. A single read may return fewer
/// bytes than asked for, so it keeps reading until it can decide.
pub async fn detect<T: AsyncRead + Unpin>(
    io: &mut T,
    limit: Duration,
) -> Result<(Protocol, Bytes), DetectError> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = Vec::with_capacity(MAX_METHOD + 1);
    loop {
        if let Some(p) = classify(&buf)? {
            return Ok((p, Bytes::from(buf)));
        }
        let mut chunk = [0u8; MAX_METHOD + 1];
        let want = MAX_METHOD + 1 - buf.len();
        let n = tokio::time::timeout_at(deadline, io.read(&mut chunk[..want]))
            .await
            .map_err(|_| DetectError::Timeout(limit))??;
        if n == 0 {
            return Err(if buf.is_empty() {
                DetectError::Closed
            } else {
                DetectError::Unknown(buf)
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `Some` once the prefix decides; `None` while more bytes are needed.
fn classify(buf: &[u8]) -> Result<Option<Protocol>, DetectError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    // A TLS handshake record.
    if first == 0x16 {
        return Ok(Some(Protocol::Tls));
    }
    // An HTTP/1 request line starts with an upper-case method token and a space.
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'A'..=b'Z' | b'-' if i < MAX_METHOD => continue,
            b' ' if i > 0 => return Ok(Some(Protocol::Http)),
            _ => return Err(DetectError::Unknown(buf.to_vec())),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn detects_tls_and_http_across_short_reads() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            client.write_all(b"GE").await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(b"T / HTTP/1.1\r\n").await.unwrap();
        });
        let (p, prefix) = detect(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(p, Protocol::Http);
        let mut rw = Rewind::new(prefix, server);
        let mut line = vec![0u8; 16];
        rw.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"GET / HTTP/1.1\r\n");

        assert_eq!(classify(&[0x16, 3, 1]).unwrap(), Some(Protocol::Tls));
    }

    #[tokio::test]
    async fn refuses_garbage_and_silence() {
        assert!(matches!(
            classify(b"\x00\x01"),
            Err(DetectError::Unknown(_))
        ));
        assert!(matches!(classify(b"get /"), Err(DetectError::Unknown(_))));
        let (_client, mut server) = tokio::io::duplex(64);
        let e = detect(&mut server, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(e, DetectError::Timeout(_)));
    }
}
