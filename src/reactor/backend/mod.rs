//! The backends: one event loop per shard, over io_uring or epoll.
//!
//! # The backend contract
//!
//! A backend runs one shard: it owns one listener (`SO_REUSEPORT`, so the kernel spreads
//! new connections over shards) and the sockets it accepts, and drives the shared
//! connection logic in [`super::shard::Core`]:
//!
//! 1. Accepted socket → [`Core::insert`](super::shard::Core::insert); the returned slot and
//!    generation identify it in every later event, and a stale generation means the event
//!    belongs to a connection that is gone.
//! 2. Bytes received → [`Core::receive`](super::shard::Core::receive), on memory the backend
//!    may hand over mutably (the service may rewrite it: frames are unmasked in place). The
//!    backend must stop reading a connection whose [`flag::PAUSED`](super::conn::flag::PAUSED)
//!    is set and resume it when `Core` says so.
//! 3. Once per loop turn, before sleeping, everything queued for each connection on
//!    [`Core::flush`](super::shard::Core) goes out in one vectored send; a partial send is
//!    reported with [`Core::sent`](super::shard::Core::sent) and resumed later.
//! 4. End of stream, a socket error, or a close decided by `Core` → the backend stops all
//!    operations on the socket, closes it, and only then calls
//!    [`Core::remove`](super::shard::Core::remove): no slot is reused while the kernel may
//!    still write into its buffers.
//!
//! `epoll` is readiness-based and edge-triggered; `uring` is completion-based with
//! multishot accept and recv. Neither lets a single connection's failure reach another.
//! A backend uses `Core`'s API only: what the bytes mean, and which service runs, is not
//! its business (both are generic over the [`Service`](super::Service)).
//!
//! The syscalls themselves, and the process-level calls the rest of the program needs,
//! are in [`crate::sys`].

pub mod epoll;
pub mod uring;
