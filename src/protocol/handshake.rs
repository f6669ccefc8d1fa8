//! The opening handshake (RFC 6455 §4.2): parse a request from a possibly partial buffer,
//! validate it, and build the response. Policy (routes, origin, auth, limits) belongs to
//! the caller: this module hands it what the request carried and formats its decision.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use super::error::{HandshakeError, Status};

/// RFC 6455 §1.3: the GUID appended to the key before hashing.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The most header fields a request may carry; more is answered with 431.
pub const MAX_HEADERS: usize = 48;

/// What a request carried that policy code decides on. Borrowed from the read buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request<'a> {
    /// `GET`, or `POST` (plain requests only).
    pub method: &'a str,
    /// `Content-Length` and `Transfer-Encoding` as sent (a POST's body).
    pub content_length: Option<&'a str>,
    pub transfer_encoding: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub cookie: Option<&'a str>,
    pub authorization: Option<&'a str>,
    /// `Sec-WebSocket-Protocol` as sent: a comma-separated list; see [`tokens`]. Repeated
    /// fields are joined into one list (RFC 6455 §9.1, §11.3.4), so only then is it owned.
    pub protocols: Option<Cow<'a, str>>,
    /// `Sec-WebSocket-Extensions` as sent, repeated fields joined likewise.
    pub extensions: Option<Cow<'a, str>>,
    /// `Last-Event-ID`: where a reconnecting event stream left off.
    pub last_event_id: Option<&'a str>,
    /// The `Sec-WebSocket-Accept` value for this request's key (upgrades only).
    pub accept: Option<[u8; 28]>,
}

impl Request<'_> {
    /// The value of one `name=value` pair of the query string, percent-decoded (`%2C` is
    /// a `,`; a `%` not followed by two hex digits stays as it is).
    pub fn query_value(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        let raw = self.query_param(name)?;
        if !raw.contains('%') {
            return Some(std::borrow::Cow::Borrowed(raw));
        }
        let (b, mut out, mut i) = (raw.as_bytes(), Vec::with_capacity(raw.len()), 0);
        while i < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b[i],
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (b'%', Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                (c, ..) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        Some(std::borrow::Cow::Owned(
            String::from_utf8_lossy(&out).into_owned(),
        ))
    }

    /// The value of one `name=value` pair of the query string, undecoded.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }
}

/// What a complete request head turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A valid WebSocket upgrade: answer with [`accept_response`] or [`reject_response`].
    Upgrade(Request<'a>),
    /// A GET with no `Upgrade` header: a plain HTTP request (`/healthz`, `/metrics`).
    Plain(Request<'a>),
}

/// Parses the request head at the start of `buf`.
///
/// `Ok(None)` means the head is not complete yet; a caller with `max_header_bytes` or more
/// buffered gets [`HandshakeError::HeadersTooLarge`] instead, so it never needs to buffer
/// more. On success, also returns the length of the head: bytes after it (a client may
/// send its first frame right behind the request) belong to the WebSocket stream.
pub fn parse(
    buf: &[u8],
    max_header_bytes: usize,
) -> Result<Option<(Parsed<'_>, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= max_header_bytes => n,
        Ok(_) if buf.len() >= max_header_bytes => {
            return Err(HandshakeError::HeadersTooLarge {
                max: max_header_bytes,
            })
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(_)) => {
            return Err(HandshakeError::HeadersTooLarge {
                max: max_header_bytes,
            })
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooManyHeaders),
        Err(e) => return Err(HandshakeError::MalformedRequest(malformed(e))),
    };
    let parsed = validate(&req)?;
    Ok(Some((parsed, head_len)))
}

fn validate<'a>(req: &httparse::Request<'_, 'a>) -> Result<Parsed<'a>, HandshakeError> {
    // RFC 6455 §4.2.1 (1): "An HTTP/1.1 or higher GET request". A plain request may also
    // be a POST (the server API); anything else is refused here.
    let method = req.method.unwrap_or("");
    if method != "GET" && method != "POST" {
        return Err(HandshakeError::MethodNotGet);
    }
    if req.version != Some(1) {
        return Err(HandshakeError::HttpVersionTooOld);
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    // One pass over the fields, matched without allocating. Repeated fields form one
    // comma-separated list (RFC 9110 §5.3): for the two list-valued WebSocket fields the
    // occurrences are joined (a browser may send its extension offers in several); for the
    // others the first occurrence is kept, which is what matters for them.
    const NAMES: [&str; 13] = [
        "host",
        "origin",
        "cookie",
        "authorization",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "last-event-id",
        "content-length",
        "transfer-encoding",
    ];
    let mut fields: [Option<&'a str>; 13] = [None; 13];
    // Fields 4 and 5 (protocols, extensions) when repeated.
    let mut lists: [Option<String>; 2] = [None, None];
    for h in req.headers.iter() {
        let Some(i) = NAMES.iter().position(|n| n.eq_ignore_ascii_case(h.name)) else {
            continue;
        };
        let Ok(value) = std::str::from_utf8(h.value) else {
            continue;
        };
        match (fields[i], i) {
            (Some(first), 4 | 5) => {
                let list = lists[i - 4].get_or_insert_with(|| first.to_owned());
                list.push_str(", ");
                list.push_str(value.trim());
            }
            _ => {
                fields[i].get_or_insert(value.trim());
            }
        }
    }
    let [joined_protocols, joined_extensions] = lists;
    let list = |joined: Option<String>, first: Option<&'a str>| {
        joined.map(Cow::Owned).or(first.map(Cow::Borrowed))
    };
    let [host, origin, cookie, authorization, protocols, extensions, upgrade, connection, key, version, last_event_id, content_length, transfer_encoding] =
        fields;
    let mut request = Request {
        method,
        content_length,
        transfer_encoding,
        path,
        query,
        host,
        origin,
        cookie,
        authorization,
        protocols: list(joined_protocols, protocols),
        extensions: list(joined_extensions, extensions),
        last_event_id,
        accept: None,
    };
    // RFC 6455 §4.2.1 (2): a Host header field.
    if request.host.is_none() {
        return Err(HandshakeError::MissingHost);
    }
    let Some(upgrade) = upgrade else {
        return Ok(Parsed::Plain(request));
    };
    if method != "GET" {
        return Err(HandshakeError::MethodNotGet);
    }
    // §4.2.1 (3), (4): token lists, compared case-insensitively.
    if !tokens(upgrade).any(|t| t.eq_ignore_ascii_case("websocket")) {
        return Err(HandshakeError::UpgradeNotWebsocket);
    }
    if !tokens(connection.unwrap_or("")).any(|t| t.eq_ignore_ascii_case("upgrade")) {
        return Err(HandshakeError::ConnectionNotUpgrade);
    }
    // §4.2.1 (6), §4.4: anything but 13 gets 426 naming the version we speak.
    if version != Some("13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    // §4.2.1 (5): base64 of exactly 16 bytes.
    let key = key.ok_or(HandshakeError::InvalidKey)?;
    let mut raw = [0u8; 18];
    match BASE64.decode_slice(key, &mut raw) {
        Ok(16) => {}
        _ => return Err(HandshakeError::InvalidKey),
    }
    request.accept = Some(accept_key(key.as_bytes()));
    Ok(Parsed::Upgrade(request))
}

fn malformed(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::Version => "invalid HTTP version",
        _ => "invalid request",
    }
}

/// Splits a comma-separated header value into its trimmed, non-empty tokens.
pub fn tokens(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 §4.2.2 step 5.4).
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    let mut out = [0u8; 28];
    // 20 bytes of digest are always 28 base64 characters.
    let n = BASE64.encode_slice(sha.finalize(), &mut out).unwrap_or(0);
    debug_assert_eq!(n, 28);
    out
}

/// Appends the 101 response accepting `request`, naming `protocol` if one was chosen from
/// those offered, and the extensions agreed (`extensions`: the header's value).
pub fn accept_response(
    request: &Request<'_>,
    protocol: Option<&str>,
    extensions: Option<&str>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(request.accept.as_ref().map_or(&[][..], |a| &a[..]));
    out.extend_from_slice(b"\r\n");
    if let Some(p) = protocol {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(e) = extensions {
        out.extend_from_slice(b"Sec-WebSocket-Extensions: ");
        out.extend_from_slice(e.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a response refusing the request: `status` with a short text body, and the
/// header RFC 6455 §4.4 requires on 426. The connection is closed after it.
pub fn reject_response(status: Status, body: &str, out: &mut Vec<u8>) {
    let extra = if status == Status::UpgradeRequired {
        "Sec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    http_response(
        status,
        "text/plain; charset=utf-8",
        extra,
        body.as_bytes(),
        true,
        out,
    );
}

/// Appends a plain HTTP/1.1 response (`extra_headers` is zero or more `Name: value\r\n`
/// lines).
pub fn http_response(
    status: Status,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
    close: bool,
    out: &mut Vec<u8>,
) {
    use std::io::Write as _;
    let connection = if close { "close" } else { "keep-alive" };
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n{}\r\n",
        status.code(),
        status.reason_phrase(),
        content_type,
        body.len(),
        connection,
        extra_headers,
    );
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "GET /chat?room=a,b&token=t1 HTTP/1.1\r\nHost: server.example.com\r\n\
        Upgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\
        Cookie: a=1\r\nAuthorization: Bearer xyz\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

    fn request(headers: &str) -> String {
        format!("GET / HTTP/1.1\r\nHost: h\r\n{headers}\r\n")
    }

    const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

    #[test]
    fn repeated_list_fields_are_one_list() {
        let text = request(&format!(
            "{UPGRADE}Sec-WebSocket-Extensions: x-foo\r\nSec-WebSocket-Protocol: a\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
             Sec-WebSocket-Protocol: b, c\r\n"
        ));
        let Parsed::Upgrade(r) = parse(text.as_bytes(), 8192).unwrap().unwrap().0 else {
            panic!("not an upgrade")
        };
        assert_eq!(
            r.extensions.as_deref(),
            Some("x-foo, permessage-deflate; client_max_window_bits")
        );
        assert_eq!(
            tokens(r.protocols.as_deref().unwrap()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn rfc_1_3_sample_accept_key() {
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn rfc_1_2_sample_request_hands_over_everything_policy_needs() {
        let (parsed, n) = parse(GOOD.as_bytes(), 8192).unwrap().unwrap();
        assert_eq!(n, GOOD.len());
        let Parsed::Upgrade(r) = parsed else {
            panic!("not an upgrade")
        };
        assert_eq!(r.path, "/chat");
        assert_eq!(r.query_param("room"), Some("a,b"));
        assert_eq!(r.query_param("token"), Some("t1"));
        assert_eq!(r.query_param("nope"), None);
        assert_eq!(r.origin, Some("http://example.com"));
        assert_eq!(r.cookie, Some("a=1"));
        assert_eq!(r.authorization, Some("Bearer xyz"));
        assert_eq!(
            tokens(r.protocols.as_deref().unwrap()).collect::<Vec<_>>(),
            ["chat", "superchat"]
        );
        assert!(r
            .extensions
            .as_deref()
            .unwrap()
            .starts_with("permessage-deflate"));
        let mut out = Vec::new();
        accept_response(&r, Some("chat"), None, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: chat\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn partial_requests_need_more_at_every_cut() {
        for cut in 0..GOOD.len() {
            assert_eq!(parse(&GOOD.as_bytes()[..cut], 8192), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn bytes_after_the_head_are_left_for_the_frame_decoder() {
        let mut bytes = GOOD.as_bytes().to_vec();
        bytes.extend([0x81, 0x80, 1, 2, 3, 4]);
        let (_, n) = parse(&bytes, 8192).unwrap().unwrap();
        assert_eq!(n, GOOD.len());
    }

    #[test]
    fn oversized_heads_get_431_whether_complete_or_not() {
        let huge = request(&format!("X-Pad: {}\r\n{UPGRADE}", "a".repeat(10_000)));
        let err = parse(&huge.as_bytes()[..9000], 8192).unwrap_err();
        assert_eq!(err.status(), Status::HeadersTooLarge);
        let err = parse(huge.as_bytes(), 8192).unwrap_err();
        assert_eq!(err.status(), Status::HeadersTooLarge);
        let many: String = (0..60).map(|i| format!("X-{i}: v\r\n")).collect();
        let err = parse(request(&many).as_bytes(), 8192).unwrap_err();
        assert_eq!(err, HandshakeError::TooManyHeaders);
        assert_eq!(err.status(), Status::HeadersTooLarge);
    }

    #[test]
    fn query_values_are_percent_decoded() {
        let req = "GET /sse?room=a%2Cb%23c&x=100%&y=%zz HTTP/1.1\r\nHost: h\r\n\r\n";
        let (parsed, _) = parse(req.as_bytes(), 8192).unwrap().unwrap();
        let Parsed::Plain(r) = parsed else { panic!() };
        assert_eq!(r.query_value("room").as_deref(), Some("a,b#c"));
        assert_eq!(r.query_value("x").as_deref(), Some("100%"));
        assert_eq!(r.query_value("y").as_deref(), Some("%zz"));
        assert_eq!(r.query_param("room"), Some("a%2Cb%23c"));
    }

    #[test]
    fn plain_get_without_upgrade_is_reported_as_plain() {
        let req = "GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n";
        let (parsed, _) = parse(req.as_bytes(), 8192).unwrap().unwrap();
        assert!(matches!(
            parsed,
            Parsed::Plain(Request {
                path: "/healthz",
                ..
            })
        ));
    }

    fn rejected(req: &str) -> HandshakeError {
        parse(req.as_bytes(), 8192).unwrap_err()
    }

    #[test]
    fn each_rule_of_4_2_1_is_enforced() {
        let post = format!("POST / HTTP/1.1\r\nHost: h\r\n{UPGRADE}\r\n");
        assert_eq!(rejected(&post), HandshakeError::MethodNotGet);
        let http10 = format!("GET / HTTP/1.0\r\nHost: h\r\n{UPGRADE}\r\n");
        assert_eq!(rejected(&http10), HandshakeError::HttpVersionTooOld);
        let no_host = format!("GET / HTTP/1.1\r\n{UPGRADE}\r\n");
        assert_eq!(rejected(&no_host), HandshakeError::MissingHost);
        let not_ws = request(&UPGRADE.replace("Upgrade: websocket", "Upgrade: h2c"));
        assert_eq!(rejected(&not_ws), HandshakeError::UpgradeNotWebsocket);
        let no_conn = request(&UPGRADE.replace("Connection: Upgrade\r\n", ""));
        assert_eq!(rejected(&no_conn), HandshakeError::ConnectionNotUpgrade);
        let v8 = request(&UPGRADE.replace("Version: 13", "Version: 8"));
        assert_eq!(rejected(&v8), HandshakeError::UnsupportedVersion);
        let no_version = request(&UPGRADE.replace("Sec-WebSocket-Version: 13\r\n", ""));
        assert_eq!(rejected(&no_version), HandshakeError::UnsupportedVersion);
        for key in [
            "",
            "dGhlIHNhbXBsZQ==",
            "dGhlIHNhbXBsZSBub25jZSBub25jZQ==",
            "!!!!",
        ] {
            let bad = request(&UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", key));
            assert_eq!(rejected(&bad), HandshakeError::InvalidKey, "key {key:?}");
        }
        let no_key =
            request(&UPGRADE.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""));
        assert_eq!(rejected(&no_key), HandshakeError::InvalidKey);
        assert!(matches!(
            rejected("GARBAGE\r\n\r\n"),
            HandshakeError::MalformedRequest(_)
        ));
    }

    #[test]
    fn token_lists_are_case_insensitive_and_comma_separated() {
        let req = request(
            &UPGRADE
                .replace("Upgrade: websocket", "Upgrade: foo, WebSocket")
                .replace("Connection: Upgrade", "Connection: keep-alive, UPGRADE"),
        );
        assert!(matches!(
            parse(req.as_bytes(), 8192),
            Ok(Some((Parsed::Upgrade(_), _)))
        ));
    }

    #[test]
    fn rejections_carry_status_body_and_426_names_version_13() {
        let mut out = Vec::new();
        reject_response(Status::UpgradeRequired, "use version 13", &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(text.contains("Content-Length: 14\r\n"));
        assert!(text.ends_with("\r\n\r\nuse version 13"));
        for status in [
            Status::BadRequest,
            Status::Unauthorized,
            Status::Forbidden,
            Status::NotFound,
            Status::TooManyRequests,
            Status::HeadersTooLarge,
            Status::ServiceUnavailable,
        ] {
            let mut out = Vec::new();
            reject_response(status, "no", &mut out);
            let head = format!("HTTP/1.1 {} ", status.code());
            assert!(out.starts_with(head.as_bytes()));
            assert!(!String::from_utf8(out)
                .unwrap()
                .contains("Sec-WebSocket-Version"));
        }
    }
}
