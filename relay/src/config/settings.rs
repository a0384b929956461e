//! The settings the admin pages let the operator change: which keys, what the form calls them,
//! how a typed value becomes the settings file's value, and what the running config holds.
//! Kept beside the keys so a renamed or new key is seen here; the API only assembles the form.

use super::{ByteSize, Config};
use serde_json::Value;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A positive whole number (a count, or days: see `unit`).
    Int,
    /// A size, shown and typed in MB, kept in the settings file as size text ("500M").
    Size,
    /// A size, shown and typed in MB, kept in the settings file as a number of bytes.
    Bytes,
    Text,
}

pub(crate) struct Setting {
    pub(crate) key: &'static str,
    pub(crate) kind: Kind,
    /// What the pages call it.
    pub(crate) label: &'static str,
    /// Shown beside the field; sizes are always MB (2^20 bytes, as on the public page).
    pub(crate) unit: &'static str,
    pub(crate) help: &'static str,
}

#[rustfmt::skip]
pub(crate) const SETTINGS: &[Setting] = &[
    Setting { key: "max_user_send_per_minute", kind: Kind::Int, label: "Messages per minute", unit: "per address", help: "Messages one address may send per minute (a Delta Chat group message counts once per relay)." },
    Setting { key: "max_user_send_burst_size", kind: Kind::Int, label: "Messages at once", unit: "messages", help: "How many messages may be sent at once before the per-minute rate applies." },
    Setting { key: "max_mailbox_size", kind: Kind::Size, label: "Mailbox size", unit: "MB", help: "Storage per address; a full mailbox refuses new mail." },
    Setting { key: "max_message_size", kind: Kind::Bytes, label: "Largest message", unit: "MB", help: "The largest message (with its attachments) the relay accepts." },
    Setting { key: "delete_mails_after", kind: Kind::Int, label: "Delete messages after", unit: "days", help: "Every message is deleted from the relay this long after it arrived." },
    Setting { key: "delete_large_after", kind: Kind::Int, label: "Delete large fetched messages after", unit: "days", help: "Large messages that were already fetched are deleted this long after they arrived." },
    Setting { key: "delete_inactive_users_after", kind: Kind::Int, label: "Delete unused addresses after", unit: "days", help: "An address that has not logged in for this long is deleted with its mail." },
    Setting { key: "privacy_mail", kind: Kind::Text, label: "Privacy contact (e-mail)", unit: "", help: "Shown on the privacy page." },
    Setting { key: "privacy_postal", kind: Kind::Text, label: "Operator's postal address", unit: "", help: "Shown on the privacy page." },
    Setting { key: "privacy_pdo", kind: Kind::Text, label: "Data protection officer", unit: "", help: "Shown on the privacy page (if you have one)." },
    Setting { key: "privacy_supervisor", kind: Kind::Text, label: "Supervisory authority", unit: "", help: "Shown on the privacy page: where people can complain." },
];

const MB: u64 = 1 << 20;

/// A size as the MB field shows it: `500`, `0.5`.
fn mb_text(bytes: u64) -> String {
    if bytes.is_multiple_of(MB) {
        return (bytes / MB).to_string();
    }
    let t = format!("{:.2}", bytes as f64 / MB as f64);
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// What the MB field holds: a number of MB (`500`, `0.5`), or a size with its unit (`1G`).
fn parse_mb(text: &str) -> Option<u64> {
    if let Ok(n) = text.replace(',', ".").parse::<f64>() {
        return (n.is_finite() && n > 0.0 && n < 1e9).then(|| (n * MB as f64).round() as u64);
    }
    let has_unit = text.ends_with(|c: char| c.is_ascii_alphabetic());
    ByteSize::parse(text)
        .ok()
        .filter(|b| has_unit && b.0 > 0)
        .map(|b| b.0)
}

/// One field's value as the settings file keeps it, or what is wrong with it, in words for the
/// form (the label is shown beside it).
pub(crate) fn setting_value(s: &Setting, v: &Value) -> Result<toml::Value, String> {
    let text = match v {
        Value::String(t) => t.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return Err("expected text or a number".into()),
    };
    match s.kind {
        Kind::Int => text
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .map(toml::Value::Integer)
            .ok_or_else(|| format!("enter a whole number above 0 ({})", s.unit)),
        Kind::Size | Kind::Bytes => {
            let bytes = parse_mb(&text)
                .ok_or_else(|| "enter a number of MB, like 500 (or a size like 1G)".to_string())?;
            Ok(match s.kind {
                Kind::Bytes => toml::Value::Integer(i64::try_from(bytes).map_err(|_| "too large")?),
                _ if bytes.is_multiple_of(MB) => toml::Value::String(format!("{}M", bytes / MB)),
                _ => toml::Value::String(bytes.to_string()),
            })
        }
        Kind::Text => {
            if text.len() > 500 || text.contains(['\r', '\n']) {
                return Err("one line of at most 500 characters".into());
            }
            Ok(toml::Value::String(text))
        }
    }
}

/// The settings form's value: sizes in MB, the rest as it is.
pub(crate) fn shown(s: &Setting, v: &Value) -> Value {
    match (s.kind, v) {
        (Kind::Size | Kind::Bytes, Value::Number(n)) => {
            n.as_u64().map_or(Value::Null, |b| mb_text(b).into())
        }
        (Kind::Size | Kind::Bytes, Value::String(t)) => {
            ByteSize::parse(t).map_or_else(|_| t.clone().into(), |b| mb_text(b.0).into())
        }
        _ => v.clone(),
    }
}

/// What the running config holds for a key of [`SETTINGS`], as the form shows it.
pub(crate) fn running_value(cfg: &Config, key: &str) -> Value {
    match key {
        "max_user_send_per_minute" => cfg.max_user_send_per_minute.into(),
        "max_user_send_burst_size" => cfg.max_user_send_burst_size.into(),
        "max_mailbox_size" => cfg.max_mailbox_size.to_string().into(),
        "max_message_size" => cfg.max_message_size.into(),
        "delete_mails_after" => cfg.delete_mails_after.into(),
        "delete_large_after" => cfg.delete_large_after.into(),
        "delete_inactive_users_after" => cfg.delete_inactive_users_after.into(),
        "privacy_mail" => cfg.privacy_mail.clone().into(),
        "privacy_postal" => cfg.privacy_postal.clone().into(),
        "privacy_pdo" => cfg.privacy_pdo.clone().into(),
        "privacy_supervisor" => cfg.privacy_supervisor.clone().into(),
        _ => Value::Null,
    }
}
