//! SMTP replies the relay sends in more than one place, named once (as mox names its codes): the
//! reply code and a text that starts with the enhanced status code (RFC 3463). The SMTP session
//! and `/mxdeliv` answer the same conditions with the same reply.

use super::Reply;

/// A fixed reply: the basic code, and the text starting with the enhanced status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canned {
    pub code: u16,
    pub text: &'static str,
}

impl Canned {
    pub fn reply(self) -> Reply {
        Reply::new(self.code, self.text)
    }
}

const fn canned(code: u16, text: &'static str) -> Canned {
    Canned { code, text }
}

pub const OK: Canned = canned(250, "2.0.0 Ok");
/// Answer to `MAIL FROM`.
pub const SENDER_OK: Canned = canned(250, "2.1.0 Ok");
/// Answer to `RCPT TO`.
pub const RECIPIENT_OK: Canned = canned(250, "2.1.5 Ok");
pub const TOO_BIG: Canned = canned(552, "5.3.4 Message size exceeds fixed maximum message size");
/// Out of memory for message bodies, or the disk refused the spool file.
pub const BUSY: Canned = canned(451, "4.3.1 Insufficient system resources, try again later");
pub const NEED_MAIL: Canned = canned(503, "5.5.1 Error: need MAIL command");
pub const UNRECOGNIZED: Canned = canned(500, "5.5.2 Command not recognized");
pub const NEED_HELO: Canned = canned(503, "5.5.1 Error: send HELO/EHLO first");
pub const BAD_SENDER: Canned = canned(501, "5.1.7 Bad sender address syntax");
pub const BAD_RECIPIENT: Canned = canned(501, "5.1.3 Bad recipient address syntax");
pub const TOO_MANY_RECIPIENTS: Canned = canned(452, "4.5.3 Too many recipients");
pub const AUTH_SYNTAX: Canned = canned(501, "5.5.4 Syntax: AUTH mechanism [initial-response]");
/// An AUTH response that is not valid base64 or not the mechanism's format.
pub const UNDECODABLE: Canned = canned(501, "5.5.2 Cannot decode response");
/// No accepted recipient when the message comes (`/mxdeliv`, delivery).
pub const NO_RECIPIENTS: Canned = canned(554, "5.5.1 No valid recipients");
pub const NO_SUCH_USER: Canned = canned(550, "5.1.1 Recipient address rejected: no such user");
/// The store or the queue failed to take the message.
pub const NOT_STORED: Canned = canned(
    451,
    "4.3.0 Local error while storing the message, try again later",
);
