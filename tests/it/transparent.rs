//! Transparent interception: an agent in a network namespace of its own, with no proxy settings
//! and only toolgate's CA, whose connections to ports 443 and 80 the kernel redirects to
//! toolgate's transparent listener (nftables DNAT on the host side of its veth). The agent is
//! known by its source address; a second namespace that no agent's `sources` names gets nothing.
//!
//! Needs root (or CAP_NET_ADMIN), `ip`, `nft` and `curl`. Without them it prints why it skipped
//! and passes, unless `TOOLGATE_REQUIRE_NETNS=1` makes a skip a failure.

use std::process::Command;

use crate::support::netns::{create, curl};
use crate::support::*;

/// An nftables table of the test's own, removed on drop.
struct Nat(String);

impl Drop for Nat {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.0])
            .status();
    }
}

/// Redirects ports 443 and 80 arriving on `ifaces` to `to` (toolgate's transparent listener).
fn redirect(tag: &str, ifaces: &[&str], to: &str) -> Result<Nat, String> {
    let table = format!("toolgate_test_{tag}_{}", std::process::id());
    let names: Vec<String> = ifaces.iter().map(|i| format!("\"{i}\"")).collect();
    let rules = format!(
        "table ip {table} {{\n  chain pre {{\n    type nat hook prerouting priority -100;\n    \
         iifname {{ {} }} tcp dport {{ 80, 443 }} dnat to {to}\n  }}\n}}\n",
        names.join(", ")
    );
    let out = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(rules.as_bytes())?;
            child.wait_with_output()
        })
        .map_err(|e| format!("nft: {e}"))?;
    if !out.status.success() {
        return Err(format!("nft: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(Nat(table))
}

/// curl in namespace `ns` with no proxy settings at all: `resolve` as curl's `--resolve`,
/// trusting `ca`.
async fn agent_curl(
    ns: &str,
    resolve: Option<&str>,
    ca: Option<&str>,
    args: &[&str],
) -> (i32, String) {
    let mut all = vec!["--noproxy", "*"];
    if let Some(r) = resolve {
        all.extend(["--resolve", r]);
    }
    if let Some(c) = ca {
        all.extend(["--cacert", c]);
    }
    all.extend_from_slice(args);
    curl(Some(ns), &all).await
}

fn skip(why: &str) {
    if std::env::var("TOOLGATE_REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!("TOOLGATE_REQUIRE_NETNS=1 but the transparent test cannot run: {why}");
    }
    crate::support::skips::skipped(
        &format!(
            "{} (transparent interception)",
            crate::support::current_test()
        ),
        why,
        crate::support::skips::NETNS,
    );
}

#[tokio::test]
async fn an_agent_without_proxy_settings_is_governed_by_its_source_address() {
    for tool in ["curl", "nft"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return skip(&format!("{tool} is not installed"));
        }
    }
    let (agent_ns, agent_host_ip, agent_ip) = match create("tp", 232) {
        Ok(x) => x,
        Err(e) => return skip(&format!("cannot create a network namespace ({e})")),
    };
    let (stranger_ns, stranger_host_ip, _) = match create("ts", 233) {
        Ok(x) => x,
        Err(e) => return skip(&format!("cannot create a second network namespace ({e})")),
    };

    let (pki, fakes) = example_apis().await;
    // The agent has no token: it is known by its address only.
    let agent = format!(
        r#"
[[agent]]
id = "transparent-bot"
owner = "alice@example.com"
tenant = "acme"
environment = "staging"
tools = ["stripe.*", "github.*"]
attrs = {{ github_org = "acme" }}
sources = ["{agent_ip}/32"]
"#
    );
    let gate = GateBuilder::examples()
        .policies(&[("transparent.toml", agent)])
        .transparent(&format!("{agent_host_ip}:0"))
        .routed_to(&pki, fakes.addr)
        .start()
        .await;
    let listener = gate.transparent_addr.unwrap();
    let _nat = match redirect(
        "curl",
        &[&agent_ns.host_if, &stranger_ns.host_if],
        &listener.to_string(),
    ) {
        Ok(nat) => nat,
        Err(e) => return skip(&format!("cannot install a redirect ({e})")),
    };
    let ca = gate.ca_path();
    let ca = ca.to_str().unwrap();
    let stripe = format!("api.stripe.com:443:{agent_host_ip}");

    // 1. No proxy settings at all: the call is decrypted, checked, given the real key, sent.
    let (code, out) = agent_curl(
        &agent_ns.name,
        Some(&stripe),
        Some(ca),
        &[
            "-H",
            "Authorization: Bearer sk_test_agent_was_never_given_one",
            "-H",
            "Idempotency-Key: transparent-1",
            "-d",
            "email=agent@acme.com",
            "https://api.stripe.com/v1/customers",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
    assert!(created["id"].as_str().unwrap().starts_with("cus_"), "{out}");
    let seen = fakes.seen();
    assert_eq!(seen.len(), 1, "executed exactly once");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some("Bearer sk_test_toolgate_demo_placeholder"),
        "toolgate's key replaced whatever the agent sent"
    );

    // 2. An unmatched path: refused by toolgate, nothing sent.
    let (code, out) = agent_curl(
        &agent_ns.name,
        Some(&stripe),
        Some(ca),
        &["https://api.stripe.com/v1/not_a_contract"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let refused: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
    assert_eq!(refused["error"]["code"], "policy_violation", "{out}");

    // 2b. A tenant-bound parameter of another tenant: refused, nothing sent.
    let (code, out) = agent_curl(
        &agent_ns.name,
        Some(&format!("api.github.com:443:{agent_host_ip}")),
        Some(ca),
        &["https://api.github.com/repos/othercorp/secrets"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let refused: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("othercorp"),
        "{out}"
    );

    // 3. Plain HTTP on port 80 is sent upstream over TLS, through the same checks.
    let (code, out) = agent_curl(
        &agent_ns.name,
        Some(&format!("api.stripe.com:80:{agent_host_ip}")),
        None,
        &["http://api.stripe.com/v1/customers/cus_123"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(fakes.count("GET", "/v1/customers/cus_123"), 1, "{out}");

    //    Without a Host header it is refused, and recorded as that agent's refusal.
    let (code, out) = agent_curl(
        &agent_ns.name,
        Some(&format!("api.stripe.com:80:{agent_host_ip}")),
        None,
        &["-H", "Host:", "http://api.stripe.com/v1/customers/cus_123"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("needs a Host header"), "{out}");
    assert_eq!(
        fakes.count("GET", "/v1/customers/cus_123"),
        1,
        "nothing more was sent"
    );
    // (Recorded by the audit writer within its batch time.)
    let what = "the refusal is recorded";
    let events = audit_events_once(&gate, "code=validation_error", what, |e| !e.is_empty()).await;
    assert!(
        events.iter().any(|e| e["agent"].is_string()),
        "the refusal names the agent its source belongs to: {events:?}"
    );

    // 4. A host no contract names: no certificate is minted, nothing is sent.
    let (code, out) = agent_curl(
        &agent_ns.name,
        Some(&format!("uncontracted.test:443:{agent_host_ip}")),
        Some(ca),
        &["https://uncontracted.test/"],
    )
    .await;
    assert_ne!(code, 0, "an uncontracted host gets no TLS session: {out}");

    // 5. A namespace that no agent's sources name: the handshake completes, every request is
    //    answered auth_required, nothing reaches the API.
    let (code, out) = agent_curl(
        &stranger_ns.name,
        Some(&format!("api.stripe.com:443:{stranger_host_ip}")),
        Some(ca),
        &[
            "-d",
            "email=stranger@acme.com",
            "https://api.stripe.com/v1/customers",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let refused: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
    assert_eq!(refused["error"]["code"], "auth_required", "{out}");

    // 6. Ports other than the redirected ones do not leave the namespace.
    let (code, out) = agent_curl(
        &agent_ns.name,
        None,
        None,
        &[&format!(
            "http://{agent_host_ip}:{}/",
            gate.admin_addr.port()
        )],
    )
    .await;
    assert_ne!(code, 0, "{out}");

    // 7. Guard rails: a TLS client without SNI (an IP literal) and a connection straight to the
    //    transparent listener (not redirected: its destination is toolgate itself) are closed.
    let (code, out) = agent_curl(
        &agent_ns.name,
        None,
        Some(ca),
        &[&format!("https://{agent_host_ip}/v1/customers/cus_123")],
    )
    .await;
    assert_ne!(code, 0, "no SNI, no session: {out}");
    let (code, out) = agent_curl(
        &agent_ns.name,
        Some(&format!(
            "api.stripe.com:{}:{agent_host_ip}",
            listener.port()
        )),
        Some(ca),
        &[&format!(
            "https://api.stripe.com:{}/v1/customers/cus_123",
            listener.port()
        )],
    )
    .await;
    assert_ne!(
        code, 0,
        "a direct connection to the listener is a loop: {out}"
    );

    assert_eq!(
        fakes.seen().len(),
        2,
        "only the two allowed calls reached the API"
    );
    // The refusals are audited, the stranger's included.
    let codes: Vec<String> = audit_events(&gate, "kind=decision")
        .await
        .iter()
        .filter_map(|e| e["payload"]["code"].as_str().map(str::to_string))
        .collect();
    for expected in ["policy_violation", "egress_denied", "auth_required"] {
        assert!(
            codes.iter().any(|c| c == expected),
            "{expected} in {codes:?}"
        );
    }
    drop((agent_ns, stranger_ns));
}

/// stripe-python with no `proxy=`, only `stripe.ca_bundle_path`: its calls are governed as
/// through the proxy listener, a held refund included (approved here through the admin API).
#[tokio::test]
async fn stripe_python_with_no_proxy_setting_is_governed_transparently() {
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/.venv/bin/python");
    if !python.exists() {
        if std::env::var("TOOLGATE_REQUIRE_SDKS").as_deref() == Ok("1") {
            panic!("TOOLGATE_REQUIRE_SDKS=1 but tests/sdk/.venv is missing");
        }
        return crate::support::skips::skipped(
            "stripe-python transparent (tests/transparent.rs)",
            "tests/sdk/.venv is missing",
            crate::support::skips::SDKS,
        );
    }
    if Command::new("nft").arg("--version").output().is_err() {
        return skip("nft is not installed");
    }
    let (ns, host_ip, agent_ip) = match create("tq", 234) {
        Ok(x) => x,
        Err(e) => return skip(&format!("cannot create a network namespace ({e})")),
    };
    if let Err(e) = ns.hosts(&host_ip, &["api.stripe.com"]) {
        return skip(&format!("cannot write /etc/netns ({e})"));
    }
    let (pki, fakes) = example_apis().await;
    let agent = format!(
        "[[agent]]\nid = \"transparent-py\"\nowner = \"alice@example.com\"\ntenant = \"acme\"\n\
         environment = \"staging\"\ntools = [\"stripe.*\"]\nsources = [\"{agent_ip}\"]\n"
    );
    let gate = GateBuilder::examples()
        .policies(&[("transparent.toml", agent)])
        .transparent(&format!("{host_ip}:0"))
        .routed_to(&pki, fakes.addr)
        .start()
        .await;
    let to = gate.transparent_addr.unwrap().to_string();
    let _nat = match redirect("py", &[&ns.host_if], &to) {
        Ok(nat) => nat,
        Err(e) => return skip(&format!("cannot install a redirect ({e})")),
    };
    // Approves what the agent's refund asks for, as carol, while the agent waits.
    let approving = approver(&gate, "released for the transparent agent");
    let ca = gate.ca_path();
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(&python)
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/agent.py"))
        .arg("stripe")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TOOLGATE_PROXY", "")
        .env("TOOLGATE_CA", &ca)
        .env("SDK_RUN", format!("t{}", std::process::id()));
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .expect("the agent finished")
        .unwrap();
    approving.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name}: {stdout}"))
    };
    assert_eq!(step("retried_write")["ok"], true, "{stdout}");
    assert_eq!(step("read")["ok"], true, "{stdout}");
    assert_eq!(step("held_write")["detail"], "succeeded", "{stdout}");
    let refused = step("refused_write");
    assert_eq!(refused["ok"], false, "{stdout}");
    assert!(
        refused["detail"].as_str().unwrap().contains("tax_exempt"),
        "{stdout}"
    );
    assert_eq!(
        fakes.count("POST", "/v1/customers"),
        1,
        "the retried create executed once"
    );
    assert_eq!(
        fakes.count("POST", "/v1/refunds"),
        1,
        "the approved refund executed once"
    );
    for s in fakes.seen() {
        assert_eq!(
            s.authorization.as_deref(),
            Some("Bearer sk_test_toolgate_demo_placeholder")
        );
    }
    drop(ns);
}

/// Half-sent requests (`GET / HTTP/1.1`, a header, then nothing) from an address that no agent's
/// `sources` holds, more of them than `--max-connections`, on the plain-HTTP port: past the
/// address's cap they are closed at once, the rest by the idle and header-read timeouts, and an
/// agent's request through the proxy listener is served meanwhile (the strangers cannot take the
/// connection slots).
#[tokio::test]
async fn half_sent_requests_from_an_unknown_source_time_out_and_leave_agents_their_slots() {
    for tool in ["nft", "bash"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return skip(&format!("{tool} is not installed"));
        }
    }
    let (ns, host_ip, _) = match create("tu", 235) {
        Ok(x) => x,
        Err(e) => return skip(&format!("cannot create a network namespace ({e})")),
    };
    const MAX_CONNECTIONS: usize = 20;
    const HALF_SENT: usize = 24;
    const IDLE: std::time::Duration = std::time::Duration::from_secs(4);
    let (pki, fakes) = example_apis().await;
    let gate = GateBuilder::examples()
        .transparent(&format!("{host_ip}:0"))
        .routed_to(&pki, fakes.addr)
        .config(|c| {
            c.guards.idle_timeout = IDLE;
            c.guards.max_connections = MAX_CONNECTIONS;
        })
        .start()
        .await;
    let to = gate.transparent_addr.unwrap().to_string();
    let _nat = match redirect("slow", &[&ns.host_if], &to) {
        Ok(nat) => nat,
        Err(e) => return skip(&format!("cannot install a redirect ({e})")),
    };
    // Each connection sends half a request and waits (30 s at most) for toolgate to close it.
    let script = format!(
        "trap '' PIPE\n\
         for i in $(seq 1 {HALF_SENT}); do\n\
           if exec {{fd}}<>/dev/tcp/{host_ip}/80; then\n\
             printf 'GET / HTTP/1.1\\r\\nHost: api.stripe.com\\r\\n' >&$fd\n\
             ( timeout 30 cat <&$fd >/dev/null 2>&1; echo closed ) &\n\
             exec {{fd}}>&-\n\
           else echo closed; fi\n\
         done\n\
         echo opened\n\
         wait\n"
    );
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "bash", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // What the connections report, timed as it arrives.
    let start = std::time::Instant::now();
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let log = heard.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            log.lock().unwrap().push((line, start.elapsed()));
        }
    });
    let closed = || -> Vec<std::time::Duration> {
        let heard = heard.lock().unwrap();
        heard
            .iter()
            .filter(|(l, _)| l == "closed")
            .map(|(_, t)| *t)
            .collect()
    };
    let opened = || std::future::ready(heard.lock().unwrap().iter().any(|(l, _)| l == "opened"));
    let within = std::time::Duration::from_secs(20);
    poll::until("the connections are opened", within, opened).await;

    // The strangers hold what they may; an agent's new connections on the proxy listener are
    // served at once (each client opens its own).
    for _ in 0..3 {
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            send(
                &staging(&gate),
                "GET",
                "https://api.stripe.com/v1/customers/cus_123",
                &[],
                "",
            ),
        )
        .await
        .expect("the agent waited for a connection slot that strangers held")
        .unwrap();
        assert!(
            got.headers.contains_key("toolgate-request-id"),
            "{}",
            got.text()
        );
    }
    let served = start.elapsed();
    assert_eq!(
        fakes.count("GET", "/v1/customers/cus_123"),
        3,
        "the agent's calls were sent"
    );

    let all_closed = || std::future::ready(closed().len() >= HALF_SENT);
    poll::until("every half-sent request is closed", within, all_closed).await;
    let closed = closed();
    assert_eq!(closed.len(), HALF_SENT, "{closed:?}");
    let late: Vec<_> = closed.iter().filter(|t| **t >= IDLE / 2).collect();
    assert!(
        !late.is_empty() && late.len() <= 4,
        "the address's 4 connections waited for the timeout, the others were closed at once: \
         {closed:?}"
    );
    assert!(
        late.iter().all(|t| **t > served && **t < IDLE * 3),
        "the agent was served while they were open, and the timeout closed them: {served:?} \
         {closed:?}"
    );
    drop(ns);
}
