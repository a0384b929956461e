//! Password guessing (issue 14 item 6): failed logins of IMAP and SMTP together are counted per
//! client address and per account, and each attempt past a few free ones waits for its turn,
//! the wait doubling with every further failure. Turns are handed out one after the other, so
//! many parallel connections from one address get no more guesses than one. An address that has
//! not failed yet ("clean") never waits for an account's turn: the owner logging in from home
//! is not locked out by someone guessing at their account from elsewhere, while every guessing
//! address pays its own delays and, after its first failure, the account's too.
//!
//! Pure bookkeeping on an `Instant` the caller passes in; the caller does the waiting. Memory is
//! bounded: entries are forgotten a while after their last failure, and each table has a cap.

use crate::sync::LockExt;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures per address, and per account, before attempts start to wait.
pub const FREE_FAILURES: u32 = 5;
/// The first wait; each further failure doubles it, up to [`MAX_DELAY`].
pub const BASE_DELAY: Duration = Duration::from_secs(1);
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// An attempt whose turn is further away than this is refused at once, without checking the
/// password (a client does not wait minutes for an answer, and the slot would be held).
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Failures are forgotten this long after the last one.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Entries per table (addresses, accounts); about 100 bytes each.
pub const MAX_ENTRIES: usize = 65_536;

/// What a login attempt may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Check the password now.
    Now,
    /// Wait this long, then check the password.
    After(Duration),
    /// Too many failures: refuse without checking.
    Refused,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    /// The next attempt's turn.
    next: Instant,
    last_failure: Instant,
}

impl Entry {
    fn expired(&self, now: Instant) -> bool {
        now >= self.next && now.duration_since(self.last_failure) >= FORGET_AFTER
    }

    fn delay(&self) -> Duration {
        match self.failures.checked_sub(FREE_FAILURES) {
            None => Duration::ZERO,
            Some(n) => BASE_DELAY.saturating_mul(1u32 << n.min(16)).min(MAX_DELAY),
        }
    }
}

/// IPv6 clients count per /64: one host usually has a whole /64 to pick addresses from.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

struct Table<K> {
    map: HashMap<K, Entry>,
}

impl<K: std::hash::Hash + Eq + Clone> Table<K> {
    fn get(&mut self, k: &K, now: Instant) -> Option<&mut Entry> {
        if self.map.get(k).is_some_and(|e| e.expired(now)) {
            self.map.remove(k);
        }
        self.map.get_mut(k)
    }

    fn fail(&mut self, k: &K, now: Instant) {
        if !self.map.contains_key(k) && self.map.len() >= MAX_ENTRIES {
            self.make_room(now);
        }
        let e = self.map.entry(k.clone()).or_insert(Entry {
            failures: 0,
            next: now,
            last_failure: now,
        });
        if e.expired(now) {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last_failure = now;
        e.next = e.next.max(now + e.delay());
    }

    /// Forgets expired entries, then, if that was not enough, the older half.
    fn make_room(&mut self, now: Instant) {
        self.map.retain(|_, e| !e.expired(now));
        if self.map.len() < MAX_ENTRIES {
            return;
        }
        let mut times: Vec<Instant> = self.map.values().map(|e| e.last_failure).collect();
        let mid = times.len() / 2;
        let (_, median, _) = times.select_nth_unstable(mid);
        let median = *median;
        self.map.retain(|_, e| e.last_failure > median);
    }
}

pub struct LoginThrottle {
    tables: Mutex<(Table<IpAddr>, Table<String>)>,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        LoginThrottle {
            tables: Mutex::new((
                Table {
                    map: HashMap::new(),
                },
                Table {
                    map: HashMap::new(),
                },
            )),
        }
    }
}

impl LoginThrottle {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Table<IpAddr>, Table<String>)> {
        self.tables.lock_or_recover()
    }

    /// The turn of an attempt from `ip` to log in as `account`, reserved: the next attempt from
    /// the same address (or at the same account) gets a later one. Without an address (tests,
    /// fuzzing) nothing is throttled.
    pub fn turn(&self, ip: Option<IpAddr>, account: &str, now: Instant) -> Turn {
        let Some(ip) = ip.map(ip_key) else {
            return Turn::Now;
        };
        let mut guard = self.lock();
        let (ips, accounts) = &mut *guard;
        let by_ip = ips.get(&ip, now).copied();
        let clean = by_ip.is_none_or(|e| e.failures == 0);
        let by_account = if clean {
            None
        } else {
            accounts.get(&account.to_string(), now).copied()
        };
        let at = [by_ip, by_account]
            .iter()
            .flatten()
            .map(|e| e.next)
            .fold(now, Instant::max);
        let wait = at.duration_since(now);
        if wait > MAX_WAIT {
            return Turn::Refused;
        }
        if let Some(e) = ips.get(&ip, now) {
            e.next = at + e.delay();
        }
        if by_account.is_some() {
            if let Some(e) = accounts.get(&account.to_string(), now) {
                e.next = at + e.delay();
            }
        }
        if wait.is_zero() {
            Turn::Now
        } else {
            Turn::After(wait)
        }
    }

    /// A wrong password from `ip`; `account` is `Some` when the account exists (guesses at
    /// addresses that do not exist only count against the address).
    pub fn failed(&self, ip: Option<IpAddr>, account: Option<&str>, now: Instant) {
        let Some(ip) = ip.map(ip_key) else {
            return;
        };
        let mut guard = self.lock();
        let (ips, accounts) = &mut *guard;
        ips.fail(&ip, now);
        if let Some(a) = account {
            accounts.fail(&a.to_string(), now);
        }
    }

    /// The right password: the account's count starts over (its owner got in). The address
    /// keeps its count, or one account of its own would let a guesser reset it.
    pub fn succeeded(&self, account: &str) {
        self.lock().1.map.remove(account);
    }

    /// Entries held (addresses, accounts), for tests.
    pub fn len(&self) -> (usize, usize) {
        let g = self.lock();
        (g.0.map.len(), g.1.map.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    /// Fails `n` times from `from` at `acct`, each attempt at its turn; returns the time after.
    fn guess(t: &LoginThrottle, from: &str, acct: &str, n: u32, mut now: Instant) -> Instant {
        for _ in 0..n {
            match t.turn(ip(from), acct, now) {
                Turn::Now => {}
                Turn::After(d) => now += d,
                Turn::Refused => panic!("refused"),
            }
            t.failed(ip(from), Some(acct), now);
        }
        now
    }

    #[test]
    fn a_few_failures_are_free_then_waits_double() {
        let t = LoginThrottle::default();
        let start = Instant::now();
        let now = guess(&t, "192.0.2.1", "a@x", FREE_FAILURES, start);
        assert_eq!(now, start, "the free failures wait for nothing");
        let mut waits = Vec::new();
        let mut now = now;
        for _ in 0..5 {
            match t.turn(ip("192.0.2.1"), "a@x", now) {
                Turn::After(d) => {
                    waits.push(d.as_secs());
                    now += d;
                }
                other => panic!("{other:?}"),
            }
            t.failed(ip("192.0.2.1"), Some("a@x"), now);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16]);
        // Then attempts are refused outright until the turn comes closer.
        t.failed(ip("192.0.2.1"), Some("a@x"), now);
        assert_eq!(t.turn(ip("192.0.2.1"), "a@x", now), Turn::Refused);
    }

    #[test]
    fn parallel_attempts_from_one_address_queue_up() {
        let t = LoginThrottle::default();
        let now = guess(&t, "192.0.2.1", "a@x", FREE_FAILURES + 1, Instant::now());
        // Thirty connections asking at the same instant get different turns, and those whose
        // turn would be too far away are refused.
        let mut turns: Vec<Duration> = (0..30)
            .filter_map(|_| match t.turn(ip("192.0.2.1"), "a@x", now) {
                Turn::After(d) => Some(d),
                Turn::Now => Some(Duration::ZERO),
                Turn::Refused => None,
            })
            .collect();
        let n = turns.len();
        turns.dedup();
        assert_eq!(turns.len(), n, "two attempts got the same turn");
        assert!((10..30).contains(&n), "{n} turns");
    }

    #[test]
    fn the_owner_from_a_clean_address_never_waits_for_the_account() {
        let t = LoginThrottle::default();
        // Guessing at a@x from many addresses puts the account far behind.
        let now = Instant::now();
        for i in 1..=20 {
            t.failed(ip(&format!("198.51.100.{i}")), Some("a@x"), now);
        }
        assert_eq!(t.turn(ip("198.51.100.1"), "a@x", now), Turn::Refused);
        assert_eq!(t.turn(ip("203.0.113.5"), "a@x", now), Turn::Now);
        t.succeeded("a@x");
        assert_eq!(t.len().1, 0);
    }

    #[test]
    fn failures_are_forgotten_and_memory_is_bounded() {
        let t = LoginThrottle::default();
        let start = Instant::now();
        let now = guess(&t, "192.0.2.1", "a@x", FREE_FAILURES + 3, start);
        let later = now + FORGET_AFTER + MAX_DELAY;
        assert_eq!(t.turn(ip("192.0.2.1"), "a@x", later), Turn::Now);
        // IPv6 addresses of one /64 are one client.
        let t = LoginThrottle::default();
        for i in 0..(FREE_FAILURES + 1) {
            t.failed(ip(&format!("2001:db8::{i:x}")), None, start);
        }
        assert!(matches!(
            t.turn(ip("2001:db8::ffff"), "b@x", start),
            Turn::After(_)
        ));
        // A flood of addresses never holds more than MAX_ENTRIES.
        let t = LoginThrottle::default();
        for i in 0..(MAX_ENTRIES as u32 + 1000) {
            let a = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
            t.failed(Some(a), None, start + Duration::from_millis(u64::from(i)));
        }
        assert!(t.len().0 <= MAX_ENTRIES);
    }
}
