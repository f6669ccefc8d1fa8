//! The bottom layer: the process-level syscalls (sockets and listeners, descriptor
//! limits, CPU affinity, signals, `poll`, the mesh's eventfd), each behind a safe
//! function, and [`syscall!`], through which every libc call goes. The reactor's backends
//! (`reactor::backend`) build their event loops on this layer and make their own loop's
//! calls (epoll, reads and writes, the buffer ring's mapping); the mesh and the backplane use its eventfd and `poll`. It imports nothing from the crate.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Calls a libc function, turning its `-1` into the thread's `errno`. Like mio's, the
/// macro is the one place libc is called, so every call site reads as a plain function
/// call. Unlike mio's, it does not hide the `unsafe`: the arguments are descriptors and
/// pointers only the call site can vouch for, so each call site wraps the macro in an
/// `unsafe` block of its own with a `// SAFETY:` note saying why they hold
/// (`clippy::undocumented_unsafe_blocks` holds every such block to it).
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        let res = libc::$fn($($arg, )*);
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}
// For `sys` and the reactor's backends: every libc call goes through here.
pub(crate) use syscall;

/// The peer address accept wrote into `storage`, if it wrote a usable one.
pub fn peer_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    if len == 0 {
        return None;
    }
    // SAFETY: accept wrote a socket address of `len` bytes into `storage`.
    let addr = unsafe { socket2::SockAddr::new(*storage, len) };
    addr.as_socket()
}

/// Fails if something already listens on `addr`. `SO_REUSEPORT` would otherwise let a
/// second server (a stale instance, say) silently share the port and take half of the
/// connections: a socket bound without it is refused while any listener holds the port.
///
/// A listener that is going away holds the port a little longer than its process: a killed
/// process's io_uring rings are torn down by a kernel worker some 10 ms after it is reaped.
/// So a taken port is probed again for up to [`PORT_WAIT`] before it counts as in use: a
/// supervisor that restarts a crashed server at once must not see it fail.
pub fn ensure_port_free(addr: SocketAddr) -> io::Result<()> {
    let deadline = std::time::Instant::now() + PORT_WAIT;
    loop {
        match probe_port(addr) {
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            done => return done,
        }
    }
}

/// How long [`ensure_port_free`] waits for a listener on its way out.
pub const PORT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

fn probe_port(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into()).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                e.kind(),
                format!("{addr} is already in use by another listener"),
            )
        } else {
            e
        }
    })
}

/// A non-blocking listener with `SO_REUSEPORT`, so that one per shard can bind the same
/// address and the kernel balances connections across them. `TCP_NODELAY` is set here
/// because accepted sockets inherit it: an io_uring accept into the fixed-file table has
/// no descriptor to set it on afterwards, and with Nagle on, a frame sent while the
/// previous one waits for the client's delayed ACK is held up to 40 ms.
pub fn listener(addr: SocketAddr, backlog: i32) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket)
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is a live cpu_set_t of `size` bytes that the kernel fills.
    if unsafe { syscall!(sched_getaffinity(0, size, &mut set)) }.is_err() {
        return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    }
    // SAFETY: `set` was filled by the kernel; CPU_ISSET only reads it.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: as above; CPU_SET writes within the set for cpu < CPU_SETSIZE.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: cpu is in range (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is an initialized cpu_set_t of the size given; the kernel only reads it.
    unsafe {
        syscall!(sched_setaffinity(
            0,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set
        ))
    }
    .map(drop)
}

/// CPU time the calling thread has used, in microseconds (its user and system time; not
/// the softirq the kernel ran on its CPU outside it). 0 if the clock cannot be read.
pub fn thread_cpu_micros() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a live timespec the kernel fills.
    match unsafe { syscall!(clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t)) } {
        Ok(_) => t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1_000,
        Err(_) => 0,
    }
}

/// `RLIMIT_NOFILE`: (soft, hard).
pub fn nofile_limit() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a live rlimit the kernel fills.
    match unsafe { syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut lim)) } {
        Ok(_) => (lim.rlim_cur, lim.rlim_max),
        Err(_) => (0, 0),
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a live rlimit the kernel fills.
    unsafe { syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut lim)) }?;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is an initialized rlimit the kernel only reads.
        unsafe { syscall!(setrlimit(libc::RLIMIT_NOFILE, &lim)) }?;
    }
    Ok(lim.rlim_cur)
}

/// Stops a listening socket from accepting (a drain began): pending connections are reset
/// and the shard waiting on it wakes.
pub fn stop_listening(fd: &OwnedFd) {
    // On a listening TCP socket SHUT_RD stops listening: accept fails from then on.
    // SAFETY: `fd` is borrowed from its owner, open for the call; no memory is passed.
    let _ = unsafe { syscall!(shutdown(fd.as_raw_fd(), libc::SHUT_RD)) };
}

/// An eventfd, written to wake the thread that polls it (the mesh's wake-ups).
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: no pointers; the new descriptor is taken over just below.
        let fd = unsafe { syscall!(eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)) }?;
        // SAFETY: eventfd returned a fresh descriptor that nothing else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Another descriptor of the same eventfd (for a poller that wants to own one).
    pub fn try_clone(&self) -> io::Result<OwnedFd> {
        self.0.try_clone()
    }

    /// Makes it readable. A full counter (EAGAIN) means a wake-up is already pending.
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: the descriptor is ours (self.0); the pointer is to 8 readable bytes.
        let _ = unsafe { syscall!(write(self.raw(), (&one as *const u64).cast(), 8)) };
    }

    /// Resets it after it became readable.
    pub fn consume(&self) {
        let mut buf = 0u64;
        // SAFETY: the descriptor is ours (self.0); the pointer is to 8 writable bytes.
        let _ = unsafe { syscall!(read(self.raw(), (&mut buf as *mut u64).cast(), 8)) };
    }
}

/// Whether `fd` is readable right now (a poll that does not wait).
pub fn readable(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd, as the count says; the kernel writes its revents.
    unsafe { syscall!(poll(&mut pfd, 1, 0)) }.is_ok_and(|n| n == 1)
}

/// Waits up to `timeout_ms` (-1: no limit) for any of `fds` to be ready (`poll(2)`); an
/// interrupted wait returns 0. For a thread that is not a shard (the backplane).
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: the pointer and count are those of a live, writable slice of pollfds.
    let polled = unsafe {
        syscall!(poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout_ms
        ))
    };
    match polled {
        Ok(n) => Ok(n as usize),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

/// A set of signals blocked in every thread and taken by one thread with [`Signals::wait`].
pub struct Signals(libc::sigset_t);

impl Signals {
    /// Blocks `signals` in the calling thread and the threads it starts: call it before
    /// starting any, so that only the thread calling [`Signals::wait`] takes them.
    pub fn block(signals: &[i32]) -> Signals {
        // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialize it and
        // pthread_sigmask only reads it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &sig in signals {
                libc::sigaddset(&mut set, sig);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Signals(set)
        }
    }

    /// Waits for one of the signals and returns it.
    pub fn wait(&self) -> i32 {
        loop {
            let mut sig = 0;
            // SAFETY: the set was initialized by block(); sigwait writes `sig`.
            if unsafe { libc::sigwait(&self.0, &mut sig) } == 0 {
                return sig;
            }
        }
    }
}

/// Closes a plain file descriptor, ignoring errors (there is nothing left to do with it).
pub fn close_fd(fd: i32) {
    // SAFETY: the caller owns `fd` and gives it up here (documented above); no memory.
    let _ = unsafe { syscall!(close(fd)) };
}

/// The errno of a negative io_uring result or a failed syscall, by name for logs.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EMFILE => "EMFILE (process descriptor limit, RLIMIT_NOFILE)",
        libc::ENFILE => "ENFILE (system descriptor limit, or io_uring fixed-file table full)",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOMEM => "ENOMEM",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let l = listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = l.local_addr().unwrap().as_socket().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let accepted = loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        };
        assert!(
            accepted.nodelay().unwrap(),
            "Nagle on for an accepted socket"
        );
        assert!(
            !client.nodelay().unwrap(),
            "the client's own setting is untouched"
        );
    }
}
