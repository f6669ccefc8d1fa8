//! roomcast: a high-density WebSocket server for rooms and broadcast.
//!
//! Layers, with dependencies pointing one way: [`protocol`] is sans-IO RFC 6455 and uses
//! nothing that does I/O; [`reactor`] runs the shards and is the only place with syscalls;
//! [`rooms`] is pure data; [`mesh`] carries messages between shards; [`app`] is the
//! client protocol; [`config`] holds the validated settings.
//!
//! `unsafe` lives in [`sys`] and [`reactor::backend`] only (the crate denies it everywhere
//! else), and every `unsafe` block says why it holds in a `// SAFETY:` note, which clippy
//! checks.

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

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
#[allow(unsafe_code)]
pub mod sys;
