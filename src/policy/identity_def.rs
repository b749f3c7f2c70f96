//! `[[identity_provider]]`: an issuer of signed assertions about people (DESIGN section 16),
//! checked at load: its keys (a JWKS file) parse and each can verify, its algorithms are
//! asymmetric (never `none`, never HMAC, whose "key" would be public), and it says which claim
//! names the person.

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};

use super::file::IdentityProviderDef;
use super::types::{IdentityProvider, JwksSource};

/// How long past `exp` (and before `nbf`) an assertion is still taken, unless said.
const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// The leeway at most: clocks are minutes apart, not hours.
const MAX_LEEWAY: Duration = Duration::from_secs(600);

/// The provider `def` declares in the policy file at `path`.
pub(super) fn compile(path: &Path, def: IdentityProviderDef) -> Result<IdentityProvider, String> {
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
            JwksSource::File(set)
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
    Ok(IdentityProvider {
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
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("jwks_url {url:?} is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!(
            "jwks_url {url:?} must be https: keys fetched in clear could be anyone's"
        ));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("jwks_url {url:?} has no host"))?
        .to_ascii_lowercase();
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    Ok(JwksSource::Url {
        host,
        port: uri.port_u16().unwrap_or(443),
        path,
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
