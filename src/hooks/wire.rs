//! What the backend receives and answers: one JSON object per `POST`, per call kind.
//!
//! ```text
//! connect  {"kind":"connect","client":"ip:port","path":"/ws","query":"…","headers":{"cookie":"…"}}
//!          → {"user":"u","rooms":["a"],"expire_at":0,"cache_ttl":0,"data":…}
//! refresh  {"kind":"refresh","user":"u","client":"ip:port"} → {"expire_at":…} (same as connect)
//! join     {"kind":"join","user":"u","room":"r","client":"ip:port"} → {} (cache_ttl allowed)
//! publish  {"kind":"publish","user":"u","room":"r","data":<json>} → {} or {"data":<json>}
//! rpc      {"kind":"rpc","user":"u","method":"m","data":<json>} → {"data":<json>}
//! any      → {"error":{"code":…,"reason":"…"}} (or HTTP 401/403) refuses
//! ```
//!
//! `data` goes to the backend as the client sent it and comes back as the backend wrote
//! it: spliced, never re-serialized. `user` is `null` for an anonymous connection.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Call, Identity, Kind, Verdict};

/// The request body for `call`.
pub fn body(call: &Call) -> Vec<u8> {
    let mut out = String::with_capacity(128);
    out.push_str("{\"kind\":\"");
    out.push_str(call.kind().name());
    out.push('"');
    let field = |out: &mut String, name: &str, value: &str| {
        out.push_str(",\"");
        out.push_str(name);
        out.push_str("\":");
        out.push_str(&serde_json::to_string(value).unwrap_or_default());
    };
    let user = |out: &mut String, user: &Option<Arc<str>>| match user {
        Some(u) => field(out, "user", u),
        None => out.push_str(",\"user\":null"),
    };
    let raw = |out: &mut String, name: &str, json: &str| {
        out.push_str(",\"");
        out.push_str(name);
        out.push_str("\":");
        out.push_str(json);
    };
    match call {
        Call::Connect {
            client,
            path,
            query,
            headers,
        } => {
            field(&mut out, "client", client);
            field(&mut out, "path", path);
            field(&mut out, "query", query);
            let map: serde_json::Map<String, serde_json::Value> = headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            raw(
                &mut out,
                "headers",
                &serde_json::Value::Object(map).to_string(),
            );
        }
        Call::Refresh { user: u, client } => {
            field(&mut out, "user", u);
            field(&mut out, "client", client);
        }
        Call::Join {
            user: u,
            room,
            client,
            ..
        } => {
            user(&mut out, u);
            field(&mut out, "room", room);
            field(&mut out, "client", client);
        }
        Call::Publish {
            user: u,
            room,
            data,
            ..
        } => {
            user(&mut out, u);
            field(&mut out, "room", room);
            raw(&mut out, "data", data);
        }
        Call::Rpc {
            user: u,
            method,
            data,
            ..
        } => {
            user(&mut out, u);
            field(&mut out, "method", method);
            raw(&mut out, "data", data);
        }
    }
    out.push('}');
    out.into_bytes()
}

#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(default, borrow)]
    error: Option<Refusal<'a>>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default, deserialize_with = "seconds")]
    expire_at: u64,
    #[serde(default, deserialize_with = "seconds")]
    cache_ttl: u64,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// A count of seconds as backends write them: an integer, or a float (Python's
/// `time.time() + 3600`), truncated; negative or not a number is 0, past `u64` is `u64::MAX`.
fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = f64::deserialize(d)?;
    // `as` saturates: 1e30 is u64::MAX.
    Ok(if v.is_finite() && v > 0.0 {
        v as u64
    } else {
        0
    })
}

#[derive(Deserialize)]
struct Refusal<'a> {
    #[serde(default)]
    code: Option<u16>,
    #[serde(default, borrow)]
    reason: Option<std::borrow::Cow<'a, str>>,
}

/// Longest reason kept from a backend (a close reason must fit a control frame).
const MAX_REASON: usize = 100;

/// The verdict in an answer of HTTP `status` with `body` to a call of `kind` (asked about
/// `user`, for a refresh), and for how many seconds it may be reused (`cache_ttl`).
/// Anything that is not an answer (a 5xx, a 404, JSON that is not one) is
/// [`Verdict::Unavailable`] and never cached.
pub fn verdict(kind: Kind, status: u16, body: &[u8], user: Option<&Arc<str>>) -> (Verdict, u64) {
    let parsed = serde_json::from_slice::<Answer<'_>>(body);
    let refused = |code: u16, reason: Option<&str>| Verdict::Refused {
        code,
        reason: Arc::from(trim(reason.unwrap_or(match code {
            401 => "unauthorized",
            _ => "forbidden",
        }))),
    };
    if status == 401 || status == 403 {
        let reason = parsed
            .as_ref()
            .ok()
            .and_then(|a| a.error.as_ref())
            .and_then(|e| e.reason.as_deref());
        return (refused(status, reason), 0);
    }
    let Ok(answer) = parsed.as_ref() else {
        return (Verdict::Unavailable, 0);
    };
    if status != 200 {
        return (Verdict::Unavailable, 0);
    }
    if let Some(e) = &answer.error {
        return (refused(e.code.unwrap_or(0), e.reason.as_deref()), 0);
    }
    let data = answer.data.map(|d| Arc::<str>::from(d.get()));
    let verdict = match kind {
        Kind::Connect | Kind::Refresh => {
            let named = answer.user.as_deref().map(Arc::<str>::from);
            let Some(user) = named.or_else(|| user.cloned()) else {
                return (Verdict::Unavailable, 0);
            };
            Verdict::Identity(Identity {
                user,
                rooms: answer.rooms.iter().map(|r| Arc::from(r.as_str())).collect(),
                expire_at: answer.expire_at,
                data,
            })
        }
        Kind::Join => Verdict::Allow,
        Kind::Publish => data.map_or(Verdict::Allow, Verdict::Data),
        Kind::Rpc => Verdict::Data(data.unwrap_or_else(|| Arc::from("null"))),
    };
    (verdict, answer.cache_ttl)
}

/// A reason cut to [`MAX_REASON`] bytes on a character boundary.
fn trim(reason: &str) -> &str {
    if reason.len() <= MAX_REASON {
        return reason;
    }
    let mut end = MAX_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_splice_data_and_quote_the_rest() {
        let call = Call::Publish {
            user: Some(Arc::from("a\"n")),
            room: Arc::from("lobby"),
            data: Arc::from("{\"x\": [1, 2]}"),
            id: Some(3),
        };
        let body = String::from_utf8(body(&call)).unwrap();
        assert_eq!(
            body,
            r#"{"kind":"publish","user":"a\"n","room":"lobby","data":{"x": [1, 2]}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["data"]["x"][1], 2);
        let connect = Call::Connect {
            client: "127.0.0.1:5".into(),
            path: "/ws".into(),
            query: "a=1".into(),
            headers: vec![("cookie".into(), "s=1".into())],
        };
        let v: serde_json::Value = serde_json::from_slice(&super::body(&connect)).unwrap();
        assert_eq!(v["headers"]["cookie"], "s=1");
        assert_eq!(v["kind"], "connect");
        let anon = Call::Join {
            user: None,
            room: Arc::from("r"),
            client: "c".into(),
            since: None,
        };
        let v: serde_json::Value = serde_json::from_slice(&super::body(&anon)).unwrap();
        assert!(v["user"].is_null());
    }

    #[test]
    fn answers_become_verdicts() {
        let (v, ttl) = verdict(
            Kind::Connect,
            200,
            br#"{"user":"ann","rooms":["a"],"expire_at":9,"cache_ttl":5,"data":{"k":1}}"#,
            None,
        );
        assert_eq!(ttl, 5);
        assert_eq!(
            v,
            Verdict::Identity(Identity {
                user: Arc::from("ann"),
                rooms: vec![Arc::from("a")],
                expire_at: 9,
                data: Some(Arc::from(r#"{"k":1}"#)),
            })
        );
        // Seconds as backends write them: floats truncated, nonsense clamped, never a panic.
        for (body, expire_at, ttl) in [
            (
                &br#"{"user":"u","expire_at":1733561234.75,"cache_ttl":2.5}"#[..],
                1733561234,
                2,
            ),
            (br#"{"user":"u","expire_at":-5,"cache_ttl":-1}"#, 0, 0),
            (
                br#"{"user":"u","cache_ttl":18446744073709551615}"#,
                0,
                u64::MAX,
            ),
            (br#"{"user":"u","cache_ttl":1e300}"#, 0, u64::MAX),
        ] {
            let (v, t) = verdict(Kind::Connect, 200, body, None);
            let Verdict::Identity(id) = v else {
                panic!("{v:?}")
            };
            assert_eq!((id.expire_at, t), (expire_at, ttl));
        }
        let refused = |code: u16, reason: &str| Verdict::Refused {
            code,
            reason: Arc::from(reason),
        };
        assert_eq!(
            verdict(Kind::Connect, 403, b"nope", None).0,
            refused(403, "forbidden")
        );
        assert_eq!(
            verdict(
                Kind::Connect,
                401,
                br#"{"error":{"reason":"log in"}}"#,
                None
            )
            .0,
            refused(401, "log in")
        );
        assert_eq!(
            verdict(Kind::Join, 200, br#"{"error":{"reason":"banned"}}"#, None).0,
            refused(0, "banned")
        );
        assert_eq!(verdict(Kind::Join, 200, b"{}", None).0, Verdict::Allow);
        assert_eq!(
            verdict(Kind::Publish, 200, br#"{"data":"x"}"#, None).0,
            Verdict::Data(Arc::from("\"x\""))
        );
        assert_eq!(
            verdict(Kind::Rpc, 200, b"{}", None).0,
            Verdict::Data(Arc::from("null"))
        );
        for (status, body) in [(500, &b"{}"[..]), (200, b"not json"), (404, b"{}")] {
            assert_eq!(
                verdict(Kind::Join, status, body, None),
                (Verdict::Unavailable, 0)
            );
        }
        // A connect answer must say who; a refresh may leave the user as it was.
        assert_eq!(
            verdict(Kind::Connect, 200, b"{}", None).0,
            Verdict::Unavailable
        );
        let ann = Arc::from("ann");
        assert!(matches!(
            verdict(Kind::Refresh, 200, br#"{"expire_at":5}"#, Some(&ann)).0,
            Verdict::Identity(Identity { expire_at: 5, .. })
        ));
        let long = format!(r#"{{"error":{{"reason":"{}"}}}}"#, "é".repeat(200));
        let Verdict::Refused { reason, .. } = verdict(Kind::Join, 200, long.as_bytes(), None).0
        else {
            panic!()
        };
        assert!(reason.len() <= MAX_REASON);
    }
}
