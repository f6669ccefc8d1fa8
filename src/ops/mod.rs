//! Operating the server: metrics, drain, and the admin endpoint.

pub mod admin;
pub mod drain;
pub mod metrics;
