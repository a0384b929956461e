//! relaybox: a chatmail relay in one binary.
//!
//! Module map (arrows are "uses"; no cycles):
//! - `alpn` (ports 80 and 443: TLS, then IMAP, SMTP or HTTPS by ALPN) → `imap`, `smtp`, `web`,
//!   `admin` (its API is a route of `web`'s router).
//! - `smtp` → `policy`, `delivery`, `accounts`; `imap` → `store`, `accounts`, `delivery`, `push`;
//!   `web` (pages, `/new`, `/mxdeliv`) → `delivery`, `accounts`, `store`, `policy`.
//! - `admin` (set-up wizard, admin API) → `web`, `accounts`, `backup`, `update`, `dns`, `dkim`,
//!   `acme`, `expiry`, `selftest`.
//! - `update` (signed A/B updates) → `selftest` (before it commits a trial boot); `selftest` (one
//!   message between two fresh addresses) → `accounts`, `delivery`, `store`, `policy`.
//! - `delivery` → `store`, `policy`, `dkim` (origin check of incoming mail), `dns` (MX), `tls`,
//!   `push`, `expiry` (quota); `push`, `expiry`, `accounts`, `backup` → `store`.
//! - `dkim` → `dns`; `acme` → `tls`; `metrics` → `acme` (certificate dates).
//! - `calls` (TURN for Delta Chat calls) → `metrics`; `imap` reads its METADATA credentials.
//! - `portmap` (UPnP-IGD / NAT-PMP on the home router) → `dns` (local addresses); `ddns` (dynamic
//!   DNS: RFC 2136 or an update URL) → `dns`, `tls`, `http_client`; `server` feeds the public IPv4
//!   that `portmap` learns to `ddns` and `calls`.
//!
//! `policy` is pure (bytes in, verdict out) and never touches the store or a socket. `server`
//! builds the [`Relay`] and starts every listener; `control` is the local command socket.
//!
//! Shared plumbing, one copy each: `io` (crash-safe private file writes), `sync` (locks that
//! survive a panicking holder), `net` (the accept loop and TLS handshake of every listener),
//! `http_client` (the outgoing POSTs of push and `/mxdeliv`), `tls::client` (client TLS of every
//! outgoing connection), `acme::inspect_der` (X.509).
//!
//! `testkit` (test relays, the SERVFAIL DNS server, shared test helpers) is built only for tests
//! and with the `testkit` feature (the fuzz crate); the test hooks of `store` and `dns` with it.

pub mod accounts;
pub mod acme;
pub mod admin;
pub mod alpn;
pub mod backup;
pub mod calls;
pub mod clock;
pub mod config;
pub mod control;
pub mod ddns;
pub mod delivery;
pub mod dkim;
pub mod dns;
pub mod expiry;
pub mod http_client;
pub mod imap;
pub mod io;
pub mod limits;
pub mod logbuf;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod portmap;
pub mod push;
pub mod selftest;
pub mod server;
pub mod smtp;
pub mod store;
pub mod sync;
#[cfg(any(test, feature = "testkit"))]
#[doc(hidden)]
pub mod testkit;
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
    /// The resolver: DKIM keys of incoming mail, MX records of outbound delivery.
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
    /// Dynamic DNS status for the admin page.
    pub ddns: ddns::Ddns,
    /// TURN for calls, when this relay serves it (credentials for METADATA).
    pub turn: Option<calls::Turn>,
    /// The iroh relay (webxdc realtime), when this relay serves it.
    pub iroh: Option<calls::iroh::IrohRelay>,
    /// Port mapping on the home router: its outcome, and the public IPv4 address it learnt.
    pub portmap: portmap::PortMap,
}
