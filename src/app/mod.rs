//! The application layer: the JSON client protocol on `/ws`, and (later) authorization
//! and per-message limits. It glues connections to rooms; it does no I/O itself.

pub mod ops;
