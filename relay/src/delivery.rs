//! Where accepted mail goes: local mailboxes, and the outbound queue for other domains.
//! SMTP sessions and `/mxdeliv` call [`Delivery::check_rcpt`] per recipient and
//! [`Delivery::submit`] after DATA; the reply they get is what they send to the client. Both
//! inbound paths (port 25 and `/mxdeliv`) thereby run exactly the same checks.

use crate::clock::Clock;
use crate::config::Config;
use crate::dkim::Dkim;
use crate::dns::Dns;
use crate::metrics::M;
use crate::policy::ratelimit::SendLimiter;
use crate::policy::{self, Direction, Envelope, Reply};
use crate::push::Push;
use crate::store::{AccountId, Body, Spool, Store};
use queue::Queue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub mod bounce;
pub mod queue;
pub mod spooler;
pub mod transport;

/// What a recipient address resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Local(AccountId),
    /// An address of another domain (outgoing mail only), lower-cased.
    Remote(String),
}

pub struct Delivery {
    cfg: Arc<Config>,
    store: Store,
    clock: Clock,
    /// For the DKIM origin check of incoming mail.
    dns: Dns,
    limiter: SendLimiter,
    rate_checks: AtomicU64,
    dkim: Arc<Dkim>,
    queue: Arc<Queue>,
    push: Push,
}

/// The reply for a recipient whose mailbox cannot take the message (Dovecot's text, which the
/// reference's tests look for).
pub fn quota_exceeded(rcpt: &str) -> Reply {
    Reply::new(
        552,
        format!("5.2.2 <{rcpt}>: Quota exceeded (mailbox for user is full)"),
    )
}

/// Why the signed copy of an outgoing message could not be made.
#[derive(Debug, thiserror::Error)]
enum CopyError {
    #[error(transparent)]
    Sign(#[from] crate::dkim::DkimError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the spool is shorter than the message body")]
    Layout,
}

/// A domain we could deliver to: a DNS name or an address literal.
fn valid_remote_domain(domain: &str) -> bool {
    if domain.starts_with('[') {
        return crate::dns::literal_ip(domain).is_some();
    }
    crate::config::valid_domain_name(domain).is_ok()
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
    /// Loads (or on first start makes) the DKIM key and sets up the outbound transport.
    pub fn new(cfg: Arc<Config>, store: Store, clock: Clock, dns: Dns) -> anyhow::Result<Delivery> {
        let limiter = SendLimiter::new(cfg.max_user_send_per_minute, cfg.max_user_send_burst_size);
        let dkim = Arc::new(Dkim::load_or_create(&cfg).map_err(|e| {
            anyhow::anyhow!(
                "cannot set up the DKIM key {}: {e}",
                Dkim::key_path(&cfg).display()
            )
        })?);
        let transport = transport::Transport::new(cfg.clone(), dns.clone())?;
        let push = Push::new(cfg.clone(), store.clone(), clock.clone())?;
        let queue = Arc::new(Queue::new(
            cfg.clone(),
            store.clone(),
            clock.clone(),
            dkim.clone(),
            transport,
            push.clone(),
        ));
        Ok(Delivery {
            cfg,
            store,
            clock,
            dns,
            limiter,
            rate_checks: AtomicU64::new(0),
            dkim,
            queue,
            push,
        })
    }

    /// The push notifier; the server runs it (`Push::run`).
    pub fn push(&self) -> &Push {
        &self.push
    }

    /// The outbound queue; the server runs it (`Queue::run`).
    pub fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }

    /// Takes one message from a local sender's send allowance (checked at the first RCPT TO).
    pub fn check_send_rate(&self, sender: &str) -> Result<(), Reply> {
        // Forget senders whose allowance is full again now and then, so the table stays small.
        if self.rate_checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.limiter.forget_idle();
        }
        self.limiter.check(sender).inspect_err(|r| {
            tracing::info!(%sender, reply = %r, "send rate exceeded");
        })
    }

    /// Is there room for `size` more bytes in this account, after the quota cleanup if needed?
    async fn fits(&self, account: AccountId, size: u64) -> Result<bool, crate::store::StoreError> {
        let limit = self.cfg.max_mailbox_size.0;
        if self.store.usage(account)?.saturating_add(size) <= limit {
            return Ok(true);
        }
        crate::expiry::enforce_quota(&self.store, &self.cfg, account, self.clock.now()).await?;
        Ok(self.store.usage(account)?.saturating_add(size) <= limit)
    }

    /// Decides at RCPT time whether we take mail for `rcpt`.
    pub fn check_rcpt(&self, rcpt: &str, dir: Direction) -> Result<Target, Reply> {
        let rcpt = rcpt.trim().to_ascii_lowercase();
        let Some((_, domain)) = split_addr(&rcpt) else {
            return Err(policy::codes::BAD_RECIPIENT.reply());
        };
        if !self.cfg.is_local_domain(domain) {
            return match dir {
                // Never an open relay: other domains only for our own authenticated users.
                Direction::Incoming => Err(Reply::new(554, "5.7.1 Relay access denied")),
                Direction::Outgoing if !valid_remote_domain(domain) => Err(Reply::new(
                    501,
                    format!("5.1.2 Bad destination domain {domain}"),
                )),
                // No mail to our own loopback or LAN services through an address literal.
                Direction::Outgoing
                    if crate::dns::literal_ip(domain)
                        .is_some_and(|ip| !self.cfg.destination_allowed(ip)) =>
                {
                    Err(Reply::new(
                        550,
                        format!("5.7.1 Refusing to deliver to {domain}: not a public address"),
                    ))
                }
                Direction::Outgoing => Ok(Target::Remote(rcpt)),
            };
        }
        match self.store.account(&rcpt) {
            Ok(Some(a)) if a.used_bytes >= self.cfg.max_mailbox_size.0 => {
                Err(quota_exceeded(&rcpt))
            }
            Ok(Some(a)) => Ok(Target::Local(a.id)),
            Ok(None) => Err(policy::codes::NO_SUCH_USER.reply()),
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
        self.submit_spooled(env, targets, &data, None, dir).await
    }

    /// `submit` for a message whose local copy is already on disk (`spool`, written by a
    /// [`spooler::Spooler`]): the store adopts that file instead of writing the body again.
    pub async fn submit_spooled(
        &self,
        env: &Envelope,
        targets: &[Target],
        data: &[u8],
        spool: Option<Spool>,
        dir: Direction,
    ) -> Reply {
        let (verdict, kind) = policy::judge(env, data, dir);
        crate::metrics::count_filtered(dir, kind, verdict.is_ok());
        if let Err(r) = verdict {
            if r.code == 523 {
                M.rejected_unencrypted_mail.inc();
            }
            tracing::info!(reply = %r, "message refused by policy");
            return r;
        }
        // What `check_outgoing` hands back, as `head` then `rest`; incoming mail passes
        // unchanged, without a copy. The cleanup rewrites only the header, so a spooled
        // message has just its header rewritten here: its body stays on disk (`rest` is the
        // mapped body), and the spool already holds the cleaned header in its local form.
        let split = spool.as_ref().and_then(|_| spooler::header_end(data));
        let (head, rest): (std::borrow::Cow<[u8]>, &[u8]) = match (dir, split) {
            (Direction::Incoming, _) => (data.into(), &[]),
            (Direction::Outgoing, Some(n)) => (
                policy::headers::clean_outgoing(&data[..n]).into(),
                &data[n..],
            ),
            (Direction::Outgoing, None) => (policy::headers::clean_outgoing(data).into(), &[]),
        };
        if dir == Direction::Incoming {
            // Origin check (reference §3.5 step 7) only after the gate: unencrypted mail is
            // refused without any DNS lookup (filtermail#69), and a spoofer cannot make us query
            // DNS for mail we would refuse anyway. The incoming gate hands the bytes back
            // unchanged, so the signature is checked over exactly what was received.
            //
            // MAIL FROM ≠ From is not refused here (forwarding, SRS; §3.5 step 3). Nothing
            // bounces today since incoming mail is only stored locally; once the outbound queue
            // exists, incoming mail reinjected there must get the null sender `<>`, so that no
            // bounce goes to a possibly spoofed envelope sender.
            //
            // No per-recipient refusal of unencrypted mail (§3.5 step 6): every account we create
            // enforces encryption, so the gate's 523 already holds for all recipients.
            if let Err(r) = crate::dkim::verify_origin(&self.dns, &self.cfg, env.peer, data).await {
                tracing::info!(reply = %r, "incoming message refused by the origin check");
                return r;
            }
        }
        let mut local: Vec<AccountId> = Vec::new();
        let mut remote: Vec<String> = Vec::new();
        for t in targets {
            match t {
                Target::Local(id) => local.push(*id),
                Target::Remote(r) if dir == Direction::Outgoing => remote.push(r.clone()),
                Target::Remote(_) => {}
            }
        }
        local.sort_unstable();
        local.dedup();
        remote.sort_unstable();
        remote.dedup();
        if local.is_empty() && remote.is_empty() {
            return policy::codes::NO_RECIPIENTS.reply();
        }
        let body = match spool {
            Some(s) => {
                debug_assert_eq!(
                    s.len(),
                    (policy::prepare_local_delivery(&head).len() + rest.len()) as u64,
                    "the spool holds the local copy"
                );
                Body::Spooled(s)
            }
            None => Body::Bytes(policy::prepare_local_delivery(&head).into()),
        };
        for id in &local {
            match self.fits(*id, body.len()).await {
                Ok(true) => {}
                Ok(false) => {
                    let addr = self
                        .store
                        .account_by_id(*id)
                        .ok()
                        .flatten()
                        .map(|a| a.addr)
                        .unwrap_or_default();
                    tracing::info!(rcpt = %addr, "Quota exceeded (mailbox for user is full)");
                    M.quota_exceeded.inc();
                    return quota_exceeded(&addr);
                }
                Err(e) => {
                    tracing::error!("quota check failed: {e}");
                    return Reply::new(451, "4.3.0 Local error, try again later");
                }
            }
        }
        if !remote.is_empty() {
            return self.enqueue(env, &local, body, (&head, rest), remote).await;
        }
        match self
            .store
            .deliver_body(&local, body, Clock::system().now())
            .await
        {
            Ok(()) => {
                tracing::info!(recipients = local.len(), "delivered");
                M.delivered_mail.add(local.len() as u64);
                self.push.notify(&local, &env.mail_from);
                self.cleanup_after_delivery(local);
                Reply::new(250, "2.0.0 OK")
            }
            Err(e) => {
                tracing::error!("local delivery failed: {e}");
                policy::codes::NOT_STORED.reply()
            }
        }
    }

    /// Signs the message (`head` then `rest`, as cleaned) and queues it for `remote`, with the
    /// local copy in the same transaction; `250` once both are on disk.
    async fn enqueue(
        &self,
        env: &Envelope,
        local: &[AccountId],
        mut local_body: Body,
        (head, rest): (&[u8], &[u8]),
        remote: Vec<String>,
    ) -> Reply {
        let signed = match self.signed_copy(&mut local_body, head, rest).await {
            Ok(s) => {
                M.dkim_signed.inc();
                s
            }
            Err(e) => {
                tracing::error!("cannot make the signed copy: {e}");
                return Reply::new(451, "4.3.0 Local error while signing, try again later");
            }
        };
        let copy = (!local.is_empty()).then_some((local, local_body));
        let n = remote.len();
        match self
            .store
            .enqueue(
                &env.mail_from,
                remote.clone(),
                signed,
                self.clock.now(),
                copy,
            )
            .await
        {
            Ok(id) => {
                tracing::info!(queue_id = id, remote = n, local = local.len(), "queued");
                self.queue.queued(id, &remote);
                if !local.is_empty() {
                    M.delivered_mail.add(local.len() as u64);
                    self.push.notify(local, &env.mail_from);
                    self.cleanup_after_delivery(local.to_vec());
                }
                Reply::new(250, format!("2.0.0 OK queued as {id}"))
            }
            Err(e) => {
                tracing::error!("queueing failed: {e}");
                policy::codes::NOT_STORED.reply()
            }
        }
    }

    /// The copy for remote recipients: the DKIM signature, `head`, then `rest`. A spooled
    /// message (`local_body`, which holds the local header and then the body) is signed over
    /// the new header and its mapped body, and the copy is written as header + the spool's
    /// body bytes, file to file: no heap copy of the body, so that outgoing mail needs no more
    /// of the in-flight budget than incoming mail.
    async fn signed_copy(
        &self,
        local_body: &mut Body,
        head: &[u8],
        rest: &[u8],
    ) -> Result<Body, CopyError> {
        let Body::Spooled(spool) = local_body else {
            debug_assert!(rest.is_empty(), "only a spooled message is split");
            let whole = [head, rest].concat();
            return Ok(Body::Bytes(self.dkim.sign(&whole)?.into()));
        };
        let offset = spool
            .len()
            .checked_sub(rest.len() as u64)
            .ok_or(CopyError::Layout)?;
        let view = spool.received(head.to_vec(), offset)?;
        let signature = self.dkim.signature(&view)?.unwrap_or_default();
        drop(view);
        let head = [signature.as_bytes(), head].concat();
        Ok(Body::Spooled(spool.splice(head, offset).await?))
    }

    /// Mailboxes past 75 % of their quota are cut back to 70 % (reference §8) without making the
    /// sender wait; IMAP clients see the EXPUNGEs.
    fn cleanup_after_delivery(&self, accounts: Vec<AccountId>) {
        let limit = self.cfg.max_mailbox_size.0;
        let over: Vec<AccountId> = accounts
            .into_iter()
            .filter(|a| self.store.usage(*a).is_ok_and(|u| u * 100 > limit * 75))
            .collect();
        if over.is_empty() {
            return;
        }
        let (store, cfg, now) = (self.store.clone(), self.cfg.clone(), self.clock.now());
        tokio::spawn(async move {
            for a in over {
                if let Err(e) = crate::expiry::enforce_quota(&store, &cfg, a, now).await {
                    tracing::warn!("quota cleanup failed: {e}");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tests_queue;
