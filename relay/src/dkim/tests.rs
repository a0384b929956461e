use super::*;
use crate::policy::testmsg;

const PKCS1: &str = include_str!("../../tests/data/dkim-pkcs1.pem");
const PKCS8: &str = include_str!("../../tests/data/dkim-pkcs8.pem");
/// `openssl rsa -in dkim-pkcs1.pem -pubout -outform DER | base64`, made with the key.
/// Another key, for "the published key is not the signing key".
const OTHER: &str = include_str!("../../tests/data/dkim-other.pem");
const SPKI_B64: &str = include_str!("../../tests/data/dkim-spki.b64");

/// A config for `domain` in its own data directory, resolving through a DNS server that answers
/// SERVFAIL to everything, so any lookup not answered by a pinned key fails temporarily.
fn setup(domain: &str) -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::with_domain(domain, dir.path()).unwrap();
    cfg.dns_servers = vec![crate::testkit::servfail_server()];
    (dir, cfg)
}

/// A relay for `domain` signing with the fixed test key.
fn relay_with_test_key(domain: &str) -> (tempfile::TempDir, Config, Dkim) {
    let (dir, cfg) = setup(domain);
    let path = Dkim::key_path(&cfg);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, PKCS1).unwrap();
    let dkim = Dkim::load(&cfg).unwrap();
    (dir, cfg, dkim)
}

fn dns_knowing(cfg: &Config, keys: &[&Dkim]) -> Dns {
    let dns = Dns::new(cfg).unwrap();
    for k in keys {
        dns.pin_dkim_key(&k.record_name(), &k.txt_record().unwrap())
            .unwrap();
    }
    dns
}

/// The receiving relay of these tests: a domain none of the senders use.
fn receiver() -> Config {
    Config::with_domain("rcv.test", &std::env::temp_dir()).unwrap()
}

/// The origin check as the receiving relay runs it for a sender at 192.0.2.1.
async fn verify(dns: &Dns, m: &[u8]) -> Result<(), Reply> {
    let peer = Some(std::net::IpAddr::from([192, 0, 2, 1]));
    verify_origin(dns, &receiver(), peer, m).await
}

fn reply_text(r: Result<(), Reply>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(r) => r.to_string(),
    }
}

#[tokio::test]
async fn signed_aligned_message_verifies() {
    let (_d, cfg, dkim) = relay_with_test_key("a.test");
    let dns = dns_knowing(&cfg, &[&dkim]);
    let signed = dkim
        .sign(&testmsg::encrypted("alice@a.test", "bob@b.test"))
        .unwrap();
    assert!(signed.starts_with(b"DKIM-Signature: "));
    assert_eq!(reply_text(verify(&dns, &signed).await), "ok");
}

#[tokio::test]
async fn from_domain_is_compared_case_insensitively() {
    let (_d, cfg, dkim) = relay_with_test_key("a.test");
    let dns = dns_knowing(&cfg, &[&dkim]);
    let signed = dkim
        .sign(&testmsg::encrypted("alice@A.Test", "bob@b.test"))
        .unwrap();
    assert_eq!(reply_text(verify(&dns, &signed).await), "ok");
}

#[tokio::test]
async fn valid_signature_of_another_domain_is_not_enough() {
    let (_d, cfg, other) = relay_with_test_key("other.test");
    let dns = dns_knowing(&cfg, &[&other]);
    // other.test signs a message claiming to come from a.test: the signature is valid, but
    // not aligned with the From domain.
    let signed = other
        .sign(&testmsg::encrypted("alice@a.test", "bob@b.test"))
        .unwrap();
    assert_eq!(
        reply_text(verify(&dns, &signed).await),
        "554 5.7.1 No valid DKIM signature found"
    );
}

#[tokio::test]
async fn body_changed_after_signing_is_rejected() {
    let (_d, cfg, dkim) = relay_with_test_key("a.test");
    let dns = dns_knowing(&cfg, &[&dkim]);
    let signed = dkim
        .sign(&testmsg::encrypted("alice@a.test", "bob@b.test"))
        .unwrap();
    let tampered = String::from_utf8(signed)
        .unwrap()
        .replace("Version: 1", "Version: 2")
        .into_bytes();
    assert_eq!(
        reply_text(verify(&dns, &tampered).await),
        "554 5.7.1 No valid DKIM signature found"
    );
}

#[tokio::test]
async fn oversigned_header_added_after_signing_is_rejected() {
    let (_d, cfg, dkim) = relay_with_test_key("a.test");
    let dns = dns_knowing(&cfg, &[&dkim]);
    let signed = dkim
        .sign(&testmsg::encrypted("alice@a.test", "bob@b.test"))
        .unwrap();
    let mut added = b"Reply-To: <mallory@evil.test>\r\n".to_vec();
    added.extend_from_slice(&signed);
    assert_eq!(
        reply_text(verify(&dns, &added).await),
        "554 5.7.1 No valid DKIM signature found"
    );
}

#[tokio::test]
async fn unsigned_message_is_rejected_without_dns() {
    let (_d, cfg) = setup("a.test");
    let dns = Dns::new(&cfg).unwrap();
    let m = testmsg::encrypted("alice@a.test", "bob@b.test");
    assert_eq!(
        reply_text(verify(&dns, &m).await),
        "554 5.7.1 No DKIM signature found"
    );
}

#[tokio::test]
async fn ip_literal_sender_needs_no_signature_when_it_is_the_peer() {
    let (_d, cfg) = setup("a.test");
    let dns = Dns::new(&cfg).unwrap();
    let rcv = receiver();
    for (from, peer) in [
        ("alice@[192.0.2.1]", "192.0.2.1"),
        ("alice@[IPv6:2001:db8::1]", "2001:db8::1"),
        // A dual-stack listener sees IPv4 clients as mapped IPv6 addresses.
        ("alice@[192.0.2.1]", "::ffff:192.0.2.1"),
    ] {
        let m = testmsg::encrypted(from, "bob@rcv.test");
        let peer = Some(peer.parse().unwrap());
        let r = verify_origin(&dns, &rcv, peer, &m).await;
        assert_eq!(reply_text(r), "ok", "{from}");
    }
}

/// Issue 14 item 1: a literal From was taken from anyone, so any client of port 25 could write
/// as `someone@[any address]`, also as a user of an IP-literal relay to that relay.
#[tokio::test]
async fn ip_literal_sender_that_is_not_the_peer_is_refused() {
    let (_d, cfg) = setup("a.test");
    let dns = Dns::new(&cfg).unwrap();
    let rcv = receiver();
    let m = testmsg::encrypted("alice@[10.6.6.6]", "bob@rcv.test");
    for peer in [Some("192.0.2.1".parse().unwrap()), None] {
        assert_eq!(
            reply_text(verify_origin(&dns, &rcv, peer, &m).await),
            "554 5.7.1 From domain [10.6.6.6] is not the address this message came from"
        );
    }
}

/// Issue 14 item 1: mail claiming our own domain never comes in from outside, not even with a
/// valid signature of ours (a replayed message) and not from our own address literal.
#[tokio::test]
async fn own_domain_is_refused_even_when_signed() {
    let (_d, cfg, dkim) = relay_with_test_key("a.test");
    let dns = dns_knowing(&cfg, &[&dkim]);
    let signed = dkim
        .sign(&testmsg::encrypted("alice@a.test", "bob@a.test"))
        .unwrap();
    let peer = Some("192.0.2.1".parse().unwrap());
    assert_eq!(
        reply_text(verify_origin(&dns, &cfg, peer, &signed).await),
        "554 5.7.1 Mail from a.test is only accepted from authenticated users of this relay"
    );
    let lit = Config::with_domain("[192.0.2.7]", &std::env::temp_dir()).unwrap();
    for from in ["alice@[192.0.2.7]", "MAILER-DAEMON@[192.0.2.7]"] {
        let m = testmsg::encrypted(from, "bob@[192.0.2.7]");
        // Even from our own address: our users submit with a login, never through port 25.
        let peer = Some("192.0.2.7".parse().unwrap());
        let r = verify_origin(&dns, &lit, peer, &m).await.unwrap_err();
        assert_eq!(r.code, 554, "{from}: {r}");
    }
}

#[tokio::test]
async fn headerless_message_is_a_parse_error() {
    let (_d, cfg) = setup("a.test");
    let dns = Dns::new(&cfg).unwrap();
    for m in [&b""[..], b"\r\nno header at all\r\n"] {
        assert_eq!(
            reply_text(verify(&dns, m).await),
            "500 Failed to parse message headers"
        );
    }
}

#[tokio::test]
async fn key_that_cannot_be_fetched_is_a_temporary_failure() {
    let (_d, _cfg, dkim) = relay_with_test_key("a.test");
    let (_d2, cfg) = setup("b.test");
    // No pinned key: the lookup gets SERVFAIL.
    let dns = Dns::new(&cfg).unwrap();
    let signed = dkim
        .sign(&testmsg::encrypted("alice@a.test", "bob@b.test"))
        .unwrap();
    let r = verify(&dns, &signed).await.unwrap_err();
    assert_eq!(r.code, 451, "{r}");
    assert!(r.text.starts_with("4.7.0 "), "{r}");
}

#[tokio::test]
async fn misaligned_signature_with_unreachable_key_is_still_permanent() {
    let (_d, _cfg, other) = relay_with_test_key("other.test");
    let (_d2, cfg) = setup("b.test");
    let dns = Dns::new(&cfg).unwrap();
    let signed = other
        .sign(&testmsg::encrypted("alice@a.test", "bob@b.test"))
        .unwrap();
    assert_eq!(
        reply_text(verify(&dns, &signed).await),
        "554 5.7.1 No valid DKIM signature found"
    );
}

#[tokio::test]
async fn wrong_published_key_fails_and_is_forgotten() {
    let (_d, cfg, dkim) = relay_with_test_key("a.test");
    let dns = Dns::new(&cfg).unwrap();
    // a.test's DNS answer (cached, not pinned) holds some other key.
    let other_key = {
        let (_dir, c) = setup("a.test");
        let path = Dkim::key_path(&c);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, OTHER).unwrap();
        Dkim::load(&c).unwrap().txt_record().unwrap()
    };
    use mail_auth::common::{parse::TxtRecordParser, verify::DomainKey};
    let name: Box<str> = dkim.record_name().into();
    dns.key_cache().insert(
        name.clone(),
        mail_auth::Txt::from(DomainKey::parse(other_key.as_bytes()).unwrap()),
        std::time::Instant::now() + std::time::Duration::from_secs(3600),
    );
    let signed = dkim
        .sign(&testmsg::encrypted("alice@a.test", "bob@b.test"))
        .unwrap();
    assert_eq!(
        reply_text(verify(&dns, &signed).await),
        "554 5.7.1 No valid DKIM signature found"
    );
    assert!(dns.key_cache().get(&*name).is_none());
}

#[test]
fn one_dkim_serves_all_connections() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<Dkim>();
}

#[test]
fn ip_literal_relay_neither_signs_nor_publishes() {
    let (dir, cfg) = setup("[192.0.2.1]");
    let dkim = Dkim::load_or_create(&cfg).unwrap();
    let m = testmsg::encrypted("alice@[192.0.2.1]", "bob@b.test");
    assert_eq!(dkim.sign(&m).unwrap(), m);
    assert_eq!(dkim.txt_record(), None);
    assert!(dkim.zone_lines().is_empty());
    assert!(!dir.path().join("dkim").exists());
}

#[test]
fn pkcs1_and_pkcs8_keys_load_and_publish_the_openssl_spki() {
    for pem in [PKCS1, PKCS8] {
        let (_d, cfg) = setup("a.test");
        let path = Dkim::key_path(&cfg);
        assert!(path.ends_with("dkim/opendkim.key"), "{}", path.display());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, pem).unwrap();
        let dkim = Dkim::load(&cfg).unwrap();
        assert_eq!(
            dkim.txt_record().unwrap(),
            format!("v=DKIM1;k=rsa;p={};s=email;t=s", SPKI_B64.trim())
        );
    }
}

#[test]
fn missing_or_garbage_key_file_is_reported_with_its_path() {
    let (_d, cfg) = setup("a.test");
    let e = Dkim::load(&cfg).err().unwrap().to_string();
    assert!(e.contains("opendkim.key"), "{e}");
    let path = Dkim::key_path(&cfg);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        &path,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = Dkim::load(&cfg).err().unwrap().to_string();
    assert!(e.contains("opendkim.key") && e.contains("PKCS#1"), "{e}");
}

#[tokio::test]
async fn generated_key_is_private_reused_and_still_verifies() {
    use std::os::unix::fs::PermissionsExt;
    let (_d, cfg) = setup("a.test");
    let first = Dkim::load_or_create(&cfg).unwrap();
    let path = Dkim::key_path(&cfg);
    let pem = std::fs::read_to_string(&path).unwrap();
    assert!(
        pem.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"),
        "{pem}"
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // No temporary file is left beside it.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["opendkim.key"]);

    // A restart loads the same key; what it signs verifies against the first record.
    let again = Dkim::load_or_create(&cfg).unwrap();
    assert_eq!(again.txt_record(), first.txt_record());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), pem);
    let dns = dns_knowing(&cfg, &[&first]);
    let signed = again
        .sign(&testmsg::encrypted("alice@a.test", "bob@b.test"))
        .unwrap();
    assert_eq!(reply_text(verify(&dns, &signed).await), "ok");
}

#[test]
fn signature_header_has_the_reference_parameters() {
    let (_d, _cfg, dkim) = relay_with_test_key("a.test");
    let m = b"From: <alice@a.test>\r\nTo: <bob@b.test>\r\nAutocrypt: addr=alice@a.test; keydata=AAAA\r\n\
Received: from somewhere\r\nSubject: [...]\r\nX-Custom: 1\r\n\r\nbody\r\n";
    let signed = String::from_utf8(dkim.sign(m).unwrap()).unwrap();
    let (header, rest) = signed.split_at(signed.find("\r\nFrom:").unwrap() + 2);
    assert_eq!(rest.as_bytes(), m);
    let unfolded: String = header
        .replace("\r\n\t", " ")
        .replace("\r\n ", " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for tag in [
        "a=rsa-sha256;",
        "s=opendkim;",
        "d=a.test;",
        "c=relaxed/simple;",
    ] {
        assert!(unfolded.contains(tag), "{tag} in {unfolded}");
    }
    let h = unfolded
        .split("h=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_ascii_lowercase();
    let h: Vec<&str> = h.split(':').map(str::trim).collect();
    let count = |n: &str| h.iter().filter(|x| **x == n).count();
    // Present and oversigned: twice; absent but oversigned: once; present only: once.
    assert_eq!(count("from"), 2, "{h:?}");
    assert_eq!(count("autocrypt"), 2, "{h:?}");
    assert_eq!(count("subject"), 2, "{h:?}");
    assert_eq!(count("reply-to"), 1, "{h:?}");
    assert_eq!(count("x-custom"), 1, "{h:?}");
    assert_eq!(count("received"), 0, "{h:?}");
}

#[test]
fn headers_to_sign_skips_omitted_duplicate_and_malformed_names() {
    let names = headers_to_sign(
        [
            &b"From"[..],
            b"Received",
            b"X-A",
            b"x-a",
            b"Bad Name",
            b"DKIM-Signature",
            b"\xff",
        ]
        .into_iter(),
    );
    assert_eq!(&names[..2], &["from", "x-a"]);
    assert_eq!(&names[2..], OVERSIGN);
}

#[test]
fn zone_line_splits_the_record_into_255_character_strings() {
    let (_d, _cfg, dkim) = relay_with_test_key("a.test");
    let lines = dkim.zone_lines();
    assert_eq!(lines.len(), 1);
    let line = &lines[0];
    let prefix = format!(
        "{:<40} 3600   IN  TXT    \"v=DKIM1;",
        "opendkim._domainkey.a.test."
    );
    assert!(line.starts_with(&prefix), "{line}");
    let data = &line[line.find('"').unwrap()..];
    let strings: Vec<&str> = data.split("\" \"").map(|s| s.trim_matches('"')).collect();
    assert_eq!(strings.len(), 2, "{data}");
    assert_eq!(strings[0].len(), 255);
    assert_eq!(strings.concat(), dkim.txt_record().unwrap());
}

#[test]
fn spki_wrapping_matches_der_lengths() {
    // Short and long DER lengths.
    assert_eq!(der(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
    assert_eq!(&der(0x04, &[0; 200])[..3], &[0x04, 0x81, 200]);
    assert_eq!(&der(0x04, &[0; 300])[..4], &[0x04, 0x82, 0x01, 0x2c]);
}
