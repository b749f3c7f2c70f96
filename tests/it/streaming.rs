//! Large bodies stream through toolgate without being buffered. Peak memory is a figure of the
//! whole process, and this binary runs every suite at once: the measurement runs in a process of
//! its own, this test binary started again for that one test.

use crate::support::*;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

/// Peak resident memory of this process, in bytes (Linux).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[test]
fn a_50_mb_download_streams_without_growing_memory_by_50_mb() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "streaming::measured_alone",
            "--ignored",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The measurement, run alone by the test above (with `--ignored`).
#[tokio::test]
#[ignore = "run in a process of its own by a_50_mb_download_streams_without_growing_memory_by_50_mb"]
async fn measured_alone() {
    const TOTAL: usize = 50 * 1024 * 1024;
    let (_pki, _upstream, gate) = GateBuilder::base().with_upstream().await;
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
