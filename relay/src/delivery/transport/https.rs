//! `POST /mxdeliv` to another relay (reference §3.8/§3.9), over HTTP/1.1 on TLS, with at most one
//! idle connection kept per (host, port, verification) for reuse.

use super::smtp::parse_reply_text;
use crate::policy::Reply;
use crate::sync::LockExt;
use bytes::Bytes;
use http_body_util::Full;
use hyper::StatusCode;
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_rustls::TlsConnector;

/// Timeout for the whole request and response, as in the reference.
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// How long an idle connection is kept for the next delivery to the same host.
pub const IDLE: Duration = Duration::from_secs(100);
/// The most of an error body we read: it is one SMTP reply line.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// How one `/mxdeliv` request went.
#[derive(Debug)]
pub enum Outcome {
    /// 2xx: delivered to every recipient in the request.
    Delivered,
    /// 400 with a 5xx SMTP reply: the receiving relay refuses the message for good.
    Refused(Reply),
    /// 404, 405 or 501: the host has no `/mxdeliv`.
    Unsupported(u16),
    /// Anything else: connect, TLS or I/O error, or another status. `temp` is a 4xx SMTP reply
    /// found in the error body, worth reporting if SMTP does not get through either.
    Failed { err: String, temp: Option<Reply> },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Outcome::Delivered => f.write_str("delivered"),
            Outcome::Refused(r) => write!(f, "refused: {r}"),
            Outcome::Unsupported(status) => write!(f, "no /mxdeliv (HTTP {status})"),
            Outcome::Failed { err, .. } => write!(f, "failed: {err}"),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    host: String,
    port: u16,
    verified: bool,
}

use crate::http_client::Sender;

#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<PoolKey, (Sender, Instant)>>,
}

pub struct Request<'a> {
    pub host: &'a str,
    pub port: u16,
    pub ips: &'a [IpAddr],
    /// The address to connect from (an IP-literal relay's own), if any.
    pub source: Option<IpAddr>,
    pub verified: bool,
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
    pub sender: &'a str,
    pub rcpts: &'a [&'a str],
    pub message: &'a Bytes,
}

impl Pool {
    /// How many idle connections are kept (for tests).
    #[cfg(test)]
    pub fn idle_count(&self) -> usize {
        self.idle.lock_or_recover().len()
    }

    /// The idle connection to `key`, if there is one that is still open and ready.
    async fn take(&self, key: &PoolKey) -> Option<Sender> {
        let (mut s, since) = self.idle.lock_or_recover().remove(key)?;
        if since.elapsed() > IDLE || s.is_closed() {
            return None;
        }
        match tokio::time::timeout(Duration::from_millis(500), s.ready()).await {
            Ok(Ok(())) => Some(s),
            _ => None,
        }
    }

    /// Keeps `s` for the next request to `key` (one per key), dropping expired ones.
    fn put(&self, key: PoolKey, s: Sender) {
        if s.is_closed() {
            return;
        }
        let mut idle = self.idle.lock_or_recover();
        idle.retain(|_, (s, since)| since.elapsed() <= IDLE && !s.is_closed());
        idle.entry(key).or_insert((s, Instant::now()));
    }

    pub async fn post(&self, req: &Request<'_>) -> Outcome {
        let key = PoolKey {
            host: req.host.to_string(),
            port: req.port,
            verified: req.verified,
        };
        if let Some(s) = self.take(&key).await {
            match tokio::time::timeout(TIMEOUT, exchange(s, req)).await {
                Ok(Ok((outcome, s))) => {
                    if let Some(s) = s {
                        self.put(key, s);
                    }
                    return outcome;
                }
                // The server may have closed the idle connection just as we used it: dial anew.
                Ok(Err(e)) => tracing::debug!(host = req.host, "pooled connection failed: {e}"),
                Err(_) => {
                    return Outcome::Failed {
                        err: "HTTPS request timed out".into(),
                        temp: None,
                    }
                }
            }
        }
        let fresh = async {
            let s = connect(req).await?;
            exchange(s, req).await
        };
        match tokio::time::timeout(TIMEOUT, fresh).await {
            Ok(Ok((outcome, s))) => {
                if let Some(s) = s {
                    self.put(key, s);
                }
                outcome
            }
            Ok(Err(err)) => Outcome::Failed { err, temp: None },
            Err(_) => Outcome::Failed {
                err: "HTTPS request timed out".into(),
                temp: None,
            },
        }
    }
}

async fn connect(req: &Request<'_>) -> Result<Sender, String> {
    let tcp = super::connect_tcp(req.ips, req.port, req.source).await?;
    let tls = req
        .connector
        .connect(req.server_name.clone(), tcp)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    crate::http_client::handshake(tls).await
}

/// The `Host` header for `host` on `port`: IPv6 literals in brackets, the port only when not 443.
pub fn host_header(host: &str, port: u16) -> String {
    let h = match crate::dns::literal_ip(host) {
        Some(IpAddr::V6(ip)) => format!("[{ip}]"),
        Some(IpAddr::V4(ip)) => ip.to_string(),
        None => host.to_string(),
    };
    if port == 443 {
        h
    } else {
        format!("{h}:{port}")
    }
}

/// One request on `s`. Gives the outcome and the connection back when it can be reused.
async fn exchange(mut s: Sender, req: &Request<'_>) -> Result<(Outcome, Option<Sender>), String> {
    let mut b = hyper::Request::post("/mxdeliv")
        .header(hyper::header::HOST, host_header(req.host, req.port))
        .header(hyper::header::CONTENT_TYPE, "message/rfc822")
        .header(hyper::header::CONTENT_LENGTH, req.message.len());
    if !req.sender.is_empty() {
        b = b.header("X-MAIL-FROM", req.sender);
    }
    for r in req.rcpts {
        b = b.header("X-MAIL-TO", *r);
    }
    let body = Full::new(req.message.clone());
    let request = b
        .body(body)
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let resp = crate::http_client::send(&mut s, request)
        .await
        .map_err(|e| format!("HTTPS {e}"))?;
    let status = resp.status();
    let body = crate::http_client::read_body(resp, MAX_RESPONSE_BODY).await?;
    let text = String::from_utf8_lossy(&body);
    Ok((classify(status, &text), Some(s)))
}

/// What an `/mxdeliv` answer means for us (pure, so it is unit tested).
pub fn classify(status: StatusCode, body: &str) -> Outcome {
    let reply = parse_reply_text(body);
    if status.is_success() {
        return Outcome::Delivered;
    }
    match status.as_u16() {
        400 if reply.as_ref().is_some_and(|r| r.code >= 500) => {
            Outcome::Refused(reply.expect("checked above"))
        }
        404 | 405 | 501 => Outcome::Unsupported(status.as_u16()),
        code => {
            let first = body.lines().next().unwrap_or("").trim();
            let first: String = first.chars().take(200).collect();
            Outcome::Failed {
                err: format!("HTTPS status {code}: {first}"),
                temp: reply.filter(|r| r.is_temporary()),
            }
        }
    }
}
