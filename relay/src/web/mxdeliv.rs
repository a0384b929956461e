//! `POST /mxdeliv`: relay-to-relay delivery over HTTPS (reference §3.9), the HTTP twin of an
//! SMTP transaction on port 25. `X-MAIL-FROM` is the envelope sender (may be missing or empty),
//! each `X-MAIL-TO` a recipient, the body the raw message. It runs exactly the checks of port 25
//! (`Delivery::check_rcpt` and `Delivery::submit` with `Direction::Incoming`), and answers with
//! the SMTP reply text as the body, so the sending relay can report or log it as it would an
//! SMTP reply.

use crate::delivery::spooler::{Spooler, SPILL};
use crate::policy::{Direction, Envelope, Reply};
use crate::store::{Received, Spool};
use crate::Relay;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// How long we wait for the next piece of the body, like the SMTP session's read timeout.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn handle(
    State(relay): State<Arc<Relay>>,
    client: Option<Extension<super::ClientAddr>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if method != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "POST")],
            "Method Not Allowed",
        )
            .into_response();
    }
    if relay.admin.maintenance() {
        // A temporary failure: the sending relay keeps the message and retries.
        return reply_response(&Reply::new(421, "4.3.2 In maintenance, try again later"));
    }
    let mut env = match envelope(&relay, &headers) {
        Ok(env) => env,
        Err(reply) => return reply_response(&reply),
    };
    // The TLS client: `/mxdeliv` is only routed on 443, so this is who encrypted the request.
    env.peer = client.map(|c| c.0 .0.ip().to_canonical());
    let mut targets = Vec::with_capacity(env.rcpt_to.len());
    for rcpt in &env.rcpt_to {
        match relay.delivery.check_rcpt(rcpt, Direction::Incoming) {
            Ok(t) => targets.push(t),
            Err(reply) => {
                // Unlike SMTP there is no per-recipient answer: one refused recipient refuses the
                // request, and the sending relay falls back to SMTP, which can say which one.
                tracing::debug!(%rcpt, %reply, "mxdeliv: recipient refused");
                return reply_response(&reply);
            }
        }
    }
    let (data, spool, held) = match read_body(&relay, &headers, body).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let reply = relay
        .delivery
        .submit_spooled(&env, &targets, &data, spool, Direction::Incoming)
        .await;
    tracing::info!(
        from = %env.mail_from,
        rcpts = env.rcpt_to.len(),
        %reply,
        "mxdeliv"
    );
    drop(held);
    reply_response(&reply)
}

/// The envelope from the headers. Header names are case-insensitive (Madmail sends
/// `X-Mail-To`); several addresses in one `X-MAIL-TO`, separated by commas, are accepted too, for
/// Madmail's sake. Angle brackets around an address are tolerated.
fn envelope(relay: &Relay, headers: &HeaderMap) -> Result<Envelope, Reply> {
    let mail_from = match headers.get("x-mail-from") {
        None => String::new(),
        Some(v) => std::str::from_utf8(v.as_bytes())
            .map(|s| unbracket(s).to_string())
            .map_err(|_| Reply::new(500, "Invalid address in MAIL FROM"))?,
    };
    let mut rcpt_to = Vec::new();
    for v in headers.get_all("x-mail-to") {
        let bad = || crate::policy::codes::BAD_RECIPIENT.reply();
        let s = std::str::from_utf8(v.as_bytes()).map_err(|_| bad())?;
        for addr in s.split(',').map(unbracket).filter(|a| !a.is_empty()) {
            if rcpt_to.len() >= relay.cfg.max_smtp_recipients {
                return Err(crate::policy::codes::TOO_MANY_RECIPIENTS.reply());
            }
            rcpt_to.push(addr.to_ascii_lowercase());
        }
    }
    if rcpt_to.is_empty() {
        return Err(crate::policy::codes::NO_RECIPIENTS.reply());
    }
    Ok(Envelope {
        mail_from,
        rcpt_to,
        peer: None,
    })
}

fn unbracket(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(s)
        .trim()
}

/// The body, at most `max_message_size` bytes. A declared `Content-Length` over the limit is
/// refused before reading anything; otherwise (also for chunked bodies) the body is read piece
/// by piece and refused as soon as it passes the limit, so a sender can never make us hold more
/// than that (plus one piece). Past `SPILL` bytes the body goes to disk as it arrives
/// ([`Spooler`]) and is mapped for the checks at the end; the bytes in memory count against
/// the in-flight budget, taken for a declared `Content-Length` before anything is read (the
/// share comes back with the body, to be held until the message is stored); past the budget,
/// or past the transfer deadline, the sender is told to try later.
async fn read_body(
    relay: &Relay,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Received, Option<Spool>, crate::limits::Held), Response> {
    let max = relay.cfg.max_message_size;
    let deadline = tokio::time::Instant::now() + relay.cfg.message_transfer_timeout.duration();
    let mut held = relay.inflight.hold();
    let too_big = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "552 Message exceeds maximum size",
        )
            .into_response()
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_big());
    }
    let busy = || {
        tracing::warn!(
            in_flight = relay.inflight.used(),
            "mxdeliv: in-flight message memory spent"
        );
        reply_response(&crate::policy::codes::BUSY.reply())
    };
    // Never trust the declared length for the allocation beyond the limit; and take it from
    // the budget first.
    let first = declared.unwrap_or(0).min(max).min(SPILL as u64);
    if !held.grow(first, max) {
        return Err(busy());
    }
    let mut data = Vec::with_capacity(first as usize);
    let mut spooler = Spooler::new(&relay.store, Direction::Incoming);
    let mut total = 0u64;
    let disk_error = |e: crate::store::StoreError| {
        tracing::error!("mxdeliv: cannot spool the message: {e}");
        reply_response(&crate::policy::codes::BUSY.reply())
    };
    let mut stream = body.into_data_stream();
    loop {
        // Each piece within the read timeout, and the whole body by the deadline.
        let wait =
            READ_TIMEOUT.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let chunk = match tokio::time::timeout(wait, stream.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::debug!("mxdeliv: reading the body failed: {e}");
                return Err((StatusCode::BAD_REQUEST, "554 Malformed data").into_response());
            }
            Err(_) => {
                return Err((
                    StatusCode::REQUEST_TIMEOUT,
                    "421 4.4.2 Timeout exceeded while reading the message",
                )
                    .into_response())
            }
        };
        total += chunk.len() as u64;
        if total > max {
            return Err(too_big());
        }
        let want = data.len() as u64 + chunk.len() as u64;
        if !held.grow(want, max) {
            return Err(busy());
        }
        if data.capacity() < want as usize {
            data.reserve_exact(held.bytes() as usize - data.len());
        }
        data.extend_from_slice(&chunk);
        spooler.push(&mut data).await.map_err(disk_error)?;
    }
    let (data, spool) = spooler.finish(data).await.map_err(disk_error)?;
    Ok((data, spool, held))
}

/// The HTTP answer for an SMTP reply, with the reply (`"<code> <text>"`) as the body.
fn reply_response(reply: &Reply) -> Response {
    let status = if reply.is_positive() {
        StatusCode::OK
    } else if reply.is_temporary() {
        // The reference lists no HTTP status for temporary failures (a 451 from a DNS timeout
        // during the DKIM check, a local storage error, a 452). 400 would read as "refused for
        // good", so answer 500: the sending relay treats any non-2xx as "try SMTP next", where
        // it meets the same 4xx and retries later. The body keeps the 4xx reply.
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::BAD_REQUEST
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        reply.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
