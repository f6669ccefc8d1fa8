//! Message assembly (RFC 6455 §5.4-§5.6): frames in, events out.
//!
//! # The caller's buffer contract
//!
//! [`Decoder::decode`] is handed the bytes received so far and returns how many it
//! consumed plus at most one [`Event`]. The caller calls again with the unconsumed rest
//! until a call consumes nothing and yields no event; whatever is then left (a partial frame
//! header, or a control frame not yet complete: never more than [`MAX_TAIL`] bytes) must be
//! presented again, followed by the next bytes received. Data-frame payloads never need
//! keeping: they are unmasked into the decoder's message buffer as they arrive.
//!
//! An unfragmented data frame whose payload is entirely in the input is unmasked in place
//! and handed back borrowed, with no copy (the common case); only fragmented messages and
//! frames split across reads are assembled in a buffer, which is allocated when such a
//! message starts and handed out (moved, not copied) when it completes. An idle decoder
//! owns no heap memory.

use std::borrow::Cow;

use super::error::{CloseCode, ProtocolError};
use super::frame::{FrameHeader, OpCode, Rules, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use super::mask::apply_mask;

/// The most bytes a caller ever has to keep between calls: one whole control frame.
pub const MAX_TAIL: usize = MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD;

/// What the decoder enforces.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest message, summed over its fragments, in bytes.
    pub max_message: usize,
    pub rules: Rules,
}

impl Limits {
    pub fn server(max_message: usize) -> Limits {
        Limits {
            max_message,
            rules: Rules::SERVER,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    Text,
    Binary,
}

impl MessageKind {
    pub fn opcode(self) -> OpCode {
        match self {
            MessageKind::Text => OpCode::Text,
            MessageKind::Binary => OpCode::Binary,
        }
    }
}

/// A close frame's payload, validated (RFC 6455 §5.5.1, §7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    pub code: CloseCode,
    pub reason: &'a str,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete message. Text payloads are valid UTF-8, unless `compressed` (RSV1 on
    /// its first frame, permessage-deflate): then the payload is DEFLATE data, to be
    /// inflated and checked by the caller.
    Message {
        kind: MessageKind,
        payload: Cow<'a, [u8]>,
        compressed: bool,
    },
    /// The caller must answer with a pong carrying the same payload (RFC 6455 §5.5.2):
    /// [`Event::reply`] builds it.
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// The peer started (or answered) the closing handshake. `None`: no status code.
    /// After this the decoder discards everything (RFC 6455 §5.5.1).
    Close(Option<CloseFrame<'a>>),
}

impl Event<'_> {
    /// The frame this event obliges the server to send, appended to `out`: a pong for a
    /// ping, the echoed close for a close (RFC 6455 §5.5.1: "typically echos the status
    /// code it received"; the reason too, as browsers' and tungstenite's peers do: the
    /// decoder checked it is valid UTF-8 and fits a control frame). Returns whether
    /// anything was written.
    pub fn reply(&self, out: &mut Vec<u8>) -> bool {
        match self {
            Event::Ping(payload) => {
                super::encode::write_frame(OpCode::Pong, payload, out);
                true
            }
            Event::Close(Some(frame)) => {
                super::encode::write_close(frame.code, frame.reason, out);
                true
            }
            Event::Close(None) => {
                super::encode::write_frame(OpCode::Close, &[], out);
                true
            }
            _ => false,
        }
    }
}

/// A data frame whose payload is still arriving.
#[derive(Clone, Copy, Debug)]
struct FrameInProgress {
    fin: bool,
    key: [u8; 4],
    /// Mask phase: payload bytes of this frame unmasked so far, mod 4.
    phase: u8,
    remaining: u64,
}

/// A message being assembled from fragments, or from one frame split across reads.
#[derive(Debug)]
struct Partial {
    kind: MessageKind,
    /// DEFLATE data (RSV1 on the first frame): UTF-8 is checked once inflated.
    compressed: bool,
    buf: Vec<u8>,
    /// `buf[..utf8_valid]` is known to be valid UTF-8; what follows is at most the first
    /// three bytes of a character whose rest has not arrived.
    utf8_valid: usize,
}

impl Partial {
    /// Validates what was appended since the last call. Fails as soon as a sequence is
    /// invalid, not only at the end of the message; a sequence cut at the end of the bytes
    /// so far is left for the next call (std's validator tells the two apart by
    /// `error_len`, and it rejects impossible prefixes such as `F4 90` at once).
    fn check_utf8(&mut self) -> Result<(), ProtocolError> {
        if self.kind != MessageKind::Text || self.compressed {
            return Ok(());
        }
        match std::str::from_utf8(&self.buf[self.utf8_valid..]) {
            Ok(_) => self.utf8_valid = self.buf.len(),
            Err(e) if e.error_len().is_none() => self.utf8_valid += e.valid_up_to(),
            Err(_) => return Err(ProtocolError::InvalidUtf8),
        }
        Ok(())
    }
}

/// Per-connection decoding state: 32 bytes, and no heap memory while idle.
#[derive(Debug, Default)]
pub struct Decoder {
    frame: Option<FrameInProgress>,
    partial: Option<Box<Partial>>,
    closed: bool,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Whether a close frame has been received.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether the decoder holds a message in assembly (and so heap memory).
    pub fn is_assembling(&self) -> bool {
        self.partial.is_some()
    }

    /// Consumes bytes from the front of `input` (unmasking them in place) and returns how
    /// many, with at most one event. See the module docs for what to do with the rest.
    ///
    /// Cost: O(bytes consumed); an allocation only when a fragmented or split message
    /// starts, sized by its announced frame length after the size limit was checked.
    pub fn decode<'a>(
        &mut self,
        input: &'a mut [u8],
        limits: &Limits,
    ) -> Result<(usize, Option<Event<'a>>), ProtocolError> {
        if self.closed {
            // RFC 6455 §5.5.1: nothing after a close frame is data.
            return Ok((input.len(), None));
        }
        if let Some(frame) = self.frame {
            return self.continue_payload(frame, input);
        }
        let Some((header, head_len)) = FrameHeader::parse(input, &limits.rules)? else {
            return Ok((0, None));
        };
        // The parser already refused an unmasked frame where masking is required.
        let key = header.mask.unwrap_or([0; 4]);
        // RFC 7692 §6: the one RSV bit an extension may give meaning to (RSV1) marks the
        // first frame of a compressed message; on a control or continuation frame it is
        // still a violation.
        if header.rsv != 0 && (header.opcode.is_control() || header.opcode == OpCode::Continuation)
        {
            return Err(ProtocolError::ReservedBitsSet { rsv: header.rsv });
        }
        if header.opcode.is_control() {
            return self.control_frame(header, head_len, key, input);
        }
        self.start_data_frame(header, head_len, key, input, limits)
    }

    fn control_frame<'a>(
        &mut self,
        header: FrameHeader,
        head_len: usize,
        key: [u8; 4],
        input: &'a mut [u8],
    ) -> Result<(usize, Option<Event<'a>>), ProtocolError> {
        // Control payloads are at most 125 bytes (checked by the header parser), so the
        // whole frame is waited for rather than assembled.
        let total = head_len + header.payload_len as usize;
        let Some(frame) = input.get_mut(..total) else {
            return Ok((0, None));
        };
        let payload = &mut frame[head_len..];
        apply_mask(payload, key, 0);
        let payload: &'a [u8] = payload;
        let event = match header.opcode {
            OpCode::Ping => Event::Ping(payload),
            OpCode::Pong => Event::Pong(payload),
            _ => {
                let close = parse_close(payload)?;
                self.closed = true;
                self.frame = None;
                self.partial = None;
                Event::Close(close)
            }
        };
        Ok((total, Some(event)))
    }

    fn start_data_frame<'a>(
        &mut self,
        header: FrameHeader,
        head_len: usize,
        key: [u8; 4],
        input: &'a mut [u8],
        limits: &Limits,
    ) -> Result<(usize, Option<Event<'a>>), ProtocolError> {
        let kind = match (header.opcode, self.partial.is_some()) {
            (OpCode::Continuation, false) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Continuation, true) => None,
            (OpCode::Text, false) => Some(MessageKind::Text),
            (OpCode::Binary, false) => Some(MessageKind::Binary),
            _ => return Err(ProtocolError::ExpectedContinuation),
        };
        // The size limit is checked against the announced length before anything is
        // allocated or copied for this frame.
        let so_far = self.partial.as_ref().map_or(0, |p| p.buf.len()) as u64;
        let size = so_far.saturating_add(header.payload_len);
        if size > limits.max_message as u64 {
            return Err(ProtocolError::MessageTooLong {
                size,
                max: limits.max_message,
            });
        }
        let len = header.payload_len as usize;
        let compressed = header.rsv & 0b100 != 0;

        // Fast path: a whole unfragmented message is in the input. Unmask in place and
        // lend it out; no allocation, no copy.
        if let (Some(kind), true) = (kind, header.fin) {
            // (A length check rather than `get_mut`: a conditionally returned borrow
            // would outlive the `else` path under today's borrow checker.)
            if input.len() >= head_len + len {
                let payload = &mut input[head_len..head_len + len];
                apply_mask(payload, key, 0);
                let text = kind == MessageKind::Text && !compressed;
                if text && std::str::from_utf8(payload).is_err() {
                    return Err(ProtocolError::InvalidUtf8);
                }
                let payload: &'a [u8] = payload;
                let event = Event::Message {
                    kind,
                    payload: Cow::Borrowed(payload),
                    compressed,
                };
                return Ok((head_len + len, Some(event)));
            }
        }

        let partial = self.partial.get_or_insert_with(|| {
            Box::new(Partial {
                kind: kind.unwrap_or(MessageKind::Binary),
                compressed,
                buf: Vec::new(),
                utf8_valid: 0,
            })
        });
        // Reserve for this frame only: a fragmented message grows frame by frame, each
        // step already checked against the limit above.
        partial.buf.reserve(len);
        let frame = FrameInProgress {
            fin: header.fin,
            key,
            phase: 0,
            remaining: len as u64,
        };
        let (n, event) = self.continue_payload(frame, &mut input[head_len..])?;
        Ok((head_len + n, event))
    }

    fn continue_payload<'a>(
        &mut self,
        mut frame: FrameInProgress,
        input: &'a mut [u8],
    ) -> Result<(usize, Option<Event<'a>>), ProtocolError> {
        let Some(partial) = self.partial.as_mut() else {
            // A frame in progress always has a message to go into.
            self.frame = None;
            return Ok((0, None));
        };
        let n = input.len().min(frame.remaining as usize);
        let start = partial.buf.len();
        partial.buf.extend_from_slice(&input[..n]);
        frame.phase = apply_mask(&mut partial.buf[start..], frame.key, frame.phase.into()) as u8;
        frame.remaining -= n as u64;
        partial.check_utf8()?;
        if frame.remaining > 0 {
            self.frame = Some(frame);
            return Ok((n, None));
        }
        self.frame = None;
        if !frame.fin {
            return Ok((n, None));
        }
        let text = partial.kind == MessageKind::Text && !partial.compressed;
        if partial.utf8_valid != partial.buf.len() && text {
            // The message ended inside a character.
            return Err(ProtocolError::InvalidUtf8);
        }
        let Some(done) = self.partial.take() else {
            return Ok((n, None));
        };
        let Partial {
            kind,
            buf,
            compressed,
            ..
        } = *done;
        Ok((
            n,
            Some(Event::Message {
                kind,
                payload: Cow::Owned(buf),
                compressed,
            }),
        ))
    }
}

/// Drives `decoder` over a growable buffer: decodes everything complete in `pending`,
/// calls `on_event` for each event, and leaves only the bytes that must be kept (at most
/// [`MAX_TAIL`]) at the front of `pending`. The reference way to feed a decoder; the
/// reactors do the same over their own buffers.
pub fn decode_buffered(
    decoder: &mut Decoder,
    pending: &mut Vec<u8>,
    limits: &Limits,
    mut on_event: impl FnMut(Event<'_>),
) -> Result<(), ProtocolError> {
    let mut at = 0;
    let end = pending.len();
    loop {
        let (n, event) = decoder.decode(&mut pending[at..], limits)?;
        at += n;
        match event {
            Some(event) => on_event(event),
            None if n == 0 || at == end => break,
            None => {}
        }
    }
    pending.drain(..at);
    Ok(())
}

/// RFC 6455 §5.5.1, §7.4: empty, or a valid code followed by a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<CloseFrame<'_>>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::CloseFrameTooShort),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_valid_on_wire() {
                return Err(ProtocolError::InvalidCloseCode(code.0));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

#[cfg(test)]
mod tests;
