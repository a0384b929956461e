//! The update-URL style of dynamic DNS (DuckDNS, deSEC's dyndns endpoint, dyndns2 providers):
//! one GET of a URL made from a template, answered with a short text.

use bytes::Bytes;
use http_body_util::Full;
use std::time::Duration;

/// How long one update (connect, TLS, answer) may take.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Answers of providers that mean "not done" although they come with 200 OK (dyndns2 return
/// codes, DuckDNS's `KO`).
const FAILURE_WORDS: &[&str] = &[
    "ko", "badauth", "nohost", "notfqdn", "badagent", "abuse", "911", "dnserr", "!yours",
    "numhost", "badsys", "!donator",
];

/// `template` with `{domain}`, `{ip}`, `{ipv4}` and `{ipv6}` filled in (percent-encoded).
pub fn fill(template: &str, domain: &str, ip: &str, ipv4: &str, ipv6: &str) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let enc = |s: &str| {
        utf8_percent_encode(s, NON_ALPHANUMERIC)
            .to_string()
            // an address reads better, and every provider takes it, unencoded
            .replace("%2E", ".")
            .replace("%3A", ":")
            .replace("%2D", "-")
    };
    template
        .replace("{domain}", &enc(domain))
        .replace("{ipv4}", &enc(ipv4))
        .replace("{ipv6}", &enc(ipv6))
        .replace("{ip}", &enc(ip))
}

/// Fetches `url`; the provider's answer (first line, shortened) when it says the update was
/// done, else why not. `tls`: the verifying HTTPS connector for `https://` URLs.
pub async fn get(url: &str, tls: &tokio_rustls::TlsConnector) -> Result<String, String> {
    tokio::time::timeout(TIMEOUT, get_inner(url, tls))
        .await
        .map_err(|_| format!("no answer within {} s", TIMEOUT.as_secs()))?
}

async fn get_inner(url: &str, tls: &tokio_rustls::TlsConnector) -> Result<String, String> {
    use base64::Engine;
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("the URL must start with http:// or https://".into()),
    };
    let auth = uri.authority().ok_or("the URL has no host")?;
    let host = auth
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = auth.port_u16().unwrap_or(if https { 443 } else { 80 });
    let userinfo = auth.as_str().rsplit_once('@').map(|(u, _)| u.to_string());
    let host_header = match auth.port_u16() {
        Some(p) => format!("{}:{p}", auth.host()),
        None => auth.host().to_string(),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let mut req = hyper::Request::get(path)
        .header(hyper::header::HOST, host_header)
        .header(
            hyper::header::USER_AGENT,
            concat!("relaybox/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(u) = userinfo {
        let u = percent_encoding::percent_decode_str(&u)
            .decode_utf8_lossy()
            .into_owned();
        let b = base64::engine::general_purpose::STANDARD.encode(u);
        req = req.header(hyper::header::AUTHORIZATION, format!("Basic {b}"));
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("bad request: {e}"))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let mut s = if https {
        let name = crate::tls::client::server_name(&host)?;
        let t = tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        crate::http_client::handshake(t).await?
    } else {
        crate::http_client::handshake(tcp).await?
    };
    let resp = crate::http_client::send(&mut s, req).await?;
    let status = resp.status();
    let body = crate::http_client::read_body(resp, 4096).await?;
    let text: String = String::from_utf8_lossy(&body)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .chars()
        .take(120)
        .collect();
    let first = text
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    if !status.is_success() {
        Err(format!("HTTP {status}: {text}"))
    } else if FAILURE_WORDS.contains(&first.as_str()) {
        Err(format!("the provider answered {text:?}"))
    } else if text.is_empty() {
        Ok(format!("HTTP {status}"))
    } else {
        Ok(text)
    }
}
