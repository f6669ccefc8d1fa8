//! The admin port's thread: one `poll(2)` loop over the listener and every connection
//! (and the main-listener legs of `/api/` requests), with a deadline per connection and a
//! cap on how many there are. Whatever one client does (stay silent, trickle a head,
//! announce a GiB body, never read its answer), the others are served on the next turn:
//! nothing here blocks but `poll`.
//!
//! `poll` rather than epoll: the set is at most [`MAX_CONNS`] (and as many legs), rebuilt
//! each turn in O(connections); the port serves probes and scrapes, not the clients.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::reactor::stats::SharedStats;
use crate::reactor::Drain;
use crate::sys;

use super::conn::{Conn, Env, Step};
use super::{Info, Limits};

/// The most connections the port holds. One more is still accepted, and the oldest
/// (so the slowest: every phase has a deadline) is dropped for it: the listener never
/// stops taking connections, so a probe is never left in the backlog behind idle ones.
pub const MAX_CONNS: usize = 1024;
/// The listen backlog: a burst of connections waits here for the next turn.
const BACKLOG: i32 = 1024;
/// Connections accepted per turn, so that a flood of them does not hold up the answers
/// of those already in.
const ACCEPT_BATCH: usize = 128;
/// How long accepting waits after the process ran out of descriptors with nothing of
/// its own to drop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Read buffer shared by every connection: a connection holds only what it has read.
const SCRATCH: usize = 64 << 10;
/// `SO_SNDBUF` of an admin connection (the kernel doubles it). Without it, the kernel's
/// autotuning lets the send queue of a client that never reads grow to `tcp_wmem`'s
/// maximum (4 MB by default, reached even on loopback): 1,024 of them could pin
/// gigabytes of kernel memory. An answer past it waits in the connection's own buffer.
pub const SEND_BUFFER: usize = 32 << 10;

/// Binds `addr` and serves the endpoints on a thread of their own; `/api/` requests are
/// passed to the main listener at `main` (the shards answer them).
pub fn spawn(
    addr: SocketAddr,
    main: SocketAddr,
    stats: Arc<SharedStats>,
    drain: Arc<Drain>,
    info: Arc<Info>,
    limits: Limits,
) -> io::Result<SocketAddr> {
    let listener = bind(addr)?;
    let local = listener.local_addr()?;
    let mut main = main;
    if main.ip().is_unspecified() {
        main.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let env = Env {
        main,
        stats,
        drain,
        info,
        limits,
    };
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || Port::new(listener, env).run())?;
    Ok(local)
}

/// A non-blocking listener of its own (no `SO_REUSEPORT`: a second server on the same
/// admin address is refused, not handed half the probes).
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

struct Port {
    listener: TcpListener,
    env: Env,
    /// By accept order: the first is the oldest, the one dropped for a newcomer.
    conns: BTreeMap<u64, Conn>,
    next_id: u64,
    /// This turn's poll set: the listener first, then each connection's sockets that wait
    /// for something; `owner[i]` is the connection of `fds[i]`.
    fds: Vec<libc::pollfd>,
    owner: Vec<u64>,
    ready: Vec<u64>,
    scratch: Box<[u8]>,
    /// Accepting waits until then (the process is out of descriptors).
    accept_after: Option<Instant>,
    /// Connections dropped for newcomers (logged as they happen, at debug).
    evicted: u64,
}

impl Port {
    fn new(listener: TcpListener, env: Env) -> Port {
        Port {
            listener,
            env,
            conns: BTreeMap::new(),
            next_id: 0,
            fds: Vec::new(),
            owner: Vec::new(),
            ready: Vec::new(),
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            accept_after: None,
            evicted: 0,
        }
    }

    fn run(mut self) {
        loop {
            let now = Instant::now();
            self.expire(now);
            self.fill();
            let timeout = self.timeout(now);
            if let Err(e) = sys::poll(&mut self.fds, timeout) {
                tracing::warn!(error = %e, "admin port: poll failed");
                std::thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
            let now = Instant::now();
            self.ready.clear();
            for (fd, &id) in self.fds.iter().zip(&self.owner).skip(1) {
                // A connection with both sockets ready is driven once.
                if fd.revents != 0 && self.ready.last() != Some(&id) {
                    self.ready.push(id);
                }
            }
            let ready = std::mem::take(&mut self.ready);
            for &id in &ready {
                self.drive(id, now);
            }
            self.ready = ready;
            if self.fds[0].revents != 0 {
                self.accept(now);
            }
        }
    }

    /// Drives one connection and drops it if it is done. O(log connections) to find it.
    fn drive(&mut self, id: u64, now: Instant) {
        if let Some(conn) = self.conns.get_mut(&id) {
            if conn.drive(&self.env, &mut self.scratch, now) == Step::Close {
                self.conns.remove(&id);
            }
        }
    }

    /// Takes up to [`ACCEPT_BATCH`] new connections, each driven at once: a probe's
    /// request is usually there with its connection, and is answered in the same turn.
    fn accept(&mut self, now: Instant) {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let _ = SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
                    if self.conns.len() >= MAX_CONNS {
                        self.evict();
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    self.conns.insert(id, Conn::new(stream, now));
                    self.drive(id, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of descriptors: one of ours makes room, or accepting waits.
                    if self.conns.is_empty() {
                        tracing::warn!(error = %e, "admin port: cannot accept");
                        self.accept_after = Some(now + ACCEPT_BACKOFF);
                        return;
                    }
                    self.evict();
                }
                // The peer gave up while queued (ECONNABORTED), or a signal: next one.
                Err(_) => {}
            }
        }
    }

    /// Drops the oldest connection.
    fn evict(&mut self) {
        if self.conns.pop_first().is_some() {
            self.evicted += 1;
            tracing::debug!(
                evicted = self.evicted,
                "admin port: {MAX_CONNS} connections, the oldest dropped for a new one"
            );
        }
    }

    /// Acts on every passed deadline. O(connections).
    fn expire(&mut self, now: Instant) {
        self.conns
            .retain(|_, conn| conn.deadline() > now || conn.expire(now) == Step::Keep);
        if self.accept_after.is_some_and(|t| t <= now) {
            self.accept_after = None;
        }
    }

    /// Builds this turn's poll set. O(connections).
    fn fill(&mut self) {
        self.fds.clear();
        self.owner.clear();
        let listening = if self.accept_after.is_some() {
            -1 // poll skips a negative descriptor
        } else {
            self.listener.as_raw_fd()
        };
        self.fds.push(pollfd(listening, libc::POLLIN));
        self.owner.push(u64::MAX);
        for (&id, conn) in &self.conns {
            let (client, events, upstream) = conn.interest();
            if events != 0 {
                self.fds.push(pollfd(client, events));
                self.owner.push(id);
            }
            if let Some((fd, events)) = upstream.filter(|&(_, events)| events != 0) {
                self.fds.push(pollfd(fd, events));
                self.owner.push(id);
            }
        }
    }

    /// Until the nearest deadline, in milliseconds rounded up (so that the deadline has
    /// passed when poll returns); -1 (no limit) with nothing to time.
    fn timeout(&self, now: Instant) -> i32 {
        let nearest = self
            .conns
            .values()
            .map(Conn::deadline)
            .chain(self.accept_after)
            .min();
        match nearest {
            None => -1,
            Some(t) => {
                let wait = t.saturating_duration_since(now);
                let ms = wait.as_micros().div_ceil(1000);
                ms.min(i32::MAX as u128) as i32
            }
        }
    }
}

fn pollfd(fd: i32, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}
