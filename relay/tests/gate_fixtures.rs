//! The gate fixture corpus (`tests/fixtures/gate/*.eml`) against its manifest
//! (`verdicts.toml`): every fixture's verdict, outgoing and incoming, as the manifest states it.
//! Outgoing uses MAIL FROM = the From address and RCPT TO = the To addresses.
//! `cargo test -p relaybox --test gate_fixtures -- --nocapture` prints the summary.

mod common;

use common::*;
use relaybox::policy::Direction;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    outgoing: String,
    incoming: String,
    why: String,
}

fn manifest() -> BTreeMap<String, Expect> {
    let text = std::fs::read_to_string(fixtures_dir().join("verdicts.toml")).unwrap();
    toml::from_str(&text).unwrap()
}

fn eml_files() -> BTreeSet<String> {
    std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".eml"))
        .collect()
}

#[test]
fn manifest_and_files_match() {
    let listed: BTreeSet<String> = manifest().into_keys().collect();
    let files = eml_files();
    let unlisted: Vec<_> = files.difference(&listed).collect();
    let missing: Vec<_> = listed.difference(&files).collect();
    assert!(
        unlisted.is_empty(),
        "fixtures without a manifest entry: {unlisted:?}"
    );
    assert!(
        missing.is_empty(),
        "manifest entries without a file: {missing:?}"
    );
}

#[test]
fn every_fixture_gets_its_verdict() {
    let mut failures = Vec::new();
    let mut counts: BTreeMap<(&str, String), usize> = BTreeMap::new();
    let m = manifest();
    for (name, want) in &m {
        assert!(!want.why.trim().is_empty(), "{name}: say why");
        let Ok(data) = std::fs::read(fixtures_dir().join(name)) else {
            continue; // reported by manifest_and_files_match
        };
        for (dir, label, expected) in [
            (Direction::Outgoing, "outgoing", &want.outgoing),
            (Direction::Incoming, "incoming", &want.incoming),
        ] {
            let got = check(&data, dir);
            *counts.entry((label, got.clone())).or_default() += 1;
            if &got != expected {
                failures.push(format!("{name} {label}: want {expected}, got {got}"));
            }
        }
    }
    println!("gate fixtures: {} files", m.len());
    for ((dir, verdict), n) in &counts {
        println!("  {dir:8} {verdict:6} {n}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The outgoing header cleanup (Subject → `[...]`, trace headers dropped) keeps an accepted
/// encrypted or Secure-Join message what it was. The setup message is the exception, as in the
/// reference (its reinjection rewrites every Subject): the gate fuzz target's first "crash" was
/// asm-self.eml under a harness assertion that expected the cleaned copy to pass again.
#[test]
fn cleanup_keeps_what_an_accepted_message_is() {
    use relaybox::policy::{check_outgoing_kind, MailKind, Verdict};
    for name in eml_files() {
        let data = std::fs::read(fixtures_dir().join(&name)).unwrap();
        let env = envelope_for(&data);
        let (Verdict::Accept(out), kind) = check_outgoing_kind(&env, &data) else {
            continue;
        };
        let again = check_outgoing_kind(&env, &out).1;
        if kind == MailKind::SetupMessage {
            assert_eq!(name, "asm-self.eml");
            assert_eq!(again, MailKind::Unencrypted);
            assert!(String::from_utf8_lossy(&out).contains("\r\nSubject: [...]\r\n"));
        } else {
            assert_eq!(again, kind, "{name}");
        }
    }
}

/// LF-only fixtures are the ones about LF; every other fixture has CRLF line ends only.
#[test]
fn fixtures_use_crlf() {
    for name in eml_files() {
        let data = std::fs::read(fixtures_dir().join(&name)).unwrap();
        let bare_lf = data
            .iter()
            .enumerate()
            .filter(|&(i, &b)| b == b'\n' && (i == 0 || data[i - 1] != b'\r'))
            .count();
        if name.starts_with("lf-") || name.starts_with("armor-lf-") {
            assert!(bare_lf > 0, "{name} should have bare LF");
        } else {
            assert_eq!(bare_lf, 0, "{name} has bare LF");
        }
    }
}
