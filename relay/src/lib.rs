//! relaybox: a chatmail relay in one binary.
//!
//! Module map (arrows are "uses"): `smtp` → `policy`, `delivery`, `accounts`; `web` (`/mxdeliv`)
//! → `delivery`; `imap` → `store`, `accounts`; `delivery` → `store`, `policy`, `dkim` (origin
//! check of incoming mail), `dns`; `accounts` → `store`. `policy` is pure (bytes in,
//! verdict out) and never touches the store or a socket.

pub mod accounts;
pub mod acme;
pub mod admin;
pub mod backup;
pub mod clock;
pub mod config;
pub mod control;
pub mod delivery;
pub mod dkim;
pub mod dns;
pub mod expiry;
#[doc(hidden)]
pub mod fuzzing;
pub mod imap;
pub mod limits;
pub mod logbuf;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod push;
pub mod server;
pub mod smtp;
pub mod store;
pub mod tls;
pub mod update;
pub mod version;
pub mod web;

use std::sync::Arc;

/// Everything a connection handler needs, built once at start and shared read-only.
pub struct Relay {
    pub cfg: Arc<config::Config>,
    pub store: store::Store,
    pub accounts: accounts::Accounts,
    pub delivery: delivery::Delivery,
    /// The resolver: DKIM keys of incoming mail now, MX lookups for outbound delivery later.
    pub dns: dns::Dns,
    pub tls: tls::TlsConfigs,
    /// The ACME client's state: the HTTP-01 answers port 80 serves, the running order.
    pub acme: acme::Acme,
    /// The set-up wizard's and admin pages' state (setup code, password, sessions).
    pub admin: admin::Admin,
    pub clock: clock::Clock,
    pub shutdown: net::Shutdown,
    /// Connection slots of every listener (total, per IP, not yet logged in).
    pub conns: Arc<limits::ConnLimiter>,
    /// Memory for message bodies being received.
    pub inflight: Arc<limits::Budget>,
}
