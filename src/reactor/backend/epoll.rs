//! The epoll backend: edge-triggered, one epoll instance per shard, reads into one
//! per-shard scratch buffer. Only what a connection cannot consume yet (a partial
//! handshake or frame header) is copied into that connection's own storage.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use crate::reactor::conn::flag;
use crate::reactor::shard::{Core, DrainStatus, Next};
use crate::reactor::{Service, ShardSetup};
use crate::sys::{self, syscall};

/// Token of the first listener in epoll's user data (the next one's is one more);
/// connections use `gen << 32 | slot`, with the generation under 2^28.
const LISTENER: u64 = u64::MAX - 8;
/// Token of the mesh eventfd: another shard has messages for us.
const WAKE: u64 = u64::MAX - 1;

/// Events per `epoll_wait`.
const EVENTS: usize = 1024;

/// Per-shard read buffer.
pub const SCRATCH: usize = 64 * 1024;

/// The most slices one `writev` carries (well under IOV_MAX).
const MAX_IOV: usize = 64;

/// Full scratch-sized reads one connection gets per turn (256 KiB). A client that sends
/// as fast as the shard parses would otherwise keep `read` looping forever on its socket:
/// edge-triggered, the shard reads until a short read, and on loopback a busy sender
/// refills the socket faster. Every other connection, the mesh and a drain would wait.
const READ_BUDGET: usize = 4;

struct Epoll<S: Service> {
    ep: OwnedFd,
    /// The main listener, then `--tls-listen`'s, and whether each speaks TLS.
    listeners: Vec<(socket2::Socket, bool)>,
    core: Core<S>,
    scratch: Box<[u8]>,
    /// A descriptor held in reserve so that at the fd limit a pending connection can
    /// still be accepted and closed, instead of waiting in the backlog (the classic
    /// trick): the client sees its connection refused, the server does not spin.
    reserve: Option<OwnedFd>,
    at_limit: bool,
    expired: Vec<usize>,
    /// Connections that used their read budget with bytes still waiting (slot, gen):
    /// edge-triggered, no new event comes for them, so the next turn reads them again.
    unread: Vec<(usize, u32)>,
    /// The previous turn's `unread`, being read this turn.
    reread: Vec<(usize, u32)>,
}

pub fn run<S: Service>(setup: ShardSetup<S>) -> io::Result<()> {
    // SAFETY: no pointers; the new descriptor is taken over just below.
    let ep = unsafe { syscall!(epoll_create1(libc::EPOLL_CLOEXEC)) }?;
    // SAFETY: epoll_create1 returned a fresh descriptor that nothing else owns.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    let mut lp = Epoll {
        ep,
        listeners: setup.listeners,
        core: Core::new(setup.service, setup.core),
        scratch: vec![0u8; SCRATCH].into_boxed_slice(),
        reserve: open_reserve(),
        at_limit: false,
        expired: Vec::new(),
        unread: Vec::new(),
        reread: Vec::new(),
    };
    // Every connection is a descriptor, so the process's limit bounds each shard's.
    lp.core.reserve_slots(setup.fixed_files as usize);
    for (k, (listener, _)) in lp.listeners.iter().enumerate() {
        lp.add(
            listener.as_raw_fd(),
            LISTENER + k as u64,
            libc::EPOLLIN as u32 | libc::EPOLLET as u32,
        )?;
    }
    let wake = lp.core.mesh().wake_fd();
    lp.add(wake, WAKE, libc::EPOLLIN as u32 | libc::EPOLLET as u32)?;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    loop {
        lp.core.mesh().flush();
        let busy = lp.core.has_flush() || !lp.unread.is_empty();
        let timeout = if busy || !lp.core.mesh().prepare_sleep() {
            0
        } else {
            lp.core
                .next_deadline(Instant::now())
                .map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as i32)
        };
        // SAFETY: `events` is a live, writable array of EVENTS epoll_events; the epoll
        // descriptor is ours.
        let waited = unsafe {
            syscall!(epoll_wait(
                lp.ep.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS as i32,
                timeout
            ))
        };
        let n = match waited {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        lp.core.mesh().awake();
        lp.core.begin_turn(Instant::now());
        lp.read_again();
        for ev in &events[..n] {
            let (token, bits) = (ev.u64, ev.events);
            if (LISTENER..LISTENER + 2).contains(&token) {
                lp.accept_all((token - LISTENER) as usize);
            } else if token == WAKE {
                lp.core.mesh().consume_wake();
            } else {
                lp.conn_event((token & 0xFFFF_FFFF) as usize, (token >> 32) as u32, bits);
            }
        }
        lp.core.end_turn();
        for (slot, next) in lp.core.take_actions() {
            lp.apply(slot, next);
        }
        let status = lp.expire();
        lp.flush();
        if status == DrainStatus::Done {
            tracing::info!(shard = lp.core.index(), "drained");
            return Ok(());
        }
    }
}

fn open_reserve() -> Option<OwnedFd> {
    // SAFETY: the path is a NUL-terminated C string literal; the descriptor is taken
    // over just below.
    let fd = unsafe {
        syscall!(open(
            c"/dev/null".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC
        ))
    }
    .ok()?;
    // SAFETY: open returned a fresh descriptor.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl<S: Service> Epoll<S> {
    fn add(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a live epoll_event the kernel copies; both descriptors are open
        // (the epoll one is ours, `fd` the caller's).
        unsafe {
            syscall!(epoll_ctl(
                self.ep.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd,
                &mut ev
            ))
        }
        .map(drop)
    }

    /// Accepts until listener `k`'s backlog is empty. Cost: one accept4 + one epoll_ctl
    /// per socket.
    fn accept_all(&mut self, k: usize) {
        let (listener, tls) = (self.listeners[k].0.as_raw_fd(), self.listeners[k].1);
        loop {
            let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
            // SAFETY: all-zero bytes are a valid sockaddr_storage.
            let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of_val(&addr) as libc::socklen_t;
            // SAFETY: `addr` is a live sockaddr_storage of `len` bytes, and `len` a live
            // socklen_t, both written by the kernel; the listener is ours.
            let accepted =
                unsafe { syscall!(accept4(listener, (&raw mut addr).cast(), &mut len, flags)) };
            let fd = match accepted {
                Ok(fd) => fd,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => return,
                    Some(libc::EINTR | libc::ECONNABORTED) => continue,
                    Some(errno @ (libc::EMFILE | libc::ENFILE)) => {
                        if !self.refuse_one(listener, errno) {
                            return;
                        }
                        continue;
                    }
                    // The listener was shut down: a drain began.
                    _ if self.core.draining() => return,
                    _ => {
                        tracing::warn!(error = %e, "accept failed");
                        return;
                    }
                },
            };
            if self.at_limit {
                self.at_limit = false;
                tracing::info!("accepting again: descriptors available");
            }
            let peer = sys::peer_addr(&addr, len);
            let (slot, gen) = self.core.insert(fd as u32, peer, Instant::now(), tls);
            let token = (u64::from(gen) << 32) | slot as u64;
            let interest =
                (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
            if let Err(e) = self.add(fd, token, interest) {
                tracing::warn!(error = %e, "epoll_ctl add failed");
                self.close(slot);
            }
        }
    }

    /// At the descriptor limit: accept one pending connection with the reserve
    /// descriptor and close it at once. Logs once per episode. Returns whether to go on.
    fn refuse_one(&mut self, listener: RawFd, errno: i32) -> bool {
        if !self.at_limit {
            self.at_limit = true;
            tracing::warn!(
                limit = sys::errno_name(errno),
                open = self.core.len(),
                "out of descriptors: refusing new connections until some close"
            );
        }
        let Some(reserve) = self.reserve.take() else {
            return false;
        };
        drop(reserve);
        // SAFETY: null address pointers ask for no peer address; the listener is ours.
        let fd = unsafe {
            syscall!(accept4(
                listener,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC
            ))
        };
        if let Ok(fd) = fd {
            sys::close_fd(fd);
        }
        self.reserve = open_reserve();
        fd.is_ok() && self.reserve.is_some()
    }

    fn conn_event(&mut self, slot: usize, gen: u32, bits: u32) {
        let Some(conn) = self.core.get(slot, gen) else {
            return;
        };
        if bits & libc::EPOLLOUT as u32 != 0 && !conn.out.is_empty() {
            self.core.queue_flush(slot);
        }
        let readable = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        if bits & readable != 0 {
            self.read(slot);
        }
    }

    /// Reads what connections left unread last turn, once each.
    fn read_again(&mut self) {
        std::mem::swap(&mut self.unread, &mut self.reread);
        let mut list = std::mem::take(&mut self.reread);
        for &(slot, gen) in &list {
            if let Some(conn) = self.core.get(slot, gen) {
                conn.clear(flag::UNREAD);
                self.read(slot);
            }
        }
        list.clear();
        self.reread = list;
    }

    /// Reads until the socket is drained, the connection pauses or goes away, or it has
    /// had its `READ_BUDGET` for this turn (then it is read again next turn).
    fn read(&mut self, slot: usize) {
        for _ in 0..READ_BUDGET {
            let Some(conn) = self.core.conn(slot) else {
                return;
            };
            if conn.has(flag::PAUSED) {
                return;
            }
            let fd = conn.io as RawFd;
            // SAFETY: the pointer and length are the scratch buffer's, live and writable;
            // `fd` is the connection's open socket.
            let got = unsafe {
                syscall!(read(
                    fd,
                    self.scratch.as_mut_ptr().cast(),
                    self.scratch.len()
                ))
            };
            let n = match got {
                Ok(0) => return self.close(slot),
                Ok(n) => n as usize,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(slot),
            };
            match self.core.receive(slot, &mut self.scratch[..n]) {
                Next::Close => return self.close(slot),
                Next::StopReading => return,
                _ => {}
            }
            if n < self.scratch.len() {
                // A short read drained the socket; edge-triggered, the next arrival
                // raises a new event.
                return;
            }
        }
        if let Some(conn) = self.core.conn(slot) {
            if !conn.has(flag::UNREAD) {
                conn.set(flag::UNREAD);
                self.unread.push((slot, conn.gen));
            }
        }
    }

    /// Carries out what the shard core asked for. Returns whether the connection is
    /// still readable.
    fn apply(&mut self, slot: usize, next: Next) -> bool {
        match next {
            Next::Nothing => true,
            Next::StopReading => false,
            Next::ResumeReading => {
                self.read(slot);
                false
            }
            Next::ShutdownWrite => {
                if let Some(conn) = self.core.conn(slot) {
                    // SAFETY: the connection's open socket; no memory is passed.
                    let _ = unsafe { syscall!(shutdown(conn.io as RawFd, libc::SHUT_WR)) };
                }
                // Linger: read (and drop) what the peer still sends, including what waited
                // while the connection was paused; edge-triggered, nothing else would.
                self.read(slot);
                false
            }
            Next::Close => {
                self.close(slot);
                false
            }
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(conn) = self.core.conn(slot) {
            // Closing removes it from the epoll set too.
            sys::close_fd(conn.io as RawFd);
            self.core.remove(slot);
        }
    }

    fn expire(&mut self) -> DrainStatus {
        let mut expired = std::mem::take(&mut self.expired);
        let status = self.core.expired(Instant::now(), &mut expired);
        for slot in expired.drain(..) {
            self.close(slot);
        }
        self.expired = expired;
        status
    }

    /// One writev per connection with something queued. Cost: one syscall per
    /// connection per turn, whatever the number of frames.
    fn flush(&mut self) {
        // Resuming a paused connection can queue more output; a few rounds settle it, and
        // anything left makes the next epoll_wait return at once.
        for _ in 0..4 {
            if !self.core.has_flush() {
                return;
            }
            let list = self.core.take_flush();
            for &slot in &list {
                self.flush_one(slot);
            }
            self.core.done_flushing(list);
        }
    }

    fn flush_one(&mut self, slot: usize) {
        let Some(fd) = self.core.conn(slot).map(|c| c.io as RawFd) else {
            return;
        };
        let mut iov = [io::IoSlice::new(&[]); MAX_IOV];
        let count = self.core.egress(slot, &mut iov);
        if count == 0 {
            return;
        }
        // SAFETY: IoSlice is ABI-compatible with iovec; the first `count` slices point at
        // frames egress() pinned in the out-ring, live for the call; `fd` is the
        // connection's open socket.
        let res = unsafe { syscall!(writev(fd, iov.as_ptr().cast(), count as i32)) };
        let total: usize = iov[..count].iter().map(|s| s.len()).sum();
        match res {
            Ok(n) => {
                self.core.cx.stats.sends += 1;
                let full = n as usize == total;
                if !full {
                    // The socket is full: the rest waits for EPOLLOUT, a later turn.
                    self.core.cx.stats.sends_deferred += 1;
                }
                let next = self.core.sent(slot, n as usize);
                self.apply(slot, next);
                // More frames than one writev carries: go again next turn.
                if full && count == MAX_IOV {
                    self.core.queue_flush(slot);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.core.cx.stats.sends_deferred += 1;
            }
            Err(_) => self.close(slot),
        }
    }
}
