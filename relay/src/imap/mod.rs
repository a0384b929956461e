//! IMAP (143 STARTTLS, 993 implicit TLS).

use crate::Relay;
use std::sync::Arc;
use tokio::net::TcpListener;

pub async fn serve(relay: Arc<Relay>, listener: TcpListener, implicit_tls: bool) {
    let _ = (relay, listener, implicit_tls);
    todo!("imap::serve")
}
