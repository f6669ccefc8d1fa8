//! RFC 6455, sans-IO: bytes in, decisions and bytes out. Nothing here touches a socket, a
//! thread or a clock, so the io_uring and epoll reactors drive the same code and a fuzzer
//! can hammer it. No `unsafe` (enforced by `#![forbid(unsafe_code)]` on this module).
//!
//! - [`handshake`]: the opening handshake, request in, response out.
//! - [`frame`]: frame headers, parsed and formatted.
//! - [`mask`]: client masking, word at a time.
//! - [`message`]: reassembly, UTF-8, control frames, close codes: frames in, events out.
//! - [`encode`]: server frames, and the shared frame every recipient of a broadcast sends.
//! - [`deflate`]: RFC 7692 permessage-deflate: the offer answered, messages compressed and
//!   inflated.
//! - [`error`]: violations named after the rule broken, and their one mapping to close
//!   codes and HTTP statuses.
#![forbid(unsafe_code)]

pub mod deflate;
pub mod encode;
pub mod error;
pub mod frame;
pub mod fuzz;
pub mod handshake;
pub mod mask;
pub mod message;

pub use encode::SharedFrame;
pub use error::{CloseCode, HandshakeError, ProtocolError, Status};
pub use frame::{FrameHeader, OpCode, Rules};
pub use message::{CloseFrame, Decoder, Event, Limits, MessageKind};
