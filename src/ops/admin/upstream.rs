//! The admin port's leg to the main listener: an `/api/` request is passed to the shards
//! (they answer it) over a non-blocking connection, and their answer is read back no
//! faster than the admin client takes it.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Where the leg is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leg {
    /// The connect is in flight (`EINPROGRESS`).
    Connecting,
    /// `sent` bytes of the request are written.
    Sending { sent: usize },
    /// The request is written; the answer is read until the main listener closes.
    Receiving,
}

/// What one [`Upstream::pump`] came to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pumped {
    /// More to do when the socket is ready ([`Upstream::interest`]).
    Pending,
    /// The main listener sent its whole answer and closed.
    Done,
}

/// A request on its way through the main listener.
#[derive(Debug)]
pub(super) struct Upstream {
    sock: Socket,
    leg: Leg,
}

impl Upstream {
    /// Starts a non-blocking connect to `main`. A refusal that is known at once (a
    /// draining node's main listener is closed) is an error here.
    pub(super) fn connect(main: SocketAddr) -> io::Result<Upstream> {
        let sock = Socket::new(Domain::for_address(main), Type::STREAM, Some(Protocol::TCP))?;
        sock.set_nonblocking(true)?;
        sock.set_nodelay(true)?;
        match sock.connect(&main.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(Upstream {
            sock,
            leg: Leg::Connecting,
        })
    }

    /// Whether the connect is still in flight (a failure then means the main listener
    /// is closed, not that it dropped a request).
    pub(super) fn connecting(&self) -> bool {
        self.leg == Leg::Connecting
    }

    /// The descriptor and the `poll` events the leg waits for (0: nothing now; `room`
    /// is how much more of the answer the caller will hold).
    pub(super) fn interest(&self, room: usize) -> (RawFd, i16) {
        let events = match self.leg {
            Leg::Connecting | Leg::Sending { .. } => libc::POLLOUT,
            Leg::Receiving if room > 0 => libc::POLLIN,
            Leg::Receiving => 0,
        };
        (self.sock.as_raw_fd(), events)
    }

    /// Moves the leg as far as it goes without blocking: completes the connect, writes
    /// `request`, and appends at most `room` bytes of the answer to `answer` (through
    /// `scratch`). O(bytes moved); a few syscalls.
    pub(super) fn pump(
        &mut self,
        request: &[u8],
        answer: &mut Vec<u8>,
        mut room: usize,
        scratch: &mut [u8],
    ) -> io::Result<Pumped> {
        if self.leg == Leg::Connecting {
            if let Some(e) = self.sock.take_error()? {
                return Err(e);
            }
            // Still in flight while the socket has no peer.
            match self.sock.peer_addr() {
                Ok(_) => self.leg = Leg::Sending { sent: 0 },
                Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return Ok(Pumped::Pending),
                Err(e) => return Err(e),
            }
        }
        while let Leg::Sending { sent } = self.leg {
            if sent == request.len() {
                self.leg = Leg::Receiving;
                break;
            }
            match (&self.sock).write(&request[sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.leg = Leg::Sending { sent: sent + n },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Pumped::Pending),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        while room > 0 {
            let want = room.min(scratch.len());
            match (&self.sock).read(&mut scratch[..want]) {
                Ok(0) => return Ok(Pumped::Done),
                Ok(n) => {
                    answer.extend_from_slice(&scratch[..n]);
                    room -= n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Pumped::Pending)
    }
}
