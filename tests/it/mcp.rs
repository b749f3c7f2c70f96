//! MCP tool calls as contracts, against the official MCP Python SDK on both sides: its server
//! (`MCPServer`, streamable HTTP over TLS on loopback) and its client through toolgate by
//! HTTPS_PROXY. The server's own log of what it received and executed is the judge.
//!
//! The SDK is installed by `.ci/run` into `tests/sdk/.venv`. Without it this test prints why it
//! skipped, unless `TOOLGATE_REQUIRE_SDKS=1`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;
use serde_json::{json, Value};

const CAROL: &str = "demo-carol-token";

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk")
}

pub(crate) fn python() -> Option<PathBuf> {
    let python = sdk_dir().join(".venv/bin/python");
    let has_mcp = std::process::Command::new(&python)
        .args([
            "-c",
            "import mcp.server.mcpserver, mcp.client.streamable_http",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_mcp {
        return Some(python);
    }
    let why = "the MCP SDK (`mcp`) is not installed in tests/sdk/.venv";
    if std::env::var("TOOLGATE_REQUIRE_SDKS").as_deref() == Ok("1") {
        panic!("TOOLGATE_REQUIRE_SDKS=1 but {why}");
    }
    crate::support::skips::skipped(
        &format!(
            "{} (MCP through the official SDK)",
            crate::support::current_test()
        ),
        why,
        crate::support::skips::SDKS,
    );
    None
}

/// An MCP server process (the SDK's), stopped on drop.
pub(crate) struct Server {
    child: std::process::Child,
    pub(crate) port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    pub(crate) async fn start(python: &Path, pki: &Pki, host: &str, variant: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pki.server_pem(&[host]);
        std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
        std::fs::write(dir.path().join("key.pem"), key).unwrap();
        let log = dir.path().join("log.jsonl");
        let port_file = dir.path().join("port");
        let child = std::process::Command::new(python)
            .arg(sdk_dir().join("mcp_server.py"))
            .env("MCP_LOG", &log)
            .env("MCP_PORT_FILE", &port_file)
            .env("MCP_CERT", dir.path().join("cert.pem"))
            .env("MCP_KEY", dir.path().join("key.pem"))
            .env("MCP_HOST", host)
            .env("MCP_VARIANT", variant)
            .spawn()
            .unwrap();
        let written = || {
            let text = std::fs::read_to_string(&port_file).ok();
            std::future::ready(text.and_then(|t| t.trim().parse::<u16>().ok()))
        };
        let what = "the MCP server writes its port";
        let port = poll::until_some(what, Duration::from_secs(30), written).await;
        Server {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// Every line the server logged: HTTP requests received and tools executed.
    fn seen(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub(crate) fn executed(&self, tool: &str) -> Vec<Value> {
        self.seen()
            .into_iter()
            .filter(|e| e["executed"] == tool)
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example policies plus the same pinned read on a second server (an update of the first
/// that changed the tool's input schema).
fn policies() -> Vec<(&'static str, String)> {
    let examples = example_policies();
    let mcp = &examples.iter().find(|(n, _)| n == "mcp.toml").unwrap().1;
    let start = mcp.find("\n[[tool]]").unwrap();
    let end = mcp[start + 1..].find("\n[[tool]]").unwrap() + start + 1;
    let changed = mcp[start..end]
        .replace("tickets.get_ticket", "tickets.changed.get_ticket")
        .replace("mcp.tickets.example", "mcp.changed.example");
    // And a tool previewed there, never sent (mode dry_run).
    let preview = r#"
[[tool]]
name = "tickets.changed.create_ticket"
side_effects = "reversible"
mode = "dry_run"
host = "mcp.changed.example"
path = "/mcp"
mcp_tool = "create_ticket"
arguments = "schemas/tickets/create_ticket.json"
idempotency = "payload"
credential = { staging = "tickets" }

# An agent that holds no ticket tool until a grant lends it one.
[[agent]]
id = "triage-bot"
token_sha256 = "6d4b477c99390fc29453c4932c22bb075bb013ec0bfbca33224fbe7fedbadc46"
owner = "erin@example.com"
environment = "staging"
tools = ["github.repos.get"]
"#;
    vec![("mcp-changed.toml", format!("{changed}{preview}"))]
}

/// Approves pending MCP proposals as carol, but denies one titled "deny me".
fn approver(gate: &Toolgate) -> tokio::task::JoinHandle<()> {
    let admin = gate.admin_addr;
    tokio::spawn(async move {
        for _ in 0..1500 {
            let list = admin_at(
                admin,
                "GET",
                "/api/proposals?state=pending",
                Some(CAROL),
                None,
            )
            .await;
            let list: Value = serde_json::from_slice(&list.body).unwrap_or_default();
            for p in list["proposals"].as_array().cloned().unwrap_or_default() {
                let id = p["id"].as_str().unwrap_or_default();
                let (action, comment) = match p.to_string().contains("deny me") {
                    true => ("deny", "not today: a duplicate of T-1"),
                    false => ("approve", "looks right"),
                };
                let path = format!("/api/proposals/{id}/{action}");
                let body = json!({ "comment": comment });
                admin_at(admin, "POST", &path, Some(CAROL), Some(body)).await;
            }
            // A sleep: the pace of a stand-in approver that runs until the test drops it.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Runs the SDK client through toolgate as the staging bot; its steps by name.
async fn agent(python: &Path, gate: &Toolgate, url: &str, steps: &[&str]) -> Vec<Value> {
    agent_as(
        ("support-bot-staging", "demo-staging-token"),
        python,
        gate,
        url,
        steps,
    )
    .await
}

/// [`agent`] as another agent.
pub(crate) async fn agent_as(
    (id, token): (&str, &str),
    python: &Path,
    gate: &Toolgate,
    url: &str,
    steps: &[&str],
) -> Vec<Value> {
    let proxy = format!("http://{id}:{token}@{}", gate.addr);
    let out = tokio::process::Command::new(python)
        .arg(sdk_dir().join("mcp_agent.py"))
        .arg(url)
        .args(steps)
        .env("HTTPS_PROXY", &proxy)
        .env("SSL_CERT_FILE", gate.ca_path())
        .env("NO_PROXY", "")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("the agent finished within 120 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "agent failed:\n{stdout}\n{stderr}");
    eprintln!("{stdout}");
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn step<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name}: {steps:#?}"))
}

/// A step that failed, with a message naming `needle`.
fn refused(steps: &[Value], name: &str, needle: &str) {
    let s = step(steps, name);
    assert_eq!(s["ok"], false, "{name} must be refused: {s}");
    let text = s["detail"].as_str().unwrap_or_default();
    assert!(text.contains(needle), "{name}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_tools_through_toolgate_with_the_official_sdk() {
    let Some(python) = python() else { return };
    let pki = Pki::new("MCP server CA");
    let tickets = Server::start(&python, &pki, "mcp.tickets.example", "original").await;
    let changed = Server::start(&python, &pki, "mcp.changed.example", "changed").await;
    let (t_port, c_port) = (tickets.port, changed.port);
    let gate = GateBuilder::examples()
        .policies(&policies())
        .routed_to(&pki, ([127, 0, 0, 1], t_port).into())
        .config(|c| {
            c.add_connect_to(&format!("mcp.tickets.example:443=127.0.0.1:{t_port}"))
                .unwrap();
            c.add_connect_to(&format!("mcp.changed.example:443=127.0.0.1:{c_port}"))
                .unwrap();
            c.upstream_timeout = Duration::from_secs(20);
        })
        .start()
        .await;
    let approving = approver(&gate);
    let url = "https://mcp.tickets.example/mcp";
    let steps = agent(
        &python,
        &gate,
        url,
        &[
            "list",
            "read",
            "unknown_argument",
            "uncontracted",
            "rule",
            "denied_tool",
            "held",
            "retry",
            "denied",
            "other_method",
            "batch",
        ],
    )
    .await;

    // tools/list shows the agent's callable tools only: not the uncontracted search_tickets,
    // not delete_all_tickets (contracted in mode deny).
    assert_eq!(
        step(&steps, "list")["detail"],
        json!(["create_ticket", "get_ticket"])
    );
    // A read goes through, with the credential toolgate injected.
    assert_eq!(step(&steps, "read")["ok"], true);
    assert!(step(&steps, "read")["detail"]
        .as_str()
        .unwrap()
        .contains("printer on fire"));
    let auths: Vec<Value> = tickets
        .seen()
        .iter()
        .map(|e| e["authorization"].clone())
        .collect();
    assert!(
        auths.contains(&json!("Bearer demo-tickets-mcp-key")),
        "{auths:?}"
    );
    // Refusals come back as the tool's result with isError, saying what to change.
    refused(&steps, "unknown_argument", "/verbose");
    refused(&steps, "uncontracted", "search_tickets");
    refused(&steps, "rule", "must not carry a secret");
    refused(&steps, "denied_tool", "mode deny");
    // Held, approved, executed once; the retry (a new JSON-RPC id) executes nothing more and
    // gets the first result.
    let held = step(&steps, "held");
    assert_eq!(held["ok"], true, "{held}");
    assert!(held["detail"]
        .as_str()
        .unwrap()
        .contains("created ticket (printer on fire, high)"));
    assert_eq!(step(&steps, "retry")["detail"], held["detail"]);
    refused(&steps, "denied", "not today");
    // Other methods are refused (as a JSON-RPC error).
    refused(&steps, "other_method", "not allowed through toolgate");
    // A batch is answered message by message.
    let batch = step(&steps, "batch");
    let answers = batch["detail"].as_array().unwrap();
    assert_eq!(answers.len(), 2, "{batch}");
    let a = answers.iter().find(|m| m["id"] == "a").unwrap();
    let b = answers.iter().find(|m| m["id"] == "b").unwrap();
    assert!(
        a["result"]["isError"] != true && a.to_string().contains("ticket T-7"),
        "{a}"
    );
    assert_eq!(b["result"]["isError"], true, "{b}");
    assert!(b.to_string().contains("search_tickets"), "{b}");

    // What the server executed: exactly what was allowed.
    let created = tickets.executed("create_ticket");
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["title"], "printer on fire");
    assert!(tickets.executed("search_tickets").is_empty());
    assert!(tickets.executed("delete_all_tickets").is_empty());
    let reads: Vec<Value> = tickets
        .executed("get_ticket")
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(reads, vec![json!("T-9"), json!("T-7")]);

    // A server that changed a pinned tool: hidden from the list and refused.
    let steps = agent(
        &python,
        &gate,
        "https://mcp.changed.example/mcp",
        &["list", "pinned_read", "held"],
    )
    .await;
    approving.abort();
    // (Its other contracted tool is previewed, in mode dry_run.)
    assert_eq!(step(&steps, "list")["detail"], json!(["create_ticket"]));
    refused(&steps, "pinned_read", "pinned");
    assert!(changed.executed("get_ticket").is_empty());
    // A dry run answers with a preview of the call (marked isError: it is not the tool's
    // output); the server executes nothing.
    let text = step(&steps, "held")["detail"].as_str().unwrap().to_string();
    assert!(
        text.contains("dry run") && text.contains("printer on fire"),
        "{text}"
    );
    assert!(changed.executed("create_ticket").is_empty());

    // The story of the approved call names the MCP tool, its arguments and the approver.
    let committed = admin_at(
        gate.admin_addr,
        "GET",
        "/api/proposals?state=committed",
        Some(CAROL),
        None,
    )
    .await;
    let committed: Value = serde_json::from_slice(&committed.body).unwrap();
    let p = committed["proposals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["tool"] == "tickets.create_ticket")
        .unwrap()
        .clone();
    // The approvers' page names the server's tool and its arguments (escaped).
    let cookie = gate.sign_in(CAROL).await;
    let page = gate
        .page(
            "GET",
            &format!("/proposals/{}", p["id"].as_str().unwrap()),
            Some(&cookie),
            None,
        )
        .await
        .text();
    assert!(
        page.contains("<th>MCP tool</th><td>create_ticket with arguments <code>")
            && page.contains("printer on fire"),
        "{page}"
    );
    let story = admin_at(
        gate.admin_addr,
        "GET",
        &format!("/api/audit/story/{}", p["id"].as_str().unwrap()),
        Some(CAROL),
        None,
    )
    .await;
    let story = String::from_utf8_lossy(&story.body);
    for needle in [
        "create_ticket",
        "printer on fire",
        "carol@example.com",
        "looks right",
    ] {
        assert!(story.contains(needle), "the story names {needle}: {story}");
    }
    assert!(
        !story.contains("demo-tickets-mcp-key"),
        "no secret in the story"
    );
    // An agent holding no tool on the endpoint cannot even open a session; a query string is
    // refused; nothing reaches the server.
    let before = tickets.seen().len();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}).to_string();
    let prod = client_via(
        gate.addr,
        Some(("support-bot-prod", "demo-prod-token")),
        &gate.ca_pem,
        http::Version::HTTP_11,
    );
    let got = send(&prod, "POST", url, &[JSON], &init).await.unwrap();
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (403, "policy_violation"),
        "{}",
        got.text()
    );
    let staging = client_via(
        gate.addr,
        Some(("support-bot-staging", "demo-staging-token")),
        &gate.ca_pem,
        http::Version::HTTP_11,
    );
    let got = send(&staging, "POST", &format!("{url}?debug=1"), &[JSON], &init)
        .await
        .unwrap();
    assert_eq!(got.code(), "validation_error", "{}", got.text());
    assert_eq!(tickets.seen().len(), before, "nothing reached the server");

    // A grant lends the triage bot (no ticket tool of its own) one tool on the endpoint: it may
    // open a session, sees only that tool listed, and its read goes through.
    let lent = gate
        .admin(
            "POST",
            "/api/grants",
            Some("demo-dave-token"),
            Some(
                json!({"agent": "triage-bot", "tool": "tickets.get_ticket", "for": "10m",
                        "reason": "triage the printer incident"}),
            ),
        )
        .await;
    assert_eq!(lent.status, 201, "{}", lent.text());
    let triage = agent_as(
        ("triage-bot", "demo-triage-token"),
        &python,
        &gate,
        url,
        &["list", "read"],
    )
    .await;
    assert_eq!(step(&triage, "list")["detail"], json!(["get_ticket"]));
    assert_eq!(step(&triage, "read")["ok"], true, "{triage:?}");

    // `toolgate mcp pin URL` lists what each server offers now against the contracts.
    let pins = |host: &str, port: u16| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
            .args(["mcp", "pin", &format!("https://{host}/mcp"), "--policies"])
            .arg(gate.dir.path().join("policies"))
            .arg("--connect-to")
            .arg(format!("{host}:443=127.0.0.1:{port}"))
            .arg("--upstream-ca")
            .arg(&pki.ca_path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let example_pin = example_policies()
        .into_iter()
        .find(|(n, _)| n == "mcp.toml")
        .unwrap()
        .1
        .lines()
        .find_map(|l| {
            l.strip_prefix("pin = \"")
                .map(|p| p.trim_end_matches('"').to_string())
        })
        .unwrap();
    let now = pins("mcp.tickets.example", t_port);
    let line = |text: &str, tool: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{tool}\t")))
            .unwrap_or_else(|| panic!("{tool} is not listed: {text}"))
            .to_string()
    };
    let get = line(&now, "get_ticket");
    assert!(
        get.contains(&example_pin) && get.contains("pin matches"),
        "{get}"
    );
    assert!(
        line(&now, "search_tickets").contains("not contracted"),
        "{now}"
    );
    assert!(line(&now, "create_ticket").contains("not pinned"), "{now}");
    let after = pins("mcp.changed.example", c_port);
    assert!(line(&after, "get_ticket").contains("CHANGED"), "{after}");
    assert!(!now.contains("demo-tickets-mcp-key") && !after.contains("demo-tickets-mcp-key"));
}

// ---------------------------------------------------------------------------------------------
// The edges (issue 23), against a fake MCP server whose answers each test shapes.

use crate::support::mcp_fake::{self, Framing, McpFake};

const CRM: &str = "https://mcp.crm.example/mcp";
const A: (&str, &str) = ("agent-a", "agent-a-token");
const B: (&str, &str) = ("agent-b", "agent-b-token");
const ADMIN: &str = "crm-admin-token";

/// Two agents holding the CRM server's tools: a pinned lookup (pinned to the description the
/// fake first lists), and customer reads that hide email and phone.
fn crm_policy() -> Vec<(&'static str, String)> {
    let pin = toolgate::mcp::pin_of(&mcp_fake::listed(false)[0]);
    let agent = |(id, token): (&str, &str)| {
        format!(
            "[[agent]]\nid = \"{id}\"\ntoken_sha256 = \"{}\"\nowner = \"{id}@example.com\"\nenvironment = \"staging\"\ntools = [\"crm.*\"]\n\n",
            sha256_hex(token)
        )
    };
    let tool = |name: &str, extra: &str| {
        format!(
            "[[tool]]\nname = \"crm.{name}\"\nhost = \"mcp.crm.example\"\npath = \"/mcp\"\nmcp_tool = \"{name}\"\nside_effects = \"none\"\narguments = \"schemas/crm/id.json\"\n{extra}\n\n"
        )
    };
    let hide = "response = { hide = [\"/result/structuredContent/email\", \"/result/structuredContent/phone\"] }";
    let admin = format!(
        "[[approver]]\nid = \"root@example.com\"\ntoken_sha256 = \"{}\"\ngroups = [\"admin\"]\n\n",
        sha256_hex(ADMIN)
    );
    let text = [
        admin,
        agent(A),
        agent(B),
        tool("lookup", &format!("pin = \"{pin}\"")),
        tool("get_customer", hide),
        tool("describe_customer", hide),
        tool("note", hide),
        tool(
            "update_customer",
            &format!("{hide}\nidempotency = \"payload\"\nrollback = {{ none = \"by hand\" }}"),
        )
        .replace("side_effects = \"none\"", "side_effects = \"reversible\""),
    ]
    .concat();
    let schema = json!({"type": "object", "properties": {"id": {"type": "string"}}, "additionalProperties": false});
    vec![
        ("crm.toml", text),
        ("schemas/crm/id.json", schema.to_string()),
    ]
}

/// toolgate with the CRM policy, routing mcp.crm.example to `fake`.
async fn crm_gate(pki: &Pki, fake: &McpFake) -> Toolgate {
    let (addr, ca) = (fake.addr, pki.ca_path.clone());
    GateBuilder::new()
        .policies(&crm_policy())
        .config(move |c| {
            c.add_connect_to(&format!("mcp.crm.example:443={addr}"))
                .unwrap();
            c.upstream_ca.push(ca);
            c.upstream_timeout = Duration::from_secs(10);
        })
        .start()
        .await
}

async fn crm() -> (Pki, McpFake, Toolgate) {
    let pki = Pki::new("MCP fake CA");
    let fake = McpFake::start(pki.server_config(&["mcp.crm.example"])).await;
    let gate = crm_gate(&pki, &fake).await;
    (pki, fake, gate)
}

/// An agent's MCP client: plain requests to the endpoint through toolgate.
struct Mcp {
    client: TestClient,
    session: Option<String>,
}

impl Mcp {
    fn new(gate: &Toolgate, (id, token): (&str, &str)) -> Mcp {
        Mcp {
            client: client_via(
                gate.addr,
                Some((id, token)),
                &gate.ca_pem,
                http::Version::HTTP_11,
            ),
            session: None,
        }
    }

    async fn send(&self, method: &str, body: &str) -> crate::support::Answer {
        let mut headers = vec![JSON, ("accept", "application/json, text/event-stream")];
        if let Some(s) = &self.session {
            headers.push(("mcp-session-id", s.as_str()));
        }
        send(&self.client, method, CRM, &headers, body)
            .await
            .unwrap()
    }

    async fn post(&self, message: Value) -> crate::support::Answer {
        self.send("POST", &message.to_string()).await
    }

    /// Opens a session.
    async fn init(&mut self) {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
        let got = self.post(init).await;
        assert_eq!(got.status, 200, "{}", got.text());
        let session = got.headers.get("mcp-session-id").unwrap().to_str().unwrap();
        self.session = Some(session.to_string());
        let done = self
            .post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        assert_eq!(done.status, 202, "{}", done.text());
    }

    async fn list(&self) -> crate::support::Answer {
        self.post(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .await
    }

    async fn call(&self, tool: &str) -> crate::support::Answer {
        self.post(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": tool, "arguments": {"id": "cus_1"}}}))
            .await
    }
}

/// The JSON-RPC messages of an answer, read as a client reads them (an event stream's lines
/// end in CR, LF or CRLF).
fn rpc_messages(got: &crate::support::Answer) -> Vec<Value> {
    let stream = got.headers.get("content-type").is_some_and(|c| {
        c.to_str()
            .unwrap()
            .to_ascii_lowercase()
            .starts_with("text/event-stream")
    });
    if !stream {
        return vec![got.json()];
    }
    let text = got.text().replace("\r\n", "\n").replace('\r', "\n");
    text.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            serde_json::from_str(&data.join("\n")).ok()
        })
        .collect()
}

/// The one answer of an answer (the result or error with an id).
fn rpc_answer(got: &crate::support::Answer) -> Value {
    rpc_messages(got)
        .into_iter()
        .find(|m| m.get("result").is_some() || m.get("error").is_some())
        .unwrap_or_else(|| panic!("no JSON-RPC answer in {}", got.text()))
}

fn tool_names(got: &crate::support::Answer) -> Vec<String> {
    let answer = rpc_answer(got);
    answer["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {answer}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

/// The text of a refused call's result.
fn refused_text(got: &crate::support::Answer) -> String {
    let answer = rpc_answer(got);
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string()
}

fn calls_of(fake: &McpFake, tool: &str) -> usize {
    fake.seen()
        .iter()
        .filter(|s| s.what() == "tools/call" && s.body["params"]["name"] == tool)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cr_only_event_stream_slips_no_changed_or_uncontracted_tool_past_toolgate() {
    let (pki, fake, gate) = crm().await;
    let mut a = Mcp::new(&gate, A);
    // Issue 23 row 3: the server changed the pinned tool's description to an injection and
    // answers tools/list as an event stream with CR-only line ends.
    fake.change_pinned_tool(true);
    fake.frame(Framing::sse("\r"));
    a.init().await;
    let got = a.list().await;
    assert_eq!(got.status, 200, "{}", got.text());
    let text = got.text();
    assert!(
        !text.contains("exfiltrate") && !text.contains("IGNORE ALL"),
        "the agent sees only contracted tools as pinned: {text}"
    );
    let contracted = ["get_customer", "describe_customer", "note"];
    assert_eq!(tool_names(&got), contracted);
    // The changed tool's call is refused; the server never gets it.
    let refused = refused_text(&a.call("lookup").await);
    assert!(refused.contains("pinned"), "{refused}");
    let refused = refused_text(&a.call("exfiltrate").await);
    assert!(refused.contains("exfiltrate"), "{refused}");
    assert_eq!(calls_of(&fake, "lookup") + calls_of(&fake, "exfiltrate"), 0);

    // Every framing a server may choose reads the same: JSON, a stream with each line end,
    // sent whole or a byte at a time (every chunk boundary at once).
    let mut framings = vec![Framing::json()];
    for end in ["\n", "\r", "\r\n"] {
        for bytewise in [false, true] {
            framings.push(Framing {
                bytewise,
                ..Framing::sse(end)
            });
        }
    }
    framings.push(Framing {
        content_type: Some("Text/Event-Stream; charset=UTF-8"),
        ..Framing::sse("\r")
    });
    for framing in framings {
        fake.frame(framing.clone());
        fake.change_pinned_tool(true);
        let got = a.list().await;
        assert_eq!(tool_names(&got), contracted, "{framing:?}: {}", got.text());
        assert!(!got.text().contains("IGNORE ALL"), "{framing:?}");
        // Unchanged again: the pinned tool is listed and called.
        fake.change_pinned_tool(false);
        let got = a.list().await;
        assert_eq!(tool_names(&got)[0], "lookup", "{framing:?}: {}", got.text());
        let called = rpc_answer(&a.call("lookup").await);
        assert_eq!(
            called["result"]["content"][0]["text"], "record 1",
            "{framing:?}"
        );
    }

    // An answer toolgate cannot read is refused, never passed on unread.
    fake.change_pinned_tool(true);
    let unreadable = [
        Framing {
            content_encoding: Some("gzip"),
            ..Framing::sse("\r")
        },
        Framing {
            content_encoding: Some("br"),
            ..Framing::json()
        },
        Framing {
            content_type: Some("text/plain"),
            ..Framing::sse("\r")
        },
        Framing {
            content_type: Some("application/json; charset=utf-16"),
            ..Framing::json()
        },
    ];
    for framing in unreadable {
        fake.frame(framing.clone());
        let got = a.list().await;
        assert_eq!(
            (got.status.as_u16(), got.code().as_str()),
            (502, "upstream_error"),
            "{framing:?}: {}",
            got.text()
        );
        assert!(
            got.message().contains("could not be read"),
            "{}",
            got.text()
        );
        assert!(!got.text().contains("IGNORE ALL"));
    }

    // A list under a loosely matching id ("1" for 1), or slipped into any other answer or the
    // GET stream, is cut to the agent's tools all the same.
    fake.frame(Framing {
        loose_id: true,
        ..Framing::sse("\r")
    });
    let got = a.list().await;
    assert_eq!(
        got.status,
        502,
        "no answer under the list's own id: {}",
        got.text()
    );
    assert!(!got.text().contains("IGNORE ALL") && !got.text().contains("exfiltrate"));
    for framing in [Framing::json(), Framing::sse("\r"), Framing::sse("\n")] {
        fake.frame(Framing {
            decoy: true,
            ..framing.clone()
        });
        let ping = a
            .post(json!({"jsonrpc": "2.0", "id": 9, "method": "ping"}))
            .await;
        let called = a.call("get_customer").await;
        let stream = a.send("GET", "").await;
        for got in [ping, called, stream] {
            let text = got.text();
            assert!(
                text.contains("get_customer")
                    && !text.contains("exfiltrate")
                    && !text.contains("IGNORE ALL"),
                "{framing:?}: {} {text}",
                got.status
            );
        }
    }

    // toolgate's own look before a pinned call (no list seen yet) reads a CR-only stream too:
    // a fresh toolgate calls the unchanged tool, and refuses it once it changed.
    fake.frame(Framing::sse("\r"));
    for (changed, expect_call) in [(false, true), (true, false)] {
        fake.change_pinned_tool(changed);
        let fresh = crm_gate(&pki, &fake).await;
        let mut a = Mcp::new(&fresh, A);
        a.init().await;
        let before = calls_of(&fake, "lookup");
        let got = a.call("lookup").await;
        let answer = rpc_answer(&got);
        assert_eq!(answer["result"]["isError"] != true, expect_call, "{answer}");
        assert_eq!(calls_of(&fake, "lookup") - before, expect_call as usize);
    }
}

/// Issue 23 row 3 with the official MCP SDK client, and the SDK's server changed to answer with
/// CR-only event streams and a prompt-injecting description of the pinned tool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_client_sees_no_changed_tool_from_a_cr_only_server() {
    let Some(python) = python() else { return };
    let pki = Pki::new("MCP server CA");
    let server = Server::start(&python, &pki, "mcp.cronly.example", "cr_only").await;
    let port = server.port;
    let examples = example_policies();
    let tickets = &examples.iter().find(|(n, _)| n == "mcp.toml").unwrap().1;
    let moved = vec![(
        "mcp.toml",
        tickets.replace("mcp.tickets.example", "mcp.cronly.example"),
    )];
    let gate = GateBuilder::examples()
        .policies(&moved)
        .routed_to(&pki, ([127, 0, 0, 1], port).into())
        .config(|c| {
            c.add_connect_to(&format!("mcp.cronly.example:443=127.0.0.1:{port}"))
                .unwrap();
            c.upstream_timeout = Duration::from_secs(20);
        })
        .start()
        .await;
    let url = "https://mcp.cronly.example/mcp";
    let steps = agent(
        &python,
        &gate,
        url,
        &["list", "pinned_read", "uncontracted"],
    )
    .await;
    // Not the changed get_ticket, not the uncontracted search_tickets, not the denied tool.
    assert_eq!(step(&steps, "list")["detail"], json!(["create_ticket"]));
    refused(&steps, "pinned_read", "pinned");
    refused(&steps, "uncontracted", "search_tickets");
    assert!(server.executed("get_ticket").is_empty());
    assert!(server.executed("search_tickets").is_empty());
    let lists = server
        .seen()
        .iter()
        .filter(|e| e["body"].as_str().unwrap_or("").contains("tools/list"))
        .count();
    assert!(
        lists >= 1,
        "the server answered the list: {:?}",
        server.seen()
    );
}

/// Issue 23 row 8: `hide` on an MCP tool takes the hidden fields out of every copy of the
/// answer the agent gets, structured content and text alike, in every framing; an answer
/// whose copies toolgate cannot tell is withheld.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_fields_leave_every_copy_of_an_mcp_answer() {
    let (_pki, fake, gate) = crm().await;
    let mut a = Mcp::new(&gate, A);
    a.init().await;
    let hidden = ["ada@example.com", "555-0100"];
    let shown = json!({"id": "cus_1", "name": "Ada", "plan": "pro"});
    for framing in [Framing::json(), Framing::sse("\r"), Framing::sse("\r\n")] {
        fake.frame(framing.clone());
        for tool in ["get_customer", "describe_customer", "update_customer"] {
            let got = a.call(tool).await;
            let text = got.text();
            for h in hidden {
                assert!(
                    !text.contains(h),
                    "{tool} {framing:?}: {h} reached the agent: {text}"
                );
            }
            let answer = rpc_answer(&got);
            let result = &answer["result"];
            assert_eq!(result["structuredContent"], shown, "{tool}: {answer}");
            // The text copy: the same answer without the hidden fields (words are replaced).
            let copy = result["content"][0]["text"].as_str().unwrap();
            assert_eq!(
                serde_json::from_str::<Value>(copy).unwrap(),
                shown,
                "{tool}"
            );
        }
        // Words with no structured content to stand in: withheld, the model is told why.
        let refused = refused_text(&a.call("note").await);
        assert!(
            refused.contains("withheld") && !refused.contains("555-0100"),
            "{refused}"
        );
    }
    // The write ran once (the later calls were the same call, answered from the store) and
    // its stored answer is shown without the hidden fields too.
    assert_eq!(calls_of(&fake, "update_customer"), 1);
    // The upstream did send them.
    assert!(calls_of(&fake, "get_customer") >= 3);
}

/// Issue 23 row 11: an MCP session belongs to the agent that opened it. Another agent using
/// its id is refused before anything reaches the server, DELETE included, and the session lives
/// on for its opener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_session_belongs_to_the_agent_that_opened_it() {
    let (_pki, fake, gate) = crm().await;
    let mut a = Mcp::new(&gate, A);
    a.init().await;
    let session = a.session.clone().unwrap();
    let mut b = Mcp::new(&gate, B);
    b.session = Some(session.clone());
    let before = fake.seen().len();
    for got in [
        b.call("get_customer").await,
        b.list().await,
        b.send("DELETE", "").await,
        b.send("GET", "").await,
        b.post(json!([{"jsonrpc": "2.0", "id": 5, "method": "tools/call",
            "params": {"name": "get_customer", "arguments": {"id": "cus_1"}}}]))
            .await,
    ] {
        assert_eq!(
            (got.status.as_u16(), got.code().as_str()),
            (403, "policy_violation"),
            "{}",
            got.text()
        );
        assert!(
            got.message().contains("belongs to another agent"),
            "{}",
            got.text()
        );
    }
    assert_eq!(
        fake.seen().len(),
        before,
        "none of B's requests reached the server"
    );
    assert!(fake.sessions().contains(&session), "A's session lives on");
    // A's session still works.
    let got = a.call("get_customer").await;
    assert_eq!(
        rpc_answer(&got)["result"]["structuredContent"]["id"],
        "cus_1"
    );
    // B opens its own session and uses it.
    b.session = None;
    b.init().await;
    assert_ne!(b.session.as_deref(), Some(session.as_str()));
    assert_eq!(tool_names(&b.list().await).len(), 4);
    // A token issued to A later is another opener: A opens sessions with it for itself.
    let issued = gate
        .admin(
            "POST",
            "/api/agents/agent-a/tokens",
            Some(ADMIN),
            Some(json!({"ttl": "15m"})),
        )
        .await;
    assert_eq!(issued.status, 201, "{}", issued.text());
    let issued = issued.json()["token"].as_str().unwrap().to_string();
    let mut a2 = Mcp::new(&gate, ("agent-a", issued.as_str()));
    a2.session = Some(session.clone());
    let got = a2.list().await;
    assert_eq!(got.status, 403, "{}", got.text());
    assert!(got.message().contains("another token"), "{}", got.text());
    a2.session = None;
    a2.init().await;
    assert_eq!(a2.list().await.status, 200);
    // A session toolgate does not know is the spec's unknown session (404), and nothing of it
    // reaches the server either; once A ends its session, it is unknown to A too.
    let mut stranger = Mcp::new(&gate, A);
    stranger.session = Some("made-up-session".into());
    let before = fake.seen().len();
    let got = stranger.list().await;
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (404, "policy_violation")
    );
    assert_eq!(fake.seen().len(), before);
    let ended = a.send("DELETE", "").await;
    assert_eq!(ended.status, 200, "{}", ended.text());
    assert!(!fake.sessions().contains(&session));
    assert_eq!(a.list().await.status, 404);
}
