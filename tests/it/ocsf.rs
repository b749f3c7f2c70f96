//! The OCSF export: a run of calls (read, write, refusal, a held call approved, a kill switch,
//! a token) exported with `toolgate audit export --format ocsf` (from the running server and
//! from the stopped store), every event validated against the OCSF 1.8.0 class, profile and
//! object definitions shipped in `tests/fixtures/ocsf-1.8.0` (copied from the OCSF schema
//! repository; no network), every sequence number present once, and the hash chain verified
//! from what the export carries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_toolgate");

/// The shipped OCSF definitions, read once.
pub struct Schema {
    dir: PathBuf,
    dictionary: Map<String, Value>,
    /// The profiles the event being checked names in `metadata.profiles`: only their
    /// attributes' requirements apply.
    active: std::cell::RefCell<Vec<String>>,
}

impl Schema {
    pub fn load() -> Schema {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ocsf-1.8.0");
        let dictionary = read(&dir.join("dictionary.json"))["attributes"]
            .as_object()
            .unwrap()
            .clone();
        Schema {
            dir,
            dictionary,
            active: Default::default(),
        }
    }

    /// A definition with everything it extends (and the profiles it includes) merged in.
    fn definition(&self, path: &str) -> Map<String, Value> {
        let d = read(&self.dir.join(path));
        let mut attrs = Map::new();
        if let Some(parent) = d["extends"].as_str() {
            let folder = Path::new(path).parent().unwrap();
            let up = ["", ".."]
                .iter()
                .map(|p| folder.join(p).join(format!("{parent}.json")))
                .chain([Path::new("events").join(format!("{parent}.json"))])
                .find(|p| self.dir.join(p).exists())
                .unwrap_or_else(|| panic!("{path} extends {parent}, which is not shipped"));
            attrs = self.definition(up.to_str().unwrap())["attributes"]
                .as_object()
                .unwrap()
                .clone();
        }
        for (k, v) in d["attributes"].as_object().cloned().unwrap_or_default() {
            if k == "$include" {
                for inc in v.as_array().unwrap() {
                    let p = read(&self.dir.join(inc.as_str().unwrap()));
                    let name = p["name"].as_str().unwrap_or_default().to_string();
                    let used = self.active.borrow().contains(&name);
                    for (k, v) in p["attributes"].as_object().unwrap() {
                        let mut v = v.clone();
                        if !used {
                            v["requirement"] = json!("optional");
                        }
                        attrs.entry(k.clone()).or_insert(v);
                    }
                }
                continue;
            }
            let merged = match (attrs.get(&k), &v) {
                (Some(Value::Object(old)), Value::Object(new)) => {
                    let mut m = old.clone();
                    m.extend(new.clone());
                    // An enum extends the one it refines (Unknown and Other stay).
                    if let (Some(Value::Object(a)), Some(Value::Object(b))) =
                        (old.get("enum"), new.get("enum"))
                    {
                        let mut e = a.clone();
                        e.extend(b.clone());
                        m.insert("enum".into(), Value::Object(e));
                    }
                    Value::Object(m)
                }
                _ => v,
            };
            attrs.insert(k, merged);
        }
        let mut out = Map::new();
        out.insert("attributes".into(), Value::Object(attrs));
        out.insert("constraints".into(), d["constraints"].clone());
        out.insert("uid".into(), d["uid"].clone());
        out
    }

    /// Checks one OCSF event; returns what is wrong with it.
    pub fn check(&self, event: &Value) -> Vec<String> {
        let class = match event["class_uid"].as_u64() {
            Some(6003) => "events/application/api_activity.json",
            Some(6002) => "events/application/application_lifecycle.json",
            Some(6005) => "events/application/datastore_activity.json",
            Some(3004) => "events/iam/entity_management.json",
            Some(0) => "events/base_event.json",
            other => return vec![format!("class {other:?} is not one toolgate uses")],
        };
        let profiles = event["metadata"]["profiles"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        *self.active.borrow_mut() = profiles
            .iter()
            .filter_map(|p| p.as_str().map(str::to_string))
            .collect();
        let def = self.definition(class);
        let mut errors = Vec::new();
        let (class_uid, activity) = (
            event["class_uid"].as_u64().unwrap(),
            event["activity_id"].as_u64().unwrap_or(u64::MAX),
        );
        if event["type_uid"].as_u64() != Some(class_uid * 100 + activity) {
            errors.push("type_uid is not class_uid * 100 + activity_id".into());
        }
        if event["category_uid"].as_u64() != Some(class_uid / 1000) {
            errors.push("category_uid does not match the class".into());
        }
        self.check_object(&def, event, "", &mut errors);
        errors
    }

    fn check_object(
        &self,
        def: &Map<String, Value>,
        v: &Value,
        at: &str,
        errors: &mut Vec<String>,
    ) {
        let Some(obj) = v.as_object() else {
            errors.push(format!("{at}: expected an object"));
            return;
        };
        let attrs = def["attributes"].as_object().unwrap();
        for (name, spec) in attrs {
            if spec["requirement"] == "required" && !obj.contains_key(name) {
                errors.push(format!("{at}.{name}: required, missing"));
            }
        }
        if let Some(one) = def["constraints"]["at_least_one"].as_array() {
            if !one.iter().any(|k| obj.contains_key(k.as_str().unwrap())) {
                errors.push(format!("{at}: needs one of {one:?}"));
            }
        }
        for (name, value) in obj {
            let Some(spec) = attrs.get(name) else {
                errors.push(format!("{at}.{name}: not an attribute here"));
                continue;
            };
            let path = format!("{at}.{name}");
            self.check_value(name, spec, value, &path, errors);
        }
    }

    fn check_value(
        &self,
        name: &str,
        spec: &Value,
        value: &Value,
        at: &str,
        errors: &mut Vec<String>,
    ) {
        let Some(dict) = self.dictionary.get(name) else {
            errors.push(format!("{at}: not in the dictionary"));
            return;
        };
        if dict["is_array"] == true {
            match value.as_array() {
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        self.check_scalar(name, spec, dict, item, &format!("{at}[{i}]"), errors);
                    }
                }
                None => errors.push(format!("{at}: expected an array")),
            }
            return;
        }
        self.check_scalar(name, spec, dict, value, at, errors);
    }

    fn check_scalar(
        &self,
        name: &str,
        spec: &Value,
        dict: &Value,
        value: &Value,
        at: &str,
        errors: &mut Vec<String>,
    ) {
        let ty = dict["type"].as_str().unwrap_or("");
        let ok = match ty {
            // An object attribute's type is its object's name.
            // `object`: free-form (`unmapped`).
            "object" => value.is_object(),
            object if !object.ends_with("_t") => {
                let path = format!("objects/{object}.json");
                if !self.dir.join(&path).exists() {
                    errors.push(format!("{at}: object {object} is not shipped"));
                    return;
                }
                let def = self.definition(&path);
                self.check_object(&def, value, at, errors);
                true
            }
            "integer_t" | "long_t" | "timestamp_t" | "port_t" => value.is_u64() || value.is_i64(),
            "float_t" => value.is_number(),
            "boolean_t" => value.is_boolean(),
            "json_t" => true,
            _ => value.is_string(),
        };
        if !ok {
            errors.push(format!("{at}: not a {ty}: {value}"));
        }
        // An enumerated id takes one of its values (the class's enum, else the dictionary's).
        let enumerated = spec.get("enum").or_else(|| dict.get("enum"));
        if let (Some(Value::Object(e)), Some(n)) = (enumerated, value.as_u64()) {
            if name.ends_with("_id") && !e.contains_key(&n.to_string()) {
                errors.push(format!("{at}: {n} is not one of its values"));
            }
        }
    }
}

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}")))
        .unwrap()
}

/// Checks a whole export: valid events, each sequence number once and in order, the chain
/// intact from the audit events under `unmapped`.
pub fn check_export(schema: &Schema, lines: &[Value]) {
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut prev: Option<String> = None;
    for (i, o) in lines.iter().enumerate() {
        let errors = schema.check(o);
        assert!(
            errors.is_empty(),
            "event {i} ({}): {errors:#?}\n{o:#}",
            o["unmapped"]["kind"]
        );
        let e: toolgate::audit::Event = serde_json::from_value(o["unmapped"].clone()).unwrap();
        assert_eq!(o["metadata"]["sequence"], e.seq);
        assert_eq!(
            e.compute_hash(),
            e.hash,
            "event {} hashes as recorded",
            e.seq
        );
        if let Some(p) = &prev {
            assert_eq!(&e.prev, p, "event {} follows the one before", e.seq);
        }
        prev = Some(e.hash.clone());
        *kinds.entry(e.kind.as_str().to_string()).or_default() += 1;
    }
    let seqs: Vec<u64> = lines
        .iter()
        .map(|o| o["metadata"]["sequence"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (seqs[0]..seqs[0] + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "every sequence number, once, in order");
    for kind in [
        "request",
        "decision",
        "proposal",
        "approval",
        "commit",
        "response",
        "kill_switch",
        "token.issued",
    ] {
        assert!(
            kinds.contains_key(kind),
            "the run has a {kind} event: {kinds:?}"
        );
    }
}

fn export(args: &[&str], token: Option<&str>) -> Vec<Value> {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["audit", "export", "--format", "ocsf"]).args(args);
    if let Some(t) = token {
        cmd.env("TOOLGATE_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ocsf_export_validates_against_the_schema_and_keeps_the_chain() {
    let (_pki, _fakes, gate) = GateBuilder::examples().with_fakes().await;
    let staging = gate.client(
        Some(("support-bot-staging", "demo-staging-token")),
        http::Version::HTTP_11,
    );
    let form = ("content-type", "application/x-www-form-urlencoded");
    let created = send(
        &staging,
        "POST",
        "https://api.stripe.com/v1/customers",
        &[form, ("idempotency-key", "o1")],
        "email=o%40acme.com",
    )
    .await
    .unwrap();
    assert_eq!(created.status, 200, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_string();
    let url = format!("https://api.stripe.com/v1/customers/{id}");
    assert_eq!(
        send(&staging, "GET", &url, &[], "").await.unwrap().status,
        200
    );
    assert_eq!(
        send(
            &staging,
            "GET",
            "https://api.stripe.com/v1/balance",
            &[],
            ""
        )
        .await
        .unwrap()
        .status,
        403
    );
    let approving = approver(&gate, "fine");
    let held = send(&staging, "DELETE", &url, &[("idempotency-key", "o2")], "")
        .await
        .unwrap();
    approving.abort();
    assert_eq!(held.status, 200, "{}", held.text());
    let carol = Some("demo-carol-token");
    let dave = Some("demo-dave-token");
    let switched = gate
        .admin(
            "POST",
            "/api/tools/stripe.refunds.create/disable",
            dave,
            Some(json!({"reason": "drill"})),
        )
        .await;
    assert!(switched.status.is_success(), "{}", switched.text());
    let issued = gate
        .admin(
            "POST",
            "/api/agents/support-bot-staging/tokens",
            dave,
            Some(json!({"ttl": "1h"})),
        )
        .await;
    assert!(issued.status.is_success(), "{}", issued.text());
    let _ = carol;

    let schema = Schema::load();
    let server = format!("http://{}", gate.admin_addr);
    // The log's writer is behind a queue: the last events are in once the token's is.
    let has_token = |lines: &[Value]| {
        lines
            .iter()
            .any(|o| o["unmapped"]["kind"] == "token.issued")
    };
    poll::until("the token's event is written", poll::SOON, || {
        let got = export(&["--server", &server], Some("demo-riley-token"));
        async move { has_token(&got) }
    })
    .await;
    let online = export(&["--server", &server], Some("demo-riley-token"));
    check_export(&schema, &online);
    let dir = gate.into_dir().await;
    let data = dir.path().join("data");
    let offline = export(&["--data-dir", data.to_str().unwrap()], None);
    assert_eq!(offline, online, "the stopped store exports the same events");
}

#[test]
fn the_validator_refuses_what_ocsf_does_not_allow() {
    let schema = Schema::load();
    let e = toolgate::audit::Event {
        seq: 1,
        time: "t".into(),
        unix_ms: 1,
        kind: toolgate::audit::Kind::Request,
        request_id: None,
        job: None,
        proposal: None,
        agent: Some("bot".into()),
        owner: None,
        tool: None,
        tool_version: None,
        token: None,
        user: None,
        payload: json!({"method": "GET", "host": "h", "path": "/"}),
        prev: String::new(),
        hash: "x".into(),
    };
    let good = toolgate::audit::ocsf::event(&e);
    assert_eq!(schema.check(&good), Vec::<String>::new());
    let mut bad = good.clone();
    bad["activity_id"] = json!(42);
    bad["api"].as_object_mut().unwrap().remove("operation");
    bad["http_response"] = json!({"code": "two hundred"});
    bad["invented"] = json!(1);
    let errors = schema.check(&bad).join("\n");
    for needle in [
        "type_uid",
        ".api.operation: required",
        "http_response.code",
        "invented",
        "activity_id: 42",
    ] {
        assert!(errors.contains(needle), "{needle} in {errors}");
    }
}
