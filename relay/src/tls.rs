//! Server TLS: the certificate (operator-supplied, or self-signed and made on first start) and the
//! rustls configs each listener uses. Only the `ring` provider is used.

use crate::config::Config;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerConfig;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCert { path: PathBuf },
    #[error("{path} holds no PEM private key")]
    NoKey { path: PathBuf },
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("certificate and key do not work together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The acceptors for the kinds of listener we run.
#[derive(Clone)]
pub struct TlsConfigs {
    /// TLS 1.3 only, no ALPN requirement: 465, 587 STARTTLS, 993, 143 STARTTLS. The Delta Chat
    /// core offers ALPN `imap`/`smtp` on STARTTLS ports, so the list names them: rustls refuses the
    /// handshake when the server has ALPN protocols and none overlap, and accepts any client when
    /// the client offers none.
    pub client: TlsAcceptor,
    /// TLS 1.2 and 1.3, for port 25 where other MTAs connect.
    pub mx: TlsAcceptor,
    /// HTTPS on 443.
    pub https: TlsAcceptor,
    /// The certificate chain, for those who want to show its fingerprint or expiry.
    pub chain: Arc<Vec<CertificateDer<'static>>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsConfigs {
    pub fn load(cfg: &Config) -> Result<TlsConfigs, TlsError> {
        let (chain, key) = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(c), Some(k)) => (read_chain(c)?, read_key(k)?),
            _ => self_signed(cfg)?,
        };
        Self::from_parts(chain, key)
    }

    pub fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<TlsConfigs, TlsError> {
        let build = |versions: &[&'static rustls::SupportedProtocolVersion],
                     alpn: &[&[u8]]|
         -> Result<Arc<ServerConfig>, TlsError> {
            let mut sc = ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(versions)?
                .with_no_client_auth()
                .with_single_cert(chain.clone(), key.clone_key())?;
            sc.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            // Clients cache sessions per (port, ALPN); resumption saves a full handshake on every
            // reconnect of a phone that wakes up.
            sc.ticketer = rustls::crypto::ring::Ticketer::new()?;
            sc.session_storage = rustls::server::ServerSessionMemoryCache::new(1024);
            Ok(Arc::new(sc))
        };
        let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        let tls12up: &[&'static rustls::SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        Ok(TlsConfigs {
            client: TlsAcceptor::from(build(tls13, &[b"imap", b"smtp"])?),
            mx: TlsAcceptor::from(build(tls12up, &[])?),
            https: TlsAcceptor::from(build(tls12up, &[b"http/1.1"])?),
            chain: Arc::new(chain),
        })
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey {
            path: path.to_owned(),
        })
}

/// Loads `<data>/tls/{cert,key}.pem`, making them on first start. The key is reused forever so
/// that clients that pinned it (Delta Chat remembers the SPKI) keep trusting us.
fn self_signed(
    cfg: &Config,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let dir = cfg.data_dir.join("tls");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((read_chain(&cert_path)?, read_key(&key_path)?));
    }
    let (cert_pem, key_pem) = make_self_signed(cfg)?;
    std::fs::create_dir_all(&dir).map_err(|source| TlsError::Write {
        path: dir.clone(),
        source,
    })?;
    write_private(&key_path, key_pem.as_bytes())?;
    write_private(&cert_path, cert_pem.as_bytes())?;
    tracing::info!(path = %cert_path.display(), "made a self-signed certificate");
    Ok((read_chain(&cert_path)?, read_key(&key_path)?))
}

/// A P-256 leaf certificate (CA:FALSE) for the domain and the names clients try, valid for a
/// century like the reference's `openssl req -days 36500`.
pub fn make_self_signed(cfg: &Config) -> Result<(String, String), TlsError> {
    let mut names: Vec<String> = Vec::new();
    let mut params = rcgen::CertificateParams::default();
    if let Some(ip) = cfg.literal_ip() {
        params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
    } else {
        let d = &cfg.mail_domain;
        for n in [
            d.clone(),
            format!("www.{d}"),
            format!("mta-sts.{d}"),
            format!("imap.{d}"),
            format!("smtp.{d}"),
        ] {
            names.push(n);
        }
        for n in &names {
            params
                .subject_alt_names
                .push(rcgen::SanType::DnsName(n.clone().try_into()?));
        }
    }
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cfg.mail_domain.clone());
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(36500);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let werr = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(werr)?;
    f.write_all(data).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_certificate_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::with_domain("[127.0.0.1]", dir.path()).unwrap();
        let a = TlsConfigs::load(&cfg).unwrap();
        let b = TlsConfigs::load(&cfg).unwrap();
        assert_eq!(a.chain[0], b.chain[0]);
    }

    #[test]
    fn named_domain_gets_all_client_names() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::with_domain("_chat.example.org", dir.path()).unwrap();
        let (pem, _) = make_self_signed(&cfg).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        TlsConfigs::load(&cfg).unwrap();
    }
}
