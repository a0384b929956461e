//! Time comes from a handle so that tests (and `relaybox expire --days`) can move it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Default, Debug)]
pub struct Clock {
    offset_secs: Arc<AtomicI64>,
}

impl Clock {
    pub fn system() -> Self {
        Self::default()
    }

    /// Seconds since the Unix epoch, as this clock sees them.
    pub fn now(&self) -> i64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        real + self.offset_secs.load(Ordering::Relaxed)
    }

    /// The current UTC day number (days since the epoch); last-login is kept at this granularity.
    pub fn today(&self) -> i64 {
        self.now().div_euclid(86_400)
    }

    /// Test hook: moves this clock (and every clone of it) forward instead of sleeping.
    #[cfg(any(test, feature = "testkit"))]
    pub fn advance(&self, secs: i64) {
        self.offset_secs.fetch_add(secs, Ordering::Relaxed);
    }
}
