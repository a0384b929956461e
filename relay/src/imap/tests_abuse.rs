//! Limits against abuse by a logged-in client (issue 14): sequence-set size, SEARCH needle
//! length and the runtime staying responsive during a body search, push tokens per account.

use super::search::MAX_NEEDLE;
use super::sequence::MAX_RANGES;
use super::test_util::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn selected_with(env: &Env, msgs: &[&str]) -> Client {
    let mut c = Client::login(&env.relay).await;
    for m in msgs {
        let r = append(&mut c, "INBOX", m).await;
        assert!(last(&r).contains("OK"), "{r:?}");
    }
    let r = c.cmd("SELECT INBOX").await;
    assert!(last(&r).contains("OK"), "{r:?}");
    c
}

fn stars(n: usize) -> String {
    vec!["1:*"; n].join(",")
}

#[tokio::test]
async fn repeated_ranges_name_each_message_once_and_too_many_are_refused() {
    let env = env();
    let mut c = selected_with(&env, &[&simple("a"), &simple("b"), &simple("c")]).await;
    // At the cap: fine, and every message answered once.
    for cmd in ["FETCH", "UID FETCH"] {
        let r = c.cmd(&format!("{cmd} {} (FLAGS)", stars(MAX_RANGES))).await;
        assert_eq!(status(&r), "OK", "{r:?}");
        assert_eq!(r.len(), 4, "{r:?}");
    }
    let r = c
        .cmd(&format!("UID SEARCH UID {}", stars(MAX_RANGES)))
        .await;
    assert_eq!(r[0], "* SEARCH 1 2 3", "{r:?}");
    // One more range: a clear NO [LIMIT], for every command that takes a set.
    for cmd in [
        format!("FETCH {} (FLAGS)", stars(MAX_RANGES + 1)),
        format!("UID FETCH {} (FLAGS)", stars(MAX_RANGES + 1)),
        format!("UID STORE {} +FLAGS (\\Seen)", stars(MAX_RANGES + 1)),
        format!("UID COPY {} INBOX", stars(MAX_RANGES + 1)),
        format!("UID EXPUNGE {}", stars(MAX_RANGES + 1)),
        format!("SEARCH {}", stars(MAX_RANGES + 1)),
        // Across the sets of one SEARCH.
        format!(
            "SEARCH UID {} {}",
            stars(MAX_RANGES / 2 + 1),
            stars(MAX_RANGES / 2)
        ),
    ] {
        let r = c.cmd(&cmd).await;
        assert!(last(&r).contains(" NO [LIMIT] "), "{cmd}: {r:?}");
    }
    // Nothing was changed by the refused commands.
    let r = c.cmd("FETCH 1:* (FLAGS)").await;
    assert!(r.iter().all(|l| !l.contains("\\Seen")), "{r:?}");
    assert_eq!(r.len(), 4, "{r:?}");
}

#[tokio::test]
async fn search_needle_length_is_capped_and_case_folding_kept() {
    let env = env();
    let msg = "From: alice@example.org\r\nSubject: Mixed Case\r\n\r\nHello World \u{e4}\u{c4}\r\n";
    let mut c = selected_with(&env, &[msg, &simple("other")]).await;
    // ASCII letters fold, as before; other bytes compare exactly.
    let r = c.cmd("SEARCH BODY \"hello WORLD\"").await;
    assert_eq!(r[0], "* SEARCH 1", "{r:?}");
    let r = c.cmd("SEARCH TEXT \"mixed case\"").await;
    assert_eq!(r[0], "* SEARCH 1", "{r:?}");
    let r = c.cmd("SEARCH SUBJECT \"MIXED\"").await;
    assert_eq!(r[0], "* SEARCH 1", "{r:?}");
    for (needle, want) in [("\u{e4}\u{c4}", "* SEARCH 1"), ("\u{c4}\u{c4}", "* SEARCH")] {
        let cmd = format!(
            "u1 SEARCH CHARSET UTF-8 BODY {{{}+}}\r\n{needle}\r\n",
            needle.len()
        );
        c.send(cmd.as_bytes()).await;
        let r = c.until_tagged("u1").await;
        assert_eq!(r[0], want, "{r:?}");
    }
    let r = c.cmd("SEARCH BODY \"\"").await;
    assert_eq!(r[0], "* SEARCH 1 2", "{r:?}");
    // At the cap: searched; one byte more: refused.
    let r = c
        .cmd(&format!("SEARCH BODY {}", "x".repeat(MAX_NEEDLE)))
        .await;
    assert_eq!(r[0], "* SEARCH", "{r:?}");
    for key in ["BODY", "TEXT", "SUBJECT", "HEADER X-Y"] {
        let tag = "n1";
        let long = "x".repeat(MAX_NEEDLE + 1);
        c.send(format!("{tag} SEARCH {key} {{{}+}}\r\n{long}\r\n", long.len()).as_bytes())
            .await;
        let r = c.until_tagged(tag).await;
        assert!(last(&r).contains(" NO [LIMIT] "), "{key}: {r:?}");
    }
}

/// A body search with a long, almost-matching needle must neither take quadratic time nor run
/// on the async worker: other sessions (here a ticker on the same single-threaded runtime,
/// as a new connection's greeting would be) keep being served.
#[tokio::test]
async fn body_search_does_not_stall_the_runtime() {
    let env = env();
    let big = format!(
        "From: alice@example.org\r\nSubject: big\r\n\r\n{}\r\n",
        "a".repeat(512 * 1024)
    );
    let mut c = selected_with(&env, &[&big, &big]).await;
    let worst = Arc::new(Mutex::new(Duration::ZERO));
    let ticker = {
        let worst = worst.clone();
        tokio::spawn(async move {
            let mut prev = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let now = Instant::now();
                let mut w = worst.lock().unwrap();
                *w = (*w).max(now - prev);
                prev = now;
            }
        })
    };
    let needle = format!("{}b", "a".repeat(MAX_NEEDLE - 1));
    let started = Instant::now();
    let r = c.cmd(&format!("SEARCH BODY {needle}")).await;
    let took = started.elapsed();
    assert_eq!(r[0], "* SEARCH", "{r:?}");
    let r = c
        .cmd(&format!("SEARCH TEXT {}", "A".repeat(MAX_NEEDLE)))
        .await;
    assert_eq!(r[0], "* SEARCH 1 2", "{r:?}");
    ticker.abort();
    let worst = *worst.lock().unwrap();
    assert!(
        worst < Duration::from_millis(300),
        "the runtime stalled for {worst:?} (search took {took:?})"
    );
}

#[tokio::test]
async fn device_tokens_per_account_are_capped_oldest_dropped() {
    // The default push_max_tokens (20).
    let env = env();
    let mut c = Client::login(&env.relay).await;
    for i in 1..=25 {
        let r = c
            .cmd(&format!(
                "SETMETADATA INBOX (/private/devicetoken \"tok{i}\")"
            ))
            .await;
        assert_eq!(status(&r), "OK", "{r:?}");
    }
    let a = env.relay.store.account(USER).unwrap().unwrap();
    let kept: Vec<&str> = a.device_tokens.iter().map(|t| t.token.as_str()).collect();
    let want: Vec<String> = (6..=25).map(|i| format!("tok{i}")).collect();
    assert_eq!(kept, want);
    let r = c.cmd("GETMETADATA INBOX /private/devicetoken").await;
    assert_eq!(
        r[0],
        format!(
            "* METADATA INBOX (/private/devicetoken \"{}\")",
            want.join(" ")
        )
    );
    // Setting a kept token again makes it the most recent, so the next new one drops another.
    c.cmd("SETMETADATA INBOX (/private/devicetoken \"tok6\")")
        .await;
    c.cmd("SETMETADATA INBOX (/private/devicetoken \"tok26\")")
        .await;
    let a = env.relay.store.account(USER).unwrap().unwrap();
    let kept: Vec<&str> = a.device_tokens.iter().map(|t| t.token.as_str()).collect();
    assert_eq!(kept.len(), 20);
    assert_eq!(&kept[..2], &["tok8", "tok9"]);
    assert_eq!(&kept[18..], &["tok6", "tok26"]);
}
