//! Launch check: a tool bypass fails at the network layer. The agent runs in a network namespace
//! of its own whose only reachable address is toolgate's (a veth pair, no default route); a
//! direct HTTPS call to the API fails there, the same call through toolgate succeeds, and the
//! only credential the agent holds is one the API refuses.
//!
//! Needs root (or CAP_NET_ADMIN), `ip` from iproute2 and `curl`. Without them it prints why it
//! skipped and passes, unless `TOOLGATE_REQUIRE_NETNS=1` makes a skip a failure.

use std::process::Command;

use crate::support::netns::{create, curl};
use crate::support::*;

fn skip(why: &str) {
    if std::env::var("TOOLGATE_REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!("TOOLGATE_REQUIRE_NETNS=1 but the bypass test cannot run: {why}");
    }
    crate::support::skips::skipped(
        "launch_check_tool_bypass_fails_at_the_network_layer",
        why,
        crate::support::skips::NETNS,
    );
}

#[tokio::test]
async fn launch_check_tool_bypass_fails_at_the_network_layer() {
    if Command::new("curl").arg("--version").output().is_err() {
        return skip("curl is not installed");
    }
    let (ns, host_ip, _agent_ip) = match create("agent", 231) {
        Ok(x) => x,
        Err(e) => return skip(&format!("cannot create a network namespace ({e})")),
    };

    // The API fake listens on the host's loopback, as a real API sits beyond a route the
    // agent's namespace does not have. toolgate listens on the veth address only.
    let (pki, fakes) = example_apis().await;
    let gate = GateBuilder::examples()
        .proxy_bind(&format!("{host_ip}:0"))
        .routed_to(&pki, fakes.addr)
        .start()
        .await;
    let proxy = format!(
        "http://support-bot-staging:demo-staging-token@{}",
        gate.addr
    );
    let ca = gate.ca_path();
    let ca = ca.to_str().unwrap();
    let port = fakes.addr.port();
    let resolve_loopback = format!("api.stripe.com:{port}:127.0.0.1");
    let resolve_host = format!("api.stripe.com:{port}:{host_ip}");
    let direct = format!("https://api.stripe.com:{port}/v1/customers");
    let upstream_ca = pki.ca_path.to_str().unwrap().to_string();

    // 1. Direct from the agent's namespace: the API's address, any public address, and the
    //    host side of the veth on the API's port are all out of reach.
    for resolve in [&resolve_loopback, &resolve_host] {
        let (code, out) = curl(
            Some(&ns.name),
            &[
                "--noproxy",
                "*",
                "--resolve",
                resolve,
                "--cacert",
                &upstream_ca,
                "-H",
                "Authorization: Bearer demo-staging-token",
                "-d",
                "email=direct@acme.com",
                &direct,
            ],
        )
        .await;
        assert_ne!(code, 0, "a direct call must fail ({resolve}): {out}");
        assert!(
            out.contains("Failed to connect")
                || out.contains("Couldn't connect")
                || out.contains("unreachable"),
            "refused at the network layer, not by the API: {out}"
        );
    }
    let (code, out) = curl(
        Some(&ns.name),
        &[
            "--noproxy",
            "*",
            "--resolve",
            "api.stripe.com:443:192.0.2.10",
            "https://api.stripe.com/v1/customers",
        ],
    )
    .await;
    assert_ne!(code, 0, "no route to the internet: {out}");
    assert_eq!(fakes.seen().len(), 0, "the API received nothing");

    // 2. The same call through toolgate, from the same namespace, succeeds.
    let (code, out) = curl(
        Some(&ns.name),
        &[
            "--proxy",
            &proxy,
            "--cacert",
            ca,
            "-H",
            "Authorization: Bearer demo-staging-token",
            "-H",
            "Idempotency-Key: bypass-1",
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
        "the real key is toolgate's, injected on the way"
    );

    // 3. What the agent holds (its proxy token, any key it was given) the API refuses, even
    //    if a route to it existed: tried here from the host's namespace.
    for held in [
        "Bearer demo-staging-token",
        "Bearer sk_test_agent_was_never_given_one",
    ] {
        let (code, out) = curl(
            None,
            &[
                "--noproxy",
                "*",
                "--resolve",
                &resolve_loopback,
                "--cacert",
                &upstream_ca,
                "-H",
                &format!("Authorization: {held}"),
                "-d",
                "email=direct@acme.com",
                &direct,
            ],
        )
        .await;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("Invalid API Key provided"), "{out}");
    }
    assert_eq!(
        fakes.state.lock().unwrap().customers.len(),
        1,
        "only toolgate's call created anything"
    );
    drop(ns);
}
