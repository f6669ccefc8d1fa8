//! roomcast: a high-density WebSocket server for rooms and broadcast.
//!
//! Layers, with dependencies pointing one way: [`protocol`] is sans-IO RFC 6455 and uses
//! nothing that does I/O; [`reactor`] runs the shards and is the only place with syscalls;
//! [`rooms`] is pure data; [`mesh`] carries messages between shards; [`app`] is the
//! client protocol; [`config`] holds the validated settings.

pub mod app;
pub mod backplane;
pub mod config;
pub mod gather;
pub mod hooks;
pub mod mesh;
pub mod ops;
pub mod protocol;
pub mod reactor;
pub mod rooms;
pub mod server;
pub mod sys;
