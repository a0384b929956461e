//! Session tests: greeting, capabilities, login, STARTTLS rules, mailboxes, METADATA, QUOTA,
//! IDLE and bad input. Message-level tests are in `tests_fetch.rs`.

use super::test_util::*;
use std::sync::Arc;
use std::time::Duration;

fn caps_of(line: &str) -> Vec<String> {
    line.split([' ', '[', ']'])
        .map(|s| s.to_ascii_uppercase())
        .collect()
}

const COMMON: &[&str] = &[
    "IMAP4REV1",
    "IDLE",
    "METADATA",
    "XDELTAPUSH",
    "XCHATMAIL",
    "QUOTA",
    "MOVE",
    "UIDPLUS",
    "CONDSTORE",
    "ENABLE",
    "ID",
    "NAMESPACE",
    "LITERAL+",
    "UNSELECT",
    "SPECIAL-USE",
];

fn assert_common(caps: &[String]) {
    for c in COMMON {
        assert!(caps.iter().any(|x| x == c), "{c} missing in {caps:?}");
    }
    assert!(!caps.iter().any(|x| x.starts_with("COMPRESS")), "{caps:?}");
}

#[tokio::test]
async fn capabilities_before_and_after_login() {
    let env = env();
    let (mut c, greeting) = Client::connect(&env.relay, true).await;
    assert!(greeting.starts_with("* OK [CAPABILITY "), "{greeting}");
    assert!(greeting.ends_with("] relaybox ready"), "{greeting}");
    let pre = caps_of(&greeting);
    assert_common(&pre);
    assert!(pre.contains(&"AUTH=PLAIN".to_string()));
    assert!(!pre.contains(&"LOGINDISABLED".to_string()));
    assert!(!pre.contains(&"STARTTLS".to_string()));

    let r = c.cmd("CAPABILITY").await;
    assert!(r[0].starts_with("* CAPABILITY "), "{r:?}");
    assert_common(&caps_of(&r[0]));
    assert!(status(&r) == "OK");

    let r = c.cmd(&format!("LOGIN {USER} {PASS}")).await;
    let ok = last(&r);
    assert!(ok.starts_with("t2 OK [CAPABILITY "), "{ok}");
    assert_common(&caps_of(ok));
    let r = c.cmd("CAPABILITY").await;
    assert_common(&caps_of(&r[0]));
}

#[tokio::test]
async fn plaintext_143_refuses_login_until_starttls() {
    let env = env();
    let (mut c, greeting) = Client::connect(&env.relay, false).await;
    let caps = caps_of(&greeting);
    assert_common(&caps);
    assert!(caps.contains(&"STARTTLS".to_string()));
    assert!(caps.contains(&"LOGINDISABLED".to_string()));
    assert!(!caps.iter().any(|c| c.starts_with("AUTH=")), "{caps:?}");

    let r = c.cmd(&format!("LOGIN {USER} {PASS}")).await;
    assert!(status(&r) == "NO", "{r:?}");
    let r = c
        .cmd("AUTHENTICATE PLAIN AGFiY2RlZmdoaQBwYXNzd29yZDEyMw==")
        .await;
    assert!(status(&r) == "NO", "{r:?}");
    let r = c.cmd("SELECT INBOX").await;
    assert!(status(&r) == "BAD", "{r:?}");
    // No account was created by the refused attempts.
    assert!(env.relay.store.account(USER).unwrap().is_none());
    let r = c.cmd("STARTTLS").await;
    assert!(status(&r) == "OK", "{r:?}");
    // The session hands the connection back for the TLS handshake.
    let exit = tokio::time::timeout(Duration::from_secs(5), &mut c.session)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit, super::session::Exit::StartTls);
}

#[tokio::test]
async fn login_accepts_escapes_literals_and_non_sync_literals() {
    let env = env();
    let (mut c, _) = Client::connect(&env.relay, true).await;
    // Password: pa"ss\word1 (quoted with escapes)
    let r = c
        .cmd(&format!("LOGIN \"{USER}\" \"pa\\\"ss\\\\word1\""))
        .await;
    assert!(status(&r) == "OK", "{r:?}");

    let (mut c, _) = Client::connect(&env.relay, true).await;
    let pw = "pa\"ss\\word1";
    c.send(format!("a1 LOGIN {USER} {{{}}}\r\n", pw.len()).as_bytes())
        .await;
    let cont = c.line().await;
    assert!(cont.starts_with("+ "), "{cont}");
    c.send(format!("{pw}\r\n").as_bytes()).await;
    let r = c.until_tagged("a1").await;
    assert!(last(&r).starts_with("a1 OK"), "{r:?}");

    let (mut c, _) = Client::connect(&env.relay, true).await;
    c.send(
        format!(
            "a2 LOGIN {{{}+}}\r\n{USER} {{{}+}}\r\n{pw}\r\n",
            USER.len(),
            pw.len()
        )
        .as_bytes(),
    )
    .await;
    let r = c.until_tagged("a2").await;
    assert_eq!(r.len(), 1, "no continuation for LITERAL+: {r:?}");
    assert!(last(&r).starts_with("a2 OK"), "{r:?}");
}

#[tokio::test]
async fn wrong_password_is_authenticationfailed() {
    let env = env();
    drop(Client::login(&env.relay).await);
    let (mut c, _) = Client::connect(&env.relay, true).await;
    let r = c.cmd(&format!("LOGIN {USER} wrongpassword")).await;
    assert!(
        last(&r).starts_with("t1 NO [AUTHENTICATIONFAILED]"),
        "{r:?}"
    );
    let r = c.cmd("SELECT INBOX").await;
    assert!(status(&r) == "BAD", "{r:?}");
    // Three strikes end the connection.
    c.cmd(&format!("LOGIN {USER} wrongpassword")).await;
    let r = c.cmd(&format!("LOGIN {USER} wrongpassword")).await;
    assert!(status(&r) == "NO", "{r:?}");
    assert!(c.line().await.starts_with("* BYE"));
    assert!(c.closed().await);
}

#[tokio::test]
async fn authenticate_plain_with_and_without_initial_response() {
    use base64::Engine;
    let env = env();
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{PASS}"));
    let (mut c, _) = Client::connect(&env.relay, true).await;
    let r = c.cmd(&format!("AUTHENTICATE PLAIN {b64}")).await;
    assert!(status(&r) == "OK", "{r:?}");
    // Core reads the capabilities from this reply and skips its CAPABILITY round trip.
    assert!(last(&r).starts_with("t1 OK [CAPABILITY "), "{r:?}");
    let caps = caps_of(last(&r));
    assert_common(&caps);
    assert!(!caps.iter().any(|c| c.starts_with("AUTH=")), "{caps:?}");

    let (mut c, _) = Client::connect(&env.relay, true).await;
    c.send(b"a1 AUTHENTICATE PLAIN\r\n").await;
    assert_eq!(c.line().await, "+ ");
    c.send(format!("{b64}\r\n").as_bytes()).await;
    let r = c.until_tagged("a1").await;
    assert!(last(&r).starts_with("a1 OK"), "{r:?}");

    let (mut c, _) = Client::connect(&env.relay, true).await;
    c.send(b"a1 AUTHENTICATE PLAIN\r\n").await;
    assert_eq!(c.line().await, "+ ");
    c.send(b"*\r\n").await;
    let r = c.until_tagged("a1").await;
    assert!(last(&r).starts_with("a1 BAD"), "{r:?}");
}

#[tokio::test]
async fn id_namespace_noop_logout() {
    let env = env();
    let mut c = Client::login(&env.relay).await;
    let r = c.cmd("ID (\"name\" \"Delta Chat\")").await;
    assert_eq!(r[0], "* ID (\"name\" \"relaybox\")");
    let r = c.cmd("NAMESPACE").await;
    assert_eq!(r[0], "* NAMESPACE ((\"\" \"/\")) NIL NIL");
    let r = c.cmd("ENABLE CONDSTORE").await;
    assert_eq!(r[0], "* ENABLED CONDSTORE");
    let r = c.cmd("NOOP").await;
    assert!(status(&r) == "OK");
    let r = c.cmd("LOGOUT").await;
    assert!(r[0].starts_with("* BYE"), "{r:?}");
    assert!(status(&r) == "OK");
    assert!(c.closed().await);
}

#[tokio::test]
async fn select_reports_what_delta_chat_needs() {
    let env = env();
    let mut c = Client::login(&env.relay).await;
    append(&mut c, "INBOX", &simple("one")).await;
    let r = c.cmd("SELECT INBOX (CONDSTORE)").await;
    let all = r.join("\n");
    for want in [
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
        "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)]",
        "* 1 EXISTS",
        "* 0 RECENT",
        "* OK [UIDVALIDITY ",
        "* OK [UIDNEXT 2]",
        "* OK [HIGHESTMODSEQ ",
        "OK [READ-WRITE]",
    ] {
        assert!(all.contains(want), "{want} missing in {all}");
    }
    let r = c.cmd("EXAMINE INBOX").await;
    assert!(last(&r).contains("[READ-ONLY]"), "{r:?}");
    let r = c.cmd("SELECT nosuch").await;
    assert!(last(&r).contains("NO"), "{r:?}");
    // A failed SELECT leaves nothing selected.
    let r = c.cmd("FETCH 1 FLAGS").await;
    assert!(last(&r).contains("BAD"), "{r:?}");
}

#[tokio::test]
async fn list_status_create_rename_delete() {
    let env = env();
    let mut c = Client::login(&env.relay).await;
    let r = c.cmd("LIST \"\" \"\"").await;
    assert_eq!(r[0], "* LIST (\\Noselect) \"/\" \"\"");
    for name in ["Sent", "Trash", "DeltaChat", "a/b"] {
        let r = c.cmd(&format!("CREATE {name}")).await;
        assert!(last(&r).contains("OK"), "{r:?}");
    }
    let r = c.cmd("CREATE Sent").await;
    assert!(last(&r).contains("NO"), "{r:?}");
    let r = c.cmd("LIST \"\" \"*\"").await;
    let all = r.join("\n");
    assert!(r[0].contains("INBOX"), "{all}");
    assert!(
        all.contains("* LIST (\\HasNoChildren \\Sent) \"/\" Sent"),
        "{all}"
    );
    assert!(
        all.contains("* LIST (\\HasNoChildren \\Trash) \"/\" Trash"),
        "{all}"
    );
    assert!(all.contains("\"/\" DeltaChat"), "{all}");
    let r = c.cmd("LIST \"\" \"%\"").await;
    assert!(!r.join("\n").contains("a/b"), "{r:?}");

    append(&mut c, "INBOX", &simple("s1")).await;
    let r = c
        .cmd("STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN RECENT HIGHESTMODSEQ)")
        .await;
    assert!(
        r[0].starts_with("* STATUS INBOX (MESSAGES 1 UIDNEXT 2 UIDVALIDITY "),
        "{r:?}"
    );
    assert!(r[0].contains("UNSEEN 1 RECENT 0 HIGHESTMODSEQ "), "{r:?}");

    let r = c.cmd("RENAME DeltaChat Other").await;
    assert!(last(&r).contains("OK"), "{r:?}");
    let r = c.cmd("SUBSCRIBE Other").await;
    assert!(last(&r).contains("OK"), "{r:?}");
    let r = c.cmd("LSUB \"\" \"*\"").await;
    assert!(r.join("\n").contains("Other"), "{r:?}");
    let r = c.cmd("DELETE Other").await;
    assert!(last(&r).contains("OK"), "{r:?}");
    let r = c.cmd("DELETE INBOX").await;
    assert!(last(&r).contains("NO"), "{r:?}");
    let r = c.cmd("STATUS Other (MESSAGES)").await;
    assert!(last(&r).contains("NO"), "{r:?}");
}

#[tokio::test]
async fn append_to_missing_mailbox_creates_nothing() {
    let env = env();
    let mut c = Client::login(&env.relay).await;
    let r = append(&mut c, "Nowhere", &simple("x")).await;
    assert!(last(&r).contains("NO [TRYCREATE]"), "{r:?}");
    let id = account_id(&env.relay);
    assert!(env.relay.store.mailbox(id, "Nowhere").unwrap().is_none());
}

#[tokio::test]
async fn metadata_tokens_and_server_entries() {
    let env = env_with(|c| c.privacy_mail = "privacy@example.org".into());
    let mut c = Client::login(&env.relay).await;
    let r = c.cmd("GETMETADATA INBOX /private/devicetoken").await;
    assert_eq!(r[0], "* METADATA INBOX (/private/devicetoken NIL)");
    let r = c
        .cmd("SETMETADATA INBOX (/private/devicetoken \"1111\")")
        .await;
    assert!(last(&r).ends_with(" OK Setmetadata completed"), "{r:?}");
    c.cmd("SETMETADATA INBOX (/private/devicetoken \"2222\")")
        .await;
    // Sending the same token again does not duplicate it.
    c.cmd("SETMETADATA INBOX (/private/devicetoken \"2222\")")
        .await;
    let r = c.cmd("GETMETADATA INBOX /private/devicetoken").await;
    assert_eq!(
        r[0],
        "* METADATA INBOX (/private/devicetoken \"1111 2222\")"
    );
    assert!(last(&r).contains("OK"));

    let r = c
        .cmd("GETMETADATA \"\" (/shared/comment /shared/admin /shared/vendor/deltachat/irohrelay /shared/vendor/deltachat/turn /shared/vendor/deltachat/maxsmtprecipients /shared/vendor/deltachat/appversions)")
        .await;
    let (head, appversions) = r[0]
        .split_once(" /shared/vendor/deltachat/appversions ")
        .unwrap();
    assert_eq!(
        head,
        "* METADATA \"\" (/shared/comment NIL /shared/admin \"mailto:privacy@example.org\" \
         /shared/vendor/deltachat/irohrelay NIL /shared/vendor/deltachat/turn NIL \
         /shared/vendor/deltachat/maxsmtprecipients \"1000\""
    );
    assert!(
        appversions.starts_with(r#""{\"clients\":[{\"clientId\":\"deltachat\","#),
        "{appversions}"
    );
    let r = c
        .cmd("GETMETADATA \"\" /shared/vendor/deltachat/maxsmtprecipients")
        .await;
    assert_eq!(
        r[0],
        "* METADATA \"\" (/shared/vendor/deltachat/maxsmtprecipients \"1000\")"
    );
    // A 4096-byte token (Delta Chat's maximum) as a literal.
    let token = "t".repeat(4096);
    c.send(b"m1 SETMETADATA INBOX (/private/devicetoken {4096}\r\n")
        .await;
    assert!(c.line().await.starts_with("+ "));
    c.send(format!("{token})\r\n").as_bytes()).await;
    let r = c.until_tagged("m1").await;
    assert!(last(&r).starts_with("m1 OK"), "{r:?}");
    let long = "t".repeat(4097);
    let r = c
        .cmd(&format!(
            "SETMETADATA INBOX (/private/devicetoken \"{long}\")"
        ))
        .await;
    assert!(last(&r).contains("NO"), "{r:?}");
}

#[tokio::test]
async fn setmetadata_accepts_a_space_before_the_closing_paren_as_dovecot_does() {
    let env = env();
    let mut c = Client::login(&env.relay).await;
    // The reference's test_set_get_metadata sends exactly this.
    let r = c
        .cmd("SETMETADATA INBOX (/private/devicetoken \"1111\" )")
        .await;
    assert!(last(&r).ends_with(" OK Setmetadata completed"), "{r:?}");
    let r = c.cmd("GETMETADATA INBOX /private/devicetoken").await;
    assert_eq!(r[0], "* METADATA INBOX (/private/devicetoken \"1111\")");
    // Only spaces outside the string go: the token keeps its own.
    c.cmd("SETMETADATA INBOX (/private/devicetoken \"2 2 )\"  )")
        .await;
    let r = c.cmd("GETMETADATA INBOX /private/devicetoken").await;
    assert_eq!(
        r[0],
        "* METADATA INBOX (/private/devicetoken \"1111 2 2 )\")"
    );
    let r = c.cmd("GETMETADATA INBOX (/private/devicetoken )").await;
    assert!(last(&r).ends_with(" OK Getmetadata completed"), "{r:?}");
    let r = c
        .cmd("SETMETADATA INBOX /private/devicetoken \"x\" )")
        .await;
    assert!(last(&r).contains(" BAD "), "{r:?}");
}

/// The value of one server entry from a GETMETADATA reply line, unquoted.
fn server_value(line: &str, entry: &str) -> String {
    let start = format!("* METADATA \"\" ({entry} \"");
    let v = line
        .strip_prefix(&start)
        .and_then(|v| v.strip_suffix("\")"))
        .unwrap_or_else(|| panic!("{line}"));
    v.replace("\\\"", "\"").replace("\\\\", "\\")
}

#[tokio::test]
async fn appversions_are_served_from_the_operator_file_else_the_shipped_default() {
    const Q: &str = "GETMETADATA \"\" /shared/vendor/deltachat/appversions";
    const E: &str = "/shared/vendor/deltachat/appversions";
    let env = env();
    let mut c = Client::login(&env.relay).await;
    let r = c.cmd(Q).await;
    let v: serde_json::Value = serde_json::from_str(&server_value(&r[0], E)).unwrap();
    assert_eq!(v["clients"][0]["clientId"], "deltachat", "{v}");
    assert!(
        v["clients"][0]["sources"][0]["versionInteger"].is_u64(),
        "{v}"
    );
    assert!(last(&r).ends_with(" OK Getmetadata completed"), "{r:?}");

    let file = env.relay.cfg.data_dir.join("appversions.json");
    std::fs::write(
        &file,
        "{\n  \"clients\": [ { \"clientId\": \"deltachat\", \"sources\": [ {\n \
         \"sourceId\": \"fdroid\", \"versionInteger\": 770, \"versionString\": \"2.65.0\",\n \
         \"downloadUrl\": \"https://download.delta.chat/android/x 1.apk\" } ] } ]\n}\n",
    )
    .unwrap();
    let r = c.cmd(Q).await;
    assert_eq!(
        server_value(&r[0], E),
        r#"{"clients":[{"clientId":"deltachat","sources":[{"sourceId":"fdroid","versionInteger":770,"versionString":"2.65.0","downloadUrl":"https://download.delta.chat/android/x 1.apk"}]}]}"#
    );
    // Not the reference's shape: NIL, as the reference answers bad JSON.
    std::fs::write(&file, "{\"clients\": \"soon\"}").unwrap();
    let r = c.cmd(Q).await;
    assert_eq!(r[0], format!("* METADATA \"\" ({E} NIL)"));
    assert!(last(&r).ends_with(" OK Getmetadata completed"), "{r:?}");
}

#[tokio::test]
async fn configured_iroh_relay_and_turn_server_are_announced() {
    let env = env_with(|c| {
        c.iroh_relay = Some("https://iroh.example.org".into());
        c.turn_server = Some("example.org:3478:user:secret".into());
        c.privacy_mail = "mailto:admin@example.org".into();
    });
    let mut c = Client::login(&env.relay).await;
    let r = c
        .cmd("GETMETADATA \"\" (/shared/vendor/deltachat/irohrelay /shared/vendor/deltachat/turn /shared/admin /shared/vendor/deltachat/maxsmtprecipients)")
        .await;
    assert_eq!(
        r[0],
        "* METADATA \"\" (/shared/vendor/deltachat/irohrelay \"https://iroh.example.org\" \
         /shared/vendor/deltachat/turn \"example.org:3478:user:secret\" \
         /shared/admin \"mailto:admin@example.org\" \
         /shared/vendor/deltachat/maxsmtprecipients \"1000\")"
    );
    assert!(last(&r).contains("OK"), "{r:?}");
    // Server entries are not readable as mailbox entries.
    let r = c
        .cmd("GETMETADATA INBOX /shared/vendor/deltachat/irohrelay")
        .await;
    assert_eq!(
        r[0],
        "* METADATA INBOX (/shared/vendor/deltachat/irohrelay NIL)"
    );
}

#[tokio::test]
async fn quota_root_comes_with_its_quota() {
    let env = env();
    let mut c = Client::login(&env.relay).await;
    append(&mut c, "INBOX", &simple("q")).await;
    let r = c.cmd("GETQUOTAROOT INBOX").await;
    assert_eq!(r[0], "* QUOTAROOT INBOX \"\"");
    let limit = env.relay.cfg.max_mailbox_size.0 / 1024;
    assert_eq!(r[1], format!("* QUOTA \"\" (STORAGE 1 {limit})"));
    assert!(last(&r).contains("OK"));
    let r = c.cmd("GETQUOTA \"\"").await;
    assert_eq!(r[0], format!("* QUOTA \"\" (STORAGE 1 {limit})"));
}

#[tokio::test]
async fn idle_reports_new_mail_at_once_and_answers_done() {
    let env = env();
    let mut c = Client::login(&env.relay).await;
    c.cmd("SELECT INBOX").await;
    c.send(b"i1 IDLE\r\n").await;
    assert_eq!(c.line().await, "+ idling");
    assert!(c.line_within(Duration::from_millis(200)).await.is_none());
    let relay = env.relay.clone();
    let id = account_id(&relay);
    tokio::spawn(async move {
        let data: Arc<[u8]> = Arc::from(simple("pushed").into_bytes());
        relay.store.deliver(&[id], data).await.unwrap();
    });
    assert_eq!(c.line().await, "* 1 EXISTS");
    c.send(b"DONE\r\n").await;
    let r = c.until_tagged("i1").await;
    assert_eq!(last(&r), "i1 OK Idle completed");
    // Nothing more is pending: the next NOOP is quiet.
    let r = c.cmd("NOOP").await;
    assert_eq!(r.len(), 1, "{r:?}");
}

#[tokio::test]
async fn idle_keepalive_after_silence() {
    let env = env();
    let (mut c, _) = Client::connect_with(&env.relay, true, |s| {
        s.keepalive = Duration::from_millis(300);
    })
    .await;
    c.cmd(&format!("LOGIN {USER} {PASS}")).await;
    c.cmd("SELECT INBOX").await;
    c.send(b"i1 IDLE\r\n").await;
    assert_eq!(c.line().await, "+ idling");
    assert_eq!(c.line().await, "* OK Still here");
    assert_eq!(c.line().await, "* OK Still here");
    c.send(b"DONE\r\n").await;
    assert_eq!(last(&c.until_tagged("i1").await), "i1 OK Idle completed");
    assert_eq!(super::idle::KEEPALIVE, Duration::from_secs(120));
}

#[tokio::test]
async fn no_unsolicited_updates_between_commands() {
    let env = env();
    let mut c = Client::login(&env.relay).await;
    c.cmd("SELECT INBOX").await;
    let id = account_id(&env.relay);
    let data: Arc<[u8]> = Arc::from(simple("quiet").into_bytes());
    env.relay.store.deliver(&[id], data).await.unwrap();
    assert!(c.line_within(Duration::from_millis(200)).await.is_none());
    let r = c.cmd("NOOP").await;
    assert_eq!(r[0], "* 1 EXISTS");
}

#[tokio::test]
async fn malformed_input_gets_bad_and_the_session_survives() {
    let env = env();
    let mut c = Client::login(&env.relay).await;
    c.send(b"\x01\x02garbage\r\n").await;
    assert!(c.line().await.starts_with("* BAD"));
    let r = c.cmd("FROBNICATE now").await;
    assert!(status(&r) == "BAD", "{r:?}");
    let r = c.cmd("FETCH").await;
    assert!(status(&r) == "BAD", "{r:?}");
    c.send(b"\r\n").await;
    assert!(c.line().await.starts_with("* BAD"));

    // A line far beyond the limit is refused and skipped, whatever it contained.
    let mut huge = b"h1 LOGIN ".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 200 * 1024));
    huge.extend_from_slice(b"\r\n");
    c.send(&huge).await;
    assert!(c.line().await.starts_with("h1 BAD"));

    // A literal larger than allowed is refused before the client sends it.
    c.send(b"l1 APPEND INBOX {999999999999}\r\n").await;
    assert!(c.line().await.starts_with("l1 BAD"));
    // A malformed literal length is just a syntax error.
    c.send(b"l2 LOGIN {abc}\r\n").await;
    assert!(c.line().await.starts_with("l2 BAD"));

    let r = c.cmd("NOOP").await;
    assert!(last(&r).contains("OK"), "{r:?}");
}

#[tokio::test]
async fn oversized_non_sync_literal_closes_the_connection() {
    let env = env();
    let mut c = Client::login(&env.relay).await;
    c.send(b"l1 APPEND INBOX {999999999999+}\r\n").await;
    assert!(c.line().await.starts_with("* BYE"));
    assert!(c.closed().await);
}

#[tokio::test]
async fn preauth_literals_are_small() {
    let env = env();
    let (mut c, _) = Client::connect(&env.relay, true).await;
    c.send(b"a LOGIN {100000}\r\n").await;
    assert!(c.line().await.starts_with("a BAD"));
}

#[tokio::test]
async fn shutdown_says_bye() {
    let env = env();
    let mut c = Client::login(&env.relay).await;
    env.relay.shutdown.trigger();
    assert!(c.line().await.starts_with("* BYE"));
    assert!(c.closed().await);
}

/// A LOGIN over a new connection from `peer`; the tagged answer.
async fn login_from(relay: &Arc<crate::Relay>, peer: &str, password: &str) -> String {
    let ip: std::net::IpAddr = peer.parse().unwrap();
    let (mut c, _) = Client::connect_with(relay, true, move |s| s.set_peer(Some(ip))).await;
    let r = c.cmd(&format!("LOGIN {USER} {password}")).await;
    r.last().unwrap().clone()
}

/// Issue 14 item 6: IMAP answered 631 wrong passwords a second to one client (a new connection
/// every 3 failures). Failures now count per address across connections, and past the free ones
/// each attempt waits (1 s, 2 s, ...), while the owner from another address gets in at once.
#[tokio::test]
async fn failed_logins_from_one_address_wait_longer_and_longer() {
    let env = env();
    let r = &env.relay;
    Client::login(r).await; // creates the account
    let attacker = "192.0.2.66";
    for i in 0..crate::policy::throttle::FREE_FAILURES {
        let a = login_from(r, attacker, "wrongpass1").await;
        assert!(a.contains("NO [AUTHENTICATIONFAILED]"), "{i}: {a}");
    }
    let t = std::time::Instant::now();
    for _ in 0..2 {
        let a = login_from(r, attacker, "wrongpass2").await;
        assert!(a.contains("NO [AUTHENTICATIONFAILED]"), "{a}");
    }
    assert!(
        t.elapsed() >= Duration::from_secs(3),
        "two attempts past the free ones took only {:?}",
        t.elapsed()
    );
    // The owner, from an address that has not failed: no wait for the account's turn.
    let t = std::time::Instant::now();
    let a = login_from(r, "203.0.113.9", PASS).await;
    assert!(a.contains("OK"), "{a}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}
