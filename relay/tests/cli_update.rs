//! `relaybox update-bundle create|verify` as the image build and its tests call them, with the
//! committed test key, and `relaybox update` off the appliance.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_relaybox");

fn keys() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../image/test-keys")
}

#[test]
fn update_bundle_create_then_verify_with_the_test_key() {
    let d = tempfile::tempdir().unwrap();
    let (boot, root, out) = (
        d.path().join("boot.img"),
        d.path().join("root.img"),
        d.path().join("relaybox-0.1.1-rpi-arm64.update"),
    );
    std::fs::write(&boot, vec![1u8; 70_000]).unwrap();
    std::fs::write(&root, vec![2u8; 300_000]).unwrap();
    let made = Command::new(BIN)
        .args([
            "update-bundle",
            "create",
            "--version",
            "0.1.1",
            "--build-id",
            "t.1",
        ])
        .arg("--boot")
        .arg(&boot)
        .arg("--root")
        .arg(&root)
        .arg("--key")
        .arg(keys().join("update-test-key.pk8"))
        .arg("--out")
        .arg(&out)
        .env("SOURCE_DATE_EPOCH", "1765000000")
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let verify = |file: &std::path::Path| {
        Command::new(BIN)
            .args(["update-bundle", "verify"])
            .arg(file)
            .arg("--pubkey")
            .arg(keys().join("update-key.pub"))
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    let ok = verify(&out);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(m["version"], "0.1.1");
    assert_eq!(m["arch"], "aarch64");
    assert_eq!(m["board"], "rpi-arm64");
    assert_eq!(m["created"], "2025-12-06T05:46:40Z");
    assert_eq!(m["root"]["size"], 300_000);
    // One flipped byte in the root image: exit 1 with the reason.
    let mut b = std::fs::read(&out).unwrap();
    let n = b.len();
    b[n - 5] ^= 1;
    std::fs::write(&out, b).unwrap();
    let bad = verify(&out);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("the root image does not match the manifest's SHA-256"),
        "{err}"
    );
}

#[test]
fn update_off_the_appliance_is_refused_with_a_reason() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("x.update");
    std::fs::write(&f, b"RBXUPD01").unwrap();
    let out = Command::new(BIN)
        .arg("update")
        .arg(&f)
        .args(["--yes", "--config"])
        .arg(d.path().join("none.toml"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    // This test machine boots from no A/B slot of the image.
    assert!(err.contains("not running from an A/B slot"), "{err}");
}
