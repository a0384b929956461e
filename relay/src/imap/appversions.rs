//! `/shared/vendor/deltachat/appversions`: which app versions exist, for clients to suggest an
//! update (reference §5.3, `chatmaild/defaults/appversions.json`). An operator's
//! `<data_dir>/appversions.json` replaces the default shipped in the binary; a file that is not
//! the reference's shape is answered with NIL, as the reference does with bad JSON.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The shipped default (the reference's `appversions.json`, same shape).
pub(super) const DEFAULT: &str = include_str!("appversions.json");
/// The operator's file in the data directory.
pub const FILE: &str = "appversions.json";
/// Bigger than any real list; keeps a mistaken file from being read into every session.
const MAX_FILE: u64 = 64 * 1024;

/// The shape the reference checks (`test_appversions.py`); other fields are passed through.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct Source {
    source_id: String,
    version_integer: u32,
    version_string: String,
    download_url: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct Client {
    client_id: String,
    sources: Vec<Source>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct AppVersions {
    clients: Vec<Client>,
}

/// The value served: `text` as one line of JSON if it has the reference's shape.
pub(super) fn compact(text: &str) -> Result<String, String> {
    serde_json::from_str::<AppVersions>(text).map_err(|e| e.to_string())?;
    Ok(minify(text))
}

/// JSON without the whitespace between tokens, keys kept in their order.
fn minify(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

pub fn operator_file(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// The operator's list if there is one, else the shipped default; `None` if the operator's
/// file is unreadable or not the expected shape (logged, so the operator can find out).
pub(super) async fn load(data_dir: &Path) -> Option<String> {
    let path = operator_file(data_dir);
    let text = match tokio::fs::metadata(&path).await {
        Ok(m) if m.len() > MAX_FILE => {
            tracing::warn!(path = %path.display(), "appversions file too large, not served");
            return None;
        }
        Ok(_) => match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot read appversions file: {e}");
                return None;
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DEFAULT.to_string(),
        Err(e) => {
            tracing::warn!(path = %path.display(), "cannot read appversions file: {e}");
            return None;
        }
    };
    match compact(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(path = %path.display(), "appversions file not served: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_default_has_the_reference_shape_on_one_line() {
        let v = compact(DEFAULT).unwrap();
        assert!(!v.contains('\n') && !v.contains(": "), "{v}");
        assert!(
            v.starts_with(r#"{"clients":[{"clientId":"deltachat","sources":[{"sourceId":"gplay","versionInteger":"#),
            "{v}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&v).unwrap();
        let url = parsed["clients"][0]["sources"][0]["downloadUrl"]
            .as_str()
            .unwrap();
        assert!(url.starts_with("https://github.com/deltachat/"), "{url}");
    }

    #[test]
    fn minify_keeps_spaces_inside_strings() {
        assert_eq!(
            minify("{ \"a b\" : [ 1 , \"x \\\" y\" ] }\n"),
            r#"{"a b":[1,"x \" y"]}"#
        );
    }

    #[test]
    fn wrong_shapes_are_refused() {
        assert!(compact("not json").is_err());
        assert!(compact("{}").is_err());
        assert!(compact(r#"{"clients":[{"clientId":"x"}]}"#).is_err());
        assert!(compact(
            r#"{"clients":[{"clientId":"x","sources":[{"sourceId":"s","versionInteger":-1,"versionString":"1","downloadUrl":"https://x"}]}]}"#
        )
        .is_err());
        assert!(compact(r#"{"clients":[]}"#).is_ok());
    }
}
