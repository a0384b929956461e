//! Header rewriting: what the reference's Postfix cleanup and LMTP header checks do, as pure
//! functions over bytes. Only the top-level header is touched; the body is copied untouched.

/// Headers that would reveal the sender's software or network (reference §3.2).
const OUTGOING_STRIP: &[&str] = &["received", "x-originating-ip", "x-mailer", "user-agent"];

/// The cleanup every outgoing message gets: `OUTGOING_STRIP` removed and the Subject replaced
/// by `[...]` (the real subject travels inside the encrypted part).
pub fn clean_outgoing(data: &[u8]) -> Vec<u8> {
    let stripped = strip_headers(data, OUTGOING_STRIP);
    replace_header(&stripped, "subject", b"[...]")
}

/// Headers removed before a message lands in a local mailbox (reference §3.10).
const LOCAL_STRIP: &[&str] = &["dkim-signature", "authentication-results", "received"];

/// Removes `LOCAL_STRIP` headers (with their continuation lines) from the top-level header.
pub fn prepare_local_delivery(data: &[u8]) -> Vec<u8> {
    strip_headers(data, LOCAL_STRIP)
}

/// What happens to one header field (with its continuation lines).
enum Field<'a> {
    Keep,
    Drop,
    Replace(&'a [u8]),
}

/// Walks the top-level header field by field; the body is copied untouched.
fn rewrite<'a>(data: &[u8], mut decide: impl FnMut(&str) -> Field<'a>) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut pos = 0;
    let mut keep = true;
    while pos < data.len() {
        let end = data[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| pos + i + 1)
            .unwrap_or(data.len());
        let line = &data[pos..end];
        if line == b"\r\n" || line == b"\n" {
            out.extend_from_slice(&data[pos..]);
            return out;
        }
        if !matches!(line.first(), Some(b' ' | b'\t')) {
            keep = true;
            if let Some(c) = line.iter().position(|&b| b == b':') {
                match decide(String::from_utf8_lossy(&line[..c]).trim()) {
                    Field::Keep => {}
                    Field::Drop => keep = false,
                    Field::Replace(value) => {
                        out.extend_from_slice(&line[..c]);
                        out.extend_from_slice(b": ");
                        out.extend_from_slice(value);
                        out.extend_from_slice(if line.ends_with(b"\r\n") {
                            b"\r\n"
                        } else {
                            b"\n"
                        });
                        keep = false;
                    }
                }
            }
        }
        if keep {
            out.extend_from_slice(line);
        }
        pos = end;
    }
    out
}

/// Removes the named top-level header fields, keeping every other byte as it was.
pub fn strip_headers(data: &[u8], names: &[&str]) -> Vec<u8> {
    rewrite(data, |name| {
        if names.iter().any(|n| name.eq_ignore_ascii_case(n)) {
            Field::Drop
        } else {
            Field::Keep
        }
    })
}

/// Replaces the value of every `name` field (with its continuation lines) by `value`.
pub fn replace_header(data: &[u8], name: &str, value: &[u8]) -> Vec<u8> {
    rewrite(data, |n| {
        if n.eq_ignore_ascii_case(name) {
            Field::Replace(value)
        } else {
            Field::Keep
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outgoing_cleanup_strips_and_hides_the_subject() {
        let m = b"Received: from [192.0.2.7]\r\n by relay\r\nFrom: a@x.org\r\nX-Mailer: Foo 1.0\r\nUser-Agent: Bar\r\nX-Originating-IP: [192.0.2.7]\r\nSubject: secret\r\n plans\r\nTo: b@x.org\r\n\r\nSubject: body stays\r\n";
        let out = clean_outgoing(m);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "From: a@x.org\r\nSubject: [...]\r\nTo: b@x.org\r\n\r\nSubject: body stays\r\n"
        );
    }
}
