//! The latest log lines, kept in memory for the admin pages (log view, recent warnings).
//!
//! The appliance's journal lives in RAM and has no web view, and its operator has no terminal:
//! without this, "the certificate order failed" or "delivery to X keeps failing" would be
//! invisible to the one person who can fix it. Bounded: [`LINES`] lines and, kept apart so a busy
//! info log cannot push them out, [`WARNINGS`] warnings and errors, each cut at [`LINE_MAX`]
//! bytes. Installed as a `tracing` layer by the binary; nothing is written to disk.

use crate::sync::LockExt;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

pub const LINES: usize = 400;
pub const WARNINGS: usize = 50;
pub const LINE_MAX: usize = 600;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Line {
    /// Unix time, seconds.
    pub at: i64,
    pub level: &'static str,
    /// The spans the event happened in, outermost first (`smtp:delivery`), then its target.
    pub origin: String,
    pub text: String,
}

struct Buf {
    lines: VecDeque<Line>,
    warnings: VecDeque<Line>,
}

static BUF: Mutex<Buf> = Mutex::new(Buf {
    lines: VecDeque::new(),
    warnings: VecDeque::new(),
});

/// The `tracing` layer that fills the buffer (events the subscriber's filter lets through, INFO
/// and above).
pub struct Recent;

impl<S> tracing_subscriber::Layer<S> for Recent
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        // tracing orders levels by verbosity: DEBUG and TRACE compare greater than INFO.
        if *meta.level() > Level::INFO {
            return;
        }
        let mut origin = String::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                origin.push_str(span.name());
                origin.push(':');
            }
        }
        origin.push_str(meta.target());
        let mut v = Text(String::new());
        event.record(&mut v);
        push(Line {
            at: now(),
            level: level_name(*meta.level()),
            origin,
            text: v.0,
        });
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// The message first, then the other fields as `key=value`, cut at [`LINE_MAX`].
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.0.len() >= LINE_MAX {
            return;
        }
        if field.name() == "message" {
            let rest = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value:?}");
            if !rest.is_empty() {
                self.0.push(' ');
                self.0.push_str(&rest);
            }
        } else {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
        if self.0.len() > LINE_MAX {
            let mut cut = LINE_MAX;
            while !self.0.is_char_boundary(cut) {
                cut -= 1;
            }
            self.0.truncate(cut);
            self.0.push('…');
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        // Strings without Debug's quotes and escapes, as a log reader expects them.
        self.record_debug(field, &format_args!("{value}"));
    }
}

/// Adds a line (the layer calls this; tests and callers without `tracing` may too).
pub fn push(line: Line) {
    let mut b = BUF.lock_or_recover();
    if matches!(line.level, "warn" | "error") {
        if b.warnings.len() == WARNINGS {
            b.warnings.pop_front();
        }
        b.warnings.push_back(line.clone());
    }
    if b.lines.len() == LINES {
        b.lines.pop_front();
    }
    b.lines.push_back(line);
}

/// The latest `n` lines, oldest first.
pub fn recent(n: usize) -> Vec<Line> {
    latest(&BUF.lock_or_recover().lines, n)
}

/// The latest `n` warnings and errors, oldest first.
pub fn warnings(n: usize) -> Vec<Line> {
    latest(&BUF.lock_or_recover().warnings, n)
}

fn latest(q: &VecDeque<Line>, n: usize) -> Vec<Line> {
    q.iter().skip(q.len().saturating_sub(n)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    #[test]
    fn keeps_messages_fields_spans_and_warnings_apart_within_bounds() {
        let sub = tracing_subscriber::registry().with(Recent);
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("smtp", conn = 7);
            let _g = span.enter();
            tracing::info!(rcpts = 2, "delivered {}", "now");
            tracing::debug!("not kept");
            tracing::warn!(domain = "b.test", "delivery failed");
            for i in 0..LINES + 5 {
                tracing::info!(i, "filler");
            }
            tracing::info!(long = %"x".repeat(2 * LINE_MAX), "long");
        });
        // Other tests of this process may push lines too: look lines up by their text.
        let w = warnings(WARNINGS);
        let last = w
            .iter()
            .rev()
            .find(|l| l.text.starts_with("delivery failed"))
            .unwrap();
        assert_eq!(last.level, "warn");
        assert_eq!(last.text, "delivery failed domain=b.test");
        assert!(last.origin.starts_with("smtp:"), "{last:?}");
        let lines = recent(LINES);
        assert_eq!(lines.len(), LINES);
        assert!(lines.iter().all(|l| l.text != "not kept"));
        let long = lines
            .iter()
            .rev()
            .find(|l| l.text.starts_with("long "))
            .unwrap();
        assert!(long.text.starts_with("long long=xxx"));
        assert!(
            long.text.len() <= LINE_MAX + '…'.len_utf8(),
            "{}",
            long.text.len()
        );
        // The warning survived the flood of info lines that pushed it out of `recent`.
        assert!(!lines.iter().any(|l| l.text.starts_with("delivery failed")));
        assert_eq!(recent(3).len(), 3);
    }
}
