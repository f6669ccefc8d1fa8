//! The key schedule of an established session: the cipher suites, how many records one
//! key may protect ([`Limits`]), one direction's key and IV ([`Keys`]), the TLS 1.3
//! traffic secrets they came from ([`Secrets`]) and the next generation of both on a
//! KeyUpdate (RFC 8446 §7.2), derived with *ring* from the secrets rustls logs for the
//! session ([`TrafficSecrets`]).
//! The record layer ([`super::record`]) seals and opens with them.

use std::sync::OnceLock;

use ring::aead;
use ring::hkdf;
use rustls::ConnectionTrafficSecrets;

/// The environment variable that lowers [`Limits`] for tests: with `N`, keys are updated
/// at N records and a peer's key is refused past 2N. It never raises them. Read in every
/// build (the suite runs in release), once.
pub const TEST_LIMIT_VAR: &str = "ROOMCAST_TEST_TLS_RECORD_LIMIT";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Suite {
    pub(super) fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Suite::Aes128Gcm => &aead::AES_128_GCM,
            Suite::Aes256Gcm => &aead::AES_256_GCM,
            Suite::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    pub(super) fn key_len(self) -> usize {
        match self {
            Suite::Aes128Gcm => 16,
            _ => 32,
        }
    }

    /// The TLS 1.3 suite's hash, which its traffic secrets are as long as.
    pub(super) fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Suite::Aes256Gcm => hkdf::HKDF_SHA384,
            _ => hkdf::HKDF_SHA256,
        }
    }

    pub(super) fn secret_len(self) -> usize {
        match self {
            Suite::Aes256Gcm => 48,
            _ => 32,
        }
    }

    /// How many records one key may protect (see [`Limits`]).
    pub fn limits(self) -> Limits {
        let base = match self {
            // RFC 8446 §5.5: up to 2^24.5 full-size records under one AES-GCM key keep the
            // attacker's advantage below 2^-57. We update at 2^24 (rustls's figure), so a
            // peer that updates at the bound itself is never refused.
            Suite::Aes128Gcm | Suite::Aes256Gcm => Limits {
                rekey: 1 << 24,
                refuse: 23_726_566, // ⌊2^24.5⌋
            },
            // §5.5: ChaCha20-Poly1305's limit lies beyond the 64-bit sequence numbers. We
            // still update every 2^31 records, so that no key lives forever, and refuse a
            // peer's key where our 32-bit count ends: a TLS 1.3 peer has been asked to
            // update long before; a TLS 1.2 one (no key updates) is closed after 2^32
            // records, as our own TLS 1.2 send key is after 2^31.
            Suite::Chacha20Poly1305 => Limits {
                rekey: 1 << 31,
                refuse: u32::MAX,
            },
        };
        match test_limit() {
            Some(n) => Limits {
                rekey: base.rekey.min(n),
                refuse: base.refuse.min(n.saturating_mul(2)),
            },
            None => base,
        }
    }
}

/// How many records one key may protect: ours is updated when it has sealed `rekey`
/// (TLS 1.3; TLS 1.2 ends the connection there), the peer is asked to update its own when
/// we have opened `rekey` under it, and refused past `refuse`. Counts are 32-bit (every
/// limit fits, and [`super::record::Records`] keeps its counters in 8 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub rekey: u32,
    pub refuse: u32,
}

/// [`TEST_LIMIT_VAR`], read once.
pub(super) fn test_limit() -> Option<u32> {
    static LIMIT: OnceLock<Option<u32>> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let n = std::env::var(TEST_LIMIT_VAR).ok()?.parse::<u32>().ok()?;
        tracing::warn!(
            "{TEST_LIMIT_VAR}={n}: TLS keys are updated every {n} records (a test setting)"
        );
        Some(n.max(1))
    })
}

/// One direction's traffic key and IV: 44 bytes, no padding (the sequence numbers and the
/// secrets they come from live beside them in [`super::record::Records`]).
#[derive(Clone)]
pub struct Keys {
    pub(super) key: [u8; 32],
    pub(super) iv: [u8; 12],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

impl Keys {
    /// The key and IV rustls extracted, checked against `suite`.
    pub(super) fn from_extracted(suite: Suite, secrets: &ConnectionTrafficSecrets) -> Option<Keys> {
        let (key, iv) = match (suite, secrets) {
            (Suite::Aes128Gcm, ConnectionTrafficSecrets::Aes128Gcm { key, iv })
            | (Suite::Aes256Gcm, ConnectionTrafficSecrets::Aes256Gcm { key, iv })
            | (Suite::Chacha20Poly1305, ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }) => {
                (key.as_ref(), iv.as_ref())
            }
            _ => return None,
        };
        if key.len() != suite.key_len() || iv.len() != 12 {
            return None;
        }
        let mut keys = Keys {
            key: [0; 32],
            iv: [0; 12],
        };
        keys.key[..key.len()].copy_from_slice(key);
        keys.iv.copy_from_slice(iv);
        Some(keys)
    }

    /// The key and IV of a TLS 1.3 traffic secret (RFC 8446 §7.3).
    pub(super) fn from_secret(suite: Suite, secret: &[u8]) -> Keys {
        let mut keys = Keys {
            key: [0; 32],
            iv: [0; 12],
        };
        let prk = hkdf::Prk::new_less_safe(suite.hkdf(), secret);
        expand_label(&prk, b"key", &mut keys.key[..suite.key_len()]);
        expand_label(&prk, b"iv", &mut keys.iv);
        keys
    }

    /// Whether both give the same key and IV.
    pub(super) fn same(&self, other: &Keys) -> bool {
        self.key == other.key && self.iv == other.iv
    }

    /// IV ⊕ the sequence number, right-aligned.
    pub(super) fn nonce(&self, seq: u32) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(u64::from(seq).to_be_bytes()) {
            *b ^= s;
        }
        n
    }
}

/// A direction of a session, ours or the peer's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// What the peer sends us.
    Rx,
    /// What we send.
    Tx,
}

/// The current TLS 1.3 application traffic secrets of a session, which key updates derive
/// from, receive then send. The SHA-256 suites' (AES-128-GCM, ChaCha20-Poly1305: 32 bytes
/// each) are kept inline; AES-256-GCM's SHA-384 ones (48 bytes each) in a box of their
/// own: 96 bytes more for such a session, which a client gets only if it offers neither
/// of the others (our order prefers AES-128-GCM, and TLS 1.3 clients must offer it), so
/// that every session fits the 192-byte size class.
#[derive(Clone)]
pub enum Secrets {
    /// TLS 1.2: no key updates.
    None,
    Sha256([[u8; 32]; 2]),
    Sha384(Box<[[u8; 48]; 2]>),
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Secrets::None => "Secrets::None",
            Secrets::Sha256(_) => "Secrets::Sha256(..)",
            Secrets::Sha384(_) => "Secrets::Sha384(..)",
        })
    }
}

impl Secrets {
    /// Both directions' secrets, each as long as `suite`'s hash (checked by the caller).
    pub(super) fn new(suite: Suite, rx: &[u8], tx: &[u8]) -> Secrets {
        fn pair<const N: usize>(rx: &[u8], tx: &[u8]) -> [[u8; N]; 2] {
            let mut both = [[0; N]; 2];
            both[0].copy_from_slice(rx);
            both[1].copy_from_slice(tx);
            both
        }
        match suite.secret_len() {
            48 => Secrets::Sha384(Box::new(pair(rx, tx))),
            _ => Secrets::Sha256(pair(rx, tx)),
        }
    }

    /// `dir`'s current secret (`None` in TLS 1.2).
    fn get(&mut self, dir: Dir) -> Option<&mut [u8]> {
        let i = dir as usize;
        match self {
            Secrets::None => None,
            Secrets::Sha256(both) => Some(&mut both[i][..]),
            Secrets::Sha384(both) => Some(&mut both[i][..]),
        }
    }

    /// Moves `dir` to its next generation (RFC 8446 §7.2): application_traffic_secret_N+1 =
    /// HKDF-Expand-Label(application_traffic_secret_N, "traffic upd", "", Hash.length),
    /// and returns the keys it gives. `None` in TLS 1.2. Cost: three HKDF-Expand-Labels,
    /// ~3 µs.
    pub(super) fn advance(&mut self, dir: Dir, suite: Suite) -> Option<Keys> {
        let secret = self.get(dir)?;
        let prk = hkdf::Prk::new_less_safe(suite.hkdf(), secret);
        let mut next = [0u8; 48];
        let next = &mut next[..secret.len()];
        expand_label(&prk, b"traffic upd", next);
        secret.copy_from_slice(next);
        Some(Keys::from_secret(suite, next))
    }

    /// The same secrets, directions swapped (the peer's view).
    pub(super) fn swapped(&self) -> Secrets {
        match self {
            Secrets::None => Secrets::None,
            Secrets::Sha256([rx, tx]) => Secrets::Sha256([*tx, *rx]),
            Secrets::Sha384(both) => Secrets::Sha384(Box::new([both[1], both[0]])),
        }
    }
}

/// HKDF-Expand-Label(secret, label, "", out.len()) (RFC 8446 §7.1).
pub(super) fn expand_label(prk: &hkdf::Prk, label: &[u8], out: &mut [u8]) {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let len = (out.len() as u16).to_be_bytes();
    let label_len = [(b"tls13 ".len() + label.len()) as u8];
    let info: [&[u8]; 5] = [&len, &label_len, b"tls13 ", label, &[0]];
    // Our own lengths (at most 48 bytes), far below HKDF's 255 × Hash.length.
    prk.expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF output within its length limit");
}

/// The traffic secrets of a TLS 1.3 session (what rustls logs as `CLIENT_TRAFFIC_SECRET_0`
/// and `SERVER_TRAFFIC_SECRET_0`), each with its length.
#[derive(Clone, Default)]
pub struct TrafficSecrets {
    pub client: Option<([u8; 48], u8)>,
    pub server: Option<([u8; 48], u8)>,
}

impl std::fmt::Debug for TrafficSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficSecrets")
            .field("client", &self.client.is_some())
            .field("server", &self.server.is_some())
            .finish()
    }
}

impl TrafficSecrets {
    /// Keeps `secret` if `label` names one of the two (at most 48 bytes).
    pub fn absorb(&mut self, label: &str, secret: &[u8]) {
        let to = match label {
            "CLIENT_TRAFFIC_SECRET_0" => &mut self.client,
            "SERVER_TRAFFIC_SECRET_0" => &mut self.server,
            _ => return,
        };
        if secret.len() <= 48 {
            let mut s = [0; 48];
            s[..secret.len()].copy_from_slice(secret);
            *to = Some((s, secret.len() as u8));
        }
    }
}
