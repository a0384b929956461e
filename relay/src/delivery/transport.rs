//! Outbound transport (reference §3.8): hands one message to the mail servers of one destination
//! domain, HTTPS `POST /mxdeliv` first, then SMTP on port 25 with STARTTLS required.
//!
//! The queue (`delivery::queue`) decides when to try; this module only tries once and reports one
//! reply per recipient: 2xx delivered, 4xx try again later, 5xx give up and bounce.
//!
//! Per MX host, in preference order: unless the host is known not to speak `/mxdeliv` (the
//! "HTTPS-unsupported" cache, 30 minutes), `POST https://<host>/mxdeliv`; on anything but a
//! 2xx or a final refusal, SMTP with mandatory STARTTLS. Connect, TLS and I/O errors move on to
//! the next host; a reply from a remote server is final for this attempt. TLS is verified
//! strictly (web PKI, SNI = the MX host) except for domain literals and `_` names, which are
//! encrypted without verification. Plaintext is never used.

mod https;
mod smtp;

use crate::config::Config;
use crate::dns::{Dns, Mx};
use crate::policy::Reply;
use crate::sync::LockExt;
use crate::tls::client as client_tls;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Deliveries running at once, over all destinations.
pub const MAX_CONCURRENT: usize = 100;
/// Deliveries running at once to one destination domain.
pub const MAX_PER_DOMAIN: usize = 4;
/// How long a host stays marked as not speaking `/mxdeliv` (reference: 30 minutes).
pub const HTTPS_UNSUPPORTED_FOR: Duration = Duration::from_secs(30 * 60);
/// Timeout for one TCP connect to one address (the next address is tried after it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Connections, caches and TLS settings shared by every delivery attempt.
pub struct Transport {
    cfg: Arc<Config>,
    dns: Dns,
    tls: client_tls::Connectors,
    pool: https::Pool,
    /// Hosts that answered SMTP after HTTPS failed, or said they have no `/mxdeliv`, with the
    /// time until which HTTPS is not tried.
    https_unsupported: Mutex<HashMap<String, Instant>>,
    global: Arc<Semaphore>,
    per_domain: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// What trying one MX host gave when it did not settle every recipient.
struct Unreachable {
    err: String,
    /// A reply reported if no other host gets the message: a 4xx the host gave over HTTPS, or
    /// the 5xx for a host whose addresses we may not connect to.
    temp: Option<Reply>,
}

impl Transport {
    pub fn new(cfg: Arc<Config>, dns: Dns) -> anyhow::Result<Transport> {
        let tls = client_tls::Connectors::new(cfg.outbound_ca_file.as_deref())?;
        Ok(Transport {
            cfg,
            dns,
            tls,
            pool: https::Pool::default(),
            https_unsupported: Mutex::new(HashMap::new()),
            global: Arc::new(Semaphore::new(MAX_CONCURRENT)),
            per_domain: Mutex::new(HashMap::new()),
        })
    }

    /// Delivers `message` (already DKIM-signed) from `sender` (may be empty: the null sender) to
    /// `rcpts`, which all belong to `domain`. Returns one reply per recipient, in order.
    pub async fn deliver(
        &self,
        domain: &str,
        sender: &str,
        rcpts: &[String],
        message: bytes::Bytes,
    ) -> Vec<Reply> {
        if rcpts.is_empty() {
            return Vec::new();
        }
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let dsem = {
            let mut map = self.per_domain.lock_or_recover();
            map.entry(domain.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(MAX_PER_DOMAIN)))
                .clone()
        };
        let replies = {
            let _d = dsem.clone().acquire_owned().await;
            let _g = self.global.clone().acquire_owned().await;
            self.deliver_now(&domain, sender, rcpts, &message).await
        };
        // Forget the domain's semaphore once nobody uses or waits for it (the map's copy and
        // ours are the only ones left; new users need the lock we hold).
        let mut map = self.per_domain.lock_or_recover();
        if Arc::strong_count(&dsem) == 2 {
            map.remove(&domain);
        }
        replies
    }

    /// Is `host` marked as not speaking `/mxdeliv` right now?
    pub fn is_https_unsupported(&self, host: &str) -> bool {
        let mut map = self.https_unsupported.lock_or_recover();
        match map.get(host) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                map.remove(host);
                false
            }
            None => false,
        }
    }

    fn mark_https_unsupported(&self, host: &str, unsupported: bool) {
        let mut map = self.https_unsupported.lock_or_recover();
        let now = Instant::now();
        map.retain(|_, until| *until > now);
        if unsupported {
            map.insert(host.to_string(), now + HTTPS_UNSUPPORTED_FOR);
        } else {
            map.remove(host);
        }
    }

    async fn deliver_now(
        &self,
        domain: &str,
        sender: &str,
        rcpts: &[String],
        message: &bytes::Bytes,
    ) -> Vec<Reply> {
        let n = rcpts.len();
        // Addresses go into SMTP command lines and HTTP headers: refuse any that could break out.
        if !is_safe_address(sender) {
            return vec![Reply::new(553, "5.1.7 Invalid sender address"); n];
        }
        let mut results: Vec<Option<Reply>> = rcpts
            .iter()
            .map(|r| {
                (!is_safe_address(r) || r.is_empty())
                    .then(|| Reply::new(553, "5.1.3 Invalid recipient address"))
            })
            .collect();
        let hosts = match self.dns.mx(domain).await {
            Ok(Mx::Hosts(h)) => h,
            Ok(Mx::Null) => {
                let r = Reply::new(
                    556,
                    "5.1.10 Permanent failure: Recipient address has null MX",
                );
                tracing::info!(domain, reply = %r, "delivery failed");
                return fill(results, r);
            }
            Ok(Mx::NoDomain) => {
                let r = Reply::new(512, format!("Domain {domain} does not exist"));
                tracing::info!(domain, reply = %r, "delivery failed");
                return fill(results, r);
            }
            Err(e) if !e.is_temporary() => {
                let r = Reply::new(512, format!("Domain {domain} does not exist"));
                tracing::info!(domain, reply = %r, "delivery failed: {e}");
                return fill(results, r);
            }
            Err(e) => {
                let r = Reply::new(421, format!("DNS resolution failed for {domain}"));
                tracing::info!(domain, reply = %r, "delivery failed: {e}");
                return fill(results, r);
            }
        };
        let mut last: Option<(String, String)> = None;
        let mut temp: Option<Reply> = None;
        for host in &hosts {
            if results.iter().all(Option::is_some) {
                break;
            }
            match self
                .try_host(domain, host, sender, rcpts, message, &mut results)
                .await
            {
                Ok(()) => break,
                Err(u) => {
                    tracing::info!(domain, host, error = %u.err, "host unreachable, trying the next");
                    last = Some((host.clone(), u.err));
                    if u.temp.is_some() {
                        temp = u.temp;
                    }
                }
            }
        }
        let fallback = temp.unwrap_or_else(|| {
            let (host, err) = last.unwrap_or_else(|| (domain.to_string(), "no MX host".into()));
            Reply::new(
                421,
                format!("Failed to connect to any mail server; last attempt to {host}: {err}"),
            )
        });
        fill(results, fallback)
    }

    /// The address an IP-literal relay sends from: its literal, since receivers accept a
    /// literal From only from that address (the origin check of incoming mail).
    fn source_ip(&self) -> Option<IpAddr> {
        self.cfg.literal_ip().filter(|ip| !ip.is_unspecified())
    }

    /// Whether TLS to `host` (an MX of `domain`) is verified.
    fn verified(domain: &str, host: &str) -> bool {
        crate::dns::literal_ip(domain).is_none()
            && crate::dns::literal_ip(host).is_none()
            && !domain.starts_with('_')
            && !host.starts_with('_')
    }

    /// Tries one MX host for every recipient not settled yet. `Ok`: every such recipient now has
    /// its reply. `Err`: the host could not be reached (the caller tries the next one); replies
    /// the host gave to single recipients over HTTPS are kept in `results` either way.
    async fn try_host(
        &self,
        domain: &str,
        host: &str,
        sender: &str,
        rcpts: &[String],
        message: &bytes::Bytes,
        results: &mut [Option<Reply>],
    ) -> Result<(), Unreachable> {
        let ips = match self.dns.ips(host).await {
            Ok(ips) if !ips.is_empty() => ips,
            Ok(_) => {
                return Err(Unreachable {
                    err: format!("{host} has no address"),
                    temp: None,
                })
            }
            Err(e) => {
                return Err(Unreachable {
                    err: e.to_string(),
                    temp: None,
                })
            }
        };
        // Defence in depth behind the RCPT check: a name can resolve to loopback or a LAN
        // address too (an MX pointing at 127.0.0.1), and no such address is ever connected to.
        let (mut ips, refused): (Vec<IpAddr>, Vec<IpAddr>) = ips
            .into_iter()
            .partition(|ip| self.cfg.destination_allowed(*ip));
        prefer_ipv4(&mut ips);
        if ips.is_empty() {
            let r = Reply::new(
                550,
                format!(
                    "5.7.1 Refusing to deliver to {host}: {} is not a public address",
                    refused[0]
                ),
            );
            return Err(Unreachable {
                err: r.text.clone(),
                temp: Some(r),
            });
        }
        let verified = Self::verified(domain, host);
        let server_name =
            client_tls::server_name(host).map_err(|err| Unreachable { err, temp: None })?;
        let mut temp = None;
        // The host answered that it has no /mxdeliv: that stays true even if SMTP fails.
        let mut said_unsupported = false;
        let port = self.cfg.outbound_https_port;
        if !self.is_https_unsupported(host) {
            let pending: Vec<usize> = (0..rcpts.len()).filter(|&i| results[i].is_none()).collect();
            let post = |idx: Vec<usize>| {
                let server_name = server_name.clone();
                let ips = &ips;
                async move {
                    let to: Vec<&str> = idx.iter().map(|&i| rcpts[i].as_str()).collect();
                    let req = https::Request {
                        host,
                        port,
                        ips,
                        source: self.source_ip(),
                        verified,
                        connector: if verified {
                            self.tls.https_verified.clone()
                        } else {
                            self.tls.https_unverified.clone()
                        },
                        server_name,
                        sender,
                        rcpts: &to,
                        message,
                    };
                    let outcome = self.pool.post(&req).await;
                    tracing::info!(domain, host, via = "https", rcpts = to.len(), outcome = %outcome, "delivery attempt");
                    outcome
                }
            };
            match post(pending.clone()).await {
                https::Outcome::Delivered => {
                    for i in pending {
                        results[i] = Some(Reply::new(250, "OK (HTTPS)"));
                    }
                    return Ok(());
                }
                https::Outcome::Refused(r) if pending.len() == 1 => {
                    results[pending[0]] = Some(r);
                    return Ok(());
                }
                https::Outcome::Refused(_) => {
                    // One refused recipient refuses the whole request: ask for each one alone, so
                    // every recipient gets its own answer.
                    for &i in &pending {
                        match post(vec![i]).await {
                            https::Outcome::Delivered => {
                                results[i] = Some(Reply::new(250, "OK (HTTPS)"))
                            }
                            https::Outcome::Refused(r) => results[i] = Some(r),
                            https::Outcome::Unsupported(_) => {}
                            https::Outcome::Failed { temp: t, .. } => {
                                if t.is_some() {
                                    temp = t;
                                }
                            }
                        }
                    }
                    if results.iter().all(Option::is_some) {
                        return Ok(());
                    }
                }
                https::Outcome::Unsupported(_) => {
                    self.mark_https_unsupported(host, true);
                    said_unsupported = true;
                }
                https::Outcome::Failed { temp: t, .. } => temp = t,
            }
        }

        let pending: Vec<usize> = (0..rcpts.len()).filter(|&i| results[i].is_none()).collect();
        let to: Vec<&str> = pending.iter().map(|&i| rcpts[i].as_str()).collect();
        let smtp_port = self.cfg.outbound_smtp_port;
        let attempt = async {
            let tcp = connect_tcp(&ips, smtp_port, self.source_ip()).await?;
            let session = smtp::Session {
                host,
                ehlo: &self.cfg.mail_domain,
                connector: if verified {
                    self.tls.smtp_verified.clone()
                } else {
                    self.tls.smtp_unverified.clone()
                },
                server_name,
                sender,
                rcpts: &to,
                message,
            };
            smtp::deliver(tcp, session).await
        };
        match attempt.await {
            Ok(replies) => {
                let delivered = replies.iter().any(|r| r.code / 100 == 2);
                for (r, &i) in replies.into_iter().zip(&pending) {
                    tracing::info!(domain, host, via = "smtp", reply = %r, "delivery attempt");
                    results[i] = Some(r);
                }
                if delivered {
                    self.mark_https_unsupported(host, true);
                }
                Ok(())
            }
            Err(err) => {
                tracing::info!(domain, host, via = "smtp", error = %err, "delivery attempt failed");
                // As in the reference: a host we cannot reach by SMTP either gets HTTPS tried
                // again next time, unless it said itself that it has no /mxdeliv.
                if !said_unsupported {
                    self.mark_https_unsupported(host, false);
                }
                Err(Unreachable { err, temp })
            }
        }
    }
}

/// Every recipient without a reply gets `r`.
fn fill(results: Vec<Option<Reply>>, r: Reply) -> Vec<Reply> {
    results
        .into_iter()
        .map(|x| x.unwrap_or_else(|| r.clone()))
        .collect()
}

/// No line breaks, angle brackets or other control characters, which could end a command line
/// or a header early.
fn is_safe_address(a: &str) -> bool {
    !a.chars()
        .any(|c| c.is_control() || c == '<' || c == '>' || c == ' ')
}

/// IPv4 addresses before IPv6 ones, each kind in the resolver's order. IPv6 is then used when
/// IPv4 does not work (no IPv4 address at the host, or it refuses), but not before: a home
/// IPv6 connection often has no reverse DNS and a prefix that other mail servers rate badly,
/// and the reference's outgoing SMTP prefers IPv4 the same way.
fn prefer_ipv4(ips: &mut [IpAddr]) {
    ips.sort_by_key(|ip| ip.is_ipv6());
}

/// Connects to the first of `ips` (IPv4 first, see [`prefer_ipv4`]) that answers on `port`,
/// from `source` when given and of the same family.
async fn connect_tcp(
    ips: &[IpAddr],
    port: u16,
    source: Option<IpAddr>,
) -> Result<TcpStream, String> {
    let mut last = String::from("no address to connect to");
    for ip in ips {
        let addr = SocketAddr::new(*ip, port);
        match tokio::time::timeout(CONNECT_TIMEOUT, connect_from(addr, source)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = format!("connect to {addr} failed: {e}"),
            Err(_) => last = format!("connect to {addr} timed out"),
        }
    }
    Err(last)
}

/// A TCP connection to `addr`, bound to `source` if it is of the same family and an address of
/// this host; otherwise from whatever address the kernel picks.
async fn connect_from(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    if let Some(src) = source.filter(|s| s.is_ipv4() == addr.is_ipv4()) {
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // Not ours (behind NAT the literal is the router's address): connect unbound.
        if sock.bind(SocketAddr::new(src, 0)).is_ok() {
            return sock.connect(addr).await;
        }
    }
    TcpStream::connect(addr).await
}

#[cfg(test)]
mod tests;
