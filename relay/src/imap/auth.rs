//! The not-authenticated state: what we offer (CAPABILITY) and how a client proves who it is
//! (LOGIN, AUTHENTICATE PLAIN). Accounts are created by their first login (`Accounts::login`).

use super::io::{Framed, ReadError};
use super::session::{other_code, Authed, Done, Session, PREAUTH_TIMEOUT};
use crate::accounts::LoginError;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::response::{Capability, Code, CommandContinuationRequest, Response};
use imap_codec::AuthenticateDataCodec;
use std::borrow::Cow;
use std::io;
use tokio::io::{AsyncRead, AsyncWrite};

fn failed() -> Done {
    Done::no("Authentication failed").code(other_code("AUTHENTICATIONFAILED"))
}

impl Session {
    pub(crate) fn capabilities(&self) -> Vec1<Capability<'static>> {
        let mut v = vec![Capability::Imap4Rev1];
        if !self.tls {
            if self.starttls {
                v.push(Capability::StartTls);
            }
            v.push(Capability::LoginDisabled);
        } else if self.user.is_none() {
            v.push(Capability::Auth(AuthMechanism::Plain));
            v.push(Capability::SaslIr);
        }
        v.extend([
            Capability::LiteralPlus,
            Capability::Id,
            Capability::Enable,
            Capability::Idle,
            Capability::Namespace,
            Capability::Unselect,
            Capability::UidPlus,
            Capability::Move,
            Capability::CondStore,
            Capability::Quota,
            Capability::Metadata,
        ]);
        for name in ["SPECIAL-USE", "XDELTAPUSH", "XCHATMAIL"] {
            if let Ok(c) = Capability::try_from(name) {
                v.push(c);
            }
        }
        Vec1::try_from(v).unwrap_or_else(|_| Vec1::from(Capability::Imap4Rev1))
    }

    pub(super) async fn login(&mut self, user: &[u8], password: &[u8]) -> Done {
        if !self.tls {
            return Done::no("Log in only after STARTTLS").code(other_code("PRIVACYREQUIRED"));
        }
        let (Ok(user), Ok(password)) = (std::str::from_utf8(user), std::str::from_utf8(password))
        else {
            self.auth_failures += 1;
            return failed();
        };
        match self
            .relay
            .accounts
            .login_from(user, password, self.peer)
            .await
        {
            Ok(u) => {
                tracing::Span::current().record("user", u.account.addr.as_str());
                tracing::info!(created = u.created, "IMAP login");
                self.user = Some(Authed { id: u.account.id });
                if let Some(slot) = &mut self.slot {
                    slot.authenticated();
                }
                Done::ok("Logged in").code(Code::Capability(self.capabilities()))
            }
            Err(LoginError::Failed) => {
                self.auth_failures += 1;
                tracing::info!("IMAP login failed");
                failed()
            }
            Err(LoginError::RegistrationRejected(_)) => {
                Done::no("New accounts cannot be created right now, try again later")
                    .code(other_code("UNAVAILABLE"))
            }
            Err(LoginError::Throttled) => {
                // Unchecked refusals are cheap for us, so make them as slow as a failure on
                // SMTP: a guesser gains nothing from hammering, not even quick answers.
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                self.auth_failures += 1;
                Done::no("Too many failed logins, try again later").code(other_code("UNAVAILABLE"))
            }
            Err(LoginError::Store(e)) => Done::store(e),
        }
    }

    pub(super) async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        mechanism: AuthMechanism<'_>,
        initial: Option<Vec<u8>>,
    ) -> io::Result<Done> {
        if !self.tls {
            return Ok(Done::no("Log in only after STARTTLS").code(other_code("PRIVACYREQUIRED")));
        }
        if mechanism != AuthMechanism::Plain {
            return Ok(Done::no("Unsupported mechanism").code(other_code("CANNOT")));
        }
        let data = match initial {
            Some(d) => d,
            None => {
                io.send(&Response::CommandContinuationRequest(
                    CommandContinuationRequest::Base64(Cow::Borrowed(b"")),
                ))
                .await?;
                io.flush().await?;
                let line = match tokio::time::timeout(PREAUTH_TIMEOUT, io.read_line()).await {
                    Ok(Ok(l)) => l,
                    Ok(Err(ReadError::TooLong)) => return Ok(Done::bad("Line too long")),
                    Ok(Err(_)) | Err(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "no SASL reply",
                        ))
                    }
                };
                match AuthenticateDataCodec::default().decode(&line) {
                    Ok((_, AuthenticateData::Continue(d))) => d.declassify().to_vec(),
                    Ok((_, AuthenticateData::Cancel)) => {
                        return Ok(Done::bad("Authentication cancelled"))
                    }
                    Err(_) => return Ok(Done::bad("Invalid BASE64 in SASL reply")),
                }
            }
        };
        // PLAIN: authorization id NUL authentication id NUL password.
        let mut parts = data.split(|&b| b == 0);
        let (Some(authz), Some(authc), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            self.auth_failures += 1;
            return Ok(failed());
        };
        if !authz.is_empty() && !authz.eq_ignore_ascii_case(authc) {
            self.auth_failures += 1;
            return Ok(failed());
        }
        Ok(self.login(authc, password).await)
    }
}
