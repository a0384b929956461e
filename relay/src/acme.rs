//! Certificates from an ACME CA (RFC 8555) with instant-acme: one certificate for `{d}`,
//! `mta-sts.{d}` and `www.{d}` with an ECDSA P-256 key (reference §7), validated by HTTP-01 on
//! our own port 80 (`web::redirect_to_https` answers from [`Acme::key_authorization`]).
//!
//! The account key (ECDSA P-256) is made once and kept in `<data_dir>/acme/account.json` (0600).
//! The certificate and key are written atomically to [`crate::tls::acme_cert_paths`]; every listener reads them
//! through [`crate::tls::CertStore`], which notices the new files, so no restart is needed. A
//! failed order logs the CA's problem document and leaves the old files alone.
//!
//! Renewal: [`renewal_schedule`] checks at start and then daily; it renews when fewer than
//! `acme_renew_days` days remain, or earlier when the CA's renewal information (ARI, RFC 9773)
//! says so.

use crate::config::Config;
use crate::sync::LockExt;
use crate::Relay;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::CertificateDer;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The ACME client's shared state.
#[derive(Default)]
pub struct Acme {
    /// HTTP-01 token → key authorization, while an order runs.
    challenges: Mutex<HashMap<String, String>>,
    /// One order at a time (the daily check and `relaybox cert`).
    running: tokio::sync::Mutex<()>,
}

impl Acme {
    /// The answer to `GET /.well-known/acme-challenge/<token>` on port 80.
    pub fn key_authorization(&self, token: &str) -> Option<String> {
        self.map().get(token).cloned()
    }

    /// Serves `key_authorization` at `/.well-known/acme-challenge/<token>` until the order ends.
    pub fn set_challenge(&self, token: &str, key_authorization: &str) {
        self.map()
            .insert(token.to_string(), key_authorization.to_string());
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.challenges.lock_or_recover()
    }
}

/// The names the certificate covers.
pub fn names(cfg: &Config) -> Vec<String> {
    let d = &cfg.mail_domain;
    vec![d.clone(), format!("mta-sts.{d}"), format!("www.{d}")]
}

/// What the relay needs to know about a certificate.
#[derive(Debug)]
pub struct CertInfo {
    /// Unix time of `notAfter`.
    pub not_after: i64,
    /// Issuer equals subject: our self-signed placeholder.
    pub self_issued: bool,
    pub dns_names: Vec<String>,
    /// The ARI identifier (authority key id + serial), when the certificate has an AKI.
    pub ari_id: Option<CertificateIdentifier<'static>>,
}

/// Parses the first certificate of a PEM chain.
pub fn inspect(pem: &[u8]) -> Result<CertInfo, String> {
    let der = rustls_pemfile::certs(&mut &pem[..])
        .next()
        .ok_or("no PEM certificate")?
        .map_err(|e| format!("bad PEM: {e}"))?;
    inspect_der(der.as_ref())
}

/// Parses one DER certificate: the relay's one X.509 reader (metrics uses it too).
pub fn inspect_der(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(s) = n {
                dns_names.push(s.to_ascii_lowercase());
            }
        }
    }
    Ok(CertInfo {
        not_after: cert.validity().not_after.timestamp(),
        self_issued: cert.issuer().as_raw() == cert.subject().as_raw(),
        dns_names,
        ari_id: CertificateIdentifier::try_from(&CertificateDer::from(der))
            .ok()
            .map(CertificateIdentifier::into_owned),
    })
}

fn date(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| unix.to_string())
}

/// Progress lines: logged as they happen and returned to `relaybox cert`.
struct Progress(Vec<String>);

impl Progress {
    fn say(&mut self, line: String) {
        tracing::info!("acme: {line}");
        self.0.push(line);
    }
}

/// Obtains or renews the certificate if needed (always with `force`). `Ok` carries the progress
/// lines; `Err` the reason, with the CA's own error text, after which the old certificate stays.
pub async fn run(relay: &Relay, force: bool) -> Result<String, String> {
    let cfg = &relay.cfg;
    if !cfg.is_acme() {
        return Err("the relay does not use ACME (set tls = \"acme\" in its config)".into());
    }
    if cfg.is_ip_literal() {
        return Err("IP-literal domains never use ACME".into());
    }
    let _one = relay.acme.running.lock().await;
    let mut p = Progress(Vec::new());
    let result = run_locked(relay, force, &mut p).await;
    relay.acme.map().clear();
    match result {
        Ok(()) => Ok(p.0.join("\n")),
        Err(e) => {
            tracing::error!("acme: {e}; keeping the old certificate");
            p.0.push(format!("{e}; keeping the old certificate"));
            Err(p.0.join("\n"))
        }
    }
}

async fn run_locked(relay: &Relay, force: bool, p: &mut Progress) -> Result<(), String> {
    let cfg = &relay.cfg;
    let (cert_path, key_path) = crate::tls::acme_cert_paths(cfg);
    let names = names(cfg);
    let now = relay.clock.now();
    let current = std::fs::read(&cert_path)
        .map_err(|e| e.to_string())
        .and_then(|pem| inspect(&pem));
    let reason = match &current {
        Err(e) => Some(format!("no usable certificate ({e})")),
        Ok(c) if c.self_issued => Some("only a self-signed certificate so far".to_string()),
        Ok(c) if names.iter().any(|n| !c.dns_names.contains(n)) => {
            Some("the certificate does not cover every name".to_string())
        }
        Ok(_) if force => Some("renewal requested".to_string()),
        Ok(c) if c.not_after - now < i64::from(cfg.acme_renew_days) * 86_400 => Some(format!(
            "the certificate expires {} (less than {} days left)",
            date(c.not_after),
            cfg.acme_renew_days
        )),
        Ok(_) => None,
    };
    let account = load_account(cfg, p).await?;
    let reason = match (reason, &current) {
        (Some(r), _) => r,
        (None, Ok(c)) => match ari_says_renew(&account, c, now).await {
            Some(r) => r,
            None => {
                p.say(format!(
                    "certificate valid until {}; no renewal needed",
                    date(c.not_after)
                ));
                return Ok(());
            }
        },
        (None, Err(_)) => unreachable!("a missing certificate always has a reason"),
    };
    p.say(format!(
        "ordering certificate for {} from {} ({reason})",
        names.join(", "),
        cfg.acme_directory
    ));
    let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| format!("the CA refused the order: {e}"))?;
    {
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = a.map_err(|e| format!("cannot fetch an authorization: {e}"))?;
            let ident = a.identifier().to_string();
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => {
                    p.say(format!("{ident}: already authorized"));
                    continue;
                }
                other => return Err(format!("{ident}: authorization is {other:?}")),
            }
            let mut ch = a
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| format!("{ident}: the CA offers no HTTP-01 challenge"))?;
            let token = ch.token.clone();
            relay
                .acme
                .set_challenge(&token, ch.key_authorization().as_str());
            ch.set_ready()
                .await
                .map_err(|e| format!("{ident}: cannot start the challenge: {e}"))?;
            p.say(format!(
                "challenge for {ident} started (http://{ident}/.well-known/acme-challenge/{token})"
            ));
        }
    }
    // Polls with backoff (0.5 s, ×1.5) until the deadline.
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(500))
        .backoff(1.5)
        .timeout(Duration::from_secs(180));
    let status = order.poll_ready(&retry).await;
    if !matches!(status, Ok(OrderStatus::Ready)) {
        let mut why = match status {
            Ok(s) => format!("the order is {s:?}"),
            Err(e) => format!("the order failed: {e}"),
        };
        // The challenges' own problem documents say what the CA saw.
        let mut authzs = order.authorizations();
        while let Some(Ok(a)) = authzs.next().await {
            let ident = a.identifier().to_string();
            for c in &a.challenges {
                if let Some(e) = &c.error {
                    why.push_str(&format!("\n  {ident}: {e}"));
                }
            }
        }
        return Err(why);
    }
    for n in &names {
        p.say(format!("challenge for {n} validated"));
    }
    let key_pem = order
        .finalize()
        .await
        .map_err(|e| format!("finalizing the order failed: {e}"))?;
    let chain_pem = order
        .poll_certificate(&retry)
        .await
        .map_err(|e| format!("downloading the certificate failed: {e}"))?;
    let info = inspect(chain_pem.as_bytes())?;
    // Refuse a chain that does not go with the key before it replaces working files.
    let chain: Vec<_> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .ok()
        .flatten()
        .ok_or("the new key cannot be read")?;
    crate::tls::CertStore::fixed(chain, key)
        .map_err(|e| format!("the issued certificate is unusable: {e}"))?;
    for (path, data) in [(&key_path, &key_pem), (&cert_path, &chain_pem)] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        crate::tls::write_private(path, data.as_bytes()).map_err(|e| e.to_string())?;
    }
    relay.tls.certs.recheck();
    p.say(format!(
        "certificate installed, valid until {} ({})",
        date(info.not_after),
        cert_path.display()
    ));
    Ok(())
}

/// Asks the CA's renewal information whether to renew now; `None` when it does not say so or
/// the CA has no ARI.
async fn ari_says_renew(account: &Account, c: &CertInfo, now: i64) -> Option<String> {
    let id = c.ari_id.as_ref()?;
    match account.renewal_info(id).await {
        Ok((info, _)) if info.suggested_window.start.unix_timestamp() <= now => Some(format!(
            "the CA's renewal information suggests renewing from {}",
            date(info.suggested_window.start.unix_timestamp())
        )),
        Ok(_) => None,
        Err(instant_acme::Error::Unsupported(_)) => None,
        Err(e) => {
            tracing::debug!("acme: renewal information unavailable: {e}");
            None
        }
    }
}

/// The HTTPS client for the ACME server: the same verifying client TLS as outbound delivery
/// (system roots, webpki-roots when there are none), plus `acme_ca_file`.
fn http_client(
    cfg: &Config,
) -> Result<
    hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        instant_acme::BodyWrapper<bytes::Bytes>,
    >,
    String,
> {
    let tls = crate::tls::client::verified_config(cfg.acme_ca_file.as_deref(), "acme_ca_file")
        .map_err(|e| format!("{e:#}"))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

/// `<data_dir>/acme/account.json`: the directory URL and the account's credentials.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    directory: String,
    credentials: serde_json::Value,
}

async fn load_account(cfg: &Config, p: &mut Progress) -> Result<Account, String> {
    let builder = || -> Result<instant_acme::AccountBuilder, String> {
        Ok(Account::builder_with_http(Box::new(http_client(cfg)?)))
    };
    let path = cfg.data_dir.join("acme").join("account.json");
    if let Ok(text) = std::fs::read(&path) {
        match serde_json::from_slice::<Stored>(&text) {
            Ok(s) if s.directory == cfg.acme_directory => {
                let creds: AccountCredentials = serde_json::from_value(s.credentials)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                return builder()?
                    .from_credentials(creds)
                    .await
                    .map_err(|e| format!("cannot reach the ACME server: {e}"));
            }
            Ok(s) => p.say(format!(
                "the stored ACME account belongs to {}; creating one at {}",
                s.directory, cfg.acme_directory
            )),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    let contact = cfg.acme_email.as_ref().map(|m| format!("mailto:{m}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.acme_directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("cannot create the ACME account: {e}"))?;
    let stored = Stored {
        directory: cfg.acme_directory.clone(),
        credentials: serde_json::to_value(&creds).map_err(|e| e.to_string())?,
    };
    let dir = cfg.data_dir.join("acme");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let text = serde_json::to_vec_pretty(&stored).map_err(|e| e.to_string())?;
    crate::tls::write_private(&path, &text).map_err(|e| e.to_string())?;
    p.say(format!(
        "created ACME account {} (key in {})",
        account.id(),
        path.display()
    ));
    Ok(account)
}

/// Obtains the certificate at start if there is none, then checks daily (hourly after a
/// failure) until shutdown.
pub async fn renewal_schedule(relay: Arc<Relay>) {
    loop {
        let wait = match run(&relay, false).await {
            Ok(_) => Duration::from_secs(86_400),
            Err(_) => Duration::from_secs(3600),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = relay.shutdown.wait() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::with_domain("chat.example.org", dir.path()).unwrap();
        assert_eq!(
            names(&cfg),
            [
                "chat.example.org",
                "mta-sts.chat.example.org",
                "www.chat.example.org"
            ]
        );
        assert_eq!(
            crate::tls::acme_cert_paths(&cfg).0,
            dir.path().join("acme/cert.pem")
        );
    }

    #[test]
    fn self_signed_placeholder_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::with_domain("chat.example.org", dir.path()).unwrap();
        let (pem, _) = crate::tls::make_self_signed(&cfg).unwrap();
        let info = inspect(pem.as_bytes()).unwrap();
        assert!(info.self_issued);
        assert!(info
            .dns_names
            .contains(&"mta-sts.chat.example.org".to_string()));
        assert!(info.not_after > 4_000_000_000);
    }
}
