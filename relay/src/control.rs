//! The admin control socket: a Unix socket in the data directory (mode 0600) through which
//! commands such as `relaybox expire` reach a running relay, since the index database can only
//! be open in one process. One request line in, reply lines out, then the connection closes.

use crate::Relay;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// A request from the command line to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Expire {
        dry_run: bool,
    },
    /// List the outbound queue; with `flush`, retry every entry now.
    Queue {
        flush: bool,
    },
    /// Obtain the ACME certificate now if needed; with `renew`, always.
    Cert {
        renew: bool,
    },
}

impl Request {
    pub fn to_line(&self) -> String {
        match self {
            Request::Expire { dry_run: false } => "expire".into(),
            Request::Expire { dry_run: true } => "expire --dry-run".into(),
            Request::Queue { flush: false } => "queue".into(),
            Request::Queue { flush: true } => "queue --flush".into(),
            Request::Cert { renew: false } => "cert".into(),
            Request::Cert { renew: true } => "cert --renew".into(),
        }
    }

    pub fn parse(line: &str) -> Option<Request> {
        match line.trim() {
            "expire" => Some(Request::Expire { dry_run: false }),
            "expire --dry-run" => Some(Request::Expire { dry_run: true }),
            "queue" => Some(Request::Queue { flush: false }),
            "queue --flush" => Some(Request::Queue { flush: true }),
            "cert" => Some(Request::Cert { renew: false }),
            "cert --renew" => Some(Request::Cert { renew: true }),
            _ => None,
        }
    }
}

/// Runs one request against the relay's state; the text is what the operator sees.
pub async fn execute(relay: &Relay, req: &Request) -> Result<String, String> {
    match req {
        Request::Expire { dry_run } => {
            let result = crate::expiry::run(&relay.store, &relay.cfg, &relay.clock, *dry_run)
                .await
                .map_err(|e| e.to_string());
            if !*dry_run {
                relay.admin.record_expiry(relay.clock.now(), &result);
            }
            result
                .map(|r| {
                    if *dry_run {
                        format!("dry run: {r}")
                    } else {
                        r.to_string()
                    }
                })
                .map_err(|e| format!("expiry failed: {e}"))
        }
        Request::Queue { flush } => {
            let entries = relay
                .store
                .queued()
                .map_err(|e| format!("cannot read the queue: {e}"))?;
            let mut text = crate::delivery::queue::report(&entries, relay.clock.now());
            if *flush && !entries.is_empty() {
                relay.delivery.queue().flush();
                text.push_str("\nretrying all of them now");
            }
            Ok(text)
        }
        Request::Cert { renew } => crate::acme::run(relay, *renew).await,
    }
}

/// Serves the control socket until shutdown. A stale socket file from a crash is replaced.
pub async fn serve(relay: Arc<Relay>) -> std::io::Result<()> {
    let path = relay.cfg.control_socket();
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    while let Some((stream, _)) = crate::net::accept(&relay.shutdown, || listener.accept()).await {
        let relay = relay.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(&relay, stream).await {
                tracing::debug!("control connection: {e}");
            }
        });
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn handle(relay: &Relay, stream: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    // A request is one short line; anything longer is not ours.
    let mut r = BufReader::new(r.take(1024));
    r.read_line(&mut line).await?;
    let reply = match Request::parse(&line) {
        Some(req) => match execute(relay, &req).await {
            Ok(text) => format!("ok {text}\n"),
            Err(e) => format!("error {e}\n"),
        },
        None => format!("error unknown request {:?}\n", line.trim()),
    };
    w.write_all(reply.as_bytes()).await?;
    w.shutdown().await
}

/// Sends a request to a running relay. `Ok(None)` when no relay listens on `path`.
pub async fn request(
    path: &Path,
    req: &Request,
) -> std::io::Result<Option<Result<String, String>>> {
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let (r, mut w) = stream.into_split();
    w.write_all(format!("{}\n", req.to_line()).as_bytes())
        .await?;
    // The reply may span lines (a queue listing); the relay closes the connection after it.
    let mut line = String::new();
    BufReader::new(r.take(16 << 20))
        .read_to_string(&mut line)
        .await?;
    let line = line.trim_end();
    Ok(Some(match line.split_once(' ') {
        Some(("ok", text)) => Ok(text.to_string()),
        Some(("error", text)) => Err(text.to_string()),
        _ => Err(format!("unexpected reply from the relay: {line:?}")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Expire { dry_run: true },
            Request::Expire { dry_run: false },
            Request::Queue { flush: false },
            Request::Queue { flush: true },
            Request::Cert { renew: false },
            Request::Cert { renew: true },
        ] {
            assert_eq!(Request::parse(&r.to_line()), Some(r));
        }
        assert_eq!(Request::parse("rm -rf /"), None);
    }
}
