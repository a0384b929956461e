//! TURN for Delta Chat calls: credentials announced in IMAP METADATA
//! (`/shared/vendor/deltachat/turn`) and the UDP server that honours them.
//!
//! The credentials follow the TURN REST-API scheme chatmail-turn uses: the username is the unix
//! time the credential expires, the password `base64(HMAC-SHA1(secret, username))`. The secret is
//! made once per install and kept in `<data_dir>/turn/secret`, so credentials a client cached
//! survive restarts (core keeps them until fewer than 12 h remain). Anyone holding a valid pair
//! can allocate; the limits in [`server`] bound what that costs.

pub mod iroh;
pub mod server;

use crate::config::Config;
use std::net::IpAddr;
use std::path::Path;

/// How long a credential is valid (chatmail-turn hands out 5 days).
pub const CREDENTIAL_LIFETIME: i64 = 5 * 24 * 3600;

/// The per-install TURN secret and what is announced with it.
pub struct Turn {
    secret: Secret,
    /// The host clients are told to reach TURN at (`host:port:…`).
    host: String,
    port: u16,
    /// False when the UDP socket could not be had: nothing is announced then, so clients use
    /// their other TURN servers instead of a dead one. Mail goes on either way.
    serving: std::sync::atomic::AtomicBool,
}

/// The HMAC key of the REST scheme.
#[derive(Clone)]
pub struct Secret(ring::hmac::Key);

impl Secret {
    pub fn new(bytes: &[u8]) -> Secret {
        Secret(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            bytes,
        ))
    }

    /// The password of `username` (the REST scheme's base64 of HMAC-SHA1).
    pub fn password(&self, username: &str) -> String {
        use base64::Engine;
        let tag = ring::hmac::sign(&self.0, username.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("cannot read or write the TURN secret {path}: {source}")]
    Secret {
        path: String,
        source: std::io::Error,
    },
    #[error("TURN cannot be announced for an IPv6-literal domain (Delta Chat reads host:port with the first ':' as separator); use a domain name or set turn = false")]
    Ipv6Literal,
}

impl Turn {
    /// `None` when this relay serves no TURN (`turn = false`, or an IP-literal dev run).
    pub fn open(cfg: &Config) -> Result<Option<Turn>, TurnError> {
        if !cfg.turn_enabled() {
            return Ok(None);
        }
        let host = match cfg.literal_ip() {
            Some(IpAddr::V6(_)) => return Err(TurnError::Ipv6Literal),
            Some(ip) => ip.to_string(),
            None => cfg.mail_domain.clone(),
        };
        let secret = load_or_create_secret(&cfg.data_dir.join("turn").join("secret"))?;
        Ok(Some(Turn {
            secret,
            host,
            port: cfg.turn_port,
            serving: std::sync::atomic::AtomicBool::new(true),
        }))
    }

    /// The METADATA value at `now`: `host:port:<expiry>:<password>` (the reference's form; core
    /// splits it at the first three colons).
    pub fn announcement(&self, now: i64) -> Option<String> {
        if !self.serving.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let username = (now + CREDENTIAL_LIFETIME).to_string();
        let password = self.secret.password(&username);
        Some(format!("{}:{}:{username}:{password}", self.host, self.port))
    }

    /// Records whether the TURN server runs (see `serving`).
    pub fn set_serving(&self, on: bool) {
        self.serving.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn secret(&self) -> &Secret {
        &self.secret
    }
}

fn load_or_create_secret(path: &Path) -> Result<Secret, TurnError> {
    let err = |source| TurnError::Secret {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read(path) {
        Ok(b) if b.len() >= 32 => return Ok(Secret::new(&b)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    crate::io::write_private(path, &b).map_err(err)?;
    Ok(Secret::new(&b))
}

/// The address announced as each allocation's relayed address (XOR-RELAYED-ADDRESS): the peer
/// of the call sends its media there. In order: `turn_public_ip`; `learned`, the public address
/// the router reported (UPnP/NAT-PMP); the TURN listen address when it is a specific one; the
/// IP of an IP-literal domain; the box's first IPv4 address. Only the first two are right behind
/// NAT; [`server::start`] warns when a private address ends up announced for a named domain.
pub fn relay_ip(cfg: &Config, learned: Option<IpAddr>, local: &[IpAddr]) -> IpAddr {
    let listen = server::listen_ip(cfg);
    cfg.turn_public_ip
        .or(learned)
        .or((!listen.is_unspecified()).then_some(listen))
        .or(cfg.literal_ip())
        .or(local.iter().copied().find(IpAddr::is_ipv4))
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

#[cfg(test)]
mod tests;
