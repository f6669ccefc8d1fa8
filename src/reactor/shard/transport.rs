//! A connection's transport, as the core holds it: the socket's bytes are the service's
//! bytes (`Plain`), or TLS records around them (`Tls`, see `tls.rs`). The backends call
//! the entry points here (receive, egress, sent); each asks the connection's transport
//! once and goes down the plain path (`shard.rs`) or the TLS one, which hands the
//! plaintext to the plain path in turn. Closing drops the transport with its slot.

use std::io::IoSlice;
use std::sync::Arc;

use super::{tls, Core, Next};
use crate::reactor::service::Service;
use crate::reactor::tls::{Session, Source};

/// What carries a connection's bytes.
pub enum Transport {
    /// The socket's bytes are the service's.
    Plain,
    /// TLS: the session (keys, counters, and buffers only while records are in flight).
    /// Boxed, so a plain connection pays one word in the table and nothing else.
    Tls(Box<Session>),
}

/// A transport is one word in the table: plain connections pay nothing else.
const _: () = assert!(std::mem::size_of::<Transport>() == 8);

/// The transports of a shard's connections, indexed by slab slot: a table beside the slab,
/// so the slot keeps its size. It grows only as far as the highest TLS slot: with no TLS
/// listener it stays empty and every connection is plain.
pub struct Transports {
    /// The certificate, when a listener speaks TLS.
    source: Option<Arc<Source>>,
    table: Vec<Transport>,
}

impl Transports {
    pub fn new(source: Option<Arc<Source>>) -> Transports {
        Transports {
            source,
            table: Vec::new(),
        }
    }

    /// A new connection in `slot`: TLS if its listener speaks TLS (it starts its
    /// handshake), plain otherwise. A freed slot is plain already.
    pub fn open(&mut self, slot: usize, tls: bool) {
        let Some(source) = self.source.as_ref().filter(|_| tls) else {
            return;
        };
        if self.table.len() <= slot {
            self.table.resize_with(slot + 1, || Transport::Plain);
        }
        self.table[slot] = Transport::Tls(Box::new(Session::start(source.config())));
    }

    /// Takes `slot`'s transport out while the core works on it (give it back with `put`).
    fn take(&mut self, slot: usize) -> Transport {
        self.table
            .get_mut(slot)
            .map_or(Transport::Plain, |t| std::mem::replace(t, Transport::Plain))
    }

    fn put(&mut self, slot: usize, transport: Transport) {
        if let Some(t) = self.table.get_mut(slot) {
            *t = transport;
        }
    }

    /// The connection in `slot` is gone: so is its transport.
    pub fn close(&mut self, slot: usize) {
        self.take(slot);
    }

    /// Whether `slot`'s transport is still in a handshake of its own (TLS), which its
    /// deadline ends without a word: an HTTP 408 would not be TLS.
    pub fn handshaking(&self, slot: usize) -> bool {
        matches!(self.table.get(slot), Some(Transport::Tls(s)) if s.is_handshaking())
    }
}

impl<S: Service> Core<S> {
    /// Runs `op` on `slot`'s transport, taken out of the table meanwhile: TLS hands the
    /// plaintext on to the plain path, which needs the whole core. O(1): two table writes.
    fn with_transport<R>(
        &mut self,
        slot: usize,
        op: impl FnOnce(&mut Self, &mut Transport) -> R,
    ) -> R {
        let mut transport = self.transports.take(slot);
        let r = op(self, &mut transport);
        self.transports.put(slot, transport);
        r
    }

    /// Bytes arrived for `slot` (in place: TLS records are opened where they lie).
    pub fn receive(&mut self, slot: usize, data: &mut [u8]) -> Next {
        self.with_transport(slot, |core, t| match t {
            Transport::Plain => core.receive_plain(slot, data),
            Transport::Tls(s) => core.receive_tls(slot, s, data),
        })
    }

    /// What `slot` sends next: slices of its queued frames (or, over TLS, of the records
    /// sealing them), front first. With `pin_sends`, what they point into is pinned until
    /// [`Core::sent`].
    pub fn egress<'a>(&'a mut self, slot: usize, iov: &mut [IoSlice<'a>]) -> usize {
        let Some(conn) = self.cx.conns.get_mut(slot) else {
            return 0;
        };
        match self.transports.table.get_mut(slot) {
            Some(Transport::Tls(s)) => tls::egress(s, &mut conn.out, iov),
            None | Some(Transport::Plain) => {
                if self.pin_sends {
                    conn.out.pin(conn.out.len().min(iov.len()));
                }
                conn.out.iovecs(iov)
            }
        }
    }

    /// `n` bytes of what [`Core::egress`] gave went out.
    pub fn sent(&mut self, slot: usize, n: usize) -> Next {
        self.with_transport(slot, |core, t| match t {
            Transport::Plain => core.sent_plain(slot, n),
            Transport::Tls(s) => core.sent_tls(slot, s, n),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for localhost, written where `Source::load` reads it.
    fn source() -> Arc<Source> {
        let dir = std::env::temp_dir().join(format!("roomcast-transport-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let source = Source::load(&cert_path, &key_path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        Arc::new(source)
    }

    #[test]
    fn without_a_tls_listener_the_table_stays_empty() {
        let mut t = Transports::new(None);
        t.open(7, true);
        assert!(t.table.is_empty());
        assert!(matches!(t.take(7), Transport::Plain));
        assert!(!t.handshaking(7));
    }

    #[test]
    fn a_tls_slot_handshakes_until_closed_and_plain_slots_stay_plain() {
        let mut t = Transports::new(Some(source()));
        t.open(3, false);
        assert!(t.table.is_empty(), "a plain connection grows no table");
        t.open(2, true);
        assert_eq!(t.table.len(), 3);
        assert!(t.handshaking(2));
        assert!(!t.handshaking(1) && !t.handshaking(3));
        // Taken out while the core works on it, then back.
        let taken = t.take(2);
        assert!(!t.handshaking(2));
        t.put(2, taken);
        assert!(t.handshaking(2));
        t.close(2);
        assert!(matches!(t.table[2], Transport::Plain));
        assert!(!t.handshaking(2));
    }
}
