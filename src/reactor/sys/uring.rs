//! io_uring backend (in progress).
use crate::reactor::ShardSetup;
pub fn probe() -> Result<(), String> {
    Err("not built yet".into())
}
pub fn run(_setup: ShardSetup) -> std::io::Result<()> {
    Err(std::io::Error::other("uring"))
}
