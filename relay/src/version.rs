//! What is running: the crate version, the build id of the image it was built for, and the
//! appliance image's `/etc/os-release` (read at run time, so the admin page shows the image
//! actually booted, also after an A/B switch to a slot whose binary was built elsewhere).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

/// Set by scripts/build-image.sh (`RELAYBOX_BUILD_ID`); absent in plain `cargo build`s.
pub const BUILD_ID: Option<&str> = option_env!("RELAYBOX_BUILD_ID");

/// `0.1.0`, or `0.1.0 (build 20261206.1fdcf8e)` for an image build.
pub fn long() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| match BUILD_ID.filter(|b| !b.is_empty()) {
        Some(b) => format!("{} (build {b})", env!("CARGO_PKG_VERSION")),
        None => env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// The os-release keys worth showing (os-release(5)); others are dropped.
const SHOWN: [&str; 6] = [
    "PRETTY_NAME",
    "IMAGE_ID",
    "IMAGE_VERSION",
    "VERSION_ID",
    "BUILD_ID",
    "VARIANT",
];

/// The shown keys of an os-release file; None when there is none (not on the appliance).
pub fn os_release(path: &Path) -> Option<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(parse_os_release(&text))
}

fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once('=') else {
            continue;
        };
        if !SHOWN.contains(&k) {
            continue;
        }
        // os-release values are shell-quoted; the image writes only plain "..." values.
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        out.insert(k.to_string(), v.replace("\\\"", "\"").replace("\\\\", "\\"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_keeps_the_shown_keys_unquoted() {
        let m = parse_os_release(
            "NAME=\"relaybox\"\nPRETTY_NAME=\"relaybox 0.1.0\"\nIMAGE_ID=relaybox\nVERSION_ID='0.1.0'\n\
             BUILD_ID=\"20261206.1fdcf8e\"\n# comment\nHOME_URL=\"https://x\"\n",
        );
        assert_eq!(
            m.get("PRETTY_NAME").map(String::as_str),
            Some("relaybox 0.1.0")
        );
        assert_eq!(m.get("IMAGE_ID").map(String::as_str), Some("relaybox"));
        assert_eq!(m.get("VERSION_ID").map(String::as_str), Some("0.1.0"));
        assert_eq!(
            m.get("BUILD_ID").map(String::as_str),
            Some("20261206.1fdcf8e")
        );
        assert!(!m.contains_key("NAME") && !m.contains_key("HOME_URL"));
    }

    #[test]
    fn long_version_starts_with_the_crate_version() {
        assert!(long().starts_with(env!("CARGO_PKG_VERSION")));
        match BUILD_ID {
            Some(b) if !b.is_empty() => assert!(long().ends_with(&format!("(build {b})"))),
            _ => assert_eq!(long(), env!("CARGO_PKG_VERSION")),
        }
    }
}
