//! Operating the server: metrics, the admin endpoints, `roomcast check` and `roomcast plan`.
//! It reads figures; the reactor does not call it.

pub mod admin;
pub mod capacity;
pub mod check;
pub mod metrics;
pub mod plan;
