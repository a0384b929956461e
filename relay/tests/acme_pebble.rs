//! ACME against a real ACME server: Debian's `pebble` on loopback, validating HTTP-01 for real
//! on the relay's HTTP port, with the names resolved by a dnsmasq we start. The relay
//! (`tls = "acme"`) obtains a certificate at start, serves it on HTTPS, IMAPS and SMTPS without a
//! restart, renews it on `relaybox cert --renew`, and keeps it when an order fails (the DNS then
//! points elsewhere), printing pebble's own error, and renews at start when fewer than
//! `acme_renew_days` days remain, reusing its stored account. Skipped, with a notice, when
//! pebble or dnsmasq is missing (outside CI; under CI the setup stage installs both).

use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_relaybox");
const DOMAIN: &str = "acme.test";
const DNS_IP: &str = "127.0.0.57";

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn need(name: &str, package: &str) -> Option<PathBuf> {
    let found = find(name);
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} not found under CI (the setup stage installs {package})"
        );
        eprintln!("SKIPPED: {name} not found (install the Debian package {package})");
    }
    found
}

/// A port free for both UDP and TCP on a loopback address.
fn free_port(ip: &str) -> u16 {
    relaybox::testkit::free_port(ip.parse().unwrap())
}

fn wait_tcp(addr: SocketAddr, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what} exited: {st}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// dnsmasq answering the certificate's three names with `ip`.
fn dnsmasq(bin: &Path, port: u16, ip: &str) -> Kill {
    let mut child = Command::new(bin)
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--local=/test/",
            &format!("--listen-address={DNS_IP}"),
            &format!("--port={port}"),
            &format!("--host-record={DOMAIN},{ip}"),
            &format!("--host-record=mta-sts.{DOMAIN},{ip}"),
            &format!("--host-record=www.{DOMAIN},{ip}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_tcp(
        SocketAddr::new(DNS_IP.parse().unwrap(), port),
        &mut child,
        "dnsmasq",
    );
    Kill(child)
}

/// A test CA and a certificate for pebble's own HTTPS (127.0.0.1 / localhost).
fn pebble_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "relaybox test ACME-server CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("pebble-cert.pem"),
        dir.join("pebble-key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

fn client_config(roots: &[CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth(),
    )
}

/// The leaf certificate `addr` serves for `name`, verified against `roots`.
async fn served_leaf(
    addr: SocketAddr,
    name: &str,
    roots: &[CertificateDer<'static>],
) -> Result<CertificateDer<'static>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(client_config(roots))
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .ok_or("no certificate")?;
    Ok(chain[0].clone().into_owned())
}

/// GET over HTTPS (HTTP/1.0, so the server closes after the body).
async fn https_get(addr: SocketAddr, path: &str, roots: &[CertificateDer<'static>]) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client_config(roots))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    let _ = tls.read_to_string(&mut out).await;
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out)
}

fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .map(Result::unwrap)
        .collect()
}

fn cert_cmd(config: &Path, renew: bool) -> (bool, String) {
    let mut c = Command::new(BIN);
    c.args(["cert", "--config"]).arg(config);
    if renew {
        c.arg("--renew");
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn pebble_issues_renews_and_a_failed_order_keeps_the_old_certificate() {
    let (Some(pebble), Some(dnsmasq_bin)) =
        (need("pebble", "pebble"), need("dnsmasq", "dnsmasq-base"))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ca, pcert, pkey) = pebble_tls(dir.path());
    let port = |_| free_port("127.0.0.1");
    let [acme, mgmt, http, https, imaps, smtps, smtp, sub, imap, tlsalpn]: [u16; 10] =
        std::array::from_fn(port);
    let dns_port = free_port(DNS_IP);
    let mut dns = dnsmasq(&dnsmasq_bin, dns_port, "127.0.0.1");

    let pebble_cfg = dir.path().join("pebble.json");
    std::fs::write(
        &pebble_cfg,
        serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": pcert,
            "privateKey": pkey,
            "httpPort": http,
            "tlsPort": tlsalpn,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }})
        .to_string(),
    )
    .unwrap();
    let pebble_log = dir.path().join("pebble.log");
    let mut pebble = Kill(
        Command::new(pebble)
            .arg("-config")
            .arg(&pebble_cfg)
            .args(["-dnsserver", &format!("{DNS_IP}:{dns_port}")])
            // Real validation (no PEBBLE_VA_ALWAYS_VALID); no random validation delay, no
            // random nonce rejection, and fresh authorizations for every order (so the failed
            // order below is really validated again).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .env_remove("PEBBLE_VA_ALWAYS_VALID")
            .stdout(std::fs::File::create(&pebble_log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_tcp(
        SocketAddr::from(([127, 0, 0, 1], acme)),
        &mut pebble.0,
        "pebble",
    );

    let data = dir.path().join("data");
    let config = dir.path().join("relaybox.toml");
    let l = |p: u16| format!("[\"127.0.0.1:{p}\"]");
    std::fs::write(
        &config,
        format!(
            "mail_domain = \"{DOMAIN}\"\ndata_dir = {data:?}\ntls = \"acme\"\n\
             acme_directory = \"https://127.0.0.1:{acme}/dir\"\nacme_ca_file = {ca:?}\n\
             acme_email = \"admin@{DOMAIN}\"\nmax_load_1m = 1000.0\n\
             [listen]\nsmtp = {}\nsubmissions = {}\nsubmission = {}\nimap = {}\nimaps = {}\n\
             http = {}\nhttps = {}\nmetrics = []\n",
            l(smtp),
            l(smtps),
            l(sub),
            l(imap),
            l(imaps),
            l(http),
            l(https)
        ),
    )
    .unwrap();
    let relay_log = dir.path().join("relay.log");
    let mut relay = Kill(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&relay_log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_tcp(
        SocketAddr::from(([127, 0, 0, 1], https)),
        &mut relay.0,
        "relaybox",
    );
    let logs = || {
        format!(
            "--- relay log ---\n{}\n--- pebble log ---\n{}",
            std::fs::read_to_string(&relay_log).unwrap_or_default(),
            std::fs::read_to_string(&pebble_log).unwrap_or_default()
        )
    };

    // Pebble's issuing root, from its management interface (HTTPS with the test CA).
    let ca_roots = pem_certs(&std::fs::read_to_string(&ca).unwrap());
    let root_pem = https_get(
        SocketAddr::from(([127, 0, 0, 1], mgmt)),
        "/roots/0",
        &ca_roots,
    )
    .await;
    let roots = pem_certs(&root_pem);
    assert_eq!(roots.len(), 1, "pebble root: {root_pem}");

    // The relay orders at start; the listeners switch to the new certificate by themselves.
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let deadline = Instant::now() + Duration::from_secs(120);
    let first = loop {
        match served_leaf(at(https), DOMAIN, &roots).await {
            Ok(c) => break c,
            Err(e) => {
                if let Ok(Some(st)) = relay.0.try_wait() {
                    panic!("relay exited: {st}\n{}", logs());
                }
                assert!(
                    Instant::now() < deadline,
                    "no pebble certificate on HTTPS ({e})\n{}",
                    logs()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let log = std::fs::read_to_string(&relay_log).unwrap();
    for line in [
        "ordering certificate for acme.test, mta-sts.acme.test, www.acme.test",
        "challenge for mta-sts.acme.test validated",
        "certificate installed, valid until",
    ] {
        assert!(log.contains(line), "missing {line:?}\n{}", logs());
    }
    let (_, leaf) = x509_parser::parse_x509_certificate(first.as_ref()).unwrap();
    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(s) => s.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    for n in [DOMAIN, "mta-sts.acme.test", "www.acme.test"] {
        assert!(sans.iter().any(|s| s.contains(n)), "{n} not in {sans:?}");
    }
    assert!(
        leaf.issuer().to_string().to_lowercase().contains("pebble"),
        "issuer {}",
        leaf.issuer()
    );
    // Every TLS listener serves it (verified against pebble's root).
    for (what, p) in [("IMAPS", imaps), ("SMTPS", smtps)] {
        let c = served_leaf(at(p), DOMAIN, &roots)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(c, first, "{what} serves another certificate");
    }
    let account = data.join("acme/account.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&account).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Not due: nothing happens.
    let (ok, out) = cert_cmd(&config, false);
    eprintln!("relaybox cert:\n{out}");
    assert!(ok && out.contains("no renewal needed"), "{out}");

    // Forced renewal: a new certificate, served at once.
    let (ok, out) = cert_cmd(&config, true);
    eprintln!("relaybox cert --renew:\n{out}");
    assert!(ok, "{out}\n{}", logs());
    assert!(out.contains("certificate installed, valid until"), "{out}");
    let second = served_leaf(at(imaps), DOMAIN, &roots).await.unwrap();
    assert_ne!(
        second, first,
        "renewal did not change the served certificate"
    );
    assert_eq!(
        served_leaf(at(https), DOMAIN, &roots).await.unwrap(),
        second
    );

    // The names now point where nothing answers: the order fails with pebble's own problem
    // document, and the relay keeps serving the certificate it has.
    drop(dns);
    dns = dnsmasq(&dnsmasq_bin, dns_port, "127.0.0.2");
    let (ok, out) = cert_cmd(&config, true);
    eprintln!("relaybox cert --renew (DNS pointing elsewhere):\n{out}");
    assert!(!ok, "the order should fail: {out}");
    assert!(
        out.contains("urn:ietf:params:acme:error") && out.contains("keeping the old certificate"),
        "no ACME problem document in: {out}\n{}",
        logs()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        served_leaf(at(smtps), DOMAIN, &roots).await.unwrap(),
        second
    );
    assert_eq!(
        served_leaf(at(https), DOMAIN, &roots).await.unwrap(),
        second
    );

    // Renewal by the threshold: restarted with acme_renew_days above the certificate's lifetime
    // (pebble issues for 5 years), the relay renews at start with the account it already has.
    drop(dns);
    let _dns = dnsmasq(&dnsmasq_bin, dns_port, "127.0.0.1");
    drop(relay);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "tls = \"acme\"\n",
            "tls = \"acme\"\nacme_renew_days = 3000\n",
        ),
    )
    .unwrap();
    let relay_log = dir.path().join("relay2.log");
    let mut relay = Kill(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&relay_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let third = loop {
        match served_leaf(at(https), DOMAIN, &roots).await {
            Ok(c) if c != second => break c,
            other => {
                if let Ok(Some(st)) = relay.0.try_wait() {
                    panic!("relay exited: {st}");
                }
                assert!(
                    Instant::now() < deadline,
                    "no renewal at start ({other:?})\n{}",
                    std::fs::read_to_string(&relay_log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    assert_eq!(served_leaf(at(imaps), DOMAIN, &roots).await.unwrap(), third);
    let log = std::fs::read_to_string(&relay_log).unwrap();
    assert!(log.contains("less than 3000 days left"), "{log}");
    assert!(!log.contains("created ACME account"), "{log}");
}
