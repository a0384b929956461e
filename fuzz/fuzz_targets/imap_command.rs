//! The IMAP session (command and literal framing, imap-codec decoding, and execution against a
//! real store: LOGIN/SELECT/FETCH/STORE/SEARCH/APPEND/IDLE/METADATA…) on arbitrary client input
//! over an in-memory stream. The first byte says whether TLS counts as up and whether a login
//! and `SELECT INBOX` are sent first; the rest is written as is, then the client closes. A
//! session that does not finish within 10 s after its input ended is reported as a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaybox::testkit::{env, imap_session, reset, PASS, USER};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let env = env();
    let tls = mode & 1 != 0;
    let mut input = Vec::new();
    if mode & 2 != 0 {
        input.extend_from_slice(format!("L1 LOGIN {USER} {PASS}\r\n").as_bytes());
        if mode & 4 != 0 {
            input.extend_from_slice(b"S1 SELECT INBOX\r\n");
        }
    }
    input.extend_from_slice(rest);
    env.rt.block_on(async {
        reset(&env.relay).await.expect("reset");
        let (client, server) = tokio::io::duplex(1 << 16);
        let (mut rd, mut wr) = tokio::io::split(client);
        let session = imap_session(env.relay.clone(), tls, server);
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
            panic!("IMAP session hung after its input ended");
        }
    });
});
