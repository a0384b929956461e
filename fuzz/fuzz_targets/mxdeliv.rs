//! The HTTPS `/mxdeliv` handler (reference §3.9) on arbitrary requests: header parsing
//! (X-MAIL-FROM, X-MAIL-TO lists), the size limit, recipient checks, the gate, DKIM (answered
//! by a loopback SERVFAIL resolver, so never the network) and local delivery. Input: the first
//! byte picks the method (bit 0: GET instead of POST); the rest is header lines up to the first
//! empty line (`Name: value`), then the body. Every answer must be one of the reference's codes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaybox::testkit::{env, reset, split_request};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let method = if mode & 1 == 1 { "GET" } else { "POST" };
    let (headers, body) = split_request(rest);
    let env = env();
    env.rt.block_on(async {
        reset(&env.relay).await.expect("reset");
        let (status, _, _) = env
            .router_request(true, method, "/mxdeliv", &headers, body.to_vec())
            .await
            .expect("request");
        assert!(
            matches!(status, 200 | 400 | 405 | 408 | 413 | 500),
            "unexpected status {status}"
        );
    });
});
