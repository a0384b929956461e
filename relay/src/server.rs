//! Start-up and shutdown: open the store, bind every listener, tell systemd we are ready, keep the
//! watchdog fed, and stop everything on SIGTERM/SIGINT through the one shutdown signal.

use crate::{
    accounts, clock, config, delivery, dns, imap, limits, net, smtp, store, tls, web, Relay,
};
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Builds the shared state from a config: opens (and repairs) the store, loads or makes the
/// certificate.
pub fn build(cfg: config::Config) -> anyhow::Result<Arc<Relay>> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;
    let cfg = Arc::new(cfg);
    let nofile = limits::raise_fd_limit();
    let caps = limits::Caps::derive(&cfg, nofile);
    tracing::info!(
        nofile,
        smtp = caps.total[0],
        imap = caps.total[1],
        http = caps.total[2],
        "descriptor limit and connection caps"
    );
    let conns = limits::ConnLimiter::new(caps);
    let inflight = limits::Budget::new(cfg.max_inflight_message_memory.0.max(cfg.max_message_size));
    let store = store::Store::open(&cfg.data_dir.join("store"))
        .with_context(|| format!("cannot open the store in {}", cfg.data_dir.display()))?;
    let tls = tls::TlsConfigs::load(&cfg).context("cannot set up TLS")?;
    let clock = clock::Clock::system();
    // Its error already says what failed ("cannot set up the DNS resolver: …").
    let dns = dns::Dns::new(&cfg)?;
    let delivery = delivery::Delivery::new(cfg.clone(), store.clone(), clock.clone(), dns.clone())?;
    let (admin, new_code) = crate::admin::Admin::open(&cfg).with_context(|| {
        format!(
            "cannot set up the admin state in {}",
            cfg.data_dir.display()
        )
    })?;
    if new_code.is_some() {
        tracing::info!(
            path = %admin.code_path().display(),
            "set-up wizard enabled: a new one-time setup code was written"
        );
    }
    Ok(Arc::new(Relay {
        admin,
        accounts: accounts::Accounts::new(cfg.clone(), store.clone(), clock.clone()),
        delivery,
        dns,
        cfg,
        store,
        tls,
        acme: crate::acme::Acme::default(),
        clock,
        shutdown: net::Shutdown::new(),
        conns,
        inflight,
    }))
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied && addr.port() < 1024 {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE; `relaybox dev --port-offset 10000` avoids them)"
        } else if e.kind() == std::io::ErrorKind::AddrInUse {
            " (another program, or another relaybox, already listens there)"
        } else if e.kind() == std::io::ErrorKind::AddrNotAvailable {
            " (this machine has no such address)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot listen on {addr} for {what}: {e}{hint}")
    })
}

/// Binds every configured listener, then serves until SIGTERM/SIGINT.
pub async fn run(relay: Arc<Relay>) -> anyhow::Result<()> {
    let mut signals = Signals::register();
    let l = relay.cfg.listen.clone();
    let mut tasks = tokio::task::JoinSet::new();
    let mut bound = Vec::new();
    for (addrs, kind) in [
        (&l.smtp, smtp::Kind::Mx),
        (&l.submission, smtp::Kind::Submission),
        (&l.submissions, smtp::Kind::Submissions),
    ] {
        for a in addrs {
            let listener = bind(*a, &format!("SMTP ({kind:?})")).await?;
            bound.push(format!("smtp/{kind:?}={a}"));
            tasks.spawn(smtp::serve(relay.clone(), listener, kind));
        }
    }
    for (addrs, implicit) in [(&l.imap, false), (&l.imaps, true)] {
        for a in addrs {
            let what = if implicit { "IMAPS" } else { "IMAP" };
            let listener = bind(*a, what).await?;
            bound.push(format!("{}={a}", what.to_lowercase()));
            tasks.spawn(imap::serve(relay.clone(), listener, implicit));
        }
    }
    for (addrs, https) in [(&l.http, false), (&l.https, true)] {
        for a in addrs {
            let what = if https { "HTTPS" } else { "HTTP" };
            let listener = bind(*a, what).await?;
            bound.push(format!("{}={a}", what.to_lowercase()));
            tasks.spawn(web::serve(relay.clone(), listener, https));
        }
    }
    {
        let relay = relay.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::control::serve(relay.clone()).await {
                tracing::error!(
                    path = %relay.cfg.control_socket().display(),
                    "control socket unavailable (relaybox expire will not reach this relay): {e}"
                );
            }
        });
    }
    for a in &l.metrics {
        let listener = bind(*a, "metrics").await?;
        bound.push(format!("metrics={a}"));
        tasks.spawn(crate::metrics::serve(relay.clone(), listener));
    }
    tokio::spawn(crate::control::expiry_schedule(relay.clone()));
    if relay.cfg.is_acme() {
        tokio::spawn(crate::acme::renewal_schedule(relay.clone()));
    }
    tokio::spawn(relay.delivery.push().clone().run(relay.shutdown.clone()));
    tokio::spawn(relay.delivery.queue().clone().run(relay.shutdown.clone()));
    tracing::info!(
        domain = %relay.cfg.mail_domain,
        listeners = %bound.join(" "),
        "all listeners up"
    );
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    spawn_watchdog(&relay);

    // A listener task only ends on shutdown; if one dies earlier (a bug), stop the whole relay so
    // that systemd restarts it instead of leaving a port silently dead.
    let failure = tokio::select! {
        _ = signals.wait() => None,
        // The admin pages asked for a restart with new settings.
        _ = relay.shutdown.wait() => None,
        r = tasks.join_next() => match r {
            Some(Err(e)) if e.is_panic() => Some("a listener panicked".to_string()),
            Some(Err(e)) => Some(format!("a listener failed: {e}")),
            // A requested shutdown (a restart from the admin pages) also ends the listeners,
            // and this branch may see that first.
            _ if relay.shutdown.is_triggered() => None,
            _ => Some("a listener stopped".to_string()),
        },
    };
    if let Some(f) = &failure {
        tracing::error!("{f}; shutting down");
    }
    tracing::info!("shutting down");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    relay.shutdown.trigger();
    // Sessions finish their current command; anything still running after this is cut off, which
    // is safe because nothing is acknowledged before it is durable.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    match failure {
        Some(f) => Err(anyhow::anyhow!(f)),
        None => Ok(()),
    }
}

/// Pings systemd's watchdog from inside the runtime, so a wedged runtime gets restarted.
fn spawn_watchdog(relay: &Arc<Relay>) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec / 2);
    let shutdown = relay.shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                }
                _ = shutdown.wait() => break,
            }
        }
    });
}

/// SIGTERM and SIGINT, registered before we announce readiness so that a stop request sent
/// right after "all listeners up" is never lost.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn register() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let get = |k: SignalKind, name: &str| match signal(k) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("cannot watch {name}: {e}");
                None
            }
        };
        Signals {
            term: get(SignalKind::terminate(), "SIGTERM"),
            int: get(SignalKind::interrupt(), "SIGINT"),
        }
    }

    async fn wait(&mut self) {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = recv(&mut self.term) => {}
            _ = recv(&mut self.int) => {}
        }
    }
}
