//! The incoming path at the delivery level: gate first, then the DKIM origin check, then the
//! store (reference §3.5). No network: the resolver only knows pinned keys and answers SERVFAIL
//! to everything else.

use super::*;
use crate::accounts::Accounts;
use crate::dkim::Dkim;
use crate::policy::testmsg;

const RCPT: &str = "rcptuser1@[127.0.0.1]";
const PKCS1: &str = include_str!("../../tests/data/dkim-pkcs1.pem");

struct Env {
    _dir: tempfile::TempDir,
    dns: Dns,
    store: Store,
    delivery: Delivery,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::with_domain("[127.0.0.1]", dir.path()).unwrap();
    cfg.max_load_1m = 1e9;
    cfg.min_available_memory = crate::config::ByteSize(0);
    cfg.min_free_disk_space = crate::config::ByteSize(0);
    cfg.dns_servers = vec![crate::testkit::servfail_server()];
    let cfg = Arc::new(cfg);
    let dns = Dns::new(&cfg).unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    Accounts::new(cfg.clone(), store.clone(), Clock::system())
        .login(RCPT, "password2")
        .await
        .unwrap();
    let delivery = Delivery::new(cfg, store.clone(), Clock::system(), dns.clone()).unwrap();
    Env {
        _dir: dir,
        dns,
        store,
        delivery,
    }
}

/// A signer for `domain` with the fixed test key (its own config, only for the key's path).
fn signer(domain: &str) -> (tempfile::TempDir, Dkim) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::with_domain(domain, dir.path()).unwrap();
    let path = Dkim::key_path(&cfg);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, PKCS1).unwrap();
    (dir, Dkim::load(&cfg).unwrap())
}

impl Env {
    async fn submit(&self, mail_from: &str, data: Vec<u8>) -> String {
        let target = self.delivery.check_rcpt(RCPT, Direction::Incoming).unwrap();
        let env = Envelope {
            mail_from: mail_from.into(),
            rcpt_to: vec![RCPT.into()],
            // The sender of the IP-literal test messages (alice@[192.0.2.1]).
            peer: Some(std::net::IpAddr::from([192, 0, 2, 1])),
        };
        self.delivery
            .submit(&env, &[target], data, Direction::Incoming)
            .await
            .to_string()
    }

    fn stored(&self) -> usize {
        let acc = self.store.account(RCPT).unwrap().unwrap();
        let mbox = self.store.mailbox(acc.id, "INBOX").unwrap().unwrap();
        self.store.messages(mbox.id).unwrap().len()
    }
}

#[tokio::test]
async fn unencrypted_is_refused_before_any_dkim_work() {
    let e = env().await;
    // Signed with a key nobody pinned: were DKIM consulted, the key lookup would hit the
    // SERVFAIL resolver and the answer would be a 451. 523 means the gate came first.
    let (_d, dkim) = signer("a.test");
    let signed = dkim.sign(&testmsg::plain("alice@a.test", RCPT)).unwrap();
    assert_eq!(
        e.submit("alice@a.test", signed).await,
        "523 Encryption Needed: Invalid Unencrypted Mail"
    );
    assert_eq!(e.stored(), 0);
}

#[tokio::test]
async fn encrypted_from_an_ip_literal_is_delivered_without_dkim() {
    let e = env().await;
    let msg = testmsg::encrypted("alice@[192.0.2.1]", RCPT);
    // MAIL FROM ≠ From is fine on incoming mail (forwarding, SRS).
    assert_eq!(
        e.submit("bounces@elsewhere.test", msg).await,
        "250 2.0.0 OK"
    );
    assert_eq!(e.stored(), 1);
}

#[tokio::test]
async fn named_domain_without_signature_is_refused_and_not_stored() {
    let e = env().await;
    let msg = testmsg::encrypted("alice@a.test", RCPT);
    assert_eq!(
        e.submit("alice@a.test", msg).await,
        "554 5.7.1 No DKIM signature found"
    );
    assert_eq!(e.stored(), 0);
}

#[tokio::test]
async fn aligned_signature_with_a_pinned_key_is_delivered() {
    let e = env().await;
    let (_d, dkim) = signer("a.test");
    e.dns
        .pin_dkim_key(&dkim.record_name(), &dkim.txt_record().unwrap())
        .unwrap();
    let signed = dkim
        .sign(&testmsg::encrypted("alice@a.test", RCPT))
        .unwrap();
    assert_eq!(e.submit("alice@a.test", signed).await, "250 2.0.0 OK");
    assert_eq!(e.stored(), 1);
}

#[tokio::test]
async fn valid_but_misaligned_signature_is_refused() {
    let e = env().await;
    let (_d, other) = signer("other.test");
    e.dns
        .pin_dkim_key(&other.record_name(), &other.txt_record().unwrap())
        .unwrap();
    // other.test's signature verifies, but the From domain is a.test.
    let signed = other
        .sign(&testmsg::encrypted("alice@a.test", RCPT))
        .unwrap();
    assert_eq!(
        e.submit("alice@a.test", signed).await,
        "554 5.7.1 No valid DKIM signature found"
    );
    assert_eq!(e.stored(), 0);
}

#[tokio::test]
async fn key_lookup_failure_is_temporary() {
    let e = env().await;
    // Nothing pinned: the resolver answers SERVFAIL, so the sender should retry later.
    let (_d, dkim) = signer("a.test");
    let signed = dkim
        .sign(&testmsg::encrypted("alice@a.test", RCPT))
        .unwrap();
    let reply = e.submit("alice@a.test", signed).await;
    assert!(reply.starts_with("451 "), "{reply}");
    assert_eq!(e.stored(), 0);
}

/// Issue 14 item 8: `x@[127.0.0.56]` was accepted at RCPT and queued, and the relay then
/// connected to its own loopback. Loopback, link-local and the like are refused at RCPT; private
/// ranges too for a relay with a domain name; `allowed_destination_networks` lets tests through.
#[tokio::test]
async fn rcpt_to_loopback_and_private_literals_is_refused() {
    let e = env().await;
    let check = |d: &Delivery, rcpt: &str| match d.check_rcpt(rcpt, Direction::Outgoing) {
        Ok(t) => format!("{t:?}"),
        Err(r) => r.to_string(),
    };
    for rcpt in [
        "x@[127.0.0.56]",
        "x@[169.254.169.254]",
        "x@[0.0.0.0]",
        "x@[224.0.0.1]",
        "x@[255.255.255.255]",
        "x@[IPv6:::1]",
        "x@[IPv6:fe80::1]",
        "x@[IPv6:::ffff:127.0.0.1]",
    ] {
        let domain = rcpt.split_once('@').unwrap().1.to_ascii_lowercase();
        assert_eq!(
            check(&e.delivery, rcpt),
            format!("550 5.7.1 Refusing to deliver to {domain}: not a public address"),
        );
    }
    // An IP-literal relay (this one) may reach its LAN, and the internet of course.
    assert_eq!(
        check(&e.delivery, "x@[10.1.2.3]"),
        "Remote(\"x@[10.1.2.3]\")"
    );
    assert_eq!(
        check(&e.delivery, "x@[192.0.2.1]"),
        "Remote(\"x@[192.0.2.1]\")"
    );

    let named = |tune: &dyn Fn(&mut Config)| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::with_domain("chat.example.org", dir.path()).unwrap();
        cfg.dns_servers = vec![crate::testkit::servfail_server()];
        tune(&mut cfg);
        // The fixed test key, so no RSA key is generated here.
        let key = Dkim::key_path(&cfg);
        std::fs::create_dir_all(key.parent().unwrap()).unwrap();
        std::fs::write(&key, PKCS1).unwrap();
        let cfg = Arc::new(cfg);
        let dns = Dns::new(&cfg).unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        (
            dir,
            Delivery::new(cfg, store, Clock::system(), dns).unwrap(),
        )
    };
    let (_d, d) = named(&|_| {});
    for rcpt in ["x@[10.1.2.3]", "x@[192.168.1.1]", "x@[IPv6:fd00::1]"] {
        assert!(check(&d, rcpt).starts_with("550 5.7.1 "), "{rcpt}");
    }
    assert_eq!(check(&d, "x@[192.0.2.1]"), "Remote(\"x@[192.0.2.1]\")");
    // The explicit allowance (tests federating on loopback).
    let (_d, d) = named(&|c| {
        c.allowed_destination_networks = vec![crate::config::IpNet::parse("127.0.0.0/8").unwrap()]
    });
    assert_eq!(check(&d, "x@[127.0.0.56]"), "Remote(\"x@[127.0.0.56]\")");
    assert!(check(&d, "x@[10.1.2.3]").starts_with("550 "));
}
