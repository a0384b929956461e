//! Encrypted backups of a relay's identity, for moving it to a new SD card without users
//! noticing: the keys (DKIM, TLS, ACME account and certificate), the wizard's settings and
//! admin files, and the accounts with their password hashes. Not the mail: mailboxes are
//! ephemeral by design, so a backup is kilobytes.
//!
//! Format: a JSON document (`format`, relaybox version, domain, creation time, the files below
//! `data_dir` with their SHA-256, the config file's text, the accounts), encrypted with OpenPGP
//! symmetric encryption (SKESK v4 with an iterated and salted SHA-256 S2K at its highest work
//! factor, SEIPD v1 with AES-256) and ASCII-armored, so `gpg --decrypt` reads it too.

use crate::config::Config;
use crate::store::{Account, Store};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const FORMAT: u32 = 1;
/// Where the passphrase comes from when the command line does not give a file.
pub const PASSPHRASE_ENV: &str = "RELAYBOX_BACKUP_PASSPHRASE";
/// The shortest passphrase accepted for a new backup.
pub const MIN_PASSPHRASE: usize = 10;

/// The directories and files below `data_dir` that make up the identity.
const DIRS: &[&str] = &["dkim", "tls", "acme", "admin"];
const FILES: &[&str] = &[crate::config::SETTINGS_FILE, "nocreate"];

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("cannot read the backup: {0} (wrong passphrase, or not a relaybox backup)")]
    Decrypt(String),
    #[error("the backup is damaged: {0}")]
    Damaged(String),
    #[error("{0}")]
    Refused(String),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("encryption failed: {0}")]
    Encrypt(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct File {
    /// Relative to `data_dir`.
    pub path: String,
    pub sha256: String,
    #[serde(with = "b64")]
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backup {
    pub format: u32,
    pub relaybox: String,
    pub domain: String,
    pub created: i64,
    pub files: Vec<File>,
    /// The config file the relay ran with, if known.
    pub config: Option<String>,
    pub accounts: Vec<Account>,
}

/// What a backup holds, without the secrets.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub format: u32,
    pub relaybox: String,
    pub domain: String,
    pub created: i64,
    pub files: Vec<String>,
    pub accounts: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub domain: String,
    pub files: usize,
    pub accounts: usize,
    /// Where the backed-up config file was written, for the operator to compare.
    pub config_copy: Option<PathBuf>,
}

mod b64 {
    use base64::Engine;
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let t: String = serde::Deserialize::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(t)
            .map_err(serde::de::Error::custom)
    }
}

fn sha256_hex(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn collect_files(data_dir: &Path) -> std::io::Result<Vec<File>> {
    let mut out = Vec::new();
    let mut add = |rel: String| -> std::io::Result<()> {
        let data = std::fs::read(data_dir.join(&rel))?;
        out.push(File {
            path: rel,
            sha256: sha256_hex(&data),
            data,
        });
        Ok(())
    };
    for f in FILES {
        if data_dir.join(f).is_file() {
            add(f.to_string())?;
        }
    }
    for d in DIRS {
        let dir = data_dir.join(d);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.ends_with(".tmp"))
            .collect();
        names.sort();
        for n in names {
            add(format!("{d}/{n}"))?;
        }
    }
    Ok(out)
}

/// The backup of the relay with config `cfg` (and config file text, if any), encrypted with
/// `passphrase`, ASCII-armored.
pub fn create(
    cfg: &Config,
    config_text: Option<String>,
    store: &Store,
    passphrase: &str,
    now: i64,
) -> Result<String, BackupError> {
    if passphrase.chars().count() < MIN_PASSPHRASE {
        return Err(BackupError::Refused(format!(
            "the backup passphrase needs at least {MIN_PASSPHRASE} characters"
        )));
    }
    let backup = Backup {
        format: FORMAT,
        relaybox: env!("CARGO_PKG_VERSION").to_string(),
        domain: cfg.mail_domain.clone(),
        created: now,
        files: collect_files(&cfg.data_dir)?,
        config: config_text,
        accounts: store.accounts()?,
    };
    let json = serde_json::to_vec(&backup).map_err(|e| BackupError::Encrypt(e.to_string()))?;
    encrypt(&json, passphrase)
}

fn encrypt(plain: &[u8], passphrase: &str) -> Result<String, BackupError> {
    use pgp::composed::{ArmorOptions, MessageBuilder};
    use pgp::crypto::hash::HashAlgorithm;
    use pgp::crypto::sym::SymmetricKeyAlgorithm;
    use pgp::types::{Password, StringToKey};
    let mut rng = rand::rngs::OsRng;
    let mut b = MessageBuilder::from_bytes("relaybox-backup.json", plain.to_vec())
        .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES256);
    // 255: the largest iteration count (65 MiB hashed), what gpg uses for new keys' protection.
    let s2k = StringToKey::new_iterated(&mut rng, HashAlgorithm::Sha256, 255);
    b.encrypt_with_password(s2k, &Password::from(passphrase))
        .map_err(|e| BackupError::Encrypt(e.to_string()))?;
    b.to_armored_string(rng, ArmorOptions::default())
        .map_err(|e| BackupError::Encrypt(e.to_string()))
}

/// Decrypts and checks a backup (every file against its SHA-256). The armored text is read as
/// it is parsed (the admin page hands over a file, not a buffer).
pub fn open(
    armored: impl std::io::BufRead + std::fmt::Debug + Send,
    passphrase: &str,
) -> Result<Backup, BackupError> {
    use pgp::composed::Message;
    use pgp::types::Password;
    let (msg, _) = Message::from_armor(armored)
        .map_err(|e| BackupError::Damaged(format!("not an OpenPGP armored message: {e}")))?;
    let mut msg = msg
        .decrypt_with_password(&Password::from(passphrase))
        .map_err(|e| BackupError::Decrypt(e.to_string()))?;
    if msg.is_compressed() {
        msg = msg
            .decompress()
            .map_err(|e| BackupError::Damaged(e.to_string()))?;
    }
    let plain = msg
        .as_data_vec()
        .map_err(|e| BackupError::Decrypt(e.to_string()))?;
    let b: Backup =
        serde_json::from_slice(&plain).map_err(|e| BackupError::Damaged(e.to_string()))?;
    if b.format != FORMAT {
        return Err(BackupError::Damaged(format!(
            "format {} (this relaybox reads format {FORMAT})",
            b.format
        )));
    }
    for f in &b.files {
        let rel = Path::new(&f.path);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(BackupError::Damaged(format!(
                "unsafe file name {:?}",
                f.path
            )));
        }
        if sha256_hex(&f.data) != f.sha256 {
            return Err(BackupError::Damaged(format!(
                "{} does not match its checksum",
                f.path
            )));
        }
    }
    Ok(b)
}

pub fn inspect(armored: &[u8], passphrase: &str) -> Result<Manifest, BackupError> {
    let b = open(armored, passphrase)?;
    Ok(Manifest {
        format: b.format,
        relaybox: b.relaybox,
        domain: b.domain,
        created: b.created,
        files: b.files.iter().map(|f| f.path.clone()).collect(),
        accounts: b.accounts.len(),
    })
}

/// Restores a backup into `data_dir` and `store`: the files (atomically each), then the
/// accounts with their password hashes, creation times and last logins. Refuses a relay that
/// already has accounts unless `force` (the accounts of the backup are then added; existing
/// ones stay). The relay must be restarted afterwards to use the restored keys.
pub async fn restore(
    armored: impl std::io::BufRead + std::fmt::Debug + Send,
    passphrase: &str,
    data_dir: &Path,
    store: &Store,
    force: bool,
) -> Result<RestoreReport, BackupError> {
    let b = open(armored, passphrase)?;
    let existing = store.accounts()?.len();
    if existing > 0 && !force {
        return Err(BackupError::Refused(format!(
            "this relay already has {existing} accounts; restore only into a new relay (or force it)"
        )));
    }
    for f in &b.files {
        crate::io::write_private(&data_dir.join(&f.path), &f.data)?;
    }
    let config_copy = match &b.config {
        Some(text) => {
            let p = data_dir.join("config-from-backup.toml");
            crate::io::write_private(&p, text.as_bytes())?;
            Some(p)
        }
        None => None,
    };
    if b.files.iter().any(|f| f.path == "admin/password") {
        // The old box's admin password came along: set-up is over, the new box's code is void.
        match std::fs::remove_file(data_dir.join("setup-code")) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    for a in &b.accounts {
        let (acc, _) = store
            .create_account(&a.addr, &a.password_hash, a.created)
            .await?;
        store.set_last_login_day(acc.id, a.last_login_day).await?;
    }
    tracing::info!(
        domain = %b.domain,
        files = b.files.len(),
        accounts = b.accounts.len(),
        "backup restored"
    );
    Ok(RestoreReport {
        domain: b.domain,
        files: b.files.len(),
        accounts: b.accounts.len(),
        config_copy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_keeps_keys_and_accounts_and_refuses_wrong_passphrases() {
        let src = tempfile::tempdir().unwrap();
        let relay = crate::testkit::test_relay(src.path(), |_| {}).unwrap();
        relay
            .accounts
            .login("oldaccnt1@[127.0.0.1]", "old password 1")
            .await
            .unwrap();
        // An IP-literal relay signs nothing; make the key a named relay would have.
        let named = crate::config::Config::with_domain("relay.test", src.path()).unwrap();
        crate::dkim::Dkim::load_or_create(&named).unwrap();
        let dkim_before = std::fs::read(crate::dkim::Dkim::key_path(&relay.cfg)).unwrap();
        let armored = create(
            &relay.cfg,
            Some("mail_domain = \"[127.0.0.1]\"\n".into()),
            &relay.store,
            "a good passphrase",
            1_700_000_000,
        )
        .unwrap();
        assert!(armored.starts_with("-----BEGIN PGP MESSAGE-----"));
        assert!(
            !armored.contains("oldaccnt1"),
            "encrypted, not just encoded"
        );
        assert!(create(&relay.cfg, None, &relay.store, "short", 0).is_err());

        let m = inspect(armored.as_bytes(), "a good passphrase").unwrap();
        assert_eq!(m.accounts, 1);
        assert!(m.files.iter().any(|f| f.starts_with("dkim/")), "{m:?}");
        let e = inspect(armored.as_bytes(), "a wrong passphrase")
            .unwrap_err()
            .to_string();
        assert!(e.contains("wrong passphrase"), "{e}");
        let cut = &armored.as_bytes()[..armored.len() / 2];
        assert!(inspect(cut, "a good passphrase").is_err());

        // Into a fresh relay: the old address logs in with its old password and the DKIM key
        // is the same.
        let dst = tempfile::tempdir().unwrap();
        {
            let store = crate::store::Store::open(&dst.path().join("store")).unwrap();
            let r = restore(
                armored.as_bytes(),
                "a good passphrase",
                dst.path(),
                &store,
                false,
            )
            .await
            .unwrap();
            assert_eq!(r.accounts, 1);
            // A second restore finds accounts and refuses.
            let e = restore(
                armored.as_bytes(),
                "a good passphrase",
                dst.path(),
                &store,
                false,
            )
            .await
            .unwrap_err()
            .to_string();
            assert!(e.contains("already has 1 accounts"), "{e}");
        }
        let restored = crate::testkit::test_relay(dst.path(), |_| {}).unwrap();
        assert_eq!(
            std::fs::read(crate::dkim::Dkim::key_path(&restored.cfg)).unwrap(),
            dkim_before
        );
        let u = restored
            .accounts
            .login("oldaccnt1@[127.0.0.1]", "old password 1")
            .await
            .unwrap();
        assert!(!u.created, "the account came from the backup");
        assert!(restored
            .accounts
            .login("oldaccnt1@[127.0.0.1]", "wrong password 1")
            .await
            .is_err());
    }

    /// `gpg --decrypt` reads a backup: the format is plain OpenPGP, not something only
    /// relaybox can open.
    #[tokio::test]
    async fn gpg_decrypts_a_backup() {
        let Ok(gpg) = which_gpg() else {
            assert!(std::env::var_os("CI").is_none(), "gpg missing under CI");
            eprintln!("SKIPPED: gpg not installed");
            return;
        };
        let src = tempfile::tempdir().unwrap();
        let relay = crate::testkit::test_relay(src.path(), |_| {}).unwrap();
        let armored = create(&relay.cfg, None, &relay.store, "gpg can read this", 7).unwrap();
        let home = tempfile::tempdir().unwrap();
        let file = home.path().join("backup.asc");
        std::fs::write(&file, &armored).unwrap();
        let out = std::process::Command::new(gpg)
            .arg("--homedir")
            .arg(home.path())
            .args([
                "--batch",
                "--quiet",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "gpg can read this",
                "--decrypt",
            ])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let b: Backup = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (b.format, b.created, b.domain.as_str()),
            (FORMAT, 7, "[127.0.0.1]")
        );
    }

    fn which_gpg() -> Result<std::path::PathBuf, ()> {
        ["/usr/bin/gpg", "/bin/gpg", "/usr/local/bin/gpg"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.is_file())
            .ok_or(())
    }
}
