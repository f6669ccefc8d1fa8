//! Frame headers (RFC 6455 §5.2): parse and format, with every structural rule checked as
//! early as the bytes allow. No payload handling here; see [`super::message`].

use super::error::ProtocolError;

/// The longest header: 2 bytes + 8 bytes of extended length + 4 bytes of mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// The largest payload a control frame may carry (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Frame opcodes (RFC 6455 §5.2). Reserved values are rejected at parse time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    pub fn from_u8(bits: u8) -> Result<OpCode, ProtocolError> {
        Ok(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => return Err(ProtocolError::ReservedOpcode(other)),
        })
    }

    /// Control frames have the high bit of the opcode set (RFC 6455 §5.5).
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// What the receiving side enforces while parsing.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// RSV bits (as `0b0RRR`) that a negotiated extension gave meaning to.
    pub rsv_allowed: u8,
    /// A server requires masked frames (RFC 6455 §5.1); a client requires unmasked ones,
    /// which this crate does not check since the server never parses its own frames.
    pub require_mask: bool,
}

impl Rules {
    /// A server with no extensions negotiated.
    pub const SERVER: Rules = Rules {
        rsv_allowed: 0,
        require_mask: true,
    };
    /// A client reading server frames (used by the benchmark and tests).
    pub const CLIENT: Rules = Rules {
        rsv_allowed: 0,
        require_mask: false,
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1-3 as `0b0RRR` (RSV1 is 0b100).
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

impl FrameHeader {
    /// A final, unmasked frame as a server sends it.
    pub fn server(opcode: OpCode, payload_len: usize) -> FrameHeader {
        FrameHeader {
            fin: true,
            rsv: 0,
            opcode,
            mask: None,
            payload_len: payload_len as u64,
        }
    }

    /// Parses the header at the start of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds only part of a header (at most
    /// [`MAX_HEADER_LEN`] - 1 bytes then need keeping), or the header and its length in
    /// bytes. Violations visible in the first two bytes are reported even when the rest of
    /// the header has not arrived yet, so a broken peer is cut off as early as possible.
    pub fn parse(buf: &[u8], rules: &Rules) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let Some(&b0) = buf.first() else {
            return Ok(None);
        };
        let opcode = OpCode::from_u8(b0 & 0x0F)?;
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0x07;
        if rsv & !rules.rsv_allowed != 0 {
            return Err(ProtocolError::ReservedBitsSet { rsv });
        }
        if opcode.is_control() && !fin {
            return Err(ProtocolError::FragmentedControlFrame);
        }
        let Some(&b1) = buf.get(1) else {
            return Ok(None);
        };
        let masked = b1 & 0x80 != 0;
        if rules.require_mask && !masked {
            return Err(ProtocolError::UnmaskedClientFrame);
        }
        let len7 = b1 & 0x7F;
        if opcode.is_control() && len7 > MAX_CONTROL_PAYLOAD as u8 {
            // 126 and 127 announce an extended length, which no control frame may have.
            return Err(ProtocolError::ControlFrameTooLong {
                len: u64::from(len7),
            });
        }
        let (payload_len, mut at) = match len7 {
            126 => {
                let Some(ext) = buf.get(2..4) else {
                    return Ok(None);
                };
                (u64::from(u16::from_be_bytes([ext[0], ext[1]])), 4)
            }
            127 => {
                let Some(ext) = buf.get(2..10) else {
                    return Ok(None);
                };
                let mut b = [0u8; 8];
                b.copy_from_slice(ext);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(ProtocolError::LengthTopBitSet);
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = if masked {
            let Some(key) = buf.get(at..at + 4) else {
                return Ok(None);
            };
            at += 4;
            Some([key[0], key[1], key[2], key[3]])
        } else {
            None
        };
        Ok(Some((
            FrameHeader {
                fin,
                rsv,
                opcode,
                mask,
                payload_len,
            },
            at,
        )))
    }

    /// Formats the header into `out`, choosing the shortest length form (RFC 6455 §5.2
    /// requires the minimal encoding), and returns how many bytes it used.
    pub fn format(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (u8::from(self.fin) << 7) | ((self.rsv & 0x07) << 4) | self.opcode as u8;
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut at = match self.payload_len {
            n @ 0..=125 => {
                out[1] = mask_bit | n as u8;
                2
            }
            n @ 126..=0xFFFF => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(n as u16).to_be_bytes());
                4
            }
            n => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&n.to_be_bytes());
                10
            }
        };
        if let Some(key) = self.mask {
            out[at..at + 4].copy_from_slice(&key);
            at += 4;
        }
        at
    }

    /// The length of the header [`FrameHeader::format`] would write.
    pub fn len(&self) -> usize {
        let ext = match self.payload_len {
            0..=125 => 0,
            126..=0xFFFF => 2,
            _ => 8,
        };
        2 + ext + if self.mask.is_some() { 4 } else { 0 }
    }

    /// Whether the header is empty: never, a header is at least two bytes.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        FrameHeader::parse(bytes, &Rules::SERVER)
    }

    #[test]
    fn rfc_5_7_single_frame_unmasked_text() {
        let bytes = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let (h, n) = FrameHeader::parse(&bytes, &Rules::CLIENT).unwrap().unwrap();
        assert_eq!(n, 2);
        assert_eq!(h, FrameHeader::server(OpCode::Text, 5));
        let mut out = [0u8; MAX_HEADER_LEN];
        assert_eq!(h.format(&mut out), 2);
        assert_eq!(&out[..2], &bytes[..2]);
    }

    #[test]
    fn rfc_5_7_single_frame_masked_text() {
        let bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (h, n) = parse(&bytes).unwrap().unwrap();
        assert_eq!(n, 6);
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(h.payload_len, 5);
    }

    #[test]
    fn rfc_5_7_fragmented_unmasked_text() {
        let first = [0x01, 0x03, 0x48, 0x65, 0x6c];
        let last = [0x80, 0x02, 0x6c, 0x6f];
        let (h1, _) = FrameHeader::parse(&first, &Rules::CLIENT).unwrap().unwrap();
        let (h2, _) = FrameHeader::parse(&last, &Rules::CLIENT).unwrap().unwrap();
        assert!(!h1.fin && h1.opcode == OpCode::Text && h1.payload_len == 3);
        assert!(h2.fin && h2.opcode == OpCode::Continuation && h2.payload_len == 2);
    }

    #[test]
    fn rfc_5_7_ping_and_masked_pong() {
        let ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let (h, _) = FrameHeader::parse(&ping, &Rules::CLIENT).unwrap().unwrap();
        assert_eq!(h.opcode, OpCode::Ping);
        let pong = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (h, _) = parse(&pong).unwrap().unwrap();
        assert_eq!(h.opcode, OpCode::Pong);
    }

    #[test]
    fn rfc_5_7_256_bytes_and_64_kib_binary() {
        let (h, n) = FrameHeader::parse(&[0x82, 0x7E, 0x01, 0x00], &Rules::CLIENT)
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, n), (256, 4));
        let bytes = [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0];
        let (h, n) = FrameHeader::parse(&bytes, &Rules::CLIENT).unwrap().unwrap();
        assert_eq!((h.payload_len, n), (65536, 10));
        let mut out = [0u8; MAX_HEADER_LEN];
        assert_eq!(h.format(&mut out), 10);
        assert_eq!(&out[..10], &bytes);
    }

    #[test]
    fn partial_headers_need_more() {
        let full = [0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4];
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(parse(&full).unwrap().is_some());
    }

    #[test]
    fn rejects_rsv_bits_without_extension() {
        for rsv in 1..8u8 {
            let b0 = 0x81 | (rsv << 4);
            assert_eq!(parse(&[b0]), Err(ProtocolError::ReservedBitsSet { rsv }));
        }
        let deflate = Rules {
            rsv_allowed: 0b100,
            require_mask: true,
        };
        assert!(FrameHeader::parse(&[0xC1, 0x80, 0, 0, 0, 0], &deflate).is_ok());
    }

    #[test]
    fn rejects_reserved_opcodes() {
        for op in [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(parse(&[0x80 | op]), Err(ProtocolError::ReservedOpcode(op)));
        }
    }

    #[test]
    fn rejects_long_control_frames() {
        for len7 in [126u8, 127] {
            let got = parse(&[0x89, 0x80 | len7]);
            assert_eq!(
                got,
                Err(ProtocolError::ControlFrameTooLong {
                    len: u64::from(len7)
                })
            );
        }
        assert!(parse(&[0x89, 0x80 | 125, 0, 0, 0, 0]).unwrap().is_some());
    }

    #[test]
    fn rejects_fragmented_control_frames() {
        for op in [0x8, 0x9, 0xA] {
            assert_eq!(parse(&[op]), Err(ProtocolError::FragmentedControlFrame));
        }
    }

    #[test]
    fn rejects_unmasked_client_frames() {
        assert_eq!(
            parse(&[0x81, 0x05]),
            Err(ProtocolError::UnmaskedClientFrame)
        );
    }

    #[test]
    fn rejects_64_bit_length_with_top_bit() {
        let bytes = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse(&bytes), Err(ProtocolError::LengthTopBitSet));
    }

    #[test]
    fn format_roundtrips_every_length_form() {
        for len in [0u64, 1, 125, 126, 127, 0xFFFF, 0x1_0000, u64::MAX >> 1] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let h = FrameHeader {
                    fin: len % 2 == 0,
                    rsv: 0,
                    opcode: OpCode::Binary,
                    mask,
                    payload_len: len,
                };
                let mut out = [0u8; MAX_HEADER_LEN];
                let n = h.format(&mut out);
                assert_eq!(n, h.len());
                let rules = Rules {
                    rsv_allowed: 0,
                    require_mask: false,
                };
                assert_eq!(FrameHeader::parse(&out[..n], &rules), Ok(Some((h, n))));
            }
        }
    }
}
