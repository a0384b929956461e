//! Push notifications (reference §5.3–5.4): when a message is stored for an account with device
//! tokens, and the account did not send it itself, each valid token is POSTed as the raw body to
//! `push_url` (notifications.delta.chat). 200: done. 410: the token is dropped. Anything else,
//! connection errors included: retried after `push_retry_delays` (8, 64, 512, 4096 s), and given
//! up when a retry would fall more than `push_give_up_after` (5 h) after the first attempt.
//!
//! There is at most one pending notification per (account, token): a message arriving while one
//! is waiting is covered by it (the device fetches everything when woken), and one arriving while
//! a request is on the wire gets one more request after it. The first attempt happens from memory
//! without touching the disk (most pushes succeed at once); only a notification whose first
//! attempt failed is written to `<data_dir>/pending_notifications/` (tmp + fsync + rename, one
//! small file per (account, token)) and is resumed after a restart. So the SD card sees one small
//! write per failing token, not one per message.

use crate::clock::Clock;
use crate::config::{Config, Seconds};
use crate::metrics::M;
use crate::store::{Account, AccountId, DeviceToken, Store};
use crate::sync::LockExt;
use bytes::Bytes;
use http_body_util::Full;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// A token is used until 90 days after it was last set (reference §5.3).
pub const TOKEN_LIFETIME: i64 = 90 * 86_400;
/// A token set more than this far in the future (clock trouble) is not used either.
const FUTURE_SLACK: i64 = 60;
/// Timeout of one request, as in the reference.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Requests on the wire at once.
const CONCURRENCY: usize = 8;
/// Idle connections kept for the next requests.
const MAX_IDLE: usize = 4;

/// Is this token still to be used at `now`?
pub fn token_valid(t: &DeviceToken, now: i64) -> bool {
    t.last_set + TOKEN_LIFETIME > now && t.last_set <= now + FUTURE_SLACK
}

/// The valid tokens of an account, at most `max` of them (the most recently set): an account
/// that gathered more before `push_max_tokens` existed must not turn one message into
/// thousands of POSTs.
pub fn valid_tokens(a: &Account, now: i64, max: usize) -> impl Iterator<Item = &str> {
    let mut v: Vec<&DeviceToken> = a
        .device_tokens
        .iter()
        .filter(|t| token_valid(t, now))
        .collect();
    if v.len() > max {
        // Later in the list was set later; the sort is stable.
        v.reverse();
        v.sort_by_key(|t| std::cmp::Reverse(t.last_set));
        v.truncate(max);
    }
    v.into_iter().map(|t| t.token.as_str())
}

/// When to try again after failure number `failures` (1 = the first attempt failed), or `None`
/// when the notification is given up: past the last delay, or later than `give_up` after
/// `first`.
pub fn next_attempt(
    delays: &[Seconds],
    give_up: Seconds,
    first: i64,
    failures: u32,
    now: i64,
) -> Option<i64> {
    let i = (failures as usize).checked_sub(1)?;
    let at = now + delays.get(i)?.0 as i64;
    (at <= first + give_up.0 as i64).then_some(at)
}

/// How many delays of the schedule have passed `elapsed` seconds after the first attempt (for a
/// notification resumed after a restart).
fn failures_after(delays: &[Seconds], elapsed: i64) -> u32 {
    let mut sum = 0i64;
    let mut n = 0;
    for d in delays {
        sum += d.0 as i64;
        if sum > elapsed {
            break;
        }
        n += 1;
    }
    n
}

type Key = (AccountId, String);

#[derive(Debug, Clone)]
struct Entry {
    /// When the first attempt was made (the give-up deadline counts from here).
    first: i64,
    failures: u32,
    next: i64,
    in_flight: bool,
    /// A message arrived while a request was on the wire: send one more after it.
    again: bool,
    /// A file in the pending directory records it.
    persisted: bool,
}

impl Entry {
    fn fresh(now: i64) -> Entry {
        Entry {
            first: now,
            failures: 0,
            next: now,
            in_flight: false,
            again: false,
            persisted: false,
        }
    }
}

/// What the push service made of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// 410: the token is no longer valid.
    Gone,
    Failed(String),
}

struct Inner {
    cfg: Arc<Config>,
    store: Store,
    clock: Clock,
    dir: PathBuf,
    state: Mutex<HashMap<Key, Entry>>,
    wake: Notify,
    limit: Arc<Semaphore>,
    client: Client,
}

/// Cheap to clone; every clone is the same notifier.
#[derive(Clone)]
pub struct Push {
    inner: Arc<Inner>,
}

impl Push {
    /// Sets up the client and loads the notifications a previous run left pending.
    pub fn new(cfg: Arc<Config>, store: Store, clock: Clock) -> anyhow::Result<Push> {
        let client = Client::new(&cfg)?;
        let dir = cfg.data_dir.join("pending_notifications");
        std::fs::create_dir_all(&dir).map_err(|e| {
            anyhow::anyhow!("cannot create the push directory {}: {e}", dir.display())
        })?;
        let now = clock.now();
        let mut state = HashMap::new();
        for (key, first) in load_pending(&dir) {
            let failures = failures_after(&cfg.push_retry_delays, now - first);
            state.insert(
                key,
                Entry {
                    first,
                    failures,
                    next: now,
                    in_flight: false,
                    again: false,
                    persisted: true,
                },
            );
        }
        if !state.is_empty() {
            tracing::info!(
                pending = state.len(),
                "push notifications from before the start"
            );
        }
        Ok(Push {
            inner: Arc::new(Inner {
                cfg,
                store,
                clock,
                dir,
                state: Mutex::new(state),
                wake: Notify::new(),
                limit: Arc::new(Semaphore::new(CONCURRENCY)),
                client,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.inner.state.lock_or_recover()
    }

    /// Notifications waiting (for their first attempt or a retry).
    pub fn pending(&self) -> usize {
        self.state().len()
    }

    /// A message from `sender` was stored for `accounts`: wake their devices, except the
    /// sender's own (mail to oneself, bcc-self copies).
    pub fn notify(&self, accounts: &[AccountId], sender: &str) {
        let now = self.inner.clock.now();
        let mut added = false;
        for id in accounts {
            let a = match self.inner.store.account_by_id(*id) {
                Ok(Some(a)) => a,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("push: cannot read account {id}: {e}");
                    continue;
                }
            };
            if a.device_tokens.is_empty() || a.addr.eq_ignore_ascii_case(sender.trim()) {
                continue;
            }
            let mut state = self.state();
            for t in valid_tokens(&a, now, self.inner.cfg.push_max_tokens) {
                match state.get_mut(&(a.id, t.to_string())) {
                    Some(e) if e.in_flight => e.again = true,
                    Some(_) => {}
                    None => {
                        state.insert((a.id, t.to_string()), Entry::fresh(now));
                        added = true;
                    }
                }
            }
        }
        if added {
            self.inner.wake.notify_one();
        }
    }

    /// Runs until shutdown: starts every due attempt, sleeps until the next is due.
    pub async fn run(self, shutdown: crate::net::Shutdown) {
        loop {
            let next = self.start_due();
            let sleep = match next {
                Some(t) => Duration::from_secs((t - self.inner.clock.now()).max(0) as u64),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep.max(Duration::from_millis(10))) => {}
                _ = self.inner.wake.notified() => {}
                _ = shutdown.wait() => return,
            }
        }
    }

    /// Starts the due attempts; returns when the next one is due.
    fn start_due(&self) -> Option<i64> {
        let now = self.inner.clock.now();
        let mut due = Vec::new();
        let mut next: Option<i64> = None;
        {
            let mut state = self.state();
            for (k, e) in state.iter_mut() {
                if e.in_flight {
                    continue;
                }
                if e.next <= now {
                    e.in_flight = true;
                    due.push(k.clone());
                } else {
                    next = Some(next.map_or(e.next, |n| n.min(e.next)));
                }
            }
        }
        for key in due {
            let push = self.clone();
            tokio::spawn(async move {
                let Ok(_permit) = push.inner.limit.clone().acquire_owned().await else {
                    return;
                };
                push.attempt(key).await;
            });
        }
        next
    }

    /// One request for one (account, token), and what follows from its answer.
    async fn attempt(&self, key: Key) {
        let (id, token) = (key.0, key.1.clone());
        let now = self.inner.clock.now();
        let still_valid = match self.inner.store.account_by_id(id) {
            Ok(Some(a)) => a
                .device_tokens
                .iter()
                .any(|t| t.token == token && token_valid(t, now)),
            Ok(None) => false,
            Err(_) => true,
        };
        if !still_valid {
            self.finish(&key, false);
            return;
        }
        let outcome = self.inner.client.post(&token).await;
        match outcome {
            Outcome::Sent => {
                M.push_sent.inc();
                tracing::debug!(account = id, "push notification sent");
                self.finish(&key, true);
            }
            Outcome::Gone => {
                M.push_token_removed.inc();
                tracing::info!(
                    account = id,
                    "push service says the token is gone; removing it"
                );
                if let Err(e) = self.inner.store.remove_device_token(id, &token).await {
                    tracing::warn!("push: cannot remove a token: {e}");
                }
                self.finish(&key, false);
            }
            Outcome::Failed(err) => {
                M.push_attempt_failed.inc();
                let now = self.inner.clock.now();
                let write = {
                    let mut state = self.state();
                    let Some(e) = state.get_mut(&key) else {
                        return;
                    };
                    e.failures += 1;
                    e.in_flight = false;
                    e.again = false;
                    let cfg = &self.inner.cfg;
                    match next_attempt(
                        &cfg.push_retry_delays,
                        cfg.push_give_up_after,
                        e.first,
                        e.failures,
                        now,
                    ) {
                        Some(at) => {
                            tracing::info!(
                                account = id,
                                failures = e.failures,
                                retry_in = at - now,
                                "push failed: {err}"
                            );
                            e.next = at;
                            let first = e.first;
                            (!e.persisted).then(|| {
                                e.persisted = true;
                                first
                            })
                        }
                        None => {
                            M.push_failed.inc();
                            tracing::warn!(
                                account = id,
                                failures = e.failures,
                                "push failed, giving up: {err}"
                            );
                            let persisted = e.persisted;
                            state.remove(&key);
                            if persisted {
                                remove_file(&self.inner.dir, &key);
                            }
                            None
                        }
                    }
                };
                if let Some(first) = write {
                    let dir = self.inner.dir.clone();
                    let key = key.clone();
                    let r =
                        tokio::task::spawn_blocking(move || write_pending(&dir, &key, first)).await;
                    if !matches!(r, Ok(Ok(()))) {
                        tracing::warn!("push: cannot record a pending notification: {r:?}");
                    }
                }
                self.inner.wake.notify_one();
            }
        }
    }

    /// The notification is done (sent, or no longer wanted). If more mail arrived during a
    /// successful request, one more request follows.
    fn finish(&self, key: &Key, sent: bool) {
        let now = self.inner.clock.now();
        let persisted = {
            let mut state = self.state();
            let Some(e) = state.get_mut(key) else {
                return;
            };
            let persisted = e.persisted;
            if sent && e.again {
                *e = Entry::fresh(now);
                self.inner.wake.notify_one();
            } else {
                state.remove(key);
            }
            persisted
        };
        if persisted {
            remove_file(&self.inner.dir, key);
        }
    }
}

// ---- pending files -------------------------------------------------------------------------

fn file_name(key: &Key) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&key.0.to_be_bytes());
    ctx.update(key.1.as_bytes());
    let d = ctx.finish();
    d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `<account id>\n<first attempt>\n<token>`, written atomically ([`crate::io::write_private`]).
fn write_pending(dir: &Path, key: &Key, first: i64) -> std::io::Result<()> {
    let text = format!("{}\n{}\n{}", key.0, first, key.1);
    crate::io::write_private(&dir.join(file_name(key)), text.as_bytes())
}

fn remove_file(dir: &Path, key: &Key) {
    let path = dir.join(file_name(key));
    if let Err(e) = std::fs::remove_file(&path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("push: cannot remove {}: {e}", path.display());
        }
    }
}

/// The pending notifications in `dir`; leftovers of interrupted writes and unreadable files are
/// removed.
fn load_pending(dir: &Path) -> Vec<(Key, i64)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for ent in rd.flatten() {
        let path = ent.path();
        let parsed = std::fs::read_to_string(&path).ok().and_then(|text| {
            let mut it = text.splitn(3, '\n');
            let id: AccountId = it.next()?.parse().ok()?;
            let first: i64 = it.next()?.parse().ok()?;
            let token = it.next()?.to_string();
            (!token.is_empty()).then_some(((id, token), first))
        });
        let is_tmp = path.extension().is_some_and(|e| e == "tmp");
        match parsed {
            Some((key, first)) if !is_tmp && ent.file_name().to_str() == Some(&file_name(&key)) => {
                out.push((key, first))
            }
            _ => {
                tracing::info!("push: removing unusable {}", path.display());
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    out
}

// ---- the HTTP client ---------------------------------------------------------------------

use crate::http_client::Sender;

struct Client {
    uri: hyper::Uri,
    host: String,
    port: u16,
    /// `None` for plain `http://`.
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    idle: Mutex<Vec<Sender>>,
}

impl Client {
    fn new(cfg: &Config) -> anyhow::Result<Client> {
        let uri: hyper::Uri = cfg
            .push_url
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("push_url: {e}"))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .ok_or_else(|| anyhow::anyhow!("push_url has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let connectors = crate::tls::client::Connectors::new(cfg.outbound_ca_file.as_deref())?;
            let name = match host.parse::<std::net::IpAddr>() {
                Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
                Err(_) => rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| anyhow::anyhow!("push_url host {host:?}: {e}"))?,
            };
            Some((connectors.https_verified, name))
        } else {
            None
        };
        Ok(Client {
            uri,
            host,
            port,
            tls,
            idle: Mutex::new(Vec::new()),
        })
    }

    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.idle.lock_or_recover();
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put_idle(&self, s: Sender) {
        let mut idle = self.idle.lock_or_recover();
        if !s.is_closed() && idle.len() < MAX_IDLE {
            idle.push(s);
        }
    }

    async fn connect(&self) -> Result<Sender, String> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect to {}:{}: {e}", self.host, self.port))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake failed: {e}"))?;
                crate::http_client::handshake(tls).await
            }
            None => crate::http_client::handshake(tcp).await,
        }
    }

    async fn exchange(&self, mut s: Sender, token: &str) -> Result<(Outcome, Sender), String> {
        let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let host = match self.uri.port_u16() {
            Some(p) => format!("{}:{p}", self.uri.host().unwrap_or_default()),
            None => self.uri.host().unwrap_or_default().to_string(),
        };
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::CONTENT_LENGTH, token.len())
            .header(hyper::header::USER_AGENT, "relaybox")
            .body(Full::new(Bytes::copy_from_slice(token.as_bytes())))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let resp = crate::http_client::send(&mut s, req).await?;
        let status = resp.status().as_u16();
        // Read (and drop) the body so the connection can be reused.
        let _ = crate::http_client::read_body(resp, 64 * 1024).await;
        let outcome = match status {
            200 => Outcome::Sent,
            410 => Outcome::Gone,
            s => Outcome::Failed(format!("HTTP status {s}")),
        };
        Ok((outcome, s))
    }

    async fn post(&self, token: &str) -> Outcome {
        let run = async {
            if let Some(s) = self.take_idle() {
                if let Ok(r) = self.exchange(s, token).await {
                    return Ok(r);
                }
                // The server may have closed the idle connection: dial anew.
            }
            let s = self.connect().await?;
            self.exchange(s, token).await
        };
        match tokio::time::timeout(TIMEOUT, run).await {
            Ok(Ok((outcome, s))) => {
                self.put_idle(s);
                outcome
            }
            Ok(Err(e)) => Outcome::Failed(e),
            Err(_) => Outcome::Failed("timed out".into()),
        }
    }
}

#[cfg(test)]
mod tests;
