//! The `relaybox` binary: command-line parsing and logging set-up; everything else is in the lib.

use anyhow::Context;
use clap::{Parser, Subcommand};
use relaybox::config::{self, Config, Listen};
use relaybox::sync::LockExt;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "relaybox", version = relaybox::version::long(), about = "A chatmail relay in one binary")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run on an IP-literal domain with a self-signed certificate, for trying relaybox out.
    Dev {
        /// The address to serve; the mail domain becomes `[ADDR]`. One address clients can
        /// reach (a LAN address, or 127.0.0.1 for this machine only), not 0.0.0.0 or ::.
        #[arg(long, default_value = "127.0.0.1", value_parser = reachable_ip)]
        ip: IpAddr,
        /// Where all state is kept.
        #[arg(long, default_value = "relaybox-data")]
        data: PathBuf,
        /// Shift every port by N (e.g. 10000: IMAPS on 10993), for users without root.
        #[arg(long, default_value_t = 0)]
        port_offset: u16,
        /// Serve the set-up wizard and admin pages (as the appliance does); the setup code is
        /// printed at start.
        #[arg(long)]
        wizard: bool,
        /// Where to serve the unauthenticated metrics (ADDR:PORT). Default: `--ip` when it is
        /// a loopback address, else 127.0.0.1, on port 9464 + offset.
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Run in production from a TOML config file.
    Serve {
        /// The relay's config file (TOML; README.md "Configuration" lists the keys), e.g.
        /// /etc/relaybox/relaybox.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Delete old mail, large fetched mail and inactive accounts now (it also runs daily).
    /// Talks to the running relay if there is one, else works on the data directory itself.
    Expire {
        /// The relay's config file (default: the dev data directory).
        #[arg(long, conflicts_with = "data")]
        config: Option<PathBuf>,
        /// The data directory of a `relaybox dev` relay.
        #[arg(long, default_value = "relaybox-data")]
        data: PathBuf,
        /// Only report what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show the outbound queue (mail waiting for other relays): what, for whom, since when, the
    /// last error. Talks to the running relay if there is one, else reads the data directory.
    Queue {
        /// The relay's config file (default: the dev data directory).
        #[arg(long, conflicts_with = "data")]
        config: Option<PathBuf>,
        /// The data directory of a `relaybox dev` relay.
        #[arg(long, default_value = "relaybox-data")]
        data: PathBuf,
        /// Retry every queued message now (needs the running relay).
        #[arg(long)]
        flush: bool,
    },
    /// Ask the running relay (tls = "acme") to obtain its certificate now if it has none or it
    /// is due for renewal, and print the progress and the result.
    Cert {
        /// The running relay's config file (it names the data directory, where the control
        /// socket is).
        #[arg(long)]
        config: PathBuf,
        /// Renew even if the certificate is still valid.
        #[arg(long)]
        renew: bool,
    },
    /// Print the DNS records to publish for the mail domain, the DKIM key's included. Only
    /// reads the key file, so it is safe beside a running relay.
    Dns {
        /// The relay's config file (default: the dev data directory).
        #[arg(long, conflicts_with = "data")]
        config: Option<PathBuf>,
        /// The data directory of a `relaybox dev` relay.
        #[arg(long, default_value = "relaybox-data")]
        data: PathBuf,
    },
    /// Write an encrypted backup of the relay's identity (keys, settings, accounts; not the
    /// mail). The passphrase comes from --passphrase-file or RELAYBOX_BACKUP_PASSPHRASE.
    Backup {
        /// The relay's config file (it names the data directory; the file itself is backed
        /// up too).
        #[arg(long, conflicts_with = "data")]
        config: Option<PathBuf>,
        /// The data directory of a `relaybox dev` relay (used when --config is not given);
        /// it must exist.
        #[arg(long, default_value = "relaybox-data")]
        data: PathBuf,
        /// Where to write the backup (ASCII-armored OpenPGP; `gpg --decrypt` reads it too).
        #[arg(long)]
        out: PathBuf,
        /// A file whose first line is the passphrase (else RELAYBOX_BACKUP_PASSPHRASE is used).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Restore a backup into a new relay's data directory (the relay must be stopped).
    Restore {
        /// The new relay's config file (it names the data directory to restore into).
        #[arg(long, conflicts_with = "data")]
        config: Option<PathBuf>,
        /// The data directory to restore into, for a `relaybox dev` relay (used when --config
        /// is not given); created if missing.
        #[arg(long, default_value = "relaybox-data")]
        data: PathBuf,
        /// A file whose first line is the passphrase (else RELAYBOX_BACKUP_PASSPHRASE is used).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// Restore even if the relay already has accounts (the backup's are added).
        #[arg(long)]
        force: bool,
        /// The backup file written by `relaybox backup`.
        backup: PathBuf,
    },
    /// Install a signed update bundle into the inactive slot of the appliance and reboot into
    /// it on trial (it is committed once healthy, else the old slot comes back). Run as root.
    Update {
        /// The `relaybox-<version>-rpi-arm64.update` file.
        file: PathBuf,
        /// Install even if the bundle's version is not newer than the running one.
        #[arg(long)]
        allow_downgrade: bool,
        /// Write and arm the new slot, but leave the reboot to the operator.
        #[arg(long)]
        no_reboot: bool,
        /// Do not ask before installing.
        #[arg(long)]
        yes: bool,
        #[arg(long, default_value = "/etc/relaybox/relaybox.toml")]
        config: PathBuf,
    },
    /// Make and check update bundles (for builds and tests).
    UpdateBundle {
        #[command(subcommand)]
        cmd: BundleCmd,
    },
    /// Do the pending request of the daemon (install, commit, reboot); run by
    /// relaybox-update.service as root.
    UpdateAgent {
        #[arg(long, default_value = "/etc/relaybox/relaybox.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum BundleCmd {
    /// Write a signed bundle of a boot and a root image.
    Create {
        #[arg(long)]
        boot: PathBuf,
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        version: String,
        #[arg(long)]
        build_id: String,
        /// The Ed25519 private key (PKCS#8 DER; OpenSSL's `genpkey -algorithm ed25519` too).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "aarch64")]
        arch: String,
        #[arg(long, default_value = relaybox::update::BOARD)]
        board: String,
    },
    /// Check a bundle (signature, manifest, length, hashes) and print its manifest; exit 1 if
    /// it is refused.
    Verify {
        file: PathBuf,
        /// The public key file (one line of 64 hex digits).
        #[arg(long)]
        pubkey: PathBuf,
        #[arg(long, default_value = "aarch64")]
        arch: String,
        #[arg(long, default_value = relaybox::update::BOARD)]
        board: String,
    },
}

/// The backup passphrase: from a file (first line) or the environment, never the command line
/// (other users can read it from /proc).
fn passphrase(file: Option<PathBuf>) -> anyhow::Result<String> {
    match file {
        Some(f) => Ok(std::fs::read_to_string(&f)
            .with_context(|| format!("cannot read {}", f.display()))?
            .lines()
            .next()
            .unwrap_or("")
            .to_string()),
        None => std::env::var(relaybox::backup::PASSPHRASE_ENV).with_context(|| {
            format!(
                "no passphrase: give --passphrase-file or set {}",
                relaybox::backup::PASSPHRASE_ENV
            )
        }),
    }
}

fn open_store_offline(cfg: &Config) -> anyhow::Result<relaybox::store::Store> {
    relaybox::store::Store::open(&cfg.data_dir.join("store")).with_context(|| {
        format!(
            "cannot open the store in {} (stop the relay first)",
            cfg.data_dir.display()
        )
    })
}

fn init_logging() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Under systemd, stderr would land in the journal a second time; log to journald directly.
    let journald = std::env::var_os("JOURNAL_STREAM").and_then(|_| tracing_journald::layer().ok());
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(relaybox::logbuf::Recent);
    match journald {
        Some(j) => registry.with(j).init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    // Before any subcommand writes into the data directory (or a backup file).
    relaybox::server::private_umask();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.cmd {
        Cmd::Dev {
            ip,
            data,
            port_offset,
            wizard,
            metrics,
        } => {
            let mut cfg = Config::with_domain(&config::domain_literal(ip), &data)?;
            cfg.listen = Listen::standard(ip, port_offset)?;
            if let Some(m) = metrics {
                cfg.listen.metrics = vec![m];
            }
            // A dev relay runs beside compilers and test suites, whose load would otherwise
            // refuse new accounts (the reference's max_load_1m is not scaled by core count).
            cfg.max_load_1m = 1000.0;
            // A laptop or CI disk shared with build trees often has less than the production 1G
            // free; a dev relay only needs room for its own test mail.
            cfg.min_free_disk_space = config::ByteSize(64 << 20);
            // Test suites and a developer's Delta Chat profiles make many accounts from one
            // loopback address.
            cfg.max_new_accounts_per_ip_per_hour = 0;
            // Dev relays on loopback federate with each other (and tests queue mail for dead
            // loopback addresses); a relay on a real address keeps the default.
            if ip.is_loopback() {
                cfg.allowed_destination_networks = ["127.0.0.0/8", "::1"]
                    .iter()
                    .filter_map(|n| config::IpNet::parse(n).ok())
                    .collect();
            }
            cfg.admin_ui = wizard;
            // A dev relay is a developer's or a test's, usually on an IP literal: opening its
            // ports on the LAN's router would surprise more than help.
            cfg.port_mapping = config::PortMapping::Off;
            let relay = relaybox::server::build(cfg)?;
            // Only once the ports are bound: a QR that cannot be used yet (or ever, when a port
            // is taken) would only mislead.
            let r = relay.clone();
            serve_until_done(rt, relay, move || {
                print_invite(&r.cfg, ip, port_offset);
                if r.admin.pending() {
                    let code = std::fs::read_to_string(r.admin.code_path()).unwrap_or_default();
                    eprintln!(
                        "set-up wizard: {}/setup  (setup code: {})",
                        relaybox::web::https_origin(&r.cfg),
                        code.trim()
                    );
                }
            })
        }
        Cmd::Expire {
            config,
            data,
            dry_run,
        } => rt.block_on(expire(existing_relay(config, &data)?, dry_run)),
        Cmd::Queue {
            config,
            data,
            flush,
        } => rt.block_on(queue(existing_relay(config, &data)?, flush)),
        Cmd::Backup {
            config,
            data,
            out,
            passphrase_file,
        } => {
            let text = config
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok());
            let cfg = existing_relay(config, &data)?;
            let pass = passphrase(passphrase_file)?;
            let store = open_store_offline(&cfg)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let armored = relaybox::backup::create(&cfg, text, &store, &pass, now)?;
            std::fs::write(&out, armored)
                .with_context(|| format!("cannot write {}", out.display()))?;
            let m = relaybox::backup::inspect(std::fs::read(&out)?.as_slice(), &pass)?;
            println!(
                "{}: backup of {} ({} files, {} accounts)",
                out.display(),
                m.domain,
                m.files.len(),
                m.accounts
            );
            Ok(())
        }
        Cmd::Restore {
            config,
            data,
            passphrase_file,
            force,
            backup,
        } => {
            let cfg = admin_config(config, &data)?;
            let pass = passphrase(passphrase_file)?;
            let bytes = std::fs::read(&backup)
                .with_context(|| format!("cannot read {}", backup.display()))?;
            std::fs::create_dir_all(&cfg.data_dir)?;
            let store = open_store_offline(&cfg)?;
            let r = rt.block_on(relaybox::backup::restore(
                bytes.as_slice(),
                &pass,
                &cfg.data_dir,
                &store,
                force,
            ))?;
            println!(
                "restored {} into {}: {} files, {} accounts{}",
                r.domain,
                cfg.data_dir.display(),
                r.files,
                r.accounts,
                r.config_copy
                    .map(|p| format!("; the backed-up config file is in {}", p.display()))
                    .unwrap_or_default()
            );
            Ok(())
        }
        Cmd::Cert { config, renew } => rt.block_on(cert(Config::load(&config)?, renew)),
        Cmd::Dns { config, data } => match config {
            Some(path) => print_dns(&existing_relay(Some(path), &data)?),
            None => {
                existing_relay(None, &data)?;
                println!(
                    "{}: a relaybox dev relay has an IP-literal domain; no DNS records are \
                     needed, and its mail is not DKIM-signed.",
                    data.display()
                );
                Ok(())
            }
        },
        Cmd::Update {
            file,
            allow_downgrade,
            no_reboot,
            yes,
            config,
        } => update(&file, allow_downgrade, no_reboot, yes, &config),
        Cmd::UpdateBundle { cmd } => update_bundle(cmd),
        Cmd::UpdateAgent { config } => update_agent(&config),
        Cmd::Serve { config } => {
            let cfg = Config::load(&config)?;
            let relay = relaybox::server::build(cfg)?;
            *relay.admin.config_path.lock_or_recover() = Some(config);
            serve_until_done(rt, relay, || {})
        }
    }
}

/// Runs the relay; when the admin pages asked for a restart with new settings, starts the
/// binary afresh in this process once everything has stopped.
fn serve_until_done(
    rt: tokio::runtime::Runtime,
    relay: std::sync::Arc<relaybox::Relay>,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let restart = {
        let r = relay.clone();
        rt.block_on(relaybox::server::run_with(relay, ready))?;
        r.admin.restart_requested()
    };
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    if restart {
        let e = relaybox::admin::reexec();
        anyhow::bail!("cannot restart relaybox with the new settings: {e}");
    }
    Ok(())
}

/// The `[update]` settings of the appliance's config file, or the defaults without one.
/// Run as root, it reads the file only if only root can have written it: on the appliance the
/// config directory belongs to the daemon's user, which must not steer the agent.
fn update_env(config: &std::path::Path) -> anyhow::Result<relaybox::update::UpdateEnv> {
    use std::os::unix::fs::MetadataExt;
    let trusted = match std::fs::symlink_metadata(config) {
        Ok(m) if nix::unistd::geteuid().is_root() => {
            let ok = m.file_type().is_file() && m.uid() == 0 && m.mode() & 0o022 == 0;
            if !ok {
                eprintln!(
                    "update: ignoring {} (not a root-owned file only root may write); using \
                     the default [update] paths",
                    config.display()
                );
            }
            ok
        }
        Ok(_) => true,
        Err(_) => false,
    };
    // Only the file's own `[update]` table: the settings file beside the data is the daemon's.
    let u = if trusted {
        let text = std::fs::read_to_string(config)
            .with_context(|| format!("cannot read {}", config.display()))?;
        let mut table: toml::Table =
            toml::from_str(&text).with_context(|| format!("{}", config.display()))?;
        match table.remove("update") {
            Some(v) => v
                .try_into()
                .with_context(|| format!("{}: [update]", config.display()))?,
            None => config::UpdateConfig::default(),
        }
    } else {
        config::UpdateConfig::default()
    };
    Ok(relaybox::update::UpdateEnv::system(&u.dir, &u.firmware_dir))
}

fn update(
    file: &std::path::Path,
    allow_downgrade: bool,
    no_reboot: bool,
    yes: bool,
    config: &std::path::Path,
) -> anyhow::Result<()> {
    use relaybox::update::install;
    let env = update_env(config)?;
    let mut progress = |step: &str, pct: u32| -> std::io::Result<()> {
        // Every percent goes to the admin page; the console gets every tenth.
        if pct.is_multiple_of(10) {
            println!("update: {step} {pct}%");
        }
        env.write_progress(step, pct, "");
        Ok(())
    };
    let mut confirm = |m: &relaybox::update::bundle::Manifest, to: relaybox::update::Slot| {
        println!(
            "update: bundle of relaybox {} (build {}, {}), signed and intact",
            m.version, m.build_id, m.created
        );
        if yes {
            return true;
        }
        print!(
            "Install version {} into slot {to} and reboot into it? [y/N] ",
            m.version
        );
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).is_ok() && matches!(line.trim(), "y" | "Y" | "yes")
    };
    let r = install::install(
        &env,
        file,
        &install::InstallOpts { allow_downgrade },
        &mut progress,
        &mut confirm,
    );
    let i = match r {
        Ok(i) => i,
        Err(e) => {
            env.write_progress("error", 0, &e);
            anyhow::bail!("update: {e}");
        }
    };
    println!(
        "update: version {} written to slot {} and verified; the next reboot tries it once",
        i.version, i.to
    );
    if no_reboot {
        println!("update: reboot when ready (`systemctl reboot`)");
        return Ok(());
    }
    println!("update: rebooting");
    relaybox::update::agent::reboot().map_err(anyhow::Error::msg)
}

fn update_bundle(cmd: BundleCmd) -> anyhow::Result<()> {
    use relaybox::update::bundle;
    match cmd {
        BundleCmd::Create {
            boot,
            root,
            version,
            build_id,
            key,
            out,
            arch,
            board,
        } => {
            let pk8 =
                std::fs::read(&key).with_context(|| format!("cannot read {}", key.display()))?;
            let key = bundle::load_key(&pk8).map_err(anyhow::Error::msg)?;
            // Reproducible builds set the time of their sources.
            let created = std::env::var("SOURCE_DATE_EPOCH")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(relaybox::update::now_secs);
            let opts = bundle::CreateOpts {
                version: &version,
                build_id: &build_id,
                arch: &arch,
                board: &board,
                created,
            };
            let m = bundle::create(&boot, &root, &opts, &key, &out)
                .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
            println!("{}", serde_json::to_string_pretty(&m)?);
            Ok(())
        }
        BundleCmd::Verify {
            file,
            pubkey,
            arch,
            board,
        } => {
            let key = relaybox::update::read_pubkey(&pubkey).map_err(anyhow::Error::msg)?;
            let expect = bundle::Expect {
                pubkey: &key,
                arch: &arch,
                board: &board,
                running_version: "",
                allow_downgrade: true,
                boot_max: relaybox::update::BOOT_MAX,
                root_max: relaybox::update::ROOT_MAX,
            };
            let h = bundle::verify_file(&file, &expect, &mut |_, _, _| Ok(()))
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!("{}", serde_json::to_string_pretty(&h.manifest)?);
            Ok(())
        }
    }
}

fn update_agent(config: &std::path::Path) -> anyhow::Result<()> {
    use relaybox::update::agent;
    let env = update_env(config)?;
    let Some(req) = agent::take(&env).map_err(anyhow::Error::msg)? else {
        return Ok(());
    };
    tracing::info!(?req, "update agent: request");
    match agent::handle(&env, req) {
        Ok(agent::After::Nothing) => Ok(()),
        Ok(agent::After::Reboot) => agent::reboot().map_err(anyhow::Error::msg),
        Err(e) => anyhow::bail!("update agent: {e}"),
    }
}

/// The config an admin command works on: the given file, or the `relaybox dev` data directory.
fn admin_config(config: Option<PathBuf>, data: &std::path::Path) -> anyhow::Result<Config> {
    Ok(match config {
        Some(path) => Config::load(&path)?,
        None => Config::with_domain("[127.0.0.1]", data)?,
    })
}

/// Like [`admin_config`], for commands that work on an existing relay: a mistyped or relative
/// `--data` must not quietly become a new, empty store.
fn existing_relay(config: Option<PathBuf>, data: &std::path::Path) -> anyhow::Result<Config> {
    let from_file = config.clone();
    let cfg = admin_config(config, data)?;
    if !cfg.data_dir.is_dir() {
        let dir = std::path::absolute(&cfg.data_dir).unwrap_or_else(|_| cfg.data_dir.clone());
        match from_file {
            Some(f) => anyhow::bail!(
                "the data directory {} (data_dir in {}) does not exist: has this relay been \
                 started yet?",
                dir.display(),
                f.display()
            ),
            None => anyhow::bail!(
                "no relaybox data directory at {}: give the relay's --data DIR (as given to \
                 `relaybox dev`) or its --config FILE",
                dir.display()
            ),
        }
    }
    Ok(cfg)
}

/// `--ip`: the mail domain and the invite are made from it, so it must be one address clients
/// can connect to.
fn reachable_ip(s: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address (like 192.168.1.20 or 127.0.0.1)"))?;
    if ip.is_unspecified() {
        return Err(format!(
            "{ip} means \"every address\", but the mail domain [ADDR] and the invite need the one \
             address clients connect to: give this machine's LAN address (`ip -brief address` \
             lists them), or 127.0.0.1 to try relaybox on this machine alone"
        ));
    }
    Ok(ip)
}

async fn expire(cfg: Config, dry_run: bool) -> anyhow::Result<()> {
    use relaybox::control::{request, Request};
    let req = Request::Expire { dry_run };
    match request(&cfg.control_socket(), &req).await {
        Ok(Some(Ok(text))) => {
            println!("{text}");
            return Ok(());
        }
        Ok(Some(Err(e))) => anyhow::bail!("{e}"),
        Ok(None) => {}
        Err(e) => anyhow::bail!(
            "cannot reach the relay at {}: {e}",
            cfg.control_socket().display()
        ),
    }
    // No relay running: open the data directory ourselves.
    let store = relaybox::store::Store::open(&cfg.data_dir.join("store")).with_context(|| {
        format!(
            "cannot open the store in {} (is a relay running without its control socket?)",
            cfg.data_dir.display()
        )
    })?;
    let clock = relaybox::clock::Clock::system();
    let report = relaybox::expiry::run(&store, &cfg, &clock, dry_run).await?;
    println!("{}{report}", if dry_run { "dry run: " } else { "" });
    Ok(())
}

async fn queue(cfg: Config, flush: bool) -> anyhow::Result<()> {
    use relaybox::control::{request, Request};
    match request(&cfg.control_socket(), &Request::Queue { flush }).await {
        Ok(Some(Ok(text))) => {
            println!("{text}");
            return Ok(());
        }
        Ok(Some(Err(e))) => anyhow::bail!("{e}"),
        Ok(None) => {}
        Err(e) => anyhow::bail!(
            "cannot reach the relay at {}: {e}",
            cfg.control_socket().display()
        ),
    }
    if flush {
        anyhow::bail!("no relay is running on {}: nothing to flush (a started relay retries its queue at once)", cfg.data_dir.display());
    }
    let store = relaybox::store::Store::open(&cfg.data_dir.join("store"))
        .with_context(|| format!("cannot open the store in {}", cfg.data_dir.display()))?;
    let now = relaybox::clock::Clock::system().now();
    println!(
        "{}",
        relaybox::delivery::queue::report(&store.queued()?, now)
    );
    Ok(())
}

async fn cert(cfg: Config, renew: bool) -> anyhow::Result<()> {
    use relaybox::control::{request, Request};
    match request(&cfg.control_socket(), &Request::Cert { renew }).await {
        Ok(Some(Ok(text))) => {
            println!("{text}");
            Ok(())
        }
        Ok(Some(Err(e))) => anyhow::bail!("{e}"),
        Ok(None) => anyhow::bail!(
            "no relay is running on {} (start it: the certificate is validated through its port 80)",
            cfg.data_dir.display()
        ),
        Err(e) => anyhow::bail!(
            "cannot reach the relay at {}: {e}",
            cfg.control_socket().display()
        ),
    }
}

fn print_dns(cfg: &Config) -> anyhow::Result<()> {
    if cfg.is_ip_literal() {
        println!(
            "{} is an IP literal: no DNS records are needed, and mail is not DKIM-signed.",
            cfg.mail_domain
        );
        return Ok(());
    }
    // `load`, not `load_or_create`: run as another user (root), creating the key here would
    // leave the relay a file it cannot read.
    let dkim = relaybox::dkim::Dkim::load(cfg).with_context(|| {
        format!(
            "no usable DKIM key yet; start the relay once (`relaybox serve`), it creates {}",
            relaybox::dkim::Dkim::key_path(cfg).display()
        )
    })?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mta_sts_id = chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(0), 0)
        .map(|t| t.format("%Y%m%d%H%M").to_string())
        .unwrap_or_default();
    print!(
        "{}",
        relaybox::dns::records::zone_text(&cfg.mail_domain, &dkim, &mta_sts_id)
    );
    Ok(())
}

/// Prints a fresh random account as a `dclogin:` URL and a terminal QR code. Nothing is created
/// until the client logs in with it.
fn print_invite(cfg: &Config, ip: IpAddr, offset: u16) {
    let (addr, password) = relaybox::accounts::random_credentials(cfg);
    let url = relaybox::accounts::dclogin_url(
        &addr,
        &password,
        &ip.to_string(),
        993u16.saturating_add(offset),
        465u16.saturating_add(offset),
    );
    println!(
        "relaybox dev: {} (data in {})",
        cfg.mail_domain,
        cfg.data_dir.display()
    );
    println!("A new account (created at its first login):");
    println!("  address:  {addr}");
    println!("  password: {password}");
    println!("Scan with Delta Chat (\"Add account\" > \"Scan QR code\"), or paste:");
    println!("{url}");
    if let Ok(qr) = qrcode::QrCode::new(url.as_bytes()) {
        let art = qr
            .render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build();
        println!("{art}");
    }
}
