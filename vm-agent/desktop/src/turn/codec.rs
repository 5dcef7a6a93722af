//! The STUN message codec of the agent's TURN client (RFC 8489 messages, RFC 8656 methods and
//! attributes): header, attributes, XOR-encoded addresses, MESSAGE-INTEGRITY with the long-term
//! key, and FINGERPRINT.
//!
//! Written out because str0m's STUN module is a hidden ICE internal whose message builder cannot
//! add REQUESTED-TRANSPORT, which every Allocate needs. The crypto is the RustCrypto crates str0m
//! already links (MD5 key, HMAC-SHA1 integrity) and `crc` (CRC-32 fingerprint).

use std::net::{IpAddr, SocketAddr};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};

const MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// FINGERPRINT's CRC-32 is XORed with this (RFC 8489 §14.7).
const FINGERPRINT_XOR: u32 = 0x5354_554e;

// Methods (RFC 8656 §17) and classes (RFC 8489 §5).
pub(super) const ALLOCATE: u16 = 0x0003;
pub(super) const REFRESH: u16 = 0x0004;
pub(super) const SEND: u16 = 0x0006;
pub(super) const DATA: u16 = 0x0007;
pub(super) const CREATE_PERMISSION: u16 = 0x0008;
pub(super) const CHANNEL_BIND: u16 = 0x0009;
pub(super) const CLASS_MASK: u16 = 0x0110;
pub(super) const INDICATION: u16 = 0x0010;
pub(super) const SUCCESS: u16 = 0x0100;
pub(super) const ERROR: u16 = 0x0110;

// Attributes.
pub(super) const ATTR_USERNAME: u16 = 0x0006;
pub(super) const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
pub(super) const ATTR_ERROR_CODE: u16 = 0x0009;
pub(super) const ATTR_CHANNEL_NUMBER: u16 = 0x000c;
pub(super) const ATTR_LIFETIME: u16 = 0x000d;
pub(super) const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
pub(super) const ATTR_DATA: u16 = 0x0013;
pub(super) const ATTR_REALM: u16 = 0x0014;
pub(super) const ATTR_NONCE: u16 = 0x0015;
pub(super) const ATTR_XOR_RELAYED_ADDRESS: u16 = 0x0016;
pub(super) const ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;
const ATTR_FINGERPRINT: u16 = 0x8028;

/// MD5(username ":" realm ":" password), the long-term credential key (RFC 8489 §9.2.2; the
/// password is used as given, without SASLprep).
pub(super) fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut md5 = Md5::new();
    md5.update(username.as_bytes());
    md5.update(b":");
    md5.update(realm.as_bytes());
    md5.update(b":");
    md5.update(password.as_bytes());
    md5.finalize().into()
}

fn hmac_sha1(key: &[u8]) -> Hmac<sha1::Sha1> {
    // HMAC takes keys of any length.
    <Hmac<sha1::Sha1> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

fn push_attr(msg: &mut Vec<u8>, kind: u16, value: &[u8]) {
    msg.extend_from_slice(&kind.to_be_bytes());
    // Values are short (a datagram's worth at most); the caller checked DATA's length.
    msg.extend_from_slice(&(value.len() as u16).to_be_bytes());
    msg.extend_from_slice(value);
    msg.resize(msg.len().div_ceil(4) * 4, 0);
}

fn set_len(msg: &mut [u8], len: usize) {
    msg[2..4].copy_from_slice(&(len as u16).to_be_bytes());
}

/// A STUN message of type `kind` with `attrs`, MESSAGE-INTEGRITY when `key` is given, and
/// FINGERPRINT.
pub(super) fn encode(
    kind: u16,
    id: &[u8; 12],
    attrs: &[(u16, &[u8])],
    key: Option<&[u8]>,
) -> Vec<u8> {
    let mut msg = Vec::with_capacity(128);
    msg.extend_from_slice(&kind.to_be_bytes());
    msg.extend_from_slice(&[0, 0]);
    msg.extend_from_slice(&MAGIC);
    msg.extend_from_slice(id);
    for (kind, value) in attrs {
        push_attr(&mut msg, *kind, value);
    }
    if let Some(key) = key {
        // The length covers the integrity attribute, not what follows it.
        let len = msg.len() - 20 + 24;
        set_len(&mut msg, len);
        let mut mac = hmac_sha1(key);
        mac.update(&msg);
        let mac: [u8; 20] = mac.finalize().into_bytes().into();
        push_attr(&mut msg, ATTR_MESSAGE_INTEGRITY, &mac);
    }
    let len = msg.len() - 20 + 8;
    set_len(&mut msg, len);
    let crc = crc32(&msg) ^ FINGERPRINT_XOR;
    push_attr(&mut msg, ATTR_FINGERPRINT, &crc.to_be_bytes());
    msg
}

fn crc32(bytes: &[u8]) -> u32 {
    crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(bytes)
}

/// An XOR-PEER-ADDRESS (or XOR-MAPPED-/RELAYED-) value for `addr` in transaction `id`.
pub(super) fn xor_address(addr: SocketAddr, id: &[u8; 12]) -> Vec<u8> {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&MAGIC);
    key[4..].copy_from_slice(id);
    let port = addr.port() ^ u16::from_be_bytes([MAGIC[0], MAGIC[1]]);
    let (family, octets) = match addr.ip() {
        IpAddr::V4(ip) => (1u8, ip.octets().to_vec()),
        IpAddr::V6(ip) => (2u8, ip.octets().to_vec()),
    };
    let mut value = vec![0, family];
    value.extend_from_slice(&port.to_be_bytes());
    value.extend(octets.iter().zip(key).map(|(b, k)| b ^ k));
    value
}

/// A parsed STUN message (only what the client reads).
#[derive(Debug)]
pub(super) struct Message<'a> {
    pub(super) kind: u16,
    pub(super) id: [u8; 12],
    raw: &'a [u8],
    /// `(type, offset of the attribute header in raw, value)`.
    pub(super) attrs: Vec<(u16, usize, &'a [u8])>,
}

impl<'a> Message<'a> {
    pub(super) fn parse(raw: &'a [u8]) -> Option<Self> {
        if raw.len() < 20 || raw[0] >> 6 != 0 || raw[4..8] != MAGIC {
            return None;
        }
        let kind = u16::from_be_bytes([raw[0], raw[1]]);
        let len = usize::from(u16::from_be_bytes([raw[2], raw[3]]));
        let raw = raw.get(..20 + len)?;
        let mut id = [0u8; 12];
        id.copy_from_slice(&raw[8..20]);
        let mut attrs = Vec::new();
        let mut at = 20;
        while at + 4 <= raw.len() {
            let t = u16::from_be_bytes([raw[at], raw[at + 1]]);
            let alen = usize::from(u16::from_be_bytes([raw[at + 2], raw[at + 3]]));
            let value = raw.get(at + 4..at + 4 + alen)?;
            attrs.push((t, at, value));
            at += 4 + alen.div_ceil(4) * 4;
        }
        Some(Self {
            kind,
            id,
            raw,
            attrs,
        })
    }

    pub(super) fn attr(&self, kind: u16) -> Option<&'a [u8]> {
        self.attrs
            .iter()
            .find(|(t, _, _)| *t == kind)
            .map(|(_, _, v)| *v)
    }

    /// ERROR-CODE as (code, reason).
    pub(super) fn error_code(&self) -> Option<(u16, String)> {
        let v = self.attr(ATTR_ERROR_CODE)?;
        let class = u16::from(*v.get(2)? & 0x07);
        let number = u16::from(*v.get(3)?);
        let reason = String::from_utf8_lossy(v.get(4..)?).into_owned();
        Some((class * 100 + number, reason))
    }

    /// Whether MESSAGE-INTEGRITY is there and right for `key`.
    pub(super) fn verify(&self, key: &[u8]) -> bool {
        let Some((_, at, value)) = self
            .attrs
            .iter()
            .find(|(t, _, _)| *t == ATTR_MESSAGE_INTEGRITY)
        else {
            return false;
        };
        let mut head = self.raw[..*at].to_vec();
        set_len(&mut head, at - 20 + 24);
        let mut mac = hmac_sha1(key);
        mac.update(&head);
        mac.verify_slice(value).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5769_long_term_request_integrity_verifies() {
        // RFC 5769 §2.4: a request with long-term authentication (user "<U+30DE><U+30C8>
        // <U+30EA><U+30C3><U+30AF><U+30B9>", realm "example.org", password "TheMatrIX").
        let msg: [u8; 116] = [
            0x00, 0x01, 0x00, 0x60, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad,
            0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e, 0x00, 0x06, 0x00, 0x12, 0xe3, 0x83, 0x9e, 0xe3,
            0x83, 0x88, 0xe3, 0x83, 0xaa, 0xe3, 0x83, 0x83, 0xe3, 0x82, 0xaf, 0xe3, 0x82, 0xb9,
            0x00, 0x00, 0x00, 0x15, 0x00, 0x1c, 0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b, 0x39,
            0x35, 0x34, 0x64, 0x36, 0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54,
            0x76, 0x79, 0x36, 0x34, 0x73, 0x41, 0x00, 0x14, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d,
            0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72, 0x67, 0x00, 0x00, 0x08, 0x00, 0x14, 0xf6, 0x70,
            0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02, 0xb8, 0xe0, 0x71, 0x2e, 0x85, 0xc9, 0xa2,
            0x8c, 0xa8, 0x96, 0x66,
        ];
        let user = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
        let key = long_term_key(user, "example.org", "TheMatrIX");
        let parsed = Message::parse(&msg).expect("parsed");
        assert!(parsed.verify(&key));
        assert!(!parsed.verify(&long_term_key(user, "example.org", "wrong")));
        // Our encoder signs the same attributes the same way.
        let attrs: Vec<(u16, &[u8])> = parsed
            .attrs
            .iter()
            .filter(|(t, _, _)| *t != ATTR_MESSAGE_INTEGRITY)
            .map(|(t, _, v)| (*t, *v))
            .collect();
        let ours = encode(0x0001, &parsed.id, &attrs, Some(&key));
        assert_eq!(
            &ours[20..msg.len()],
            &msg[20..],
            "same attributes and integrity"
        );
        assert!(Message::parse(&ours).expect("ours parsed").verify(&key));
    }
}
