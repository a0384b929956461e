//! The iroh relay for webxdc realtime channels (Delta Chat's peer channels), as the reference runs
//! `iroh-relay` 0.35 behind nginx: `/relay`, `/ping` and `/generate_204` of our HTTPS front go to
//! the `iroh-relay` crate's own server, which listens on a loopback port only.
//!
//! The crate keeps its connection handler private (only `Server::spawn` with its own listener is
//! public), so the front proxies to it as nginx does: the request goes over a loopback TCP
//! connection, and after the `101 Switching Protocols` both upgraded connections are spliced.
//! The splice is where the client limit and the byte counts sit.
//!
//! What is announced (METADATA `/shared/vendor/deltachat/irohrelay`): `https://<domain>` when the
//! certificate is one clients verify; `http://<host>` on a self-signed relay (IP literals, `_`
//! domains). iroh checks relay certificates against its built-in web PKI roots only (no system
//! store, no "accept invalid certificates"), so `https://` to a self-signed certificate can never
//! connect: the reference announces exactly that and its IP relays have no working iroh relay.
//! Over plain HTTP the relay still only sees what it would see over TLS: the peers' QUIC packets
//! are end-to-end encrypted between the two apps, and a client proves its node key to the relay.

use crate::config::Config;
use crate::metrics::M;
use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use tokio::sync::Semaphore;

/// The paths of the iroh relay protocol the front hands to the relay server.
pub const PATHS: [&str; 3] = ["/relay", "/ping", "/generate_204"];

/// The local iroh relay: the announced URL, the client slots, and the server once it runs.
pub struct IrohRelay {
    url: String,
    slots: Arc<Semaphore>,
    running: OnceLock<Running>,
}

struct Running {
    backend: SocketAddr,
    // Dropping the server stops it: kept for the life of the relay.
    _server: iroh_relay::server::Server,
}

impl IrohRelay {
    /// `None` when this relay serves no iroh relay (`iroh_relay_enabled = false`, or another
    /// relay is announced with `iroh_relay`).
    pub fn open(cfg: &Config) -> Option<IrohRelay> {
        if !cfg.iroh_relay_enabled() {
            return None;
        }
        Some(IrohRelay {
            url: announced_url(cfg),
            slots: Arc::new(Semaphore::new(cfg.iroh_relay_max_clients)),
            running: OnceLock::new(),
        })
    }

    /// Starts the crate's relay server on an ephemeral loopback port (no STUN, no QUIC address
    /// discovery, no metrics listener: the front, TURN and our metrics cover those).
    pub async fn start(&self, cfg: &Config) -> anyhow::Result<SocketAddr> {
        use iroh_relay::server::{
            AccessConfig, ClientRateLimit, Limits, RelayConfig, Server, ServerConfig,
        };
        let client_rx = std::num::NonZeroU32::new(
            u32::try_from(cfg.iroh_relay_client_rate.0).unwrap_or(u32::MAX),
        )
        .map(|rate| ClientRateLimit {
            bytes_per_second: rate,
            max_burst_bytes: None,
        });
        let config: ServerConfig<(), ()> = ServerConfig {
            relay: Some(RelayConfig {
                http_bind_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                tls: None,
                limits: Limits {
                    client_rx,
                    ..Limits::default()
                },
                key_cache_capacity: None,
                access: AccessConfig::Everyone,
            }),
            stun: None,
            quic: None,
            metrics_addr: None,
        };
        let server = Server::spawn(config).await?;
        let backend = server
            .http_addr()
            .ok_or_else(|| anyhow::anyhow!("the iroh relay server has no HTTP address"))?;
        let _ = self.running.set(Running {
            backend,
            _server: server,
        });
        Ok(backend)
    }

    /// The METADATA value: the URL while the server runs, else `None` (clients then use their
    /// default relays rather than a dead one).
    pub fn announcement(&self) -> Option<String> {
        self.running.get().map(|_| self.url.clone())
    }
}

/// `https://<domain>` (with the HTTPS port of a `relaybox dev` offset), or `http://<host>` with
/// the HTTP port when the certificate is self-signed (see the module comment).
pub fn announced_url(cfg: &Config) -> String {
    if !cfg.is_self_signed() {
        return crate::web::https_origin(cfg);
    }
    let host = match cfg.literal_ip() {
        Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        Some(ip) => ip.to_string(),
        None => cfg.mail_domain.clone(),
    };
    match cfg.listen.http.first().map(|a| a.port()) {
        Some(80) | None => format!("http://{host}"),
        Some(p) => format!("http://{host}:{p}"),
    }
}

/// Hands one request for [`PATHS`] to the relay server: the probes are answered by it as they
/// are; `/relay` is upgraded and spliced while a client slot is free.
pub async fn proxy(iroh: &IrohRelay, mut req: Request<Body>) -> Response<Body> {
    let Some(running) = iroh.running.get() else {
        return status(StatusCode::NOT_FOUND, "Not Found");
    };
    let upgrade = req.headers().contains_key(header::UPGRADE);
    let slot = if upgrade {
        match iroh.slots.clone().try_acquire_owned() {
            Ok(s) => Some(s),
            Err(_) => {
                M.iroh_refused.inc();
                return status(StatusCode::SERVICE_UNAVAILABLE, "Too many relay clients");
            }
        }
    } else {
        None
    };
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let mut backend = match backend_request(running.backend, req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("iroh relay backend: {e}");
            return status(StatusCode::BAD_GATEWAY, "Bad Gateway");
        }
    };
    if backend.status() != StatusCode::SWITCHING_PROTOCOLS {
        return backend.map(Body::new);
    }
    let (Some(client_upgrade), Some(slot)) = (client_upgrade, slot) else {
        return status(StatusCode::BAD_GATEWAY, "Bad Gateway");
    };
    let backend_upgrade = hyper::upgrade::on(&mut backend);
    let (parts, _) = backend.into_parts();
    tokio::spawn(async move {
        let _slot = slot;
        let (client, backend) = match tokio::join!(client_upgrade, backend_upgrade) {
            (Ok(c), Ok(b)) => (c, b),
            (c, b) => {
                tracing::debug!(client = ?c.err(), backend = ?b.err(), "iroh relay upgrade failed");
                return;
            }
        };
        M.iroh_connections.inc();
        let _held = M.iroh_clients.hold();
        let mut client = TokioIo::new(client);
        let mut backend = TokioIo::new(backend);
        let (up, down) = copy_counted(&mut client, &mut backend).await;
        tracing::debug!(up, down, "iroh relay client gone");
    });
    Response::from_parts(parts, Body::empty())
}

/// Splices the two connections, counting the bytes as they pass (not only at the end: a
/// scrape during a long session sees them).
async fn copy_counted<A, B>(a: &mut A, b: &mut B) -> (u64, u64)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    async fn pump<R, W>(r: &mut R, w: &mut W) -> u64
    where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        // One relay frame is at most 64 KiB; 16 KiB per direction keeps a client cheap.
        let mut buf = vec![0u8; 16 << 10];
        let mut total = 0;
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err() {
                break;
            }
            M.iroh_relayed_bytes.add(n as u64);
            total += n as u64;
        }
        let _ = w.shutdown().await;
        total
    }
    // Either side closing ends both: a half-open relay connection is of no use to anybody.
    tokio::select! {
        up = pump(&mut ar, &mut bw) => (up, 0),
        down = pump(&mut br, &mut aw) => (0, down),
    }
}

/// Sends `req` to the relay server over a fresh loopback connection, keeping the upgrade open.
async fn backend_request(
    backend: SocketAddr,
    req: Request<Body>,
) -> Result<Response<hyper::body::Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = tokio::net::TcpStream::connect(backend).await?;
    let _ = tcp.set_nodelay(true);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let (mut parts, body) = req.into_parts();
    // Only the path goes on: the backend is plain HTTP on loopback whatever the front was.
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()?;
    parts.extensions = Default::default();
    Ok(send.send_request(Request::from_parts(parts, body)).await?)
}

fn status(code: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = code;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use iroh_relay::client::{ClientBuilder, ReceivedMessage, SendMessage};
    use std::time::Duration;

    fn cfg(toml: &str) -> Config {
        Config::from_toml(toml, std::path::Path::new("test.toml")).unwrap()
    }

    #[test]
    fn announced_url_follows_the_certificate() {
        let acme = cfg("mail_domain = \"chat.example.org\"\ntls = \"acme\"\n");
        assert_eq!(announced_url(&acme), "https://chat.example.org");
        let selfsigned = cfg("mail_domain = \"chat.example.org\"\n");
        assert_eq!(announced_url(&selfsigned), "http://chat.example.org");
        let ip = cfg("mail_domain = \"[192.0.2.1]\"\n");
        assert_eq!(announced_url(&ip), "http://192.0.2.1");
    }

    async fn client(url: &str, seed: u8) -> anyhow::Result<iroh_relay::client::Client> {
        let key = iroh_base::SecretKey::from([seed; 32]);
        let url: iroh_base::RelayUrl = url.parse()?;
        let dns = iroh_relay::dns::DnsResolver::with_nameserver(([127, 0, 0, 1], 1).into());
        tokio::time::timeout(
            Duration::from_secs(10),
            ClientBuilder::new(url, key, dns).connect(),
        )
        .await?
    }

    /// The crate's own client, through our plain-HTTP front (what a self-signed relay announces):
    /// two clients exchange a packet, and a third is refused over `iroh_relay_max_clients`.
    #[tokio::test]
    async fn packets_pass_through_the_front_and_the_client_limit_holds() {
        let dir = tempfile::tempdir().unwrap();
        let relay =
            crate::testkit::test_relay(dir.path(), |c| c.iroh_relay_max_clients = 2).unwrap();
        let iroh = relay.iroh.as_ref().expect("on by default");
        assert_eq!(
            iroh.announcement(),
            None,
            "nothing announced before it runs"
        );
        iroh.start(&relay.cfg).await.unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(crate::alpn::serve(relay.clone(), l, false));
        assert!(iroh.announcement().is_some());

        let bytes_before = M.iroh_relayed_bytes.get();
        let refused_before = M.iroh_refused.get();
        let mut a = client(&url, 1).await.unwrap();
        let mut b = client(&url, 2).await.unwrap();
        let b_id = iroh_base::SecretKey::from([2; 32]).public();
        let payload = bytes::Bytes::from(vec![7u8; 1000]);
        // b may not be registered at the relay yet when a sends: send until it arrives.
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                a.send(SendMessage::SendPacket(b_id, payload.clone()))
                    .await
                    .unwrap();
                if let Ok(Some(Ok(ReceivedMessage::ReceivedPacket { data, .. }))) =
                    tokio::time::timeout(Duration::from_millis(200), b.next()).await
                {
                    return data;
                }
            }
        })
        .await
        .expect("the packet arrives through the relay");
        assert_eq!(got, payload);
        assert!(M.iroh_relayed_bytes.get() - bytes_before >= 2000);

        let third = client(&url, 3).await;
        assert!(third.is_err(), "a third client over the limit of 2 got in");
        assert_eq!(M.iroh_refused.get() - refused_before, 1);
        drop((a, b));
    }
}
