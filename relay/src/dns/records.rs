//! The DNS records a relay with a named domain should publish (reference §6.1), for
//! `relaybox dns` to print and for DNS checks to compare against.
//!
//! A and AAAA records are not listed: only the operator knows the public addresses.

/// The DKIM key as DNS publishes it. `crate::dkim::Dkim` is the implementation; a trait keeps
/// `dns` from importing `dkim`, which itself uses the resolver to check incoming signatures.
pub trait DkimRecord {
    /// `<selector>._domainkey.<domain>.`
    fn record_name(&self) -> String;
    /// The TXT record's data; none for IP-literal relays, which publish no key.
    fn txt_record(&self) -> Option<String>;
}

/// TTL of every record, as the reference prints them.
pub const TTL: u32 = 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Mail does not reach the relay, or its mail is refused, without it.
    Required,
    /// Helps clients and other mail servers (autoconfiguration, SPF, DMARC).
    Recommended,
    /// MTA-STS (RFC 8461): the relay serves the policy at
    /// `https://mta-sts.<domain>/.well-known/mta-sts.txt`; the certificate must name
    /// `mta-sts.<domain>` (the self-signed one does; an operator certificate has to).
    MtaSts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Absolute, with the trailing dot.
    pub name: String,
    pub rtype: &'static str,
    /// As in a zone file: TXT data quoted, in strings of at most 255 characters.
    pub rdata: String,
    pub need: Need,
}

impl Record {
    /// `name<pad40> ttl<pad6> IN  TYPE<pad5>  rdata`, the reference's layout.
    pub fn zone_line(&self) -> String {
        zone_line(&self.name, self.rtype, &self.rdata)
    }
}

pub fn zone_line(name: &str, rtype: &str, rdata: &str) -> String {
    format!("{name:<40} {TTL:<6} IN  {rtype:<5}  {rdata}")
}

/// TXT data as zone-file strings: quoted, split every 255 characters (one DNS
/// character-string's limit), joined by spaces.
pub fn txt_rdata(data: &str) -> String {
    data.as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The records for `domain` (a name, not an IP literal) with this DKIM key. `mta_sts_id` is the
/// policy id, conventionally the time of the policy's last change as `YYYYMMDDHHMM`.
pub fn expected(domain: &str, dkim: &impl DkimRecord, mta_sts_id: &str) -> Vec<Record> {
    let d = format!("{}.", domain.trim_end_matches('.'));
    let rec = |name: String, rtype, rdata: String, need| Record {
        name,
        rtype,
        rdata,
        need,
    };
    let mut out = vec![rec(d.clone(), "MX", format!("10 {d}"), Need::Required)];
    if let Some(txt) = dkim.txt_record() {
        out.push(rec(
            dkim.record_name(),
            "TXT",
            txt_rdata(&txt),
            Need::Required,
        ));
    }
    out.extend([
        rec(format!("www.{d}"), "CNAME", d.clone(), Need::Recommended),
        rec(
            d.clone(),
            "TXT",
            txt_rdata("v=spf1 a ~all"),
            Need::Recommended,
        ),
        rec(
            format!("_dmarc.{d}"),
            "TXT",
            txt_rdata("v=DMARC1;p=reject;adkim=s;aspf=s"),
            Need::Recommended,
        ),
        rec(
            format!("_adsp._domainkey.{d}"),
            "TXT",
            txt_rdata("dkim=discardable"),
            Need::Recommended,
        ),
    ]);
    for (service, port) in [
        ("_submission", 587),
        ("_submissions", 465),
        ("_imap", 143),
        ("_imaps", 993),
    ] {
        out.push(rec(
            format!("{service}._tcp.{d}"),
            "SRV",
            format!("0 1 {port} {d}"),
            Need::Recommended,
        ));
    }
    out.extend([
        rec(format!("mta-sts.{d}"), "CNAME", d.clone(), Need::MtaSts),
        rec(
            format!("_mta-sts.{d}"),
            "TXT",
            txt_rdata(&format!("v=STSv1; id={mta_sts_id}")),
            Need::MtaSts,
        ),
    ]);
    out
}

/// The address records the box knows values for: A with its public IPv4 (from the router or
/// `ddns.ipv4`), AAAA with its own global IPv6. Not part of [`expected`] and `relaybox dns`:
/// only the running box sees its network.
pub fn addresses(
    domain: &str,
    ipv4: Option<std::net::Ipv4Addr>,
    ipv6: Option<std::net::Ipv6Addr>,
) -> Vec<Record> {
    let d = format!("{}.", domain.trim_end_matches('.'));
    let mut out = Vec::new();
    if let Some(ip) = ipv4 {
        out.push(Record {
            name: d.clone(),
            rtype: "A",
            rdata: ip.to_string(),
            need: Need::Required,
        });
    }
    if let Some(ip) = ipv6 {
        // Mail works over IPv4 alone; a wrong AAAA record is still worth a warning.
        out.push(Record {
            name: d,
            rtype: "AAAA",
            rdata: ip.to_string(),
            need: Need::Recommended,
        });
    }
    out
}

/// The records as a zone-file fragment with comments, as `relaybox dns` prints it. Lines that
/// should not be published yet are commented out.
pub fn zone_text(domain: &str, dkim: &impl DkimRecord, mta_sts_id: &str) -> String {
    let records = expected(domain, dkim, mta_sts_id);
    let d = domain.trim_end_matches('.');
    let mut out = format!(
        "; DNS records for {d}\n\
         ; Required, besides A and/or AAAA records for {d}. with the relay's public addresses:\n"
    );
    let section = |out: &mut String, need: Need, prefix: &str| {
        for r in records.iter().filter(|r| r.need == need) {
            out.push_str(prefix);
            out.push_str(&r.zone_line());
            out.push('\n');
        }
    };
    section(&mut out, Need::Required, "");
    out.push_str("\n; Recommended:\n");
    section(&mut out, Need::Recommended, "");
    out.push_str(&format!(
        "\n; MTA-STS (the policy is served at https://mta-sts.{d}/.well-known/mta-sts.txt; \
         the certificate must name mta-sts.{d}; change the id whenever the policy changes):\n"
    ));
    section(&mut out, Need::MtaSts, "");
    if let Some(txt) = dkim.txt_record() {
        out.push_str(&format!(
            "\n; The DKIM record's data in one piece, for web interfaces that split it \
             themselves:\n; {}  TXT  {txt}\n",
            dkim.record_name()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dkim::Dkim;

    #[test]
    fn mta_sts_records_are_published_now_that_the_policy_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::Config::with_domain("chat.example.org", dir.path()).unwrap();
        let dkim = Dkim::load_or_create(&cfg).unwrap();
        let z = zone_text("chat.example.org", &dkim, "202611230000");
        let line = z
            .lines()
            .find(|l| l.contains("_mta-sts.chat.example.org."))
            .unwrap();
        assert!(!line.starts_with(';'), "{line}");
        assert!(line.contains("\"v=STSv1; id=202611230000\""), "{line}");
        assert!(z
            .lines()
            .any(|l| l.starts_with("mta-sts.chat.example.org.") && l.contains("CNAME")));
    }

    #[test]
    fn txt_data_is_quoted_in_255_character_strings() {
        assert_eq!(txt_rdata("v=spf1 a ~all"), "\"v=spf1 a ~all\"");
        let long = "x".repeat(300);
        assert_eq!(
            txt_rdata(&long),
            format!("\"{}\" \"{}\"", "x".repeat(255), "x".repeat(45))
        );
    }

    #[test]
    fn address_records_only_for_known_addresses() {
        assert!(addresses("a.test", None, None).is_empty());
        let r = addresses("a.test", None, Some("2a01:4f8::7".parse().unwrap()));
        assert_eq!(
            r[0].zone_line(),
            zone_line("a.test.", "AAAA", "2a01:4f8::7")
        );
        let r = addresses("a.test", Some("81.2.69.160".parse().unwrap()), None);
        assert_eq!((r[0].rtype, r[0].need), ("A", Need::Required));
    }

    #[test]
    fn zone_lines_use_the_reference_layout() {
        assert_eq!(
            zone_line("a.test.", "MX", "10 a.test."),
            format!("{:<40} 3600   IN  MX     10 a.test.", "a.test.")
        );
    }
}
