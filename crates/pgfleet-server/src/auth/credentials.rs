//! Reading the caller's credential from request headers, and the shapes of
//! session tokens and API keys.
//!
//! A session token is 32 random bytes, base64url without padding (43
//! characters). An API key is `pgf_<prefix>_<secret>`: a 12-hex-digit public
//! prefix that finds the row and a 32-byte base64url secret. Only SHA-256
//! digests of tokens and secrets are ever stored.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::AuthError;

/// Name of the session cookie set by Login for browser clients.
pub const SESSION_COOKIE: &str = "pgfleet_session";
/// Header carrying an API key.
pub const API_KEY_HEADER: &str = "x-api-key";
/// The old system's second header: with it, `x-api-key` carries the key's
/// id (`pgf_<prefix>`) and this one its secret, so clients written for the
/// old API keep their headers.
pub const API_SECRET_HEADER: &str = "x-api-secret";
const API_KEY_SCHEME: &str = "pgf_";
const API_KEY_PREFIX_LEN: usize = 12;
const RANDOM_BYTES: usize = 32;

/// A credential presented with a call.
#[derive(PartialEq, Eq)]
pub enum Credential {
    /// A session token (bearer header or cookie).
    Session(SessionToken),
    /// An API key.
    ApiKey(ApiKeySecret),
}

// Credentials must never reach a log through a stray `{:?}`.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Session(_) => f.write_str("Credential::Session(<redacted>)"),
            Credential::ApiKey(key) => write!(f, "Credential::ApiKey(pgf_{}_<redacted>)", key.prefix),
        }
    }
}

/// A session token as the client holds it.
#[derive(PartialEq, Eq)]
pub struct SessionToken(String);

impl SessionToken {
    /// A new token of 256 random bits.
    pub fn generate() -> Self {
        Self(random_base64())
    }

    /// The token to hand to the client, once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The id the session is stored under: hex SHA-256 of the token, so a
    /// read of the session store yields nothing usable.
    pub fn session_id(&self) -> String {
        hex_sha256(self.0.as_bytes())
    }
}

/// An API key as presented: its public prefix and its secret.
#[derive(PartialEq, Eq)]
pub struct ApiKeySecret {
    /// Public, stored in clear, shown in listings.
    pub prefix: String,
    secret: String,
}

impl ApiKeySecret {
    /// A new key with a random prefix and a 256-bit secret.
    pub fn generate() -> Self {
        let mut prefix = [0u8; API_KEY_PREFIX_LEN / 2];
        rand::rng().fill_bytes(&mut prefix);
        Self {
            prefix: prefix.iter().map(|b| format!("{b:02x}")).collect(),
            secret: random_base64(),
        }
    }

    /// Parses `pgf_<prefix>_<secret>`.
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix(API_KEY_SCHEME)?;
        let prefix = rest.get(..API_KEY_PREFIX_LEN)?;
        let secret = rest.get(API_KEY_PREFIX_LEN..)?.strip_prefix('_')?;
        let prefix_ok = prefix
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        let secret_ok = URL_SAFE_NO_PAD
            .decode(secret)
            .is_ok_and(|bytes| bytes.len() == RANDOM_BYTES);
        (prefix_ok && secret_ok).then(|| Self {
            prefix: prefix.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// A key presented as the old system's pair of headers: its id
    /// (`pgf_<prefix>`, or the bare prefix) and its secret.
    pub fn from_pair(id: &str, secret: &str) -> Option<Self> {
        let prefix = id.strip_prefix(API_KEY_SCHEME).unwrap_or(id);
        Self::parse(&format!("{API_KEY_SCHEME}{prefix}_{secret}"))
    }

    /// The full key, to show its owner once.
    pub fn expose(&self) -> String {
        format!("{API_KEY_SCHEME}{}_{}", self.prefix, self.secret)
    }

    /// SHA-256 of the secret, as stored.
    pub fn secret_digest(&self) -> [u8; 32] {
        Sha256::digest(self.secret.as_bytes()).into()
    }
}

/// Finds the one credential in `headers`.
///
/// An explicit `authorization: Bearer` wins over a session cookie (a browser
/// may carry a stale cookie); a session and an API key together are refused
/// as ambiguous rather than guessing which identity was meant.
pub fn from_headers(headers: &HeaderMap) -> Result<Option<Credential>, AuthError> {
    let bearer = bearer_token(headers)?;
    let cookie = session_cookie(headers);
    let header = |name: &'static str, malformed: &'static str| {
        headers
            .get(name)
            .map(|value| {
                value
                    .to_str()
                    .map(str::trim)
                    .map_err(|_| AuthError::Unauthenticated(malformed))
            })
            .transpose()
    };
    let key = header(API_KEY_HEADER, "malformed x-api-key header")?;
    let secret = header(API_SECRET_HEADER, "malformed x-api-secret header")?;
    let api_key = match (key, secret) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(AuthError::Unauthenticated(
                "x-api-secret needs the key's id in x-api-key",
            ));
        }
        (Some(key), None) => {
            Some(ApiKeySecret::parse(key).ok_or(AuthError::Unauthenticated("malformed API key"))?)
        }
        (Some(id), Some(secret)) => Some(
            ApiKeySecret::from_pair(id, secret)
                .ok_or(AuthError::Unauthenticated("malformed API key id or secret"))?,
        ),
    };
    let session = bearer.or(cookie);
    match (session, api_key) {
        (Some(_), Some(_)) => Err(AuthError::Unauthenticated(
            "send either a session token or an API key, not both",
        )),
        (Some(token), None) => Ok(Some(Credential::Session(token))),
        (None, Some(key)) => Ok(Some(Credential::ApiKey(key))),
        (None, None) => Ok(None),
    }
}

fn bearer_token(headers: &HeaderMap) -> Result<Option<SessionToken>, AuthError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| AuthError::Unauthenticated("malformed authorization header"))?;
    let (scheme, token) = text.trim().split_once(' ').ok_or(AuthError::Unauthenticated(
        "authorization header must be `Bearer <token>`",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Unauthenticated(
            "authorization header must be `Bearer <token>`",
        ));
    }
    Ok(Some(SessionToken(token.trim().to_owned())))
}

fn session_cookie(headers: &HeaderMap) -> Option<SessionToken> {
    // HTTP/2 may split cookies over several headers.
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| SessionToken(value.trim().to_owned()))
}

/// `Set-Cookie` value carrying `token` for `max_age_secs`.
pub fn session_cookie_header(token: &SessionToken, max_age_secs: u64, secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}={}; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{}",
        token.expose(),
        if secure { "; Secure" } else { "" }
    )
}

/// `Set-Cookie` value that removes the session cookie.
pub fn clear_session_cookie_header(secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

fn random_base64() -> String {
    let mut bytes = [0u8; RANDOM_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    #[test]
    fn tokens_are_256_bit_and_stored_only_as_digests() {
        let token = SessionToken::generate();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(token.expose()).expect("base64url").len(),
            32
        );
        assert_ne!(token.expose(), SessionToken::generate().expose());
        let id = token.session_id();
        assert_eq!(id.len(), 64);
        assert!(!id.contains(token.expose()));
    }

    #[test]
    fn api_keys_round_trip_and_reject_lookalikes() {
        let key = ApiKeySecret::generate();
        let text = key.expose();
        let parsed = ApiKeySecret::parse(&text).expect("own format parses");
        assert_eq!(parsed.prefix, key.prefix);
        assert_eq!(parsed.secret_digest(), key.secret_digest());
        for bad in [
            "",
            "pgf_",
            &text[..text.len() - 1],
            &text.replace("pgf_", "pgx_"),
            &format!("pgf_{}", &text[4..].replacen('_', "-", 1)),
            &format!("{text}x"),
        ] {
            assert!(ApiKeySecret::parse(bad).is_none(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn credentials_come_from_bearer_cookie_or_api_key() {
        let token = SessionToken::generate();
        let bearer = format!("Bearer {}", token.expose());
        assert!(matches!(
            from_headers(&headers(&[("authorization", &bearer)])),
            Ok(Some(Credential::Session(t))) if t == token
        ));
        let cookie = format!("theme=dark; {SESSION_COOKIE}={}; other=1", token.expose());
        assert!(matches!(
            from_headers(&headers(&[("cookie", "a=b"), ("cookie", &cookie)])),
            Ok(Some(Credential::Session(t))) if t == token
        ));
        let key = ApiKeySecret::generate().expose();
        assert!(matches!(
            from_headers(&headers(&[("x-api-key", &key)])),
            Ok(Some(Credential::ApiKey(_)))
        ));
        assert!(matches!(from_headers(&HeaderMap::new()), Ok(None)));

        // The old system's pair of headers: the id, then the secret.
        let key = ApiKeySecret::generate();
        let id = format!("pgf_{}", key.prefix);
        for id in [id.as_str(), &key.prefix] {
            assert!(matches!(
                from_headers(&headers(&[("x-api-key", id), ("x-api-secret", &key.secret)])),
                Ok(Some(Credential::ApiKey(k))) if k == key
            ));
        }
    }

    #[test]
    fn ambiguous_or_malformed_credentials_are_refused() {
        let key = ApiKeySecret::generate().expose();
        let both = from_headers(&headers(&[("authorization", "Bearer abc"), ("x-api-key", &key)]));
        assert!(matches!(both, Err(AuthError::Unauthenticated(_))));
        let basic = from_headers(&headers(&[("authorization", "Basic YWRtaW46YWRtaW4=")]));
        assert!(matches!(basic, Err(AuthError::Unauthenticated(_))));
        let bad_key = from_headers(&headers(&[("x-api-key", "secret")]));
        assert!(matches!(bad_key, Err(AuthError::Unauthenticated(_))));
        let key = ApiKeySecret::generate();
        let (full, id, secret) = (key.expose(), format!("pgf_{}", key.prefix), key.secret.as_str());
        for pair in [
            vec![("x-api-secret", secret)],
            vec![("x-api-key", full.as_str()), ("x-api-secret", secret)],
            vec![("x-api-key", id.as_str()), ("x-api-secret", "short")],
            vec![
                ("authorization", "Bearer abc"),
                ("x-api-key", id.as_str()),
                ("x-api-secret", secret),
            ],
        ] {
            assert!(
                matches!(from_headers(&headers(&pair)), Err(AuthError::Unauthenticated(_))),
                "{:?} must be refused",
                pair.iter().map(|(name, _)| *name).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn debug_output_hides_secrets() {
        let token = SessionToken::generate();
        let shown = format!(
            "{:?}",
            Credential::Session(SessionToken(token.expose().to_owned()))
        );
        assert!(!shown.contains(token.expose()));
        let key = ApiKeySecret::generate();
        let full = key.expose();
        let shown = format!("{:?}", Credential::ApiKey(key));
        assert!(!shown.contains(&full));
    }
}
