//! Throttling of admin logins (the setup code while set-up is pending, the password after).
//!
//! The design goal is that nobody else can lock the owner out, while guessing stays slow:
//!
//! - Every address gets its own bucket: 5 attempts at once, then 5 a minute. An attacker on one
//!   address (IPv6: one /64, which one host usually has whole) only ever throttles itself.
//! - A global budget of 30 attempts a minute bounds the total guessing rate of all addresses
//!   together, but it is only charged to and enforced on *suspect* addresses: those with
//!   [`SUSPECT_AFTER`] or more failures in the last [`FAILURE_WINDOW`]. An address that has not
//!   failed that often (the owner, even after a typo or two) is never refused because of what
//!   other addresses did, so a correct code or password from it always gets through.
//!
//! The price of that exception is a few free guesses per new address, which is nothing against
//! an 80-bit setup code or a 12-character password behind a slow hash; the previous design (one
//! global 30/min limit for everybody) let 30 wrong guesses a minute answer the owner's right
//! code with 429. Connection counts per address are the HTTP listener's business, not this.

use crate::sync::LockExt;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures within [`FAILURE_WINDOW`] after which an address counts as suspect.
pub const SUSPECT_AFTER: u32 = 3;
/// How long a failure counts.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Attempts per address: this many at once, then this many a minute.
pub const PER_ADDRESS_PER_MINUTE: u32 = 5;
/// Attempts per minute of all suspect addresses together.
pub const SUSPECT_PER_MINUTE: u32 = 30;
/// Addresses with recent failures remembered at most (then the oldest are forgotten).
const MAX_TRACKED: usize = 10_000;

pub struct LoginThrottle {
    per_address: DefaultKeyedRateLimiter<IpAddr>,
    suspects: DefaultDirectRateLimiter,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// What an attempt is throttled by (both are answered 429).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    Address,
    Suspects,
}

/// The key an address is throttled by: IPv4 as is, IPv6 by its /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self::new()
    }
}

impl LoginThrottle {
    pub fn new() -> LoginThrottle {
        let per = NonZeroU32::new(PER_ADDRESS_PER_MINUTE).expect("> 0");
        let suspects = NonZeroU32::new(SUSPECT_PER_MINUTE).expect("> 0");
        LoginThrottle {
            per_address: DefaultKeyedRateLimiter::keyed(Quota::per_minute(per).allow_burst(per)),
            suspects: DefaultDirectRateLimiter::direct(Quota::per_minute(suspects)),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn recent_failures(&self, k: IpAddr) -> u32 {
        let f = self.failures.lock_or_recover();
        match f.get(&k) {
            Some((n, last)) if last.elapsed() < FAILURE_WINDOW => *n,
            _ => 0,
        }
    }

    /// Whether an attempt from `ip` may be checked now (call before looking at the secret).
    pub fn check(&self, ip: IpAddr) -> Result<(), Throttled> {
        let k = key(ip);
        if self.per_address.len() > MAX_TRACKED {
            self.per_address.retain_recent();
        }
        if self.per_address.check_key(&k).is_err() {
            return Err(Throttled::Address);
        }
        if self.recent_failures(k) >= SUSPECT_AFTER && self.suspects.check().is_err() {
            return Err(Throttled::Suspects);
        }
        Ok(())
    }

    /// A wrong code or password came from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let k = key(ip);
        let mut f = self.failures.lock_or_recover();
        if f.len() >= MAX_TRACKED && !f.contains_key(&k) {
            f.retain(|_, (_, last)| last.elapsed() < FAILURE_WINDOW);
            if f.len() >= MAX_TRACKED {
                // Still full of recent failures: forget the oldest. Forgetting only makes an
                // address look clean again (a few more guesses), it never refuses anybody.
                if let Some(oldest) = f.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) {
                    f.remove(&oldest);
                }
            }
        }
        let e = f.entry(k).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAILURE_WINDOW {
            e.0 = 0;
        }
        e.0 += 1;
        e.1 = Instant::now();
    }

    /// `ip` logged in: its earlier failures were typos.
    pub fn succeeded(&self, ip: IpAddr) {
        self.failures.lock_or_recover().remove(&key(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_of_one_64_share_a_bucket() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(key(a), key(b));
        assert_ne!(key(a), key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn suspects_share_a_budget_that_clean_addresses_never_touch() {
        let t = LoginThrottle::new();
        // 40 addresses fail SUSPECT_AFTER times each (within their own bucket of 5).
        let mut refused = 0;
        for i in 0..40u8 {
            let ip = IpAddr::from([10, 0, 0, i]);
            for _ in 0..SUSPECT_AFTER {
                t.check(ip).unwrap();
                t.failed(ip);
            }
            if t.check(ip).is_err() {
                refused += 1;
            } else {
                t.failed(ip);
            }
        }
        // The 31st suspect attempt onwards is refused by the shared budget.
        assert_eq!(refused, 40 - SUSPECT_PER_MINUTE as usize, "{refused}");
        assert_eq!(
            t.check(IpAddr::from([10, 0, 0, 39])),
            Err(Throttled::Suspects)
        );
        // A clean address still gets its attempts.
        let owner = IpAddr::from([192, 0, 2, 1]);
        for _ in 0..PER_ADDRESS_PER_MINUTE {
            assert_eq!(t.check(owner), Ok(()));
        }
        assert_eq!(t.check(owner), Err(Throttled::Address));
    }
}
