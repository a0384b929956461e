//! Outbound transport (reference §3.8): hands one message to the mail servers of one destination
//! domain, HTTPS `POST /mxdeliv` first, then SMTP on port 25 with STARTTLS required.
//!
//! The queue (`delivery::queue`) decides when to try; this module only tries once and reports one
//! reply per recipient: 2xx delivered, 4xx try again later, 5xx give up and bounce.

use crate::config::Config;
use crate::dns::Dns;
use crate::policy::Reply;
use std::sync::Arc;

/// Connections, caches and TLS settings shared by every delivery attempt.
pub struct Transport {
    #[allow(dead_code)]
    cfg: Arc<Config>,
    #[allow(dead_code)]
    dns: Dns,
}

impl Transport {
    pub fn new(cfg: Arc<Config>, dns: Dns) -> anyhow::Result<Transport> {
        Ok(Transport { cfg, dns })
    }

    /// Delivers `message` (already DKIM-signed) from `sender` (may be empty: the null sender) to
    /// `rcpts`, which all belong to `domain`. Returns one reply per recipient, in order.
    pub async fn deliver(
        &self,
        domain: &str,
        sender: &str,
        rcpts: &[String],
        message: Arc<[u8]>,
    ) -> Vec<Reply> {
        let _ = (sender, message);
        let r = Reply::new(
            451,
            format!("4.4.0 Delivery to other domains ({domain}) is not available yet"),
        );
        vec![r; rcpts.len()]
    }
}
