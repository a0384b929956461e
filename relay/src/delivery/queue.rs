//! The outbound queue: mail from local senders for other domains waits here (on disk, in the
//! store) until every recipient is delivered or reported back to the sender.
//!
//! Each entry is tried as soon as it is queued. Recipients are grouped by domain and handed to
//! the [`Transport`] in parallel; what comes back decides, per recipient: 2xx leaves the queue,
//! 5xx leaves it with a bounce to the sender, 4xx waits for a retry (60 s, then doubling up to
//! `queue_retry_max`), until `queue_lifetime` is over and it bounces too. The result of one
//! attempt, bounce included, is written in one store transaction, so a crash repeats at most a
//! delivery (at least once) and never a report (exactly once).

use super::bounce;
use super::transport::Transport;
use crate::clock::Clock;
use crate::config::Config;
use crate::dkim::Dkim;
use crate::net::Shutdown;
use crate::policy::Reply;
use crate::store::{Queued, Store};
use crate::sync::LockExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// After a delivery to a domain succeeds, mail waiting for that domain is tried again at once
/// (the peer is back), but no entry more often than this.
const HOT_RETRY_GAP: i64 = 5;
/// How long a success keeps a domain "hot".
const HOT_FOR: i64 = 60;

pub struct Queue {
    cfg: Arc<Config>,
    store: Store,
    clock: Clock,
    dkim: Arc<Dkim>,
    transport: Transport,
    push: crate::push::Push,
    wake: Notify,
    state: Mutex<State>,
}

/// What the scheduler needs of an entry. Kept in memory beside the table so that a wake (every
/// enqueue, every finished attempt) costs a scan of small structs instead of reading and
/// decoding the whole table, which made draining a large backlog after an outage quadratic.
#[derive(Debug, Clone)]
struct Due {
    next_attempt: i64,
    /// The domains of the recipients still waiting (for the hot-domain retry).
    domains: Vec<String>,
}

impl Due {
    fn new(next_attempt: i64, rcpts: &[String]) -> Due {
        let mut domains: Vec<String> = rcpts.iter().map(|r| domain_of(r)).collect();
        domains.sort();
        domains.dedup();
        Due {
            next_attempt,
            domains,
        }
    }
}

#[derive(Default)]
struct State {
    /// Every entry of the queue table, once `run` has loaded it.
    due: BTreeMap<u64, Due>,
    in_flight: HashSet<u64>,
    /// When each entry was last tried by this process.
    tried: HashMap<u64, i64>,
    /// Domains with a recent successful delivery, until when.
    hot: HashMap<String, i64>,
    /// The operator asked to retry everything now.
    flush: bool,
}

/// The domain part of an address, lower-cased.
fn domain_of(addr: &str) -> String {
    addr.rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or(addr)
        .to_ascii_lowercase()
}

impl Queue {
    pub fn new(
        cfg: Arc<Config>,
        store: Store,
        clock: Clock,
        dkim: Arc<Dkim>,
        transport: Transport,
        push: crate::push::Push,
    ) -> Queue {
        Queue {
            cfg,
            store,
            clock,
            dkim,
            transport,
            push,
            wake: Notify::new(),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock_or_recover()
    }

    /// Retries every entry now, whatever its retry time (`relaybox queue --flush`).
    pub fn flush(&self) {
        self.state().flush = true;
        self.wake();
    }

    /// Something was queued or a peer came back: look at the queue now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Entry `id` (for `rcpts`) is now durable in the store: schedule it at once.
    pub fn queued(&self, id: u64, rcpts: &[String]) {
        self.state().due.insert(id, Due::new(i64::MIN, rcpts));
        self.wake();
    }

    /// Reads the queue table into the scheduler's index (at start, and again after a read error).
    fn load(&self) -> Result<usize, crate::store::StoreError> {
        let entries = self.store.queued()?;
        let n = entries.len();
        let mut st = self.state();
        for e in entries {
            st.due
                .entry(e.id)
                .or_insert_with(|| Due::new(e.next_attempt, &e.rcpts));
        }
        Ok(n)
    }

    /// The delay before retry number `attempts + 1`.
    pub fn retry_delay(&self, attempts: u32) -> i64 {
        let initial = self.cfg.queue_retry_initial.0 as i64;
        let max = self.cfg.queue_retry_max.0 as i64;
        initial
            .checked_mul(1i64 << attempts.min(30))
            .unwrap_or(max)
            .min(max)
    }

    /// Runs until shutdown: starts every due entry, sleeps until the next one is due or
    /// [`Queue::wake`] is called.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        loop {
            match self.load() {
                Ok(0) => break,
                Ok(n) => {
                    tracing::info!(
                        messages = n,
                        "outbound queue holds mail from before the start"
                    );
                    break;
                }
                Err(e) => {
                    tracing::error!("cannot read the outbound queue (retrying in 10 s): {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
                        _ = shutdown.wait() => return,
                    }
                }
            }
        }
        loop {
            let next = self.start_due();
            let now = self.clock.now();
            let wait =
                std::time::Duration::from_secs(next.saturating_sub(now).clamp(1, 3600) as u64);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => return,
            }
        }
    }

    /// Starts an attempt for every due entry not already being tried; returns when the next
    /// entry is due.
    fn start_due(self: &Arc<Self>) -> i64 {
        let now = self.clock.now();
        let mut next = now + 3600;
        let mut st = self.state();
        let flush = std::mem::take(&mut st.flush);
        st.hot.retain(|_, until| *until > now);
        let State {
            due,
            in_flight,
            tried,
            hot,
            ..
        } = &mut *st;
        tried.retain(|id, _| due.contains_key(id));
        for (&id, d) in due.iter() {
            if in_flight.contains(&id) {
                continue;
            }
            let last = tried.get(&id).copied().unwrap_or(i64::MIN);
            let is_hot = last.saturating_add(HOT_RETRY_GAP) <= now
                && d.domains.iter().any(|dom| hot.contains_key(dom));
            if d.next_attempt <= now || is_hot || flush {
                in_flight.insert(id);
                tried.insert(id, now);
                let q = self.clone();
                tokio::spawn(async move {
                    let after = q.attempt_id(id).await;
                    let mut st = q.state();
                    st.in_flight.remove(&id);
                    match after {
                        Some(d) => st.due.insert(id, d),
                        None => st.due.remove(&id),
                    };
                    drop(st);
                    q.wake();
                });
            } else {
                next = next.min(d.next_attempt);
                if is_hot {
                    next = next.min(last + HOT_RETRY_GAP);
                }
            }
        }
        next
    }

    /// Reads entry `id` and tries it; returns its schedule afterwards, `None` when it has left
    /// the queue.
    async fn attempt_id(&self, id: u64) -> Option<Due> {
        match self.store.queue_entry(id) {
            Ok(Some(e)) => self.attempt(e).await,
            Ok(None) => None,
            Err(err) => {
                tracing::error!(
                    queue_id = id,
                    "cannot read a queue entry (retrying in 60 s): {err}"
                );
                Some(Due {
                    next_attempt: self.clock.now() + 60,
                    domains: Vec::new(),
                })
            }
        }
    }

    /// One delivery attempt for every remaining recipient of `e`; returns its schedule
    /// afterwards (`None`: it has left the queue).
    async fn attempt(&self, e: Queued) -> Option<Due> {
        let body = match self.store.map_body(e.body_id).await {
            Ok(b) => bytes::Bytes::from_owner(b),
            Err(err) => {
                tracing::error!(queue_id = e.id, "cannot read a queued message: {err}");
                let retry = (
                    self.clock.now() + self.retry_delay(e.attempts),
                    err.to_string(),
                );
                let due = Due::new(retry.0, &e.rcpts);
                let _ = self
                    .store
                    .queue_update(e.id, Vec::new(), Some(retry), None)
                    .await;
                return Some(due);
            }
        };
        let mut by_domain: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &e.rcpts {
            by_domain.entry(domain_of(r)).or_default().push(r.clone());
        }
        let tries = by_domain.into_iter().map(|(domain, rcpts)| {
            let body = body.clone();
            let sender = e.sender.clone();
            async move {
                let replies = self.transport.deliver(&domain, &sender, &rcpts, body).await;
                (domain, rcpts, replies)
            }
        });
        let results = futures::future::join_all(tries).await;

        let now = self.clock.now();
        let deadline = e.created + self.cfg.queue_lifetime.0 as i64;
        let expired = now >= deadline;
        let mut done = Vec::new();
        let mut failed: Vec<(String, Reply)> = Vec::new();
        let mut waiting: Vec<(String, Reply)> = Vec::new();
        for (domain, rcpts, replies) in results {
            for (i, rcpt) in rcpts.into_iter().enumerate() {
                let reply = replies.get(i).cloned().unwrap_or_else(|| {
                    Reply::new(451, "4.3.0 Local error: no answer for this recipient")
                });
                if reply.is_positive() {
                    tracing::info!(queue_id = e.id, %rcpt, reply = %reply, "delivered");
                    self.state().hot.insert(domain.clone(), now + HOT_FOR);
                    done.push(rcpt);
                } else if reply.is_temporary() && !expired {
                    tracing::info!(queue_id = e.id, %rcpt, reply = %reply, attempts = e.attempts + 1, "deferred");
                    waiting.push((rcpt, reply));
                } else {
                    let reply = if reply.is_temporary() {
                        Reply::new(
                            reply.code + 100,
                            format!(
                                "{} (gave up after {}: {})",
                                "5.4.7 Delivery time expired",
                                human_duration(self.cfg.queue_lifetime.0),
                                reply
                            ),
                        )
                    } else {
                        reply
                    };
                    tracing::info!(queue_id = e.id, %rcpt, reply = %reply, "bounced");
                    done.push(rcpt.clone());
                    failed.push((rcpt, reply));
                }
            }
        }
        let bounce = if failed.is_empty() {
            None
        } else {
            self.bounce_for(&e, &failed, &body, now)
        };
        let retry = waiting.first().map(|(_, r)| {
            let next = (now + self.retry_delay(e.attempts)).min(deadline.max(now + 1));
            (next, r.to_string())
        });
        let bounced_to = bounce.as_ref().map(|(a, _, _)| *a);
        let (n_done, n_failed) = (done.len() as u64, failed.len() as u64);
        let waiting_rcpts: Vec<String> = waiting.into_iter().map(|(r, _)| r).collect();
        let after = retry.as_ref().map(|(t, _)| Due::new(*t, &waiting_rcpts));
        match self.store.queue_update(e.id, done, retry, bounce).await {
            Ok(()) => {
                crate::metrics::M.outbound_bounced.add(n_failed);
                crate::metrics::M.outbound_delivered.add(n_done - n_failed);
                if let Some(a) = bounced_to {
                    crate::metrics::M.delivered_mail.inc();
                    // A bounce is mail from the mailer daemon: the sender's devices are woken.
                    self.push.notify(&[a], "");
                }
            }
            // Nothing recorded: the whole attempt repeats later (at least once, never lost).
            Err(err) => {
                tracing::error!(queue_id = e.id, "cannot record a delivery attempt: {err}");
                return Some(Due::new(now + self.retry_delay(e.attempts), &e.rcpts));
            }
        }
        after
    }

    /// The signed report for the sender's INBOX, or `None` when the sender is not one of ours
    /// (null sender, or the account is gone): bounces never leave this relay.
    fn bounce_for(
        &self,
        e: &Queued,
        failed: &[(String, Reply)],
        original: &[u8],
        now: i64,
    ) -> Option<(crate::store::AccountId, Arc<[u8]>, i64)> {
        if e.sender.is_empty() {
            return None;
        }
        let account = match self.store.account(&e.sender.to_ascii_lowercase()) {
            Ok(Some(a)) => a,
            _ => {
                tracing::info!(sender = %e.sender, "no bounce: the sender has no account here");
                return None;
            }
        };
        let report = bounce::report(
            &self.cfg.mail_domain,
            &e.sender,
            failed,
            original,
            e.created,
            now,
        );
        let signed = match self.dkim.sign(&report) {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!("cannot sign a bounce, storing it unsigned: {err}");
                report
            }
        };
        Some((account.id, signed.into(), now))
    }
}

/// The queue as the operator sees it (`relaybox queue`), oldest first.
pub fn report(entries: &[Queued], now: i64) -> String {
    if entries.is_empty() {
        return "the outbound queue is empty".into();
    }
    let mut sorted: Vec<&Queued> = entries.iter().collect();
    sorted.sort_by_key(|e| (e.created, e.id));
    let rcpts: usize = sorted.iter().map(|e| e.rcpts.len()).sum();
    let mut out = format!(
        "{} message(s) for {} recipient(s) waiting\n",
        sorted.len(),
        rcpts
    );
    for e in sorted {
        let sender = if e.sender.is_empty() { "<>" } else { &e.sender };
        let next = if e.next_attempt <= now {
            "now".to_string()
        } else {
            format!("in {}", human_duration((e.next_attempt - now) as u64))
        };
        out.push_str(&format!(
            "\n#{} {} bytes, queued {} ago, {} attempt(s), next {}\n  from {}\n  to {}\n",
            e.id,
            e.size,
            human_duration(now.saturating_sub(e.created).max(0) as u64),
            e.attempts,
            next,
            sender,
            e.rcpts.join(", "),
        ));
        if !e.last_error.is_empty() {
            out.push_str(&format!("  last error: {}\n", e.last_error));
        }
    }
    out.trim_end().to_string()
}

fn human_duration(secs: u64) -> String {
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match secs {
        s if s >= 86400 && s % 86400 == 0 => plural(s / 86400, "day"),
        s if s >= 3600 && s % 3600 == 0 => plural(s / 3600, "hour"),
        s if s >= 60 && s % 60 == 0 => plural(s / 60, "minute"),
        s => plural(s, "second"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lists_oldest_first_with_the_last_error() {
        let e = |id, created, rcpts: &[&str], err: &str| Queued {
            id,
            body_id: id,
            size: 1000,
            sender: "alice0001@a.test".into(),
            rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
            created,
            next_attempt: 1000 + 120,
            attempts: 2,
            last_error: err.into(),
        };
        let text = report(
            &[
                e(2, 900, &["b@b.test"], ""),
                e(1, 400, &["c@c.test", "d@c.test"], "421 Failed to connect"),
            ],
            1000,
        );
        assert!(
            text.starts_with("2 message(s) for 3 recipient(s) waiting\n"),
            "{text}"
        );
        let first = text.find("#1 ").unwrap();
        assert!(first < text.find("#2 ").unwrap(), "{text}");
        assert!(
            text.contains("queued 10 minutes ago, 2 attempt(s), next in 2 minutes"),
            "{text}"
        );
        assert!(
            text.contains("  to c@c.test, d@c.test\n  last error: 421 Failed to connect"),
            "{text}"
        );
        assert_eq!(report(&[], 0), "the outbound queue is empty");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(86400), "1 day");
        assert_eq!(human_duration(2 * 86400), "2 days");
        assert_eq!(human_duration(90), "90 seconds");
    }
}
