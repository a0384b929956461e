//! `loadgen`: the load generator of the relaybox benchmarks (`scripts/bench/run.sh`).
//!
//! It speaks SMTP submission (implicit TLS, AUTH PLAIN) and IMAP (implicit TLS, IDLE) itself,
//! so the same client code measures relaybox and the Postfix + Dovecot reference stack. The
//! messages are real PGP/MIME: one rPGP-encrypted message per size is made at start and wrapped
//! in per-message headers (From, To, Message-ID), so they pass a chatmail encryption gate.
//!
//! Accounts are `<prefix><NNNNN>@<domain>` (9-character local part with the default prefix)
//! with one shared password: relaybox creates them on first login, the reference stack has them
//! in its passwd-file.

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

mod pgpmsg;

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "SMTP/IMAP load generator for relaybox benchmarks"
)]
struct Cli {
    /// The server's address (both SMTP submission and IMAP).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// SMTP submission port with implicit TLS.
    #[arg(long, default_value_t = 465)]
    smtp_port: u16,
    /// IMAP port with implicit TLS.
    #[arg(long, default_value_t = 993)]
    imap_port: u16,
    /// The mail domain of the accounts (`[127.0.0.19]` or `bench.test`).
    #[arg(long)]
    domain: String,
    /// Local parts are PREFIX followed by a 5-digit number.
    #[arg(long, default_value = "bnch")]
    prefix: String,
    /// The password of every account.
    #[arg(long, default_value = "benchpass12345")]
    password: String,
    /// First account number used by this run (runs that must not share accounts use different
    /// ranges).
    #[arg(long, default_value_t = 0)]
    first_account: u32,
    /// Where to write the JSON result (also printed on stdout).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// A label stored in the result (e.g. `relaybox` or `reference`).
    #[arg(long, default_value = "")]
    label: String,
    /// Local addresses to connect from, comma-separated, used in turn (one address has about
    /// 28 000 ephemeral ports towards one server port; 100 000 clients need several).
    #[arg(long, value_delimiter = ',')]
    source: Vec<std::net::IpAddr>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// One sender submits N messages one after another while the recipient IDLEs: time from the
    /// end of DATA to the 250, to the untagged EXISTS and to the fetched body.
    Latency {
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// Plaintext size in bytes before encryption.
        #[arg(long, default_value_t = 4096)]
        size: usize,
        /// Independent sender/recipient pairs running at once, COUNT split among them. A
        /// server that delays IDLE notifications (stock Dovecot: 0.5 s) takes COUNT × the delay
        /// with one pair; pairs shorten the run without changing what each sample measures.
        #[arg(long, default_value_t = 1)]
        pairs: usize,
    },
    /// C concurrent submitting clients for a duration (or until COUNT messages): accepted
    /// messages/s (each 250 means durable), then waits until all of them are in the
    /// recipients' INBOXes (delivered messages/s).
    Throughput {
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value_t = 4096)]
        size: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Stop after this many messages in all (0: only the duration counts).
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// Give up waiting for delivery after this many seconds.
        #[arg(long, default_value_t = 60.0)]
        drain_timeout: f64,
        /// Each client starts a message at most every this many seconds (0: back to back); the
        /// paced row sends one per second, as a relay sees most of the day.
        #[arg(long, default_value_t = 0.0)]
        interval: f64,
    },
    /// Opens K authenticated IMAP connections in IDLE and holds them until HOLD seconds pass or
    /// the file given by --until-file exists; writes --ready-file once all are idle.
    Idle {
        #[arg(long, default_value_t = 100)]
        clients: usize,
        #[arg(long, default_value_t = 30.0)]
        hold: f64,
        #[arg(long)]
        ready_file: Option<std::path::PathBuf>,
        #[arg(long)]
        until_file: Option<std::path::PathBuf>,
        /// Logins in flight at once.
        #[arg(long, default_value_t = 64)]
        parallel: usize,
    },
    /// K IMAP clients in IDLE (accounts FIRST..FIRST+K) while SENDERS connections (the accounts
    /// after them) submit RATE messages per second in all, round robin to the idle clients, for
    /// DURATION seconds; each message's end of DATA → its recipient's EXISTS, per minute; then
    /// waits (at most DRAIN seconds) until every accepted message was announced: the rest is lost.
    Soak {
        #[arg(long, default_value_t = 5000)]
        clients: usize,
        #[arg(long, default_value_t = 8)]
        senders: usize,
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 600.0)]
        duration: f64,
        #[arg(long, default_value_t = 4096)]
        size: usize,
        #[arg(long, default_value_t = 60.0)]
        drain: f64,
        /// Written once every client is in IDLE, just before the first message.
        #[arg(long)]
        ready_file: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 64)]
        parallel: usize,
    },
    /// Login latency of existing accounts: N logins one after another, spread over accounts
    /// FIRST..FIRST+ACCOUNTS, in two passes over the same accounts: the first after a server
    /// start verifies each password hash, the second may be answered from a login cache.
    /// The TLS connection is set up before the clock starts; only LOGIN is timed.
    Logins {
        #[arg(long, default_value_t = 200)]
        count: u32,
        #[arg(long, default_value_t = 10_000)]
        accounts: u32,
    },
    /// Logs in once (IMAP) with accounts FIRST..FIRST+N, so that create-on-login relays have them.
    Accounts {
        #[arg(long, default_value_t = 10)]
        count: usize,
    },
}

struct Target {
    host: String,
    smtp_port: u16,
    imap_port: u16,
    domain: String,
    prefix: String,
    password: String,
    tls: tokio_rustls::TlsConnector,
    source: Vec<std::net::IpAddr>,
    /// Read and write buffer per connection: small where thousands sit idle.
    buf_size: usize,
    next_source: AtomicU64,
}

impl Target {
    fn addr(&self, n: u32) -> String {
        format!("{}{:05}@{}", self.prefix, n, self.domain)
    }

    async fn connect(&self, port: u16) -> Result<BufStream<TlsStream<TcpStream>>> {
        let tcp = if self.source.is_empty() {
            TcpStream::connect((self.host.as_str(), port)).await
        } else {
            let n = self.next_source.fetch_add(1, Ordering::Relaxed) as usize;
            let from = self.source[n % self.source.len()];
            let to = std::net::SocketAddr::new(self.host.parse()?, port);
            let sock = match from {
                std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            sock.bind((from, 0).into())?;
            sock.connect(to).await
        }
        .with_context(|| format!("connect {}:{port}", self.host))?;
        tcp.set_nodelay(true)?;
        let name = match self.host.parse::<std::net::IpAddr>() {
            Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
            Err(_) => rustls::pki_types::ServerName::try_from(self.host.clone())?,
        };
        let tls = self.tls.connect(name, tcp).await.context("TLS handshake")?;
        Ok(BufStream::with_capacity(self.buf_size, self.buf_size, tls))
    }
}

/// Accepts any server certificate: both stacks use self-signed ones, and only loopback is used.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_connector() -> Result<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

type Conn = BufStream<TlsStream<TcpStream>>;

async fn read_line(c: &mut Conn) -> Result<String> {
    let mut buf = Vec::new();
    let n = c.read_until(b'\n', &mut buf).await?;
    if n == 0 {
        bail!("connection closed by the server");
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

// ---------------------------------------------------------------- SMTP

struct Smtp {
    c: Conn,
}

impl Smtp {
    /// Reads a (possibly multi-line) reply; returns the code and the last line.
    async fn reply(&mut self) -> Result<(u16, String)> {
        loop {
            let line = read_line(&mut self.c).await?;
            if line.len() < 4 {
                bail!("short SMTP reply {line:?}");
            }
            if line.as_bytes()[3] == b'-' {
                continue;
            }
            let code = line[..3]
                .parse()
                .with_context(|| format!("reply {line:?}"))?;
            return Ok((code, line));
        }
    }

    async fn cmd(&mut self, line: &str, want: u16) -> Result<String> {
        self.c.write_all(line.as_bytes()).await?;
        self.c.write_all(b"\r\n").await?;
        self.c.flush().await?;
        let (code, text) = self.reply().await?;
        if code != want {
            bail!("SMTP {:?}: {}", line.split(' ').next(), text.trim_end());
        }
        Ok(text)
    }

    async fn login(t: &Target, user: &str) -> Result<Smtp> {
        let mut s = Smtp {
            c: t.connect(t.smtp_port).await?,
        };
        let (code, text) = s.reply().await?;
        if code != 220 {
            bail!("SMTP greeting {text:?}");
        }
        s.cmd("EHLO loadgen.invalid", 250).await?;
        let plain =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{}", t.password));
        s.cmd(&format!("AUTH PLAIN {plain}"), 235).await?;
        Ok(s)
    }

    /// Sends one message; returns (end of DATA instant, 250 instant).
    async fn send(&mut self, from: &str, to: &str, data: &[u8]) -> Result<(Instant, Instant)> {
        self.cmd(&format!("MAIL FROM:<{from}>"), 250).await?;
        self.cmd(&format!("RCPT TO:<{to}>"), 250).await?;
        self.cmd("DATA", 354).await?;
        self.c.write_all(data).await?;
        self.c.write_all(b".\r\n").await?;
        self.c.flush().await?;
        let end = Instant::now();
        let (code, text) = self.reply().await?;
        let done = Instant::now();
        if code != 250 {
            bail!("end of DATA: {}", text.trim_end());
        }
        Ok((end, done))
    }
}

// ---------------------------------------------------------------- IMAP

struct Imap {
    c: Conn,
    tag: u32,
    exists: u64,
}

impl Imap {
    fn next_tag(&mut self) -> String {
        self.tag += 1;
        format!("t{}", self.tag)
    }

    /// Sends a command and reads until its tagged reply; returns the untagged data (literals
    /// included) and the tagged line.
    async fn cmd(&mut self, cmd: &str) -> Result<(Vec<u8>, String)> {
        let tag = self.next_tag();
        self.c
            .write_all(format!("{tag} {cmd}\r\n").as_bytes())
            .await?;
        self.c.flush().await?;
        let mut data = Vec::new();
        loop {
            let line = read_line(&mut self.c).await?;
            if let Some(rest) = line.strip_prefix(&tag) {
                if !rest.starts_with(" OK") {
                    bail!(
                        "IMAP {}: {}",
                        cmd.split(' ').next().unwrap_or(""),
                        line.trim_end()
                    );
                }
                return Ok((data, line));
            }
            self.note_exists(&line);
            data.extend_from_slice(line.as_bytes());
            if let Some(n) = literal_len(&line) {
                let mut lit = vec![0; n];
                self.c.read_exact(&mut lit).await?;
                data.extend_from_slice(&lit);
            }
        }
    }

    fn note_exists(&mut self, line: &str) -> bool {
        let mut w = line.split_ascii_whitespace();
        if let (Some("*"), Some(n), Some(kw)) = (w.next(), w.next(), w.next()) {
            if kw.eq_ignore_ascii_case("EXISTS") {
                if let Ok(n) = n.parse() {
                    self.exists = n;
                    return true;
                }
            }
        }
        false
    }

    /// Connected and greeted, not yet logged in.
    async fn connect(t: &Target) -> Result<Imap> {
        let mut i = Imap {
            c: t.connect(t.imap_port).await?,
            tag: 0,
            exists: 0,
        };
        let greet = read_line(&mut i.c).await?;
        if !greet.starts_with("* OK") {
            bail!("IMAP greeting {greet:?}");
        }
        Ok(i)
    }

    async fn login(t: &Target, user: &str) -> Result<Imap> {
        let mut i = Imap::connect(t).await?;
        i.cmd(&format!("LOGIN \"{user}\" \"{}\"", t.password))
            .await?;
        Ok(i)
    }

    async fn select(&mut self) -> Result<()> {
        self.cmd("SELECT INBOX").await?;
        Ok(())
    }

    async fn idle(&mut self) -> Result<String> {
        let tag = self.next_tag();
        self.c
            .write_all(format!("{tag} IDLE\r\n").as_bytes())
            .await?;
        self.c.flush().await?;
        loop {
            let line = read_line(&mut self.c).await?;
            if line.starts_with('+') {
                return Ok(tag);
            }
            if line.starts_with(&tag) {
                bail!("IDLE refused: {}", line.trim_end());
            }
            self.note_exists(&line);
        }
    }

    /// In IDLE: waits for an EXISTS above `above`.
    async fn wait_exists(&mut self, above: u64) -> Result<()> {
        loop {
            let line = read_line(&mut self.c).await?;
            if self.note_exists(&line) && self.exists > above {
                return Ok(());
            }
        }
    }

    async fn done(&mut self, tag: &str) -> Result<()> {
        self.c.write_all(b"DONE\r\n").await?;
        self.c.flush().await?;
        loop {
            let line = read_line(&mut self.c).await?;
            if line.starts_with(tag) {
                return Ok(());
            }
            self.note_exists(&line);
        }
    }

    async fn messages(&mut self) -> Result<u64> {
        let (data, _) = self.cmd("STATUS INBOX (MESSAGES)").await?;
        let s = String::from_utf8_lossy(&data);
        let i = s
            .find("MESSAGES ")
            .ok_or_else(|| anyhow!("no MESSAGES in {s:?}"))?;
        let n: String = s[i + 9..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        Ok(n.parse()?)
    }
}

fn literal_len(line: &str) -> Option<usize> {
    let l = line.trim_end();
    if !l.ends_with('}') {
        return None;
    }
    let open = l.rfind('{')?;
    l[open + 1..l.len() - 1].trim_end_matches('+').parse().ok()
}

// ---------------------------------------------------------------- statistics

fn stats_ms(mut v: Vec<Duration>) -> Value {
    if v.is_empty() {
        return json!({"n": 0});
    }
    v.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let pct = |p: f64| ms(v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]);
    let mean = v.iter().map(|d| d.as_secs_f64()).sum::<f64>() / v.len() as f64;
    json!({
        "n": v.len(),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": ms(v[v.len() - 1]),
        "min_ms": ms(v[0]),
        "mean_ms": (mean * 1e6).round() / 1e3,
    })
}

// ---------------------------------------------------------------- modes

type Samples = (Vec<Duration>, Vec<Duration>, Vec<Duration>);

async fn latency(t: &Target, first: u32, count: usize, size: usize, pairs: usize) -> Result<Value> {
    let body = pgpmsg::make(size)?;
    let pairs = pairs.clamp(1, count.max(1));
    let started = Instant::now();
    let runs = (0..pairs).map(|p| {
        // the first `count % pairs` pairs send one message more
        let n = count / pairs + usize::from(p < count % pairs);
        latency_pair(t, first + 2 * p as u32, n, &body)
    });
    let (mut to_250, mut to_exists, mut to_body) = (Vec::new(), Vec::new(), Vec::new());
    for (a, b, c) in futures::future::try_join_all(runs).await? {
        to_250.extend(a);
        to_exists.extend(b);
        to_body.extend(c);
    }
    let (from, to) = (t.addr(first), t.addr(first + 1));
    Ok(json!({
        "mode": "latency",
        "count": count,
        "pairs": pairs,
        "size": size,
        "wire_bytes": pgpmsg::wrap(&body, &from, &to, "x").len(),
        "elapsed_s": started.elapsed().as_secs_f64(),
        "data_to_250": stats_ms(to_250),
        "data_to_exists": stats_ms(to_exists),
        "data_to_body": stats_ms(to_body),
    }))
}

/// One sender (account `first`) and one recipient in IDLE (`first + 1`), `count` messages.
async fn latency_pair(t: &Target, first: u32, count: usize, body: &str) -> Result<Samples> {
    let (from, to) = (t.addr(first), t.addr(first + 1));
    // Create-on-login relays need the recipient to exist before mail reaches it.
    let mut imap = Imap::login(t, &to).await?;
    imap.select().await?;
    let mut smtp = Smtp::login(t, &from).await?;
    let (mut to_250, mut to_exists, mut to_body) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..count {
        let msg = pgpmsg::wrap(body, &from, &to, &format!("lat{i}"));
        let before = imap.exists;
        let tag = imap.idle().await?;
        let send = smtp.send(&from, &to, &msg);
        let wait = imap.wait_exists(before);
        let (sent, got) = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(send, async {
                wait.await?;
                Ok::<_, anyhow::Error>(Instant::now())
            })
        })
        .await
        .map_err(|_| anyhow!("message {i}: no EXISTS within 60 s"))?;
        let (end, ok) = sent?;
        let exists_at = got?;
        imap.done(&tag).await?;
        let (data, _) = imap
            .cmd(&format!("FETCH {} BODY.PEEK[]", imap.exists))
            .await?;
        let body_at = Instant::now();
        if data.len() < msg.len() {
            bail!(
                "message {i}: fetched {} bytes, sent {}",
                data.len(),
                msg.len()
            );
        }
        to_250.push(ok - end);
        to_exists.push(exists_at.saturating_duration_since(end));
        to_body.push(body_at - end);
    }
    Ok((to_250, to_exists, to_body))
}

async fn count_inboxes(t: &Target, users: &[String]) -> Result<u64> {
    let mut total = 0;
    for u in users {
        let mut i = Imap::login(t, u).await?;
        total += i.messages().await?;
        let _ = i.cmd("LOGOUT").await;
    }
    Ok(total)
}

#[allow(clippy::too_many_arguments)]
async fn throughput(
    t: Arc<Target>,
    first: u32,
    clients: usize,
    size: usize,
    duration: f64,
    count: u64,
    drain_timeout: f64,
    interval: Duration,
) -> Result<Value> {
    let body = Arc::new(pgpmsg::make(size)?);
    // Sender k sends to recipient k; senders are FIRST.., recipients FIRST+clients...
    let senders: Vec<String> = (0..clients as u32).map(|k| t.addr(first + k)).collect();
    let rcpts: Vec<String> = (0..clients as u32)
        .map(|k| t.addr(first + clients as u32 + k))
        .collect();
    let base = count_inboxes(&t, &rcpts).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut smtps = Vec::new();
    for s in &senders {
        smtps.push(Smtp::login(&t, s).await?);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(duration);
    let mut tasks = Vec::new();
    for (k, mut smtp) in smtps.into_iter().enumerate() {
        let (from, to) = (senders[k].clone(), rcpts[k].clone());
        let (body, stop, sent, errors) = (body.clone(), stop.clone(), sent.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                tokio::time::sleep_until(next.into()).await;
                next += interval;
                if count > 0 && sent.fetch_add(1, Ordering::Relaxed) >= count {
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
                let msg = pgpmsg::wrap(&body, &from, &to, &format!("tp{k}.{i}"));
                i += 1;
                let t0 = Instant::now();
                match smtp.send(&from, &to, &msg).await {
                    Ok((_, done)) => lat.push(done - t0),
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("client {k}: {e:#}");
                        break;
                    }
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await?);
    }
    let send_elapsed = started.elapsed().as_secs_f64();
    let accepted = lat.len() as u64;
    // Wait until everything accepted is in the recipients' INBOXes.
    let drain_deadline = Instant::now() + Duration::from_secs_f64(drain_timeout);
    let mut delivered;
    loop {
        delivered = count_inboxes(&t, &rcpts).await? - base;
        if delivered >= accepted || Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_elapsed = started.elapsed().as_secs_f64();
    Ok(json!({
        "mode": "throughput",
        "clients": clients,
        "size": size,
        "wire_bytes": pgpmsg::wrap(&body, &senders[0], &rcpts[0], "x").len(),
        "accepted": accepted,
        "errors": errors.load(Ordering::Relaxed),
        "send_elapsed_s": send_elapsed,
        "accepted_per_s": accepted as f64 / send_elapsed,
        "delivered": delivered,
        "delivered_elapsed_s": all_elapsed,
        "delivered_per_s": delivered as f64 / all_elapsed,
        "submit_latency": stats_ms(lat),
    }))
}

fn raise_nofile(want: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    if soft >= want {
        return soft;
    }
    // Root may raise the hard limit too (100 000 clients need more than the usual 20 000).
    if want > hard && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return want;
    }
    let new = want.min(hard);
    match setrlimit(Resource::RLIMIT_NOFILE, new, hard) {
        Ok(()) => new,
        Err(_) => soft,
    }
}

async fn idle(
    t: Arc<Target>,
    first: u32,
    clients: usize,
    hold: f64,
    ready_file: Option<std::path::PathBuf>,
    until_file: Option<std::path::PathBuf>,
    parallel: usize,
) -> Result<Value> {
    let nofile = raise_nofile(clients as u64 + 256);
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..clients as u32 {
        let (t, sem) = (t.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let t0 = Instant::now();
            let mut i = Imap::login(&t, &t.addr(first + k)).await?;
            i.select().await?;
            i.idle().await?;
            Ok::<_, anyhow::Error>((i, t0.elapsed()))
        }));
    }
    let (mut conns, mut setup, mut failed, mut first_err) = (Vec::new(), Vec::new(), 0, None);
    for task in tasks {
        match task.await? {
            Ok((c, d)) => {
                conns.push(c);
                setup.push(d);
            }
            Err(e) => {
                failed += 1;
                first_err.get_or_insert(format!("{e:#}"));
            }
        }
    }
    let ramp = started.elapsed().as_secs_f64();
    if let Some(f) = &ready_file {
        std::fs::write(f, format!("{}\n", conns.len()))?;
    }
    let hold_until = Instant::now() + Duration::from_secs_f64(hold);
    while Instant::now() < hold_until {
        if until_file.as_ref().is_some_and(|f| f.exists()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Check that the connections are still alive: nothing to read is the healthy case.
    let mut alive = 0;
    for c in &mut conns {
        let mut b = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(1), c.c.read(&mut b)).await {
            Err(_) => alive += 1,
            Ok(Ok(n)) if n > 0 => alive += 1,
            _ => {}
        }
    }
    drop(conns);
    Ok(json!({
        "mode": "idle",
        "clients": clients,
        "established": setup.len(),
        "failed": failed,
        "first_error": first_err,
        "alive_at_end": alive,
        "ramp_s": ramp,
        "nofile_limit": nofile,
        "login_to_idle": stats_ms(setup),
    }))
}

struct SoakOpts {
    clients: usize,
    senders: usize,
    rate: f64,
    duration: f64,
    size: usize,
    drain: f64,
    ready_file: Option<std::path::PathBuf>,
    parallel: usize,
}

/// Per recipient: the end-of-DATA instants of its messages not yet announced by EXISTS.
type Pending = Arc<Vec<std::sync::Mutex<std::collections::VecDeque<Instant>>>>;

async fn soak(t: Arc<Target>, first: u32, o: SoakOpts) -> Result<Value> {
    let nofile = raise_nofile((o.clients + o.senders) as u64 + 256);
    let body = Arc::new(pgpmsg::make(o.size)?);
    let pending: Pending = Arc::new(
        (0..o.clients)
            .map(|_| std::sync::Mutex::new(Default::default()))
            .collect(),
    );
    // (minute of the send, latency) of each announced message
    let samples = Arc::new(std::sync::Mutex::new(Vec::<(u64, Duration)>::new()));
    let announced = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicU64::new(0));
    let start_at = Arc::new(std::sync::OnceLock::<Instant>::new());

    // The idle clients: each reads its connection and matches EXISTS to what was sent to it.
    let sem = Arc::new(tokio::sync::Semaphore::new(o.parallel));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<()>>(o.clients.max(1));
    let mut readers = Vec::new();
    for k in 0..o.clients {
        let (t, sem, ready_tx) = (t.clone(), sem.clone(), ready_tx.clone());
        let (pending, samples, announced, stop, dropped, start_at) = (
            pending.clone(),
            samples.clone(),
            announced.clone(),
            stop.clone(),
            dropped.clone(),
            start_at.clone(),
        );
        readers.push(tokio::spawn(async move {
            let setup = async {
                let _permit = sem.acquire_owned().await?;
                let mut i = Imap::login(&t, &t.addr(first + k as u32)).await?;
                i.select().await?;
                i.idle().await?;
                Ok::<_, anyhow::Error>(i)
            };
            let mut i = match setup.await {
                Ok(i) => {
                    let _ = ready_tx.send(Ok(())).await;
                    i
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e)).await;
                    return;
                }
            };
            let mut seen = i.exists;
            // Kept across timeouts: a line cut by one is completed by the next read.
            let mut buf = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let read = i.c.read_until(b'\n', &mut buf);
                match tokio::time::timeout(Duration::from_secs(2), read).await {
                    Err(_) => continue,
                    Ok(Ok(n)) if n > 0 && buf.ends_with(b"\n") => {}
                    Ok(_) => {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                let line = String::from_utf8_lossy(&buf).into_owned();
                buf.clear();
                if i.note_exists(&line) && i.exists > seen {
                    let now = Instant::now();
                    let t0 = *start_at.get().unwrap_or(&now);
                    let mut q = pending[k].lock().unwrap_or_else(|e| e.into_inner());
                    for _ in seen..i.exists {
                        if let Some(sent) = q.pop_front() {
                            let minute = sent.saturating_duration_since(t0).as_secs() / 60;
                            let mut s = samples.lock().unwrap_or_else(|e| e.into_inner());
                            s.push((minute, now.saturating_duration_since(sent)));
                        }
                        announced.fetch_add(1, Ordering::Relaxed);
                    }
                    seen = i.exists;
                }
            }
        }));
    }
    drop(ready_tx);
    let ramp_started = Instant::now();
    let (mut idle_ok, mut idle_failed, mut first_err) = (0usize, 0usize, None);
    while let Some(r) = ready_rx.recv().await {
        match r {
            Ok(()) => idle_ok += 1,
            Err(e) => {
                idle_failed += 1;
                first_err.get_or_insert(format!("{e:#}"));
            }
        }
        if idle_ok + idle_failed == o.clients {
            break;
        }
    }
    let ramp = ramp_started.elapsed().as_secs_f64();
    if idle_ok == 0 {
        bail!("no client got to IDLE: {first_err:?}");
    }
    // Senders log in before the clock starts.
    let mut smtps = Vec::new();
    for j in 0..o.senders {
        let from = t.addr(first + (o.clients + j) as u32);
        smtps.push((Smtp::login(&t, &from).await?, from));
    }
    if let Some(f) = &o.ready_file {
        std::fs::write(f, format!("{idle_ok}\n"))?;
    }
    let t0 = Instant::now();
    let _ = start_at.set(t0);
    let total = (o.rate * o.duration).round() as u64;
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let submit = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    let mut tasks = Vec::new();
    for (j, (mut smtp, from)) in smtps.into_iter().enumerate() {
        let (t, body, pending, accepted, refused, submit) = (
            t.clone(),
            body.clone(),
            pending.clone(),
            accepted.clone(),
            refused.clone(),
            submit.clone(),
        );
        let (senders, clients, rate) = (o.senders as u64, o.clients as u64, o.rate);
        tasks.push(tokio::spawn(async move {
            // Message n is due at t0 + n / rate; sender j sends n = j, j + senders, …
            let mut n = j as u64;
            while n < total {
                let due = t0 + Duration::from_secs_f64(n as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let k = (n % clients) as usize;
                let to = t.addr(first + k as u32);
                let msg = pgpmsg::wrap(&body, &from, &to, &format!("soak{n}"));
                // Queued before the 250: the EXISTS may come first.
                let mut sent = None;
                let r = async {
                    smtp.cmd(&format!("MAIL FROM:<{from}>"), 250).await?;
                    smtp.cmd(&format!("RCPT TO:<{to}>"), 250).await?;
                    smtp.cmd("DATA", 354).await?;
                    smtp.c.write_all(&msg).await?;
                    smtp.c.write_all(b".\r\n").await?;
                    smtp.c.flush().await?;
                    let end = Instant::now();
                    pending[k]
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back(end);
                    sent = Some(end);
                    smtp.reply().await
                }
                .await;
                match r {
                    Ok((250, _)) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        if let Some(end) = sent {
                            let mut s = submit.lock().unwrap_or_else(|e| e.into_inner());
                            s.push(end.elapsed());
                        }
                    }
                    _ => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        if sent.is_some() {
                            // not accepted, so not awaited
                            pending[k]
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .pop_back();
                        }
                        if r.is_err() {
                            // the connection is gone; a new one
                            match Smtp::login(&t, &from).await {
                                Ok(s) => smtp = s,
                                Err(_) => return,
                            }
                        }
                    }
                }
                n += senders;
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let send_elapsed = t0.elapsed().as_secs_f64();
    let accepted = accepted.load(Ordering::Relaxed);
    let drain_until = Instant::now() + Duration::from_secs_f64(o.drain);
    while announced.load(Ordering::Relaxed) < accepted && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.await;
    }
    let announced = announced.load(Ordering::Relaxed);
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    let minutes = samples.iter().map(|(m, _)| *m).max().map_or(0, |m| m + 1);
    let per_minute: Vec<Value> = (0..minutes)
        .map(|m| {
            let v = samples
                .iter()
                .filter(|(mm, _)| *mm == m)
                .map(|(_, d)| *d)
                .collect();
            let mut s = stats_ms(v);
            s["minute"] = json!(m);
            s
        })
        .collect();
    let all = samples.iter().map(|(_, d)| *d).collect();
    let submit = std::mem::take(&mut *submit.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(json!({
        "mode": "soak",
        "clients": o.clients,
        "idle_established": idle_ok,
        "idle_failed": idle_failed,
        "first_error": first_err,
        "idle_dropped": dropped.load(Ordering::Relaxed),
        "ramp_s": ramp,
        "senders": o.senders,
        "rate": o.rate,
        "duration_s": o.duration,
        "size": o.size,
        "wire_bytes": pgpmsg::wrap(&body, &t.addr(0), &t.addr(1), "x").len(),
        "planned": total,
        "accepted": accepted,
        "refused": refused.load(Ordering::Relaxed),
        "send_elapsed_s": send_elapsed,
        "announced": announced,
        "lost": accepted.saturating_sub(announced),
        "nofile_limit": nofile,
        "data_to_250": stats_ms(submit),
        "data_to_exists": stats_ms(all),
        "data_to_exists_per_minute": per_minute,
    }))
}

async fn logins(t: &Target, first: u32, count: u32, accounts: u32) -> Result<Value> {
    let accounts = accounts.max(1);
    let step = (accounts / count.max(1)).max(1);
    let mut passes = Vec::new();
    for _ in 0..2 {
        let mut times = Vec::with_capacity(count as usize);
        for k in 0..count {
            let user = t.addr(first + (k * step) % accounts);
            let mut i = Imap::connect(t).await?;
            let started = Instant::now();
            i.cmd(&format!("LOGIN \"{user}\" \"{}\"", t.password))
                .await?;
            times.push(started.elapsed());
            i.cmd("LOGOUT").await.ok();
        }
        passes.push(stats_ms(times));
    }
    Ok(json!({"mode": "logins", "first_login": passes[0], "repeat_login": passes[1]}))
}

async fn accounts(t: Arc<Target>, first: u32, count: usize) -> Result<Value> {
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..count as u32 {
        let (t, sem) = (t.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await?;
            let mut i = Imap::login(&t, &t.addr(first + k)).await?;
            i.cmd("LOGOUT").await.ok();
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(json!({"mode": "accounts", "count": count, "elapsed_s": started.elapsed().as_secs_f64()}))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let t = Arc::new(Target {
        host: cli.host.clone(),
        smtp_port: cli.smtp_port,
        imap_port: cli.imap_port,
        domain: cli.domain.clone(),
        prefix: cli.prefix.clone(),
        password: cli.password.clone(),
        tls: tls_connector()?,
        buf_size: match cli.mode {
            Mode::Idle { .. } | Mode::Soak { .. } => 2 * 1024,
            _ => 64 * 1024,
        },
        source: cli.source.clone(),
        next_source: AtomicU64::new(0),
    });
    let first = cli.first_account;
    let mut result = rt.block_on(async {
        match cli.mode {
            Mode::Latency { count, size, pairs } => latency(&t, first, count, size, pairs).await,
            Mode::Throughput {
                clients,
                size,
                duration,
                count,
                drain_timeout,
                interval,
            } => {
                let pace = Duration::from_secs_f64(interval);
                throughput(
                    t,
                    first,
                    clients,
                    size,
                    duration,
                    count,
                    drain_timeout,
                    pace,
                )
                .await
            }
            Mode::Idle {
                clients,
                hold,
                ready_file,
                until_file,
                parallel,
            } => idle(t, first, clients, hold, ready_file, until_file, parallel).await,
            Mode::Logins { count, accounts } => logins(&t, first, count, accounts).await,
            Mode::Accounts { count } => accounts(t, first, count).await,
            Mode::Soak {
                clients,
                senders,
                rate,
                duration,
                size,
                drain,
                ready_file,
                parallel,
            } => {
                let o = SoakOpts {
                    clients,
                    senders,
                    rate,
                    duration,
                    size,
                    drain,
                    ready_file,
                    parallel,
                };
                soak(t, first, o).await
            }
        }
    })?;
    result["label"] = json!(cli.label);
    result["host"] = json!(cli.host);
    let text = serde_json::to_string(&result)?;
    println!("{text}");
    if let Some(path) = cli.json {
        std::fs::write(path, text + "\n")?;
    }
    Ok(())
}
