//! The resolver and the DKIM origin check against a real DNS server: dnsmasq on a loopback
//! address serving a small zone. Skipped, with a notice, when dnsmasq is not installed
//! (Debian package `dnsmasq-base`).

use relaybox::config::Config;
use relaybox::dkim::{self, Dkim};
use relaybox::dns::{Dns, Mx};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LISTEN: &str = "127.0.0.53";

struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// dnsmasq lives in /usr/sbin on Debian, which is not on every user's PATH.
fn find_dnsmasq() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join("dnsmasq"))
        .find(|p| p.is_file())
}

/// A port free for both UDP and TCP on a loopback address.
fn free_port(ip: &str) -> u16 {
    relaybox::testkit::free_port(ip.parse().unwrap())
}

/// Starts dnsmasq answering for `.test` from `records` only (anything else in `.test` is
/// NXDOMAIN); `None` when dnsmasq is not installed.
fn dnsmasq(records: &[String]) -> Option<Dnsmasq> {
    dnsmasq_on(LISTEN, free_port(LISTEN), records)
}

fn dnsmasq_on(listen: &str, port: u16, records: &[String]) -> Option<Dnsmasq> {
    let Some(bin) = find_dnsmasq() else {
        // CI installs it (scripts/test.sh setup): there, a missing dnsmasq is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "dnsmasq not found under CI (the setup stage installs dnsmasq-base)"
        );
        eprintln!("SKIPPED: dnsmasq not found (install the Debian package dnsmasq-base)");
        return None;
    };
    let child = Command::new(bin)
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--local=/test/",
            &format!("--listen-address={listen}"),
            &format!("--port={port}"),
        ])
        .args(records)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = SocketAddr::new(listen.parse().unwrap(), port);
    let server = Dnsmasq { child, addr };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "dnsmasq did not start on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(server)
}

fn resolver(server: &Dnsmasq, data_dir: &std::path::Path, domain: &str) -> (Config, Dns) {
    let mut cfg = Config::with_domain(domain, data_dir).unwrap();
    cfg.dns_servers = vec![server.addr];
    let dns = Dns::new(&cfg).unwrap();
    (cfg, dns)
}

fn zone() -> Vec<String> {
    [
        "--mx-host=mx.test,b.mx.test,20",
        "--mx-host=mx.test,a.mx.test,10",
        "--mx-host=nullmx.test,.,0",
        "--host-record=implicit.test,127.0.0.7,::7",
        "--host-record=v4only.test,127.0.0.8",
        "--txt-record=txt.test,v=spf1 a ~all",
        "--txt-record=two.test,first",
        "--txt-record=two.test,second",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--txt-record=long.test,{}", "a".repeat(300))])
    .collect()
}

#[tokio::test]
async fn mx_answers_are_sorted_null_implicit_or_nxdomain() {
    let Some(server) = dnsmasq(&zone()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_, dns) = resolver(&server, dir.path(), "relay.test");
    assert_eq!(
        dns.mx("mx.test").await.unwrap(),
        Mx::Hosts(vec!["a.mx.test".into(), "b.mx.test".into()])
    );
    assert_eq!(
        dns.mx("MX.test.").await.unwrap(),
        dns.mx("mx.test").await.unwrap()
    );
    assert_eq!(dns.mx("nullmx.test").await.unwrap(), Mx::Null);
    assert_eq!(
        dns.mx("implicit.test").await.unwrap(),
        Mx::Hosts(vec!["implicit.test".into()])
    );
    assert_eq!(dns.mx("nothere.test").await.unwrap(), Mx::NoDomain);
}

#[tokio::test]
async fn addresses_of_both_families() {
    let Some(server) = dnsmasq(&zone()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_, dns) = resolver(&server, dir.path(), "relay.test");
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        dns.ips("implicit.test").await.unwrap(),
        vec![ip("127.0.0.7"), ip("::7")]
    );
    assert_eq!(dns.ips("v4only.test").await.unwrap(), vec![ip("127.0.0.8")]);
    // The name exists (it has TXT) but has no address.
    assert_eq!(dns.ips("txt.test").await.unwrap(), Vec::<IpAddr>::new());
    let e = dns.ips("nothere.test").await.unwrap_err();
    assert!(!e.is_temporary(), "{e}");
}

#[tokio::test]
async fn txt_records_are_joined_per_record() {
    let Some(server) = dnsmasq(&zone()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_, dns) = resolver(&server, dir.path(), "relay.test");
    assert_eq!(dns.txt("txt.test").await.unwrap(), vec!["v=spf1 a ~all"]);
    // dnsmasq splits a long text into 255-byte strings; they come back as one.
    assert_eq!(dns.txt("long.test").await.unwrap(), vec!["a".repeat(300)]);
    let mut two = dns.txt("two.test").await.unwrap();
    two.sort();
    assert_eq!(two, vec!["first", "second"]);
    assert_eq!(
        dns.txt("implicit.test").await.unwrap(),
        Vec::<String>::new()
    );
    let e = dns.txt("nothere.test").await.unwrap_err();
    assert!(!e.is_temporary(), "{e}");
}

#[tokio::test]
async fn names_outside_the_served_zone_fail_temporarily() {
    let Some(server) = dnsmasq(&zone()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_, dns) = resolver(&server, dir.path(), "relay.test");
    // No upstream: dnsmasq refuses, which says nothing about the domain itself.
    let e = dns.mx("example.org").await.unwrap_err();
    assert!(e.is_temporary(), "{e}");
}

/// A message signed by a.test verifies through the key published in DNS, split into 255-byte
/// strings as a real zone holds it.
#[tokio::test]
async fn dkim_key_published_in_dns_verifies_the_signature() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::with_domain("a.test", dir.path()).unwrap();
    let key = Dkim::key_path(&cfg);
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    std::fs::write(&key, include_str!("data/dkim-pkcs1.pem")).unwrap();
    let signer = Dkim::load(&cfg).unwrap();
    let record = signer.txt_record().unwrap();
    assert!(record.len() > 255);
    let Some(server) = dnsmasq(&[format!("--txt-record=opendkim._domainkey.a.test,{record}")])
    else {
        return;
    };
    let (_, dns) = resolver(&server, dir.path(), "b.test");
    let msg = b"From: <alice@a.test>\r\nTo: <bob@b.test>\r\nSubject: [...]\r\n\r\nhello\r\n";
    let signed = signer.sign(msg).unwrap();
    // The receiving relay is b.test.
    let rcv = Config::with_domain("b.test", dir.path()).unwrap();
    let peer = Some(std::net::IpAddr::from([192, 0, 2, 1]));
    assert_eq!(dkim::verify_origin(&dns, &rcv, peer, &signed).await, Ok(()));
    // The same signature claimed for another From domain is not aligned.
    let forged = String::from_utf8(signed)
        .unwrap()
        .replace("From: <alice@a.test>", "From: <alice@c.test>");
    let r = dkim::verify_origin(&dns, &rcv, peer, forged.as_bytes())
        .await
        .unwrap_err();
    assert_eq!(r.to_string(), "554 5.7.1 No valid DKIM signature found");
    // A selector without a record (NXDOMAIN) is a permanent failure.
    let (_, dns_b) = resolver(&server, dir.path(), "b.test");
    let mut other_cfg = cfg.clone();
    other_cfg.dkim_selector = "missing".into();
    let other_key = Dkim::key_path(&other_cfg);
    std::fs::copy(&key, &other_key).unwrap();
    let unpublished = Dkim::load(&other_cfg).unwrap().sign(msg).unwrap();
    let r = dkim::verify_origin(&dns_b, &rcv, peer, &unpublished)
        .await
        .unwrap_err();
    assert_eq!(r.to_string(), "554 5.7.1 No valid DKIM signature found");
}

/// dnsmasq options publishing `records` (as the wizard shows them) for `relay.test`, plus its
/// address; `skip` leaves out records of that name and type, `mx` replaces the MX target.
fn publish(
    records: &[relaybox::dns::records::Record],
    skip: Option<(&str, &str)>,
    mx: &str,
) -> Vec<String> {
    let mut out = vec!["--host-record=relay.test,127.0.0.9".to_string()];
    for r in records {
        let name = r.name.trim_end_matches('.');
        if skip.is_some_and(|(n, t)| r.name.starts_with(n) && r.rtype == t) {
            continue;
        }
        let f: Vec<&str> = r.rdata.split_whitespace().collect();
        match r.rtype {
            "MX" => out.push(format!("--mx-host={name},{mx},{}", f[0])),
            "CNAME" => out.push(format!("--cname={name},{}", f[0].trim_end_matches('.'))),
            "SRV" => out.push(format!(
                "--srv-host={name},{},{},{},{}",
                f[3].trim_end_matches('.'),
                f[2],
                f[0],
                f[1]
            )),
            "TXT" => {
                let text: String = r.rdata.split('"').skip(1).step_by(2).collect();
                out.push(format!("--txt-record={name},{text}"));
            }
            t => panic!("no dnsmasq form for {t}"),
        }
    }
    out
}

#[tokio::test]
async fn live_check_says_exactly_which_record_is_missing_or_wrong() {
    use relaybox::dns::check::{check, State};
    let dir = tempfile::tempdir().unwrap();
    let cfg0 = Config::with_domain("relay.test", dir.path()).unwrap();
    let dkim = Dkim::load_or_create(&cfg0).unwrap();
    let records = relaybox::dns::records::expected("relay.test", &dkim, "202611240000");
    let bad = |report: &relaybox::dns::check::Report| -> Vec<(String, String, State)> {
        report
            .records
            .iter()
            .filter(|c| c.state != State::Ok)
            .map(|c| (c.name.clone(), c.rtype.clone(), c.state))
            .collect()
    };

    // Everything published: all ok.
    let Some(server) = dnsmasq(&publish(&records, None, "relay.test")) else {
        return;
    };
    let (cfg, _) = resolver(&server, dir.path(), "relay.test");
    let report = check(&cfg, "relay.test", &records).await;
    assert_eq!(bad(&report), vec![], "{report:#?}");
    assert!(report.required_ok);
    drop(server);

    // No DKIM key: exactly that one is missing, and required records are not all ok.
    let server = dnsmasq(&publish(
        &records,
        Some(("opendkim._domainkey", "TXT")),
        "relay.test",
    ))
    .unwrap();
    let (cfg, _) = resolver(&server, dir.path(), "relay.test");
    let report = check(&cfg, "relay.test", &records).await;
    assert_eq!(
        bad(&report),
        vec![(
            "opendkim._domainkey.relay.test.".to_string(),
            "TXT".to_string(),
            State::Missing
        )],
        "{report:#?}"
    );
    assert!(!report.required_ok);
    drop(server);

    // MX pointing elsewhere: MX wrong, with what was expected and what was found.
    let server = dnsmasq(&publish(&records, None, "mail.elsewhere.test")).unwrap();
    let (cfg, _) = resolver(&server, dir.path(), "relay.test");
    let report = check(&cfg, "relay.test", &records).await;
    assert_eq!(
        bad(&report),
        vec![("relay.test.".to_string(), "MX".to_string(), State::Wrong)],
        "{report:#?}"
    );
    let mx = report.records.iter().find(|c| c.rtype == "MX").unwrap();
    assert_eq!(mx.expected, "10 relay.test.");
    assert!(
        mx.found.iter().any(|f| f.contains("mail.elsewhere.test")),
        "{mx:?}"
    );
}

#[tokio::test]
async fn live_check_asks_the_zones_authoritative_servers_not_the_resolver() {
    use relaybox::dns::check::{check, State};
    const AUTH: &str = "127.0.0.56";
    let dir = tempfile::tempdir().unwrap();
    let cfg0 = Config::with_domain("relay.test", dir.path()).unwrap();
    let dkim = Dkim::load_or_create(&cfg0).unwrap();
    let records = relaybox::dns::records::expected("relay.test", &dkim, "202612040000");
    // The zone's server has every record, just published.
    let auth_port = free_port(AUTH);
    let Some(_auth) = dnsmasq_on(AUTH, auth_port, &publish(&records, None, "relay.test")) else {
        return;
    };
    // The resolver still has the old MX, and names ns1.relay.test as the zone's server.
    let mut stale = publish(&records, None, "mail.old.test");
    stale.extend([
        "--auth-zone=relay.test".to_string(),
        format!("--auth-server=ns1.relay.test,{LISTEN}"),
        format!("--host-record=ns1.relay.test,{AUTH}"),
    ]);
    let resolver_server = dnsmasq(&stale).unwrap();
    let (mut cfg, dns) = resolver(&resolver_server, dir.path(), "relay.test");
    assert_eq!(
        dns.rdata("relay.test", "MX").await.unwrap(),
        Some(vec!["10 mail.old.test.".to_string()]),
        "the resolver serves the stale MX"
    );
    assert_eq!(
        dns.rdata("relay.test", "NS").await.unwrap(),
        Some(vec!["ns1.relay.test.".to_string()])
    );
    cfg.dns_authoritative_port = auth_port;
    let report = check(&cfg, "relay.test", &records).await;
    let bad: Vec<_> = report
        .records
        .iter()
        .filter(|c| c.state != State::Ok)
        .collect();
    assert!(bad.is_empty(), "{report:#?}");
    assert_eq!(
        report.resolver,
        format!("the authoritative servers ns1.relay.test ({AUTH})")
    );
}

/// The check compares the AAAA record with the box's global IPv6 address (and the A record
/// with its public IPv4 when known): the same address is ok, another one is wrong.
#[tokio::test]
async fn live_check_compares_the_aaaa_record_with_the_boxs_address() {
    use relaybox::dns::check::{check, State};
    let Some(server) = dnsmasq(&["--host-record=box.test,81.2.69.160,2a01:4f8::7".to_string()])
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = resolver(&server, dir.path(), "box.test");
    let state = |report: &relaybox::dns::check::Report, rtype: &str| {
        report
            .records
            .iter()
            .find(|c| c.rtype == rtype)
            .map(|c| (c.state, c.found.clone()))
            .unwrap()
    };
    let v6 = |s: &str| Some(s.parse().unwrap());
    let same = relaybox::dns::records::addresses(
        "box.test",
        Some("81.2.69.160".parse().unwrap()),
        v6("2a01:4f8::7"),
    );
    let report = check(&cfg, "box.test", &same).await;
    assert_eq!(state(&report, "AAAA").0, State::Ok, "{report:#?}");
    assert_eq!(state(&report, "A").0, State::Ok, "{report:#?}");
    let moved = relaybox::dns::records::addresses("box.test", None, v6("2a01:4f8::8"));
    let report = check(&cfg, "box.test", &moved).await;
    assert_eq!(
        state(&report, "AAAA"),
        (State::Wrong, vec!["2a01:4f8::7".to_string()]),
        "{report:#?}"
    );
}
