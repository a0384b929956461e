//! The invite QR code (reference §4.2): `DCACCOUNT:https://<domain>/new` with a real
//! certificate, a fresh `dclogin:` account in self-signed mode. Served as SVG and as a 1-bit PNG
//! (a small encoder here: two chunks of zlib data and CRCs, no image library).

use super::{ClientAddr, Web};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use qrcode::{Color, EcLevel, QrCode};

/// Pixels per module in the PNG.
const PNG_SCALE: usize = 8;
/// Modules of white border around the code (the standard asks for 4).
const QUIET: usize = 4;

fn code(data: &str) -> Option<QrCode> {
    QrCode::with_error_correction_level(data.as_bytes(), EcLevel::M).ok()
}

/// The SVG of a QR code for `data`, scalable (fills its box).
pub fn svg_of(data: &str) -> Option<String> {
    let qr = code(data)?;
    Some(
        qr.render::<qrcode::render::svg::Color>()
            .min_dimensions(256, 256)
            .quiet_zone(true)
            .build(),
    )
}

/// [`svg_of`] without the XML declaration the renderer starts with, which is not allowed
/// inside HTML: for pages (`{{qr_svg}}`) and `/invite.json`.
pub fn inline_svg(data: &str) -> String {
    let svg = svg_of(data).unwrap_or_default();
    match svg.find("<svg") {
        Some(i) => svg[i..].to_string(),
        None => svg,
    }
}

/// A grayscale 1-bit PNG of a QR code for `data`.
pub fn png_of(data: &str) -> Option<Vec<u8>> {
    let qr = code(data)?;
    let w = qr.width();
    let colors = qr.to_colors();
    let side = (w + 2 * QUIET) * PNG_SCALE;
    let row_bytes = side.div_ceil(8);
    let mut raw = Vec::with_capacity((row_bytes + 1) * side);
    for y in 0..side {
        raw.push(0u8); // filter: none
        let my = (y / PNG_SCALE).checked_sub(QUIET).filter(|&v| v < w);
        let mut byte = 0u8;
        for x in 0..side {
            let mx = (x / PNG_SCALE).checked_sub(QUIET).filter(|&v| v < w);
            let dark = match (mx, my) {
                (Some(mx), Some(my)) => colors[my * w + mx] == Color::Dark,
                _ => false,
            };
            // 1 = white in grayscale.
            byte = (byte << 1) | u8::from(!dark);
            if x % 8 == 7 {
                raw.push(byte);
                byte = 0;
            }
        }
        if !side.is_multiple_of(8) {
            raw.push(byte << (8 - side % 8));
        }
    }
    Some(encode_png(side as u32, side as u32, &raw))
}

fn encode_png(width: u32, height: u32, raw: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // bit depth 1, colour type 0 (grayscale), compression 0, filter 0, no interlace
    ihdr.extend_from_slice(&[1, 0, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(raw).expect("writing to a Vec");
    chunk(&mut out, b"IDAT", &z.finish().expect("writing to a Vec"));
    chunk(&mut out, b"IEND", &[]);
    out
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

/// In self-signed mode every QR code holds a fresh account, so it costs like `/new` and is
/// limited like it.
/// `None`: over the limit.
fn invite(w: &Web, client: Option<&ClientAddr>) -> Option<String> {
    if w.relay.cfg.is_self_signed() && !w.limiter.check(client) {
        return None;
    }
    Some(super::new::invite_url(&w.relay.cfg))
}

fn too_many() -> Response {
    (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests").into_response()
}

pub async fn svg(State(w): State<Web>, client: Option<Extension<ClientAddr>>) -> Response {
    let Some(data) = invite(&w, client.as_ref().map(|e| &e.0)) else {
        return too_many();
    };
    match svg_of(&data) {
        Some(svg) => (
            [
                (header::CONTENT_TYPE, "image/svg+xml"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            svg,
        )
            .into_response(),
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

pub async fn png(State(w): State<Web>, client: Option<Extension<ClientAddr>>) -> Response {
    let Some(data) = invite(&w, client.as_ref().map(|e| &e.0)) else {
        return too_many();
    };
    match png_of(&data) {
        Some(png) => (
            [
                (header::CONTENT_TYPE, "image/png"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            png,
        )
            .into_response(),
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
