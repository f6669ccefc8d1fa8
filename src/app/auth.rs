//! Authentication with JSON Web Tokens, and the room rights a token carries.
//!
//! A token is looked for, in this order, in `Authorization: Bearer <t>`, the `token` query
//! parameter, the cookie named by `--auth-cookie`, and a `Sec-WebSocket-Protocol` entry of
//! the form `bearer.<t>` (browsers cannot set headers; offer `roomcast` next to it and the
//! server selects that, never echoing the token). A connection that brings none is
//! upgraded and must send `{"op":"auth","token":"<t>"}` before the handshake deadline.
//!
//! Claims: `sub` (the user, for per-user limits) and `exp` are required; `join` and `pub`
//! are lists of room patterns (`*` matches any run of characters) the user may join and
//! publish to. A missing list grants nothing.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// How tokens are checked (`--jwt-secret` or `--jwt-public-key`).
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
    /// `--auth-cookie`: the cookie a token may come in.
    pub cookie: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("algorithms", &self.validation.algorithms)
            .field("cookie", &self.cookie)
            .finish()
    }
}

/// What a valid token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub sub: Arc<str>,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    pub rights: Arc<Rights>,
}

/// Room patterns a user may join and publish to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Rights {
    #[serde(default)]
    pub join: Vec<String>,
    #[serde(default, rename = "pub")]
    pub publish: Vec<String>,
}

impl Rights {
    pub fn may_join(&self, room: &str) -> bool {
        self.join.iter().any(|p| glob(p, room))
    }

    pub fn may_publish(&self, room: &str) -> bool {
        self.publish.iter().any(|p| glob(p, room))
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(flatten)]
    rights: Rights,
}

/// Why a token was refused (the text goes into the 401 body or the close reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    Expired,
    Invalid,
}

impl TokenError {
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Expired => "token expired",
            TokenError::Invalid => "invalid token",
        }
    }
}

impl Auth {
    /// HS256/384/512 with a shared secret.
    pub fn with_secret(secret: &[u8], cookie: Option<String>) -> Auth {
        let algs = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        Auth::new(DecodingKey::from_secret(secret), &algs, cookie)
    }

    /// RS256/384/512 or PS* with an RSA public key, ES256/384 with an EC one (PEM).
    pub fn with_public_key(pem: &[u8], cookie: Option<String>) -> Result<Auth, String> {
        use Algorithm::*;
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Auth::new(
                key,
                &[RS256, RS384, RS512, PS256, PS384, PS512],
                cookie,
            ));
        }
        match DecodingKey::from_ec_pem(pem) {
            Ok(key) => Ok(Auth::new(key, &[ES256, ES384], cookie)),
            Err(e) => Err(format!("not an RSA or EC public key in PEM form: {e}")),
        }
    }

    fn new(key: DecodingKey, algs: &[Algorithm], cookie: Option<String>) -> Auth {
        let mut validation = Validation::new(algs[0]);
        validation.algorithms = algs.to_vec();
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Expiry is enforced to the second, here and mid-connection alike.
        validation.leeway = 0;
        Auth {
            key,
            validation,
            cookie,
        }
    }

    /// Checks a token's signature and expiry and returns what it grants.
    pub fn verify(&self, token: &str) -> Result<Session, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        match jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation) {
            Ok(data) => Ok(Session {
                sub: Arc::from(data.claims.sub),
                exp: data.claims.exp,
                rights: Arc::new(data.claims.rights),
            }),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(TokenError::Expired),
            Err(_) => Err(TokenError::Invalid),
        }
    }

    /// The token a handshake brings, if any.
    pub fn find_token<'a>(
        &self,
        req: &'a crate::protocol::handshake::Request<'a>,
    ) -> Option<&'a str> {
        if let Some(t) = req.authorization.and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        }) {
            return Some(t.trim());
        }
        if let Some(t) = req.query_param("token") {
            return Some(t);
        }
        if let (Some(name), Some(cookies)) = (&self.cookie, req.cookie) {
            for pair in cookies.split(';') {
                if let Some((k, v)) = pair.trim().split_once('=') {
                    if k == name {
                        return Some(v.trim_matches('"'));
                    }
                }
            }
        }
        req.protocols
            .as_deref()
            .into_iter()
            .flat_map(crate::protocol::handshake::tokens)
            .find_map(|p| p.strip_prefix(SUBPROTOCOL_PREFIX))
    }
}

/// A `Sec-WebSocket-Protocol` entry carrying a token: `bearer.<token>`.
pub const SUBPROTOCOL_PREFIX: &str = "bearer.";

/// The subprotocol the server selects when a client offers it (next to a token entry).
pub const SUBPROTOCOL: &str = "roomcast";

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and how much of the name it has swallowed so far.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_runs_of_anything() {
        for (p, n, m) in [
            ("*", "", true),
            ("*", "lobby", true),
            ("lobby", "lobby", true),
            ("lobby", "lobby2", false),
            ("team-*", "team-a", true),
            ("team-*", "team-", true),
            ("team-*", "tea", false),
            ("*-ops", "eu-ops", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("a*a", "aaa", true),
            ("", "x", false),
        ] {
            assert_eq!(glob(p, n), m, "{p} vs {n}");
        }
    }

    fn token(secret: &[u8], exp: u64, extra: serde_json::Value) -> String {
        let mut claims = serde_json::json!({"sub": "ann", "exp": exp});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn verify_reads_claims_and_refuses_bad_tokens() {
        let auth = Auth::with_secret(b"s3cret", None);
        let t = token(
            b"s3cret",
            unix_now() + 60,
            serde_json::json!({"join": ["a*"]}),
        );
        let s = auth.verify(&t).unwrap();
        assert_eq!(&*s.sub, "ann");
        assert!(s.rights.may_join("abc") && !s.rights.may_join("b"));
        assert!(!s.rights.may_publish("abc"), "no pub claim grants nothing");
        let expired = token(b"s3cret", unix_now() - 5, serde_json::json!({}));
        assert_eq!(auth.verify(&expired), Err(TokenError::Expired));
        let forged = token(b"other", unix_now() + 60, serde_json::json!({}));
        assert_eq!(auth.verify(&forged), Err(TokenError::Invalid));
        assert_eq!(auth.verify("not.a.jwt"), Err(TokenError::Invalid));
    }
}
