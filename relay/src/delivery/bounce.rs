//! Delivery status notifications (RFC 3464) for the sender's INBOX. The Delta Chat core reads
//! the `message/delivery-status` part (`Action: failed`) and the original `Message-ID` from the
//! `text/rfc822-headers` part, and marks the sent message as failed.

use crate::policy::Reply;
use std::fmt::Write;

/// The enhanced status code (`5.1.1`) at the start of a reply text, or one derived from the
/// reply code.
pub fn status_of(reply: &Reply) -> String {
    let first = reply.text.split_whitespace().next().unwrap_or("");
    let parts: Vec<&str> = first.split('.').collect();
    let valid = parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    if valid {
        first.to_string()
    } else {
        format!("{}.0.0", (reply.code / 100).clamp(4, 5))
    }
}

/// The header of the original message (up to the blank line), at most 64 KiB of it.
fn header_of(original: &[u8]) -> &[u8] {
    let end = original
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 2)
        .or_else(|| {
            original
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| i + 1)
        })
        .unwrap_or(original.len());
    &original[..end.min(64 * 1024)]
}

/// Converts any line ends to CRLF and drops lines that would break out of the MIME part.
fn crlf_lines(data: &[u8], out: &mut String) {
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("--") {
            // The part is text/rfc822-headers; a header line never starts with "--", so such a
            // line is junk that could only collide with our boundary.
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
}

fn rfc2822(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S +0000")
        .to_string()
}

/// The bounce for `sender` about the `failed` recipients of `original`.
pub fn report(
    domain: &str,
    sender: &str,
    failed: &[(String, Reply)],
    original: &[u8],
    arrival: i64,
    now: i64,
) -> Vec<u8> {
    use rand::Rng;
    let token: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    let boundary = format!("relaybox-report-{token}");
    let mut m = String::with_capacity(2048);
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{domain}>\r\n\
         To: <{sender}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{token}.bounce@{host}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Description: Notification\r\n\
         \r\n\
         This is the mail system at {domain}.\r\n\
         \r\n\
         Your message could not be delivered to the following recipients:\r\n\
         \r\n",
        date = rfc2822(now),
        host = domain.trim_start_matches('[').trim_end_matches(']'),
    );
    for (rcpt, reply) in failed {
        let _ = write!(m, "<{rcpt}>: {reply}\r\n");
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         Content-Description: Delivery report\r\n\
         \r\n\
         Reporting-MTA: dns; {domain}\r\n\
         Arrival-Date: {arrival}\r\n",
        arrival = rfc2822(arrival),
    );
    for (rcpt, reply) in failed {
        let diag = reply.to_string().replace(['\r', '\n'], " ");
        let _ = write!(
            m,
            "\r\n\
             Final-Recipient: rfc822; {rcpt}\r\n\
             Action: failed\r\n\
             Status: {status}\r\n\
             Diagnostic-Code: smtp; {diag}\r\n",
            status = status_of(reply),
        );
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         Content-Description: Undelivered Message Headers\r\n\
         \r\n"
    );
    crlf_lines(header_of(original), &mut m);
    let _ = write!(m, "\r\n--{boundary}--\r\n");
    m.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MimeHeaders;

    #[test]
    fn status_codes() {
        assert_eq!(status_of(&Reply::new(550, "5.1.1 no such user")), "5.1.1");
        assert_eq!(status_of(&Reply::new(556, "5.1.10 null MX")), "5.1.10");
        assert_eq!(
            status_of(&Reply::new(512, "Domain x does not exist")),
            "5.0.0"
        );
        assert_eq!(status_of(&Reply::new(421, "Failed to connect")), "4.0.0");
        assert_eq!(status_of(&Reply::new(550, "5.x.1 junk")), "5.0.0");
    }

    #[test]
    fn report_is_a_parsable_dsn() {
        let original = b"From: <sender1@a.test>\r\nTo: <nobody@b.test>\r\nMessage-ID: <abc@a.test>\r\n--evil\r\n\r\nbody\r\n";
        let failed = vec![(
            "nobody@b.test".to_string(),
            Reply::new(550, "5.1.1 Recipient address rejected: no such user"),
        )];
        let r = report(
            "a.test",
            "sender1@a.test",
            &failed,
            original,
            1_700_000_000,
            1_700_000_100,
        );
        let msg = mail_parser::MessageParser::default().parse(&r).unwrap();
        assert_eq!(
            msg.from().unwrap().first().unwrap().address().unwrap(),
            "MAILER-DAEMON@a.test"
        );
        assert_eq!(
            msg.header_raw("Auto-Submitted").unwrap().trim(),
            "auto-replied"
        );
        let ct = msg.content_type().unwrap();
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        let parts: Vec<String> = msg
            .parts
            .iter()
            .filter_map(|p| {
                p.content_type()
                    .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")))
            })
            .collect();
        assert_eq!(
            parts[1..],
            [
                "text/plain",
                "message/delivery-status",
                "text/rfc822-headers"
            ]
        );
        let text = String::from_utf8_lossy(&r);
        assert!(text.contains(
            "Final-Recipient: rfc822; nobody@b.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ));
        assert!(text.contains("Message-ID: <abc@a.test>\r\n"));
        assert!(
            !text.contains("--evil"),
            "a header line cannot end the part early"
        );
        assert!(
            !text.contains("\r\nbody\r\n"),
            "only the header of the original is returned"
        );
    }
}
