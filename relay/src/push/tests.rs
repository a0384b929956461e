use super::*;
use crate::net::Shutdown;
use std::collections::VecDeque;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn secs(v: &[u64]) -> Vec<Seconds> {
    v.iter().copied().map(Seconds).collect()
}

#[test]
fn retry_schedule_follows_the_reference() {
    let d = secs(&[8, 64, 512, 4096]);
    let give_up = Seconds(5 * 3600);
    assert_eq!(next_attempt(&d, give_up, 0, 0, 0), None);
    assert_eq!(next_attempt(&d, give_up, 0, 1, 0), Some(8));
    assert_eq!(next_attempt(&d, give_up, 0, 2, 8), Some(72));
    assert_eq!(next_attempt(&d, give_up, 0, 3, 72), Some(584));
    assert_eq!(next_attempt(&d, give_up, 0, 4, 584), Some(4680));
    // past the last level
    assert_eq!(next_attempt(&d, give_up, 0, 5, 4680), None);
    // later than five hours after the first attempt
    assert_eq!(next_attempt(&d, give_up, 0, 4, 5 * 3600 - 100), None);
    assert_eq!(next_attempt(&d, Seconds(100), 0, 2, 30), Some(94));
    assert_eq!(next_attempt(&d, Seconds(100), 0, 2, 40), None);
}

#[test]
fn a_resumed_notification_continues_the_schedule() {
    let d = secs(&[8, 64, 512, 4096]);
    assert_eq!(failures_after(&d, 0), 0);
    assert_eq!(failures_after(&d, 8), 1);
    assert_eq!(failures_after(&d, 100), 2);
    assert_eq!(failures_after(&d, 100_000), 4);
}

#[test]
fn tokens_expire_ninety_days_after_they_were_set() {
    let t = DeviceToken {
        token: "x".into(),
        last_set: 1000,
    };
    assert!(token_valid(&t, 1000));
    assert!(token_valid(&t, 1000 + TOKEN_LIFETIME - 1));
    assert!(!token_valid(&t, 1000 + TOKEN_LIFETIME));
    // set in the future (clock trouble)
    assert!(!token_valid(&t, 1000 - 61));
}

/// An account that gathered thousands of tokens before `push_max_tokens` existed is pushed to
/// its most recently set ones only, not once per token.
#[tokio::test]
async fn a_flooded_account_is_pushed_to_its_newest_tokens_only() {
    let (svc, url) = Service::start(&[]).await;
    let s = setup(&url, &[1], 60).await;
    let now = s.clock.now();
    for i in 0..300 {
        s.store
            .add_device_token(s.b, &format!("tok{i:03}"), now - 300 + i, usize::MAX)
            .await
            .unwrap();
    }
    let push = Push::new(s.cfg.clone(), s.store.clone(), s.clock.clone()).unwrap();
    let shutdown = Shutdown::new();
    tokio::spawn(push.clone().run(shutdown.clone()));
    push.notify(&[s.b], "ALICE0001@x.org");
    let max = s.cfg.push_max_tokens;
    wait_for("the POSTs", || svc.got().len() == max).await;
    wait_for("nothing pending", || push.pending() == 0).await;
    let mut got = svc.got();
    got.sort();
    let want: Vec<String> = (300 - max..300).map(|i| format!("tok{i:03}")).collect();
    assert_eq!(got, want);
    shutdown.trigger();
}

/// A push service: answers each POST with the next status of the script (200 when it runs out)
/// and records the bodies.
#[derive(Clone, Default)]
struct Service {
    script: Arc<Mutex<VecDeque<u16>>>,
    got: Arc<Mutex<Vec<String>>>,
}

impl Service {
    async fn start(script: &[u16]) -> (Service, String) {
        let s = Service::default();
        s.script.lock().unwrap().extend(script.iter().copied());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/notify", l.local_addr().unwrap());
        let svc = s.clone();
        tokio::spawn(async move {
            loop {
                let Ok((c, _)) = l.accept().await else { return };
                tokio::spawn(svc.clone().conn(c));
            }
        });
        (s, url)
    }

    async fn conn(self, mut c: tokio::net::TcpStream) {
        let mut buf = Vec::new();
        loop {
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let mut b = [0u8; 4096];
                match c.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&b[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            assert!(head.starts_with("post /notify "), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                let mut b = [0u8; 4096];
                match c.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&b[..n]),
                }
            }
            let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string();
            buf.drain(..head_end + len);
            self.got.lock().unwrap().push(body);
            let status = self.script.lock().unwrap().pop_front().unwrap_or(200);
            let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
            if c.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    fn got(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    cfg: Arc<Config>,
    store: Store,
    clock: Clock,
    a: AccountId,
    b: AccountId,
}

async fn setup(url: &str, delays: &[u64], give_up: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::with_domain("x.org", dir.path()).unwrap();
    cfg.push_url = url.to_string();
    cfg.push_retry_delays = secs(delays);
    cfg.push_give_up_after = Seconds(give_up);
    let store = Store::open(&dir.path().join("store")).unwrap();
    let clock = Clock::system();
    let (a, _) = store
        .create_account("alice0001@x.org", "h", clock.now())
        .await
        .unwrap();
    let (b, _) = store
        .create_account("bob000001@x.org", "h", clock.now())
        .await
        .unwrap();
    Setup {
        _dir: dir,
        cfg: Arc::new(cfg),
        store,
        clock,
        a: a.id,
        b: b.id,
    }
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn pending_files(s: &Setup) -> usize {
    std::fs::read_dir(s.cfg.data_dir.join("pending_notifications"))
        .unwrap()
        .count()
}

#[tokio::test]
async fn each_token_is_posted_except_for_the_senders_own_mail() {
    let (svc, url) = Service::start(&[]).await;
    let s = setup(&url, &[1], 60).await;
    s.store
        .add_device_token(s.b, "openpgp:bob-1", s.clock.now(), 20)
        .await
        .unwrap();
    s.store
        .add_device_token(s.b, "bob-2", s.clock.now(), 20)
        .await
        .unwrap();
    s.store
        .add_device_token(s.a, "alice-1", s.clock.now(), 20)
        .await
        .unwrap();
    let push = Push::new(s.cfg.clone(), s.store.clone(), s.clock.clone()).unwrap();
    let shutdown = Shutdown::new();
    tokio::spawn(push.clone().run(shutdown.clone()));
    // alice writes to bob, with a bcc-self copy to herself: only bob's devices are woken
    push.notify(&[s.a, s.b], "ALICE0001@x.org");
    wait_for("two POSTs", || svc.got().len() == 2).await;
    let mut got = svc.got();
    got.sort();
    assert_eq!(got, vec!["bob-2", "openpgp:bob-1"]);
    wait_for("nothing pending", || push.pending() == 0).await;
    // bob's mail to himself wakes nobody
    push.notify(&[s.b], "bob000001@x.org");
    assert_eq!(push.pending(), 0);
    assert_eq!(pending_files(&s), 0, "a push that works writes nothing");
    shutdown.trigger();
}

#[tokio::test]
async fn gone_410_removes_the_token() {
    let (svc, url) = Service::start(&[410]).await;
    let s = setup(&url, &[1], 60).await;
    s.store
        .add_device_token(s.b, "stale", s.clock.now(), 20)
        .await
        .unwrap();
    let push = Push::new(s.cfg.clone(), s.store.clone(), s.clock.clone()).unwrap();
    let shutdown = Shutdown::new();
    tokio::spawn(push.clone().run(shutdown.clone()));
    push.notify(&[s.b], "alice0001@x.org");
    wait_for("the token to be removed", || {
        s.store
            .account_by_id(s.b)
            .unwrap()
            .unwrap()
            .device_tokens
            .is_empty()
    })
    .await;
    assert_eq!(svc.got(), vec!["stale"]);
    wait_for("nothing pending", || push.pending() == 0).await;
    assert_eq!(pending_files(&s), 0);
    shutdown.trigger();
}

#[tokio::test]
async fn failures_are_retried_on_schedule_then_given_up() {
    let (svc, url) = Service::start(&[500, 503, 500, 500]).await;
    let s = setup(&url, &[1, 1], 60).await;
    s.store
        .add_device_token(s.b, "tok", s.clock.now(), 20)
        .await
        .unwrap();
    let push = Push::new(s.cfg.clone(), s.store.clone(), s.clock.clone()).unwrap();
    let shutdown = Shutdown::new();
    tokio::spawn(push.clone().run(shutdown.clone()));
    let failed_before = M.push_failed.get();
    push.notify(&[s.b], "alice0001@x.org");
    wait_for("the first attempt", || svc.got().len() == 1).await;
    wait_for("the pending file", || pending_files(&s) == 1).await;
    // More mail while one is pending is covered by it.
    push.notify(&[s.b], "alice0001@x.org");
    assert_eq!(push.pending(), 1);
    wait_for("three attempts and giving up", || push.pending() == 0).await;
    assert_eq!(svc.got(), vec!["tok", "tok", "tok"]);
    assert_eq!(M.push_failed.get(), failed_before + 1);
    assert_eq!(pending_files(&s), 0);
    // The token stays (only 410 removes it).
    assert_eq!(
        s.store
            .account_by_id(s.b)
            .unwrap()
            .unwrap()
            .device_tokens
            .len(),
        1
    );
    // A failure, then success on the retry.
    svc.script.lock().unwrap().extend([500]);
    push.notify(&[s.b], "alice0001@x.org");
    wait_for("two more attempts", || svc.got().len() == 5).await;
    wait_for("nothing pending", || push.pending() == 0).await;
    assert_eq!(pending_files(&s), 0);
    shutdown.trigger();
}

#[tokio::test]
async fn pending_notifications_survive_a_restart() {
    let (svc, url) = Service::start(&[500]).await;
    let s = setup(&url, &[3600], 7200).await;
    s.store
        .add_device_token(s.b, "tok\nwith newline", s.clock.now(), 20)
        .await
        .unwrap();
    let push = Push::new(s.cfg.clone(), s.store.clone(), s.clock.clone()).unwrap();
    let shutdown = Shutdown::new();
    tokio::spawn(push.clone().run(shutdown.clone()));
    push.notify(&[s.b], "alice0001@x.org");
    wait_for("the pending file", || pending_files(&s) == 1).await;
    shutdown.trigger();
    drop(push);
    // Junk and an interrupted write are cleaned up at start.
    let dir = s.cfg.data_dir.join("pending_notifications");
    std::fs::write(dir.join("junk"), "nonsense").unwrap();
    std::fs::write(dir.join("0123.tmp"), "1\n2\nx").unwrap();

    let push = Push::new(s.cfg.clone(), s.store.clone(), s.clock.clone()).unwrap();
    assert_eq!(push.pending(), 1);
    assert_eq!(pending_files(&s), 1);
    let shutdown = Shutdown::new();
    tokio::spawn(push.clone().run(shutdown.clone()));
    wait_for("the resumed push", || svc.got().len() == 2).await;
    assert_eq!(svc.got()[1], "tok\nwith newline");
    wait_for("nothing pending", || push.pending() == 0).await;
    assert_eq!(pending_files(&s), 0);
    shutdown.trigger();
}

#[tokio::test]
async fn expired_and_unreachable_tokens() {
    // Nothing listens on this port: connection errors count as failures.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/notify", l.local_addr().unwrap());
    drop(l);
    let s = setup(&url, &[1], 1).await;
    let old = s.clock.now() - TOKEN_LIFETIME - 1;
    s.store.add_device_token(s.b, "old", old, 20).await.unwrap();
    let push = Push::new(s.cfg.clone(), s.store.clone(), s.clock.clone()).unwrap();
    push.notify(&[s.b], "alice0001@x.org");
    assert_eq!(push.pending(), 0, "an expired token is not used");
    s.store
        .add_device_token(s.b, "new", s.clock.now(), 20)
        .await
        .unwrap();
    let shutdown = Shutdown::new();
    tokio::spawn(push.clone().run(shutdown.clone()));
    let before = M.push_attempt_failed.get();
    push.notify(&[s.b], "alice0001@x.org");
    wait_for("giving up", || push.pending() == 0).await;
    assert!(M.push_attempt_failed.get() > before);
    shutdown.trigger();
}

#[test]
fn pending_files_hold_the_token_readable_by_the_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key: Key = (7, "openpgp:secret-token".to_string());
    write_pending(dir.path(), &key, 1234).unwrap();
    let p = dir.path().join(file_name(&key));
    let mode = std::fs::metadata(&p).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "a device token is for the relay's eyes only"
    );
    assert_eq!(load_pending(dir.path()), vec![(key, 1234)]);
}
