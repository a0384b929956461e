//! Where accepted mail goes: local mailboxes now, the outbound queue once federation lands.
//! SMTP sessions (and later `/mxdeliv`) call [`Delivery::check_rcpt`] per recipient and
//! [`Delivery::submit`] after DATA; the reply they get is what they send to the client.

use crate::config::Config;
use crate::policy::{self, Direction, Envelope, Reply, Verdict};
use crate::store::{AccountId, Store};
use std::sync::Arc;

/// What a recipient address resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Local(AccountId),
}

pub struct Delivery {
    cfg: Arc<Config>,
    store: Store,
}

/// Splits `local@domain`; `None` unless there is exactly one `@` and both sides are non-empty.
pub fn split_addr(addr: &str) -> Option<(&str, &str)> {
    let (l, d) = addr.split_once('@')?;
    if l.is_empty() || d.is_empty() || d.contains('@') {
        return None;
    }
    Some((l, d))
}

impl Delivery {
    pub fn new(cfg: Arc<Config>, store: Store) -> Delivery {
        Delivery { cfg, store }
    }

    /// Decides at RCPT time whether we take mail for `rcpt`.
    pub fn check_rcpt(&self, rcpt: &str, dir: Direction) -> Result<Target, Reply> {
        let rcpt = rcpt.trim().to_ascii_lowercase();
        let Some((_, domain)) = split_addr(&rcpt) else {
            return Err(Reply::new(501, "5.1.3 Bad recipient address syntax"));
        };
        if !self.cfg.is_local_domain(domain) {
            return Err(match dir {
                Direction::Incoming => Reply::new(554, "5.7.1 Relay access denied"),
                // Outbound delivery comes with federation; until then say so instead of
                // accepting mail we cannot pass on.
                Direction::Outgoing => Reply::new(
                    451,
                    format!("4.4.0 Delivery to other domains ({domain}) is not available yet"),
                ),
            });
        }
        match self.store.account(&rcpt) {
            Ok(Some(a)) => Ok(Target::Local(a.id)),
            Ok(None) => Err(Reply::new(
                550,
                "5.1.1 Recipient address rejected: no such user",
            )),
            Err(e) => {
                tracing::error!("recipient lookup failed: {e}");
                Err(Reply::new(451, "4.3.0 Temporary lookup failure"))
            }
        }
    }

    /// Runs the policy and stores the message for every target. The reply is `250` only once the
    /// message is durable.
    pub async fn submit(
        &self,
        env: &Envelope,
        targets: &[Target],
        data: Vec<u8>,
        dir: Direction,
    ) -> Reply {
        let verdict = match dir {
            Direction::Outgoing => policy::check_outgoing(env, &data),
            Direction::Incoming => policy::check_incoming(env, &data),
        };
        let data = match verdict {
            Verdict::Accept(d) => d,
            Verdict::Reject(r) => {
                tracing::info!(reply = %r, "message refused by policy");
                return r;
            }
        };
        let mut local: Vec<AccountId> = targets
            .iter()
            .map(|t| match t {
                Target::Local(id) => *id,
            })
            .collect();
        local.sort_unstable();
        local.dedup();
        if local.is_empty() {
            return Reply::new(554, "5.5.1 No valid recipients");
        }
        let body: Arc<[u8]> = policy::prepare_local_delivery(&data).into();
        match self.store.deliver(&local, body).await {
            Ok(()) => {
                tracing::info!(recipients = local.len(), "delivered");
                Reply::new(250, "2.0.0 OK")
            }
            Err(e) => {
                tracing::error!("local delivery failed: {e}");
                Reply::new(
                    451,
                    "4.3.0 Local error while storing the message, try again later",
                )
            }
        }
    }
}
