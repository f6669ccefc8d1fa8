//! roomcast: a high-density WebSocket server for rooms and broadcast.
//!
//! Layers, with dependencies pointing one way (see `DESIGN.md` in the project docs):
//! [`protocol`] is sans-IO RFC 6455 and uses nothing that does I/O.

pub mod protocol;
