//! Drives the real `relaybox` binary the way an operator would.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_relaybox");

/// Kills the relay when a test fails half-way, so no relay outlives its test holding ports.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

fn serve_with(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relaybox.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_config_key_is_refused_at_start_with_its_name() {
    let (ok, err) = serve_with("mail_domain = \"chat.example.org\"\nmax_mailbox_sise = \"1G\"\n");
    assert!(!ok);
    assert!(err.contains("max_mailbox_sise"), "{err}");
}

#[test]
fn bad_value_is_refused_with_the_expected_form() {
    let (ok, err) =
        serve_with("mail_domain = \"chat.example.org\"\nmin_free_disk_space = \"plenty\"\n");
    assert!(!ok);
    assert!(err.contains("min_free_disk_space"), "{err}");
    assert!(err.contains("1G"), "{err}");
}

#[test]
fn missing_config_file_says_which() {
    let out = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent/relaybox.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/relaybox.toml"), "{err}");
}

#[test]
fn dev_prints_an_invite_and_reports_listeners_then_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        Command::new(BIN)
            .args([
                "dev",
                "--ip",
                "127.0.0.41",
                "--port-offset",
                "31000",
                "--data",
            ])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut up = false;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            up |= line.contains("all listeners up");
            seen.push(line);
            if up {
                break;
            }
        }
    }
    assert!(up, "no 'all listeners up' line: {seen:#?}");
    // The IMAPS port answers with TLS (we only check that it accepts a connection).
    std::net::TcpStream::connect("127.0.0.41:31993").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let url = stdout
        .lines()
        .find(|l| l.starts_with("dclogin:"))
        .expect("a dclogin: line");
    assert!(url.contains("@[127.0.0.41]?p="), "{url}");
    assert!(url.contains("&ip=31993&"), "{url}");
    assert!(url.contains("&sp=31465&"), "{url}");
    assert!(url.ends_with("&ic=3"), "{url}");
    assert!(dir.path().join("tls/cert.pem").exists());
    assert!(dir.path().join("store/index.redb").exists());
}

#[test]
fn expire_reaches_a_running_relay_and_works_offline_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        Command::new(BIN)
            .args([
                "dev",
                "--ip",
                "127.0.0.42",
                "--port-offset",
                "31100",
                "--data",
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match lines.next() {
            Some(Ok(l)) if l.contains("all listeners up") => break,
            Some(_) => {}
            None => panic!("relay exited"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let out = Command::new(BIN)
        .args(["expire", "--dry-run", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("dry run: Removed 0 out of 0 mailboxes"),
        "{text}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap();
    let out = Command::new(BIN)
        .args(["expire", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("Removed 0 out of 0 mailboxes"), "{text}");
}
