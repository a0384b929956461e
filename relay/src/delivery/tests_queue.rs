//! The queue over real sockets: a sending relay `[127.0.0.2]` and a receiving relay
//! `[127.0.0.3]` in one process, talking HTTPS `/mxdeliv` and SMTP on loopback ports.

use super::*;
use crate::policy::testmsg;
use crate::Relay;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;

const ALICE: &str = "alice0001@[127.0.0.2]";
const BOB: &str = "bobby0001@[127.0.0.3]";

struct Receiver {
    relay: Arc<Relay>,
    smtp: SocketAddr,
    https: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Two free ports on 127.0.0.3, remembered so the receiver can come back on the same ones.
async fn free_ports() -> (SocketAddr, SocketAddr) {
    let a = TcpListener::bind("127.0.0.3:0").await.unwrap();
    let b = TcpListener::bind("127.0.0.3:0").await.unwrap();
    (a.local_addr().unwrap(), b.local_addr().unwrap())
}

async fn receiver(
    dir: &std::path::Path,
    smtp: SocketAddr,
    https: SocketAddr,
    web: bool,
) -> Receiver {
    let relay = crate::testkit::test_relay(dir, |c| {
        c.mail_domain = "[127.0.0.3]".into();
    })
    .unwrap();
    relay.accounts.login(BOB, "password2").await.unwrap();
    let mut tasks = Vec::new();
    let l = TcpListener::bind(smtp).await.unwrap();
    tasks.push(tokio::spawn(crate::smtp::serve(
        relay.clone(),
        l,
        crate::smtp::Kind::Mx,
    )));
    if web {
        let l = TcpListener::bind(https).await.unwrap();
        tasks.push(tokio::spawn(crate::alpn::serve(relay.clone(), l, true)));
    }
    Receiver {
        relay,
        smtp,
        https,
        tasks,
    }
}

impl Receiver {
    fn stop(self) -> (SocketAddr, SocketAddr) {
        for t in &self.tasks {
            t.abort();
        }
        (self.smtp, self.https)
    }

    async fn inbox(&self, addr: &str) -> Vec<Vec<u8>> {
        inbox(&self.relay, addr).await
    }
}

use crate::testkit::inbox;

/// The sending relay, with its queue running; `tune` sets retry and lifetime.
async fn sender(
    dir: &std::path::Path,
    smtp: SocketAddr,
    https: SocketAddr,
    tune: impl FnOnce(&mut Config),
) -> Arc<Relay> {
    let relay = crate::testkit::test_relay(dir, |c| {
        c.mail_domain = "[127.0.0.2]".into();
        c.outbound_smtp_port = smtp.port();
        c.outbound_https_port = https.port();
        c.queue_retry_initial = crate::config::Seconds(1);
        c.queue_retry_max = crate::config::Seconds(2);
        // The receiver is on 127.0.0.3, which a relay only delivers to when told.
        c.allowed_destination_networks = vec![crate::config::IpNet::parse("127.0.0.0/8").unwrap()];
        tune(c);
    })
    .unwrap();
    relay.accounts.login(ALICE, "password1").await.unwrap();
    tokio::spawn(relay.delivery.queue().clone().run(relay.shutdown.clone()));
    relay
}

async fn send(relay: &Relay, to: &[&str], subject: &str) -> Reply {
    let mut targets = Vec::new();
    for t in to {
        targets.push(relay.delivery.check_rcpt(t, Direction::Outgoing).unwrap());
    }
    let env = Envelope {
        mail_from: ALICE.into(),
        rcpt_to: to.iter().map(|s| s.to_string()).collect(),
        peer: None,
    };
    let msg = String::from_utf8(testmsg::encrypted(ALICE, to[0]))
        .unwrap()
        .replace(
            "Subject: [...]",
            &format!("Message-ID: <{subject}@x>\r\nSubject: [...]"),
        );
    relay
        .delivery
        .submit(&env, &targets, msg.into_bytes(), Direction::Outgoing)
        .await
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    for _ in 0..300 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

fn count_id(msgs: &[Vec<u8>], id: &str) -> usize {
    let needle = format!("Message-ID: <{id}@x>");
    msgs.iter()
        .filter(|m| String::from_utf8_lossy(m).contains(&needle))
        .count()
}

#[tokio::test]
async fn retries_until_the_peer_is_back() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (smtp, https) = free_ports().await;
    let tx = sender(da.path(), smtp, https, |_| {}).await;

    // Nobody listening: the message waits, with the failure recorded.
    assert_eq!(send(&tx, &[BOB], "m2").await.code, 250);
    until("a failed attempt", || async {
        tx.store
            .queued()
            .unwrap()
            .first()
            .is_some_and(|q| q.attempts >= 1)
    })
    .await;
    let q = tx.store.queued().unwrap();
    assert!(q[0].last_error.starts_with('4'), "{:?}", q[0].last_error);

    // Back, without HTTPS: the retry goes over SMTP.
    let rx = receiver(db.path(), smtp, https, false).await;
    until("m2 over SMTP after a retry", || async {
        count_id(&rx.inbox(BOB).await, "m2") == 1
    })
    .await;
    until("the queue to empty", || async {
        tx.store.queued().unwrap().is_empty()
    })
    .await;
    assert_eq!(rx.inbox(BOB).await.len(), 1, "m2 exactly once");
    assert!(
        inbox(&tx, ALICE).await.is_empty(),
        "no bounce for delivered mail"
    );
    rx.stop();
}

#[tokio::test]
async fn unknown_recipient_bounces_once_to_the_sender() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (smtp, https) = free_ports().await;
    let rx = receiver(db.path(), smtp, https, true).await;
    let tx = sender(da.path(), smtp, https, |_| {}).await;

    let nobody = "nobody001@[127.0.0.3]";
    assert_eq!(send(&tx, &[BOB, nobody], "m3").await.code, 250);
    until("the queue to empty", || async {
        tx.store.queued().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        count_id(&rx.inbox(BOB).await, "m3"),
        1,
        "the known recipient still gets it"
    );
    let bounces = inbox(&tx, ALICE).await;
    assert_eq!(bounces.len(), 1);
    let b = String::from_utf8_lossy(&bounces[0]);
    assert!(
        b.contains("From: Mail Delivery System <MAILER-DAEMON@[127.0.0.2]>"),
        "{b}"
    );
    assert!(
        b.contains(
            "Final-Recipient: rfc822; nobody001@[127.0.0.3]\r\nAction: failed\r\nStatus: 5.1.1"
        ),
        "{b}"
    );
    assert!(b.contains("Message-ID: <m3@x>"), "{b}");
    assert!(
        !b.contains(&format!("Final-Recipient: rfc822; {BOB}")),
        "only the failed recipient is reported: {b}"
    );
    rx.stop();
}

#[tokio::test]
async fn mail_that_outlives_the_queue_lifetime_bounces() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (smtp, https) = free_ports().await;
    let _ = db;
    let tx = sender(da.path(), smtp, https, |c| {
        c.queue_lifetime = crate::config::Seconds(2);
    })
    .await;
    assert_eq!(send(&tx, &[BOB], "m4").await.code, 250);
    until("the queue to give up", || async {
        tx.store.queued().unwrap().is_empty()
    })
    .await;
    let bounces = inbox(&tx, ALICE).await;
    assert_eq!(bounces.len(), 1);
    let b = String::from_utf8_lossy(&bounces[0]);
    assert!(b.contains("Status: 5.4.7"), "{b}");
    assert!(b.contains("gave up after 2 seconds"), "{b}");
}

#[tokio::test]
async fn a_restart_resumes_the_queue() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (smtp, https) = free_ports().await;
    {
        // Queue ten messages with nobody listening, then drop the relay as a crash would.
        let tx = sender(da.path(), smtp, https, |c| {
            c.queue_retry_initial = crate::config::Seconds(3600);
            c.queue_retry_max = crate::config::Seconds(3600);
        })
        .await;
        for i in 0..10 {
            assert_eq!(send(&tx, &[BOB], &format!("r{i}")).await.code, 250);
        }
        until("ten failed attempts", || async {
            tx.store
                .queued()
                .unwrap()
                .iter()
                .filter(|q| q.attempts == 1)
                .count()
                == 10
        })
        .await;
        tx.shutdown.trigger();
    }
    let rx = receiver(db.path(), smtp, https, true).await;
    // A new process (once the old one let go of the store): a restart retries everything at once
    // instead of waiting out the hour-long delay.
    let mut tries = 0;
    let tx = loop {
        let mut cfg = crate::testkit::test_config(da.path()).unwrap();
        cfg.mail_domain = "[127.0.0.2]".into();
        cfg.outbound_smtp_port = smtp.port();
        cfg.outbound_https_port = https.port();
        cfg.queue_retry_initial = crate::config::Seconds(3600);
        cfg.queue_retry_max = crate::config::Seconds(3600);
        cfg.allowed_destination_networks =
            vec![crate::config::IpNet::parse("127.0.0.0/8").unwrap()];
        match crate::server::build(cfg) {
            Ok(r) => break r,
            Err(e) if tries < 50 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:#}"),
        }
    };
    assert_eq!(tx.store.queued().unwrap().len(), 10, "the queue survived");
    tokio::spawn(tx.delivery.queue().clone().run(tx.shutdown.clone()));
    assert_eq!(send(&tx, &[BOB], "r10").await.code, 250);
    until("all eleven", || async {
        let m = rx.inbox(BOB).await;
        (0..11).all(|i| count_id(&m, &format!("r{i}")) == 1)
    })
    .await;
    until("the queue to empty", || async {
        tx.store.queued().unwrap().is_empty()
    })
    .await;
    let m = rx.inbox(BOB).await;
    assert_eq!(m.len(), 11, "each exactly once");
    rx.stop();
}
