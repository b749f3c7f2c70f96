//! `[[identity_provider]]`: an issuer of signed assertions about people (DESIGN section 16),
//! checked at load: its keys (a JWKS file) parse and each can verify, its algorithms are
//! asymmetric (never `none`, never HMAC, whose "key" would be public), and it says which claim
//! names the person.

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};

use super::file::{IdentityProviderDef, LoginDef};
use super::types::{ClientSecret, HttpsUrl, IdentityProvider, JwksSource, Login, LoginEndpoints};

/// How long past `exp` (and before `nbf`) an assertion is still taken, unless said.
const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// The leeway at most: clocks are minutes apart, not hours.
const MAX_LEEWAY: Duration = Duration::from_secs(600);

/// The provider `def` declares in the policy file at `path`.
pub(super) fn compile(
    path: &Path,
    def: IdentityProviderDef,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<IdentityProvider, String> {
    let named = |m: String| format!("identity_provider {:?}: {m}", def.name);
    if def.name.is_empty() || def.issuer.is_empty() || def.audience.is_empty() {
        return Err(named(
            "name, issuer and audience must be non-empty (the issuer as the tokens' iss claim says it, the audience as their aud)".into(),
        ));
    }
    let keys = match (&def.jwks_file, &def.jwks_url) {
        (Some(file), None) => {
            let full = path.parent().unwrap_or(Path::new(".")).join(file);
            let text = std::fs::read_to_string(&full)
                .map_err(|e| named(format!("jwks_file {}: {e}", full.display())))?;
            let set = parse_jwks(text.as_bytes())
                .map_err(|e| named(format!("jwks_file {}: {e}", full.display())))?;
            JwksSource::File(std::sync::Arc::new(set))
        }
        (None, Some(url)) => jwks_url(url).map_err(named)?,
        _ => return Err(named("name exactly one of jwks_file and jwks_url".into())),
    };
    let algorithms = algorithms(&def.algorithms).map_err(named)?;
    let leeway = match &def.leeway {
        Some(text) => {
            crate::base::parse_duration(text).map_err(|e| named(format!("leeway: {e}")))?
        }
        None => DEFAULT_LEEWAY,
    };
    if leeway > MAX_LEEWAY {
        return Err(named(format!(
            "leeway {} is longer than {} s: an expired assertion would be taken for that long",
            leeway.as_secs(),
            MAX_LEEWAY.as_secs()
        )));
    }
    let login = def
        .login
        .as_ref()
        .map(|l| login(path, l, env))
        .transpose()
        .map_err(|m| named(format!("login: {m}")))?;
    if let Some((from, _)) = def.group_map.iter().find(|(_, to)| to.as_str() == "admin") {
        return Err(named(format!(
            "group_map maps {from:?} onto admin: admin (kill switches, grants, purges, tokens) is given in the policies, never by a directory group"
        )));
    }
    if !def.group_map.is_empty() && def.groups_claim.is_none() {
        return Err(named(
            "group_map needs groups_claim: the claim the provider's groups are read from".into(),
        ));
    }
    Ok(IdentityProvider {
        login,
        group_map: def.group_map,
        name: def.name,
        issuer: def.issuer,
        audience: def.audience,
        keys,
        algorithms,
        user_claim: def.user_claim.unwrap_or_else(|| "email".into()),
        groups_claim: def.groups_claim,
        leeway,
    })
}

/// A JWKS as published: JSON, at least one key, every key a public key that can verify.
pub fn parse_jwks(bytes: &[u8]) -> Result<JwkSet, String> {
    let set: JwkSet =
        serde_json::from_slice(bytes).map_err(|e| format!("it is not a JWKS: {e}"))?;
    if set.keys.is_empty() {
        return Err("the JWKS holds no key".into());
    }
    for key in &set.keys {
        let kid = key.common.key_id.as_deref().unwrap_or("(no kid)");
        if matches!(
            key.algorithm,
            jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
        ) {
            return Err(format!(
                "key {kid:?} is symmetric (oct): an identity provider's published keys are public keys"
            ));
        }
        DecodingKey::from_jwk(key)
            .map_err(|e| format!("key {kid:?} cannot verify signatures: {e}"))?;
    }
    Ok(set)
}

/// `jwks_url`: an `https://` URL (the provider's `jwks_uri`), fetched by the gateway.
fn jwks_url(url: &str) -> Result<JwksSource, String> {
    let HttpsUrl { host, port, path } = https_url("jwks_url", url)
        .map_err(|e| format!("{e}: keys fetched in clear could be anyone's"))?;
    Ok(JwksSource::Url { host, port, path })
}

/// `url` (named `field`) as an `https://` URL the upstream client can fetch.
pub fn https_url(field: &str, url: &str) -> Result<HttpsUrl, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("{field} {url:?} is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{field} {url:?} must be https"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("{field} {url:?} has no host"))?
        .to_ascii_lowercase();
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    Ok(HttpsUrl {
        host,
        port: uri.port_u16().unwrap_or(443),
        path,
    })
}

/// `login = { ... }`: the client id and secret (from the environment or a file beside the
/// policy), the scopes (`openid` always among them), and the endpoints if given.
fn login(
    path: &Path,
    def: &LoginDef,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Login, String> {
    if def.client_id.is_empty() {
        return Err("client_id must be non-empty (the client registered at the provider)".into());
    }
    let secret = client_secret(
        path,
        def.client_secret_env.as_deref(),
        def.client_secret_file.as_deref(),
        env,
    )?;
    let mut scopes = match def.scopes.is_empty() {
        true => vec!["openid".into(), "email".into(), "profile".into()],
        false => def.scopes.clone(),
    };
    if !scopes.iter().any(|s| s == "openid") {
        scopes.insert(0, "openid".into());
    }
    let endpoints = match (&def.authorize_url, &def.token_url) {
        (Some(a), Some(t)) => {
            https_url("authorize_url", a)?;
            Some(LoginEndpoints {
                authorize_url: a.clone(),
                token: https_url("token_url", t)?,
            })
        }
        (None, None) => None,
        _ => return Err("give both authorize_url and token_url, or neither (then they are read from the issuer's /.well-known/openid-configuration)".into()),
    };
    Ok(Login {
        client_id: def.client_id.clone(),
        client_secret: secret,
        scopes,
        endpoints,
    })
}

/// The algorithms named (default RS256 and ES256): asymmetric ones only.
fn algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    if names.is_empty() {
        return Ok(vec![Algorithm::RS256, Algorithm::ES256]);
    }
    names
        .iter()
        .map(|name| match name.parse::<Algorithm>() {
            Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => Err(format!(
                "algorithm {name} is refused: HMAC signs with a shared secret, and toolgate verifies with the provider's published keys"
            )),
            Ok(alg) => Ok(alg),
            Err(_) => Err(format!(
                "algorithm {name:?} is not one toolgate verifies (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
            )),
        })
        .collect()
}

/// A client secret from the environment variable or the file (relative to the policy file)
/// named: exactly one of them, never empty.
pub(super) fn client_secret(
    path: &Path,
    var: Option<&str>,
    file: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ClientSecret, String> {
    let secret = match (var, file) {
        (Some(var), None) => env(var)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("client_secret_env names {var}, which is not set"))?,
        (None, Some(file)) => {
            let full = path.parent().unwrap_or(Path::new(".")).join(file);
            std::fs::read_to_string(&full)
                .map_err(|e| format!("client_secret_file {}: {e}", full.display()))?
                .trim()
                .to_string()
        }
        _ => return Err("name exactly one of client_secret_env and client_secret_file (the secret is never written in the policy)".into()),
    };
    if secret.is_empty() {
        return Err("the client secret is empty".into());
    }
    Ok(ClientSecret(secret))
}
