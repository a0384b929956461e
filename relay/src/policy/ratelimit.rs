//! Per-sender send rate (reference §3.4 step 1): GCRA with `max_user_send_per_minute` and a
//! burst of `max_user_send_burst_size`, keyed by the exact MAIL FROM address. Holds counters in
//! memory only; no I/O.

use super::Reply;
#[cfg(any(test, feature = "testkit"))]
use governor::clock::FakeRelativeClock;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;

pub struct SendLimiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<String, DefaultKeyedStateStore<String>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
}

fn quota(per_minute: u32, burst: u32) -> Quota {
    let per_minute = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(per_minute).allow_burst(burst)
}

impl SendLimiter<DefaultClock> {
    pub fn new(per_minute: u32, burst: u32) -> Self {
        let clock = DefaultClock::default();
        SendLimiter {
            limiter: RateLimiter::new(
                quota(per_minute, burst),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            ),
            clock,
        }
    }
}

#[cfg(any(test, feature = "testkit"))]
impl SendLimiter<FakeRelativeClock> {
    /// Test hook: a limiter on a clock the caller moves.
    pub fn with_fake_clock(per_minute: u32, burst: u32, clock: FakeRelativeClock) -> Self {
        SendLimiter {
            limiter: RateLimiter::new(
                quota(per_minute, burst),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            ),
            clock,
        }
    }
}

impl<C: Clock> SendLimiter<C> {
    /// Takes one message from `sender`'s allowance, or says when to come back.
    pub fn check(&self, sender: &str) -> Result<(), Reply> {
        match self.limiter.check_key(&sender.to_string()) {
            Ok(_) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err(Reply::new(
                    450,
                    format!(
                        "4.7.1: Too much mail from {sender}, try again in {} seconds",
                        wait.as_secs().max(1)
                    ),
                ))
            }
        }
    }

    /// Drops the state of senders whose allowance is full again, so memory does not grow with
    /// every address ever seen.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_450_then_refill() {
        let clock = FakeRelativeClock::default();
        let l = SendLimiter::with_fake_clock(60, 10, clock.clone());
        for _ in 0..10 {
            l.check("a@x.org").unwrap();
        }
        let r = l.check("a@x.org").unwrap_err();
        assert_eq!(r.code, 450);
        assert!(
            r.text.starts_with("4.7.1: Too much mail from a@x.org"),
            "{}",
            r.text
        );
        // Another sender is not affected.
        l.check("b@x.org").unwrap();
        // 60 per minute: one more message per second.
        clock.advance(Duration::from_secs(1));
        l.check("a@x.org").unwrap();
        assert!(l.check("a@x.org").is_err());
        l.forget_idle();
    }
}
