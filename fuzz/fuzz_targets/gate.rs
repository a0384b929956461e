//! The encryption gate on arbitrary bytes: MIME parsing, the armor check and the packet walk,
//! both directions, with the envelope a real sender would use (MAIL FROM = the From address,
//! RCPT TO = the same, so the self-sent setup-message exception is reachable too).
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaybox::testkit::{
    check_incoming, check_outgoing, check_outgoing_kind, from_address, is_armored_pgp_message,
    is_valid_packet_sequence, Direction, Envelope, MailKind, Verdict,
};

fuzz_target!(|data: &[u8]| {
    let from = match from_address(data) {
        Ok(Some(f)) => f,
        _ => "alice@example.org".to_string(),
    };
    let env = Envelope {
        mail_from: from.clone(),
        rcpt_to: vec![from],
        peer: None,
    };
    let (verdict, kind) = check_outgoing_kind(&env, data);
    if let (Verdict::Accept(out), MailKind::Encrypted | MailKind::SecureJoin) = (verdict, kind) {
        // Header cleanup (Subject → [...], trace headers dropped) must not change what the
        // message is. (A setup message stops being one: its Subject is what marks it.)
        assert_eq!(
            check_outgoing_kind(&env, &out).1,
            kind,
            "header cleanup changed an accepted message"
        );
    }
    let _ = check_outgoing(&env, data);
    let _ = check_incoming(&env, data);
    let _ = is_armored_pgp_message(data, Direction::Outgoing);
    let _ = is_armored_pgp_message(data, Direction::Incoming);
    let _ = is_valid_packet_sequence(data);
});
