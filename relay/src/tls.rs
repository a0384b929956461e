//! Server TLS: the certificate (operator-supplied, or self-signed and made on first start) and the
//! rustls configs each listener uses. Only the `ring` provider is used.

pub mod client;
pub mod lean;

use crate::config::Config;
use crate::sync::LockExt;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
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

/// The acceptors for the kinds of listener we run. All of them take their certificate from one
/// [`CertStore`], so a renewed certificate is used by every listener's next handshake.
#[derive(Clone)]
pub struct TlsConfigs {
    /// TLS 1.3 only, no ALPN requirement: 465, 587 STARTTLS, 993, 143 STARTTLS. The Delta Chat
    /// core offers ALPN `imap`/`smtp` on STARTTLS ports, so the list names them: rustls refuses the
    /// handshake when the server has ALPN protocols and none overlap, and accepts any client when
    /// the client offers none.
    pub client: TlsAcceptor,
    /// The same config as `client`, for port 443 when the ClientHello offers `imap` or `smtp`.
    pub client_config: Arc<ServerConfig>,
    /// TLS 1.2 and 1.3, for port 25 where other MTAs connect.
    pub mx: TlsAcceptor,
    /// HTTPS on 443 (ALPN `http/1.1`, or none).
    pub https: TlsAcceptor,
    pub https_config: Arc<ServerConfig>,
    /// The certificate chain at start, for those who want to show its fingerprint or expiry
    /// ([`CertStore::chain`] has the current one).
    pub chain: Arc<Vec<CertificateDer<'static>>>,
    /// The certificate every config uses; it rereads the files when they change.
    pub certs: Arc<CertStore>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How often at most a handshake looks at the certificate files' modification times.
pub const RELOAD_CHECK: Duration = Duration::from_secs(10);

/// The certificate and key, reread from their files when either file's modification time
/// changes (checked at most every `check_every`, during a handshake). A renewal that writes an
/// unreadable or mismatched pair keeps the old certificate and logs why.
#[derive(Debug)]
pub struct CertStore {
    files: Option<(PathBuf, PathBuf)>,
    check_every: Duration,
    state: Mutex<CertState>,
}

#[derive(Debug)]
struct CertState {
    key: Arc<CertifiedKey>,
    chain: Arc<Vec<CertificateDer<'static>>>,
    stamp: Option<(SystemTime, SystemTime)>,
    checked: Instant,
    /// Look at the files at the next handshake, whenever the last look was.
    force: bool,
}

fn mtimes(files: &(PathBuf, PathBuf)) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(&files.0)?, m(&files.1)?))
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
) -> Result<CertifiedKey, TlsError> {
    let signing = provider().key_provider.load_private_key(key.clone_key())?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()?;
    Ok(ck)
}

impl CertStore {
    /// A fixed certificate (tests, fuzzing): never reloaded.
    pub fn fixed(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<CertStore, TlsError> {
        Ok(CertStore {
            files: None,
            check_every: RELOAD_CHECK,
            state: Mutex::new(CertState {
                key: Arc::new(certified(chain.clone(), &key)?),
                chain: Arc::new(chain),
                stamp: None,
                checked: Instant::now(),
                force: false,
            }),
        })
    }

    /// The certificate in `cert` and the key in `key`, watched for changes.
    pub fn watch(cert: &Path, key: &Path, check_every: Duration) -> Result<CertStore, TlsError> {
        let files = (cert.to_owned(), key.to_owned());
        let stamp = mtimes(&files);
        let chain = read_chain(cert)?;
        let ck = certified(chain.clone(), &read_key(key)?)?;
        Ok(CertStore {
            files: Some(files),
            check_every,
            state: Mutex::new(CertState {
                key: Arc::new(ck),
                chain: Arc::new(chain),
                stamp,
                checked: Instant::now(),
                force: false,
            }),
        })
    }

    /// The current chain (after any reload).
    pub fn chain(&self) -> Arc<Vec<CertificateDer<'static>>> {
        self.current();
        self.state.lock_or_recover().chain.clone()
    }

    /// Makes the next handshake look at the files at once (after the ACME client wrote them)
    /// instead of within [`RELOAD_CHECK`].
    pub fn recheck(&self) {
        self.state.lock_or_recover().force = true;
    }

    /// The current certificate, reloading it first if the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut st = self.state.lock_or_recover();
        let Some(files) = &self.files else {
            return st.key.clone();
        };
        if st.checked.elapsed() < self.check_every && !st.force {
            return st.key.clone();
        }
        st.checked = Instant::now();
        st.force = false;
        let stamp = mtimes(files);
        if stamp.is_none() || stamp == st.stamp {
            return st.key.clone();
        }
        let loaded = read_chain(&files.0).and_then(|chain| {
            let ck = certified(chain.clone(), &read_key(&files.1)?)?;
            Ok((chain, ck))
        });
        match loaded {
            Ok((chain, ck)) => {
                tracing::info!(path = %files.0.display(), "certificate changed on disk; new handshakes use it");
                st.key = Arc::new(ck);
                st.chain = Arc::new(chain);
                st.stamp = stamp;
            }
            Err(e) => {
                // Half-written renewal: try again at the next check, keep serving the old one.
                tracing::warn!("certificate files changed but cannot be used (keeping the old certificate): {e}");
            }
        }
        st.key.clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl TlsConfigs {
    pub fn load(cfg: &Config) -> Result<TlsConfigs, TlsError> {
        let (cert, key) = match (cfg.tls_mode(), &cfg.tls_cert, &cfg.tls_key) {
            (crate::config::TlsMode::Acme, _, _) => acme_placeholder(cfg)?,
            (_, Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => self_signed(cfg)?,
        };
        Self::from_store(Arc::new(CertStore::watch(&cert, &key, RELOAD_CHECK)?))
    }

    pub fn from_store(certs: Arc<CertStore>) -> Result<TlsConfigs, TlsError> {
        let build = |versions: &[&'static rustls::SupportedProtocolVersion],
                     alpn: &[&[u8]]|
         -> Result<Arc<ServerConfig>, TlsError> {
            let mut sc = ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(versions)?
                .with_no_client_auth()
                .with_cert_resolver(certs.clone());
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
        let client_config = build(tls13, &[b"imap", b"smtp"])?;
        let https_config = build(tls12up, &[b"http/1.1"])?;
        Ok(TlsConfigs {
            client: TlsAcceptor::from(client_config.clone()),
            client_config,
            mx: TlsAcceptor::from(build(tls12up, &[])?),
            https: TlsAcceptor::from(https_config.clone()),
            https_config,
            chain: certs.chain(),
            certs,
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

/// Makes `<data>/tls/{cert,key}.pem` on first start and returns their paths. The key is reused
/// forever so that clients that pinned it (Delta Chat remembers the SPKI) keep trusting us.
fn self_signed(cfg: &Config) -> Result<(PathBuf, PathBuf), TlsError> {
    let dir = cfg.data_dir.join("tls");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let (cert_pem, key_pem) = make_self_signed(cfg)?;
    std::fs::create_dir_all(&dir).map_err(|source| TlsError::Write {
        path: dir.clone(),
        source,
    })?;
    write_private(&key_path, key_pem.as_bytes())?;
    write_private(&cert_path, cert_pem.as_bytes())?;
    tracing::info!(path = %cert_path.display(), "made a self-signed certificate");
    Ok((cert_path, key_path))
}

/// Where the ACME certificate and key live: `tls_cert`/`tls_key` when given, else
/// `<data_dir>/acme/{cert,key}.pem`. The ACME client writes them; the listeners read them.
pub fn acme_cert_paths(cfg: &Config) -> (PathBuf, PathBuf) {
    match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let dir = cfg.data_dir.join("acme");
            (dir.join("cert.pem"), dir.join("key.pem"))
        }
    }
}

/// ACME mode: the files the ACME client writes (see [`acme_cert_paths`]). Until the
/// first certificate is issued they hold a self-signed one, so the listeners can start (port 80
/// must be up to answer the HTTP-01 challenge) and pick up the real one when it is written.
fn acme_placeholder(cfg: &Config) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert_path, key_path) = acme_cert_paths(cfg);
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let (cert_pem, key_pem) = make_self_signed(cfg)?;
    if let Some(dir) = cert_path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_owned(),
            source,
        })?;
    }
    write_private(&key_path, key_pem.as_bytes())?;
    write_private(&cert_path, cert_pem.as_bytes())?;
    tracing::info!(path = %cert_path.display(), "no ACME certificate yet: serving a self-signed one until it is issued");
    Ok((cert_path, key_path))
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

/// Writes `data` to `path` atomically ([`crate::io::write_private`]), readable by the owner only.
pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    crate::io::write_private(path, data).map_err(|source| TlsError::Write {
        path: path.to_owned(),
        source,
    })
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
