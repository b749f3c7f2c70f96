//! The intercepting proxy end to end: real sockets on loopback, a real TLS upstream, a real
//! client through toolgate, and assertions on what the upstream actually received.

use std::process::Command;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use serde_json::json;

const CUSTOMER: &str = "https://api.stripe.com/v1/customers/cus_123";

#[tokio::test]
async fn get_and_post_over_http1() {
    let (_pki, upstream, gate) = GateBuilder::base().with_upstream().await;
    let client = gate.bot();

    let got = send(&client, "GET", CUSTOMER, &[], "").await.unwrap();
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert_eq!(got.json()["path"], "/v1/customers/cus_123");
    assert!(got.headers.contains_key("toolgate-request-id"));
    assert_eq!(got.headers["x-upstream"], "yes");

    let posted = send(
        &client,
        "POST",
        "https://api.stripe.com/v1/customers",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("idempotency-key", "k-1"),
        ],
        "email=a%40example.com&name=Ada",
    )
    .await
    .unwrap();
    assert_eq!(posted.status, 200);

    let seen = upstream.received();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path, "/v1/customers/cus_123");
    assert_eq!(seen[1].method, "POST");
    assert_eq!(seen[1].body, Bytes::from("email=a%40example.com&name=Ada"));
    for r in &seen {
        assert!(!r.headers.contains_key("proxy-authorization"));
    }
    assert_eq!(seen[0].authority, "api.stripe.com");
    let mut gate = gate;
    gate.stop().await.unwrap();
}

#[tokio::test]
async fn get_and_post_over_http2() {
    let (_pki, upstream, gate) = GateBuilder::base().with_upstream().await;
    let client = gate.client(Some(("bot", BOT_TOKEN)), Version::HTTP_2);
    let got = send(&client, "GET", CUSTOMER, &[], "").await.unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.version, Version::HTTP_2);
    let posted = send(
        &client,
        "POST",
        "https://api.stripe.com/v1/customers",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("idempotency-key", "k-2"),
        ],
        "name=Ada",
    )
    .await
    .unwrap();
    assert_eq!(posted.status, 200);
    assert_eq!(posted.version, Version::HTTP_2);
    let seen = upstream.received();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, Bytes::from("name=Ada"));
    // toolgate negotiated HTTP/2 with the upstream too (it offers both).
    assert_eq!(seen[0].version, Version::HTTP_2);
}

#[tokio::test]
async fn leaf_for_a_host_verifies_against_the_toolgate_ca() {
    let (_pki, _upstream, gate) = GateBuilder::base().with_upstream().await;
    let (status, _, stream) =
        raw_connect(gate.addr, "api.stripe.com:443", Some(("bot", BOT_TOKEN))).await;
    assert_eq!(status, 200);
    // Trusting only certs/ca.pem, with the host name checked by rustls' verifier.
    let tls = tls_over(stream, "api.stripe.com", &gate.ca_pem, &[b"http/1.1"])
        .await
        .unwrap();
    let (_, conn) = tls.get_ref();
    let chain = conn.peer_certificates().unwrap();
    assert_eq!(chain.len(), 2, "leaf + CA");
    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    // The leaf is not the CA certificate: each host gets its own key.
    assert_ne!(chain[0], chain[1]);
}

#[tokio::test]
async fn unknown_host_is_refused_and_nothing_reaches_an_upstream() {
    let (_pki, upstream, gate) = GateBuilder::base().with_upstream().await;
    // A host name on 443: the tunnel completes and every request in it gets the refusal (see
    // a_host_no_contract_names_is_refused_inside_the_tunnel_with_its_message).
    let (status, answer, _) =
        raw_connect(gate.addr, "evil.example.com:443", Some(("bot", BOT_TOKEN))).await;
    assert_eq!(status, 200, "{answer}");
    // A known host on another port is just as unknown, and refused at the CONNECT.
    let (status, answer, _) =
        raw_connect(gate.addr, "api.stripe.com:8443", Some(("bot", BOT_TOKEN))).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("\"egress_denied\""), "{answer}");
    assert!(answer.contains("toolgate-request-id"), "{answer}");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn ip_literals_and_metadata_addresses_are_refused() {
    // Even a contract that names them cannot reach loopback or the metadata service without an
    // explicit --connect-to route.
    let extra = r#"
[[tool]]
name = "metadata"
host = "169.254.169.254"
method = "GET"
path = "/latest/meta-data"

[[tool]]
name = "loopback"
host = "127.0.0.1"
method = "GET"
path = "/"
"#;
    let (_pki, upstream, gate) = GateBuilder::base()
        .policy("extra.toml", extra)
        .with_upstream()
        .await;
    for target in ["169.254.169.254:443", "127.0.0.1:443", "10.0.0.1:443"] {
        let (status, answer, _) = raw_connect(gate.addr, target, Some(("bot", BOT_TOKEN))).await;
        assert_eq!(status, 403, "{target}: {answer}");
        assert!(answer.contains("\"egress_denied\""), "{answer}");
    }
    let (_, answer, _) =
        raw_connect(gate.addr, "169.254.169.254:443", Some(("bot", BOT_TOKEN))).await;
    assert!(answer.contains("metadata address"), "{answer}");
    // Through a real client too.
    let got = send(&gate.bot(), "GET", "https://127.0.0.1/", &[], "").await;
    assert!(got.is_err(), "the tunnel must not open");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn missing_and_wrong_proxy_credentials_get_407() {
    let (_pki, upstream, gate) = GateBuilder::base().with_upstream().await;
    let (status, answer, _) = raw_connect(gate.addr, "api.stripe.com:443", None).await;
    assert_eq!(status, 407);
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("proxy-authenticate: basic"),
        "{answer}"
    );
    assert!(answer.contains("\"auth_required\""), "{answer}");

    let (status, answer, _) = raw_connect(
        gate.addr,
        "api.stripe.com:443",
        Some(("bot", "s3cr3t-guess")),
    )
    .await;
    assert_eq!(status, 407);
    assert!(answer.contains("\"auth_error\""), "{answer}");
    let (status, _, _) =
        raw_connect(gate.addr, "api.stripe.com:443", Some(("nobody", BOT_TOKEN))).await;
    assert_eq!(status, 407);

    // The token is never echoed back.
    assert!(!answer.contains("s3cr3t-guess"));
    assert!(send(
        &gate.client(None, Version::HTTP_11),
        "GET",
        CUSTOMER,
        &[],
        ""
    )
    .await
    .is_err());
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn unmatched_request_is_refused_and_the_upstream_receives_nothing() {
    let (_pki, upstream, gate) = GateBuilder::base().with_upstream().await;
    let client = gate.bot();
    let cases = [
        ("GET", "https://api.stripe.com/v1/charges"),
        ("DELETE", CUSTOMER),
        ("GET", "https://api.stripe.com/v1/customers/cus_1/extra"),
        ("GET", "https://api.stripe.com/v1/customers/..%2Frefunds"),
        ("GET", "https://api.stripe.com/v1//customers/cus_1"),
    ];
    for (method, url) in cases {
        let got = send(&client, method, url, &[], "").await.unwrap();
        assert_eq!(got.status, 403, "{method} {url}");
        assert_eq!(got.code(), "policy_violation", "{method} {url}");
        assert!(got.headers.contains_key("toolgate-request-id"));
    }
    let got = send(&client, "GET", "https://api.stripe.com/v1/charges", &[], "")
        .await
        .unwrap();
    assert!(
        got.message().contains("GET /v1/charges"),
        "{}",
        got.message()
    );
    assert!(
        got.message().contains("/v1/customers/{customer}"),
        "{}",
        got.message()
    );
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn sni_that_differs_from_the_connect_host_is_refused() {
    let (_pki, upstream, gate) = GateBuilder::base().with_upstream().await;
    let (status, _, stream) =
        raw_connect(gate.addr, "api.stripe.com:443", Some(("bot", BOT_TOKEN))).await;
    assert_eq!(status, 200);
    let result = tls_over(stream, "api.github.com", &gate.ca_pem, &[]).await;
    assert!(result.is_err(), "handshake must fail");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn plain_http_absolute_form_takes_the_same_path() {
    let (_pki, upstream, gate) = GateBuilder::base().with_upstream().await;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(http);
    // hyper's client sends absolute-form when the connection is to a proxy; emulate that by
    // talking to the proxy directly with a raw HTTP/1.1 connection.
    drop(client);
    let stream = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let req = Request::get("http://api.stripe.com/v1/customers/cus_9")
        .header("host", "api.stripe.com")
        .header("proxy-authorization", basic("bot", BOT_TOKEN))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = http1_over(stream, req).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert_eq!(upstream.count(), 1);
    assert_eq!(upstream.received()[0].path, "/v1/customers/cus_9");

    // Without credentials: 407. To an unknown host: 403. Unmatched path: 403, nothing sent.
    let stream = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let req = Request::get("http://api.stripe.com/v1/customers/cus_9")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(http1_over(stream, req).await.status, 407);
    let stream = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let req = Request::get("http://evil.example.com/")
        .header("proxy-authorization", basic("bot", BOT_TOKEN))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = http1_over(stream, req).await;
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (403, "egress_denied")
    );
    let stream = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let req = Request::get("http://api.stripe.com/v1/charges")
        .header("proxy-authorization", basic("bot", BOT_TOKEN))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = http1_over(stream, req).await;
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (403, "policy_violation")
    );
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn plain_http_inside_a_tunnel_is_served_too() {
    let (_pki, upstream, gate) = GateBuilder::base().with_upstream().await;
    let (status, _, stream) =
        raw_connect(gate.addr, "api.stripe.com:443", Some(("bot", BOT_TOKEN))).await;
    assert_eq!(status, 200);
    let req = Request::get("/v1/customers/cus_5")
        .header("host", "api.stripe.com")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = http1_over(stream, req).await;
    assert_eq!(got.status, 200);
    assert_eq!(upstream.received()[0].path, "/v1/customers/cus_5");
}

#[tokio::test]
async fn a_tunnel_that_is_neither_tls_nor_http_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_pki, upstream, gate) = GateBuilder::base().with_upstream().await;
    let (status, _, mut stream) =
        raw_connect(gate.addr, "api.stripe.com:443", Some(("bot", BOT_TOKEN))).await;
    assert_eq!(status, 200);
    stream.write_all(b"\x00\x01\x02garbage\r\n").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "toolgate closes the tunnel");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn connect_inside_a_tunnel_is_refused() {
    let (_pki, upstream, gate) = GateBuilder::base().with_upstream().await;
    let (_, _, stream) =
        raw_connect(gate.addr, "api.stripe.com:443", Some(("bot", BOT_TOKEN))).await;
    let tls = tls_over(stream, "api.stripe.com", &gate.ca_pem, &[b"http/1.1"])
        .await
        .unwrap();
    let req = Request::connect("api.github.com:443")
        .header("host", "api.github.com:443")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = http1_over(tls, req).await;
    assert_eq!(got.status, 403);
    assert_eq!(got.code(), "policy_violation");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn sse_events_arrive_before_the_upstream_finishes() {
    let (_pki, upstream, gate) = GateBuilder::base().with_upstream().await;
    let client = gate.bot();
    let req = Request::get("https://api.stripe.com/sse")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The upstream holds the second event until released: the first must arrive on its own.
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first event did not arrive while the upstream was still streaming")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), Bytes::from("data: first\n\n"));
    upstream.sse_release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, Bytes::from("data: second\n\n"));
}

#[tokio::test]
async fn an_untrusted_upstream_certificate_gets_502_naming_the_cause() {
    // An upstream whose certificate comes from a CA toolgate does not trust.
    let rogue = Pki::new("rogue CA");
    let rogue_upstream = Upstream::start(rogue.server_config(&["api.sendgrid.com"])).await;
    let extra = r#"
[[tool]]
name = "sendgrid.mail.send"
host = "api.sendgrid.com"
method = "POST"
path = "/v3/mail/send"
side_effects = "irreversible"
idempotency = "payload"
body = { format = "json" }
"#;
    let pki = Pki::new("test upstream CA");
    let policies = vec![("base.toml", base_policy()), ("sg.toml", extra.to_string())];
    let addr = rogue_upstream.addr;
    let ca = pki.ca_path.clone();
    let gate = GateBuilder::new()
        .policies(&policies)
        .config(move |c| {
            c.add_connect_to(&format!("api.sendgrid.com:443={addr}"))
                .unwrap();
            c.upstream_ca.push(ca);
        })
        .start()
        .await;
    let got = send(
        &gate.bot(),
        "POST",
        "https://api.sendgrid.com/v3/mail/send",
        &[("content-type", "application/json")],
        "{}",
    )
    .await
    .unwrap();
    assert_eq!(got.status, 502);
    assert_eq!(got.code(), "upstream_error");
    let msg = got.message();
    assert!(msg.contains("api.sendgrid.com"), "{msg}");
    assert!(
        msg.contains("certificate") && msg.contains("UnknownIssuer"),
        "{msg}"
    );
    assert_eq!(got.json()["error"]["tool"], "sendgrid.mail.send");
    assert_eq!(
        rogue_upstream.count(),
        0,
        "no request was sent over the untrusted TLS"
    );
}

#[tokio::test]
async fn a_spoofed_host_header_does_not_change_where_the_request_goes() {
    let (_pki, upstream, gate) = GateBuilder::base()
        .policy(
            "extra.toml",
            r#"
[[tool]]
name = "github.repos.get"
host = "api.github.com"
method = "GET"
path = "/repos/{owner}/{repo}"
"#,
        )
        .with_upstream()
        .await;
    let (_, _, stream) =
        raw_connect(gate.addr, "api.stripe.com:443", Some(("bot", BOT_TOKEN))).await;
    let tls = tls_over(stream, "api.stripe.com", &gate.ca_pem, &[b"http/1.1"])
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    // A GitHub path with a GitHub Host inside a Stripe tunnel matches no Stripe contract.
    let req = Request::get("/repos/acme/web")
        .header("host", "api.github.com")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 403);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("api.stripe.com"));
    assert_eq!(upstream.count(), 0);
    // A Stripe path with a spoofed Host goes to Stripe, with Stripe's Host.
    let req = Request::get("/v1/customers/cus_1")
        .header("host", "api.github.com")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = upstream.received();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authority, "api.stripe.com");
}

#[tokio::test]
async fn a_slow_upstream_gets_504() {
    let (_pki, _upstream, gate) = GateBuilder::base().with_upstream().await;
    let got = send(&gate.bot(), "GET", "https://api.stripe.com/slow", &[], "")
        .await
        .unwrap();
    assert_eq!(got.status, 504);
    assert_eq!(got.code(), "upstream_timeout");
    assert_eq!(got.json()["error"]["tool"], "test.slow");
}

#[tokio::test]
async fn an_unreachable_upstream_gets_502() {
    // A route to a port nobody listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let policies = vec![("base.toml", base_policy())];
    let gate = GateBuilder::new()
        .policies(&policies)
        .config(move |c| {
            c.add_connect_to(&format!("api.stripe.com:443={addr}"))
                .unwrap();
        })
        .start()
        .await;
    let got = send(&gate.bot(), "GET", CUSTOMER, &[], "").await.unwrap();
    assert_eq!(got.status, 502);
    assert_eq!(got.code(), "upstream_error");
    assert!(
        got.message()
            .contains("could not connect to api.stripe.com"),
        "{}",
        got.message()
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let pki = Pki::new("test upstream CA");
    let upstream = Upstream::start(pki.server_config(&["api.stripe.com"])).await;
    let addr = upstream.addr;
    let ca = pki.ca_path.clone();
    let gate = GateBuilder::new()
        .policies(&[("base.toml", base_policy())])
        .config(move |c| {
            c.add_connect_to(&format!("api.stripe.com:443={addr}"))
                .unwrap();
            c.upstream_ca.push(ca);
            c.shutdown_grace = Duration::from_secs(10);
        })
        .start()
        .await;
    let client = gate.bot();
    let proxy_addr = gate.addr;
    let in_flight =
        tokio::spawn(
            async move { send(&client, "GET", "https://api.stripe.com/slow", &[], "").await },
        );
    // Wait until the slow request reached the upstream, then shut down.
    let reached = || std::future::ready(upstream.count() >= 1);
    poll::until("the slow request reaches the upstream", poll::SOON, reached).await;
    assert_eq!(upstream.count(), 1);
    let mut gate = gate;
    gate.stop().await.unwrap();
    let got = in_flight.await.unwrap().unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.body, Bytes::from("slow"));
    // After shutdown nothing is accepted.
    assert!(tokio::net::TcpStream::connect(proxy_addr).await.is_err());
}

#[tokio::test]
async fn tools_outside_the_agents_list_and_held_modes_are_refused_unsent() {
    let extra = format!(
        r#"
[[agent]]
id = "reader"
token_sha256 = "{}"
owner = "carol@example.com"
environment = "staging"
tools = ["stripe.customers.retrieve"]

[[tool]]
name = "stripe.refunds.create"
host = "api.stripe.com"
method = "POST"
path = "/v1/refunds"
mode = "approve"
side_effects = "irreversible"
idempotency = "key"
body = {{ format = "form" }}
approval = {{ hold = "200ms" }}

[[tool]]
name = "stripe.customers.delete"
host = "api.stripe.com"
method = "DELETE"
path = "/v1/customers/{{customer}}"
mode = "deny"
side_effects = "reversible"
idempotency = "payload"
"#,
        sha256_hex("reader-token")
    );
    let (_pki, upstream, gate) = GateBuilder::base()
        .policy("extra.toml", &extra)
        .with_upstream()
        .await;
    let reader = gate.client(Some(("reader", "reader-token")), Version::HTTP_11);
    let got = send(
        &reader,
        "POST",
        "https://api.stripe.com/v1/customers",
        &[],
        "name=x",
    )
    .await
    .unwrap();
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (403, "policy_violation")
    );
    assert!(got
        .message()
        .contains("may not use tool stripe.customers.create"));
    assert_eq!(
        send(&reader, "GET", CUSTOMER, &[], "")
            .await
            .unwrap()
            .status,
        200
    );

    let bot = gate.bot();
    let got = send(
        &bot,
        "POST",
        "https://api.stripe.com/v1/refunds",
        &[("content-type", "application/x-www-form-urlencoded")],
        "amount=1",
    )
    .await
    .unwrap();
    // A held call obeys the Idempotency-Key rule as much as a sent one.
    assert_eq!(got.status, 428, "{}", got.message());
    let got = send(
        &bot,
        "POST",
        "https://api.stripe.com/v1/refunds",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("idempotency-key", "refund-1"),
        ],
        "amount=1",
    )
    .await
    .unwrap();
    assert_eq!(got.status, 423);
    assert_eq!(got.code(), "approval_pending");
    assert!(got.headers.contains_key("toolgate-proposal"));
    let got = send(&bot, "DELETE", CUSTOMER, &[], "").await.unwrap();
    assert_eq!(got.status, 403);
    assert!(got.message().contains("mode deny"));
    assert_eq!(upstream.count(), 1, "only the permitted read was sent");
}

const CREDENTIALS: &str = r#"
[[credential]]
name = "stripe-test"
file = "secrets/stripe-test.key"
header = "Authorization"
format = "Bearer {secret}"

[[credential]]
name = "stripe-live"
file = "secrets/stripe-live.key"
header = "Authorization"
format = "Bearer {secret}"

[[tool]]
name = "stripe.payment_intents.create"
host = "api.stripe.com"
method = "POST"
path = "/v1/payment_intents"
side_effects = "reversible"
idempotency = "payload"
body = { format = "form" }
credential = { staging = "stripe-test", prod = "stripe-live" }

[[tool]]
name = "stripe.payouts.create"
host = "api.stripe.com"
method = "POST"
path = "/v1/payouts"
side_effects = "irreversible"
idempotency = "payload"
body = { format = "form" }
credential = { prod = "stripe-live" }
"#;

#[tokio::test]
async fn the_upstream_sees_the_configured_secret_and_never_the_agents_header() {
    let (_pki, upstream, gate) = GateBuilder::base()
        .policies(&[
            ("creds.toml", CREDENTIALS.to_string()),
            (
                "secrets/stripe-test.key",
                "sk_test_injected_123\n".to_string(),
            ),
            (
                "secrets/stripe-live.key",
                "sk_live_never_for_staging\n".to_string(),
            ),
        ])
        .with_upstream()
        .await;
    let client = gate.bot();
    let got = send(
        &client,
        "POST",
        "https://api.stripe.com/v1/payment_intents",
        &[
            ("authorization", "Bearer sk_test_agent_own_key"),
            ("x-api-key", "agent-key"),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        "amount=100&currency=usd",
    )
    .await
    .unwrap();
    assert_eq!(got.status, 200);
    let seen = upstream.received();
    assert_eq!(seen.len(), 1);
    let auth: Vec<_> = seen[0].headers.get_all("authorization").iter().collect();
    assert_eq!(auth, ["Bearer sk_test_injected_123"]);
    assert!(!seen[0].headers.contains_key("x-api-key"));

    // A tool with no credential for the agent's environment (staging) is refused, unsent: a
    // staging agent can never be given the prod key.
    let got = send(
        &client,
        "POST",
        "https://api.stripe.com/v1/payouts",
        &[],
        "amount=1",
    )
    .await
    .unwrap();
    assert_eq!(got.status, 403);
    assert_eq!(got.code(), "policy_violation");
    assert!(got
        .message()
        .contains("no credential for environment \"staging\""));
    assert!(!String::from_utf8_lossy(&got.body).contains("sk_live"));
    assert_eq!(upstream.count(), 1);

    // A tool without credentials still never passes the agent's own.
    send(
        &client,
        "GET",
        CUSTOMER,
        &[("authorization", "Bearer mine")],
        "",
    )
    .await
    .unwrap();
    assert!(!upstream.received()[1].headers.contains_key("authorization"));
}

#[tokio::test]
async fn a_missing_credential_stops_start_up_naming_the_variable_not_the_value() {
    let text = r#"
[[credential]]
name = "stripe-test"
env = "TOOLGATE_TEST_SURELY_UNSET_VAR"
header = "Authorization"
format = "Bearer {secret}"
"#;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), text).unwrap();
    let err = toolgate::policy::Policy::load_dir(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("TOOLGATE_TEST_SURELY_UNSET_VAR"),
        "{err}"
    );
}

/// Tools for every refusal a request with a body can get after its tunnel opened, beside the
/// example policies (whose agents, approvers and GitHub contracts the test uses too).
fn edge_tools() -> String {
    let tool = |name: &str, path: &str, extra: &str| {
        format!(
            "[[tool]]\nname = \"github.edge.{name}\"\nversion = 1\nowner = \"platform-team\"\n\
             description = \"edge case\"\nrisk = \"low\"\nhost = \"api.github.com\"\n\
             method = \"POST\"\npath = \"{path}\"\nbody = {{ format = \"json\" }}\n\
             credential = {{ staging = \"github\", prod = \"github\" }}\n{extra}\n"
        )
    };
    [
        tool("limited", "/edge/limited", "side_effects = \"none\"\nmode = \"auto\"\nrate_limit = \"1/hour\""),
        tool("off", "/edge/off", "side_effects = \"none\"\nmode = \"auto\""),
        tool(
            "keyed",
            "/edge/keyed",
            "side_effects = \"reversible\"\nmode = \"auto\"\nidempotency = \"key\"\n\
             rollback = { none = \"a test\" }",
        ),
        tool(
            "held",
            "/edge/held",
            "side_effects = \"irreversible\"\nmode = \"approve\"\nidempotency = \"payload\"\n\
             approval = { groups = [\"payments-leads\"], hold = \"50ms\" }\nrollback = { none = \"a test\" }",
        ),
        tool(
            "denied",
            "/edge/denied",
            "side_effects = \"irreversible\"\nmode = \"approve\"\nidempotency = \"payload\"\n\
             approval = { groups = [\"payments-leads\"], hold = \"50ms\" }\nrollback = { none = \"a test\" }",
        ),
    ]
    .concat()
}

/// A JSON body of about `size` bytes: `fields` plus padding in `"body"`.
fn padded(fields: serde_json::Value, size: usize) -> String {
    let mut v = fields;
    v["body"] = serde_json::Value::String("x".repeat(size));
    v.to_string()
}

/// One refusal to provoke: who sends what, and the status and code that must come back.
struct Case {
    name: &'static str,
    prod: bool,
    path: &'static str,
    key: Option<&'static str>,
    fields: serde_json::Value,
    status: u16,
    code: &'static str,
    sizes: &'static [usize],
}

/// Bodies from one frame to past the HTTP/2 stream window (256 KiB) and the connection window
/// (1 MiB), within the tools' 1 MiB cap; `OVER_CAP` is past it.
const SIZES: &[usize] = &[16, 300_000, 1_000_000];

/// A refusal the example staging agent provokes with bodies of every size in `SIZES`.
fn case(
    name: &'static str,
    path: &'static str,
    fields: serde_json::Value,
    (status, code): (u16, &'static str),
) -> Case {
    Case {
        name,
        prod: false,
        path,
        key: None,
        fields,
        status,
        code,
        sizes: SIZES,
    }
}
const OVER_CAP: &[usize] = &[2 << 20, 5 << 20];

/// curl POSTing the file `body` to `url` through the proxy, as the agent `who`, over `version`,
/// with an Idempotency-Key if given: the status and the body.
async fn curl_post(
    gate: &Toolgate,
    (who, version): ((&str, &str), &str),
    (url, key): (&str, Option<&str>),
    body: &std::path::Path,
) -> (u16, String) {
    let proxy = format!("http://{}:{}@{}", who.0, who.1, gate.addr);
    let ca = gate.ca_path();
    let mut args = vec![
        "-sS".to_string(),
        "--max-time".into(),
        "20".into(),
        version.into(),
        "-x".into(),
        proxy,
        "--cacert".into(),
        ca.to_str().unwrap().into(),
        "-H".into(),
        "content-type: application/json".into(),
        "--data-binary".into(),
        format!("@{}", body.display()),
        "-w".into(),
        "\n%{http_code}".into(),
    ];
    if let Some(k) = key {
        args.extend(["-H".into(), format!("idempotency-key: {k}")]);
    }
    args.push(url.to_string());
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("curl").args(&args).output(),
    )
    .await
    .expect("curl ended")
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let status = status.trim().parse().unwrap_or(0);
    if status == 0 {
        return (0, format!("{text}{}", String::from_utf8_lossy(&out.stderr)));
    }
    (status, body.to_string())
}

/// DESIGN 13, "every refusal is delivered": a request with a body that toolgate refuses, whether
/// before reading the body (tenant binding, no grant, no contract, kill switch, too large) or
/// after (schema, rate limit, idempotency, approval), gets its status and JSON error over HTTP/2
/// and HTTP/1.1, from hyper and from curl, with bodies past the HTTP/2 flow-control windows and
/// past the size cap: never a reset stream or a closed connection instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_reaches_the_client_over_http2_and_http1_whatever_the_body() {
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&[("edge.toml", edge_tools())])
        .with_upstream()
        .await;
    let staging_id = ("support-bot-staging", "demo-staging-token");
    let prod_id = ("support-bot-prod", "demo-prod-token");
    let cases = [
        case(
            "tenant binding",
            "/repos/globex/r/issues",
            json!({"title": "t"}),
            (403, "policy_violation"),
        ),
        Case {
            prod: true,
            ..case(
                "no grant",
                "/edge/limited",
                json!({}),
                (403, "policy_violation"),
            )
        },
        case(
            "no contract",
            "/edge/nothing",
            json!({}),
            (403, "policy_violation"),
        ),
        case(
            "kill switch",
            "/edge/off",
            json!({}),
            (403, "tool_disabled"),
        ),
        Case {
            sizes: OVER_CAP,
            ..case(
                "over the size cap",
                "/repos/acme/r/issues",
                json!({"title": "t"}),
                (413, "validation_error"),
            )
        },
        case(
            "schema",
            "/repos/acme/r/issues",
            json!({}),
            (422, "validation_error"),
        ),
        case(
            "rate limit",
            "/edge/limited",
            json!({}),
            (429, "rate_limited"),
        ),
        case(
            "no key",
            "/edge/keyed",
            json!({}),
            (428, "idempotency_key_required"),
        ),
        Case {
            key: Some("edge-key-1"),
            ..case(
                "key reused",
                "/edge/keyed",
                json!({"v": "other"}),
                (409, "idempotency_conflict"),
            )
        },
        case("held", "/edge/held", json!({}), (423, "approval_pending")),
        case(
            "denied",
            "/edge/denied",
            json!({}),
            (403, "approval_denied"),
        ),
    ];

    let h1 = gate.client(Some(staging_id), Version::HTTP_11);
    let post = |client: &TestClient, case: &Case, size: usize| {
        let mut headers = vec![JSON];
        if let Some(k) = case.key {
            headers.push(("idempotency-key", k));
        }
        let url = format!("https://api.github.com{}", case.path);
        let body = padded(case.fields.clone(), size);
        let client = client.clone();
        async move { send(&client, "POST", &url, &headers, body).await }
    };
    // What the refusals need in place: the one call the rate limit allows, the first use of the
    // key, the kill switch, and a denied proposal for each body.
    let first = post(&h1, &cases[6], 16).await.unwrap();
    assert_ne!(first.status, 429, "{}", first.text());
    let keyed = Case {
        fields: json!({"v": "first"}),
        ..cases[8]
    };
    let first = post(&h1, &keyed, 16).await.unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    let off = gate
        .admin(
            "POST",
            "/api/tools/github.edge.off/disable",
            Some("demo-carol-token"),
            Some(json!({"reason": "test"})),
        )
        .await;
    assert_eq!(off.status, 200, "{}", off.text());
    for size in SIZES {
        let held = post(&h1, &cases[10], *size).await.unwrap();
        assert_eq!(held.status, 423, "{}", held.text());
        let id = held.headers["toolgate-proposal"]
            .to_str()
            .unwrap()
            .to_string();
        let denied = gate
            .admin(
                "POST",
                &format!("/api/proposals/{id}/deny"),
                Some("demo-carol-token"),
                Some(json!({"comment": "no"})),
            )
            .await;
        assert_eq!(denied.status, 200, "{}", denied.text());
    }
    let forwarded = upstream.count();

    let curl = Command::new("curl").arg("--version").output().is_ok();
    if !curl {
        crate::support::skips::skipped(
            "the curl half of the refusal test (tests/proxy.rs)",
            "curl is not installed",
            "apt-get install curl",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for case in &cases {
        let who = if case.prod { prod_id } else { staging_id };
        for version in [Version::HTTP_2, Version::HTTP_11] {
            // A client (and so a tunnel) per case and protocol: refusals must leave it usable.
            let client = gate.client(Some(who), version);
            for i in 0..20 {
                let size = case.sizes[i % case.sizes.len()];
                match post(&client, case, size).await {
                    Ok(got) if got.status == case.status && got.code() == case.code => {}
                    Ok(got) => failures.push(format!(
                        "{} {version:?} {size}: {} {}",
                        case.name,
                        got.status,
                        got.text()
                    )),
                    Err(e) => failures.push(format!("{} {version:?} {size}: {e:?}", case.name)),
                }
            }
        }
        if !curl {
            continue;
        }
        for (i, size) in case.sizes.iter().enumerate() {
            let file = dir.path().join(format!("{i}.json"));
            std::fs::write(&file, padded(case.fields.clone(), *size)).unwrap();
            for version in ["--http2", "--http1.1"] {
                for _ in 0..3 {
                    let url = format!("https://api.github.com{}", case.path);
                    let (status, body) =
                        curl_post(&gate, (who, version), (&url, case.key), &file).await;
                    let code = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
                    if status != case.status || code.as_deref() != Some(case.code) {
                        failures.push(format!(
                            "curl {} {version} {size}: {status} {}",
                            case.name,
                            &body[..body.len().min(300)]
                        ));
                    }
                }
            }
        }
    }
    // Refusals on the proxy listener itself (absolute-form plain HTTP, HTTP/1.1): a host no
    // contract names, and a wrong token, with a body of 1 MB that is never read.
    if curl {
        let file = dir.path().join("absolute.json");
        std::fs::write(&file, padded(json!({}), 1_000_000)).unwrap();
        let wrong = ("support-bot-staging", "not-the-token");
        for (who, url, status, code) in [
            (
                staging_id,
                "http://uncontracted.example/v1/x",
                403,
                "egress_denied",
            ),
            (
                wrong,
                "http://api.github.com/edge/limited",
                407,
                "auth_error",
            ),
        ] {
            for _ in 0..5 {
                let (got, body) = curl_post(&gate, (who, "--http1.1"), (url, None), &file).await;
                if got != status || !body.contains(code) {
                    failures.push(format!(
                        "curl {url}: {got} {}",
                        &body[..body.len().min(300)]
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        upstream.count(),
        forwarded,
        "no refused call reached the upstream"
    );
}

/// Issue 25 item 5: a CONNECT to a host no contract names is completed, and every request in the
/// tunnel is answered with the refusal (status and JSON) instead of a bare "tunnel failed, 403"
/// that clients print without its message. Nothing goes upstream; the certificates this mints
/// are bounded per address and minute, past which the CONNECT itself is refused as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_no_contract_names_is_refused_inside_the_tunnel_with_its_message() {
    let (_pki, upstream, gate) = GateBuilder::examples().with_upstream().await;
    let agent = Some(("support-bot-staging", "demo-staging-token"));

    // A client library: the request's answer is toolgate's 403 JSON, naming the host.
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let client = gate.client(agent, version);
        let got = send(
            &client,
            "GET",
            "https://api.unnamed-example.com/v1/things",
            &[],
            "",
        )
        .await
        .unwrap();
        assert_eq!(got.status, 403, "{}", got.text());
        assert_eq!(got.code(), "egress_denied");
        assert!(
            got.message()
                .contains("api.unnamed-example.com is not named by any tool contract"),
            "{}",
            got.message()
        );
    }
    // curl prints the message (not "CONNECT tunnel failed").
    if Command::new("curl").arg("--version").output().is_ok() {
        let ca = gate.dir.path().join("certs/ca.pem");
        let proxy = format!(
            "http://support-bot-staging:demo-staging-token@{}",
            gate.addr
        );
        let (code, out) = crate::support::netns::curl(
            None,
            &[
                "--proxy",
                &proxy,
                "--cacert",
                ca.to_str().unwrap(),
                "-w",
                "\n%{http_code}",
                "https://api.unnamed-example.com/v1/things",
            ],
        )
        .await;
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("egress_denied") && out.ends_with("403"),
            "{out}"
        );
    }
    // An IP literal gets no minted certificate: refused at the CONNECT, as before.
    let (status, text, _) = raw_connect(gate.addr, "203.0.113.9:443", agent).await;
    assert_eq!(status, 403, "{text}");
    assert_eq!(upstream.count(), 0, "nothing went upstream");

    // Made-up host names cannot make toolgate mint certificates without end: per address and
    // minute a bounded number are answered inside the tunnel, the rest at the CONNECT.
    let mut inside = 0;
    for i in 0..300 {
        let host = format!("made-up-{i}.example.com:443");
        let (status, text, _) = raw_connect(gate.addr, &host, agent).await;
        match status {
            200 => inside += 1,
            403 => assert!(text.contains("egress_denied"), "{text}"),
            other => panic!("{other}: {text}"),
        }
    }
    assert!(inside <= 60, "{inside} answered inside the tunnel");
    assert!(inside >= 50, "the first ones still are: {inside}");
}
