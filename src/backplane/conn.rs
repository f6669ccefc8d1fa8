//! One connection to a Redis server: non-blocking, commands pipelined in one buffer and
//! written together, replies parsed as they arrive.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};

use super::resp::{self, Value};

/// Where a Redis server is: `redis://[[user]:password@]host[:port][/db]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or("a Redis URL starts with redis:// (TLS to Redis is not supported)")?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((hp, "")) => (hp, 0),
            Some((hp, db)) => (hp, db.parse().map_err(|_| "the /db is a number")?),
            None => (rest, 0),
        };
        // `[v6]:port`, `[v6]`, `host:port` or `host`.
        let (host, port) = match hostport.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((h, "")) => (h, None),
                Some((h, p)) => (h, Some(p.strip_prefix(':').ok_or("[host]:port")?)),
                None => return Err("an IPv6 host is written [host]".into()),
            },
            None => match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            },
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| "the port is a number")?,
            None => 6379,
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        let (user, password) = match auth.map(|a| a.split_once(':').unwrap_or(("", a))) {
            Some((u, p)) => ((!u.is_empty()).then(|| u.into()), Some(p.into())),
            None => (None, None),
        };
        Ok(Target {
            host: host.into(),
            port,
            user,
            password,
            db,
        })
    }
}

impl std::fmt::Display for Target {
    /// Host and port only: the password stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

pub struct Conn {
    stream: TcpStream,
    /// The connect has not completed yet: nothing is written until it has.
    connecting: bool,
    out: Vec<u8>,
    inp: Vec<u8>,
    /// What a read lands in first (allocated once: not zeroed per read).
    scratch: Box<[u8]>,
    /// Replies to the AUTH/SELECT sent at connect, skipped (an error among them is one).
    preamble: usize,
}

impl Conn {
    /// Starts connecting (without blocking: a host that does not answer must not stall
    /// the backplane's other servers; the caller gives up on a connection whose commands
    /// stay unanswered), and queues the login, the database and the connection's name
    /// `name` (what `CLIENT LIST` shows an operator). The host name is resolved here.
    pub fn connect(t: &Target, name: &str) -> io::Result<Conn> {
        let addr = (t.host.as_str(), t.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::other("the host has no address"))?;
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        sock.set_nonblocking(true)?;
        sock.set_nodelay(true)?;
        let connecting = match sock.connect(&addr.into()) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
            Err(e) => return Err(e),
        };
        let mut c = Conn {
            stream: sock.into(),
            connecting,
            out: Vec::new(),
            inp: Vec::new(),
            scratch: vec![0; 64 * 1024].into_boxed_slice(),
            preamble: 0,
        };
        if let Some(p) = &t.password {
            match &t.user {
                Some(u) => c.send(&[b"AUTH", u.as_bytes(), p.as_bytes()]),
                None => c.send(&[b"AUTH", p.as_bytes()]),
            }
            c.preamble += 1;
        }
        if t.db != 0 {
            c.send(&[b"SELECT", t.db.to_string().as_bytes()]);
            c.preamble += 1;
        }
        c.send(&[b"CLIENT", b"SETNAME", name.as_bytes()]);
        c.preamble += 1;
        Ok(c)
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Queues a command (written by [`Conn::write`]).
    pub fn send(&mut self, args: &[&[u8]]) {
        resp::command(args, &mut self.out);
    }

    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// Writes what is queued, as far as the socket takes it.
    pub fn write(&mut self) -> io::Result<()> {
        if self.connecting {
            if let Some(e) = self.stream.take_error()? {
                return Err(e);
            }
            match self.stream.peer_addr() {
                Ok(_) => self.connecting = false,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        let mut done = 0;
        while done < self.out.len() {
            match self.stream.write(&self.out[done..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.drain(..done);
        if self.out.is_empty() && self.out.capacity() > 1 << 20 {
            self.out = Vec::new();
        }
        Ok(())
    }

    /// Reads what has arrived and appends the complete replies to `into`. An error (or
    /// the server closing) means the connection is gone.
    pub fn read(&mut self, into: &mut Vec<Value>) -> io::Result<()> {
        loop {
            match self.stream.read(&mut self.scratch) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.inp.extend_from_slice(&self.scratch[..n]);
                    if n < self.scratch.len() {
                        // Drained (poll says so again if not): no EAGAIN read.
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut used = 0;
        while let Some((v, n)) = resp::parse(&self.inp[used..]).map_err(io::Error::other)? {
            used += n;
            if self.preamble > 0 {
                self.preamble -= 1;
                if let Value::Err(e) = v {
                    return Err(io::Error::other(format!("Redis refused AUTH/SELECT: {e}")));
                }
                continue;
            }
            into.push(v);
        }
        self.inp.drain(..used);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn urls() {
        let t = Target::parse("redis://127.0.0.1").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.db), ("127.0.0.1", 6379, 0));
        let t = Target::parse("redis://:s3cret@cache:7000/2").unwrap();
        assert_eq!(t.password.as_deref(), Some("s3cret"));
        assert_eq!(
            (t.host.as_str(), t.port, t.db, t.user),
            ("cache", 7000, 2, None)
        );
        let t = Target::parse("redis://app:pw@[::1]:6380").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 6380));
        assert_eq!(t.user.as_deref(), Some("app"));
        assert_eq!(t.to_string(), "::1:6380", "no password in what is logged");
        assert!(Target::parse("http://x").is_err());
        assert!(Target::parse("redis://x:port").is_err());
        assert!(Target::parse("redis://").is_err());
    }
}
