//! The wizard's live DNS check: each record the relay needs ([`super::records::expected`]) is
//! looked up and reported as ok, missing or wrong, with what was expected and what was found.
//!
//! Like `cmdeploy dns`, it asks the domain's authoritative servers: the NS records of the closest
//! enclosing zone (found through the configured resolver, the system's or `dns_servers`), then
//! each record straight from those servers, so a record just created or fixed shows at once
//! instead of after a resolver's cached answer expires. When no NS can be found or none answers,
//! it asks the configured resolver (fresh per check, so at least our own cache hides nothing)
//! and the report says which was asked.

use super::records::{Need, Record};
use super::Dns;
use crate::config::Config;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Ok,
    Missing,
    Wrong,
    /// The lookup itself failed (timeout, SERVFAIL): nothing can be said about the record.
    Unknown,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordCheck {
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: String,
    pub need: &'static str,
    pub expected: String,
    pub found: Vec<String>,
    pub state: State,
    /// Why, in a sentence, when not ok.
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub domain: String,
    pub records: Vec<RecordCheck>,
    /// Every required record is ok.
    pub required_ok: bool,
    pub resolver: String,
}

fn need_name(n: Need) -> &'static str {
    match n {
        Need::Required => "required",
        Need::Recommended => "recommended",
        Need::MtaSts => "mta-sts",
    }
}

/// Lower case, no trailing dots on names, single spaces.
fn norm(s: &str) -> String {
    s.split_whitespace()
        .map(|w| w.trim_end_matches('.').to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(" ")
}

/// TXT presentation data (`"a" "b"`) as the one string a lookup returns.
fn unquote_txt(rdata: &str) -> String {
    let mut out = String::new();
    let mut in_q = false;
    for c in rdata.chars() {
        match c {
            '"' => in_q = !in_q,
            c if in_q => out.push(c),
            _ => {}
        }
    }
    out
}

/// A TXT record's kind: the `v=…` tag (or `dkim=` for ADSP) that says which record it is, so
/// that an SPF record with other content is "wrong", not "missing".
fn txt_kind(s: &str) -> String {
    let first = s.split([';', ' ']).next().unwrap_or("").trim();
    if first.starts_with("v=") {
        first.to_ascii_lowercase()
    } else {
        first.split('=').next().unwrap_or("").to_ascii_lowercase()
    }
}

/// The value of tag `t` in a `k=v; …` record, whitespace removed (DKIM keys are often split).
fn tag(s: &str, t: &str) -> Option<String> {
    s.split(';').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == t).then(|| v.chars().filter(|c| !c.is_whitespace()).collect())
    })
}

/// Compares what was found with what is expected for one record.
pub fn judge(r: &Record, found: Option<&[String]>) -> (State, String) {
    let Some(found) = found else {
        return (State::Missing, "the name does not exist".into());
    };
    if r.rtype == "TXT" {
        let want = unquote_txt(&r.rdata);
        let kind = txt_kind(&want);
        let same_kind: Vec<&String> = found.iter().filter(|f| txt_kind(f) == kind).collect();
        if same_kind.is_empty() {
            return (State::Missing, format!("no {kind} record"));
        }
        let ok = same_kind.iter().any(|f| match kind.as_str() {
            // The key is what matters; other tags (h=, t=) may differ.
            "v=dkim1" => tag(f, "p") == tag(&want, "p"),
            // The policy id changes with every policy change: any STS record is fine.
            "v=stsv1" => true,
            _ => norm(&f.replace(' ', "")) == norm(&want.replace(' ', "")),
        });
        if ok {
            return (State::Ok, String::new());
        }
        if same_kind.len() > 1 && kind == "v=spf1" {
            return (State::Wrong, "more than one SPF record".into());
        }
        return (
            State::Wrong,
            if kind == "v=dkim1" {
                "a DKIM key is published, but not this relay's".into()
            } else {
                format!("the {kind} record differs")
            },
        );
    }
    let want = norm(&r.rdata);
    if found.iter().any(|f| norm(f) == want) {
        return (State::Ok, String::new());
    }
    if found.is_empty() {
        return (State::Missing, format!("no {} record", r.rtype));
    }
    (
        State::Wrong,
        format!("the {} record points elsewhere", r.rtype),
    )
}

/// Looks up every record of `records` (and the domain's addresses) and judges it.
pub async fn check(cfg: &Config, domain: &str, records: &[Record]) -> Report {
    let resolver = if cfg.dns_servers.is_empty() {
        "the system resolver".to_string()
    } else {
        cfg.dns_servers
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let dns = match Dns::new(cfg) {
        Ok(d) => d,
        Err(e) => {
            return Report {
                domain: domain.to_string(),
                records: vec![RecordCheck {
                    name: domain.to_string(),
                    rtype: "-".into(),
                    need: "required",
                    expected: String::new(),
                    found: Vec::new(),
                    state: State::Unknown,
                    note: e.to_string(),
                }],
                required_ok: false,
                resolver,
            }
        }
    };
    let (dns, resolver) = match authoritative(cfg, &dns, domain).await {
        Some((auth, names)) => (auth, format!("the authoritative servers {names}")),
        None => (dns, resolver),
    };
    let mut out = Vec::new();
    // Addresses first: nothing works without them, and only the operator knows the values.
    let addrs = dns.ips(domain).await;
    out.push(RecordCheck {
        name: format!("{}.", domain.trim_end_matches('.')),
        rtype: "A/AAAA".into(),
        need: "required",
        expected: "the relay's public address(es)".into(),
        found: addrs
            .as_ref()
            .map(|v| v.iter().map(|a| a.to_string()).collect())
            .unwrap_or_default(),
        state: match &addrs {
            Ok(v) if !v.is_empty() => State::Ok,
            Ok(_) => State::Missing,
            Err(e) if e.is_temporary() => State::Unknown,
            Err(_) => State::Missing,
        },
        note: match &addrs {
            Ok(v) if v.is_empty() => "no A or AAAA record".into(),
            Err(e) => e.to_string(),
            _ => String::new(),
        },
    });
    for r in records {
        let looked = dns.rdata(&r.name, r.rtype).await;
        let (found, state, note) = match &looked {
            Err(e) => (Vec::new(), State::Unknown, e.to_string()),
            Ok(f) => {
                let (mut state, mut note) = judge(r, f.as_deref());
                // An A record where a CNAME to the domain is expected serves as well.
                if state != State::Ok && r.rtype == "CNAME" {
                    if let Ok(ips) = dns.ips(&r.name).await {
                        if !ips.is_empty()
                            && addrs
                                .as_ref()
                                .is_ok_and(|a| ips.iter().all(|i| a.contains(i)))
                        {
                            state = State::Ok;
                            note = "A/AAAA records with the domain's addresses instead of a CNAME"
                                .into();
                        }
                    }
                }
                (f.clone().unwrap_or_default(), state, note)
            }
        };
        let expected = if r.rtype == "TXT" {
            unquote_txt(&r.rdata)
        } else {
            r.rdata.clone()
        };
        out.push(RecordCheck {
            name: r.name.clone(),
            rtype: r.rtype.to_string(),
            need: need_name(r.need),
            expected,
            found,
            state,
            note,
        });
    }
    let required_ok = out
        .iter()
        .filter(|c| c.need == "required")
        .all(|c| c.state == State::Ok);
    Report {
        domain: domain.to_string(),
        records: out,
        required_ok,
        resolver,
    }
}

/// A resolver that asks the authoritative servers of `domain`'s zone, and their names with
/// addresses for the report; `None` when no NS record is found below the top-level domain or
/// none of the servers answers.
async fn authoritative(cfg: &Config, dns: &Dns, domain: &str) -> Option<(Dns, String)> {
    let mut zone = domain.trim_end_matches('.').to_ascii_lowercase();
    let ns = loop {
        if let Ok(Some(ns)) = dns.rdata(&zone, "NS").await {
            if !ns.is_empty() {
                break ns;
            }
        }
        // Never up to the top-level domain: its servers only refer.
        match zone.split_once('.') {
            Some((_, parent)) if parent.contains('.') => zone = parent.to_string(),
            _ => return None,
        }
    };
    let mut servers = Vec::new();
    let mut names = Vec::new();
    for n in &ns {
        let host = n.trim_end_matches('.');
        let ips = dns.ips(host).await.unwrap_or_default();
        if !ips.is_empty() {
            names.push(format!(
                "{host} ({})",
                ips.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        servers.extend(
            ips.into_iter()
                .map(|ip| std::net::SocketAddr::new(ip, cfg.dns_authoritative_port)),
        );
    }
    if servers.is_empty() {
        return None;
    }
    let mut c = cfg.clone();
    c.dns_servers = servers;
    let auth = Dns::new(&c).ok()?;
    // Does one of them answer for the zone at all? (A firewall may keep us from port 53 out.)
    auth.rdata(&zone, "SOA").await.ok()?;
    Some((auth, names.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(rtype: &'static str, rdata: &str) -> Record {
        Record {
            name: "x.test.".into(),
            rtype,
            rdata: rdata.into(),
            need: Need::Required,
        }
    }

    #[test]
    fn judging_normalises_names_txt_strings_and_dkim_keys() {
        let mx = rec("MX", "10 x.test.");
        assert_eq!(judge(&mx, Some(&["10 X.test".into()])).0, State::Ok);
        assert_eq!(judge(&mx, Some(&["10 other.test.".into()])).0, State::Wrong);
        assert_eq!(judge(&mx, Some(&[])).0, State::Missing);
        assert_eq!(judge(&mx, None).0, State::Missing);

        let dkim = rec("TXT", "\"v=DKIM1;k=rsa;p=ABC\" \"DEF\"");
        assert_eq!(
            judge(&dkim, Some(&["v=DKIM1; k=rsa; p=ABC DEF".into()])).0,
            State::Ok
        );
        assert_eq!(
            judge(&dkim, Some(&["v=DKIM1; p=XYZ".into()])).0,
            State::Wrong
        );
        assert_eq!(
            judge(&dkim, Some(&["v=spf1 a ~all".into()])).0,
            State::Missing
        );

        let spf = rec("TXT", "\"v=spf1 a ~all\"");
        assert_eq!(
            judge(
                &spf,
                Some(&["v=spf1 a ~all".into(), "google-site=1".into()])
            )
            .0,
            State::Ok
        );
        assert_eq!(judge(&spf, Some(&["v=spf1 -all".into()])).0, State::Wrong);

        let sts = rec("TXT", "\"v=STSv1; id=202611240000\"");
        assert_eq!(judge(&sts, Some(&["v=STSv1; id=1".into()])).0, State::Ok);
    }
}
