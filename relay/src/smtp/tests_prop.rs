//! Property: nothing refused is ever stored. Real submission sessions (over an in-memory pipe)
//! send generated messages — encrypted, mutated, plain, forged, Secure-Join, setup messages —
//! and afterwards the recipient's INBOX holds exactly the messages that got `250`, as the
//! policy would store them, and none of those that got a refusal.

use super::tests::{inbox, relay_with, started, USER};
use super::Kind;
use crate::policy::{self, Envelope, Verdict};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestCaseError, TestRunner};
use std::cell::Cell;

const RCPT: &str = super::tests::RCPT;

fn securejoin(from: &str, to: &str, body: &str) -> Vec<u8> {
    let b = "sJpRoPbOuNdArY3k8m2q7w4z9x1c6v5b";
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: Message from {from}\r\nSecure-Join: vc-request\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{b}\"\r\n\r\n\
         --{b}\r\nContent-Type: text/plain\r\n\r\n{body}\r\n--{b}--\r\n"
    )
    .into_bytes()
}

fn setup_message(from: &str, to: &str) -> Vec<u8> {
    let b = "aSmPrOpBoUnDaRy5n2b8v1c7x4z9l3k6j";
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: Autocrypt Setup Message\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{b}\"\r\n\r\n\
         --{b}\r\nContent-Type: text/plain\r\n\r\nsetup\r\n--{b}--\r\n"
    )
    .into_bytes()
}

/// One message of a session: a base kind, edits, and whether it goes to the sender itself.
#[derive(Debug, Clone)]
struct Gen {
    kind: u8,
    edits: Vec<(usize, u8, u8)>,
}

fn base(kind: u8) -> Vec<u8> {
    match kind {
        0..=2 => policy::testmsg::encrypted(USER, RCPT),
        3 => policy::testmsg::plain(USER, RCPT),
        4 => securejoin(USER, RCPT, "Secure-Join: vc-request"),
        5 => securejoin(USER, RCPT, "Buy now"),
        6 => policy::testmsg::encrypted(RCPT, RCPT), // From is not the sender
        _ => setup_message(USER, RCPT),              // not self-sent: refused
    }
}

/// Applies the edits, then makes the message SMTP-clean: CRLF line ends only, ending in CRLF.
fn build(g: &Gen) -> Vec<u8> {
    let mut m = base(g.kind);
    for &(at, op, byte) in &g.edits {
        if m.is_empty() {
            break;
        }
        let p = at % m.len();
        match op % 3 {
            0 => m[p] ^= 1 << (byte % 8),
            1 => m.insert(p, byte),
            _ => {
                m.remove(p);
            }
        }
    }
    let text: Vec<u8> = m.into_iter().filter(|&b| b != b'\r').collect();
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Dot-stuffing for the wire.
fn stuffed(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len() + 8);
    let mut bol = true;
    for &b in m {
        if bol && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        bol = b == b'\n';
    }
    out
}

fn gen() -> impl Strategy<Value = Gen> {
    let edit = (
        any::<usize>(),
        any::<u8>(),
        prop_oneof![
            3 => prop::sample::select(b"\r\n.=-:/ A\xd2\xc1".to_vec()),
            1 => any::<u8>(),
        ],
    );
    (0u8..8, prop::collection::vec(edit, 0..3)).prop_map(|(kind, edits)| Gen { kind, edits })
}

#[test]
fn nothing_refused_is_stored() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = rt.block_on(async {
        let r = relay_with(dir.path(), |c| {
            c.max_user_send_per_minute = 1_000_000;
            c.max_user_send_burst_size = 1_000_000;
        });
        r.accounts.login(USER, super::tests::PASS).await.unwrap();
        r.accounts.login(RCPT, "password2").await.unwrap();
        r
    });
    let mut runner = TestRunner::new(PtConfig {
        cases: 200,
        failure_persistence: None,
        ..PtConfig::default()
    });
    let (stored, refused) = (Cell::new(0usize), Cell::new(0usize));
    let strategy = prop::collection::vec(gen(), 1..6);
    let result = runner.run(&strategy, |msgs| {
        rt.block_on(async {
            let before = inbox(&relay, RCPT).await;
            let mut c = started(&relay, Kind::Submissions, true).await;
            c.login().await;
            let mut want = before.clone();
            for g in &msgs {
                // The test client speaks `&str`: invalid UTF-8 becomes U+FFFD before sending.
                let m = String::from_utf8_lossy(&build(g)).into_owned().into_bytes();
                let wire = String::from_utf8_lossy(&stuffed(&m)).into_owned();
                let reply = c.mail(USER, RCPT, &wire).await;
                let env = Envelope {
                    mail_from: USER.into(),
                    rcpt_to: vec![RCPT.into()],
                    peer: None,
                };
                let verdict = policy::check_outgoing(&env, &m);
                match (&verdict, reply.get(..3)) {
                    (Verdict::Accept(bytes), Some("250")) => {
                        want.push(policy::prepare_local_delivery(bytes));
                        stored.set(stored.get() + 1);
                    }
                    (Verdict::Reject(r), Some(code)) => {
                        prop_assert_eq!(code, r.code.to_string(), "reply {}", reply);
                        refused.set(refused.get() + 1);
                    }
                    _ => {
                        return Err(TestCaseError::fail(format!(
                            "policy said {verdict:?}, session said {reply}"
                        )))
                    }
                }
            }
            let quit = c.cmd("QUIT").await;
            prop_assert!(quit.starts_with("221"), "{}", quit);
            let after = inbox(&relay, RCPT).await;
            prop_assert_eq!(after.len(), want.len());
            prop_assert!(after == want, "INBOX differs from the accepted messages");
            Ok(())
        })
    });
    let (stored, refused) = (stored.get(), refused.get());
    println!("session property: {stored} messages stored, {refused} refused");
    result.unwrap();
    assert!(
        stored > 0 && refused > 0,
        "{stored} stored, {refused} refused"
    );
}
