//! Kernel TLS offload (`tls` upper-layer protocol): what would hand an established
//! session's keys to the kernel, so that sends are plain again and every recipient shares
//! one frame's bytes. Detected at start; where it is absent (no `tls` in
//! `/proc/sys/net/ipv4/tcp_available_ulp`, as on the test machine) records are sealed in
//! user space. The layout below is `linux/tls.h`'s, unit-tested byte for byte.

use super::record::{Records, Suite};

/// `setsockopt(SOL_TCP, TCP_ULP, "tls")` turns the offload on for a socket, then
/// `setsockopt(SOL_TLS, TLS_TX | TLS_RX, crypto_info)` gives it the keys.
pub const TCP_ULP: i32 = 31;
pub const SOL_TLS: i32 = 282;
pub const TLS_TX: i32 = 1;
pub const TLS_RX: i32 = 2;

const TLS_1_2_VERSION: u16 = 0x0303;
const TLS_1_3_VERSION: u16 = 0x0304;
const TLS_CIPHER_AES_GCM_128: u16 = 51;
const TLS_CIPHER_AES_GCM_256: u16 = 52;
const TLS_CIPHER_CHACHA20_POLY1305: u16 = 54;

/// Whether this kernel offers the `tls` upper-layer protocol.
pub fn available() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .is_ok_and(|s| s.split_whitespace().any(|u| u == "tls"))
}

/// The `tls12_crypto_info_*` struct for one direction of `records` (`tx`: what we send),
/// in native byte order for the two leading `u16`s, as the kernel reads it.
pub fn crypto_info(records: &Records, tx: bool) -> Vec<u8> {
    let keys = if tx { &records.tx } else { &records.rx };
    let version = if records.tls12 {
        TLS_1_2_VERSION
    } else {
        TLS_1_3_VERSION
    };
    let (cipher, key_len) = match records.suite {
        Suite::Aes128Gcm => (TLS_CIPHER_AES_GCM_128, 16),
        Suite::Aes256Gcm => (TLS_CIPHER_AES_GCM_256, 32),
        Suite::Chacha20Poly1305 => (TLS_CIPHER_CHACHA20_POLY1305, 32),
    };
    let mut out = Vec::with_capacity(56);
    out.extend_from_slice(&version.to_ne_bytes());
    out.extend_from_slice(&cipher.to_ne_bytes());
    let iv = keys.iv();
    match records.suite {
        // { iv[8], key, salt[4], rec_seq[8] }: the first 4 IV bytes are the salt.
        Suite::Aes128Gcm | Suite::Aes256Gcm => {
            out.extend_from_slice(&iv[4..]);
            out.extend_from_slice(&keys.key()[..key_len]);
            out.extend_from_slice(&iv[..4]);
        }
        // { iv[12], key[32], rec_seq[8] }
        Suite::Chacha20Poly1305 => {
            out.extend_from_slice(iv);
            out.extend_from_slice(&keys.key()[..key_len]);
        }
    }
    out.extend_from_slice(&keys.seq.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::tls::record::Keys;

    #[test]
    fn crypto_info_matches_the_kernel_layout_for_each_cipher() {
        let keys = |seq| Keys::new(&[0xAA; 32], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], seq);
        let records = |suite, tls12| Records {
            suite,
            tls12,
            rx: keys(5),
            tx: keys(0x0102),
        };
        // tls12_crypto_info_aes_gcm_128: 2 + 2 + 8 + 16 + 4 + 8 = 40 bytes.
        let info = crypto_info(&records(Suite::Aes128Gcm, true), true);
        assert_eq!(info.len(), 40);
        assert_eq!(u16::from_ne_bytes([info[0], info[1]]), TLS_1_2_VERSION);
        assert_eq!(
            u16::from_ne_bytes([info[2], info[3]]),
            TLS_CIPHER_AES_GCM_128
        );
        assert_eq!(&info[4..12], &[5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(&info[12..28], &[0xAA; 16]);
        assert_eq!(&info[28..32], &[1, 2, 3, 4]);
        assert_eq!(&info[32..], &[0, 0, 0, 0, 0, 0, 1, 2]);
        // aes_gcm_256 in TLS 1.3: 56 bytes, the receive direction's sequence number.
        let info = crypto_info(&records(Suite::Aes256Gcm, false), false);
        assert_eq!(info.len(), 56);
        assert_eq!(u16::from_ne_bytes([info[0], info[1]]), TLS_1_3_VERSION);
        assert_eq!(
            u16::from_ne_bytes([info[2], info[3]]),
            TLS_CIPHER_AES_GCM_256
        );
        assert_eq!(&info[48..], &5u64.to_be_bytes());
        // chacha20_poly1305: the whole 12-byte IV, no salt.
        let info = crypto_info(&records(Suite::Chacha20Poly1305, false), true);
        assert_eq!(info.len(), 56);
        assert_eq!(&info[4..16], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(&info[16..48], &[0xAA; 32]);
    }
}
