//! A test CA for upstreams' certificates (never the pod CA): tools trust it through `ca_file`.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA that signs test servers' certificates.
pub struct TestCa {
    cert: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A fresh CA.
    pub fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "credproxy test CA");
        let cert = p.self_signed(&key).unwrap();
        TestCa { cert, issuer: Issuer::new(p, key) }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server configuration for `name` offering `alpn`; `expired` makes a certificate of 2020.
    pub fn server_alpn(&self, name: &str, expired: bool, alpn: &[&[u8]]) -> rustls::ServerConfig {
        self.build(&[name], expired, alpn)
    }

    /// An HTTP/1.1 server configuration whose certificate names all of `names`.
    pub fn server_names(&self, names: &[&str]) -> rustls::ServerConfig {
        self.build(names, false, &[b"http/1.1"])
    }

    /// An HTTP/1.1 server configuration for `name` that requires a client certificate signed by
    /// one of `client_roots`.
    pub fn server_mtls(&self, name: &str, client_roots: &[CertificateDer<'static>]) -> rustls::ServerConfig {
        let mut roots = rustls::RootCertStore::empty();
        for r in client_roots {
            roots.add(r.clone()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
        self.build_with(&[name], false, &[b"http/1.1"], Some(verifier))
    }

    fn build(&self, names: &[&str], expired: bool, alpn: &[&[u8]]) -> rustls::ServerConfig {
        self.build_with(names, expired, alpn, None)
    }

    fn build_with(
        &self,
        names: &[&str],
        expired: bool,
        alpn: &[&[u8]],
        clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> rustls::ServerConfig {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let builder =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap();
        let builder = match clients {
            Some(v) => builder.with_client_cert_verifier(v),
            None => builder.with_no_client_auth(),
        };
        let mut cfg = builder.with_single_cert(chain, key).unwrap();
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        cfg
    }

    /// A leaf certificate for `names` and its key, both PEM (for servers that read files).
    pub fn leaf_pem(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// An HTTP/1.1 server configuration for `name`.
    pub fn server(&self, name: &str, expired: bool) -> rustls::ServerConfig {
        self.server_alpn(name, expired, &[b"http/1.1"])
    }
}
