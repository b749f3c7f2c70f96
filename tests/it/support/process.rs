//! toolgate run as a child process, as an operator runs it: `serve` on ephemeral ports over a
//! folder of policies, certs and data.

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}

/// Ends the child it holds if the test fails before the child exits on its own.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The child's exit status, once it exits (polled, for at most `within`); `what` names the
/// wait in a failure.
pub async fn exited(child: &mut ChildGuard, what: &str, within: Duration) -> ExitStatus {
    super::poll::until_some(what, within, || {
        std::future::ready(child.0.try_wait().unwrap())
    })
    .await
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Starts `toolgate serve` on ephemeral ports over `dir` (policies, certs, data); returns the
/// child, the proxy and admin addresses, and a thread collecting the rest of its log.
pub type Started = (
    ChildGuard,
    std::net::SocketAddr,
    String,
    std::thread::JoinHandle<Vec<String>>,
);

/// `toolgate serve` on ephemeral ports over `dir` (its policies, certs and data).
pub fn serve_command(bin: &str, dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .arg("--policies")
    .arg(dir.join("policies"))
    .arg("--certs")
    .arg(dir.join("certs"))
    .arg("--data-dir")
    .arg(dir.join("data"));
    cmd
}

pub fn start_serve(bin: &str, dir: &std::path::Path, extra: &[&str]) -> Started {
    let mut cmd = serve_command(bin, dir);
    cmd.args(extra);
    start_command(cmd)
}

/// Starts a `serve` command made with [`serve_command`] (and whatever it adds: flags, the
/// environment); returns when toolgate says it serves.
pub fn start_command(mut cmd: Command) -> Started {
    let mut child = cmd
        .env("TOOLGATE_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let child = ChildGuard(child);
    let started = Instant::now();
    let mut before = Vec::new();
    let (proxy, admin) = loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "toolgate did not start"
        );
        let line = lines.next().expect("toolgate exited").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        before.push(line);
        if v["message"] == "toolgate serving" {
            break (
                v["proxy"].as_str().unwrap().parse().unwrap(),
                v["admin"].as_str().unwrap().to_string(),
            );
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    // The log from the start (what toolgate said before it served included).
    let log = std::thread::spawn(move || {
        before.extend(lines.map_while(Result::ok));
        before
    });
    (child, proxy, admin, log)
}
