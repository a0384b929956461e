//! SMTP: submission (465 implicit TLS, 587 STARTTLS) and MX (25, STARTTLS).

use crate::Relay;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Which SMTP service a listener provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Port 25: other MTAs; STARTTLS required before MAIL; no AUTH.
    Mx,
    /// Port 587: clients; STARTTLS, then AUTH.
    Submission,
    /// Port 465: clients; implicit TLS, then AUTH.
    Submissions,
}

pub async fn serve(relay: Arc<Relay>, listener: TcpListener, kind: Kind) {
    let _ = (relay, listener, kind);
    todo!("smtp::serve")
}
