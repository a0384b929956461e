//! DKIM: the relay's signing key, signing outgoing mail, the DNS record that publishes the key,
//! and the origin check on incoming mail (reference §3.5 step 7, §6.1, §7).
//!
//! The key is RSA-2048, made on first start and kept as PEM at `<data_dir>/dkim/<selector>.key`.
//! PKCS#1 (`BEGIN RSA PRIVATE KEY`, what `opendkim-genkey` writes) and PKCS#8 both load, so a
//! relay migrated from the reference can keep its `opendkim._domainkey` record by copying
//! `/etc/dkimkeys/opendkim.private` there. IP-literal relays publish no DNS, so they neither
//! make a key nor sign.

use mail_auth::common::crypto::{Algorithm, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner};
use mail_auth::{AuthenticatedMessage, DkimResult, Parameters, ResolverCache};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::dns::{records, Dns};
use crate::policy::Reply;

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("cannot read the DKIM key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the DKIM key {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an RSA private key in PEM (PKCS#1 or PKCS#8): {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("cannot generate a DKIM key: {0}")]
    Generate(String),
    #[error("cannot DKIM-sign the message: {0}")]
    Sign(String),
}

/// Headers OpenDKIM never signs (its built-in `OmitHeaders`): trace and transport headers that
/// later hops may add, remove or rewrite.
const OMIT: &[&str] = &[
    "return-path",
    "received",
    "comments",
    "keywords",
    "bcc",
    "resent-bcc",
    "dkim-signature",
];

/// The reference's `OversignHeaders`: each is signed once more than it occurs (an absent one
/// once, as empty), so nobody can add another instance without breaking the signature.
const OVERSIGN: &[&str] = &[
    "from",
    "reply-to",
    "subject",
    "date",
    "to",
    "cc",
    "resent-date",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
    "in-reply-to",
    "references",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
    "autocrypt",
];

/// The relay's DKIM identity: `d=<mail_domain>; s=<selector>` and the key, shared by all signers.
pub struct Dkim {
    domain: String,
    selector: String,
    /// `None` for IP-literal domains: nothing to sign with, nothing to publish.
    key: Option<Key>,
}

struct Key {
    signer: Arc<RsaKey<Sha256>>,
    /// SubjectPublicKeyInfo DER, what `p=` carries.
    spki: Vec<u8>,
}

/// mail-auth's signer takes its key by value; this lets every message share the one key.
struct SharedKey(Arc<RsaKey<Sha256>>);

impl SigningKey for SharedKey {
    type Hasher = Sha256;
    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }
    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

impl Dkim {
    /// Where the key of `cfg` lives.
    pub fn key_path(cfg: &Config) -> PathBuf {
        cfg.data_dir
            .join("dkim")
            .join(format!("{}.key", cfg.dkim_selector))
    }

    /// Loads the key, making and storing a new one on first start. Several processes starting
    /// at once all end up with the same key: the first file to land wins.
    pub fn load_or_create(cfg: &Config) -> Result<Dkim, DkimError> {
        if cfg.is_ip_literal() {
            return Ok(Dkim::keyless(cfg));
        }
        let path = Dkim::key_path(cfg);
        if !path.exists() {
            tracing::info!(
                path = %path.display(),
                "generating the DKIM key (RSA 2048; this takes a moment)"
            );
            let pem = generate_pem()?;
            store_new(&path, pem.as_bytes())?;
        }
        Dkim::load(cfg)
    }

    /// Loads the existing key without ever writing (for `relaybox dns` beside a running relay).
    pub fn load(cfg: &Config) -> Result<Dkim, DkimError> {
        if cfg.is_ip_literal() {
            return Ok(Dkim::keyless(cfg));
        }
        let path = Dkim::key_path(cfg);
        let pem = std::fs::read(&path).map_err(|source| DkimError::Read {
            path: path.clone(),
            source,
        })?;
        let key = parse_key(&pem).map_err(|reason| DkimError::BadKey { path, reason })?;
        Ok(Dkim {
            domain: cfg.mail_domain.clone(),
            selector: cfg.dkim_selector.clone(),
            key: Some(key),
        })
    }

    fn keyless(cfg: &Config) -> Dkim {
        Dkim {
            domain: cfg.mail_domain.clone(),
            selector: cfg.dkim_selector.clone(),
            key: None,
        }
    }

    /// The message with a `DKIM-Signature:` header in front (`d=<mail_domain>`,
    /// `c=relaxed/simple`). IP-literal relays return it unchanged.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, DkimError> {
        let Some(header) = self.signature(message)? else {
            return Ok(message.to_vec());
        };
        let mut out = Vec::with_capacity(header.len() + message.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(message);
        Ok(out)
    }

    /// The `DKIM-Signature:` header (with its CRLF) that [`Dkim::sign`] puts in front of
    /// `message`, without copying the message; `None` for IP-literal relays. For a spooled
    /// message `message` is a mapped view, and the caller writes the header before the file.
    pub fn signature(&self, message: &[u8]) -> Result<Option<String>, DkimError> {
        let Some(key) = &self.key else {
            return Ok(None);
        };
        let parsed = AuthenticatedMessage::parse(message)
            .ok_or_else(|| DkimError::Sign("the message has no header".into()))?;
        let names = headers_to_sign(parsed.headers.iter().map(|(name, _)| *name));
        let signature = DkimSigner::from_key(SharedKey(key.signer.clone()))
            .domain(self.domain.as_str())
            .selector(self.selector.as_str())
            .headers(names)
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Simple)
            .sign(message)
            .map_err(|e| DkimError::Sign(e.to_string()))?;
        Ok(Some(signature.to_header()))
    }

    /// The TXT record data publishing the key, as the reference writes it; `None` for
    /// IP-literal relays.
    pub fn txt_record(&self) -> Option<String> {
        use base64::Engine;
        let key = self.key.as_ref()?;
        let p = base64::engine::general_purpose::STANDARD.encode(&key.spki);
        Some(format!("v=DKIM1;k=rsa;p={p};s=email;t=s"))
    }

    /// `<selector>._domainkey.<domain>.`
    pub fn record_name(&self) -> String {
        format!("{}._domainkey.{}.", self.selector, self.domain)
    }

    /// The zone-file line for the key, the data split into quoted strings of at most 255
    /// characters (the limit of one DNS character-string). Empty for IP-literal relays.
    pub fn zone_lines(&self) -> Vec<String> {
        self.txt_record()
            .map(|txt| records::zone_line(&self.record_name(), "TXT", &records::txt_rdata(&txt)))
            .into_iter()
            .collect()
    }
}

impl records::DkimRecord for Dkim {
    fn record_name(&self) -> String {
        Dkim::record_name(self)
    }
    fn txt_record(&self) -> Option<String> {
        Dkim::txt_record(self)
    }
}

/// The `h=` list for a message with these header names: every header present except the
/// omitted ones (OpenDKIM's `SignHeaders *`, so all instances are signed), then the oversigned
/// ones once more. mail-auth signs each name in `h=` as often as it occurs and appends the names
/// it did not find, so a name listed twice ends up signed one extra time, as an empty header.
fn headers_to_sign<'a>(present: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for raw in present {
        let Ok(name) = std::str::from_utf8(raw) else {
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        // Only well-formed field names (RFC 5322 ftext); mail-auth could not match others.
        let well_formed =
            !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
        if well_formed && !OMIT.contains(&name.as_str()) && !names.contains(&name) {
            names.push(name);
        }
    }
    names.extend(OVERSIGN.iter().map(|s| s.to_string()));
    names
}

fn parse_key(pem: &[u8]) -> Result<Key, String> {
    let der = rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| e.to_string())?
        .ok_or("no private key found")?;
    let signer = RsaKey::<Sha256>::from_key_der(der).map_err(|e| e.to_string())?;
    let spki = spki_from_pkcs1(&signer.public_key());
    Ok(Key {
        signer: Arc::new(signer),
        spki,
    })
}

/// A fresh RSA-2048 key as PKCS#1 PEM, the format OpenDKIM uses.
fn generate_pem() -> Result<String, DkimError> {
    use base64::Engine;
    let pair = mail_auth::dkim::generate::DkimKeyPair::generate_rsa(2048)
        .map_err(|e| DkimError::Generate(e.to_string()))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(pair.private_key());
    let mut pem = String::from("-----BEGIN RSA PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END RSA PRIVATE KEY-----\n");
    Ok(pem)
}

/// Writes `data` to `path` only if nothing is there yet: a temporary file (mode 0600, synced) is
/// hard-linked into place, which fails if another process got there first; its key then stays.
/// Readers never see a partly written key.
fn store_new(path: &Path, data: &[u8]) -> Result<(), DkimError> {
    use std::os::unix::fs::DirBuilderExt;
    let werr = |source| DkimError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(werr)?;
    crate::io::Staged::write_unique(path, data, Some(0o600))
        .and_then(crate::io::Staged::commit_new)
        .map_err(werr)
}

/// Wraps a PKCS#1 `RSAPublicKey` (what ring hands out) in the SubjectPublicKeyInfo that DKIM's
/// `p=` carries (RFC 6376 §3.6.1) and `openssl rsa -pubout` prints.
fn spki_from_pkcs1(pkcs1: &[u8]) -> Vec<u8> {
    // SEQUENCE { OID rsaEncryption (1.2.840.113549.1.1.1), NULL }
    const ALGORITHM: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bit_string = vec![0x00]; // no unused bits
    bit_string.extend_from_slice(pkcs1);
    let mut body = ALGORITHM.to_vec();
    body.extend(der(0x03, &bit_string));
    der(0x30, &body)
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// Does a From domain name this relay: our mail domain, or an address literal of our own IP
/// (the literal of an IP-literal relay, or an address we listen on).
fn is_own_domain(cfg: &Config, domain: &str) -> bool {
    if cfg.is_local_domain(domain) {
        return true;
    }
    let Some(ip) = crate::dns::literal_ip(domain).map(|ip| ip.to_canonical()) else {
        return false;
    };
    let l = &cfg.listen;
    // Not the metrics listener: it is on loopback everywhere and says nothing about us.
    let public = [
        &l.smtp,
        &l.submissions,
        &l.submission,
        &l.imap,
        &l.imaps,
        &l.http,
        &l.https,
    ];
    cfg.literal_ip().map(|i| i.to_canonical()) == Some(ip)
        || public
            .iter()
            .flat_map(|v| v.iter())
            .any(|a| !a.ip().is_unspecified() && a.ip().to_canonical() == ip)
}

/// What the From domain of incoming mail may claim before any DKIM lookup: never our own
/// domain (our users' mail reaches our mailboxes through authenticated submission, never
/// through port 25 or `/mxdeliv`, so a copy arriving there is forged or replayed), and an
/// address literal only when it is the address the message came from (`peer`: the client of
/// port 25, the TLS client of `/mxdeliv`). `Ok(true)`: a literal that matched, nothing left to
/// check; `Ok(false)`: a name, DKIM decides.
pub fn check_claimed_origin(
    cfg: &Config,
    peer: Option<std::net::IpAddr>,
    from_domain: &str,
) -> Result<bool, Reply> {
    if is_own_domain(cfg, from_domain) {
        return Err(Reply::new(
            554,
            format!(
                "5.7.1 Mail from {from_domain} is only accepted from authenticated users of this relay"
            ),
        ));
    }
    if !from_domain.starts_with('[') {
        return Ok(false);
    }
    let claimed = crate::dns::literal_ip(from_domain).map(|ip| ip.to_canonical());
    match (claimed, peer.map(|p| p.to_canonical())) {
        (Some(c), Some(p)) if c == p => Ok(true),
        _ => Err(Reply::new(
            554,
            format!("5.7.1 From domain {from_domain} is not the address this message came from"),
        )),
    }
}

/// The origin check on incoming mail (reference §3.5 step 7): the From domain must not be ours
/// and a domain literal must be the sender's address ([`check_claimed_origin`]); for a name, at
/// least one DKIM signature must verify and have `d=` equal to the From domain (strict
/// alignment). SPF and DMARC policies play no part.
pub async fn verify_origin(
    dns: &Dns,
    cfg: &Config,
    peer: Option<std::net::IpAddr>,
    message: &[u8],
) -> Result<(), Reply> {
    let parse_error = || Reply::new(500, "Failed to parse message headers");
    let auth = AuthenticatedMessage::parse(message).ok_or_else(parse_error)?;
    // The same From address the policy gate checked, so both agree on who the sender is.
    let from = crate::policy::from_address(message)
        .map_err(|_| parse_error())?
        .ok_or_else(parse_error)?;
    let (_, from_domain) = from.rsplit_once('@').ok_or_else(parse_error)?;
    if check_claimed_origin(cfg, peer, from_domain)? {
        // IP-literal relays have no DNS to publish a key in; the connection itself vouches.
        return Ok(());
    }
    let has_signature = auth
        .headers
        .iter()
        .any(|(name, _)| name.trim_ascii().eq_ignore_ascii_case(b"DKIM-Signature"));
    if !has_signature {
        return Err(Reply::new(554, "5.7.1 No DKIM signature found"));
    }
    let outputs = dns
        .authenticator()
        .verify_dkim(Parameters::new(&auth).with_txt_cache(dns.key_cache()))
        .await;
    let mut temporary = false;
    for out in &outputs {
        let Some(sig) = out.signature() else { continue };
        let aligned = sig.d.eq_ignore_ascii_case(from_domain);
        match out.result() {
            DkimResult::Pass if aligned => return Ok(()),
            // The key could not be fetched (timeout, SERVFAIL): the sender's DNS may be back in
            // a minute, so ask the sending relay to retry instead of bouncing its mail for good.
            // Only an aligned signature counts: a misaligned one could not save the message.
            DkimResult::TempError(_) if aligned => temporary = true,
            DkimResult::Fail(_) => {
                // The cached key did not verify: the domain may have rotated it. Forget it so
                // the next message fetches it afresh (the reference does the same).
                let name = format!("{}._domainkey.{}.", sig.s, sig.d);
                dns.key_cache().remove(name.as_str());
            }
            _ => {}
        }
    }
    if temporary {
        return Err(Reply::new(
            451,
            "4.7.0 DKIM key lookup failed temporarily, try again later",
        ));
    }
    Err(Reply::new(554, "5.7.1 No valid DKIM signature found"))
}

#[cfg(test)]
mod tests;
