//! The `[ddns]` table: keeping the domain's A/AAAA records at the box's public addresses.

use super::{ConfigError, Seconds};
use serde::Deserialize;
use std::net::{Ipv4Addr, SocketAddr};

/// Off unless `update_url` or `server` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DdnsConfig {
    /// A provider's update URL (http or https), fetched with GET. `{domain}` becomes the mail
    /// domain; `{ip}` one address, the URL then being fetched once per changed address (IPv4,
    /// IPv6); `{ipv4}` and `{ipv6}` both at once (empty when the box has none of that kind).
    /// `user:password@` in the URL is sent as HTTP Basic authentication.
    pub update_url: Option<String>,
    /// The primary name server that takes RFC 2136 dynamic updates, as `ip:port`.
    pub server: Option<SocketAddr>,
    /// The zone the updates are for (the SOA's name); unset: the mail domain itself.
    pub zone: Option<String>,
    /// TSIG key (RFC 8945) signing the updates: its name, algorithm and base64 secret (as
    /// `tsig-keygen`/`keymgr -t` print them). Without a name the updates go unsigned.
    pub tsig_key_name: Option<String>,
    pub tsig_algorithm: String,
    pub tsig_secret: Option<String>,
    /// TTL of the records an RFC 2136 update writes; short, so a change is seen soon.
    pub ttl: u32,
    /// How often the public addresses are looked at (and a failed update retried).
    pub interval: Seconds,
    /// The public IPv4 address, for a box whose router cannot tell it (no UPnP/NAT-PMP) and whose
    /// address does not change.
    pub ipv4: Option<Ipv4Addr>,
    /// Publish the box's global IPv6 address as AAAA.
    pub ipv6: bool,
}

impl Default for DdnsConfig {
    fn default() -> Self {
        DdnsConfig {
            update_url: None,
            server: None,
            zone: None,
            tsig_key_name: None,
            tsig_algorithm: "hmac-sha256".into(),
            tsig_secret: None,
            ttl: 60,
            interval: Seconds(300),
            ipv4: None,
            ipv6: true,
        }
    }
}

/// The TSIG algorithms the updates can be signed with (hickory signs these with ring).
pub const TSIG_ALGORITHMS: &[&str] = &["hmac-sha256", "hmac-sha384", "hmac-sha512"];

impl DdnsConfig {
    pub fn enabled(&self) -> bool {
        self.update_url.is_some() || self.server.is_some()
    }

    /// The TSIG secret's bytes, when a key is configured.
    pub fn tsig_key(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        let s = self.tsig_secret.as_deref()?;
        base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .ok()
    }

    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        if let Some(u) = &self.update_url {
            let lower = u.to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://"))
                || u.replace(['{', '}'], "").parse::<hyper::Uri>().is_err()
            {
                // Not echoed: the URL usually holds the provider's token.
                return invalid(
                    "ddns.update_url",
                    "expected an http:// or https:// URL".into(),
                );
            }
        }
        if !TSIG_ALGORITHMS.contains(&self.tsig_algorithm.as_str()) {
            return invalid(
                "ddns.tsig_algorithm",
                format!(
                    "expected one of {}, got {:?}",
                    TSIG_ALGORITHMS.join(", "),
                    self.tsig_algorithm
                ),
            );
        }
        match (&self.tsig_key_name, &self.tsig_secret) {
            (Some(_), None) | (None, Some(_)) => {
                return invalid(
                    "ddns.tsig_secret",
                    "ddns.tsig_key_name and ddns.tsig_secret go together".into(),
                )
            }
            (Some(_), Some(_)) if self.tsig_key().is_none_or(|k| k.is_empty()) => {
                return invalid("ddns.tsig_secret", "expected the key in base64".into())
            }
            _ => {}
        }
        if self.interval.0 < 30 {
            return invalid("ddns.interval", "must be at least 30s".into());
        }
        Ok(())
    }
}
