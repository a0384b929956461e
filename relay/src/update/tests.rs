//! Whole installs against plain files standing for the partitions, p1 and /proc.

use super::bundle::{self, BundleError, CreateOpts, Expect};
use super::install::{self, InstallOpts};
use super::state::Phase;
use super::*;
use ring::signature::Ed25519KeyPair;

const BOOT_PART: usize = 64 << 10;
const ROOT_PART: usize = 256 << 10;
const AUTOBOOT_A: &str = "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n";

fn key() -> Ed25519KeyPair {
    let rng = ring::rand::SystemRandom::new();
    let pk8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    Ed25519KeyPair::from_pkcs8(pk8.as_ref()).unwrap()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    env: UpdateEnv,
    key: Ed25519KeyPair,
}

/// A system running slot A (committed), version 0.1.0, with the tryboot module loaded.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let p = |s: &str| root.join(s);
    for d in ["parts", "fw", "sys", "update/incoming"] {
        std::fs::create_dir_all(p(d)).unwrap();
    }
    let env = UpdateEnv {
        cmdline: p("cmdline"),
        partuuid_dir: p("parts"),
        firmware_dir: p("fw"),
        tryboot_sysfs: p("sys/arm"),
        test_port: p("port"),
        os_release: p("os-release"),
        dir: p("update"),
        pubkey: p("update-key.pub"),
        boot_id: p("boot_id"),
        arch: "aarch64".into(),
    };
    let key = key();
    std::fs::write(&env.pubkey, bundle::public_key_hex(&key) + "\n").unwrap();
    std::fs::write(
        &env.cmdline,
        "console=tty1 root=PARTUUID=52424f58-05 rootfstype=erofs ro\n",
    )
    .unwrap();
    std::fs::write(&env.os_release, "VERSION_ID=\"0.1.0\"\n").unwrap();
    std::fs::write(&env.boot_id, "boot-1\n").unwrap();
    std::fs::write(env.autoboot_path(), AUTOBOOT_A).unwrap();
    std::fs::write(&env.tryboot_sysfs, "0\n").unwrap();
    for (n, size, fill) in [
        (2, BOOT_PART, b'a'),
        (5, ROOT_PART, b'A'),
        (3, BOOT_PART, b'b'),
        (6, ROOT_PART, b'B'),
    ] {
        std::fs::write(env.partition(n), vec![fill; size]).unwrap();
    }
    Fixture {
        _tmp: tmp,
        root,
        env,
        key,
    }
}

fn images(boot_len: usize, root_len: usize) -> (Vec<u8>, Vec<u8>) {
    let boot = (0..boot_len).map(|i| (i % 251) as u8).collect();
    let root = (0..root_len).map(|i| (i % 241) as u8 ^ 0x5a).collect();
    (boot, root)
}

impl Fixture {
    fn bundle_with(&self, version: &str, arch: &str, boot: &[u8], root: &[u8]) -> PathBuf {
        let (b, r) = (self.root.join("boot.img"), self.root.join("root.img"));
        std::fs::write(&b, boot).unwrap();
        std::fs::write(&r, root).unwrap();
        let out = self
            .env
            .incoming_dir()
            .join(format!("relaybox-{version}.update"));
        let opts = CreateOpts {
            version,
            build_id: "test.1",
            arch,
            board: BOARD,
            created: 1_765_000_000,
        };
        bundle::create(&b, &r, &opts, &self.key, &out).unwrap();
        out
    }

    fn bundle(&self, version: &str) -> PathBuf {
        let (b, r) = images(40_000, 200_000);
        self.bundle_with(version, "aarch64", &b, &r)
    }

    fn expect_untouched(&self) {
        for (n, size, fill) in [
            (2, BOOT_PART, b'a'),
            (5, ROOT_PART, b'A'),
            (3, BOOT_PART, b'b'),
            (6, ROOT_PART, b'B'),
        ] {
            assert_eq!(
                std::fs::read(self.env.partition(n)).unwrap(),
                vec![fill; size],
                "partition {n} changed"
            );
        }
        self.expect_committed_a_unarmed();
    }

    fn expect_committed_a_unarmed(&self) {
        assert_eq!(
            std::fs::read_to_string(self.env.autoboot_path()).unwrap(),
            AUTOBOOT_A
        );
        assert_eq!(
            std::fs::read_to_string(&self.env.tryboot_sysfs).unwrap(),
            "0\n"
        );
    }

    fn install(&self, path: &Path, allow_downgrade: bool) -> Result<install::Installed, String> {
        install::install(
            &self.env,
            path,
            &InstallOpts { allow_downgrade },
            &mut |_, _| Ok(()),
            &mut |_, _| true,
        )
    }

    /// Installs and expects a refusal containing `msg`, with nothing written anywhere.
    fn refused(&self, path: &Path, allow_downgrade: bool, msg: &str) {
        let e = self.install(path, allow_downgrade).unwrap_err();
        assert!(e.contains(msg), "{e:?} does not say {msg:?}");
        assert!(!e.contains('\n'), "not one line: {e:?}");
        self.expect_untouched();
        assert!(!self.env.state_path().exists(), "state written: {e}");
    }

    /// Rewrites the bundle's bytes.
    fn mangle(&self, path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let mut b = std::fs::read(path).unwrap();
        f(&mut b);
        std::fs::write(path, b).unwrap();
    }

    /// The offset of the payload in a bundle file.
    fn payload_offset(&self, path: &Path) -> usize {
        let b = std::fs::read(path).unwrap();
        let mlen = u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize;
        12 + mlen + 64
    }

    /// Reboot: a new boot id and the given slot on the command line.
    fn boot(&self, slot: Slot, id: &str) {
        let uuid = if slot == Slot::A { "05" } else { "06" };
        std::fs::write(
            &self.env.cmdline,
            format!("root=PARTUUID=52424f58-{uuid} ro\n"),
        )
        .unwrap();
        std::fs::write(&self.env.boot_id, id).unwrap();
    }
}

#[test]
fn update_install_writes_the_inactive_slot_verifies_and_arms_tryboot() {
    let fx = fixture();
    let path = fx.bundle("0.1.1");
    let (boot, root) = images(40_000, 200_000);
    let mut steps = Vec::new();
    let i = install::install(
        &fx.env,
        &path,
        &InstallOpts {
            allow_downgrade: false,
        },
        &mut |s, p| {
            steps.push(format!("{s} {p}"));
            Ok(())
        },
        &mut |m, to| m.version == "0.1.1" && to == Slot::B,
    )
    .unwrap();
    assert_eq!(
        (i.from, i.to, i.version.as_str()),
        (Slot::A, Slot::B, "0.1.1")
    );
    for s in [
        "verifying root 100",
        "writing boot 100",
        "writing root 100",
        "checking root 100",
    ] {
        assert!(steps.iter().any(|x| x == s), "no {s:?} in {steps:?}");
    }
    let b = std::fs::read(fx.env.partition(3)).unwrap();
    let r = std::fs::read(fx.env.partition(6)).unwrap();
    assert_eq!(&b[..boot.len()], &boot[..]);
    assert_eq!(&r[..root.len()], &root[..]);
    // The partitions keep their size (written in place, not truncated).
    assert_eq!((b.len(), r.len()), (BOOT_PART, ROOT_PART));
    assert_eq!(
        std::fs::read(fx.env.partition(2)).unwrap(),
        vec![b'a'; BOOT_PART]
    );
    assert_eq!(
        std::fs::read(fx.env.partition(5)).unwrap(),
        vec![b'A'; ROOT_PART]
    );
    // Still committed A; the flag boots [tryboot] = B once.
    assert_eq!(
        std::fs::read_to_string(fx.env.autoboot_path()).unwrap(),
        AUTOBOOT_A
    );
    assert_eq!(
        std::fs::read_to_string(&fx.env.tryboot_sysfs).unwrap(),
        "1\n"
    );
    let s = fx.env.read_state();
    assert_eq!(s.phase, Some(Phase::Installed));
    assert_eq!(s.slots.get("A").map(String::as_str), Some("0.1.0"));
    assert_eq!(s.slots.get("B").map(String::as_str), Some("0.1.1"));
}

#[test]
fn update_verify_accepts_a_good_bundle_and_reports_its_manifest() {
    let fx = fixture();
    let path = fx.bundle("0.2.0");
    let pk = fx.env.public_key().unwrap();
    let expect = Expect {
        pubkey: &pk,
        arch: "aarch64",
        board: BOARD,
        running_version: "0.1.0",
        allow_downgrade: false,
        boot_max: BOOT_MAX,
        root_max: ROOT_MAX,
    };
    let h = bundle::verify_file(&path, &expect, &mut |_, _, _| Ok(())).unwrap();
    assert_eq!(h.manifest.version, "0.2.0");
    assert_eq!(h.manifest.root.size, 200_000);
    assert_eq!(h.manifest.created, "2025-12-06T05:46:40Z");
    assert_eq!(h.total_len(), std::fs::metadata(&path).unwrap().len());
}

#[test]
fn update_refuses_a_bundle_signed_by_another_key() {
    let fx = fixture();
    let path = fx.bundle("0.1.1");
    std::fs::write(&fx.env.pubkey, bundle::public_key_hex(&key())).unwrap();
    fx.refused(&path, false, "not signed by this image's release key");
}

#[test]
fn update_refuses_a_manifest_changed_after_signing() {
    let fx = fixture();
    let path = fx.bundle("0.1.1");
    fx.mangle(&path, |b| {
        let at = b.windows(5).position(|w| w == b"0.1.1").unwrap();
        b[at + 4] = b'9';
    });
    fx.refused(&path, false, "not signed by this image's release key");
}

#[test]
fn update_refuses_a_wrong_hash_of_the_boot_image() {
    let fx = fixture();
    let path = fx.bundle("0.1.1");
    let off = fx.payload_offset(&path);
    fx.mangle(&path, |b| b[off + 10] ^= 1);
    fx.refused(
        &path,
        false,
        "the boot image does not match the manifest's SHA-256",
    );
}

#[test]
fn update_refuses_a_wrong_hash_of_the_root_image() {
    let fx = fixture();
    let path = fx.bundle("0.1.1");
    fx.mangle(&path, |b| {
        let n = b.len();
        b[n - 1] ^= 0x80;
    });
    fx.refused(
        &path,
        false,
        "the root image does not match the manifest's SHA-256",
    );
}

#[test]
fn update_refuses_an_older_or_equal_version_unless_downgrades_are_allowed() {
    let fx = fixture();
    let old = fx.bundle("0.0.9");
    fx.refused(&old, false, "version 0.0.9 is older than the running 0.1.0");
    let same = fx.bundle("0.1.0");
    fx.refused(&same, false, "version 0.1.0 is already installed");
    fx.install(&old, true).unwrap();
    assert_eq!(fx.env.read_state().phase, Some(Phase::Installed));
}

#[test]
fn update_refuses_a_bundle_for_another_architecture() {
    let fx = fixture();
    let (b, r) = images(1000, 1000);
    let path = fx.bundle_with("0.1.1", "x86_64", &b, &r);
    fx.refused(
        &path,
        false,
        "the bundle is for x86_64/rpi-arm64, this system is aarch64/rpi-arm64",
    );
}

#[test]
fn update_refuses_a_truncated_bundle() {
    let fx = fixture();
    let path = fx.bundle("0.1.1");
    fx.mangle(&path, |b| b.truncate(b.len() - 1000));
    fx.refused(&path, false, "the bundle is truncated");
    // Cut inside the header: still a clear message, not an I/O error.
    fx.mangle(&path, |b| b.truncate(40));
    fx.refused(&path, false, "the bundle is truncated (in the manifest)");
}

#[test]
fn update_refuses_trailing_bytes() {
    let fx = fixture();
    let path = fx.bundle("0.1.1");
    fx.mangle(&path, |b| b.extend_from_slice(b"junk"));
    fx.refused(&path, false, "the bundle has 4 bytes after the root image");
}

#[test]
fn update_refuses_a_payload_larger_than_its_partition() {
    let fx = fixture();
    let (b, r) = images(1000, ROOT_PART + 1);
    let path = fx.bundle_with("0.1.1", "aarch64", &b, &r);
    fx.refused(
        &path,
        false,
        &format!(
            "the root image is {} bytes, more than its partition takes ({ROOT_PART} bytes)",
            ROOT_PART + 1
        ),
    );
}

#[test]
fn update_refuses_bad_magic_and_a_manifest_that_is_not_json() {
    let fx = fixture();
    let path = fx.bundle("0.1.1");
    fx.mangle(&path, |b| b[0] = b'X');
    fx.refused(&path, false, "not a relaybox update bundle (bad magic)");
    // Signed, but not JSON: a broken build tool.
    let garbage = b"{not json".to_vec();
    let mut signed = bundle::SIG_CONTEXT.to_vec();
    signed.extend_from_slice(&garbage);
    let mut b = bundle::MAGIC.to_vec();
    b.extend_from_slice(&(garbage.len() as u32).to_le_bytes());
    b.extend_from_slice(&garbage);
    b.extend_from_slice(fx.key.sign(&signed).as_ref());
    std::fs::write(&path, b).unwrap();
    fx.refused(&path, false, "the bundle's manifest is not valid JSON");
}

#[test]
fn update_refuses_when_the_tryboot_flag_cannot_be_set() {
    let fx = fixture();
    let path = fx.bundle("0.1.1");
    std::fs::remove_file(&fx.env.tryboot_sysfs).unwrap();
    // The test port exists, but the command line does not allow it.
    std::fs::write(&fx.env.test_port, "").unwrap();
    let e = fx.install(&path, false).unwrap_err();
    assert_eq!(
        e,
        "this system cannot set the tryboot flag (module relaybox_tryboot not loaded)"
    );
    assert!(!fx.env.state_path().exists());
    // With relaybox.test_firmware=1 (the QEMU test), the port stands for the mailbox.
    std::fs::write(
        &fx.env.cmdline,
        "root=PARTUUID=52424f58-05 relaybox.test_firmware=1\n",
    )
    .unwrap();
    fx.install(&path, false).unwrap();
    assert_eq!(
        std::fs::read_to_string(&fx.env.test_port).unwrap(),
        "tryboot\n"
    );
}

#[test]
fn update_refuses_to_install_from_a_slot_on_trial() {
    let fx = fixture();
    let path = fx.bundle("0.1.1");
    fx.boot(Slot::B, "boot-2");
    let e = fx.install(&path, false).unwrap_err();
    assert!(
        e.contains("slot B is running but slot A is committed"),
        "{e}"
    );
}

#[test]
fn update_interrupted_while_writing_leaves_the_committed_slot_untouched() {
    let fx = fixture();
    let path = fx.bundle("0.1.1");
    // The write stops half-way through the root image, as a power cut would stop it.
    let e = install::install(
        &fx.env,
        &path,
        &InstallOpts {
            allow_downgrade: false,
        },
        &mut |s, p| {
            if s == "writing root" && p >= 50 {
                return Err(std::io::Error::other("power cut"));
            }
            Ok(())
        },
        &mut |_, _| true,
    )
    .unwrap_err();
    assert!(e.contains("power cut"), "{e}");
    // Slot A and p1 as before, the flag not armed: the next boot is A, as ever.
    assert_eq!(
        std::fs::read(fx.env.partition(2)).unwrap(),
        vec![b'a'; BOOT_PART]
    );
    assert_eq!(
        std::fs::read(fx.env.partition(5)).unwrap(),
        vec![b'A'; ROOT_PART]
    );
    fx.expect_committed_a_unarmed();
    let s = fx.env.read_state();
    assert_eq!(s.phase, Some(Phase::Interrupted));
    assert!(
        !s.slots.contains_key("B"),
        "half-written B shown as a version"
    );
}

#[test]
fn update_cut_by_power_loss_is_recorded_as_interrupted_at_the_next_start() {
    let fx = fixture();
    let path = fx.bundle("0.1.1");
    // What a power cut in the middle of writing leaves: state "installing" of that boot.
    fx.install(&path, false).unwrap();
    let mut s = fx.env.read_state();
    s.phase = Some(Phase::Installing);
    fx.env.write_state(&s).unwrap();
    // A restart of the daemon in the same boot (the agent may still be writing): no verdict.
    assert_eq!(
        commit::record_start(&fx.env),
        commit::Start::Committed(Slot::A)
    );
    assert_eq!(fx.env.read_state().phase, Some(Phase::Installing));
    fx.boot(Slot::A, "boot-2");
    assert_eq!(
        commit::record_start(&fx.env),
        commit::Start::Committed(Slot::A)
    );
    let s = fx.env.read_state();
    assert_eq!(s.phase, Some(Phase::Interrupted));
    assert!(s.message.contains("cut short"), "{}", s.message);
}

#[test]
fn update_tryboot_start_commits_by_rewriting_autoboot() {
    let fx = fixture();
    let path = fx.bundle("0.1.1");
    fx.install(&path, false).unwrap();
    fx.boot(Slot::B, "boot-2");
    std::fs::write(&fx.env.os_release, "VERSION_ID=0.1.1\n").unwrap();
    assert_eq!(
        commit::record_start(&fx.env),
        commit::Start::Tryboot(Slot::B)
    );
    assert_eq!(fx.env.read_state().phase, Some(Phase::Trying));
    // Preconditions: the running slot, this boot.
    assert!(commit::commit(&fx.env, Slot::A, "boot-2").is_err());
    assert!(commit::commit(&fx.env, Slot::B, "boot-1").is_err());
    assert_eq!(
        std::fs::read_to_string(fx.env.autoboot_path()).unwrap(),
        AUTOBOOT_A
    );
    commit::commit(&fx.env, Slot::B, "boot-2").unwrap();
    assert_eq!(
        std::fs::read_to_string(fx.env.autoboot_path()).unwrap(),
        "[all]\ntryboot_a_b=1\nboot_partition=3\n[tryboot]\nboot_partition=2\n"
    );
    let s = fx.env.read_state();
    assert_eq!(s.phase, Some(Phase::Committed));
    assert_eq!(s.slots.get("B").map(String::as_str), Some("0.1.1"));
    assert_eq!(
        commit::record_start(&fx.env),
        commit::Start::Committed(Slot::B)
    );
}

#[test]
fn update_not_committed_is_recorded_as_rolled_back_on_the_old_slot() {
    let fx = fixture();
    let path = fx.bundle("0.1.1");
    fx.install(&path, false).unwrap();
    fx.boot(Slot::B, "boot-2");
    commit::record_start(&fx.env);
    fx.env
        .set_phase(Phase::Failed, "the self-test failed")
        .unwrap();
    // The firmware returns to the committed slot A.
    fx.boot(Slot::A, "boot-3");
    assert_eq!(
        commit::record_start(&fx.env),
        commit::Start::Committed(Slot::A)
    );
    let s = fx.env.read_state();
    assert_eq!(s.phase, Some(Phase::RolledBack));
    assert!(
        s.message
            .contains("version 0.1.1 in slot B failed its health check (the self-test failed)"),
        "{}",
        s.message
    );
    assert!(s.finished.is_some());
    fx.expect_committed_a_unarmed_after_install();
}

impl Fixture {
    fn expect_committed_a_unarmed_after_install(&self) {
        assert_eq!(
            std::fs::read_to_string(self.env.autoboot_path()).unwrap(),
            AUTOBOOT_A
        );
    }
}

#[test]
fn update_autoboot_rewrite_cut_before_rename_leaves_the_old_file() {
    let fx = fixture();
    let staged = fx
        .env
        .stage_autoboot(firmware::Autoboot {
            committed: Slot::B,
            tryboot: Slot::A,
        })
        .unwrap();
    // A crash here: the temporary is written and synced, the rename never happens.
    std::mem::forget(staged);
    assert_eq!(
        std::fs::read_to_string(fx.env.autoboot_path()).unwrap(),
        AUTOBOOT_A
    );
    assert_eq!(fx.env.autoboot().unwrap().committed, Slot::A);
    // The next rewrite replaces the stale temporary and completes.
    fx.env.set_autoboot(Slot::B).unwrap();
    assert_eq!(fx.env.autoboot().unwrap().committed, Slot::B);
    assert_eq!(fx.env.autoboot().unwrap().tryboot, Slot::A);
    let names: Vec<_> = std::fs::read_dir(&fx.env.firmware_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["autoboot.txt"]);
}

#[test]
fn update_autoboot_rewrite_keeps_other_lines() {
    let text = "# p1\n[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n";
    let out = firmware::rewrite_autoboot(
        text,
        firmware::Autoboot {
            committed: Slot::B,
            tryboot: Slot::A,
        },
    )
    .unwrap();
    assert_eq!(
        out,
        "# p1\n[all]\ntryboot_a_b=1\nboot_partition=3\n[tryboot]\nboot_partition=2\n"
    );
    assert!(firmware::parse_autoboot("[all]\nboot_partition=7\n").is_err());
}

#[test]
fn update_agent_checks_what_the_daemon_asks() {
    let fx = fixture();
    let path = fx.bundle("0.1.1");
    // A bundle outside the incoming directory is not the daemon's to name.
    let elsewhere = fx.root.join("b.update");
    std::fs::copy(&path, &elsewhere).unwrap();
    agent::send(
        &fx.env,
        &agent::Request::Install {
            bundle: elsewhere,
            allow_downgrade: false,
        },
    )
    .unwrap();
    let req = agent::take(&fx.env).unwrap().unwrap();
    assert!(!fx.env.request_path().exists());
    let e = agent::handle(&fx.env, req).unwrap_err();
    assert!(e.contains("must be in"), "{e}");
    fx.expect_untouched();
    // A committed system is not rebooted on the daemon's word.
    let e = agent::handle(&fx.env, agent::Request::Reboot).unwrap_err();
    assert!(e.contains("committed"), "{e}");
    // The real thing: installed, bundle removed, reboot asked for.
    let req = agent::Request::Install {
        bundle: path.clone(),
        allow_downgrade: false,
    };
    assert_eq!(agent::handle(&fx.env, req), Ok(agent::After::Reboot));
    assert!(!path.exists());
    let p: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.env.progress_path()).unwrap()).unwrap();
    assert_eq!(p["step"], "rebooting");
    assert_eq!(agent::take(&fx.env), Ok(None));
}

#[test]
fn update_request_wire_format_is_the_interface() {
    let r: agent::Request = serde_json::from_str(
        r#"{"op":"install","bundle":"/data/update/incoming/x.update","allow_downgrade":false}"#,
    )
    .unwrap();
    assert!(matches!(r, agent::Request::Install { .. }));
    let r: agent::Request =
        serde_json::from_str(r#"{"op":"commit","slot":"B","boot_id":"abc"}"#).unwrap();
    assert_eq!(
        r,
        agent::Request::Commit {
            slot: Slot::B,
            boot_id: "abc".into()
        }
    );
    let r: agent::Request = serde_json::from_str(r#"{"op":"reboot"}"#).unwrap();
    assert_eq!(r, agent::Request::Reboot);
}

#[test]
fn update_versions_compare_as_dotted_numbers() {
    use std::cmp::Ordering::*;
    assert_eq!(compare_versions("0.1.10", "0.1.9"), Greater);
    assert_eq!(compare_versions("0.2", "0.2.0"), Equal);
    assert_eq!(compare_versions("1.0.0", "0.99.99"), Greater);
    assert_eq!(compare_versions("0.2.0-rc1", "0.2.0"), Less);
    assert_eq!(compare_versions("0.1.0", "0.1.1"), Less);
}

#[test]
fn update_running_slot_comes_from_the_root_partuuid() {
    assert_eq!(
        running_slot_of("a root=PARTUUID=52424f58-05 b"),
        Some(Slot::A)
    );
    assert_eq!(running_slot_of("root=PARTUUID=52424f58-06"), Some(Slot::B));
    assert_eq!(running_slot_of("root=PARTUUID=52424f58-02"), None);
    assert_eq!(running_slot_of("root=/dev/sda2"), None);
}

#[test]
fn update_committed_test_key_matches_its_public_key() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../image/test-keys");
    let pk8 = std::fs::read(dir.join("update-test-key.pk8")).unwrap();
    let key = bundle::load_key(&pk8).unwrap();
    let public = read_pubkey(&dir.join("update-key.pub")).unwrap();
    assert_eq!(bundle::public_key_hex(&key), to_hex(&public));
}

#[test]
fn update_bundle_errors_are_one_line() {
    let e = BundleError::Truncated("in the manifest").to_string();
    assert_eq!(e, "the bundle is truncated (in the manifest)");
}

fn no_listeners(cfg: &mut crate::config::Config) {
    let l = &mut cfg.listen;
    for v in [
        &mut l.smtp,
        &mut l.submission,
        &mut l.submissions,
        &mut l.imap,
        &mut l.imaps,
        &mut l.http,
        &mut l.https,
        &mut l.metrics,
    ] {
        v.clear();
    }
}

/// Plays the root agent until `task` ends: takes each request and does it.
async fn play_agent(env: &UpdateEnv, task: tokio::task::JoinHandle<()>) -> Vec<agent::After> {
    let mut done = Vec::new();
    while !task.is_finished() {
        if let Ok(Some(req)) = agent::take(env) {
            done.push(agent::handle(env, req).unwrap());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    task.await.unwrap();
    if let Ok(Some(req)) = agent::take(env) {
        done.push(agent::handle(env, req).unwrap());
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_healthy_tryboot_start_is_committed_through_the_agent() {
    let fx = fixture();
    fx.install(&fx.bundle("0.1.1"), false).unwrap();
    fx.boot(Slot::B, "boot-2");
    // A real listener, which the health check must reach.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let d = tempfile::tempdir().unwrap();
    let relay = crate::testkit::test_relay(d.path(), |c| {
        no_listeners(c);
        c.listen.smtp = vec![addr];
    })
    .unwrap();
    let task = commit::watch(relay, fx.env.clone()).expect("a tryboot start");
    let done = play_agent(&fx.env, task).await;
    assert_eq!(done, [agent::After::Nothing]);
    assert_eq!(fx.env.autoboot().unwrap().committed, Slot::B);
    assert_eq!(fx.env.read_state().phase, Some(Phase::Committed));
    drop(l);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_unhealthy_tryboot_start_fails_and_asks_for_the_reboot_back() {
    let fx = fixture();
    fx.install(&fx.bundle("0.1.1"), false).unwrap();
    fx.boot(Slot::B, "boot-2");
    // A listener address nothing listens on: never healthy.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let d = tempfile::tempdir().unwrap();
    let relay = crate::testkit::test_relay(d.path(), |c| {
        no_listeners(c);
        c.listen.imaps = vec![dead];
        c.update.commit_timeout = crate::config::Seconds(1);
    })
    .unwrap();
    let task = commit::watch(relay, fx.env.clone()).expect("a tryboot start");
    let done = play_agent(&fx.env, task).await;
    assert_eq!(done, [agent::After::Reboot]);
    // Not committed: the reboot returns to A.
    assert_eq!(fx.env.autoboot().unwrap().committed, Slot::A);
    let s = fx.env.read_state();
    assert_eq!(s.phase, Some(Phase::Failed));
    assert!(
        s.message.contains(&format!("listener {dead}")),
        "{}",
        s.message
    );
    // And on A, the outcome is recorded for the admin page.
    fx.boot(Slot::A, "boot-3");
    commit::record_start(&fx.env);
    assert_eq!(fx.env.read_state().phase, Some(Phase::RolledBack));
}

/// The admin page's upload: a session and CSRF token first, then the bundle is checked
/// whole; a refused one is deleted with its reason, a good one shows its version and can be
/// handed to the agent.
#[tokio::test]
async fn update_admin_upload_checks_the_bundle_and_shows_its_version() {
    use crate::testkit::https_request;
    let fx = fixture();
    UpdateEnv::set_for_tests(Some(fx.env.clone()));
    let d = tempfile::tempdir().unwrap();
    let relay = crate::testkit::test_relay(d.path(), |c| c.admin_ui = true).unwrap();
    let made = fx.bundle("0.1.1");
    let good = std::fs::read(&made).unwrap();
    std::fs::remove_file(&made).unwrap();
    let url = "/api/admin/update/upload";
    let (status, _) = https_request(&relay, "POST", url, &[], good.clone())
        .await
        .unwrap();
    assert_eq!(status, 401);
    let session = relay.admin.new_session(relay.clock.now());
    let cookie = (
        b"cookie".to_vec(),
        format!("{}={session}", crate::admin::api::COOKIE).into_bytes(),
    );
    let (status, _) = https_request(
        &relay,
        "POST",
        url,
        std::slice::from_ref(&cookie),
        good.clone(),
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "no CSRF token");
    let headers = [
        cookie,
        (
            b"x-csrf-token".to_vec(),
            relay.admin.csrf_token(&session).into_bytes(),
        ),
    ];
    let incoming = || std::fs::read_dir(fx.env.incoming_dir()).unwrap().count();
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 1;
    let (status, body) = https_request(&relay, "POST", url, &headers, bad)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 400, "{v}");
    assert_eq!(
        v["error"],
        "the root image does not match the manifest's SHA-256 (corrupted or tampered)"
    );
    assert_eq!(incoming(), 0, "a refused upload stays on /data");
    let (status, body) = https_request(&relay, "POST", url, &headers, good)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["manifest"]["version"], "0.1.1");
    let id = v["id"].as_str().unwrap().to_string();
    let (status, body) = https_request(&relay, "GET", "/api/admin/update", &headers, vec![])
        .await
        .unwrap();
    let s: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["running"], "A");
    assert_eq!(s["committed"], "A");
    assert_eq!(s["slots"][0]["version"], "0.1.0");
    assert_eq!(s["pending"], id.as_str());
    let install = format!("{{\"id\":\"{id}\"}}");
    let (status, body) = https_request(
        &relay,
        "POST",
        "/api/admin/update/install",
        &headers,
        install.into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        agent::take(&fx.env).unwrap(),
        Some(agent::Request::Install {
            bundle: fx.env.incoming_dir().join(format!("{id}.update")),
            allow_downgrade: false
        })
    );
    // On a slot on trial, nothing is uploaded.
    fx.boot(Slot::B, "boot-2");
    let (status, body) = https_request(&relay, "POST", url, &headers, b"RBXUPD01".to_vec())
        .await
        .unwrap();
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    assert_eq!(incoming(), 1, "only the bundle waiting for install");
    UpdateEnv::set_for_tests(None);
}

/// A daemon restart during a trial does not restart the commit clock, and after a failed
/// trial it only asks for the reboot back again.
#[test]
fn update_trial_deadline_and_failure_survive_a_daemon_restart() {
    let fx = fixture();
    fx.install(&fx.bundle("0.1.1"), false).unwrap();
    fx.boot(Slot::B, "boot-2");
    assert_eq!(
        commit::record_start(&fx.env),
        commit::Start::Tryboot(Slot::B)
    );
    let since = fx.env.read_state().trying_since.unwrap();
    let mut s = fx.env.read_state();
    s.trying_since = Some(since - 100);
    fx.env.write_state(&s).unwrap();
    commit::record_start(&fx.env);
    assert_eq!(fx.env.read_state().trying_since, Some(since - 100));
    fx.env
        .set_phase(Phase::Failed, "the self-test failed")
        .unwrap();
    assert_eq!(
        commit::record_start(&fx.env),
        commit::Start::Tryboot(Slot::B)
    );
    let s = fx.env.read_state();
    assert_eq!(s.phase, Some(Phase::Failed));
    assert_eq!(s.message, "the self-test failed");
}
