//! Message-level tests: APPEND, FETCH, STORE, EXPUNGE/CLOSE, COPY/MOVE, SEARCH, CONDSTORE, and
//! sequence-number consistency between two sessions.

use super::test_util::*;
use std::sync::Arc;
use std::time::Duration;

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

#[tokio::test]
async fn append_then_fetch_sections_envelope_and_structure() {
    let env = env();
    let mut c = Client::login(&env.relay).await;
    let r = append(&mut c, "INBOX", MULTIPART).await;
    assert!(last(&r).contains("OK [APPENDUID "), "{r:?}");
    assert!(last(&r).contains(" 1] "), "{r:?}");
    c.cmd("SELECT INBOX").await;

    // Delta Chat's prefetch.
    let r = c
        .cmd("UID FETCH 1:* (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE FROM CHAT-VERSION)])")
        .await;
    let size = MULTIPART.len();
    let fields = "From: Alice <alice@example.org>\r\n\
                  Date: Tue, 1 Jul 2025 10:00:00 +0000\r\n\
                  Message-ID: <m1@example.org>\r\n\
                  Chat-Version: 1.0\r\n\r\n";
    assert_eq!(
        r[0],
        format!(
            "* 1 FETCH (UID 1 RFC822.SIZE {size} BODY[HEADER.FIELDS (MESSAGE-ID DATE FROM CHAT-VERSION)] {{{}}}\r\n{fields})",
            fields.len()
        )
    );

    // Download: FLAGS BODY.PEEK[] leaves \Seen alone.
    let r = c.cmd("UID FETCH 1 (FLAGS BODY.PEEK[])").await;
    assert_eq!(
        r[0],
        format!("* 1 FETCH (UID 1 FLAGS () BODY[] {{{size}}}\r\n{MULTIPART})")
    );

    let r = c.cmd("FETCH 1 ENVELOPE").await;
    assert_eq!(
        r[0],
        "* 1 FETCH (ENVELOPE (\"Tue, 1 Jul 2025 10:00:00 +0000\" \"=?utf-8?q?hello_there?=\" \
         ((\"Alice\" NIL \"alice\" \"example.org\")) ((\"Alice\" NIL \"alice\" \"example.org\")) \
         ((\"Alice\" NIL \"alice\" \"example.org\")) \
         ((NIL NIL \"bob\" \"example.org\")(\"Carl, Jr\" NIL \"carl\" \"example.net\")) \
         NIL NIL NIL \"<m1@example.org>\"))"
    );

    let r = c.cmd("FETCH 1 BODYSTRUCTURE").await;
    assert_eq!(
        r[0],
        "* 1 FETCH (BODYSTRUCTURE ((\"TEXT\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"7bit\" 12 2 NIL NIL NIL NIL)\
         (\"application\" \"octet-stream\" NIL NIL NIL \"base64\" 4 NIL (\"attachment\" (\"filename\" \"a.bin\")) NIL NIL) \
         \"mixed\" (\"boundary\" \"XYZ\") NIL NIL NIL))"
    );
    let r = c.cmd("FETCH 1 BODY").await;
    assert_eq!(
        r[0],
        "* 1 FETCH (BODY ((\"TEXT\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"7bit\" 12 2)\
         (\"application\" \"octet-stream\" NIL NIL NIL \"base64\" 4) \"mixed\"))"
    );

    let r = c
        .cmd("FETCH 1 (BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[]<0.4>)")
        .await;
    let mime = "Content-Type: application/octet-stream\r\n\
                Content-Transfer-Encoding: base64\r\n\
                Content-Disposition: attachment; filename=\"a.bin\"\r\n\r\n";
    assert_eq!(
        r[0],
        format!(
            "* 1 FETCH (BODY[1] {{12}}\r\nhello\r\nworld BODY[2.MIME] {{{}}}\r\n{mime} \
             BODY[]<0> {{4}}\r\nFrom)",
            mime.len()
        )
    );
    let r = c
        .cmd("FETCH 1 (BODY.PEEK[TEXT]<0.7> RFC822.HEADER INTERNALDATE)")
        .await;
    assert!(
        r[0].starts_with("* 1 FETCH (BODY[TEXT]<0> {7}\r\n--XYZ\r\n RFC822.HEADER {"),
        "{}",
        r[0]
    );
    assert!(r[0].contains("\r\n\r\n INTERNALDATE \""), "{}", r[0]);
    assert!(r[0].ends_with(" +0000\")"), "{}", r[0]);

    // BODY[] without PEEK sets \Seen and says so.
    let r = c.cmd("FETCH 1 BODY[HEADER]").await;
    assert!(r[0].contains("FLAGS (\\Seen)"), "{}", r[0]);
    let r = c.cmd("FETCH 1 (FLAGS)").await;
    assert_eq!(r[0], "* 1 FETCH (FLAGS (\\Seen))");
}

#[tokio::test]
async fn examine_does_not_set_seen() {
    let env = env();
    let mut c = selected_with(&env, &[&simple("a")]).await;
    c.cmd("EXAMINE INBOX").await;
    let r = c.cmd("FETCH 1 BODY[]").await;
    assert!(!r[0].contains("\\Seen"), "{}", r[0]);
    c.cmd("SELECT INBOX").await;
    let r = c.cmd("FETCH 1 FLAGS").await;
    assert_eq!(r[0], "* 1 FETCH (FLAGS ())");
}

#[tokio::test]
async fn uid_fetch_all_on_empty_inbox_is_ok_and_empty() {
    let env = env();
    let mut c = selected_with(&env, &[]).await;
    let r = c
        .cmd("UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID X-MICROSOFT-ORIGINAL-MESSAGE-ID)])")
        .await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(last(&r).contains("OK"), "{r:?}");
    // A sequence number that does not exist is an error.
    let r = c.cmd("FETCH 1:* FLAGS").await;
    assert!(last(&r).contains("BAD"), "{r:?}");
    let r = c.cmd("UID FETCH 5:7 FLAGS").await;
    assert_eq!(r.len(), 1, "{r:?}");
}

#[tokio::test]
async fn uid_ranges_beyond_the_last_include_the_last() {
    let env = env();
    let mut c = selected_with(&env, &[&simple("a"), &simple("b")]).await;
    let r = c.cmd("UID FETCH 100:* (UID)").await;
    assert_eq!(r[0], "* 2 FETCH (UID 2)");
    assert_eq!(r.len(), 2);
    let r = c.cmd("UID FETCH * (UID)").await;
    assert_eq!(r[0], "* 2 FETCH (UID 2)");
    let r = c.cmd("FETCH * (UID)").await;
    assert_eq!(r[0], "* 2 FETCH (UID 2)");
}

#[tokio::test]
async fn store_deleted_then_close_expunges_silently() {
    let env = env();
    let mut c = selected_with(&env, &[&simple("a"), &simple("b")]).await;
    let r = c.cmd("UID STORE 1 +FLAGS (\\Deleted)").await;
    assert_eq!(r[0], "* 1 FETCH (FLAGS (\\Deleted) UID 1)");
    let r = c.cmd("STORE 2 +FLAGS.SILENT (\\Seen)").await;
    assert_eq!(r.len(), 1, "{r:?}");
    let r = c.cmd("CLOSE").await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(last(&r).contains("OK"));
    let r = c.cmd("FETCH 1 FLAGS").await;
    assert!(last(&r).contains("BAD"), "CLOSE deselects: {r:?}");
    let r = c.cmd("SELECT INBOX").await;
    assert!(r.contains(&"* 1 EXISTS".to_string()), "{r:?}");
    let r = c.cmd("FETCH 1 (UID FLAGS)").await;
    assert_eq!(r[0], "* 1 FETCH (UID 2 FLAGS (\\Seen))");
}

#[tokio::test]
async fn expunge_and_uid_expunge_report_sequence_numbers() {
    let env = env();
    let mut c = selected_with(
        &env,
        &[&simple("a"), &simple("b"), &simple("c"), &simple("d")],
    )
    .await;
    c.cmd("STORE 1:4 +FLAGS.SILENT (\\Deleted)").await;
    let r = c.cmd("UID EXPUNGE 2,4").await;
    assert_eq!(
        r[..2],
        ["* 4 EXPUNGE".to_string(), "* 2 EXPUNGE".to_string()]
    );
    let r = c.cmd("EXPUNGE").await;
    assert_eq!(
        r[..2],
        ["* 2 EXPUNGE".to_string(), "* 1 EXPUNGE".to_string()]
    );
    let r = c.cmd("UID FETCH 1:* UID").await;
    assert_eq!(r.len(), 1, "{r:?}");
}

#[tokio::test]
async fn uid_move_and_copy_report_copyuid() {
    let env = env();
    let mut c = selected_with(&env, &[&simple("a"), &simple("b")]).await;
    c.cmd("CREATE DeltaChat").await;
    let r = c.cmd("UID MOVE 2 DeltaChat").await;
    let validity = env
        .relay
        .store
        .mailbox(account_id(&env.relay), "DeltaChat")
        .unwrap()
        .unwrap()
        .uidvalidity;
    assert_eq!(r[0], format!("* OK [COPYUID {validity} 2 1] Moved"));
    assert_eq!(r[1], "* 2 EXPUNGE");
    assert!(last(&r).contains("OK"), "{r:?}");
    let r = c.cmd("UID COPY 1 DeltaChat").await;
    assert!(
        last(&r).contains(&format!("OK [COPYUID {validity} 1 2]")),
        "{r:?}"
    );
    let r = c.cmd("MOVE 1 Nowhere").await;
    assert!(last(&r).contains("NO [TRYCREATE]"), "{r:?}");
    let r = c.cmd("STATUS DeltaChat (MESSAGES)").await;
    assert_eq!(r[0], "* STATUS DeltaChat (MESSAGES 2)");
    let r = c.cmd("UID FETCH 1:* UID").await;
    assert_eq!(r[0], "* 1 FETCH (UID 1)");
    assert_eq!(r.len(), 2);
}

#[tokio::test]
async fn other_sessions_changes_arrive_only_when_allowed() {
    let env = env();
    let mut a = selected_with(&env, &[&simple("a"), &simple("b"), &simple("c")]).await;
    let mut b = Client::login(&env.relay).await;
    b.cmd("SELECT INBOX").await;
    b.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    b.cmd("EXPUNGE").await;
    b.cmd("UID STORE 3 +FLAGS.SILENT (\\Flagged)").await;

    // A non-UID FETCH must not renumber: message 1 is gone but nothing is said yet.
    let r = a.cmd("FETCH 1:3 (UID)").await;
    assert_eq!(r[..2], ["* 2 FETCH (UID 2)", "* 3 FETCH (UID 3)"]);
    assert_eq!(r.len(), 3, "{r:?}");
    let r = a.cmd("NOOP").await;
    assert_eq!(r[0], "* 1 EXPUNGE");
    assert_eq!(r[1], "* 2 FETCH (FLAGS (\\Flagged) UID 3)");
    assert_eq!(r.len(), 3, "{r:?}");
    let r = a.cmd("FETCH 1 (UID)").await;
    assert_eq!(r[0], "* 1 FETCH (UID 2)");

    // Our own changes are not echoed later.
    a.cmd("STORE 1 +FLAGS (\\Seen)").await;
    let r = a.cmd("NOOP").await;
    assert_eq!(r.len(), 1, "{r:?}");

    // New mail shows up after a UID command too.
    let id = account_id(&env.relay);
    let data: Arc<[u8]> = Arc::from(simple("new").into_bytes());
    env.relay.store.deliver(&[id], data).await.unwrap();
    let r = a.cmd("UID FETCH 1:* (UID)").await;
    assert!(r.contains(&"* 3 EXISTS".to_string()), "{r:?}");
}

#[tokio::test]
async fn search_criteria() {
    let env = env();
    let mut c = selected_with(&env, &[MULTIPART, &simple("second"), &simple("third")]).await;
    c.cmd("STORE 2 +FLAGS (\\Seen)").await;
    let check = |r: Vec<String>, want: &str| {
        assert_eq!(r[0], want, "{r:?}");
    };
    check(c.cmd("SEARCH ALL").await, "* SEARCH 1 2 3");
    check(c.cmd("SEARCH UNSEEN").await, "* SEARCH 1 3");
    check(c.cmd("SEARCH SEEN").await, "* SEARCH 2");
    check(c.cmd("SEARCH NOT SEEN").await, "* SEARCH 1 3");
    check(c.cmd("SEARCH OR SEEN UID 3").await, "* SEARCH 2 3");
    check(c.cmd("UID SEARCH 2:*").await, "* SEARCH 2 3");
    check(c.cmd("SEARCH SUBJECT third").await, "* SEARCH 3");
    check(c.cmd("SEARCH SUBJECT \"hello there\"").await, "* SEARCH 1");
    check(c.cmd("SEARCH FROM alice").await, "* SEARCH 1 2 3");
    check(c.cmd("SEARCH HEADER Chat-Version 1.0").await, "* SEARCH 1");
    check(c.cmd("SEARCH BODY \"body of second\"").await, "* SEARCH 2");
    check(c.cmd("SEARCH LARGER 200").await, "* SEARCH 1");
    check(
        c.cmd("SEARCH SINCE 1-Jan-2000 UNDELETED").await,
        "* SEARCH 1 2 3",
    );
    check(c.cmd("SEARCH BEFORE 1-Jan-2000").await, "* SEARCH");
    check(c.cmd("SEARCH SENTON 1-Jul-2025").await, "* SEARCH 1");
    check(c.cmd("SEARCH KEYWORD $MDNSent").await, "* SEARCH");
    check(c.cmd("SEARCH NEW").await, "* SEARCH");
    let r = c.cmd("SEARCH MODSEQ 1").await;
    assert!(r[0].starts_with("* SEARCH 1 2 3 (MODSEQ "), "{r:?}");
    let r = c.cmd("SEARCH CHARSET KOI8-R ALL").await;
    assert!(last(&r).contains("NO [BADCHARSET"), "{r:?}");
}

#[tokio::test]
async fn condstore_changedsince_and_unchangedsince() {
    let env = env();
    let mut c = selected_with(&env, &[&simple("a"), &simple("b")]).await;
    let r = c.cmd("FETCH 1:* (MODSEQ)").await;
    let modseq = |line: &str| -> u64 {
        let s = line.split("MODSEQ (").nth(1).unwrap();
        s.split(')').next().unwrap().parse().unwrap()
    };
    let m2 = modseq(&r[1]);
    let r = c.cmd("UID STORE 1 +FLAGS (\\Flagged)").await;
    assert!(
        r[0].starts_with("* 1 FETCH (FLAGS (\\Flagged) UID 1 MODSEQ ("),
        "{r:?}"
    );
    let m1 = modseq(&r[0]);
    assert!(m1 > m2);
    let r = c
        .cmd(&format!("UID FETCH 1:* (FLAGS) (CHANGEDSINCE {m2})"))
        .await;
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(
        r[0].starts_with("* 1 FETCH (UID 1 FLAGS (\\Flagged) MODSEQ ("),
        "{r:?}"
    );
    let r = c
        .cmd(&format!(
            "UID STORE 1,2 (UNCHANGEDSINCE {m2}) +FLAGS (\\Seen)"
        ))
        .await;
    assert!(last(&r).contains("[MODIFIED 1]"), "{r:?}");
    assert!(
        r[0].starts_with("* 2 FETCH (FLAGS (\\Seen) UID 2 MODSEQ ("),
        "{r:?}"
    );
}

#[tokio::test]
async fn append_with_literal_plus_flags_and_date() {
    let env = env();
    let mut c = Client::login(&env.relay).await;
    let msg = simple("lp");
    c.send(
        format!(
            "a1 APPEND INBOX (\\Seen $MDNSent) \"17-Jul-1996 02:44:25 -0700\" {{{}+}}\r\n{msg}\r\n",
            msg.len()
        )
        .as_bytes(),
    )
    .await;
    let r = c.until_tagged("a1").await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(last(&r).contains("OK [APPENDUID"), "{r:?}");
    c.cmd("SELECT INBOX").await;
    let r = c.cmd("FETCH 1 (FLAGS INTERNALDATE)").await;
    assert_eq!(
        r[0],
        "* 1 FETCH (FLAGS (\\Seen $MDNSent) INTERNALDATE \"17-Jul-1996 09:44:25 +0000\")"
    );
}

#[tokio::test]
async fn append_to_selected_mailbox_reports_exists() {
    let env = env();
    let mut c = selected_with(&env, &[]).await;
    let r = append(&mut c, "INBOX", &simple("x")).await;
    assert_eq!(r[0], "* 1 EXISTS");
    let r = c.cmd("NOOP").await;
    assert_eq!(r.len(), 1, "{r:?}");
}

#[tokio::test]
async fn idle_then_flag_change_from_another_session() {
    let env = env();
    let mut a = selected_with(&env, &[&simple("a")]).await;
    let mut b = Client::login(&env.relay).await;
    b.cmd("SELECT INBOX").await;
    a.send(b"i1 IDLE\r\n").await;
    assert_eq!(a.line().await, "+ idling");
    b.cmd("STORE 1 +FLAGS (\\Flagged)").await;
    assert_eq!(a.line().await, "* 1 FETCH (FLAGS (\\Flagged) UID 1)");
    b.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    assert!(a.line().await.contains("FETCH"));
    b.cmd("EXPUNGE").await;
    assert_eq!(a.line().await, "* 1 EXPUNGE");
    assert!(a.line_within(Duration::from_millis(100)).await.is_none());
    a.send(b"DONE\r\n").await;
    assert_eq!(last(&a.until_tagged("i1").await), "i1 OK Idle completed");
}

#[tokio::test]
async fn nested_message_parts_and_single_part_structure() {
    let nested = "From: a@example.org\r\nSubject: outer\r\n\
                  Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n\
                  --B\r\nContent-Type: text/plain\r\n\r\nouter text\r\n\
                  --B\r\nContent-Type: message/rfc822\r\n\r\n\
                  From: x@example.net\r\nSubject: inner\r\n\r\ninner body\r\n\
                  --B--\r\n";
    let env = env();
    let mut c = selected_with(&env, &[nested, &simple("plain")]).await;
    let r = c
        .cmd("FETCH 1 (BODY.PEEK[1] BODY.PEEK[2.HEADER] BODY.PEEK[2.TEXT] BODY.PEEK[2.1] BODY.PEEK[2.HEADER.FIELDS (SUBJECT)] BODY.PEEK[3])")
        .await;
    assert_eq!(
        r[0],
        "* 1 FETCH (BODY[1] {10}\r\nouter text \
         BODY[2.HEADER] {39}\r\nFrom: x@example.net\r\nSubject: inner\r\n\r\n \
         BODY[2.TEXT] {10}\r\ninner body BODY[2.1] {10}\r\ninner body \
         BODY[2.HEADER.FIELDS (SUBJECT)] {18}\r\nSubject: inner\r\n\r\n BODY[3] {0}\r\n)"
    );
    let r = c.cmd("FETCH 1 BODYSTRUCTURE").await;
    let bs = &r[0];
    assert!(bs.contains("(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7bit\" 49 (NIL \"inner\" ((NIL NIL \"x\" \"example.net\"))"), "{bs}");
    assert!(
        bs.ends_with(" \"mixed\" (\"boundary\" \"B\") NIL NIL NIL))"),
        "{bs}"
    );
    let depth = bs.chars().fold(0i32, |d, ch| match ch {
        '(' => d + 1,
        ')' => d - 1,
        _ => d,
    });
    assert_eq!(depth, 0, "{bs}");

    let r = c
        .cmd("FETCH 2 (BODYSTRUCTURE BODY.PEEK[1] BODY.PEEK[TEXT])")
        .await;
    let body = "body of plain\r\n";
    assert_eq!(
        r[0],
        format!(
            "* 2 FETCH (BODYSTRUCTURE (\"TEXT\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" {} 1 NIL NIL NIL NIL) \
             BODY[1] {{{0}}}\r\n{body} BODY[TEXT] {{{0}}}\r\n{body})",
            body.len()
        )
    );
}
