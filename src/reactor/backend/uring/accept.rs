//! Accepting on a shard's listeners (the main one, and `--tls-listen`'s when set): a
//! multishot accept each, or [`ADDR_ACCEPTS`] single-shot accepts each when peer addresses
//! are needed; at the fixed-file limit, pending connections are refused and the
//! listeners polled until a slot frees. An accept's (and a poll's) generation bits name
//! its listener.

use std::os::fd::AsRawFd;
use std::time::Instant;

use io_uring::{cqueue, opcode};

use super::{Op, Uring, UserData};
use crate::reactor::Service;
use crate::sys::syscall;

/// Single-shot accepts kept armed per listener when peer addresses are needed.
pub const ADDR_ACCEPTS: usize = 16;

/// Where one single-shot accept writes its peer's address.
pub(super) struct AddrSlot {
    pub(super) addr: libc::sockaddr_storage,
    pub(super) len: libc::socklen_t,
    pub(super) armed: bool,
}

impl<S: Service> Uring<S> {
    /// Arms every listener's accepts.
    pub(super) fn arm_accept(&mut self) {
        for k in 0..self.listeners.len() {
            self.arm_listener(k);
        }
    }

    fn arm_listener(&mut self, k: usize) {
        if !self.addrs.is_empty() {
            for i in k * ADDR_ACCEPTS..(k + 1) * ADDR_ACCEPTS {
                self.arm_addr_accept(i);
            }
            return;
        }
        let fd = io_uring::types::Fd(self.listeners[k].0.as_raw_fd());
        let entry = opcode::AcceptMulti::new(fd)
            .allocate_file_index(true)
            .build()
            .user_data(UserData::new(Op::Accept, 0, k as u32).0);
        self.push(entry);
    }

    /// A single-shot accept that writes its peer into address buffer `i` (listener
    /// `i / ADDR_ACCEPTS`).
    fn arm_addr_accept(&mut self, i: usize) {
        let k = i / ADDR_ACCEPTS;
        let fd = io_uring::types::Fd(self.listeners[k].0.as_raw_fd());
        let slot = &mut self.addrs[i];
        if slot.armed {
            return;
        }
        slot.armed = true;
        slot.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let entry = opcode::Accept::new(fd, (&raw mut slot.addr).cast(), &raw mut slot.len)
            .file_index(Some(io_uring::types::DestinationSlot::auto_target()))
            .build()
            .user_data(UserData::new(Op::Accept, i, k as u32).0);
        self.push(entry);
    }

    pub(super) fn on_accept(&mut self, ud: UserData, res: i32, flags: u32) {
        let single = !self.addrs.is_empty();
        let k = (ud.gen() as usize).min(self.listeners.len() - 1);
        // Multishot accepts have no address buffer (`addrs` is empty).
        if let Some(a) = self.addrs.get_mut(ud.slot()) {
            a.armed = false;
        }
        if res >= 0 {
            if self.at_limit {
                self.at_limit = false;
                tracing::info!("accepting again: fixed-file slots available");
            }
            let peer = self
                .addrs
                .get(ud.slot())
                .and_then(|a| crate::sys::peer_addr(&a.addr, a.len));
            let tls = self.listeners[k].1;
            let (slot, _) = self.core.insert(res as u32, peer, Instant::now(), tls);
            self.arm_recv(slot);
        } else {
            let errno = -res;
            match errno {
                libc::ENFILE | libc::EMFILE | libc::ENOMEM | libc::ENOBUFS => self.hit_limit(errno),
                libc::ECANCELED => return,
                // The listener was shut down: a drain began. Accept no more.
                _ if self.core.draining() => return,
                _ => tracing::warn!(errno, "accept failed"),
            }
        }
        if self.at_limit || self.core.draining() {
            return;
        }
        if single {
            self.arm_addr_accept(ud.slot());
        } else if !cqueue::more(flags) {
            self.arm_listener(k);
        }
    }

    /// The fixed-file table (or memory) is exhausted. Log once per episode, refuse what
    /// waits in the backlogs, and watch the listeners until a slot frees up.
    fn hit_limit(&mut self, errno: i32) {
        if !self.at_limit {
            self.at_limit = true;
            tracing::warn!(
                limit = crate::sys::errno_name(errno),
                open = self.core.len(),
                table = self.fixed_files,
                "out of descriptors: refusing new connections until some close"
            );
            for k in 0..self.listeners.len() {
                self.refuse_backlog(k);
                self.arm_listener_poll(k);
            }
        }
    }

    /// Accepts listener `k`'s pending connections with plain descriptors and closes them
    /// at once: the clients see a refusal instead of hanging in the backlog.
    fn refuse_backlog(&mut self, k: usize) {
        let fd = self.listeners[k].0.as_raw_fd();
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        loop {
            // SAFETY: null address pointers ask for no peer address; the listener is ours.
            let accepted = unsafe {
                syscall!(accept4(
                    fd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    flags
                ))
            };
            let Ok(c) = accepted else { break };
            crate::sys::close_fd(c);
        }
    }

    fn arm_listener_poll(&mut self, k: usize) {
        let fd = io_uring::types::Fd(self.listeners[k].0.as_raw_fd());
        let entry = opcode::PollAdd::new(fd, libc::POLLIN as u32)
            .build()
            .user_data(UserData::new(Op::ListenerPoll, 0, k as u32).0);
        self.push(entry);
    }

    pub(super) fn on_listener_ready(&mut self, k: usize) {
        if !self.at_limit || k >= self.listeners.len() {
            return;
        }
        self.refuse_backlog(k);
        self.arm_listener_poll(k);
    }

    /// A slot freed up: if accepting was stopped, start again.
    pub(super) fn slot_freed(&mut self) {
        if self.at_limit {
            self.at_limit = false;
            tracing::info!("accepting again: fixed-file slots available");
            self.arm_accept();
        }
    }
}
