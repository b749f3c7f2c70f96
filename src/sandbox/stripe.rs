//! Stripe as the example contracts use it (API version 2023-08-16): customers, payment intents
//! and refunds, with Stripe's objects, errors (`{"error": {"type", "code", "param", "message"}}`),
//! form bodies and `Idempotency-Key` replays.

use std::collections::{BTreeMap, HashMap};

use http::{HeaderMap, HeaderName, Method};
use serde_json::{json, Value};

use super::{random_id, Call, Reply};

/// The customer the demo reads.
pub const DEMO_CUSTOMER: &str = "cus_NffrFeUfNV2Hib";
/// A paid payment intent of that customer (20.00 USD): what the demo refunds.
pub const DEMO_PAYMENT_INTENT: &str = "pi_3MtwBwLkdIwHu7ix28a3tqPa";
const DEMO_CHARGE: &str = "ch_3MtwBwLkdIwHu7ix28rg9Qxq";
const API_VERSION: &str = "2023-08-16";
/// The statuses from which a payment intent may be cancelled.
const CANCELABLE: [&str; 5] = [
    "requires_payment_method",
    "requires_capture",
    "requires_confirmation",
    "requires_action",
    "processing",
];

/// What Stripe holds.
#[derive(Debug, Default)]
pub struct Stripe {
    pub customers: BTreeMap<String, Value>,
    /// Customers deleted (Stripe still answers for them, with `deleted: true`).
    pub deleted_customers: Vec<String>,
    pub payment_intents: BTreeMap<String, Value>,
    pub refunds: Vec<Value>,
    /// Minor units refunded so far, per payment intent.
    refunded: HashMap<String, u64>,
    /// Answers by `Idempotency-Key`, with the request they answered.
    idempotent: HashMap<String, (String, Reply)>,
}

type Form = BTreeMap<String, String>;

fn form(body: &[u8]) -> Form {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// `metadata[key]=value` pairs as Stripe's metadata object.
fn metadata(f: &Form) -> Value {
    let m: serde_json::Map<String, Value> = f
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("metadata[")
                .and_then(|r| r.strip_suffix(']'))
                .map(|k| (k.to_string(), json!(v)))
        })
        .collect();
    Value::Object(m)
}

/// A field of the form as JSON (null when absent).
fn field(f: &Form, name: &str) -> Value {
    f.get(name).map(|v| json!(v)).unwrap_or(Value::Null)
}

/// Stripe's error answer.
fn error(status: u16, kind: &str, code: Option<&str>, param: Option<&str>, message: &str) -> Reply {
    let mut e = json!({"type": kind, "message": message});
    if let Some(c) = code {
        e["code"] = json!(c);
        e["doc_url"] = json!(format!(
            "https://stripe.com/docs/error-codes/{}",
            c.replace('_', "-")
        ));
    }
    if let Some(p) = param {
        e["param"] = json!(p);
    }
    Reply::json(status, &json!({ "error": e }))
}

fn invalid(code: Option<&str>, param: Option<&str>, message: &str) -> Reply {
    error(400, "invalid_request_error", code, param, message)
}

fn missing(kind: &str, id: &str, param: Option<&str>) -> Reply {
    error(
        404,
        "invalid_request_error",
        Some("resource_missing"),
        param,
        &format!("No such {kind}: '{id}'"),
    )
}

/// An amount in minor units: absent, or a whole number (else Stripe's refusal).
fn amount(f: &Form, name: &str) -> Result<Option<u64>, Reply> {
    match f.get(name) {
        None => Ok(None),
        Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
            invalid(
                Some("parameter_invalid_integer"),
                Some(name),
                &format!("Invalid integer: {v}"),
            )
        }),
    }
}

fn money(minor: u64) -> String {
    format!("${}.{:02}", minor / 100, minor % 100)
}

fn now() -> u64 {
    crate::base::now_unix()
}

/// Stripe's answer without a valid key.
pub fn unauthorized(headers: &HeaderMap) -> Reply {
    let given = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_start_matches("Bearer ").trim());
    let message = match given {
        None | Some("") => "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, or we can help at https://support.stripe.com/.".to_string(),
        Some(key) => {
            let tail: String = key.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
            format!("Invalid API Key provided: {}****{tail}", key.chars().take(8).collect::<String>())
        }
    };
    error(401, "invalid_request_error", None, None, &message)
}

fn customer(id: &str, f: &Form) -> Value {
    json!({
        "id": id, "object": "customer", "address": null, "balance": 0, "created": now(),
        "currency": null, "default_source": null, "delinquent": false,
        "description": field(f, "description"), "discount": null, "email": field(f, "email"),
        "invoice_prefix": random_id(8).to_uppercase(),
        "invoice_settings": {"custom_fields": null, "default_payment_method": null, "footer": null, "rendering_options": null},
        "livemode": false, "metadata": metadata(f), "name": field(f, "name"),
        "next_invoice_sequence": 1, "phone": field(f, "phone"), "preferred_locales": [],
        "shipping": null, "tax_exempt": "none", "test_clock": null
    })
}

fn payment_intent(id: &str, amount: u64, currency: &str, f: &Form) -> Value {
    json!({
        "id": id, "object": "payment_intent", "amount": amount, "amount_capturable": 0,
        "amount_details": {"tip": {}}, "amount_received": 0, "application": null,
        "application_fee_amount": null, "automatic_payment_methods": {"allow_redirects": "always", "enabled": true},
        "canceled_at": null, "cancellation_reason": null, "capture_method": "automatic",
        "client_secret": format!("{id}_secret_{}", random_id(25)), "confirmation_method": "automatic",
        "created": now(), "currency": currency, "customer": field(f, "customer"),
        "description": field(f, "description"), "invoice": null, "last_payment_error": null,
        "latest_charge": null, "livemode": false, "metadata": metadata(f), "next_action": null,
        "on_behalf_of": null, "payment_method": null,
        "payment_method_configuration_details": null,
        "payment_method_options": {"card": {"installments": null, "mandate_options": null, "network": null, "request_three_d_secure": "automatic"}},
        "payment_method_types": ["card"], "processing": null, "receipt_email": field(f, "receipt_email"),
        "review": null, "setup_future_usage": null, "shipping": null, "source": null,
        "statement_descriptor": null, "statement_descriptor_suffix": null,
        "status": "requires_payment_method", "transfer_data": null, "transfer_group": null
    })
}

impl Stripe {
    /// Jenny Rosen, a customer with a paid payment intent of 20.00 USD.
    pub fn seeded() -> Stripe {
        let mut s = Stripe::default();
        let f: Form = [
            ("name", "Jenny Rosen"),
            ("email", "jennyrosen@example.com"),
            ("phone", "+14155550123"),
            ("description", "Demo customer"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut c = customer(DEMO_CUSTOMER, &f);
        c["address"] = json!({"city": "San Francisco", "country": "US", "line1": "510 Townsend St",
            "line2": null, "postal_code": "94103", "state": "CA"});
        c["created"] = json!(1_680_893_993);
        c["invoice_prefix"] = json!("0759376C");
        s.customers.insert(DEMO_CUSTOMER.into(), c);
        let f: Form = [("customer", DEMO_CUSTOMER), ("description", "Order #1042")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut pi = payment_intent(DEMO_PAYMENT_INTENT, 2000, "usd", &f);
        pi["status"] = json!("succeeded");
        pi["amount_received"] = json!(2000);
        pi["latest_charge"] = json!(DEMO_CHARGE);
        pi["payment_method"] = json!("pm_1MtwBwLkdIwHu7ixFGkHq4gQ");
        pi["created"] = json!(1_680_800_504);
        s.payment_intents.insert(DEMO_PAYMENT_INTENT.into(), pi);
        s
    }

    /// Answers a call with a valid key.
    pub fn handle(&mut self, call: &Call) -> Reply {
        let key = match call.method == Method::POST {
            true => call.header_str("idempotency-key").map(str::to_string),
            false => None,
        };
        let request = format!(
            "{} {} {}",
            call.method,
            call.path,
            String::from_utf8_lossy(&call.body)
        );
        let reply = match key.as_ref().and_then(|k| self.idempotent.get(k)) {
            Some((seen, reply)) if *seen == request => reply
                .clone()
                .with(HeaderName::from_static("idempotent-replayed"), "true"),
            Some(_) => error(
                400,
                "idempotency_error",
                None,
                None,
                &format!(
                    "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{}' if you meant to execute a different request.",
                    key.as_deref().unwrap_or("")
                ),
            ),
            None => {
                let reply = self.route(call);
                if let Some(k) = key.filter(|_| !reply.status.is_server_error()) {
                    self.idempotent.insert(k, (request, reply.clone()));
                }
                reply
            }
        };
        reply
            .with(
                HeaderName::from_static("request-id"),
                format!("req_{}", random_id(14)),
            )
            .with(HeaderName::from_static("stripe-version"), API_VERSION)
    }

    fn route(&mut self, call: &Call) -> Reply {
        let f = form(&call.body);
        let parts: Vec<&str> = call.path.trim_start_matches('/').split('/').collect();
        match (call.method.as_str(), parts.as_slice()) {
            ("POST", ["v1", "customers"]) => self.create_customer(&f),
            ("GET", ["v1", "customers"]) => self.list_customers(),
            ("GET", ["v1", "customers", id]) => self.retrieve_customer(id),
            ("DELETE", ["v1", "customers", id]) => self.delete_customer(id),
            ("POST", ["v1", "payment_intents"]) => self.create_payment_intent(&f),
            ("GET", ["v1", "payment_intents", id]) => match self.payment_intents.get(*id) {
                Some(pi) => Reply::json(200, pi),
                None => missing("payment_intent", id, Some("intent")),
            },
            ("POST", ["v1", "payment_intents", id, "cancel"]) => self.cancel(id, &f),
            ("POST", ["v1", "refunds"]) => self.create_refund(&f),
            ("GET", ["v1", "refunds", id]) => match self.refunds.iter().find(|r| r["id"] == *id) {
                Some(r) => Reply::json(200, r),
                None => missing("refund", id, Some("id")),
            },
            (method, _) => error(
                404,
                "invalid_request_error",
                None,
                None,
                &format!(
                    "Unrecognized request URL ({method}: {}). Please see https://stripe.com/docs or we can help at https://support.stripe.com/.",
                    call.path
                ),
            ),
        }
    }

    fn create_customer(&mut self, f: &Form) -> Reply {
        let id = format!("cus_{}", random_id(14));
        let c = customer(&id, f);
        self.customers.insert(id, c.clone());
        Reply::json(200, &c)
    }

    fn list_customers(&self) -> Reply {
        let data: Vec<&Value> = self.customers.values().rev().collect();
        Reply::json(
            200,
            &json!({"object": "list", "data": data, "has_more": false, "url": "/v1/customers"}),
        )
    }

    fn retrieve_customer(&self, id: &str) -> Reply {
        match self.customers.get(id) {
            Some(c) => Reply::json(200, c),
            None if self.deleted_customers.iter().any(|d| d == id) => Reply::json(
                200,
                &json!({"id": id, "object": "customer", "deleted": true}),
            ),
            None => missing("customer", id, Some("id")),
        }
    }

    fn delete_customer(&mut self, id: &str) -> Reply {
        match self.customers.remove(id) {
            Some(_) => {
                self.deleted_customers.push(id.to_string());
                Reply::json(
                    200,
                    &json!({"id": id, "object": "customer", "deleted": true}),
                )
            }
            None => missing("customer", id, Some("id")),
        }
    }

    fn create_payment_intent(&mut self, f: &Form) -> Reply {
        let amount = match amount(f, "amount") {
            Ok(Some(a)) => a,
            Ok(None) => {
                return invalid(
                    Some("parameter_missing"),
                    Some("amount"),
                    "Missing required param: amount.",
                )
            }
            Err(refusal) => return refusal,
        };
        let Some(currency) = f.get("currency") else {
            return invalid(
                Some("parameter_missing"),
                Some("currency"),
                "Missing required param: currency.",
            );
        };
        if let Some(c) = f.get("customer") {
            if !self.customers.contains_key(c) {
                return invalid(
                    Some("resource_missing"),
                    Some("customer"),
                    &format!("No such customer: '{c}'"),
                );
            }
        }
        let id = format!("pi_{}", random_id(24));
        let mut pi = payment_intent(&id, amount, &currency.to_ascii_lowercase(), f);
        let method = f.get("payment_method").map(String::as_str);
        if f.get("confirm").map(String::as_str) == Some("true") {
            match method {
                Some("pm_card_chargeDeclined") => {
                    let mut declined = error(
                        402,
                        "card_error",
                        Some("card_declined"),
                        None,
                        "Your card was declined.",
                    );
                    let mut body = declined.body_json();
                    body["error"]["decline_code"] = json!("generic_decline");
                    declined.body = body.to_string().into();
                    return declined;
                }
                Some(pm) => {
                    pi["status"] = json!("succeeded");
                    pi["amount_received"] = json!(amount);
                    pi["payment_method"] = json!(pm);
                    pi["latest_charge"] = json!(format!("ch_{}", random_id(24)));
                }
                None => pi["status"] = json!("requires_payment_method"),
            }
        } else if let Some(pm) = method {
            pi["payment_method"] = json!(pm);
            pi["status"] = json!("requires_confirmation");
        }
        self.payment_intents.insert(id, pi.clone());
        Reply::json(200, &pi)
    }

    fn cancel(&mut self, id: &str, f: &Form) -> Reply {
        let Some(pi) = self.payment_intents.get_mut(id) else {
            return missing("payment_intent", id, Some("intent"));
        };
        let status = pi["status"].as_str().unwrap_or("").to_string();
        if !CANCELABLE.contains(&status.as_str()) {
            return invalid(
                Some("payment_intent_unexpected_state"),
                None,
                &format!(
                    "You cannot cancel this PaymentIntent because it has a status of {status}. Only a PaymentIntent with one of the following statuses may be canceled: {}.",
                    CANCELABLE.join(", ")
                ),
            );
        }
        pi["status"] = json!("canceled");
        pi["canceled_at"] = json!(now());
        pi["cancellation_reason"] = field(f, "cancellation_reason");
        Reply::json(200, pi)
    }

    /// The payment intent a refund names (by itself or by its charge).
    fn refunded_intent(&self, f: &Form) -> Result<String, Reply> {
        match (f.get("payment_intent"), f.get("charge")) {
            (Some(pi), _) if self.payment_intents.contains_key(pi) => Ok(pi.clone()),
            (Some(pi), _) => Err(missing("payment_intent", pi, Some("payment_intent"))),
            (None, Some(ch)) => self
                .payment_intents
                .iter()
                .find(|(_, pi)| pi["latest_charge"] == json!(ch))
                .map(|(id, _)| id.clone())
                .ok_or_else(|| missing("charge", ch, Some("charge"))),
            (None, None) => Err(invalid(
                Some("parameter_missing"),
                None,
                "One of the following params should be provided for this request: payment_intent or charge.",
            )),
        }
    }

    fn create_refund(&mut self, f: &Form) -> Reply {
        let pi_id = match self.refunded_intent(f) {
            Ok(id) => id,
            Err(refusal) => return refusal,
        };
        let pi = &self.payment_intents[&pi_id];
        let charge = pi["latest_charge"].clone();
        let currency = pi["currency"].clone();
        let received = pi["amount_received"].as_u64().unwrap_or(0);
        if pi["status"] != "succeeded" || charge.is_null() {
            return invalid(
                None,
                Some("payment_intent"),
                &format!(
                    "This PaymentIntent ({pi_id}) does not have a successful charge to refund."
                ),
            );
        }
        let left = received.saturating_sub(self.refunded.get(&pi_id).copied().unwrap_or(0));
        if left == 0 {
            return invalid(
                Some("charge_already_refunded"),
                None,
                &format!(
                    "Charge {} has already been refunded.",
                    charge.as_str().unwrap_or("")
                ),
            );
        }
        let amount = match amount(f, "amount") {
            Ok(a) => a.unwrap_or(left),
            Err(refusal) => return refusal,
        };
        if amount == 0 || amount > left {
            return invalid(
                Some("amount_too_large"),
                Some("amount"),
                &format!(
                    "Refund amount ({}) is greater than unrefunded amount on charge ({})",
                    money(amount),
                    money(left)
                ),
            );
        }
        *self.refunded.entry(pi_id.clone()).or_default() += amount;
        let refund = json!({
            "id": format!("re_{}", random_id(24)), "object": "refund", "amount": amount,
            "balance_transaction": format!("txn_{}", random_id(24)), "charge": charge,
            "created": now(), "currency": currency,
            "destination_details": {"card": {"reference_status": "pending", "reference_type": "acquirer_reference_number", "type": "refund"}, "type": "card"},
            "metadata": metadata(f), "payment_intent": pi_id, "reason": field(f, "reason"),
            "receipt_number": null, "source_transfer_reversal": null, "status": "succeeded",
            "transfer_reversal": null
        });
        self.refunds.push(refund.clone());
        Reply::json(200, &refund)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(path: &str, body: &str) -> Call {
        Call::new(Method::POST, path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string())
    }

    #[test]
    fn the_demo_customer_and_payment_intent_are_there() {
        let mut s = Stripe::seeded();
        let got = s.handle(&Call::new(
            Method::GET,
            &format!("/v1/customers/{DEMO_CUSTOMER}"),
        ));
        assert_eq!(got.status, 200);
        let c = got.body_json();
        assert_eq!(
            (c["object"].as_str(), c["name"].as_str()),
            (Some("customer"), Some("Jenny Rosen"))
        );
        assert!(got
            .header("request-id")
            .is_some_and(|r| r.starts_with("req_")));
        let got = s.handle(&Call::new(
            Method::GET,
            &format!("/v1/payment_intents/{DEMO_PAYMENT_INTENT}"),
        ));
        assert_eq!(got.body_json()["status"], "succeeded");
        let got = s.handle(&Call::new(Method::GET, "/v1/customers/cus_nobody"));
        assert_eq!(got.status, 404);
        assert_eq!(got.body_json()["error"]["code"], "resource_missing");
    }

    #[test]
    fn refunds_take_from_what_was_paid_and_no_more() {
        let mut s = Stripe::seeded();
        let body =
            format!("payment_intent={DEMO_PAYMENT_INTENT}&amount=500&reason=requested_by_customer");
        let got = s.handle(&post("/v1/refunds", &body));
        assert_eq!(got.status, 200, "{:?}", got.body);
        let r = got.body_json();
        assert!(
            r["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("re_") && id.len() == 27),
            "{r}"
        );
        assert_eq!(
            (r["amount"].as_u64(), r["status"].as_str()),
            (Some(500), Some("succeeded"))
        );
        assert_eq!(
            (r["charge"].as_str(), r["currency"].as_str()),
            (Some(DEMO_CHARGE), Some("usd"))
        );
        let too_much = format!("payment_intent={DEMO_PAYMENT_INTENT}&amount=1600");
        let got = s.handle(&post("/v1/refunds", &too_much));
        assert_eq!(got.status, 400);
        assert!(got.body_json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("$15.00"));
        // The rest, by charge and without an amount.
        let got = s.handle(&post("/v1/refunds", &format!("charge={DEMO_CHARGE}")));
        assert_eq!(got.body_json()["amount"], 1500);
        let got = s.handle(&post("/v1/refunds", &format!("charge={DEMO_CHARGE}")));
        assert_eq!(got.body_json()["error"]["code"], "charge_already_refunded");
        assert_eq!(s.refunds.len(), 2);
        let got = s.handle(&post("/v1/refunds", "amount=1"));
        assert_eq!(got.body_json()["error"]["code"], "parameter_missing");
        let got = s.handle(&post("/v1/refunds", "payment_intent=pi_nope"));
        assert_eq!(got.status, 404);
    }

    #[test]
    fn an_idempotency_key_replays_its_answer_and_refuses_other_parameters() {
        let mut s = Stripe::seeded();
        let body = format!("payment_intent={DEMO_PAYMENT_INTENT}&amount=100");
        let first = s.handle(&post("/v1/refunds", &body).header("idempotency-key", "k1"));
        let again = s.handle(&post("/v1/refunds", &body).header("idempotency-key", "k1"));
        assert_eq!(first.body_json()["id"], again.body_json()["id"]);
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert_eq!(s.refunds.len(), 1);
        let other = format!("payment_intent={DEMO_PAYMENT_INTENT}&amount=200");
        let got = s.handle(&post("/v1/refunds", &other).header("idempotency-key", "k1"));
        assert_eq!(
            (
                got.status.as_u16(),
                got.body_json()["error"]["type"].as_str()
            ),
            (400, Some("idempotency_error"))
        );
    }

    #[test]
    fn customers_and_payment_intents_are_created_cancelled_and_deleted() {
        let mut s = Stripe::seeded();
        let got = s.handle(&post(
            "/v1/customers",
            "email=ada%40acme.com&name=Ada&metadata[plan]=pro",
        ));
        let c = got.body_json();
        let id = c["id"].as_str().unwrap().to_string();
        assert!(id.starts_with("cus_") && id.len() == 18, "{id}");
        assert_eq!(
            (c["email"].as_str(), c["metadata"]["plan"].as_str()),
            (Some("ada@acme.com"), Some("pro"))
        );
        let got = s.handle(&post(
            "/v1/payment_intents",
            &format!("amount=1099&currency=usd&customer={id}"),
        ));
        let pi = got.body_json();
        assert_eq!(pi["status"], "requires_payment_method");
        let pi_id = pi["id"].as_str().unwrap();
        let got = s.handle(&post(
            &format!("/v1/payment_intents/{pi_id}/cancel"),
            "cancellation_reason=abandoned",
        ));
        assert_eq!(got.body_json()["status"], "canceled");
        let got = s.handle(&post(
            &format!("/v1/payment_intents/{DEMO_PAYMENT_INTENT}/cancel"),
            "",
        ));
        assert_eq!(
            got.body_json()["error"]["code"],
            "payment_intent_unexpected_state"
        );
        let got = s.handle(&post(
            "/v1/payment_intents",
            "amount=5&currency=usd&customer=cus_nobody",
        ));
        assert_eq!(got.body_json()["error"]["param"], "customer");
        let got = s.handle(&post(
            "/v1/payment_intents",
            "amount=5&currency=usd&confirm=true&payment_method=pm_card_chargeDeclined",
        ));
        assert_eq!(
            (
                got.status.as_u16(),
                got.body_json()["error"]["decline_code"].as_str()
            ),
            (402, Some("generic_decline"))
        );
        let got = s.handle(&Call::new(Method::DELETE, &format!("/v1/customers/{id}")));
        assert_eq!(got.body_json()["deleted"], true);
        let got = s.handle(&Call::new(Method::GET, &format!("/v1/customers/{id}")));
        assert_eq!(got.body_json()["deleted"], true);
        let got = s.handle(&Call::new(Method::GET, "/v1/charges"));
        assert_eq!(got.status, 404);
    }

    #[test]
    fn without_a_key_stripe_says_so() {
        let got = unauthorized(&HeaderMap::new());
        assert_eq!(got.status, 401);
        assert!(got.body_json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not provide an API key"));
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer sk_test_placeholder"),
        );
        let msg = unauthorized(&h).body_json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(msg, "Invalid API Key provided: sk_test_****lder");
    }
}
