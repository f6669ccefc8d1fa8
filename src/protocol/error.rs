//! Errors named after the rule the peer broke, and the one place that maps them to
//! what the peer is told: a close code for a frame-level violation, an HTTP status for a
//! handshake that cannot be accepted.
//!
//! A normal close is not an error: it arrives as [`super::message::Event::Close`].

use std::fmt;

/// A WebSocket close status code (RFC 6455 §7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection has been fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the server is going away (shutting down, draining).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: the peer broke the framing protocol.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1007: a text message (or close reason) was not valid UTF-8.
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: a policy was violated (rate limit, slow consumer, expired token).
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// 1009: a message exceeded the configured maximum size.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// 1011: the server hit an unexpected condition.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);

    /// Whether a peer may put this code on the wire in a close frame.
    ///
    /// RFC 6455 §7.4.1/§7.4.2: 1004 is reserved, 1005 and 1006 (and 1015) are only for
    /// reporting and MUST NOT be sent; 1000-2999 are otherwise reserved for the protocol
    /// and its registered extensions (1012-1014 are registered with IANA); 3000-4999 are
    /// for libraries, frameworks and applications; everything else is invalid.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A frame- or message-level violation by the peer. Every variant ends the connection
/// with the close code [`ProtocolError::close_code`] gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// RFC 6455 §5.2: RSV1-3 MUST be 0 unless an extension defining them was negotiated.
    ReservedBitsSet { rsv: u8 },
    /// RFC 6455 §5.2: opcodes 0x3-0x7 and 0xB-0xF are reserved.
    ReservedOpcode(u8),
    /// RFC 6455 §5.5: control frames carry at most 125 bytes of payload.
    ControlFrameTooLong { len: u64 },
    /// RFC 6455 §5.5: control frames MUST NOT be fragmented.
    FragmentedControlFrame,
    /// RFC 6455 §5.1: a client MUST mask every frame it sends.
    UnmaskedClientFrame,
    /// RFC 6455 §5.2: the most significant bit of a 64-bit length MUST be 0.
    LengthTopBitSet,
    /// RFC 6455 §5.4: a continuation frame arrived with no fragmented message open.
    UnexpectedContinuation,
    /// RFC 6455 §5.4: a new data frame arrived while a fragmented message was still open.
    ExpectedContinuation,
    /// RFC 6455 §8.1: a text message (or close reason) is not valid UTF-8.
    InvalidUtf8,
    /// The message would exceed the configured maximum; detected before allocating for it.
    MessageTooLong { size: u64, max: usize },
    /// RFC 6455 §5.5.1: a close payload is empty or at least two bytes (a code).
    CloseFrameTooShort,
    /// RFC 6455 §7.4: the close code is not one a peer may send.
    InvalidCloseCode(u16),
}

impl ProtocolError {
    /// The one mapping from a violation to the close code the peer gets.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8 => CloseCode::INVALID_PAYLOAD,
            ProtocolError::MessageTooLong { .. } => CloseCode::MESSAGE_TOO_BIG,
            ProtocolError::ReservedBitsSet { .. }
            | ProtocolError::ReservedOpcode(_)
            | ProtocolError::ControlFrameTooLong { .. }
            | ProtocolError::FragmentedControlFrame
            | ProtocolError::UnmaskedClientFrame
            | ProtocolError::LengthTopBitSet
            | ProtocolError::UnexpectedContinuation
            | ProtocolError::ExpectedContinuation
            | ProtocolError::CloseFrameTooShort
            | ProtocolError::InvalidCloseCode(_) => CloseCode::PROTOCOL_ERROR,
        }
    }

    /// A short reason for the close frame (well under the 123 bytes a close reason may use).
    pub fn reason(&self) -> &'static str {
        match self {
            ProtocolError::ReservedBitsSet { .. } => "reserved bits set",
            ProtocolError::ReservedOpcode(_) => "reserved opcode",
            ProtocolError::ControlFrameTooLong { .. } => "control frame too long",
            ProtocolError::FragmentedControlFrame => "fragmented control frame",
            ProtocolError::UnmaskedClientFrame => "unmasked client frame",
            ProtocolError::LengthTopBitSet => "invalid payload length",
            ProtocolError::UnexpectedContinuation => "unexpected continuation frame",
            ProtocolError::ExpectedContinuation => "expected continuation frame",
            ProtocolError::InvalidUtf8 => "invalid utf-8",
            ProtocolError::MessageTooLong { .. } => "message too big",
            ProtocolError::CloseFrameTooShort => "close frame too short",
            ProtocolError::InvalidCloseCode(_) => "invalid close code",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::ReservedBitsSet { rsv } => write!(f, "reserved bits set: {rsv:#05b}"),
            ProtocolError::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            ProtocolError::ControlFrameTooLong { len } => {
                write!(f, "control frame of {len} bytes (max 125)")
            }
            ProtocolError::MessageTooLong { size, max } => {
                write!(f, "message of {size} bytes exceeds the maximum of {max}")
            }
            ProtocolError::InvalidCloseCode(code) => write!(f, "invalid close code {code}"),
            other => f.write_str(other.reason()),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// An HTTP status the server answers a request with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    LengthRequired,
    PayloadTooLarge,
    UpgradeRequired,
    TooManyRequests,
    HeadersTooLarge,
    ServiceUnavailable,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::LengthRequired => 411,
            Status::PayloadTooLarge => 413,
            Status::UpgradeRequired => 426,
            Status::TooManyRequests => 429,
            Status::HeadersTooLarge => 431,
            Status::ServiceUnavailable => 503,
        }
    }

    pub fn reason_phrase(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::Unauthorized => "Unauthorized",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::LengthRequired => "Length Required",
            Status::PayloadTooLarge => "Content Too Large",
            Status::UpgradeRequired => "Upgrade Required",
            Status::TooManyRequests => "Too Many Requests",
            Status::HeadersTooLarge => "Request Header Fields Too Large",
            Status::ServiceUnavailable => "Service Unavailable",
        }
    }
}

/// Why an opening handshake cannot be accepted as a WebSocket upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// The bytes are not an HTTP/1.x request (httparse's complaint).
    MalformedRequest(&'static str),
    /// The request head grew past the configured cap before it was complete.
    HeadersTooLarge { max: usize },
    /// More header fields than the parser keeps room for.
    TooManyHeaders,
    /// RFC 6455 §4.2.1 (1): the method MUST be GET.
    MethodNotGet,
    /// RFC 6455 §4.2.1 (1): HTTP/1.1 or higher.
    HttpVersionTooOld,
    /// RFC 6455 §4.2.1 (2): a Host header field.
    MissingHost,
    /// RFC 6455 §4.2.1 (3): `Upgrade` must list the `websocket` token.
    UpgradeNotWebsocket,
    /// RFC 6455 §4.2.1 (4): `Connection` must list the `upgrade` token.
    ConnectionNotUpgrade,
    /// RFC 6455 §4.2.1 (5): `Sec-WebSocket-Key` must be base64 of exactly 16 bytes.
    InvalidKey,
    /// RFC 6455 §4.2.1 (6): `Sec-WebSocket-Version` must be 13 (§4.4: answer 426).
    UnsupportedVersion,
}

impl HandshakeError {
    /// The one mapping from a handshake error to the HTTP status the client gets.
    pub fn status(&self) -> Status {
        match self {
            HandshakeError::HeadersTooLarge { .. } | HandshakeError::TooManyHeaders => {
                Status::HeadersTooLarge
            }
            HandshakeError::UnsupportedVersion => Status::UpgradeRequired,
            HandshakeError::MalformedRequest(_)
            | HandshakeError::MethodNotGet
            | HandshakeError::HttpVersionTooOld
            | HandshakeError::MissingHost
            | HandshakeError::UpgradeNotWebsocket
            | HandshakeError::ConnectionNotUpgrade
            | HandshakeError::InvalidKey => Status::BadRequest,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::MalformedRequest(why) => write!(f, "malformed request: {why}"),
            HandshakeError::HeadersTooLarge { max } => {
                write!(f, "request headers exceed {max} bytes")
            }
            HandshakeError::TooManyHeaders => f.write_str("too many header fields"),
            HandshakeError::MethodNotGet => f.write_str("method must be GET"),
            HandshakeError::HttpVersionTooOld => f.write_str("HTTP/1.1 or later required"),
            HandshakeError::MissingHost => f.write_str("missing Host header"),
            HandshakeError::UpgradeNotWebsocket => f.write_str("Upgrade must be websocket"),
            HandshakeError::ConnectionNotUpgrade => f.write_str("Connection must include upgrade"),
            HandshakeError::InvalidKey => {
                f.write_str("Sec-WebSocket-Key must be base64 of 16 bytes")
            }
            HandshakeError::UnsupportedVersion => f.write_str("Sec-WebSocket-Version must be 13"),
        }
    }
}

impl std::error::Error for HandshakeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_code_validity_follows_rfc_7_4() {
        for ok in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(CloseCode(ok).is_valid_on_wire(), "{ok} should be valid");
        }
        for bad in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(
                !CloseCode(bad).is_valid_on_wire(),
                "{bad} should be invalid"
            );
        }
    }

    #[test]
    fn protocol_errors_map_to_1002_1007_1009() {
        assert_eq!(ProtocolError::InvalidUtf8.close_code(), CloseCode(1007));
        let big = ProtocolError::MessageTooLong { size: 10, max: 1 };
        assert_eq!(big.close_code(), CloseCode(1009));
        assert_eq!(
            ProtocolError::UnmaskedClientFrame.close_code(),
            CloseCode(1002)
        );
        assert_eq!(
            ProtocolError::InvalidCloseCode(5).close_code(),
            CloseCode(1002)
        );
    }

    #[test]
    fn handshake_errors_map_to_statuses() {
        assert_eq!(HandshakeError::UnsupportedVersion.status().code(), 426);
        assert_eq!(
            HandshakeError::HeadersTooLarge { max: 1 }.status().code(),
            431
        );
        assert_eq!(HandshakeError::TooManyHeaders.status().code(), 431);
        assert_eq!(HandshakeError::InvalidKey.status().code(), 400);
    }
}
