//! Operating the server: metrics, drain, the admin endpoint, and `roomcast check`.

pub mod admin;
pub mod check;
pub mod drain;
pub mod metrics;
