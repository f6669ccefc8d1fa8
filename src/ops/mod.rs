//! Operating the server: metrics, drain, the admin endpoint, `roomcast check` and `roomcast plan`.

pub mod admin;
pub mod check;
pub mod drain;
pub mod metrics;
pub mod plan;
