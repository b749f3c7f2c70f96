//! The person a call acts for (DESIGN section 16): named by the issued token the agent came in
//! with (`toolgate tokens issue AGENT --for-user alice@example.com`), or by a signed assertion
//! the agent carries in `Toolgate-User-Assertion` (an OIDC ID token or access token from the
//! company's identity provider), verified here: its issuer names a declared
//! `[[identity_provider]]`, its algorithm is one that provider signs with (never `none`, never
//! HMAC), its key is in the provider's JWKS, and its signature, audience, expiry and not-before
//! hold. A bad assertion is refused, never ignored.

use base64::Engine;
use std::sync::Arc;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{errors::ErrorKind, DecodingKey, Validation};
use serde_json::Value;

use crate::error::{Code, Refusal};
use crate::policy::{EndUser, IdentityProvider, Policy};

/// The header an agent carries a person's assertion in. Addressed to toolgate: never forwarded,
/// never recorded.
pub const ASSERTION_HEADER: &str = "toolgate-user-assertion";

/// What a person's id may be, wherever it comes from (an assertion's claim, a token issued for
/// them): printable ASCII without spaces, so that two ids that look alike are the same id, and
/// at most 256 bytes, so that it fits every index.
pub fn user_id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// [`user_id_ok`] in words, for messages.
pub const USER_ID_RULE: &str =
    "a person's id is 1 to 256 printable ASCII characters without spaces, such as alice@example.com";

/// An assertion larger than this is refused unread.
const MAX_ASSERTION: usize = 16 * 1024;

fn refused(why: impl std::fmt::Display) -> Refusal {
    Refusal::new(
        Code::UserAuthError,
        format!("the user assertion (Toolgate-User-Assertion) is refused: {why}"),
    )
}

/// An assertion read far enough to know who should have signed it: the provider its issuer
/// names, and its header (an algorithm that provider signs with). Nothing in it is trusted yet.
pub struct Asserted<'a> {
    pub provider: Arc<IdentityProvider>,
    header: jsonwebtoken::Header,
    assertion: &'a str,
}

/// Reads `assertion` for the provider that must verify it.
pub fn read<'a>(policy: &Policy, assertion: &'a str) -> Result<Asserted<'a>, Refusal> {
    if assertion.len() > MAX_ASSERTION {
        return Err(refused(format!("it is longer than {MAX_ASSERTION} bytes")));
    }
    let issuer = issuer_of(assertion)?;
    let provider = policy.identity_provider(&issuer).cloned().ok_or_else(|| {
        refused(format!(
            "its issuer {issuer:?} is not an identity provider toolgate trusts (an [[identity_provider]] with that issuer)"
        ))
    })?;
    read_for(provider, assertion).map_err(refused)
}

/// Reads `token` for `provider`, which must have signed it: its header names an algorithm the
/// provider signs with. Nothing in it is trusted yet.
pub fn read_for(provider: Arc<IdentityProvider>, token: &str) -> Result<Asserted<'_>, String> {
    if token.len() > MAX_ASSERTION {
        return Err(format!("it is longer than {MAX_ASSERTION} bytes"));
    }
    let header = jsonwebtoken::decode_header(token).map_err(|e| {
        format!("its header cannot be read ({e}); unsigned tokens (alg none) are never taken")
    })?;
    if !provider.algorithms.contains(&header.alg) {
        return Err(format!(
            "it is signed with {:?}, which identity provider {} does not sign with (accepted: {:?})",
            header.alg, provider.name, provider.algorithms
        ));
    }
    Ok(Asserted {
        provider,
        header,
        assertion: token,
    })
}

impl Asserted<'_> {
    /// The key id the assertion names, if any.
    pub fn kid(&self) -> Option<&str> {
        self.header.kid.as_deref()
    }

    /// The person, once a key of `keys` (the provider's) verifies the assertion.
    pub fn verify(&self, keys: &JwkSet) -> Result<EndUser, Refusal> {
        let audience = self.provider.audience.as_str();
        let claims = verified(&self.provider, keys, self, audience).map_err(refused)?;
        person(&self.provider, &claims).map_err(refused)
    }

    /// The person an OIDC ID token names, once a key of `keys` verifies it, its audience is
    /// the sign-in client (`client_id`) and its nonce is the one the sign-in began with. The
    /// error says why not, in words.
    pub fn verify_id_token(
        &self,
        keys: &JwkSet,
        client_id: &str,
        nonce: &str,
    ) -> Result<EndUser, String> {
        use subtle::ConstantTimeEq;
        let claims = verified(&self.provider, keys, self, client_id)?;
        let said = claims["nonce"].as_str().unwrap_or_default();
        if said.is_empty() || !bool::from(said.as_bytes().ct_eq(nonce.as_bytes())) {
            return Err("its nonce is not the one this sign-in began with".into());
        }
        // An address the provider says it has not verified names nobody.
        if self.provider.user_claim == "email" && claims["email_verified"] == Value::Bool(false) {
            return Err(
                "its email is not verified by the provider (email_verified is false)".into(),
            );
        }
        person(&self.provider, &claims)
    }
}

/// The person `assertion` names, verified against the policy's identity providers whose keys
/// are in files: the tests' shortcut (the gateway reads with [`read`] and verifies with the
/// keys its cache holds, `services::Jwks`).
#[cfg(test)]
fn verify(policy: &Policy, assertion: &str) -> Result<EndUser, Refusal> {
    let asserted = read(policy, assertion)?;
    match &asserted.provider.keys {
        crate::policy::JwksSource::File(keys) => asserted.verify(keys),
        crate::policy::JwksSource::Url { .. } => Err(refused(format!(
            "identity provider {}'s keys are fetched by the gateway",
            asserted.provider.name
        ))),
    }
}

/// The `iss` claim, read before anything is trusted, to choose the provider whose keys verify.
fn issuer_of(assertion: &str) -> Result<String, Refusal> {
    let mut parts = assertion.split('.');
    let payload = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(p), Some(_), None) => p,
        _ => return Err(refused("it is not a JWT (three dot-separated parts)")),
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| refused("its payload is not base64url"))?;
    let claims: Value =
        serde_json::from_slice(&bytes).map_err(|_| refused("its payload is not JSON"))?;
    claims["iss"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| refused("it has no iss claim naming its issuer"))
}

/// The claims, once a key of the provider verifies the signature and the registered claims
/// hold.
fn verified(
    provider: &IdentityProvider,
    set: &JwkSet,
    asserted: &Asserted<'_>,
    audience: &str,
) -> Result<Value, String> {
    let (header, assertion) = (&asserted.header, asserted.assertion);
    let keys: Vec<&Jwk> = match &header.kid {
        Some(kid) => {
            let key = set.find(kid).ok_or_else(|| {
                format!(
                    "its key {kid:?} is not in identity provider {}'s JWKS",
                    provider.name
                )
            })?;
            vec![key]
        }
        None => set.keys.iter().collect(),
    };
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[&provider.issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.validate_nbf = true;
    validation.leeway = provider.leeway.as_secs();
    let mut last = None;
    for jwk in keys {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        match jsonwebtoken::decode::<Value>(assertion, &key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => last = Some(e),
        }
    }
    Err(match last.as_ref().map(|e| e.kind()) {
        Some(ErrorKind::ExpiredSignature) => "it has expired".to_string(),
        Some(ErrorKind::ImmatureSignature) => "it is not valid yet (nbf)".to_string(),
        Some(ErrorKind::InvalidAudience) => format!(
            "its audience is not {audience:?} (identity provider {})",
            provider.name
        ),
        Some(ErrorKind::InvalidIssuer) => format!("its issuer is not {:?}", provider.issuer),
        Some(ErrorKind::MissingRequiredClaim(c)) => format!("it has no {c} claim"),
        Some(ErrorKind::InvalidSignature) | None => format!(
            "its signature does not verify with identity provider {}'s keys",
            provider.name
        ),
        Some(other) => format!("it cannot be verified ({other:?})"),
    })
}

/// The person the claims name: the provider's user claim, and its groups claim if any.
fn person(provider: &IdentityProvider, claims: &Value) -> Result<EndUser, String> {
    let id = claims[provider.user_claim.as_str()]
        .as_str()
        .filter(|id| user_id_ok(id))
        .ok_or_else(|| {
            format!(
                "it has no {} claim naming the person as an id toolgate takes (identity provider {}'s user_claim; {USER_ID_RULE})",
                provider.user_claim, provider.name
            )
        })?;
    let groups = match provider.groups_claim.as_deref().map(|c| &claims[c]) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    };
    Ok(EndUser {
        id: id.to_string(),
        groups,
        via: format!("identity provider {}", provider.name),
        assertion: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use serde_json::json;

    const ISSUER: &str = "https://idp.example.com";
    const AUDIENCE: &str = "toolgate";

    /// A P-256 key: its signing key for jsonwebtoken and its public JWK.
    fn key(kid: &str) -> (EncodingKey, Value) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let public = pair.public_key().as_ref();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&public[1..33]),
                         "y": b64(&public[33..65]), "kid": kid, "alg": "ES256", "use": "sig"});
        (EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
    }

    fn policy(jwks: &Value, extra: &str) -> (tempfile::TempDir, Policy) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
        let text = format!(
            r#"
[[agent]]
id = "bot"
token_sha256 = "{}"
owner = "ops@example.com"
environment = "staging"

[[identity_provider]]
name = "corp"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_file = "jwks.json"
groups_claim = "groups"
{extra}
"#,
            "0".repeat(64)
        );
        std::fs::write(dir.path().join("p.toml"), text).unwrap();
        let policy = Policy::load_dir(dir.path()).unwrap();
        (dir, policy)
    }

    fn claims(exp_in: i64) -> Value {
        let now = crate::base::now_unix() as i64;
        json!({"iss": ISSUER, "aud": AUDIENCE, "email": "alice@example.com",
               "groups": ["support", "payments"], "iat": now, "exp": now + exp_in})
    }

    fn sign(key: &EncodingKey, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn refusal(policy: &Policy, assertion: &str) -> String {
        let r = verify(policy, assertion).expect_err("refused");
        assert_eq!(r.code, Code::UserAuthError);
        assert_eq!(r.code.status(), http::StatusCode::UNAUTHORIZED);
        r.message
    }

    #[test]
    fn a_valid_assertion_names_the_person_and_their_groups() {
        let (signing, jwk) = key("k1");
        let (_dir, policy) = policy(&json!({"keys": [jwk]}), "");
        let user = verify(&policy, &sign(&signing, "k1", &claims(600))).unwrap();
        assert_eq!(user.id, "alice@example.com");
        assert_eq!(user.groups, ["support", "payments"]);
        assert_eq!(user.via, "identity provider corp");
    }

    #[test]
    fn every_bad_assertion_is_refused_saying_why() {
        let (signing, jwk) = key("k1");
        let (other, _) = key("k1");
        let (_dir, policy) = policy(&json!({"keys": [jwk]}), "leeway = \"5s\"");
        let expired = sign(&signing, "k1", &claims(-60));
        assert!(refusal(&policy, &expired).contains("expired"));
        let mut wrong_aud = claims(600);
        wrong_aud["aud"] = json!("someone-else");
        assert!(refusal(&policy, &sign(&signing, "k1", &wrong_aud)).contains("audience"));
        let mut foreign = claims(600);
        foreign["iss"] = json!("https://evil.example.com");
        assert!(
            refusal(&policy, &sign(&signing, "k1", &foreign)).contains("not an identity provider")
        );
        // Signed by a key that is not the provider's, under the provider's key id.
        assert!(refusal(&policy, &sign(&other, "k1", &claims(600))).contains("signature"));
        assert!(refusal(&policy, &sign(&signing, "k9", &claims(600))).contains("not in"));
        // alg none: the claims, unsigned.
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        let none = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims(600)));
        assert!(refusal(&policy, &none).contains("alg none"));
        // HMAC with the public key as the secret: not an algorithm the provider signs with.
        let hs = jsonwebtoken::encode(
            &Header::new(jsonwebtoken::Algorithm::HS256),
            &claims(600),
            &EncodingKey::from_secret(b"public key text"),
        )
        .unwrap();
        assert!(refusal(&policy, &hs).contains("HS256"));
        let mut nobody = claims(600);
        nobody.as_object_mut().unwrap().remove("email");
        assert!(refusal(&policy, &sign(&signing, "k1", &nobody)).contains("email claim"));
        // Ids that could pass for another person's, or not fit an index, are no ids.
        for odd in [
            "carol@example.com\u{200b}",
            "carol @example.com",
            "\u{0}",
            &"a".repeat(300),
        ] {
            let mut c = claims(600);
            c["email"] = json!(odd);
            assert!(
                refusal(&policy, &sign(&signing, "k1", &c)).contains("email claim"),
                "{odd:?}"
            );
        }
        for junk in ["", "a.b", "a.b.c.d", "!!.??.##", &"x".repeat(20_000)] {
            refusal(&policy, junk);
        }
    }

    #[test]
    fn providers_that_cannot_hold_are_refused_at_load() {
        let (_, jwk) = key("k1");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("jwks.json"),
            json!({"keys": [jwk]}).to_string(),
        )
        .unwrap();
        let load = |extra: &str| {
            let text = format!(
                "[[identity_provider]]\nname = \"corp\"\nissuer = \"{ISSUER}\"\naudience = \"a\"\n{extra}\n"
            );
            std::fs::write(dir.path().join("p.toml"), text).unwrap();
            Policy::load_dir(dir.path()).unwrap_err().to_string()
        };
        assert!(load("jwks_file = \"jwks.json\"\nalgorithms = [\"HS256\"]").contains("HMAC"));
        assert!(load("jwks_file = \"jwks.json\"\nalgorithms = [\"none\"]")
            .contains("not one toolgate verifies"));
        assert!(load("").contains("exactly one of jwks_file and jwks_url"));
        assert!(load("jwks_url = \"http://idp/jwks\"").contains("must be https"));
        assert!(load("jwks_file = \"missing.json\"").contains("missing.json"));
        assert!(load("jwks_file = \"jwks.json\"\nleeway = \"2h\"").contains("leeway"));
        let with = |extra: &str| format!("jwks_file = \"jwks.json\"\n{extra}");
        assert!(load(&with("login = { client_id = \"c\" }"))
            .contains("exactly one of client_secret_env and client_secret_file"));
        assert!(load(&with(
            "login = { client_id = \"c\", client_secret_env = \"TOOLGATE_TEST_UNSET_SECRET\" }"
        ))
        .contains("not set"));
        assert!(load(&with("login = { client_id = \"c\", client_secret_file = \"jwks.json\", authorize_url = \"https://idp/a\" }"))
            .contains("both authorize_url and token_url"));
        assert!(load(&with("login = { client_id = \"c\", client_secret_file = \"jwks.json\", authorize_url = \"http://idp/a\", token_url = \"https://idp/t\" }"))
            .contains("must be https"));
        assert!(load(&with("group_map = { \"a\" = \"b\" }")).contains("groups_claim"));
        assert!(load(
            "jwks_file = \"jwks.json\"\ngroups_claim = \"groups\"\ngroup_map = { \"it-ops\" = \"admin\" }"
        )
        .contains("onto admin"));
        let oct = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]});
        std::fs::write(dir.path().join("oct.json"), oct.to_string()).unwrap();
        assert!(load("jwks_file = \"oct.json\"").contains("symmetric"));
    }

    proptest::proptest! {
        #[test]
        fn no_text_panics_or_passes(text in ".{0,400}") {
            let (_, jwk) = key("k1");
            let (_dir, policy) = policy(&json!({"keys": [jwk]}), "");
            proptest::prop_assert!(verify(&policy, &text).is_err());
        }
    }
}
