//! The set-up wizard and the admin pages (config key `admin_ui`; the appliance turns it on,
//! `relaybox dev --wizard` too).
//!
//! Set-up is *pending* until an admin password exists. While pending, the one-time setup code in
//! `<data_dir>/setup-code` (made on the appliance's first boot, or here when missing) is the
//! only way in, the wizard is served on port 80 as well as 443 (a fresh box has no trusted
//! certificate yet), and logging in with the code is rate-limited. Setting the password deletes
//! the code; from then on the admin pages are HTTPS only and need the password.
//!
//! Sessions are signed, not stored: the cookie carries its expiry, a random id and an HMAC over
//! both with a secret kept in `<data_dir>/admin/secret`, so a session outlives the restart that
//! applies new settings. Logging out puts the id on a revocation list (`<data_dir>/admin/revoked`,
//! kept until the session would have expired anyway), so a copied cookie is dead after logout.
//! Setting a new password replaces the secret, which ends every other session. Every request
//! that changes something must carry the CSRF token (an HMAC of the session cookie) in the
//! `X-CSRF-Token` header, which a cross-site form cannot set.
//!
//! The operator's choices are written to `<data_dir>/settings.toml` (see `config`), applied by a
//! graceful restart that re-executes the binary (`api` → `Apply`, `main`).
//!
//! Files: `api` is the JSON API behind the pages (`firmware-ui/setup.html`, `admin.html`,
//! `admin.js`); `throttle` limits login attempts without letting anybody lock the owner out;
//! `upload` reads request bodies within a size limit and a deadline.

pub mod api;
#[cfg(test)]
mod tests;
pub mod throttle;
mod update_api;
mod upload;

use crate::config::Config;
use crate::sync::LockExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Present while the relay is in maintenance (in `data_dir`).
pub const MAINTENANCE_FILE: &str = "maintenance";
/// The last expiry run's summary (in `data_dir`).
pub const LAST_EXPIRY_FILE: &str = "last-expiry.json";
/// How long a login lasts.
pub const SESSION_SECS: i64 = 12 * 3600;
/// The shortest admin password accepted.
pub const MIN_PASSWORD: usize = 12;
/// The setup code's alphabet: no 0/O/1/I, as in the first-boot script.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

pub struct Admin {
    enabled: bool,
    dir: PathBuf,
    code_path: PathBuf,
    secret: Mutex<ring::hmac::Key>,
    /// Login attempts (setup code and password).
    pub throttle: throttle::LoginThrottle,
    /// Ids of logged-out sessions, with the time they expire.
    revoked: Mutex<HashMap<String, i64>>,
    restart: AtomicBool,
    /// The last certificate order started from the wizard: running, and its report.
    pub cert_job: Mutex<CertJob>,
    /// The config file `relaybox serve` was started with (its text goes into backups).
    pub config_path: Mutex<Option<PathBuf>>,
    /// Maintenance: new SMTP, IMAP and relay-to-relay connections are told to come back later.
    /// Kept as a file so that it holds across the restarts the admin pages cause.
    maintenance: AtomicBool,
    maintenance_path: PathBuf,
    /// The latest DNS live check (its summary), for the status page.
    pub last_dns_check: Mutex<Option<serde_json::Value>>,
    last_expiry_path: PathBuf,
    /// When this process started (Unix time), for the uptime and per-day figures.
    pub started: i64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CertJob {
    pub running: bool,
    pub started: Option<i64>,
    pub finished: Option<i64>,
    pub ok: Option<bool>,
    pub report: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

/// A switch kept as a file (nocreate, maintenance): written durably when on, removed when off.
pub(crate) fn set_flag_file(path: &Path, on: bool) -> std::io::Result<()> {
    if on {
        return crate::io::write_private(path, b"set from the admin page\n");
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes the wizard's settings file durably (the relay reads it at its next start).
pub fn write_settings(cfg: &Config, table: &toml::Table) -> std::io::Result<()> {
    let text = format!(
        "# Written by the relaybox admin pages; these values override the config file.\n{}",
        toml::to_string(table).map_err(std::io::Error::other)?
    );
    crate::io::write_private(&cfg.settings_path(), text.as_bytes())
}

/// The settings file's table (empty when there is none).
pub fn read_settings(cfg: &Config) -> Result<toml::Table, AdminError> {
    match std::fs::read_to_string(cfg.settings_path()) {
        Ok(t) => toml::from_str(&t)
            .map_err(|e| AdminError::Invalid(format!("{}: {e}", cfg.settings_path().display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(toml::Table::new()),
        Err(e) => Err(e.into()),
    }
}

/// The admin password's file: set-up is finished once it exists (see [`Admin::pending`]).
pub fn password_file(cfg: &Config) -> PathBuf {
    cfg.admin_password_path()
}

fn random_code() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let raw: String = (0..16)
        .map(|_| CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())] as char)
        .collect();
    format!(
        "{}-{}-{}-{}",
        &raw[..4],
        &raw[4..8],
        &raw[8..12],
        &raw[12..]
    )
}

/// Uppercase, without blanks and dashes: people type codes as they like.
fn normalize_code(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// The list of logged-out sessions (in `<data_dir>/admin/`): lines `<id> <expiry>`.
const REVOKED_FILE: &str = "revoked";

fn read_revoked(path: &Path, now: i64) -> HashMap<String, i64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (id, exp) = l.split_once(' ')?;
            let exp = exp.trim().parse::<i64>().ok()?;
            (exp > now).then(|| (id.to_string(), exp))
        })
        .collect()
}

fn new_secret() -> ring::hmac::Key {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &b)
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Admin {
    /// Opens (and on first use creates) the admin state under `cfg.data_dir`. Returns the setup
    /// code when this call made a new one, for `relaybox dev` to print.
    pub fn open(cfg: &Config) -> Result<(Admin, Option<String>), AdminError> {
        let dir = cfg.data_dir.join("admin");
        let code_path = cfg.data_dir.join("setup-code");
        let secret_path = dir.join("secret");
        let secret = match std::fs::read(&secret_path) {
            Ok(b) if b.len() >= 32 => ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &b),
            _ if !cfg.admin_ui => new_secret(),
            _ => {
                use rand::RngCore;
                let mut b = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut b);
                crate::io::write_private(&secret_path, &b)?;
                ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &b)
            }
        };
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let revoked = read_revoked(&dir.join(REVOKED_FILE), started);
        let admin = Admin {
            enabled: cfg.admin_ui,
            dir,
            code_path,
            secret: Mutex::new(secret),
            throttle: throttle::LoginThrottle::new(),
            revoked: Mutex::new(revoked),
            restart: AtomicBool::new(false),
            cert_job: Mutex::new(CertJob::default()),
            config_path: Mutex::new(None),
            maintenance: AtomicBool::new(cfg.data_dir.join(MAINTENANCE_FILE).exists()),
            maintenance_path: cfg.data_dir.join(MAINTENANCE_FILE),
            last_dns_check: Mutex::new(None),
            last_expiry_path: cfg.data_dir.join(LAST_EXPIRY_FILE),
            started,
        };
        let mut made = None;
        if admin.enabled && admin.pending() && admin.setup_code().is_none() {
            let code = random_code();
            crate::io::write_private(&admin.code_path, format!("{code}\n").as_bytes())?;
            made = Some(code);
        }
        Ok((admin, made))
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the relay is in maintenance (new mail connections are turned away).
    pub fn maintenance(&self) -> bool {
        self.maintenance.load(Ordering::Relaxed)
    }

    pub fn set_maintenance(&self, on: bool) -> std::io::Result<()> {
        set_flag_file(&self.maintenance_path, on)?;
        self.maintenance.store(on, Ordering::Relaxed);
        Ok(())
    }

    /// Remembers an expiry run (on the data partition, once a day: the status page shows it
    /// after a restart too).
    pub fn record_expiry(&self, at: i64, result: &Result<crate::expiry::Report, String>) {
        let v = match result {
            Ok(r) => serde_json::json!({
                "at": at,
                "ok": true,
                "accounts_removed": r.accounts_removed,
                "messages_removed": r.messages_removed,
                "bytes_removed": r.bytes_removed,
                "tokens_removed": r.tokens_removed,
                "seconds": r.elapsed.as_secs_f64(),
            }),
            Err(e) => serde_json::json!({ "at": at, "ok": false, "error": e }),
        };
        if let Err(e) = crate::io::write_private(&self.last_expiry_path, v.to_string().as_bytes()) {
            tracing::warn!(path = %self.last_expiry_path.display(), "cannot record the expiry run: {e}");
        }
    }

    /// The last recorded expiry run, if any.
    pub fn last_expiry(&self) -> Option<serde_json::Value> {
        let t = std::fs::read(&self.last_expiry_path).ok()?;
        serde_json::from_slice(&t).ok()
    }

    fn password_path(&self) -> PathBuf {
        self.dir.join("password")
    }

    pub fn code_path(&self) -> &Path {
        &self.code_path
    }

    /// Set-up is not finished: no admin password yet.
    pub fn pending(&self) -> bool {
        self.enabled && !self.password_path().exists()
    }

    /// Whether the admin pages and API answer on this port: always over HTTPS, over plain HTTP
    /// only while set-up is pending (a new box has no certificate the browser trusts yet).
    pub fn reachable(&self, https: bool) -> bool {
        self.enabled() && (https || self.pending())
    }

    fn setup_code(&self) -> Option<String> {
        let t = std::fs::read_to_string(&self.code_path).ok()?;
        let n = normalize_code(&t);
        (n.len() >= 8).then_some(n)
    }

    /// The setup code is right (and set-up still pending).
    pub fn check_code(&self, given: &str) -> bool {
        if !self.pending() {
            return false;
        }
        match self.setup_code() {
            Some(code) => self.same(normalize_code(given).as_bytes(), code.as_bytes()),
            None => false,
        }
    }

    pub fn check_password(&self, given: &str) -> bool {
        match std::fs::read_to_string(self.password_path()) {
            Ok(hash) => crate::accounts::verify_hash(given, hash.trim()),
            Err(_) => false,
        }
    }

    /// Sets the admin password: ends the pending state, deletes the setup code and every other
    /// session.
    pub fn set_password(&self, password: &str) -> Result<(), AdminError> {
        if password.chars().count() < MIN_PASSWORD {
            return Err(AdminError::Invalid(format!(
                "the admin password needs at least {MIN_PASSWORD} characters"
            )));
        }
        if password.len() > 1024 {
            return Err(AdminError::Invalid("the admin password is too long".into()));
        }
        let hash = crate::accounts::make_hash(password).map_err(AdminError::Invalid)?;
        use rand::RngCore;
        let mut b = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut b);
        crate::io::write_private(&self.dir.join("secret"), &b)?;
        crate::io::write_private(&self.password_path(), format!("{hash}\n").as_bytes())?;
        *self.secret.lock_or_recover() = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &b);
        // No session of the old secret can come back: the list has nothing left to do.
        self.revoked.lock_or_recover().clear();
        if let Err(e) = std::fs::remove_file(self.dir.join(REVOKED_FILE)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove the list of logged-out sessions: {e}");
            }
        }
        match std::fs::remove_file(&self.code_path) {
            Ok(()) => tracing::info!("admin password set; the setup code is no longer valid"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                path = %self.code_path.display(),
                "admin password set, but the setup code file could not be deleted: {e}"
            ),
        }
        Ok(())
    }

    /// Compares secrets in constant time: `a` against an HMAC of `b` (ring's verify is
    /// constant-time; its plain slice comparison is deprecated for outside use).
    fn same(&self, a: &[u8], b: &[u8]) -> bool {
        let key = self.secret.lock_or_recover();
        let tag = ring::hmac::sign(&key, b);
        ring::hmac::verify(&key, a, tag.as_ref()).is_ok()
    }

    fn sign(&self, what: &str) -> String {
        let key = self.secret.lock_or_recover();
        b64(ring::hmac::sign(&key, what.as_bytes()).as_ref())
    }

    /// A new session cookie value, valid until `now + SESSION_SECS`: `<expiry>.<id>.<mac>`.
    pub fn new_session(&self, now: i64) -> String {
        use rand::RngCore;
        let exp = now + SESSION_SECS;
        let mut id = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut id);
        let id = b64(&id);
        format!("{exp}.{id}.{}", self.sign(&format!("session:{exp}:{id}")))
    }

    /// The session's expiry and id, if the cookie is one of ours (signature only).
    fn session_parts<'a>(&self, cookie: &'a str) -> Option<(i64, &'a str)> {
        let mut parts = cookie.splitn(3, '.');
        let (exp, id, mac) = (parts.next()?, parts.next()?, parts.next()?);
        let e = exp.parse::<i64>().ok()?;
        self.same(
            mac.as_bytes(),
            self.sign(&format!("session:{e}:{id}")).as_bytes(),
        )
        .then_some((e, id))
    }

    /// The session is ours, not expired and not logged out.
    pub fn session_valid(&self, cookie: &str, now: i64) -> bool {
        match self.session_parts(cookie) {
            Some((e, id)) => e > now && !self.revoked.lock_or_recover().contains_key(id),
            None => false,
        }
    }

    /// Logs a session out for good: its id goes on the revocation list, written durably before
    /// this returns, so the cookie is refused from now on, also after a restart. Only a valid
    /// session can be revoked, so the list grows only by the owner's own logouts; expired ids
    /// are dropped from it.
    pub fn revoke_session(&self, cookie: &str, now: i64) -> std::io::Result<()> {
        let Some((exp, id)) = self.session_parts(cookie) else {
            return Ok(());
        };
        let mut revoked = self.revoked.lock_or_recover();
        revoked.retain(|_, e| *e > now);
        if exp <= now {
            return Ok(());
        }
        revoked.insert(id.to_string(), exp);
        let text: String = revoked
            .iter()
            .map(|(id, e)| format!("{id} {e}\n"))
            .collect();
        crate::io::write_private(&self.dir.join(REVOKED_FILE), text.as_bytes())
    }

    /// The CSRF token that goes with a session.
    pub fn csrf_token(&self, cookie: &str) -> String {
        self.sign(&format!("csrf:{cookie}"))
    }

    pub fn csrf_valid(&self, cookie: &str, token: &str) -> bool {
        self.same(token.as_bytes(), self.csrf_token(cookie).as_bytes())
    }

    /// Ask for a graceful restart (new settings); `main` re-executes the binary once the relay
    /// has shut down.
    pub fn request_restart(&self) {
        self.restart.store(true, Ordering::SeqCst);
    }

    pub fn restart_requested(&self) -> bool {
        self.restart.load(Ordering::SeqCst)
    }
}

/// Replaces this process with a fresh start of the same binary and arguments (new settings),
/// keeping the PID so systemd's `Type=notify` service and a terminal's `relaybox dev` go on.
/// Every descriptor we opened is close-on-exec, so the store's lock and the ports are free
/// for the new image. Returns only on failure.
pub fn reexec() -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return e,
    };
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    tracing::info!(exe = %exe.display(), "restarting with the new settings");
    std::process::Command::new(exe).args(args).exec()
}
