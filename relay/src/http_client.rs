//! The relay's outgoing HTTP/1.1 POSTs (push notifications, `/mxdeliv` to other relays): one
//! way to start a client connection on a TCP or TLS stream, send on it and read the answer.
//! Dialing, pooling and what an answer means stay with each caller.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// A client connection, reusable once its last answer was read.
pub type Sender = SendRequest<Full<Bytes>>;

/// HTTP/1.1 on `io`; the connection is driven by a task of its own until either side closes.
pub async fn handshake<T>(io: T) -> Result<Sender, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("HTTP client connection ended: {e}");
        }
    });
    Ok(s)
}

/// Sends `req` on `s` once the connection is ready for it.
pub async fn send(
    s: &mut Sender,
    req: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<Incoming>, String> {
    s.ready()
        .await
        .map_err(|e| format!("connection not usable: {e}"))?;
    s.send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))
}

/// The body of `resp`, at most `max` bytes; reading it to the end lets the connection be reused.
pub async fn read_body(resp: hyper::Response<Incoming>, max: usize) -> Result<Bytes, String> {
    Limited::new(resp.into_body(), max)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| format!("reading the response failed: {e}"))
}
