//! The SMTP session (command framing, command parsing, AUTH, MAIL/RCPT/DATA with dot-unstuffing,
//! the policy and local delivery) on arbitrary client input over an in-memory stream. The first
//! byte picks the port kind, whether TLS counts as up, and whether a login is sent first; the
//! rest is written as is, then the client closes. A session that does not finish within 10 s
//! after its input ended is reported as a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaybox::testkit::{env, reset, smtp_session, SmtpKind, PASS, USER};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn b64(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let env = env();
    let kind = match mode & 3 {
        0 => SmtpKind::Mx,
        1 => SmtpKind::Submission,
        _ => SmtpKind::Submissions,
    };
    let tls = mode & 4 != 0 || kind == SmtpKind::Submissions;
    let mut input = Vec::new();
    if mode & 8 != 0 {
        input.extend_from_slice(b"EHLO fuzz.example\r\n");
        input.extend_from_slice(
            format!("AUTH PLAIN {}\r\n", b64(&format!("\0{USER}\0{PASS}"))).as_bytes(),
        );
    }
    input.extend_from_slice(rest);
    env.rt.block_on(async {
        reset(&env.relay).await.expect("reset");
        let (client, server) = tokio::io::duplex(1 << 16);
        let (mut rd, mut wr) = tokio::io::split(client);
        let session = smtp_session(env.relay.clone(), kind, tls, server, Duration::from_secs(5));
        let write = async {
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
        };
        let read = async {
            let mut sink = Vec::new();
            let _ = rd.read_to_end(&mut sink).await;
        };
        let all = async { tokio::join!(session, write, read) };
        if tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .is_err()
        {
            panic!("SMTP session hung after its input ended");
        }
    });
});
