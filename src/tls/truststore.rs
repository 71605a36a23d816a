//! A PKCS#12 trust store for Java: certificate bags only, each marked with Oracle's trusted-key-usage
//! attribute (without it Java lists no trusted entry), protected by an HMAC-SHA256 under the
//! password `changeit` (RFC 7292). Written by hand: the crates that write PKCS#12 bring a
//! pre-release RustCrypto stack for the encryption this store does not use.

use aws_lc_rs::{digest, hmac};
use rustls_pki_types::CertificateDer;

/// The password Java's tools assume for a trust store.
pub const PASSWORD: &str = "changeit";
const MAC_ITERATIONS: u32 = 10_000;

const DATA: &[u64] = &[1, 2, 840, 113549, 1, 7, 1];
const CERT_BAG: &[u64] = &[1, 2, 840, 113549, 1, 12, 10, 1, 3];
const X509_CERTIFICATE: &[u64] = &[1, 2, 840, 113549, 1, 9, 22, 1];
const FRIENDLY_NAME: &[u64] = &[1, 2, 840, 113549, 1, 9, 20];
const ORACLE_TRUSTED_KEY_USAGE: &[u64] = &[2, 16, 840, 1, 113894, 746875, 1, 1];
const ANY_EXTENDED_KEY_USAGE: &[u64] = &[2, 5, 29, 37, 0];
const SHA256: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 1];

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

fn set(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x31, &parts.concat())
}

fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut push = |mut v: u64| {
        let mut chunk = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            chunk.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        chunk.reverse();
        body.extend(chunk);
    };
    push(arcs[0] * 40 + arcs[1]);
    arcs[2..].iter().for_each(|a| push(*a));
    tlv(0x06, &body)
}

fn octets(b: &[u8]) -> Vec<u8> {
    tlv(0x04, b)
}

fn explicit0(b: &[u8]) -> Vec<u8> {
    tlv(0xa0, b)
}

fn integer(v: u32) -> Vec<u8> {
    let mut bytes: Vec<u8> = v.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
    if bytes.first().is_none_or(|b| b & 0x80 != 0) {
        bytes.insert(0, 0);
    }
    tlv(0x02, &bytes)
}

/// UTF-16BE, as PKCS#12 passwords and friendly names are written.
fn bmp(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

fn cert_bag(cert: &CertificateDer<'_>, alias: &str) -> Vec<u8> {
    let bag = seq(&[&oid(X509_CERTIFICATE), &explicit0(&octets(cert.as_ref()))]);
    let friendly = seq(&[&oid(FRIENDLY_NAME), &set(&[&tlv(0x1e, &bmp(alias))])]);
    let trusted = seq(&[&oid(ORACLE_TRUSTED_KEY_USAGE), &set(&[&oid(ANY_EXTENDED_KEY_USAGE)])]);
    // DER orders a SET OF by its elements' encodings.
    let mut attributes = [friendly, trusted];
    attributes.sort();
    seq(&[&oid(CERT_BAG), &explicit0(&bag), &set(&[&attributes[0], &attributes[1]])])
}

/// RFC 7292 Appendix B.2 with SHA-256, for a 32-byte MAC key (one block: `n = u`).
fn mac_key(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    const V: usize = 64;
    let mut pass = bmp(password);
    pass.extend([0, 0]);
    let fill = |s: &[u8]| -> Vec<u8> {
        if s.is_empty() {
            return Vec::new();
        }
        s.iter().copied().cycle().take(V * s.len().div_ceil(V)).collect()
    };
    let mut input = vec![3u8; V]; // ID 3: MAC key material
    input.extend(fill(salt));
    input.extend(fill(&pass));
    let mut a = digest::digest(&digest::SHA256, &input);
    for _ in 1..iterations {
        a = digest::digest(&digest::SHA256, a.as_ref());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(a.as_ref());
    out
}

/// A PKCS#12 file holding `certs` as trusted certificate entries.
pub fn pkcs12(certs: &[CertificateDer<'_>]) -> Result<Vec<u8>, String> {
    let bags: Vec<Vec<u8>> = certs.iter().enumerate().map(|(i, c)| cert_bag(c, &format!("credproxy-{i}"))).collect();
    let safe_contents = seq(&bags.iter().map(Vec::as_slice).collect::<Vec<_>>());
    let content_info = seq(&[&oid(DATA), &explicit0(&octets(&safe_contents))]);
    let auth_safe = seq(&[&content_info]);
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| "no randomness".to_string())?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, &mac_key(PASSWORD, &salt, MAC_ITERATIONS));
    let mac = hmac::sign(&key, &auth_safe);
    let algorithm = seq(&[&oid(SHA256), &tlv(0x05, &[])]);
    let mac_data = seq(&[&seq(&[&algorithm, &octets(mac.as_ref())]), &octets(&salt), &integer(MAC_ITERATIONS)]);
    let outer = seq(&[&oid(DATA), &explicit0(&octets(&auth_safe))]);
    Ok(seq(&[&integer(3), &outer, &mac_data]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_encode_as_der() {
        assert_eq!(oid(DATA), [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01]);
        assert_eq!(
            oid(ORACLE_TRUSTED_KEY_USAGE),
            [0x06, 0x0c, 0x60, 0x86, 0x48, 0x01, 0x86, 0xf9, 0x66, 0xad, 0xca, 0x7b, 0x01, 0x01]
        );
        assert_eq!(integer(3), [0x02, 0x01, 0x03]);
        assert_eq!(integer(10_000), [0x02, 0x02, 0x27, 0x10]);
        assert_eq!(tlv(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
    }
}
