//! Client TLS, one place for every outgoing connection (delivery, push, `/mxdeliv`, ACME):
//! strict web-PKI verification against the system roots (webpki-roots when the system has none)
//! plus the operator's extra CA file, or, for outbound delivery only (reference §7), encryption
//! without verification for domain literals and `_` names. Only the `ring` provider.

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use tokio_rustls::TlsConnector;

/// The four connectors: {verified, unverified} × {SMTP (no ALPN), HTTPS (ALPN `http/1.1`)}.
/// Each rustls config keeps its own session cache, so TLS sessions are resumed per kind.
pub struct Connectors {
    pub smtp_verified: TlsConnector,
    pub smtp_unverified: TlsConnector,
    pub https_verified: TlsConnector,
    pub https_unverified: TlsConnector,
}

impl Connectors {
    pub fn new(ca_file: Option<&Path>) -> anyhow::Result<Connectors> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verified = verified_config(ca_file, "outbound_ca_file")?;
        let unverified = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth();
        let https = |c: &ClientConfig| {
            let mut c = c.clone();
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            TlsConnector::from(Arc::new(c))
        };
        Ok(Connectors {
            https_verified: https(&verified),
            https_unverified: https(&unverified),
            smtp_verified: TlsConnector::from(Arc::new(verified)),
            smtp_unverified: TlsConnector::from(Arc::new(unverified)),
        })
    }
}

/// A verifying client config (ring only) trusting the system's roots plus the certificates in
/// `ca_file` (named by its config `key` in errors), for clients that add their own ALPN.
pub fn verified_config(ca_file: Option<&Path>, key: &str) -> anyhow::Result<ClientConfig> {
    let mut roots = system_roots().clone();
    if let Some(path) = ca_file {
        let pem =
            std::fs::read(path).with_context(|| format!("cannot read {key} {}", path.display()))?;
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .with_context(|| format!("bad PEM in {key} {}", path.display()))?;
        if certs.is_empty() {
            anyhow::bail!("{key} {} holds no certificate", path.display());
        }
        for c in certs {
            roots
                .add(c)
                .with_context(|| format!("unusable certificate in {key} {}", path.display()))?;
        }
    }
    Ok(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The system's trust anchors, read once per process; webpki-roots when the system has none.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            tracing::info!("no system CA certificates found; using the built-in webpki roots");
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        roots
    })
}

/// The name the TLS handshake uses for `host` (an MX host name or a domain literal): SNI and
/// the name the certificate is checked against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    if let Some(ip) = crate::dns::literal_ip(host) {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string()).map_err(|e| format!("{host:?} is no TLS name: {e}"))
}

/// Encrypts without checking who is at the other end, for destinations that cannot have a
/// web-PKI certificate. The handshake signatures are still verified, so the connection is at
/// least bound to the key the server presented.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
