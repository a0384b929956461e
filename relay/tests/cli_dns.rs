//! `relaybox dns`, driven the way an operator runs it: beside a running relay, on its config.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_relaybox");
const KEY: &str = include_str!("data/dkim-pkcs1.pem");
/// The public key of `KEY`, as `openssl rsa -pubout` gives it.
const SPKI_B64: &str = include_str!("data/dkim-spki.b64");

/// Kills the relay when a test fails half-way, so no relay outlives its test holding ports.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A config for chat.example.org in `dir`, listening on 127.0.0.43 ports 312xx, with the test
/// DKIM key in place.
fn relay_dir(dir: &Path) -> std::path::PathBuf {
    let listen: String = [
        ("smtp", 31225),
        ("submissions", 31265),
        ("submission", 31287),
        ("imap", 31243),
        ("imaps", 31293),
        ("http", 31280),
        ("https", 31244),
    ]
    .iter()
    .map(|(k, p)| format!("{k} = [\"127.0.0.43:{p}\"]\n"))
    .collect();
    let config = dir.join("relaybox.toml");
    std::fs::write(
        &config,
        format!(
            "mail_domain = \"chat.example.org\"\ndata_dir = \"{}\"\n[listen]\n{listen}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("data/dkim")).unwrap();
    std::fs::write(dir.join("data/dkim/opendkim.key"), KEY).unwrap();
    config
}

fn dns(config: &Path) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(["dns", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dns_prints_the_records_beside_a_running_relay_without_touching_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = relay_dir(dir.path());
    let mut relay = KillOnDrop(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(relay.0.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the relay did not come up");
        match lines.next() {
            Some(Ok(l)) if l.contains("all listeners up") => break,
            Some(_) => {}
            None => panic!("relay exited"),
        }
    }
    std::thread::spawn(move || for _ in lines {});

    let (ok, out, err) = dns(&config);
    assert!(ok, "{err}");
    let line = |start: &str| {
        out.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line starting {start:?} in\n{out}"))
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        line("chat.example.org. "),
        "3600 IN MX 10 chat.example.org."
    );
    let dkim = line("opendkim._domainkey.chat.example.org. ");
    let expected = format!("v=DKIM1;k=rsa;p={};s=email;t=s", SPKI_B64.trim());
    assert_eq!(
        dkim,
        format!(
            "3600 IN TXT \"{}\" \"{}\"",
            &expected[..255],
            &expected[255..]
        )
    );
    assert!(out.contains("\"v=spf1 a ~all\""), "{out}");
    assert_eq!(
        line("_dmarc.chat.example.org. "),
        "3600 IN TXT \"v=DMARC1;p=reject;adkim=s;aspf=s\""
    );
    assert_eq!(
        line("_submissions._tcp.chat.example.org. "),
        "3600 IN SRV 0 1 465 chat.example.org."
    );
    assert_eq!(
        line("_imaps._tcp.chat.example.org. "),
        "3600 IN SRV 0 1 993 chat.example.org."
    );
    // Published since 31a867f (no longer commented out).
    assert!(
        line("_mta-sts.chat.example.org. ").starts_with("3600 IN TXT \"v=STSv1; id="),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("data/dkim/opendkim.key")).unwrap(),
        KEY
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(relay.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(relay.0.wait().unwrap().success());
}

#[test]
fn dns_without_a_key_says_how_to_get_one_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = relay_dir(dir.path());
    std::fs::remove_dir_all(dir.path().join("data/dkim")).unwrap();
    let (ok, _, err) = dns(&config);
    assert!(!ok);
    assert!(err.contains("dkim/opendkim.key"), "{err}");
    assert!(err.contains("start the relay"), "{err}");
    assert!(!dir.path().join("data/dkim").exists());
}

#[test]
fn dns_for_an_ip_literal_domain_says_none_are_needed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relaybox.toml");
    std::fs::write(
        &config,
        format!(
            "mail_domain = \"192.0.2.1\"\ndata_dir = \"{}\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let (ok, out, err) = dns(&config);
    assert!(ok, "{err}");
    assert!(out.contains("[192.0.2.1] is an IP literal"), "{out}");
    assert!(out.contains("no DNS records are needed"), "{out}");

    let out = Command::new(BIN)
        .args(["dns", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no DNS records are needed"));
}
