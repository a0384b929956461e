//! The command line as a new operator meets it (issue 16 item 5): mistakes get an answer that
//! names the thing to fix, and nothing is created by accident.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `RELAYBOX_BIN` runs these against another build (e.g. a release from before a change).
fn bin() -> String {
    std::env::var("RELAYBOX_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_relaybox").to_string())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env("RELAYBOX_BACKUP_PASSPHRASE", "correct horse battery staple")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn admin_commands_refuse_a_data_dir_that_does_not_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let commands: [&[&str]; 4] = [
        &["queue"],
        &["expire", "--dry-run"],
        &["dns"],
        &["backup", "--out", "b.asc"],
    ];
    for cmd in commands {
        // The default, relative `relaybox-data`: looked for in the current directory.
        let out = run_in(t, cmd);
        assert!(!out.status.success(), "{cmd:?} succeeded");
        let err = stderr(&out);
        let wanted = t.join("relaybox-data");
        assert!(
            err.contains(&format!(
                "no relaybox data directory at {}",
                wanted.display()
            )),
            "{cmd:?}: {err}"
        );
        assert!(!wanted.exists(), "{cmd:?} created {}", wanted.display());
        // A mistyped --data.
        let mut args = cmd.to_vec();
        args.extend(["--data", "relaybx-data"]);
        let out = run_in(t, &args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr(&out).contains(&t.join("relaybx-data").display().to_string()),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(!t.join("relaybx-data").exists(), "{args:?} created it");
    }
    assert!(!t.join("b.asc").exists());
    // Through a config file whose data_dir is not there.
    let cfg = t.join("relaybox.toml");
    let missing = t.join("gone");
    std::fs::write(
        &cfg,
        format!(
            "mail_domain = \"chat.example.org\"\ndata_dir = \"{}\"\n",
            missing.display()
        ),
    )
    .unwrap();
    let out = run_in(t, &["queue", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("the data directory {}", missing.display())),
        "{err}"
    );
    assert!(!missing.exists());
}

#[test]
fn dev_refuses_the_unspecified_address_with_advice() {
    let tmp = tempfile::tempdir().unwrap();
    for ip in ["0.0.0.0", "::"] {
        // Bounded: a relaybox that accepts the address serves until stopped.
        let mut child = Command::new(bin())
            .args(["dev", "--ip", ip, "--port-offset", "31300", "--data", "d"])
            .current_dir(tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "--ip {ip} accepted");
        let err = stderr(&out);
        assert!(err.contains("LAN address"), "{err}");
        assert!(err.contains("127.0.0.1"), "{err}");
        assert!(!err.contains("[0.0.0.0]"), "{err}");
        assert!(!tmp.path().join("d").exists());
    }
}

/// Runs `relaybox dev` with stdout and stderr in one file (so their order is kept) until `until`
/// shows up in it or the process ends; returns the text and the process.
fn dev_until(ip: &str, offset: &str, data: &Path, until: &str) -> (String, std::process::Child) {
    let log = data.with_extension("log");
    let f = std::fs::File::create(&log).unwrap();
    let child = Command::new(bin())
        .args(["dev", "--ip", ip, "--port-offset", offset, "--data"])
        .arg(data)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(f.try_clone().unwrap()))
        .stderr(Stdio::from(f))
        .spawn()
        .unwrap();
    let mut child = child;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    while Instant::now() < deadline {
        text.clear();
        std::fs::File::open(&log)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        if text.contains(until) || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (text, child)
}

#[test]
fn dev_prints_the_invite_only_once_all_listeners_are_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (text, mut child) = dev_until("127.0.0.43", "31200", &tmp.path().join("d"), "dclogin:");
    let _ = child.kill();
    let _ = child.wait();
    let up = text.find("all listeners up").expect(&text);
    let invite = text.find("dclogin:").expect(&text);
    let address = text.find("A new account").expect(&text);
    assert!(up < address && address < invite, "{text}");
}

#[test]
fn dev_prints_no_invite_when_a_port_is_taken() {
    let tmp = tempfile::tempdir().unwrap();
    // IMAPS of offset 31400 on this address.
    let _taken = std::net::TcpListener::bind("127.0.0.44:32393").unwrap();
    let (text, mut child) = dev_until("127.0.0.44", "31400", &tmp.path().join("d"), "dclogin:");
    let status = child.wait().unwrap();
    assert!(!status.success(), "{text}");
    assert!(text.contains("cannot listen on 127.0.0.44:32393"), "{text}");
    assert!(!text.contains("dclogin:"), "{text}");
}

#[test]
fn data_dir_permission_error_is_reported_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("settings.toml"), "max_smtp_recipients = 50\n").unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let cfg = tmp.path().join("relaybox.toml");
    std::fs::write(
        &cfg,
        format!(
            "mail_domain = \"chat.example.org\"\ndata_dir = \"{}\"\n",
            data.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    // Root reads everything, so a root test run becomes another user; otherwise the directory
    // is closed to ourselves.
    let root = nix::unistd::geteuid().is_root();
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(bin());
        c
    } else {
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o000)).unwrap();
        Command::new(bin())
    };
    let out = cmd
        .args(["serve", "--config"])
        .arg(&cfg)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    if !root {
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(!err.contains("cannot read config file"), "{err}");
    assert!(
        err.contains(&format!("in the data directory {}", data.display())),
        "{err}"
    );
    assert!(err.contains("another user"), "{err}");
}

fn serve_with(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relaybox.toml");
    let config = format!(
        "mail_domain = \"chat.example.org\"\ndata_dir = \"{}\"\n{config}",
        dir.path().join("data").display()
    );
    std::fs::write(&path, config).unwrap();
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    stderr(&out)
}

#[test]
fn a_misspelt_key_gets_the_closest_key_not_all_of_them() {
    let err = serve_with("max_mesage_size = \"1M\"\n");
    assert!(
        err.contains("unknown key `max_mesage_size`; did you mean `max_message_size`?"),
        "{err}"
    );
    assert!(!err.contains("admin_ui"), "{err}");
    let err = serve_with("[listen]\nsubmision = [\"127.0.0.1:587\"]\n");
    assert!(
        err.contains("unknown key `listen.submision`; did you mean `listen.submission`?"),
        "{err}"
    );
    // Nothing close: no guess, but where to look.
    let err = serve_with("colour = \"blue\"\n");
    assert!(err.contains("unknown key `colour`"), "{err}");
    assert!(!err.contains("did you mean"), "{err}");
    assert!(!err.contains("admin_ui"), "{err}");
}

#[test]
fn type_errors_are_in_plain_words() {
    let err = serve_with("max_user_send_per_minute = \"lots\"\n");
    assert!(
        err.contains("`max_user_send_per_minute`: expected a whole number"),
        "{err}"
    );
    assert!(err.contains("got \"lots\""), "{err}");
    assert!(!err.contains("u32"), "{err}");
    let err = serve_with("max_smtp_recipients = -5\n");
    assert!(
        err.contains("`max_smtp_recipients`: expected a whole number (0 or more), got -5"),
        "{err}"
    );
    assert!(!err.contains("usize"), "{err}");
    let err = serve_with("outbound_smtp_port = 70000\n");
    assert!(err.contains("a whole number from 0 to 65535"), "{err}");
    let err = serve_with("max_load_1m = \"high\"\n");
    assert!(err.contains("expected a number, got \"high\""), "{err}");
    assert!(!err.contains("f64"), "{err}");
}

#[test]
fn a_listen_address_without_port_asks_for_ip_and_port() {
    let err = serve_with("[listen]\nimap = [\"127.0.0.1\"]\n");
    assert!(err.contains("`listen.imap`: expected ip:port"), "{err}");
    assert!(!err.contains("socket address syntax"), "{err}");
}

#[test]
fn help_describes_every_option_of_every_command() {
    for sub in [
        "dev", "serve", "cert", "expire", "queue", "dns", "backup", "restore",
    ] {
        let out = Command::new(bin()).args([sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{sub}");
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        let mut options = 0;
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            let indent = line.len() - t.len();
            let is_arg = (2..=6).contains(&indent) && (t.starts_with('-') || t.starts_with('<'));
            if !is_arg {
                continue;
            }
            options += 1;
            // `  --name <NAME>  What it is`, or (when some help is long) the text on the next,
            // deeper indented line.
            let same_line = t
                .split_once("  ")
                .is_some_and(|(_, r)| !r.trim().is_empty());
            let next_line = lines.get(i + 1).is_some_and(|n| {
                let nt = n.trim_start();
                n.len() - nt.len() > indent + 2 && !nt.is_empty()
            });
            assert!(
                same_line || next_line,
                "`relaybox {sub} --help`: no description for {t:?}\n{text}"
            );
        }
        assert!(options >= 2, "{sub}: {text}");
    }
}
