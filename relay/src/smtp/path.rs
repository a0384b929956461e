//! `MAIL FROM:<path> params` and `RCPT TO:<path> params`. Pure.
//!
//! The path is parsed here because smtp-proto 0.2 refuses address-literal domains
//! (`user@[192.0.2.1]`), which IP-only relays use for every address; the parameters (SIZE, BODY,
//! SMTPUTF8, DSN, …) are left to smtp-proto's parser.

use crate::policy::Reply;
use smtp_proto::request::parser::Rfc5321Parser;
use smtp_proto::{Error as ParseError, MailFrom, RcptTo};
use std::borrow::Cow;

/// Longest path we take (RFC 5321 §4.5.3.1.3 says 256 octets including the brackets).
const MAX_PATH: usize = 256;

/// Parses the arguments of MAIL (after the verb). The address is empty for the null sender.
pub fn parse_mail(args: &str) -> Result<MailFrom<String>, Reply> {
    let syntax = || Reply::new(501, "5.5.4 Syntax: MAIL FROM:<address>");
    let (path, rest) = split(args, "FROM").ok_or_else(syntax)?;
    let addr = if path.is_empty() {
        ""
    } else {
        mailbox(path).ok_or_else(|| crate::policy::codes::BAD_SENDER.reply())?
    };
    if size_overflows(rest) {
        return Err(too_big());
    }
    let line = format!("{rest}\r\n");
    let mut bytes = line.as_bytes().iter();
    let mut params = Rfc5321Parser::new(&mut bytes)
        .mail_from_parameters(Cow::Borrowed(""))
        .map_err(param_error)?
        .into_owned();
    params.address = addr.to_string();
    Ok(params)
}

/// Parses the arguments of RCPT (after the verb). `<postmaster>` comes back as `postmaster`.
pub fn parse_rcpt(args: &str) -> Result<RcptTo<String>, Reply> {
    let syntax = || Reply::new(501, "5.5.4 Syntax: RCPT TO:<address>");
    let (path, rest) = split(args, "TO").ok_or_else(syntax)?;
    let bad = || crate::policy::codes::BAD_RECIPIENT.reply();
    let addr = if path.eq_ignore_ascii_case("postmaster") {
        path
    } else {
        mailbox(path).ok_or_else(bad)?
    };
    let line = format!("{rest}\r\n");
    let mut bytes = line.as_bytes().iter();
    let mut params = Rfc5321Parser::new(&mut bytes)
        .rcpt_to_parameters(Cow::Borrowed(""))
        .map_err(param_error)?
        .into_owned();
    params.address = addr.to_string();
    Ok(params)
}

fn too_big() -> Reply {
    crate::policy::codes::TOO_BIG.reply()
}

/// smtp-proto 0.2.5 wraps a SIZE beyond `usize::MAX` around to a small number (its
/// `size_saturating` restarts from the next digit), so such values are caught here first.
fn size_overflows(params: &str) -> bool {
    params.split_ascii_whitespace().any(|p| {
        let Some(v) = p
            .get(..5)
            .filter(|k| k.eq_ignore_ascii_case("SIZE="))
            .map(|_| &p[5..])
        else {
            return false;
        };
        !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && v.parse::<usize>().is_err()
    })
}

fn param_error(e: ParseError) -> Reply {
    match e {
        // A SIZE too large to be a number is too large a message.
        ParseError::InvalidParameter { param: "SIZE" } => too_big(),
        ParseError::InvalidParameter { param } => {
            Reply::new(501, format!("5.5.4 Invalid parameter {param}"))
        }
        ParseError::UnsupportedParameter { param } => {
            Reply::new(555, format!("5.5.4 Unsupported option: {param}"))
        }
        _ => Reply::new(501, "5.5.4 Syntax error in parameters"),
    }
}

/// `KEYWORD:<path> rest` → (path, rest). Spaces around the colon are tolerated, as Postfix
/// does; the angle brackets are required. A `>` inside a quoted local part does not end the path.
fn split<'a>(args: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    let args = args.trim_start();
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let after = args[keyword.len()..].trim_start().strip_prefix(':')?;
    let inner = after.trim_start().strip_prefix('<')?;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => {
                let rest = &inner[i + 1..];
                if !rest.is_empty() && !rest.starts_with(' ') {
                    return None;
                }
                return Some((&inner[..i], rest));
            }
            _ => {}
        }
    }
    None
}

/// Checks `local@domain` (after dropping an obsolete source route) and returns it.
fn mailbox(path: &str) -> Option<&str> {
    // `@a.org,@b.org:user@c.org`: the route is ignored (RFC 5321 §4.1.2, §C).
    let path = match path.strip_prefix('@') {
        Some(_) => path.split_once(':')?.1,
        None => path,
    };
    if path.len() > MAX_PATH {
        return None;
    }
    let at = path.rfind('@')?;
    let (local, domain) = (&path[..at], &path[at + 1..]);
    (local_part(local) && domain_ok(domain)).then_some(path)
}

/// Dot-string or quoted string; UTF-8 is allowed (SMTPUTF8, RFC 6531).
fn local_part(s: &str) -> bool {
    if let Some(q) = s.strip_prefix('"') {
        let Some(q) = q.strip_suffix('"') else {
            return false;
        };
        let mut escaped = false;
        for c in q.chars() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => return false,
                c if c.is_control() => return false,
                _ => {}
            }
        }
        return !escaped;
    }
    !s.is_empty()
        && s.split('.').all(|atom| {
            !atom.is_empty()
                && atom.chars().all(|c| {
                    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
                })
        })
}

/// A host name (UTF-8 labels allowed) or an address literal like `[192.0.2.1]`,
/// `[IPv6:2001:db8::1]`.
fn domain_ok(s: &str) -> bool {
    if let Some(lit) = s.strip_prefix('[') {
        let Some(lit) = lit.strip_suffix(']') else {
            return false;
        };
        return !lit.is_empty()
            && lit
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":.-".contains(&b));
    }
    !s.is_empty()
        && s.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || !c.is_ascii())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(args: &str) -> Result<(String, usize, u64), u16> {
        parse_mail(args)
            .map(|m| (m.address, m.size, m.flags))
            .map_err(|r| r.code)
    }

    fn rcpt(args: &str) -> Result<String, u16> {
        parse_rcpt(args).map(|r| r.address).map_err(|r| r.code)
    }

    #[test]
    fn addresses_with_domain_literals_and_utf8_parse() {
        assert_eq!(rcpt("TO:<abc@[127.0.0.1]>"), Ok("abc@[127.0.0.1]".into()));
        assert_eq!(
            rcpt("to:<a@[IPv6:2001:db8::1]>"),
            Ok("a@[IPv6:2001:db8::1]".into())
        );
        assert_eq!(rcpt("TO:<用户@例子.广告>"), Ok("用户@例子.广告".into()));
        assert_eq!(rcpt("TO: <a.b+c@x.org>"), Ok("a.b+c@x.org".into()));
        assert_eq!(rcpt("TO:<\"a >b\"@x.org>"), Ok("\"a >b\"@x.org".into()));
        assert_eq!(rcpt("TO:<@relay.org:a@x.org>"), Ok("a@x.org".into()));
        assert_eq!(rcpt("TO:<Postmaster>"), Ok("Postmaster".into()));
    }

    #[test]
    fn bad_paths_are_501() {
        for a in [
            "TO:a@x.org",
            "TO:<a@x.org",
            "TO:<>",
            "TO:<a@>",
            "TO:<@x.org>",
            "TO:<a..b@x.org>",
            "TO:<a@x..org>",
            "TO:<a b@x.org>",
            "TO:<a@[1.2.3.4>",
            "TO:<a@x.org>junk",
            "FROM:<a@x.org>",
            "",
        ] {
            assert_eq!(rcpt(a), Err(501), "{a}");
        }
    }

    #[test]
    fn mail_parameters_come_from_smtp_proto() {
        assert_eq!(mail("FROM:<>"), Ok((String::new(), 0, 0)));
        let (a, size, flags) =
            mail("FROM:<a@[10.0.0.1]> SIZE=1234 BODY=8BITMIME SMTPUTF8").unwrap();
        assert_eq!((a.as_str(), size), ("a@[10.0.0.1]", 1234));
        assert_ne!(flags & smtp_proto::MAIL_SMTPUTF8, 0);
        assert_ne!(flags & smtp_proto::MAIL_BODY_8BITMIME, 0);
        assert_eq!(
            mail("FROM:<a@x.org> SIZE=99999999999999999999999"),
            Err(552)
        );
        assert_eq!(mail("FROM:<a@x.org> BODY=9BIT"), Err(501));
        assert_eq!(mail("FROM:<a@x.org> FOO=BAR"), Err(555));
        assert_eq!(mail("FROM:<a@x.org>  "), Ok(("a@x.org".into(), 0, 0)));
        assert_eq!(rcpt("TO:<a@x.org> NOTIFY=NEVER"), Ok("a@x.org".into()));
    }
}
