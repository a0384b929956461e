//! Aggressive expiry (reference §8): what keeps the SD card small. Old mail, large fetched mail,
//! mailboxes over their quota target, and accounts nobody logged into for months are deleted.
//! Time comes from the clock handle, so tests move time instead of sleeping.

use crate::clock::Clock;
use crate::config::Config;
use crate::store::{AccountId, Message, Store, StoreError, SEEN};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fetched messages larger than this go after `delete_large_after` days.
pub const LARGE_MESSAGE: u64 = 200_000;
/// Messages younger than this are never removed by the quota cleanup, so the owner can still see
/// what filled the mailbox.
const QUOTA_GRACE_SECS: i64 = 24 * 3600;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub accounts_total: u64,
    pub accounts_removed: u64,
    pub messages_total: u64,
    pub messages_removed: u64,
    pub bytes_removed: u64,
    /// Push device tokens past their lifetime (90 days after they were last set).
    pub tokens_removed: u64,
    pub elapsed: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "Removed {} out of {} mailboxes and {} out of {} messages ({} bytes) in {:.3} seconds",
            self.accounts_removed,
            self.accounts_total,
            self.messages_removed,
            self.messages_total,
            self.bytes_removed,
            self.elapsed.as_secs_f64()
        )
    }
}

/// What to delete from one mailbox, as a pure function of its messages and the time.
pub fn expired_messages(cfg: &Config, msgs: &[Message], now: i64) -> Vec<u32> {
    let day = 86_400i64;
    let old = now - cfg.delete_mails_after as i64 * day;
    let large = now - cfg.delete_large_after as i64 * day;
    msgs.iter()
        .filter(|m| {
            m.internal_date < old
                || (m.size > LARGE_MESSAGE && m.internal_date < large && m.flags.has(SEEN))
        })
        .map(|m| m.uid)
        .collect()
}

/// Oldest-first choice of messages to delete until `used` is at most `target`, never touching
/// the last 24 hours. `msgs` may come from several mailboxes: (mailbox, message).
pub fn quota_victims<K: Copy>(
    msgs: &[(K, Message)],
    used: u64,
    target: u64,
    now: i64,
) -> Vec<(K, u32)> {
    let mut order: Vec<&(K, Message)> = msgs.iter().collect();
    order.sort_by_key(|(_, m)| (m.internal_date, m.uid));
    let mut used = used;
    let mut out = Vec::new();
    for (k, m) in order {
        if used <= target {
            break;
        }
        if m.internal_date > now - QUOTA_GRACE_SECS {
            break;
        }
        used = used.saturating_sub(m.size);
        out.push((*k, m.uid));
    }
    out
}

/// Brings one account under 70 % of its quota when it is over 75 %; returns messages removed.
pub async fn enforce_quota(
    store: &Store,
    cfg: &Config,
    account: AccountId,
    now: i64,
) -> Result<u64, StoreError> {
    let limit = cfg.max_mailbox_size.0;
    let used = store.usage(account)?;
    if used * 100 <= limit * 75 {
        return Ok(0);
    }
    quota_to_target(store, cfg, account, used, now).await
}

async fn quota_to_target(
    store: &Store,
    cfg: &Config,
    account: AccountId,
    used: u64,
    now: i64,
) -> Result<u64, StoreError> {
    let target = cfg.max_mailbox_size.0 * 70 / 100;
    if used <= target {
        return Ok(0);
    }
    let mut all = Vec::new();
    for mb in store.mailboxes(account)? {
        for m in store.messages(mb.id)? {
            all.push((mb.id, m));
        }
    }
    let victims = quota_victims(&all, used, target, now);
    let mut removed = 0;
    let mut by_box: std::collections::BTreeMap<u64, Vec<u32>> = Default::default();
    for (mb, uid) in victims {
        by_box.entry(mb).or_default().push(uid);
    }
    for (mb, uids) in by_box {
        removed += store.remove_messages(mb, uids).await?.len() as u64;
    }
    if removed > 0 {
        crate::metrics::M.quota_expire_runs.inc();
        crate::metrics::M.quota_expire_removed_files.add(removed);
        tracing::info!("quota-expire: removed {removed} message(s) from account {account}");
    }
    Ok(removed)
}

/// One expiry pass over every account. With `dry_run` nothing is deleted; the report says what
/// would have been.
pub async fn run(
    store: &Store,
    cfg: &Config,
    clock: &Clock,
    dry_run: bool,
) -> Result<Report, StoreError> {
    run_paged(store, cfg, clock, dry_run, ACCOUNTS_PER_PAGE).await
}

async fn run_paged(
    store: &Store,
    cfg: &Config,
    clock: &Clock,
    dry_run: bool,
    per_page: usize,
) -> Result<Report, StoreError> {
    let started = Instant::now();
    let now = clock.now();
    let today = clock.today();
    let mut r = Report::default();
    // A page of accounts at a time, and one mailbox's messages at a time: the run's memory
    // depends on the largest mailbox, not on the number of accounts or messages.
    let mut after: Option<String> = None;
    loop {
        let page = store.accounts_page(after.as_deref(), per_page)?;
        let Some(last) = page.last() else { break };
        after = Some(last.addr.clone());
        for acc in page {
            expire_account(store, cfg, acc, now, today, dry_run, &mut r).await?;
        }
    }
    r.elapsed = started.elapsed();
    tracing::info!(dry_run, "{r}");
    Ok(r)
}

const ACCOUNTS_PER_PAGE: usize = 256;

async fn expire_account(
    store: &Store,
    cfg: &Config,
    acc: crate::store::Account,
    now: i64,
    today: i64,
    dry_run: bool,
    r: &mut Report,
) -> Result<(), StoreError> {
    r.accounts_total += 1;
    let boxes = store.mailboxes(acc.id)?;
    let count: u64 = boxes.iter().map(|b| b.exists as u64).sum();
    r.messages_total += count;
    if today - acc.last_login_day > cfg.delete_inactive_users_after as i64 {
        r.accounts_removed += 1;
        r.messages_removed += count;
        r.bytes_removed += acc.used_bytes;
        if !dry_run {
            store.delete_account(acc.id).await?;
            crate::metrics::M.expired_accounts.inc();
            tracing::info!(addr = %acc.addr, "deleted inactive account");
        }
        return Ok(());
    }
    for t in &acc.device_tokens {
        if crate::push::token_valid(t, now) {
            continue;
        }
        r.tokens_removed += 1;
        if !dry_run {
            store.remove_device_token(acc.id, &t.token).await?;
        }
    }
    let mut used = acc.used_bytes;
    for mb in &boxes {
        let msgs = store.messages(mb.id)?;
        let victims = expired_messages(cfg, &msgs, now);
        if victims.is_empty() {
            continue;
        }
        let bytes: u64 = msgs
            .iter()
            .filter(|m| victims.contains(&m.uid))
            .map(|m| m.size)
            .sum();
        r.bytes_removed += bytes;
        used = used.saturating_sub(bytes);
        if dry_run {
            r.messages_removed += victims.len() as u64;
        } else {
            let n = store.remove_messages(mb.id, victims).await?.len() as u64;
            crate::metrics::M.expired_messages.add(n);
            r.messages_removed += n;
        }
    }
    if !dry_run {
        r.messages_removed += quota_to_target(store, cfg, acc.id, used, now).await?;
    }
    Ok(())
}

/// Runs the daily expiry at `expiry_time` (UTC) until shutdown.
pub async fn schedule(relay: Arc<crate::Relay>) {
    let Some(at) = relay.cfg.expiry_minute() else {
        return;
    };
    loop {
        let now = relay.clock.now();
        let wait = seconds_until(now, at);
        tracing::debug!(seconds = wait, "next expiry run");
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(wait)) => {}
            _ = relay.shutdown.wait() => return,
        }
        let result = run(&relay.store, &relay.cfg, &relay.clock, false)
            .await
            .map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!("daily expiry failed: {e}");
        }
        relay.admin.record_expiry(relay.clock.now(), &result);
        // Never run twice within the same minute.
        tokio::time::sleep(std::time::Duration::from_secs(61)).await;
    }
}

/// Seconds from `now` (Unix time) to the next `minute_of_day` UTC.
pub fn seconds_until(now: i64, minute_of_day: u32) -> u64 {
    let day = 86_400i64;
    let target = minute_of_day as i64 * 60;
    let into_day = now.rem_euclid(day);
    let d = if target > into_day {
        target - into_day
    } else {
        day - into_day + target
    };
    d as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Flags;
    use std::sync::Arc;

    #[test]
    fn next_run_is_later_today_or_tomorrow() {
        let midnight = 20_000 * 86_400;
        assert_eq!(seconds_until(midnight, 2), 120);
        assert_eq!(seconds_until(midnight + 120, 2), 86_400);
        assert_eq!(seconds_until(midnight + 3600, 2), 86_400 - 3600 + 120);
    }

    fn cfg(dir: &std::path::Path) -> Config {
        let mut c = Config::with_domain("x.org", dir).unwrap();
        c.max_mailbox_size = crate::config::ByteSize(1000);
        c
    }

    fn msg(uid: u32, size: u64, age_days: i64, seen: bool, now: i64) -> Message {
        Message {
            uid,
            body_id: uid as u64,
            size,
            internal_date: now - age_days * 86_400,
            flags: if seen {
                Flags::from_names(["\\Seen"])
            } else {
                Flags::default()
            },
            modseq: 1,
        }
    }

    #[test]
    fn old_and_large_fetched_mail_expires() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(d.path());
        let now = 100 * 86_400;
        let msgs = vec![
            msg(1, 10, 21, false, now),     // older than 20 days
            msg(2, 300_000, 8, true, now),  // large, fetched, older than 7 days
            msg(3, 300_000, 8, false, now), // large but not fetched: kept
            msg(4, 300_000, 6, true, now),  // large, fetched, too young: kept
            msg(5, 10, 19, true, now),      // small, young enough: kept
        ];
        assert_eq!(expired_messages(&c, &msgs, now), vec![1, 2]);
    }

    #[test]
    fn quota_cleanup_spares_the_last_day() {
        let now = 10 * 86_400;
        let msgs: Vec<((), Message)> = vec![
            ((), msg(1, 300, 3, true, now)),
            ((), msg(2, 300, 2, true, now)),
            ((), msg(3, 300, 0, true, now)),
        ];
        assert_eq!(quota_victims(&msgs, 900, 700, now), vec![((), 1)]);
        assert_eq!(quota_victims(&msgs, 900, 100, now), vec![((), 1), ((), 2)]);
    }

    #[tokio::test]
    async fn expiry_removes_inactive_accounts_and_old_mail_when_time_moves() {
        let d = tempfile::tempdir().unwrap();
        let c = Config::with_domain("x.org", d.path()).unwrap();
        let store = Store::open(&d.path().join("store")).unwrap();
        let clock = Clock::system();
        let (a, _) = store
            .create_account("active001@x.org", "h", clock.now())
            .await
            .unwrap();
        let (b, _) = store
            .create_account("inactive1@x.org", "h", clock.now())
            .await
            .unwrap();
        let body: Arc<[u8]> = b"From: a@x.org\r\n\r\nx\r\n".to_vec().into();
        store
            .deliver_at(&[a.id, b.id], body.clone(), clock.now())
            .await
            .unwrap();

        let r = run(&store, &c, &clock, false).await.unwrap();
        assert_eq!((r.accounts_removed, r.messages_removed), (0, 0));

        clock.advance(21 * 86_400);
        store.set_last_login_day(a.id, clock.today()).await.unwrap();
        let dry = run(&store, &c, &clock, true).await.unwrap();
        assert_eq!((dry.accounts_removed, dry.messages_removed), (0, 2));
        assert_eq!(
            store
                .messages(store.mailbox(a.id, "INBOX").unwrap().unwrap().id)
                .unwrap()
                .len(),
            1
        );
        let r = run(&store, &c, &clock, false).await.unwrap();
        assert_eq!(r.messages_removed, 2);
        assert!(r
            .to_string()
            .starts_with("Removed 0 out of 2 mailboxes and 2 out of 2 messages"));

        clock.advance(70 * 86_400);
        store.set_last_login_day(a.id, clock.today()).await.unwrap();
        let r = run(&store, &c, &clock, false).await.unwrap();
        assert_eq!(r.accounts_removed, 1);
        assert!(store.account("inactive1@x.org").unwrap().is_none());
        assert!(store.account("active001@x.org").unwrap().is_some());
    }

    #[tokio::test]
    async fn expiry_walks_accounts_page_by_page_while_deleting() {
        let d = tempfile::tempdir().unwrap();
        let c = Config::with_domain("x.org", d.path()).unwrap();
        let store = Store::open(&d.path().join("store")).unwrap();
        let clock = Clock::system();
        for i in 0..7 {
            store
                .create_account(&format!("user{i:05}@x.org"), "h", clock.now())
                .await
                .unwrap();
        }
        clock.advance(100 * 86_400);
        for i in [1, 4] {
            let a = store
                .account(&format!("user{i:05}@x.org"))
                .unwrap()
                .unwrap();
            store.set_last_login_day(a.id, clock.today()).await.unwrap();
        }
        // Pages of two, with the page's last account deleted before the next page is read.
        let r = run_paged(&store, &c, &clock, false, 2).await.unwrap();
        assert_eq!((r.accounts_total, r.accounts_removed), (7, 5));
        assert_eq!(store.account_count().unwrap(), 2);
    }

    #[tokio::test]
    async fn device_tokens_expire_after_ninety_days() {
        let d = tempfile::tempdir().unwrap();
        let c = Config::with_domain("x.org", d.path()).unwrap();
        let store = Store::open(&d.path().join("store")).unwrap();
        let clock = Clock::system();
        let (a, _) = store
            .create_account("tokens001@x.org", "h", clock.now())
            .await
            .unwrap();
        store
            .add_device_token(a.id, "old", clock.now() - 80 * 86_400, 20)
            .await
            .unwrap();
        store
            .add_device_token(a.id, "new", clock.now(), 20)
            .await
            .unwrap();
        let r = run(&store, &c, &clock, false).await.unwrap();
        assert_eq!(r.tokens_removed, 0);
        clock.advance(11 * 86_400);
        store.set_last_login_day(a.id, clock.today()).await.unwrap();
        let dry = run(&store, &c, &clock, true).await.unwrap();
        assert_eq!(dry.tokens_removed, 1);
        assert_eq!(
            store
                .account_by_id(a.id)
                .unwrap()
                .unwrap()
                .device_tokens
                .len(),
            2
        );
        let r = run(&store, &c, &clock, false).await.unwrap();
        assert_eq!(r.tokens_removed, 1);
        let left: Vec<String> = store
            .account_by_id(a.id)
            .unwrap()
            .unwrap()
            .device_tokens
            .into_iter()
            .map(|t| t.token)
            .collect();
        assert_eq!(left, vec!["new"]);
    }
}
