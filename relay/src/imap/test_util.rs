//! Test harness: a Relay on a temporary directory, and a scripted client that talks to a session
//! over an in-memory pipe.

use super::io::Framed;
use super::session::Session;
use crate::config::Config;
use crate::Relay;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};

pub(crate) const USER: &str = "abcdefghi@[127.0.0.1]";
pub(crate) const PASS: &str = "password123";

pub(crate) struct Env {
    pub relay: Arc<Relay>,
    _dir: tempfile::TempDir,
}

pub(crate) fn env() -> Env {
    env_with(|_| {})
}

pub(crate) fn env_with(tweak: impl FnOnce(&mut Config)) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = crate::testkit::test_relay(dir.path(), tweak).expect("relay");
    Env { relay, _dir: dir }
}

/// A scripted IMAP client.
pub(crate) struct Client {
    rd: BufReader<ReadHalf<DuplexStream>>,
    wr: WriteHalf<DuplexStream>,
    pub session: tokio::task::JoinHandle<super::session::Exit>,
    next_tag: u32,
}

const WAIT: Duration = Duration::from_secs(10);

impl Client {
    /// A session as on port 993 (`tls`) or port 143 before STARTTLS (`!tls`); the greeting is
    /// read and returned.
    pub async fn connect(relay: &Arc<Relay>, tls: bool) -> (Client, String) {
        Client::connect_with(relay, tls, |_| {}).await
    }

    pub async fn connect_with(
        relay: &Arc<Relay>,
        tls: bool,
        tweak: impl FnOnce(&mut Session) + Send + 'static,
    ) -> (Client, String) {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let relay = relay.clone();
        let session = tokio::spawn(async move {
            let mut s = Session::new(relay, tls, true);
            tweak(&mut s);
            let mut io = Framed::new(theirs);
            s.run(&mut io, true).await
        });
        let (rd, wr) = tokio::io::split(ours);
        let mut c = Client {
            rd: BufReader::new(rd),
            wr,
            session,
            next_tag: 1,
        };
        let greeting = c.line().await;
        (c, greeting)
    }

    /// A logged-in client (account created on first use).
    pub async fn login(relay: &Arc<Relay>) -> Client {
        let (mut c, _) = Client::connect(relay, true).await;
        let r = c.cmd(&format!("LOGIN {USER} {PASS}")).await;
        assert!(r.last().unwrap().contains("OK"), "{r:?}");
        c
    }

    pub async fn send(&mut self, data: &[u8]) {
        self.wr.write_all(data).await.expect("write");
        self.wr.flush().await.expect("flush");
    }

    /// One response line with any literals it announces spliced in, without the final CRLF.
    pub async fn line(&mut self) -> String {
        tokio::time::timeout(WAIT, self.read_response())
            .await
            .expect("server answered in time")
    }

    /// Like `line`, waiting at most `d`; None on timeout.
    pub async fn line_within(&mut self, d: Duration) -> Option<String> {
        tokio::time::timeout(d, self.read_response()).await.ok()
    }

    async fn read_raw_line(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        loop {
            let b = self.rd.read_u8().await.expect("connection open");
            line.push(b);
            if b == b'\n' {
                return line;
            }
        }
    }

    async fn read_response(&mut self) -> String {
        let mut out = Vec::new();
        loop {
            let line = self.read_raw_line().await;
            out.extend_from_slice(&line);
            match super::io::literal_suffix(&line) {
                Some((n, _)) => {
                    let mut buf = vec![0u8; n as usize];
                    self.rd.read_exact(&mut buf).await.expect("literal");
                    out.extend_from_slice(&buf);
                }
                None => break,
            }
        }
        let mut s = String::from_utf8_lossy(&out).into_owned();
        while s.ends_with('\n') || s.ends_with('\r') {
            s.pop();
        }
        s
    }

    /// Sends `tag cmd` and collects the responses up to and including the tagged one.
    pub async fn cmd(&mut self, cmd: &str) -> Vec<String> {
        let tag = format!("t{}", self.next_tag);
        self.next_tag += 1;
        self.send(format!("{tag} {cmd}\r\n").as_bytes()).await;
        self.until_tagged(&tag).await
    }

    pub async fn until_tagged(&mut self, tag: &str) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let l = self.line().await;
            let done = l.starts_with(&format!("{tag} "));
            out.push(l);
            if done {
                return out;
            }
        }
    }

    /// Whether the server closed the connection (EOF) within a short wait.
    pub async fn closed(&mut self) -> bool {
        let mut b = [0u8; 256];
        loop {
            match tokio::time::timeout(WAIT, self.rd.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// The status word (OK/NO/BAD) of the tagged line of a reply.
pub(crate) fn status(r: &[String]) -> &str {
    last(r).split(' ').nth(1).unwrap_or("")
}

/// The tagged status line of a reply.
pub(crate) fn last(r: &[String]) -> &str {
    r.last().map(String::as_str).unwrap_or("")
}

/// A small multipart message like Delta Chat sends.
pub(crate) const MULTIPART: &str = "From: Alice <alice@example.org>\r\n\
To: bob@example.org, \"Carl, Jr\" <carl@example.net>\r\n\
Subject: =?utf-8?q?hello_there?=\r\n\
Date: Tue, 1 Jul 2025 10:00:00 +0000\r\n\
Message-ID: <m1@example.org>\r\n\
Chat-Version: 1.0\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"XYZ\"\r\n\
\r\n\
--XYZ\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
hello\r\n\
world\r\n\
--XYZ\r\n\
Content-Type: application/octet-stream\r\n\
Content-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=\"a.bin\"\r\n\
\r\n\
AAAA\r\n\
--XYZ--\r\n";

pub(crate) fn simple(subject: &str) -> String {
    format!(
        "From: alice@example.org\r\nTo: {USER}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@x>\r\n\r\nbody of {subject}\r\n"
    )
}

/// APPENDs `msg` to `mailbox` with a synchronizing literal.
pub(crate) async fn append(c: &mut Client, mailbox: &str, msg: &str) -> Vec<String> {
    let tag = format!("ap{}", c.next_tag);
    c.next_tag += 1;
    c.send(format!("{tag} APPEND {mailbox} {{{}}}\r\n", msg.len()).as_bytes())
        .await;
    let cont = c.line().await;
    assert!(cont.starts_with("+ "), "{cont}");
    c.send(format!("{msg}\r\n").as_bytes()).await;
    c.until_tagged(&tag).await
}

/// Account id of the test user (after a login created it).
pub(crate) fn account_id(relay: &Relay) -> u64 {
    relay
        .store
        .account(USER)
        .expect("store")
        .expect("account exists")
        .id
}
