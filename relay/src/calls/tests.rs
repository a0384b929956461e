use super::server::{Bucket, Limits};
use super::*;
use std::sync::Arc;

fn cfg(text: &str, dir: &Path) -> Config {
    let t = format!("data_dir = {:?}\n{text}", dir.display().to_string());
    Config::from_toml(&t, Path::new("test.toml")).unwrap()
}

#[test]
fn turn_is_on_for_a_named_domain_and_off_for_an_ip_literal_unless_set() {
    let d = tempfile::tempdir().unwrap();
    assert!(cfg("mail_domain = \"chat.example.org\"", d.path()).turn_enabled());
    assert!(!cfg("mail_domain = \"[127.0.0.1]\"", d.path()).turn_enabled());
    assert!(cfg("mail_domain = \"[127.0.0.1]\"\nturn = true", d.path()).turn_enabled());
    // An operator who announces another TURN server keeps it.
    let c = cfg(
        "mail_domain = \"chat.example.org\"\nturn_server = \"t.example.org:3478:u:p\"",
        d.path(),
    );
    assert!(!c.turn_enabled());
}

#[test]
fn relay_ports_are_parsed_and_checked() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg("mail_domain = \"a.org\"", d.path());
    assert_eq!(c.turn_relay_ports, crate::config::PortRange(49152, 49251));
    assert_eq!(c.turn_relay_ports.count(), 100);
    for bad in ["\"49251-49152\"", "\"80-90\"", "\"49152\"", "\"x-y\""] {
        let t = format!(
            "data_dir = {:?}\nmail_domain = \"a.org\"\nturn_relay_ports = {bad}",
            d.path().display().to_string()
        );
        assert!(
            Config::from_toml(&t, Path::new("t")).is_err(),
            "{bad} accepted"
        );
    }
    let t = format!(
        "data_dir = {:?}\nmail_domain = \"a.org\"\nturn_relay_ports = \"3000-4000\"",
        d.path().display().to_string()
    );
    assert!(Config::from_toml(&t, Path::new("t")).is_err());
}

#[test]
fn announcement_is_host_port_expiry_and_rest_password() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg("mail_domain = \"chat.example.org\"", d.path());
    let turn = Turn::open(&c).unwrap().unwrap();
    let a = turn.announcement(1_000_000).unwrap();
    let parts: Vec<&str> = a.splitn(4, ':').collect();
    assert_eq!(parts[0], "chat.example.org");
    assert_eq!(parts[1], "3478");
    assert_eq!(parts[2], (1_000_000 + CREDENTIAL_LIFETIME).to_string());
    // The REST scheme: base64(HMAC-SHA1(secret, username)), checked with the secret on disk.
    let secret = std::fs::read(d.path().join("turn").join("secret")).unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &secret);
    let tag = ring::hmac::sign(&key, parts[2].as_bytes());
    use base64::Engine;
    assert_eq!(
        parts[3],
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    );
    // The same secret after a restart: cached credentials stay valid.
    let again = Turn::open(&c).unwrap().unwrap();
    assert_eq!(again.announcement(1_000_000), Some(a));
    // Without its UDP socket nothing is announced.
    again.set_serving(false);
    assert_eq!(again.announcement(1_000_000), None);
}

#[test]
fn an_ipv4_literal_announces_its_ip_and_an_ipv6_literal_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg("mail_domain = \"[192.0.2.7]\"\nturn = true", d.path());
    assert!(Turn::open(&c)
        .unwrap()
        .unwrap()
        .announcement(0)
        .unwrap()
        .starts_with("192.0.2.7:3478:"));
    let c = cfg(
        "mail_domain = \"[ipv6:2001:db8::1]\"\nturn = true",
        d.path(),
    );
    assert!(matches!(Turn::open(&c), Err(TurnError::Ipv6Literal)));
}

#[test]
fn the_public_ip_wins_over_the_learned_and_the_local_address() {
    let d = tempfile::tempdir().unwrap();
    let local = [IpAddr::from([192, 168, 1, 20])];
    let public = IpAddr::from([198, 51, 100, 9]);
    let learned = Some(public);
    let c = cfg("mail_domain = \"a.org\"", d.path());
    assert_eq!(relay_ip(&c, None, &local), local[0]);
    assert_eq!(relay_ip(&c, learned, &local), public);
    let c = cfg(
        "mail_domain = \"a.org\"\nturn_public_ip = \"203.0.113.5\"",
        d.path(),
    );
    assert_eq!(
        relay_ip(&c, learned, &local),
        IpAddr::from([203, 0, 113, 5])
    );
}

#[test]
fn allocation_limits_count_per_user_per_ip_and_in_total_and_are_given_back() {
    let l = Arc::new(Limits::new(3, 2, 2));
    let a = IpAddr::from([10, 0, 0, 1]);
    let b = IpAddr::from([10, 0, 0, 2]);
    let x1 = l.acquire("1", a).unwrap();
    let _x2 = l.acquire("1", b).unwrap();
    assert!(l.acquire("1", b).is_none(), "third for one user");
    let _y1 = l.acquire("2", a).unwrap();
    assert!(l.acquire("3", a).is_none(), "third from one IP");
    assert!(
        l.acquire("3", IpAddr::from([10, 0, 0, 3])).is_none(),
        "over the total"
    );
    drop(x1);
    assert_eq!(l.total(), 2);
    assert!(l.acquire("3", IpAddr::from([10, 0, 0, 3])).is_some());
}

#[test]
fn an_allocation_over_its_rate_has_datagrams_dropped() {
    // 100 kB/s: one second's worth at once, then (almost) nothing until it refills.
    let b = Bucket::new(100_000);
    assert!((0..100).all(|_| b.take(1000)));
    assert!(!b.take(1000));
    std::thread::sleep(std::time::Duration::from_millis(30));
    assert!(b.take(1000), "refilled after 30 ms (3 kB)");
}
