//! SendGrid's v3 mail send: `202 Accepted` with no body and an `X-Message-Id`, or SendGrid's
//! `{"errors": [{"message", "field", "help"}]}`.

use http::HeaderName;
use serde_json::{json, Value};

use super::{random_id, Call, Reply};

/// What SendGrid holds: the mails it accepted, each with its message id.
#[derive(Debug, Default)]
pub struct Sendgrid {
    pub mails: Vec<(String, Value)>,
}

fn errors(status: u16, list: &[(&str, Option<&str>)]) -> Reply {
    let errors: Vec<Value> = list
        .iter()
        .map(|(message, field)| json!({"message": message, "field": field, "help": null}))
        .collect();
    Reply::json(status, &json!({ "errors": errors }))
}

/// SendGrid's answer without a valid key.
pub fn unauthorized() -> Reply {
    errors(
        401,
        &[(
            "The provided authorization grant is invalid, expired, or revoked",
            None,
        )],
    )
}

/// What SendGrid refuses in a mail, field by field.
fn problems(mail: &Value) -> Vec<(&'static str, Option<&'static str>)> {
    let mut out = Vec::new();
    let personalizations = mail["personalizations"].as_array();
    if personalizations.is_none_or(Vec::is_empty) {
        out.push((
            "The personalizations field is required and must have at least one personalization.",
            Some("personalizations"),
        ));
    }
    let no_to = personalizations
        .into_iter()
        .flatten()
        .any(|p| p["to"].as_array().is_none_or(Vec::is_empty));
    if no_to {
        out.push(("The to array is required for all personalization objects, and must have at least one email object with a valid email address.", Some("personalizations.0.to")));
    }
    if mail["from"]["email"]
        .as_str()
        .is_none_or(|e| !e.contains('@'))
    {
        out.push(("The from object must be provided for every email send. It is an object that requires the email parameter, but may also contain a name parameter.", Some("from")));
    }
    let has_content = mail["content"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["value"].as_str().is_some_and(|v| !v.is_empty()))
    });
    if !has_content && mail["template_id"].is_null() {
        out.push(("Unless a valid template_id is provided, the content parameter is required. There must be at least one defined content block. We typically suggest both text/plain and text/html blocks are included, but only one block is required.", Some("content")));
    }
    let subject = mail["subject"].as_str().is_some_and(|s| !s.is_empty())
        || personalizations
            .into_iter()
            .flatten()
            .all(|p| p["subject"].as_str().is_some_and(|s| !s.is_empty()));
    if !subject && mail["template_id"].is_null() {
        out.push(("The subject is required. You can get around this requirement if you use a template with a subject defined or if every personalization has a subject defined.", Some("subject")));
    }
    out
}

impl Sendgrid {
    /// Answers a call with a valid key.
    pub fn handle(&mut self, call: &Call) -> Reply {
        match (call.method.as_str(), call.path.as_str()) {
            ("POST", "/v3/mail/send") => self.send(call),
            _ => errors(404, &[("resource not found", None)]),
        }
    }

    fn send(&mut self, call: &Call) -> Reply {
        let Some(mail) = call.json().filter(Value::is_object) else {
            return errors(400, &[("Bad Request", None)]);
        };
        let found = problems(&mail);
        if !found.is_empty() {
            return errors(400, &found);
        }
        let id = random_id(22);
        self.mails.push((id.clone(), mail));
        Reply::empty(202).with(HeaderName::from_static("x-message-id"), id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn send(g: &mut Sendgrid, mail: Value) -> Reply {
        let call = Call::new(Method::POST, "/v3/mail/send")
            .header("content-type", "application/json")
            .body(mail.to_string());
        g.handle(&call)
    }

    #[test]
    fn a_whole_mail_is_accepted_with_202_and_no_body() {
        let mut g = Sendgrid::default();
        let got = send(
            &mut g,
            json!({"personalizations": [{"to": [{"email": "ops@acme.com"}]}],
                   "from": {"email": "support@acme.com"}, "subject": "Your refund",
                   "content": [{"type": "text/plain", "value": "It is on its way."}]}),
        );
        assert_eq!((got.status.as_u16(), got.body.len()), (202, 0));
        assert_eq!(got.header("x-message-id").map(str::len), Some(22));
        assert_eq!(g.mails.len(), 1);
    }

    #[test]
    fn a_mail_missing_parts_is_refused_field_by_field() {
        let mut g = Sendgrid::default();
        let got = send(&mut g, json!({"personalizations": [{"to": []}]}));
        assert_eq!(got.status, 400);
        let fields: Vec<Value> = got.body_json()["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].clone())
            .collect();
        assert_eq!(
            fields,
            vec![
                json!("personalizations.0.to"),
                json!("from"),
                json!("content"),
                json!("subject")
            ]
        );
        assert!(g.mails.is_empty());
        assert_eq!(unauthorized().status, 401);
    }
}
