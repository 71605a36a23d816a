//! One pod-local CA: an ECDSA P-256 key that lives only in memory (zeroized on drop), a
//! self-signed certificate with name constraints, and leaf minting for the names it permits.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, NameConstraints, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm, SigningKey,
    PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroize;

use crate::policy::HostPattern;

/// How long a leaf is valid at most (never past its CA). Leaves are re-minted before this ends.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Leaves and CAs start this far in the past, for agents whose clocks run a little behind.
const BACKDATE: Duration = Duration::from_secs(3600);
/// The DNS subtree a CA permits when it is for no DNS name (nothing intercepted, or addresses
/// only): `.invalid` never resolves (RFC 2606), so such a CA can sign for no real name.
const NOTHING: &str = "invalid";

/// Why a CA or leaf was not made.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The name is outside this CA's name constraints.
    #[error("{0} is outside the CA's name constraints")]
    OutsideConstraints(String),
    /// Key generation or signing failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// What a CA may sign for: DNS subtrees (a name and every name below it, RFC 5280 §4.2.1.10)
/// and single IP addresses. Every other IP address is excluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraints {
    /// Permitted DNS subtrees, lower case, without a leading dot.
    pub dns: Vec<String>,
    /// Permitted addresses (as /32 or /128 subtrees).
    pub ips: Vec<IpAddr>,
}

impl Constraints {
    /// The constraints for these host patterns: `api.example.com` permits that name (and,
    /// as X.509 reads a DNS subtree, names below it); `*.example.com` permits `example.com`'s
    /// subtree, the only form every verifier (Java's among them) accepts; IP literals permit
    /// that address alone.
    pub fn for_hosts(hosts: &[HostPattern]) -> Self {
        let mut c = Constraints { dns: Vec::new(), ips: Vec::new() };
        for h in hosts {
            match h {
                HostPattern::Exact(name) => match ip_literal(name) {
                    Some(ip) => c.ips.push(ip),
                    None => c.dns.push(name.clone()),
                },
                HostPattern::Suffix(s) => c.dns.push(s.trim_start_matches('.').to_string()),
            }
        }
        c.dns.sort();
        c.dns.dedup();
        c.ips.sort();
        c.ips.dedup();
        c
    }

    /// Does this CA's certificate permit a leaf for `host` (normalised)?
    pub fn permits(&self, host: &str) -> bool {
        match ip_literal(host) {
            Some(ip) => self.ips.contains(&ip),
            None => {
                self.dns.iter().any(|d| host == d || host.strip_suffix(d.as_str()).is_some_and(|p| p.ends_with('.')))
            }
        }
    }

    /// Nothing to permit.
    pub fn is_empty(&self) -> bool {
        self.dns.is_empty() && self.ips.is_empty()
    }

    /// For logs and audit events: `["dns:example.com", "ip:10.0.0.1"]`.
    pub fn describe(&self) -> Vec<String> {
        let dns = self.dns.iter().map(|d| format!("dns:{d}"));
        dns.chain(self.ips.iter().map(|ip| format!("ip:{ip}"))).collect()
    }

    fn extension(&self) -> NameConstraints {
        let mut permitted: Vec<GeneralSubtree> = self.dns.iter().cloned().map(GeneralSubtree::DnsName).collect();
        // A name type without a permitted subtree is unconstrained (RFC 5280 §4.2.1.10): a CA for
        // addresses alone must still permit no real DNS name.
        if self.dns.is_empty() {
            permitted.push(GeneralSubtree::DnsName(NOTHING.into()));
        }
        permitted.extend(self.ips.iter().map(|ip| {
            let full = if ip.is_ipv4() { 32 } else { 128 };
            GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(*ip, full))
        }));
        // With addresses permitted, any other address is already outside the permitted
        // subtrees; without any, exclude every IPv4 and IPv6 address explicitly (excluded
        // subtrees win over permitted ones, so they are only used when nothing is permitted).
        let excluded = if self.ips.is_empty() {
            vec![
                GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
                GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
            ]
        } else {
            Vec::new()
        };
        NameConstraints { permitted_subtrees: permitted, excluded_subtrees: excluded }
    }
}

/// `1.2.3.4`, `::1` or `[::1]` as an address.
fn ip_literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// A key pair whose serialised private key is wiped from memory when dropped.
struct CaKey(KeyPair);

impl Drop for CaKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.0.algorithm()
    }
}

impl SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg)
    }
}

/// One CA generated by this process.
pub struct PodCa {
    issuer: Issuer<'static, CaKey>,
    /// The certificate, DER.
    pub cert: CertificateDer<'static>,
    /// The certificate, PEM.
    pub pem: String,
    /// What it may sign for.
    pub constraints: Constraints,
    /// `sha256:` + hex of the certificate's DER.
    pub fingerprint: String,
    /// When it expires.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for PodCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodCa").field("fingerprint", &self.fingerprint).field("constraints", &self.constraints).finish()
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system's random source works");
    bytes[0] &= 0x7f; // a positive INTEGER
    bytes[0] |= 0x01; // of full length
    SerialNumber::from_slice(&bytes)
}

impl PodCa {
    /// Generate a fresh key and a self-signed CA certificate: `CA:TRUE, pathlen:0`, key usage
    /// `keyCertSign` and `cRLSign` only, the given name constraints, valid from `now` (back-dated
    /// an hour) for `validity`.
    pub fn generate(constraints: Constraints, now: SystemTime, validity: Duration) -> Result<Self, CaError> {
        let key = CaKey(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?);
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::OrganizationName, "credproxy");
        params.distinguished_name.push(DnType::CommonName, crate::certs::POD_CA_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.name_constraints = Some(constraints.extension());
        params.serial_number = Some(random_serial());
        params.not_before = (now - BACKDATE).into();
        let not_after = now + validity;
        params.not_after = not_after.into();
        let cert = params.self_signed(&key)?;
        let der = cert.der().clone();
        let fingerprint = format!("sha256:{}", crate::digest::hex(&crate::digest::sha256(&der)));
        Ok(PodCa { issuer: Issuer::new(params, key), pem: cert.pem(), cert: der, constraints, fingerprint, not_after })
    }

    /// A leaf for `host` (normalised), signed by this CA, valid for [`LEAF_VALIDITY`] but never
    /// past the CA. Refused for a name outside the constraints, so no verifier is ever asked to
    /// reject one.
    pub fn mint(&self, host: &str, now: SystemTime) -> Result<Leaf, CaError> {
        if !self.constraints.permits(host) {
            return Err(CaError::OutsideConstraints(host.to_string()));
        }
        let key = CaKey(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?);
        let mut params = CertificateParams::default();
        let san = match ip_literal(host) {
            Some(ip) => SanType::IpAddress(ip),
            None => SanType::DnsName(host.try_into()?),
        };
        // A DNS leaf also carries its name as CN, for people reading it; an IP leaf carries none:
        // OpenSSL checks a CN against the DNS name constraints when a leaf has no DNS name.
        if matches!(san, SanType::DnsName(_)) {
            params.distinguished_name.push(DnType::CommonName, host);
        }
        params.subject_alt_names = vec![san];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = (now - BACKDATE).into();
        let not_after = (now + LEAF_VALIDITY).min(self.not_after);
        params.not_after = not_after.into();
        let cert = params.signed_by(&key, &self.issuer)?;
        let der = key.0.serialize_der();
        Ok(Leaf {
            chain: vec![cert.der().clone(), self.cert.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
            not_after,
        })
    }
}

/// A minted leaf: its chain (leaf, CA) and key.
pub struct Leaf {
    /// Leaf certificate first, then the CA.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// When the leaf expires.
    pub not_after: SystemTime,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls_pki_types::{ServerName, UnixTime};
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::*;

    use super::*;

    fn hosts(list: &[&str]) -> Vec<HostPattern> {
        list.iter()
            .map(|h| match h.strip_prefix('*') {
                Some(s) => HostPattern::Suffix(s.to_string()),
                None => HostPattern::Exact(h.to_string()),
            })
            .collect()
    }

    fn name_constraints<'a>(cert: &'a X509Certificate<'a>) -> x509_parser::extensions::NameConstraints<'a> {
        let found = cert.extensions().iter().find_map(|e| match e.parsed_extension() {
            ParsedExtension::NameConstraints(nc) => Some(nc.clone()),
            _ => None,
        });
        found.expect("nameConstraints")
    }

    fn verify(ca: &PodCa, chain: &[CertificateDer<'static>], name: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now()).map(|_| ())
    }

    #[test]
    fn the_ca_is_a_constrained_signing_only_ca_unique_per_generation() {
        let now = SystemTime::now();
        let validity = Duration::from_secs(30 * 24 * 3600);
        let ca = PodCa::generate(
            Constraints::for_hosts(&hosts(&["api.example.test", "*.models.test", "10.1.2.3"])),
            now,
            validity,
        )
        .unwrap();
        let (_, cert) = X509Certificate::from_der(ca.cert.as_ref()).unwrap();
        let bc = cert.basic_constraints().unwrap().expect("basicConstraints").value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = cert.key_usage().unwrap().expect("keyUsage").value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert!(!ku.digital_signature() && !ku.key_encipherment() && !ku.non_repudiation());
        assert_eq!(cert.public_key().algorithm.algorithm.to_id_string(), "1.2.840.10045.2.1"); // id-ecPublicKey
        let curve = cert.public_key().algorithm.parameters.as_ref().unwrap().as_oid().unwrap();
        assert_eq!(curve.to_id_string(), "1.2.840.10045.3.1.7"); // P-256
        let nc = name_constraints(&cert);
        let permitted: Vec<String> = nc
            .permitted_subtrees
            .unwrap()
            .iter()
            .map(|s| match &s.base {
                GeneralName::DNSName(d) => format!("dns:{d}"),
                GeneralName::IPAddress(b) => {
                    format!("ip:{}", b.iter().map(u8::to_string).collect::<Vec<_>>().join(","))
                }
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(permitted, ["dns:api.example.test", "dns:models.test", "ip:10,1,2,3,255,255,255,255"]);
        assert!(nc.excluded_subtrees.is_none(), "with addresses permitted, no other address is");
        let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(life as u64, validity.as_secs() + BACKDATE.as_secs());
        // Unique per generation: a fresh key and serial each time.
        let again = PodCa::generate(ca.constraints.clone(), now, validity).unwrap();
        let (_, other) = X509Certificate::from_der(again.cert.as_ref()).unwrap();
        assert_ne!(cert.public_key().raw, other.public_key().raw);
        assert_ne!(cert.raw_serial(), other.raw_serial());
    }

    #[test]
    fn without_named_addresses_every_address_is_excluded() {
        let ca = PodCa::generate(
            Constraints::for_hosts(&hosts(&["api.example.test"])),
            SystemTime::now(),
            Duration::from_secs(86400),
        )
        .unwrap();
        let (_, cert) = X509Certificate::from_der(ca.cert.as_ref()).unwrap();
        let nc = name_constraints(&cert);
        let excluded: Vec<Vec<u8>> = nc
            .excluded_subtrees
            .unwrap()
            .iter()
            .map(|s| match &s.base {
                GeneralName::IPAddress(b) => b.to_vec(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(excluded, [vec![0u8; 8], vec![0u8; 32]]);
        // Nothing to intercept: the CA permits only the never-resolving `.invalid`.
        let none = PodCa::generate(Constraints::for_hosts(&[]), SystemTime::now(), Duration::from_secs(86400)).unwrap();
        assert!(none.mint("api.example.test", SystemTime::now()).is_err());
        assert!(!none.constraints.permits("x.invalid"), "permits() reports the policy's names only");
    }

    #[test]
    fn a_ca_for_addresses_alone_permits_no_real_dns_name() {
        let now = SystemTime::now();
        let ca =
            PodCa::generate(Constraints::for_hosts(&hosts(&["10.1.2.3"])), now, Duration::from_secs(86400)).unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::DnsName("evil.test".try_into().unwrap())];
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + LEAF_VALIDITY).into();
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        let err = verify(&ca, &[cert.der().clone(), ca.cert.clone()], "evil.test").unwrap_err();
        assert!(format!("{err:?}").contains("NameConstraintViolation"), "{err:?}");
        let leaf = ca.mint("10.1.2.3", now).unwrap();
        verify(&ca, &leaf.chain, "10.1.2.3").unwrap();
    }

    #[test]
    fn leaves_verify_inside_the_constraints_and_nothing_outside_does() {
        let now = SystemTime::now();
        let ca = PodCa::generate(
            Constraints::for_hosts(&hosts(&["api.example.test", "*.models.test"])),
            now,
            Duration::from_secs(86400),
        )
        .unwrap();
        for name in ["api.example.test", "eu.models.test", "a.b.models.test"] {
            let leaf = ca.mint(name, now).unwrap();
            verify(&ca, &leaf.chain, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for name in ["evil.test", "api.example.test.evil.test", "xmodels.test", "127.0.0.1"] {
            assert!(matches!(ca.mint(name, now), Err(CaError::OutsideConstraints(_))), "{name}");
        }
        // A leaf for an outside name signed by the CA's key anyway (as a thief would): a standard
        // verifier refuses it.
        for (name, san) in [
            ("evil.test", SanType::DnsName("evil.test".try_into().unwrap())),
            ("127.0.0.1", SanType::IpAddress("127.0.0.1".parse().unwrap())),
        ] {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = CertificateParams::default();
            params.subject_alt_names = vec![san];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.not_before = (now - BACKDATE).into();
            params.not_after = (now + LEAF_VALIDITY).into();
            let cert = params.signed_by(&key, &ca.issuer).unwrap();
            let err = verify(&ca, &[cert.der().clone(), ca.cert.clone()], name).unwrap_err();
            assert!(format!("{err:?}").contains("NameConstraintViolation"), "{name}: {err:?}");
        }
    }
}
