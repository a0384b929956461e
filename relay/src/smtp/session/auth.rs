//! AUTH PLAIN and AUTH LOGIN (submission only, after TLS). Accounts are created by their first
//! login (`Accounts::login`), so this is also where SMTP-first registration happens.

use super::{Flow, Session, MAX_LINE};
use crate::accounts::LoginError;
use crate::policy::codes;
use crate::smtp::stream::SmtpStream;
use crate::smtp::Kind;
use base64::Engine;
use tokio::io::{AsyncRead, AsyncWrite};

impl Session {
    pub(super) async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut SmtpStream<S>,
        args: &str,
    ) -> Flow {
        if self.kind == Kind::Mx {
            return self.fail(io, 503, "5.5.1 Error: authentication not enabled");
        }
        if self.helo.is_none() {
            return self.fail(io, codes::NEED_HELO.code, codes::NEED_HELO.text);
        }
        if !self.tls {
            return self.fail(
                io,
                538,
                "5.7.11 Encryption required for requested authentication mechanism",
            );
        }
        if self.user.is_some() {
            return self.fail(io, 503, "5.5.1 Error: already authenticated");
        }
        if self.tx.is_some() {
            return self.fail(io, 503, "5.5.1 Error: MAIL transaction in progress");
        }
        let mut parts = args.split_ascii_whitespace();
        let (mech, initial) = (parts.next(), parts.next());
        if parts.next().is_some() {
            return self.fail(io, codes::AUTH_SYNTAX.code, codes::AUTH_SYNTAX.text);
        }
        let creds = match mech.map(str::to_ascii_uppercase).as_deref() {
            Some("PLAIN") => self.auth_plain(io, initial).await,
            Some("LOGIN") => self.auth_login(io, initial).await,
            Some(_) => return self.fail(io, 504, "5.5.4 Unrecognized authentication type"),
            None => return self.fail(io, codes::AUTH_SYNTAX.code, codes::AUTH_SYNTAX.text),
        };
        match creds {
            Ok(Some((user, password))) => self.login(io, &user, &password).await,
            Ok(None) => self.auth_failed(io).await,
            Err(flow) => flow,
        }
    }

    /// SASL PLAIN (RFC 4616): `authzid NUL authcid NUL passwd`, base64. `Ok(None)` when the
    /// response cannot be credentials.
    async fn auth_plain<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut SmtpStream<S>,
        initial: Option<&str>,
    ) -> Result<Option<(String, String)>, Flow> {
        let resp = match initial {
            Some(r) => decode_b64(r),
            None => self.sasl_step(io, "").await?,
        };
        let Some(resp) = resp else {
            return Err(self.fail(io, codes::UNDECODABLE.code, codes::UNDECODABLE.text));
        };
        let mut fields = resp.split(|&b| b == 0);
        let (Some(authz), Some(user), Some(pass), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Ok(None);
        };
        if !authz.is_empty() && authz != user {
            return Ok(None);
        }
        match (
            String::from_utf8(user.to_vec()),
            String::from_utf8(pass.to_vec()),
        ) {
            (Ok(u), Ok(p)) => Ok(Some((u, p))),
            _ => Ok(None),
        }
    }

    /// The LOGIN mechanism: user name and password in two steps, the first possibly given as
    /// the initial response.
    async fn auth_login<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut SmtpStream<S>,
        initial: Option<&str>,
    ) -> Result<Option<(String, String)>, Flow> {
        let user = match initial {
            Some(r) => decode_b64(r),
            None => self.sasl_step(io, "VXNlcm5hbWU6").await?,
        };
        let Some(user) = user else {
            return Err(self.fail(io, codes::UNDECODABLE.code, codes::UNDECODABLE.text));
        };
        let Some(pass) = self.sasl_step(io, "UGFzc3dvcmQ6").await? else {
            return Err(self.fail(io, codes::UNDECODABLE.code, codes::UNDECODABLE.text));
        };
        match (String::from_utf8(user), String::from_utf8(pass)) {
            (Ok(u), Ok(p)) => Ok(Some((u, p))),
            _ => Ok(None),
        }
    }

    /// Sends a `334` challenge and reads the client's base64 answer (`None` if undecodable).
    async fn sasl_step<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut SmtpStream<S>,
        challenge: &str,
    ) -> Result<Option<Vec<u8>>, Flow> {
        io.reply(334, challenge);
        let line = match io.read_line(MAX_LINE).await {
            Ok(l) => l,
            Err(e) => {
                self.line_error(io, e);
                return Err(Flow::Close);
            }
        };
        if line == b"*" {
            return Err(self.fail(io, 501, "5.7.0 Authentication aborted"));
        }
        Ok(std::str::from_utf8(&line).ok().and_then(decode_b64))
    }

    async fn login<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut SmtpStream<S>,
        user: &str,
        password: &str,
    ) -> Flow {
        match self
            .relay
            .accounts
            .login_from(user, password, self.peer)
            .await
        {
            Ok(u) => {
                tracing::info!(user = %u.account.addr, created = u.created, "authenticated");
                self.user = Some(u.account.addr);
                if let Some(slot) = &mut self.slot {
                    slot.authenticated();
                }
                io.reply(235, "2.7.0 Authentication successful");
                Flow::Continue
            }
            Err(LoginError::Failed) => {
                tracing::info!(user = ?loggable(user), "authentication failed");
                self.auth_failed(io).await
            }
            Err(LoginError::RegistrationRejected(why)) => {
                tracing::warn!(user = ?loggable(user), %why, "registration rejected");
                self.auth_failed(io).await
            }
            Err(LoginError::Throttled) => {
                tokio::time::sleep(self.limits.auth_fail_delay).await;
                self.fail(io, 454, "4.7.0 Too many failed logins, try again later")
            }
            Err(LoginError::Store(e)) => {
                tracing::error!("login: store error: {e}");
                io.reply(454, "4.7.0 Temporary authentication failure");
                Flow::Continue
            }
        }
    }

    async fn auth_failed<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut SmtpStream<S>,
    ) -> Flow {
        tokio::time::sleep(self.limits.auth_fail_delay).await;
        self.fail(io, 535, "5.7.8 Authentication credentials invalid")
    }
}

/// Base64 of a SASL response; `=` is the empty response (RFC 4954).
fn decode_b64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s == "=" {
        return Some(Vec::new());
    }
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// A client-chosen login name as it may appear in the log: bounded, and printed with `?` so
/// control characters are escaped.
fn loggable(user: &str) -> &str {
    match user.char_indices().nth(100) {
        Some((i, _)) => &user[..i],
        None => user,
    }
}
