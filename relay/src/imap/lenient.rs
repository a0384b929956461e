//! What Dovecot's parser forgives and imap-codec does not, so that commands the reference accepts
//! work here too. Only tried on a command the strict decoder refused; pure bytes in, bytes out.
//!
//! Today that is one thing: a space before a closing parenthesis, as in
//! `SETMETADATA INBOX (/private/devicetoken "x" )`, which the reference's own tests send.

/// The command without spaces before `)` (outside quoted strings and literals), or `None` if it
/// has none, so that the caller's error stands.
pub(super) fn drop_space_before_paren(cmd: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(cmd.len());
    let mut changed = false;
    let mut i = 0;
    while i < cmd.len() {
        match cmd[i] {
            b'"' => {
                let end = quoted_end(cmd, i);
                out.extend_from_slice(&cmd[i..end]);
                i = end;
            }
            b'{' => match literal_at(cmd, i) {
                // The announcement and its raw bytes are copied as they are.
                Some(end) => {
                    out.extend_from_slice(&cmd[i..end]);
                    i = end;
                }
                None => {
                    out.push(b'{');
                    i += 1;
                }
            },
            b' ' => {
                let run = cmd[i..].iter().take_while(|&&b| b == b' ').count();
                if cmd.get(i + run) == Some(&b')') {
                    changed = true;
                } else {
                    out.extend_from_slice(&cmd[i..i + run]);
                }
                i += run;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    changed.then_some(out)
}

/// The index just past the quoted string that starts at `start` (or the end of input).
fn quoted_end(cmd: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < cmd.len() {
        match cmd[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    cmd.len()
}

/// If `{n}` or `{n+}` followed by a line end starts at `start`, the index just past the literal's
/// n bytes (or the end of input).
fn literal_at(cmd: &[u8], start: usize) -> Option<usize> {
    let rest = &cmd[start + 1..];
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 12 {
        return None;
    }
    let n: usize = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let mut j = digits;
    if rest.get(j) == Some(&b'+') {
        j += 1;
    }
    if rest.get(j) != Some(&b'}') {
        return None;
    }
    j += 1;
    if rest.get(j) == Some(&b'\r') {
        j += 1;
    }
    if rest.get(j) != Some(&b'\n') {
        return None;
    }
    let data = start + 1 + j + 1;
    Some(data.saturating_add(n).min(cmd.len()))
}

#[cfg(test)]
mod tests {
    use super::drop_space_before_paren as fix;

    #[test]
    fn space_before_a_closing_paren_is_dropped() {
        assert_eq!(
            fix(b"a SETMETADATA INBOX (/private/devicetoken \"x\" )\r\n").as_deref(),
            Some(&b"a SETMETADATA INBOX (/private/devicetoken \"x\")\r\n"[..])
        );
        assert_eq!(
            fix(b"a FETCH 1 (FLAGS  UID   )\r\n").as_deref(),
            Some(&b"a FETCH 1 (FLAGS  UID)\r\n"[..])
        );
    }

    #[test]
    fn quoted_strings_and_literals_are_left_alone() {
        assert_eq!(fix(b"a SETMETADATA INBOX (/p \"x )\")\r\n"), None);
        assert_eq!(fix(b"a SETMETADATA INBOX (/p \"x\\\" )\")\r\n"), None);
        assert_eq!(fix(b"a SETMETADATA INBOX (/p {3}\r\n  ))\r\n"), None);
        assert_eq!(
            fix(b"a SETMETADATA INBOX (/p {3+}\r\n  ) )\r\n").as_deref(),
            Some(&b"a SETMETADATA INBOX (/p {3+}\r\n  ))\r\n"[..])
        );
    }

    #[test]
    fn nothing_to_forgive_is_none() {
        assert_eq!(fix(b"a NOOP\r\n"), None);
        assert_eq!(fix(b"a FETCH 1 (FLAGS)\r\n"), None);
        assert_eq!(fix(b"a LOGIN {5}\r\n"), None);
        assert_eq!(fix(b"\"unterminated )"), None);
    }
}
