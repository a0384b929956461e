use super::*;
use std::sync::Arc;

async fn store_with_account(dir: &Path) -> (Store, AccountId, MailboxId) {
    let s = Store::open(dir).unwrap();
    let (a, created) = s
        .create_account("alice0001@x.org", "$6$x$y", 0)
        .await
        .unwrap();
    assert!(created);
    let inbox = s.mailbox(a.id, "inbox").unwrap().unwrap();
    (s, a.id, inbox.id)
}

/// [`store_with_account`] that writes every body as a file, for the crash points of the file
/// path (a small body has none: it travels in the log record).
async fn store_with_files(dir: &Path) -> (Store, AccountId, MailboxId) {
    let r = store_with_account(dir).await;
    r.0.set_inline_max(0);
    r
}

/// Opens the store again after a (simulated) crash, with the sweep `serve` runs after start-up.
fn reopen(dir: &Path) -> Store {
    let s = Store::open(dir).unwrap();
    s.sweep().unwrap();
    s
}

fn body(n: usize) -> Arc<[u8]> {
    format!("From: a@x.org\r\nSubject: {n}\r\n\r\nbody {n}\r\n")
        .into_bytes()
        .into()
}

/// Every index entry names an existing body (a file, or one kept in the index) and every body
/// is named by an entry.
fn assert_consistent(s: &Store, mailboxes: &[MailboxId]) {
    let files = recover::scan_bodies_for_test(s.dir());
    let inline = recover::inline_bodies_for_test(s);
    assert!(
        files.is_disjoint(&inline),
        "a body both in a file and inline"
    );
    let mut named = std::collections::BTreeSet::new();
    for m in mailboxes {
        for msg in s.messages(*m).unwrap() {
            assert!(
                files.contains(&msg.body_id) || inline.contains(&msg.body_id),
                "uid {} names missing body {}",
                msg.uid,
                msg.body_id
            );
            named.insert(msg.body_id);
        }
    }
    let stored: std::collections::BTreeSet<u64> = files.union(&inline).copied().collect();
    assert_eq!(stored, named, "orphan bodies left behind");
    assert_eq!(
        std::fs::read_dir(s.dir().join("tmp")).unwrap().count(),
        0,
        "tmp/ not cleaned"
    );
}

#[tokio::test]
async fn delivered_message_survives_reopen() {
    let d = tempfile::tempdir().unwrap();
    let (s, acc, inbox) = store_with_account(d.path()).await;
    s.deliver(&[acc], body(1)).await.unwrap();
    drop(s);
    let s = reopen(d.path());
    let msgs = s.messages(inbox).unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].uid, 1);
    assert_eq!(
        s.read_body(msgs[0].body_id).await.unwrap(),
        body(1).to_vec()
    );
    let mb = s.mailbox_by_id(inbox).unwrap().unwrap();
    assert_eq!((mb.exists, mb.unseen, mb.uidnext), (1, 1, 2));
    assert_eq!(s.usage(acc).unwrap(), body(1).len() as u64);
    assert_consistent(&s, &[inbox]);
}

#[tokio::test]
async fn crash_at_each_delivery_step_reopens_consistent() {
    for point in [
        CrashPoint::AfterTmpWrite,
        CrashPoint::AfterRename,
        CrashPoint::AfterCommit,
    ] {
        let d = tempfile::tempdir().unwrap();
        let (s, acc, inbox) = store_with_files(d.path()).await;
        s.deliver(&[acc], body(1)).await.unwrap();
        s.crash_at(Some(point));
        let r = s.deliver(&[acc], body(2)).await;
        assert!(r.is_err(), "{point:?}: the sender must not hear 250");
        drop(s);
        let s = reopen(d.path());
        assert_consistent(&s, &[inbox]);
        let n = s.messages(inbox).unwrap().len();
        // A message committed but not acknowledged may stay (at-least-once); an uncommitted one
        // must be gone.
        let expected = if point == CrashPoint::AfterCommit {
            2
        } else {
            1
        };
        assert_eq!(n, expected, "{point:?}");
        // The store keeps working and never reuses a body id.
        s.deliver(&[acc], body(3)).await.unwrap();
        assert_consistent(&s, &[inbox]);
    }
}

#[tokio::test]
async fn crash_after_expunge_commit_removes_the_orphan_file() {
    let d = tempfile::tempdir().unwrap();
    let (s, acc, inbox) = store_with_files(d.path()).await;
    s.deliver(&[acc], body(1)).await.unwrap();
    s.store_flags(
        inbox,
        vec![1],
        FlagOp::Add,
        Flags::from_names(["\\Deleted"]),
        None,
    )
    .await
    .unwrap();
    s.crash_at(Some(CrashPoint::ExpungeAfterCommit));
    assert_eq!(s.expunge(inbox, None).await.unwrap(), vec![1]);
    assert_eq!(recover::scan_bodies_for_test(s.dir()).len(), 1);
    drop(s);
    let s = reopen(d.path());
    assert!(s.messages(inbox).unwrap().is_empty());
    assert_consistent(&s, &[inbox]);
    assert_eq!(s.usage(acc).unwrap(), 0);
}

#[tokio::test]
async fn opening_leaves_the_file_listing_to_the_sweep() {
    let d = tempfile::tempdir().unwrap();
    let (s, acc, inbox) = store_with_files(d.path()).await;
    s.deliver(&[acc], body(1)).await.unwrap();
    s.deliver(&[acc], body(2)).await.unwrap();
    s.crash_at(Some(CrashPoint::AfterRename));
    assert!(s.deliver(&[acc], body(3)).await.is_err());
    let lost = s.messages(inbox).unwrap()[0].body_id;
    drop(s);
    std::fs::remove_file(recover::body_path(d.path(), lost)).unwrap();
    let orphan = *recover::scan_bodies_for_test(d.path()).last().unwrap();

    // Opening does not list mail/: the orphan and the entry without a file are still there,
    // and the next id is past the orphan all the same.
    let s = Store::open(d.path()).unwrap();
    assert!(recover::body_path(d.path(), orphan).exists());
    assert_eq!(s.messages(inbox).unwrap().len(), 2);
    s.deliver(&[acc], body(4)).await.unwrap();
    let new = s.messages(inbox).unwrap().last().unwrap().body_id;
    assert!(new > orphan, "body id {new} reused the orphan's {orphan}");

    assert_eq!(
        s.sweep().unwrap(),
        crate::store::SweepReport {
            orphans: 1,
            missing: 1
        }
    );
    assert!(!recover::body_path(d.path(), orphan).exists());
    assert_eq!(s.messages(inbox).unwrap().len(), 2);
    assert_consistent(&s, &[inbox]);
}

#[tokio::test]
async fn lost_body_file_drops_its_index_entry() {
    let d = tempfile::tempdir().unwrap();
    let (s, acc, inbox) = store_with_files(d.path()).await;
    s.deliver(&[acc], body(1)).await.unwrap();
    s.deliver(&[acc], body(2)).await.unwrap();
    let victim = s.messages(inbox).unwrap()[0].body_id;
    drop(s);
    std::fs::remove_file(recover::body_path(d.path(), victim)).unwrap();
    let s = reopen(d.path());
    let msgs = s.messages(inbox).unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].uid, 2);
    assert_eq!(s.mailbox_by_id(inbox).unwrap().unwrap().exists, 1);
    assert_consistent(&s, &[inbox]);
}

#[tokio::test]
async fn concurrent_deliveries_share_commits_and_get_distinct_uids() {
    let d = tempfile::tempdir().unwrap();
    let (s, acc, inbox) = store_with_account(d.path()).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = s.clone();
        tasks.push(tokio::spawn(
            async move { s.deliver(&[acc], body(i)).await },
        ));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let uids: Vec<u32> = s.messages(inbox).unwrap().iter().map(|m| m.uid).collect();
    assert_eq!(uids, (1..=200).collect::<Vec<u32>>());
    assert_consistent(&s, &[inbox]);
}

#[tokio::test]
async fn copy_shares_the_body_and_expunging_one_keeps_the_other() {
    let d = tempfile::tempdir().unwrap();
    let (s, acc, inbox) = store_with_account(d.path()).await;
    let other = s.create_mailbox(acc, "Archive").await.unwrap();
    s.deliver(&[acc], body(1)).await.unwrap();
    let c = s.copy(inbox, vec![1, 99], other.id).await.unwrap();
    assert_eq!(c.pairs, vec![(1, 1)]);
    assert_eq!(c.uidvalidity, other.uidvalidity);
    s.store_flags(
        inbox,
        vec![1],
        FlagOp::Add,
        Flags::from_names(["\\Deleted"]),
        None,
    )
    .await
    .unwrap();
    s.expunge(inbox, None).await.unwrap();
    let m = s.messages(other.id).unwrap();
    assert_eq!(s.read_body(m[0].body_id).await.unwrap(), body(1).to_vec());
    let mv = s.move_messages(other.id, vec![1], inbox).await.unwrap();
    assert_eq!(mv.pairs, vec![(1, 2)]);
    assert!(s.messages(other.id).unwrap().is_empty());
    assert_consistent(&s, &[inbox, other.id]);
}

#[tokio::test]
async fn recreated_mailbox_gets_a_new_uidvalidity() {
    let d = tempfile::tempdir().unwrap();
    let (s, acc, _) = store_with_account(d.path()).await;
    let a = s.create_mailbox(acc, "Trash").await.unwrap();
    assert!(matches!(
        s.create_mailbox(acc, "Trash").await,
        Err(StoreError::MailboxExists)
    ));
    s.delete_mailbox(acc, "Trash").await.unwrap();
    let b = s.create_mailbox(acc, "Trash").await.unwrap();
    assert!(b.uidvalidity > a.uidvalidity);
    assert!(matches!(
        s.delete_mailbox(acc, "INBOX").await,
        Err(StoreError::InboxProtected)
    ));
}

#[tokio::test]
async fn unchanged_since_protects_newer_changes() {
    let d = tempfile::tempdir().unwrap();
    let (s, acc, inbox) = store_with_account(d.path()).await;
    s.deliver(&[acc], body(1)).await.unwrap();
    let m0 = s.message(inbox, 1).unwrap().unwrap();
    let u = s
        .store_flags(
            inbox,
            vec![1],
            FlagOp::Add,
            Flags::from_names(["\\Seen"]),
            Some(m0.modseq),
        )
        .await
        .unwrap();
    assert_eq!(u.updated.len(), 1);
    assert!(u.updated[0].modseq > m0.modseq);
    let u2 = s
        .store_flags(
            inbox,
            vec![1],
            FlagOp::Add,
            Flags::from_names(["\\Flagged"]),
            Some(m0.modseq),
        )
        .await
        .unwrap();
    assert_eq!(u2.modified, vec![1]);
    assert_eq!(s.mailbox_by_id(inbox).unwrap().unwrap().unseen, 0);
}

#[tokio::test]
async fn watchers_hear_new_mail() {
    let d = tempfile::tempdir().unwrap();
    let (s, acc, inbox) = store_with_account(d.path()).await;
    let mut w = s.watch(inbox);
    s.deliver(&[acc], body(1)).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), w.changed())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn device_tokens_accumulate_without_duplicates() {
    let d = tempfile::tempdir().unwrap();
    let (s, acc, _) = store_with_account(d.path()).await;
    s.add_device_token(acc, "1111", 10, 20).await.unwrap();
    s.add_device_token(acc, "2222", 11, 20).await.unwrap();
    s.add_device_token(acc, "1111", 12, 20).await.unwrap();
    let a = s.account_by_id(acc).unwrap().unwrap();
    let t: Vec<_> = a.device_tokens.iter().map(|t| t.token.as_str()).collect();
    // In the order they were last set.
    assert_eq!(t, vec!["2222", "1111"]);
    assert_eq!(a.device_tokens[1].last_set, 12);
    s.remove_device_token(acc, "1111").await.unwrap();
    let a = s.account_by_id(acc).unwrap().unwrap();
    assert_eq!(a.device_tokens.len(), 1);
}

#[tokio::test]
async fn device_tokens_are_capped_least_recently_set_dropped() {
    let d = tempfile::tempdir().unwrap();
    let (s, acc, _) = store_with_account(d.path()).await;
    for i in 0..50 {
        s.add_device_token(acc, &format!("t{i}"), 100, 3)
            .await
            .unwrap();
    }
    s.add_device_token(acc, "t47", 100, 3).await.unwrap();
    s.add_device_token(acc, "new", 100, 3).await.unwrap();
    let a = s.account_by_id(acc).unwrap().unwrap();
    let t: Vec<_> = a.device_tokens.iter().map(|t| t.token.as_str()).collect();
    assert_eq!(t, vec!["t49", "t47", "new"]);
}

#[tokio::test]
async fn read_head_stops_at_the_blank_line() {
    let d = tempfile::tempdir().unwrap();
    let (s, acc, inbox) = store_with_account(d.path()).await;
    let mut big = b"From: a@x.org\r\nSubject: s\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 100_000));
    s.deliver(&[acc], big.into()).await.unwrap();
    let m = &s.messages(inbox).unwrap()[0];
    let head = s.read_head(m.body_id, 1 << 20).await.unwrap();
    assert_eq!(head, b"From: a@x.org\r\nSubject: s\r\n\r\n");
    assert_eq!(s.read_head(m.body_id, 10).await.unwrap().len(), 10);
}

/// A small body is written in its log record: the disk filling up there fails the delivery,
/// and the half record is cut off again, so no later start replays it.
#[tokio::test]
async fn disk_full_in_the_log_record_leaves_nothing_half_written() {
    let d = tempfile::tempdir().unwrap();
    let (s, acc, inbox) = store_with_account(d.path()).await;
    let wal = d.path().join("index.wal");
    let len = std::fs::metadata(&wal).unwrap().len();
    s.crash_at(Some(CrashPoint::DiskFull));
    let e = s.deliver(&[acc], body(1)).await.unwrap_err();
    assert!(e.is_temporary(), "{e}");
    s.crash_at(None);
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), len);
    assert!(s.messages(inbox).unwrap().is_empty());
    s.deliver(&[acc], body(2)).await.unwrap();
    drop(s);
    let s = reopen(d.path());
    let msgs = s.messages(inbox).unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        s.read_body(msgs[0].body_id).await.unwrap(),
        body(2).to_vec()
    );
    assert_consistent(&s, &[inbox]);
}

#[tokio::test]
async fn disk_full_leaves_nothing_half_written() {
    let d = tempfile::tempdir().unwrap();
    let (s, acc, inbox) = store_with_files(d.path()).await;
    s.crash_at(Some(CrashPoint::DiskFull));
    let e = s.deliver(&[acc], body(1)).await.unwrap_err();
    assert!(e.is_temporary(), "{e}");
    s.crash_at(None);
    assert!(s.messages(inbox).unwrap().is_empty());
    assert_consistent(&s, &[inbox]);
    // The store goes on working once there is room again.
    s.deliver(&[acc], body(2)).await.unwrap();
    assert_consistent(&s, &[inbox]);
}

#[tokio::test]
async fn queue_entry_with_local_copy_survives_reopen() {
    let d = tempfile::tempdir().unwrap();
    let (s, acc, inbox) = store_with_account(d.path()).await;
    let rcpts = vec![
        "bob000001@b.test".to_string(),
        "carol0001@c.test".to_string(),
    ];
    let id = s
        .enqueue(
            "alice0001@x.org",
            rcpts.clone(),
            body(1).into(),
            100,
            Some((&[acc], body(2).into())),
        )
        .await
        .unwrap();
    drop(s);
    let s = reopen(d.path());
    let q = s.queued().unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!((q[0].id, &q[0].rcpts, q[0].next_attempt), (id, &rcpts, 100));
    assert_eq!(s.read_body(q[0].body_id).await.unwrap(), body(1).to_vec());
    let msgs = s.messages(inbox).unwrap();
    assert_eq!(
        msgs.len(),
        1,
        "the local copy is stored with the queue entry"
    );
    assert_eq!(
        s.read_body(msgs[0].body_id).await.unwrap(),
        body(2).to_vec()
    );
}

#[tokio::test]
async fn queue_update_reports_each_recipient_once() {
    let d = tempfile::tempdir().unwrap();
    let (s, acc, inbox) = store_with_account(d.path()).await;
    let rcpts = vec![
        "bob000001@b.test".to_string(),
        "carol0001@c.test".to_string(),
    ];
    let id = s
        .enqueue("alice0001@x.org", rcpts, body(1).into(), 100, None)
        .await
        .unwrap();
    // bob delivered, carol deferred
    s.queue_update(
        id,
        vec!["bob000001@b.test".into()],
        Some((160, "421 later".into())),
        None,
    )
    .await
    .unwrap();
    let q = s.queued().unwrap();
    assert_eq!(q[0].rcpts, ["carol0001@c.test"]);
    assert_eq!(
        (q[0].attempts, q[0].next_attempt, q[0].last_error.as_str()),
        (1, 160, "421 later")
    );
    // carol bounces: the report lands in the INBOX and the entry (and its file) is gone
    s.queue_update(
        id,
        vec!["carol0001@c.test".into()],
        None,
        Some((acc, body(3), 200)),
    )
    .await
    .unwrap();
    assert!(s.queued().unwrap().is_empty());
    assert_eq!(s.messages(inbox).unwrap().len(), 1);
    // the same outcome recorded again (a retried attempt) reports nothing twice
    s.queue_update(
        id,
        vec!["carol0001@c.test".into()],
        None,
        Some((acc, body(3), 200)),
    )
    .await
    .unwrap();
    assert_eq!(s.messages(inbox).unwrap().len(), 1);
    assert_consistent(&s, &[inbox]);
}

#[tokio::test]
async fn crash_while_queueing_keeps_all_or_nothing() {
    for point in [
        CrashPoint::AfterTmpWrite,
        CrashPoint::AfterRename,
        CrashPoint::AfterCommit,
    ] {
        let d = tempfile::tempdir().unwrap();
        let (s, acc, inbox) = store_with_files(d.path()).await;
        s.crash_at(Some(point));
        let r = s
            .enqueue(
                "alice0001@x.org",
                vec!["bob000001@b.test".into()],
                body(1).into(),
                1,
                Some((&[acc], body(2).into())),
            )
            .await;
        drop(s);
        let s = reopen(d.path());
        let queued = s.queued().unwrap().len();
        let local = s.messages(inbox).unwrap().len();
        assert_eq!(
            queued, local,
            "{point:?}: queue entry and local copy go together"
        );
        if point == CrashPoint::AfterCommit {
            assert_eq!(queued, 1, "committed before the crash: kept");
        } else {
            assert!(r.is_err());
            assert_eq!(queued, 0, "{point:?}: never acknowledged, so not kept");
        }
        let files = recover::scan_bodies_for_test(s.dir()).len();
        assert_eq!(files, queued * 2, "{point:?}: no orphan files");
    }
}

/// The update rule (store/format.rs): a tryboot start of a version with a newer store format
/// opens without migrating, so the old version, booted again after a failed trial, still
/// reads everything, including mail the trial accepted. Migration runs after commit.
#[tokio::test]
async fn update_tryboot_start_leaves_the_store_readable_by_the_old_format() {
    use format::Migration;
    fn to_v2(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
        // A format change the old version could not read: a new table it would have to keep
        // consistent.
        const T: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("v2_only");
        txn.open_table(T)?.insert(1, 1)?;
        Ok(())
    }
    // "v2" is the format after this relaybox's, whatever that is.
    let (cur, next) = (format::FORMAT, format::FORMAT + 1);
    let v2 = [Migration {
        to: next,
        run: to_v2,
    }];
    let d = tempfile::tempdir().unwrap();
    let (s, acc, inbox) = store_with_account(d.path()).await;
    s.deliver(&[acc], body(1)).await.unwrap();
    assert_eq!(s.format().unwrap(), cur);
    drop(s);
    // The tryboot start of "v2": opened deferred, mail accepted, no migration.
    let s = Store::open_deferred(d.path()).unwrap();
    s.deliver(&[acc], body(2)).await.unwrap();
    assert_eq!(s.format().unwrap(), cur);
    drop(s);
    // The trial failed: the old version opens it and has both messages.
    let s = reopen(d.path());
    assert_eq!(s.migrate_to(cur, &[]).unwrap(), cur);
    assert_eq!(s.messages(inbox).unwrap().len(), 2);
    assert_consistent(&s, &[inbox]);
    // Committed: the migration runs; from then on the old version refuses with a reason
    // instead of misreading.
    assert_eq!(s.migrate_to(next, &v2).unwrap(), next);
    assert_eq!(s.format().unwrap(), next);
    let e = s.migrate_to(cur, &[]).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "the store is in format {next}, newer than this relaybox reads ({cur})"
        )),
        "{e}"
    );
    assert_eq!(s.messages(inbox).unwrap().len(), 2);
}

/// Format 2 moved index durability into index.wal, which a format-1 relaybox ignores: until the
/// migration has run (a trial boot), every commit must still be durable in redb itself.
#[tokio::test]
async fn store_format_1_commits_redb_durably_until_migrated_to_the_log() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open_deferred(d.path()).unwrap();
    assert_eq!(s.format().unwrap(), 1);
    let (a, _) = s
        .create_account("alice0001@x.org", "$6$x$y", 0)
        .await
        .unwrap();
    let inbox = s.mailbox(a.id, "INBOX").unwrap().unwrap().id;
    s.crash_at(Some(CrashPoint::BeforeCheckpoint));
    s.deliver(&[a.id], body(1)).await.unwrap();
    assert_eq!(
        std::fs::metadata(d.path().join("index.wal")).unwrap().len(),
        0
    );
    // What the old version would see after a power cut now: redb's file, no log.
    let cut = tempfile::tempdir().unwrap();
    copy_dir(d.path(), cut.path());
    std::fs::remove_file(cut.path().join("index.wal")).unwrap();
    let old = Store::open_deferred(cut.path()).unwrap();
    assert_eq!(old.messages(inbox).unwrap().len(), 1);
    drop(old);

    assert_eq!(s.migrate().unwrap(), format::FORMAT);
    s.deliver(&[a.id], body(2)).await.unwrap();
    assert!(std::fs::metadata(d.path().join("index.wal")).unwrap().len() > 0);
}

/// A spooled body is adopted: the file written piece by piece is the stored one (same inode).
#[tokio::test]
async fn spooled_body_is_adopted_not_copied() {
    use std::os::unix::fs::MetadataExt;
    let d = tempfile::tempdir().unwrap();
    let (s, acc, inbox) = store_with_account(d.path()).await;
    let mut sp = s.spool().await.unwrap();
    let b = body(7);
    let (a, rest) = b.split_at(10);
    sp.write(a.to_vec()).await.unwrap();
    sp.write(rest.to_vec()).await.unwrap();
    let tmp: Vec<_> = std::fs::read_dir(d.path().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().ino())
        .collect();
    assert_eq!(tmp.len(), 1);
    s.deliver_body(&[acc], Body::Spooled(sp), 5).await.unwrap();
    let msgs = s.messages(inbox).unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].size, b.len() as u64);
    assert_eq!(s.read_body(msgs[0].body_id).await.unwrap(), b.to_vec());
    let stored = std::fs::metadata(recover::body_path(d.path(), msgs[0].body_id)).unwrap();
    assert_eq!(stored.ino(), tmp[0]);
    assert_eq!(s.usage(acc).unwrap(), b.len() as u64);
    assert_consistent(&s, &[inbox]);
}

/// A message cut off mid-stream (the process dies with the spool open) is not visible after a
/// restart, and its partial file is gone; a spool dropped unadopted (refused by the gate, 451)
/// leaves nothing either.
#[tokio::test]
async fn crash_mid_stream_leaves_no_message_and_no_temp_file() {
    let d = tempfile::tempdir().unwrap();
    let (s, acc, inbox) = store_with_account(d.path()).await;
    s.deliver(&[acc], body(1)).await.unwrap();
    let mut dropped = s.spool().await.unwrap();
    dropped.write(b"From: a@x.org\r\n".to_vec()).await.unwrap();
    drop(dropped);
    assert_eq!(std::fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);

    let mut sp = s.spool().await.unwrap();
    sp.write(b"From: a@x.org\r\nSubject: half".to_vec())
        .await
        .unwrap();
    // A power cut: nothing runs any more, not even the spool's clean-up.
    sp.abandon();
    assert_eq!(std::fs::read_dir(d.path().join("tmp")).unwrap().count(), 1);
    drop(s);
    let s = reopen(d.path());
    assert_eq!(s.messages(inbox).unwrap().len(), 1);
    assert_consistent(&s, &[inbox]);
}

/// The crash points of a delivery hold for a spooled body as for one written in one piece.
#[tokio::test]
async fn crash_at_each_step_of_a_spooled_delivery_reopens_consistent() {
    for point in [
        CrashPoint::AfterTmpWrite,
        CrashPoint::AfterRename,
        CrashPoint::AfterCommit,
        CrashPoint::DiskFull,
    ] {
        let d = tempfile::tempdir().unwrap();
        let (s, acc, inbox) = store_with_account(d.path()).await;
        s.deliver(&[acc], body(1)).await.unwrap();
        s.crash_at(Some(point));
        let r = async {
            let mut sp = s.spool().await?;
            sp.write(body(2).to_vec()).await?;
            s.deliver_body(&[acc], Body::Spooled(sp), 1).await
        }
        .await;
        assert!(r.is_err(), "{point:?}: the sender must not hear 250");
        drop(s);
        let s = reopen(d.path());
        assert_consistent(&s, &[inbox]);
        let n = s.messages(inbox).unwrap().len();
        let expect = if point == CrashPoint::AfterCommit {
            2
        } else {
            1
        };
        assert_eq!(n, expect, "{point:?}");
    }
}

/// The signed copy of a large outgoing message is a second spool made from the first (a new
/// header, then the first one's body bytes, file to file); queued with the first as the local
/// copy, both are kept or neither at every crash point, and only a durable pair is answered.
#[tokio::test]
async fn crash_while_queueing_a_spliced_copy_keeps_all_or_nothing() {
    for point in [
        None,
        Some(CrashPoint::DiskFull),
        Some(CrashPoint::AfterTmpWrite),
        Some(CrashPoint::AfterRename),
        Some(CrashPoint::AfterCommit),
    ] {
        let d = tempfile::tempdir().unwrap();
        let (s, acc, inbox) = store_with_account(d.path()).await;
        let local_head = b"From: a@x.org\r\n\r\n".to_vec();
        // Past what one copy_file_range call or std's fallback buffer moves at once.
        let b = body(4).repeat(20_000);
        let mut sp = s.spool().await.unwrap();
        sp.write(local_head.clone()).await.unwrap();
        sp.write(b.to_vec()).await.unwrap();
        s.crash_at(point);
        let r = async {
            let signed = sp
                .splice(
                    b"Sig: x\r\nFrom: a@x.org\r\n\r\n".to_vec(),
                    local_head.len() as u64,
                )
                .await?;
            s.enqueue(
                "alice0001@x.org",
                vec!["bob000001@b.test".into()],
                Body::Spooled(signed),
                1,
                Some((&[acc], Body::Spooled(sp))),
            )
            .await
        }
        .await;
        s.crash_at(None);
        if point.is_none() {
            let q = s.queued().unwrap();
            let queued = s.read_body(q[0].body_id).await.unwrap();
            let expect = [&b"Sig: x\r\nFrom: a@x.org\r\n\r\n"[..], &b[..]].concat();
            assert_eq!(queued, expect);
            assert_eq!(q[0].size, queued.len() as u64);
            let m = s.messages(inbox).unwrap();
            let local = s.read_body(m[0].body_id).await.unwrap();
            assert_eq!(local, [&local_head[..], &b[..]].concat());
        }
        drop(s);
        let s = reopen(d.path());
        let queue = s.queued().unwrap();
        let msgs = s.messages(inbox).unwrap();
        let (queued, local) = (queue.len(), msgs.len());
        assert_eq!(
            queued, local,
            "{point:?}: queue entry and local copy go together"
        );
        // Every file is named by the queue or the mailbox, and every name has its file.
        let named: std::collections::BTreeSet<u64> = queue
            .iter()
            .map(|q| q.body_id)
            .chain(msgs.iter().map(|m| m.body_id))
            .collect();
        assert_eq!(recover::scan_bodies_for_test(s.dir()), named, "{point:?}");
        match point {
            None | Some(CrashPoint::AfterCommit) => assert_eq!(queued, 1, "{point:?}"),
            Some(_) => {
                assert!(r.is_err(), "{point:?}: the sender must not hear 250");
                assert_eq!(queued, 0, "{point:?}: never acknowledged, so not kept");
            }
        }
        assert_eq!(named.len(), queued * 2, "{point:?}: two files per entry");
        assert_eq!(std::fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
    }
}

/// Copies a live store's files as a power cut would leave them: what reached the files, not
/// what redb holds in memory.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[tokio::test]
async fn power_cut_before_checkpoint_replays_the_log_to_the_same_state() {
    let d = tempfile::tempdir().unwrap();
    let (s, acc, inbox) = store_with_account(d.path()).await;
    s.crash_at(Some(CrashPoint::BeforeCheckpoint));
    for n in 1..=4 {
        s.deliver(&[acc], body(n)).await.unwrap();
    }
    let archive = s.create_mailbox(acc, "Archive").await.unwrap();
    s.move_messages(inbox, vec![1, 2], archive.id)
        .await
        .unwrap();
    s.store_flags(
        inbox,
        vec![3],
        FlagOp::Add,
        Flags::from_names(["\\Deleted"]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(s.expunge(inbox, None).await.unwrap(), vec![3]);
    s.add_device_token(acc, "tok", 5, 3).await.unwrap();
    assert!(std::fs::metadata(d.path().join("index.wal")).unwrap().len() > 0);

    let cut = tempfile::tempdir().unwrap();
    copy_dir(d.path(), cut.path());
    let without_log = tempfile::tempdir().unwrap();
    copy_dir(d.path(), without_log.path());
    std::fs::remove_file(without_log.path().join("index.wal")).unwrap();

    let r = reopen(cut.path());
    for mb in [inbox, archive.id] {
        assert_eq!(r.messages(mb).unwrap(), s.messages(mb).unwrap());
        assert_eq!(r.mailbox_by_id(mb).unwrap(), s.mailbox_by_id(mb).unwrap());
    }
    assert_eq!(r.account_by_id(acc).unwrap(), s.account_by_id(acc).unwrap());
    assert_consistent(&r, &[inbox, archive.id]);
    assert_eq!(
        std::fs::metadata(cut.path().join("index.wal"))
            .unwrap()
            .len(),
        0
    );
    // The replayed store goes on from where the log ended.
    r.deliver(&[acc], body(5)).await.unwrap();
    assert_eq!(r.messages(inbox).unwrap().last().unwrap().uid, 5);
    drop(r);

    // Proof that the log carried it: redb's file alone has none of it.
    let w = reopen(without_log.path());
    assert!(w.messages(inbox).unwrap().is_empty());
    assert!(w.mailbox(acc, "Archive").unwrap().is_none());
    assert_consistent(&w, &[inbox]);
}

#[tokio::test]
async fn closing_the_store_checkpoints_and_empties_the_log() {
    let d = tempfile::tempdir().unwrap();
    let (s, acc, inbox) = store_with_account(d.path()).await;
    s.deliver(&[acc], body(1)).await.unwrap();
    assert!(std::fs::metadata(d.path().join("index.wal")).unwrap().len() > 0);
    drop(s);
    assert_eq!(
        std::fs::metadata(d.path().join("index.wal")).unwrap().len(),
        0
    );
    let s = Store::open(d.path()).unwrap();
    assert_eq!(s.messages(inbox).unwrap().len(), 1);
}

fn process_write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix("write_bytes:")
                        .map(|v| v.trim().parse().ok())
                })
                .flatten()
        })
        .unwrap_or(0)
}

/// Issue 18: one message arriving alone (a Pi's usual day) cost ~55 KB of writes, most of
/// it the durable redb commit; then ~12 KB (body file + log page). Target: at most twice the
/// message. Needs a process of its own (nextest) and a disk-backed tmp.
#[tokio::test]
async fn store_a_lone_delivery_writes_under_twice_its_size() {
    if std::env::var("NEXTEST_EXECUTION_MODE").as_deref() != Ok("process-per-test") {
        eprintln!("skipped: /proc/self/io counts other tests' writes outside nextest");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let probe = d.path().join("probe");
    let before = process_write_bytes();
    std::fs::write(&probe, vec![1u8; 65536]).unwrap();
    std::fs::File::open(&probe).unwrap().sync_all().unwrap();
    if process_write_bytes() - before < 65536 {
        eprintln!("skipped: the temp dir's writes do not reach the block layer (tmpfs?)");
        return;
    }
    let (s, acc, inbox) = store_with_account(d.path()).await;
    let msg: Arc<[u8]> = vec![b'x'; 4700].into();
    let n = 20u64;
    let before = process_write_bytes();
    for _ in 0..n {
        s.deliver(&[acc], msg.clone()).await.unwrap();
    }
    let per_msg = (process_write_bytes() - before) / n;
    eprintln!("{per_msg} bytes written per 4700-byte message");
    assert_eq!(s.messages(inbox).unwrap().len(), n as usize);
    // 44bc739 wrote ~53 KB here, bad33eb ~12 KB (two body-file pages, one log page); now the
    // body is in the log record: two log pages (redb's copy comes at the checkpoint).
    assert!(
        per_msg <= 2 * 4700,
        "{per_msg} bytes written per 4700-byte message"
    );
}

/// Format 3: a small body is in the log record of its batch, and a power cut before the
/// checkpoint (redb's file has none of it) gives it back from the log alone; a large one is a
/// file as before.
#[tokio::test]
async fn power_cut_before_checkpoint_replays_inline_bodies_from_the_log() {
    let d = tempfile::tempdir().unwrap();
    let (s, acc, inbox) = store_with_account(d.path()).await;
    s.crash_at(Some(CrashPoint::BeforeCheckpoint));
    let large: Arc<[u8]> = [&b"Subject: big\r\n\r\n"[..], &vec![b'x'; INLINE_MAX][..]]
        .concat()
        .into();
    let sent = [body(1), large.clone(), body(3)];
    for b in &sent {
        s.deliver(&[acc], b.clone()).await.unwrap();
    }
    let drafts = s.create_mailbox(acc, "Drafts").await.unwrap();
    s.append(drafts.id, Flags::default(), 7, body(4))
        .await
        .unwrap();
    // Only the large body is a file; the small ones were never written anywhere but the log.
    assert_eq!(recover::scan_bodies_for_test(d.path()).len(), 1);
    let cut = tempfile::tempdir().unwrap();
    copy_dir(d.path(), cut.path());
    drop(s);

    let r = reopen(cut.path());
    let msgs = r.messages(inbox).unwrap();
    assert_eq!(msgs.len(), 3);
    for (m, b) in msgs.iter().zip(&sent) {
        assert_eq!(r.read_body(m.body_id).await.unwrap(), b.to_vec());
    }
    let d4 = r.messages(drafts.id).unwrap();
    assert_eq!(r.read_body(d4[0].body_id).await.unwrap(), body(4).to_vec());
    assert_eq!(
        r.read_head(msgs[0].body_id, 1 << 20).await.unwrap(),
        b"From: a@x.org\r\nSubject: 1\r\n\r\n".to_vec()
    );
    assert_eq!(
        r.usage(acc).unwrap(),
        sent.iter()
            .chain([&body(4)])
            .map(|b| b.len() as u64)
            .sum::<u64>()
    );
    assert_consistent(&r, &[inbox, drafts.id]);
    // Expunged, an inline body leaves the index with its message.
    r.remove_messages(inbox, vec![1, 2, 3]).await.unwrap();
    assert_consistent(&r, &[inbox, drafts.id]);
    assert_eq!(recover::inline_bodies_for_test(&r).len(), 1);
    assert!(recover::scan_bodies_for_test(cut.path()).is_empty());
}

/// The update rule for format 3: a format-2 relaybox reads bodies from files only, so until
/// the migration (after the trial boot is committed) every body is still written as a file;
/// afterwards small ones go into the index and the old files stay readable.
#[tokio::test]
async fn store_format_2_writes_body_files_until_migrated_to_inline_bodies() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open_deferred(d.path()).unwrap();
    assert_eq!(s.migrate_to(2, format::MIGRATIONS).unwrap(), 2);
    let (a, _) = s
        .create_account("alice0001@x.org", "$6$x$y", 0)
        .await
        .unwrap();
    let inbox = s.mailbox(a.id, "INBOX").unwrap().unwrap().id;
    drop(s);
    // The trial boot of format 3: opened deferred, still format 2.
    let s = Store::open_deferred(d.path()).unwrap();
    s.deliver(&[a.id], body(1)).await.unwrap();
    assert_eq!(recover::scan_bodies_for_test(d.path()).len(), 1);
    assert!(recover::inline_bodies_for_test(&s).is_empty());
    assert_eq!(s.migrate().unwrap(), 3);
    s.deliver(&[a.id], body(2)).await.unwrap();
    assert_eq!(recover::scan_bodies_for_test(d.path()).len(), 1);
    assert_eq!(recover::inline_bodies_for_test(&s).len(), 1);
    drop(s);
    let s = reopen(d.path());
    let msgs = s.messages(inbox).unwrap();
    assert_eq!(msgs.len(), 2);
    for (m, n) in msgs.iter().zip([1, 2]) {
        assert_eq!(s.read_body(m.body_id).await.unwrap(), body(n).to_vec());
    }
    assert_consistent(&s, &[inbox]);
}

/// One small message, one sync: the body rides in the log record, so nothing but the log is
/// synced (before: the body file, the mail/ directory, then the log).
#[tokio::test]
async fn store_a_small_delivery_is_one_log_append_and_no_file() {
    let d = tempfile::tempdir().unwrap();
    let (s, acc, inbox) = store_with_account(d.path()).await;
    let wal = d.path().join("index.wal");
    let before = std::fs::metadata(&wal).unwrap().len();
    s.deliver(&[acc], vec![b'x'; 4700].into()).await.unwrap();
    let grew = std::fs::metadata(&wal).unwrap().len() - before;
    // One record: the body, the op, the frame; padded to the page.
    assert!((4700..=8192).contains(&grew), "log grew {grew} bytes");
    assert!(recover::scan_bodies_for_test(d.path()).is_empty());
    assert_eq!(s.messages(inbox).unwrap().len(), 1);
}

/// Bytes this process read through read()/pread() so far (page cache hits included).
fn rchar() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .parse()
        .unwrap()
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap()
}

/// [`store_with_inline_bodies`] made and closed on a runtime of its own, so that no task holds
/// the store open when the test opens it again.
fn closed_store_with_inline_bodies(dir: &Path, count: usize) -> MailboxId {
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { store_with_inline_bodies(&dir, count).await.1 })
    })
    .join()
    .unwrap()
}

async fn store_with_inline_bodies(dir: &Path, count: usize) -> (Store, MailboxId) {
    let (s, acc, inbox) = store_with_account(dir).await;
    let big: Arc<[u8]> = [&b"Subject: s\r\n\r\n"[..], &vec![b'x'; 60_000][..]]
        .concat()
        .into();
    for _ in 0..count {
        s.deliver(&[acc], big.clone()).await.unwrap();
    }
    assert!(recover::scan_bodies_for_test(dir).is_empty());
    (s, inbox)
}

/// A store full of small bodies, opened again: the sweep after the start tells inline bodies from
/// lost files without reading them (that would pull every small message through redb's cache at
/// each start), and reading every body (a client downloading its mailbox) leaves redb's cache,
/// which is heap, bounded (its default is 1 GiB, the whole memory of a small Pi). 60 MB of bodies,
/// more than the cache holds, so that the debug build's walk of the file at open cannot have
/// left them all cached for the sweep.
#[tokio::test]
async fn small_bodies_neither_swept_nor_read_into_an_unbounded_cache() {
    let d = tempfile::tempdir().unwrap();
    let inbox = closed_store_with_inline_bodies(d.path(), 1000);
    let rss_before = vm_rss_kib();
    let r = Store::open(d.path()).unwrap();
    let before = rchar();
    assert_eq!(r.sweep().unwrap(), SweepReport::default());
    let read = rchar() - before;
    assert!(
        read < 1_000_000,
        "the sweep read {read} bytes of 60 MB of inline bodies"
    );
    let msgs = r.messages(inbox).unwrap();
    assert_eq!(msgs.len(), 1000);
    for m in &msgs {
        assert_eq!(r.read_body_blocking(m.body_id).unwrap().len(), 60_014);
    }
    let grown = vm_rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 45 << 10,
        "RSS grew {grown} KiB opening and reading 60 MB of inline bodies"
    );
}

/// A format-3 store written before INLINE_IDS existed gets the ids at its next start, so its
/// sweep does not take the inline bodies for lost files.
#[tokio::test]
async fn inline_ids_are_rebuilt_for_a_store_that_lacks_them() {
    let d = tempfile::tempdir().unwrap();
    let inbox = closed_store_with_inline_bodies(d.path(), 5);
    recover::clear_inline_ids_for_test(d.path());
    let r = Store::open(d.path()).unwrap();
    assert_eq!(r.sweep().unwrap(), SweepReport::default());
    let msgs = r.messages(inbox).unwrap();
    assert_eq!(msgs.len(), 5);
    assert_eq!(r.read_body(msgs[4].body_id).await.unwrap().len(), 60_014);
    assert_consistent(&r, &[inbox]);
}
