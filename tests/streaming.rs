//! Large bodies stream through toolgate without being buffered. Alone in its own test binary so
//! that the process's peak memory reflects this test only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use support::*;

/// Peak resident memory of this process, in bytes (Linux).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[tokio::test]
async fn a_50_mb_download_streams_without_growing_memory_by_50_mb() {
    const TOTAL: usize = 50 * 1024 * 1024;
    let (_pki, _upstream, gate) = setup("").await;
    let client = gate.bot();
    // Warm up the connection, certificates and pools before measuring.
    let warm = send(
        &client,
        "GET",
        "https://api.stripe.com/download/1024",
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(warm.body.len(), 1024);
    let before = peak_rss();

    let req = Request::get(format!("https://api.stripe.com/download/{TOTAL}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received += data.len();
        }
    }
    assert_eq!(received, TOTAL);

    if let (Some(before), Some(after)) = (before, peak_rss()) {
        let grew = after.saturating_sub(before);
        assert!(
            grew < 25 * 1024 * 1024,
            "peak memory grew by {} MiB while streaming 50 MiB",
            grew / (1024 * 1024)
        );
    }
}
