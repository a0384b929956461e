//! METADATA (RFC 5464) as Delta Chat uses it: push device tokens on INBOX and a few server
//! entries; QUOTA (RFC 2087/9208) with one root "" for the whole account.
//!
//! Delta Chat stops its Android session on a malformed METADATA reply (chatmail/core#8334), so
//! every requested entry is answered, with NIL where we have nothing.

use super::io::Framed;
use super::selected::mailbox_name;
use super::session::{istring, other_code, Done, Session};
use imap_codec::imap_types::core::NString8;
use imap_codec::imap_types::core::{AString, NString, Vec1};
use imap_codec::imap_types::extensions::metadata::{
    Entry, EntryValue, MetadataCode, MetadataResponse,
};
use imap_codec::imap_types::extensions::quota::{QuotaGet, Resource};
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::{Code, Data, Response};
use std::io;
use tokio::io::{AsyncRead, AsyncWrite};

const DEVICE_TOKEN: &str = "/private/devicetoken";
const APPVERSIONS: &str = "/shared/vendor/deltachat/appversions";
/// Delta Chat's tokens are up to 4096 bytes (chatmail/core `register_token`).
const MAX_TOKEN: usize = 4096;

fn entry_name(e: &Entry<'_>) -> String {
    String::from_utf8_lossy(e.as_ref()).to_ascii_lowercase()
}

fn nstring8_bytes(v: &NString8<'_>) -> Option<Vec<u8>> {
    match v {
        NString8::NString(n) => n.0.as_ref().map(|s| s.as_ref().to_vec()),
        NString8::Literal8(l) => Some(l.data.to_vec()),
    }
}

impl Session {
    /// The value of a server entry (`GETMETADATA ""`).
    fn server_entry(&self, name: &str) -> Option<String> {
        let cfg = &self.relay.cfg;
        match name {
            "/shared/vendor/deltachat/maxsmtprecipients" => {
                Some(cfg.max_smtp_recipients.to_string())
            }
            "/shared/vendor/deltachat/irohrelay" => match &self.relay.iroh {
                Some(i) => i.announcement(),
                None => cfg.iroh_relay.clone(),
            },
            "/shared/vendor/deltachat/turn" => match &self.relay.turn {
                Some(t) => t.announcement(self.relay.clock.now()),
                None => cfg.turn_server.clone(),
            },
            "/shared/admin" if !cfg.privacy_mail.is_empty() => {
                let m = cfg.privacy_mail.trim();
                Some(if m.starts_with("mailto:") {
                    m.to_string()
                } else {
                    format!("mailto:{m}")
                })
            }
            _ => None,
        }
    }

    pub(super) async fn get_metadata<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        mailbox: &Mailbox<'_>,
        entries: Vec1<Entry<'_>>,
    ) -> io::Result<Done> {
        let server = matches!(mailbox, Mailbox::Other(o) if o.inner().as_ref().is_empty());
        let mut tokens: Option<String> = None;
        if !server {
            let name = match mailbox_name(mailbox) {
                Ok(n) => n,
                Err(d) => return Ok(d),
            };
            match self.relay.store.mailbox(self.account_id(), &name) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Ok(Done::no("Mailbox does not exist").code(other_code("NONEXISTENT")))
                }
                Err(e) => return Ok(Done::store(e)),
            }
            if name == "INBOX" {
                tokens = match self.relay.store.account_by_id(self.account_id()) {
                    Ok(Some(a)) => {
                        let now = self.relay.clock.now();
                        let valid: Vec<&str> =
                            crate::push::valid_tokens(&a, now, self.relay.cfg.push_max_tokens)
                                .collect();
                        (!valid.is_empty()).then(|| valid.join(" "))
                    }
                    Ok(None) => None,
                    Err(e) => return Ok(Done::store(e)),
                };
            }
        }
        let mut values = Vec::new();
        for e in entries.as_ref() {
            let name = entry_name(e);
            let value = if server && name == APPVERSIONS {
                super::appversions::load(&self.relay.cfg.data_dir).await
            } else if server {
                self.server_entry(&name)
            } else if name == DEVICE_TOKEN {
                tokens.clone()
            } else {
                None
            };
            values.push(EntryValue {
                entry: e.clone(),
                value: NString8::NString(NString(value.as_deref().map(istring))),
            });
        }
        if let Ok(list) = Vec1::try_from(values) {
            let mailbox = if server {
                Mailbox::try_from(String::new())
            } else {
                Mailbox::try_from(mailbox_name(mailbox).unwrap_or_default())
            };
            if let Ok(mailbox) = mailbox {
                io.send(&Response::Data(Data::Metadata {
                    mailbox,
                    items: MetadataResponse::WithValues(list),
                }))
                .await?;
            }
        }
        Ok(Done::ok("Getmetadata completed"))
    }

    pub(super) async fn set_metadata(
        &mut self,
        mailbox: &Mailbox<'_>,
        entries: Vec1<EntryValue<'_>>,
    ) -> Done {
        if !matches!(mailbox, Mailbox::Inbox) {
            return Done::no("Only /private/devicetoken on INBOX can be set");
        }
        let mut tokens = Vec::new();
        for ev in entries.as_ref() {
            if entry_name(&ev.entry) != DEVICE_TOKEN {
                return Done::no("Only /private/devicetoken on INBOX can be set");
            }
            // NIL would delete; tokens instead expire, as in the reference.
            let Some(value) = nstring8_bytes(&ev.value) else {
                continue;
            };
            if value.len() > MAX_TOKEN {
                return Done::no("Value too long")
                    .code(Code::Metadata(MetadataCode::MaxSize(MAX_TOKEN as u32)));
            }
            match String::from_utf8(value) {
                Ok(t) if !t.trim().is_empty() => tokens.push(t),
                _ => return Done::bad("Device token must be UTF-8 text"),
            }
        }
        let now = self.relay.clock.now();
        for t in tokens {
            if let Err(e) = self
                .relay
                .store
                .add_device_token(self.account_id(), &t, now, self.relay.cfg.push_max_tokens)
                .await
            {
                return Done::store(e);
            }
        }
        Done::ok("Setmetadata completed")
    }

    async fn send_quota<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
    ) -> io::Result<Option<Done>> {
        let used = match self.relay.store.usage(self.account_id()) {
            Ok(u) => u,
            Err(e) => return Ok(Some(Done::store(e))),
        };
        let limit = self.relay.cfg.max_mailbox_size.0;
        let quota = QuotaGet::new(Resource::Storage, used.div_ceil(1024), limit / 1024);
        if let Ok(root) = AString::try_from(String::new()) {
            io.send(&Response::Data(Data::Quota {
                root,
                quotas: Vec1::from(quota),
            }))
            .await?;
        }
        Ok(None)
    }

    pub(super) async fn get_quota_root<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        mailbox: &Mailbox<'_>,
    ) -> io::Result<Done> {
        let name = match mailbox_name(mailbox) {
            Ok(n) => n,
            Err(d) => return Ok(d),
        };
        match self.relay.store.mailbox(self.account_id(), &name) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Ok(Done::no("Mailbox does not exist").code(other_code("NONEXISTENT")))
            }
            Err(e) => return Ok(Done::store(e)),
        }
        // Core treats a QUOTAROOT without its QUOTA as an error (chatmail/core src/quota.rs).
        let (Ok(mailbox), Ok(root)) = (Mailbox::try_from(name), AString::try_from(String::new()))
        else {
            return Ok(Done::bad("Invalid mailbox name"));
        };
        io.send(&Response::Data(Data::QuotaRoot {
            mailbox,
            roots: vec![root],
        }))
        .await?;
        if let Some(d) = self.send_quota(io).await? {
            return Ok(d);
        }
        Ok(Done::ok("Getquotaroot completed"))
    }

    pub(super) async fn get_quota<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Framed<S>,
        root: &[u8],
    ) -> io::Result<Done> {
        if !root.is_empty() {
            return Ok(Done::no("No such quota root"));
        }
        if let Some(d) = self.send_quota(io).await? {
            return Ok(d);
        }
        Ok(Done::ok("Getquota completed"))
    }
}
