//! Start-up and shutdown: open the store, bind every listener, tell systemd we are ready, keep the
//! watchdog fed, and stop everything on SIGTERM/SIGINT through the one shutdown signal.

use crate::{accounts, clock, config, delivery, dns, imap, limits, net, smtp, store, tls, Relay};
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Builds the shared state from a config: opens (and repairs) the store, loads or makes the
/// certificate.
pub fn build(cfg: config::Config) -> anyhow::Result<Arc<Relay>> {
    private_umask();
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;
    make_private(&cfg.data_dir)
        .with_context(|| format!("cannot restrict access to {}", cfg.data_dir.display()))?;
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
    // A slot on trial leaves the store in a format the committed slot reads (store/format.rs).
    let trial = matches!(
        crate::update::commit::record_start(&crate::update::UpdateEnv::from_config(&cfg)),
        crate::update::commit::Start::Tryboot(_)
    );
    let open = if trial {
        store::Store::open_deferred
    } else {
        store::Store::open
    };
    let store = open(&cfg.data_dir.join("store"))
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
    let turn = crate::calls::Turn::open(&cfg).context("cannot set up TURN")?;
    let portmap = crate::portmap::PortMap::new(cfg.port_mapping);
    Ok(Arc::new(Relay {
        turn,
        iroh: crate::calls::iroh::IrohRelay::open(&cfg),
        admin,
        accounts: accounts::Accounts::new(cfg.clone(), store.clone(), clock.clone()),
        delivery,
        dns,
        cfg,
        store,
        tls,
        acme: crate::acme::Acme::default(),
        portmap,
        clock,
        shutdown: net::Shutdown::new(),
        conns,
        inflight,
        ddns: Default::default(),
    }))
}

/// Everything the relay creates is for its own user only: the index holds password hashes and
/// push tokens, and there are keys, certificates, settings, backups and mail. The appliance's
/// unit sets `UMask=0077` too; this covers `relaybox dev` and hand-made services.
pub fn private_umask() {
    use nix::sys::stat::{umask, Mode};
    umask(Mode::from_bits_truncate(0o077));
}

/// Makes the data directory 0700 and takes group and other access away from everything already
/// in it (written by an older relaybox or with a looser umask). Only what needs changing is
/// changed; symlinks are left alone.
pub fn make_private(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let fix = |path: &std::path::Path, meta: &std::fs::Metadata| -> std::io::Result<()> {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
        }
        Ok(())
    };
    let meta = std::fs::symlink_metadata(dir)?;
    // A private data dir was made so by an earlier start, which fixed everything in it, and
    // since then the umask keeps new files private: the walk (a stat per message file) is
    // needed once, not on every start. The dir itself is fixed last, so a walk cut short is
    // done again.
    if meta.permissions().mode() & 0o077 == 0 {
        return Ok(());
    }
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let meta = e.metadata()?;
            if meta.file_type().is_symlink() {
                continue;
            }
            fix(&e.path(), &meta)?;
            if meta.is_dir() {
                todo.push(e.path());
            }
        }
    }
    fix(dir, &meta)
}

/// Binds `addr`, one of a service's addresses `all`. When the service also listens on IPv4 at
/// the same port (the default `0.0.0.0` beside `[::]`), the IPv6 socket is IPv6-only: on Linux a
/// `[::]` socket otherwise takes IPv4 too (bindv6only=0) and collides with the IPv4 one. A lone
/// `[::]` keeps taking both. `None`: the IPv6 wildcard beside an IPv4 one on a host without
/// IPv6 (kernel built or booted without it), which must not keep the relay from starting.
async fn bind_in(
    addr: SocketAddr,
    all: &[SocketAddr],
    what: &str,
) -> anyhow::Result<Option<TcpListener>> {
    let v6only = addr.is_ipv6() && all.iter().any(|a| a.is_ipv4() && a.port() == addr.port());
    let r = if v6only {
        net::bind_v6only(addr)
    } else {
        TcpListener::bind(addr).await
    };
    r.map(Some).or_else(|e| {
        let no_ipv6 = matches!(
            e.raw_os_error(),
            Some(code) if code == nix::errno::Errno::EAFNOSUPPORT as i32
                || code == nix::errno::Errno::EADDRNOTAVAIL as i32
        );
        if v6only && no_ipv6 && addr.ip().is_unspecified() {
            tracing::warn!("not listening on {addr} for {what}: {e} (no IPv6 on this host)");
            return Ok(None);
        }
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied && addr.port() < 1024 {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE; `relaybox dev --port-offset 10000` avoids them)"
        } else if e.kind() == std::io::ErrorKind::AddrInUse {
            " (another program, or another relaybox, already listens there)"
        } else if e.kind() == std::io::ErrorKind::AddrNotAvailable {
            " (this machine has no such address)"
        } else {
            ""
        };
        Err(anyhow::anyhow!("cannot listen on {addr} for {what}: {e}{hint}"))
    })
}

/// Binds every configured listener, then serves until SIGTERM/SIGINT.
pub async fn run(relay: Arc<Relay>) -> anyhow::Result<()> {
    run_with(relay, || {}).await
}

/// [`run`], calling `ready` once every listener is bound ("all listeners up").
pub async fn run_with(relay: Arc<Relay>, ready: impl FnOnce()) -> anyhow::Result<()> {
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
            let Some(listener) = bind_in(*a, addrs, &format!("SMTP ({kind:?})")).await? else {
                continue;
            };
            bound.push(format!("smtp/{kind:?}={a}"));
            tasks.spawn(smtp::serve(relay.clone(), listener, kind));
        }
    }
    for (addrs, implicit) in [(&l.imap, false), (&l.imaps, true)] {
        for a in addrs {
            let what = if implicit { "IMAPS" } else { "IMAP" };
            let Some(listener) = bind_in(*a, addrs, what).await? else {
                continue;
            };
            bound.push(format!("{}={a}", what.to_lowercase()));
            tasks.spawn(imap::serve(relay.clone(), listener, implicit));
        }
    }
    for (addrs, https) in [(&l.http, false), (&l.https, true)] {
        for a in addrs {
            let what = if https { "HTTPS" } else { "HTTP" };
            let Some(listener) = bind_in(*a, addrs, what).await? else {
                continue;
            };
            bound.push(format!("{}={a}", what.to_lowercase()));
            tasks.spawn(crate::alpn::serve(relay.clone(), listener, https));
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
        let Some(listener) = bind_in(*a, &l.metrics, "metrics").await? else {
            continue;
        };
        bound.push(format!("metrics={a}"));
        tasks.spawn(crate::metrics::serve(relay.clone(), listener));
    }
    if let Some(turn) = &relay.turn {
        // Calls are optional: without the UDP port the relay still serves mail and announces
        // no TURN.
        let mut public = relay.portmap.public_ipv4();
        let learned = public.borrow_and_update().map(std::net::IpAddr::V4);
        match crate::calls::server::start(&relay.cfg, turn, relay.clock.clone(), learned).await {
            Ok(server) => {
                bound.push(format!(
                    "turn={}:{}/udp",
                    crate::calls::server::listen_ip(&relay.cfg),
                    relay.cfg.turn_port
                ));
                tokio::spawn(follow_public_address(relay.clone(), server, public));
            }
            Err(e) => {
                turn.set_serving(false);
                tracing::error!("{e:#}; calls will use the clients' other TURN servers");
            }
        }
    }
    if let Some(iroh) = &relay.iroh {
        // Like TURN, optional: without it nothing is announced and mail goes on.
        match iroh.start(&relay.cfg).await {
            Ok(backend) => bound.push(format!("iroh-relay={backend}")),
            Err(e) => tracing::error!(
                "cannot start the iroh relay: {e:#}; realtime channels will use the clients' default relays"
            ),
        }
    }
    tokio::spawn(crate::expiry::schedule(relay.clone()));
    if relay.cfg.is_acme() {
        tokio::spawn(crate::acme::renewal_schedule(relay.clone()));
    }
    // The router's external IPv4, as port mapping learns it, is the public IPv4 to publish.
    tokio::spawn(crate::ddns::run(relay.clone(), relay.portmap.public_ipv4()));
    tokio::spawn(relay.delivery.push().clone().run(relay.shutdown.clone()));
    tokio::spawn(relay.delivery.queue().clone().run(relay.shutdown.clone()));
    // Not one of `tasks`: it ends only after the shutdown, once the router has been told.
    let portmap = tokio::spawn(crate::portmap::run(relay.clone()));
    tracing::info!(
        domain = %relay.cfg.mail_domain,
        listeners = %bound.join(" "),
        "all listeners up"
    );
    ready();
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    // The crash repair lists every message file, so it runs after the listeners are up instead
    // of before (store::Store::sweep says why that is safe).
    let (store, shutdown) = (relay.store.clone(), relay.shutdown.clone());
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        match store.sweep_until(&|| shutdown.is_triggered()) {
            Ok(Some(r)) => tracing::info!(
                orphans = r.orphans,
                missing = r.missing,
                seconds = started.elapsed().as_secs_f64(),
                "store swept"
            ),
            Ok(None) => tracing::info!("store sweep stopped by the shutdown"),
            Err(e) => tracing::error!("store sweep failed: {e}"),
        }
    });
    spawn_watchdog(&relay);
    crate::update::commit::spawn_watch(relay.clone());

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
    // The router forgets the mappings when told; otherwise they would point at a stopped relay
    // until their lease runs out.
    let _ = tokio::time::timeout(Duration::from_secs(5), portmap).await;
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

/// Runs TURN until the shutdown, started again whenever port mapping learns a new public IPv4:
/// the relayed address a call's peer sends its media to is fixed when the TURN server starts,
/// and the router answers only after the listeners are up. `turn_public_ip` wins over the router,
/// so then there is nothing to follow.
async fn follow_public_address(
    relay: Arc<Relay>,
    mut server: turn::server::Server,
    mut public: tokio::sync::watch::Receiver<Option<std::net::Ipv4Addr>>,
) {
    let follow = relay.cfg.turn_public_ip.is_none();
    loop {
        tokio::select! {
            _ = relay.shutdown.wait() => break,
            changed = public.changed(), if follow => {
                if changed.is_err() {
                    continue;
                }
                let Some(ip) = *public.borrow_and_update() else {
                    continue;
                };
                let Some(turn) = &relay.turn else { break };
                // Allocations relayed on the old address are useless to peers now; the
                // clients allocate again.
                let _ = server.close().await;
                tracing::info!(%ip, "TURN restarted to announce the router's public address");
                // close() only asks the server's read loop to end; the socket is free once it
                // has (a few milliseconds). Until then the new bind fails with "in use".
                let start = || crate::calls::server::start(&relay.cfg, turn, relay.clock.clone(), Some(ip.into()));
                let mut started = start().await;
                for _ in 0..20 {
                    if started.is_ok() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    started = start().await;
                }
                match started {
                    Ok(s) => server = s,
                    Err(e) => {
                        turn.set_serving(false);
                        tracing::error!("{e:#}; calls will use the clients' other TURN servers");
                        return;
                    }
                }
            }
        }
    }
    let _ = server.close().await;
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// Every file and directory under `dir` (and `dir` itself) with group or other access.
    fn open_to_others(dir: &Path) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        if mode(dir) & 0o077 != 0 {
            out.push((dir.display().to_string(), mode(dir)));
        }
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if mode(&p) & 0o077 != 0 {
                    out.push((p.display().to_string(), mode(&p)));
                }
                if p.is_dir() {
                    todo.push(p);
                }
            }
        }
        out
    }

    /// The data directory of a relay started outside the appliance (umask 022, a directory an
    /// older relaybox left 0755 with 0644 files) ends up 0700, and everything in it, old and
    /// new (index, keys, certificate, mail, push queue), is for the relay's user only.
    #[tokio::test]
    async fn data_dir_and_everything_in_it_are_private() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(data.join("old")).unwrap();
        std::fs::write(data.join("old").join("file"), "x").unwrap();
        std::fs::set_permissions(
            data.join("old").join("file"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let relay = crate::testkit::test_relay(&data, |_| {}).unwrap();
        let a = relay
            .accounts
            .login(crate::testkit::USER, crate::testkit::PASS)
            .await
            .unwrap();
        relay
            .store
            .deliver(
                &[a.account.id],
                std::sync::Arc::from(&b"Subject: x\r\n\r\nhi\r\n"[..]),
            )
            .await
            .unwrap();
        assert!(data.join("store").join("index.redb").exists());
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("old").join("file")), 0o600);
        assert_eq!(open_to_others(&data), vec![]);
    }
    /// A port free on both the IPv4 and the IPv6 wildcard right now.
    fn free_dual_port() -> u16 {
        loop {
            let v4 = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
            let port = v4.local_addr().unwrap().port();
            if crate::net::bind_v6only(std::net::SocketAddr::from(([0u16; 8], port))).is_ok() {
                return port;
            }
        }
    }

    async fn read_some<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 512];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// With the default dual-stack listeners (`0.0.0.0` and `[::]` on one port), SMTP, IMAPS
    /// and HTTPS answer on 127.0.0.1 and on ::1. Before, the `[::]` socket also claimed IPv4
    /// and could not be bound beside the IPv4 one.
    #[tokio::test]
    async fn smtp_imaps_and_https_answer_on_ipv4_and_ipv6_loopback() {
        use tokio::io::AsyncWriteExt;
        if !crate::net::ipv6_available() {
            assert!(std::env::var_os("CI").is_none(), "no IPv6 under CI");
            eprintln!("SKIPPED: this host has no IPv6");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (smtp, imaps, https) = (free_dual_port(), free_dual_port(), free_dual_port());
        let both = |p: u16| {
            vec![
                std::net::SocketAddr::from(([0u8; 4], p)),
                std::net::SocketAddr::from(([0u16; 8], p)),
            ]
        };
        let relay = crate::testkit::test_relay(t.path(), |c| {
            let d = crate::config::Listen::default();
            assert!(d.smtp.iter().any(|a| a.is_ipv6()) && d.smtp.iter().any(|a| a.is_ipv4()));
            c.listen = crate::config::Listen {
                smtp: both(smtp),
                imaps: both(imaps),
                https: both(https),
                submission: vec![],
                submissions: vec![],
                imap: vec![],
                http: vec![],
                metrics: vec![],
            };
        })
        .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(super::run_with(relay.clone(), move || {
            let _ = tx.send(());
        }));
        if rx.await.is_err() {
            panic!("the relay did not start: {:?}", server.await.unwrap());
        }
        let tls = crate::tls::client::Connectors::new(None).unwrap();
        let name =
            rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
        for ip in [
            std::net::IpAddr::from([127, 0, 0, 1]),
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ] {
            let mut s = tokio::net::TcpStream::connect((ip, smtp)).await.unwrap();
            let greeting = read_some(&mut s).await;
            assert!(greeting.starts_with("220 "), "SMTP on {ip}: {greeting}");

            let s = tokio::net::TcpStream::connect((ip, imaps)).await.unwrap();
            let mut s = tls.smtp_unverified.connect(name.clone(), s).await.unwrap();
            let greeting = read_some(&mut s).await;
            assert!(greeting.starts_with("* OK"), "IMAPS on {ip}: {greeting}");

            let s = tokio::net::TcpStream::connect((ip, https)).await.unwrap();
            let mut s = tls.https_unverified.connect(name.clone(), s).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let answer = read_some(&mut s).await;
            assert!(answer.starts_with("HTTP/1.1 "), "HTTPS on {ip}: {answer}");
        }
        relay.shutdown.trigger();
        server.await.unwrap().unwrap();
    }
}
