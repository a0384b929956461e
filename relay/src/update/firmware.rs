//! The Pi firmware's side of A/B: `autoboot.txt` on p1 (which slot is committed) and the
//! one-shot tryboot flag (boot the `[tryboot]` partition once, at the next reboot only).

use super::{Slot, Staged, UpdateEnv};
use std::io::Write;
use std::path::PathBuf;

pub const AUTOBOOT: &str = "autoboot.txt";

/// The two `boot_partition` values of autoboot.txt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Autoboot {
    /// `[all] boot_partition`: the committed slot.
    pub committed: Slot,
    /// `[tryboot] boot_partition`: the slot a tryboot start boots.
    pub tryboot: Slot,
}

pub fn parse_autoboot(text: &str) -> Result<Autoboot, String> {
    let mut section = String::new();
    let (mut all, mut try_) = (None, None);
    for line in text.lines() {
        let line = line.trim();
        if let Some(s) = line.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.trim().to_string();
            continue;
        }
        let Some(v) = line.strip_prefix("boot_partition=") else {
            continue;
        };
        let slot = v.trim().parse().ok().and_then(Slot::from_boot_partition);
        match section.as_str() {
            "all" => all = slot,
            "tryboot" => try_ = slot,
            _ => {}
        }
    }
    match (all, try_) {
        (Some(committed), Some(tryboot)) => Ok(Autoboot { committed, tryboot }),
        _ => Err("autoboot.txt has no boot_partition=2|3 in [all] and [tryboot]".into()),
    }
}

/// autoboot.txt with `[all]` and `[tryboot]` pointing at `a`; every other line kept.
pub fn rewrite_autoboot(text: &str, a: Autoboot) -> Result<String, String> {
    parse_autoboot(text)?;
    let mut section = String::new();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let t = line.trim();
        if let Some(s) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.trim().to_string();
        } else if t.starts_with("boot_partition=") {
            let slot = match section.as_str() {
                "all" => Some(a.committed),
                "tryboot" => Some(a.tryboot),
                _ => None,
            };
            if let Some(slot) = slot {
                out.push_str(&format!("boot_partition={}\n", slot.boot_partition()));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

impl UpdateEnv {
    pub fn autoboot_path(&self) -> PathBuf {
        self.firmware_dir.join(AUTOBOOT)
    }

    pub fn autoboot(&self) -> Result<Autoboot, String> {
        let p = self.autoboot_path();
        let text =
            std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        parse_autoboot(&text).map_err(|e| format!("{}: {e}", p.display()))
    }

    /// Writes the new autoboot.txt beside the old one, fsynced, not yet in place.
    pub fn stage_autoboot(&self, a: Autoboot) -> Result<Staged, String> {
        let p = self.autoboot_path();
        let text =
            std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        let new = rewrite_autoboot(&text, a).map_err(|e| format!("{}: {e}", p.display()))?;
        Staged::write(&p, new.as_bytes(), None)
            .map_err(|e| format!("cannot write {}: {e}", p.display()))
    }

    /// Makes `committed` the committed slot and the other one the tryboot slot, atomically.
    pub fn set_autoboot(&self, committed: Slot) -> Result<(), String> {
        let a = Autoboot {
            committed,
            tryboot: committed.other(),
        };
        if self.autoboot()? == a {
            return Ok(());
        }
        self.stage_autoboot(a)?
            .commit()
            .map_err(|e| format!("cannot replace {}: {e}", self.autoboot_path().display()))
    }

    /// How the tryboot flag can be set here, or why it cannot.
    pub fn tryboot_mechanism(&self) -> Result<Tryboot, String> {
        if self.tryboot_sysfs.exists() {
            return Ok(Tryboot::Sysfs(self.tryboot_sysfs.clone()));
        }
        if self.test_firmware() && self.test_port.exists() {
            return Ok(Tryboot::TestPort(self.test_port.clone()));
        }
        Err("this system cannot set the tryboot flag (module relaybox_tryboot not loaded)".into())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tryboot {
    /// `/sys/kernel/relaybox_tryboot/arm` of the kernel module: `1` sets firmware property
    /// 0x00038064 (SET_REBOOT_FLAGS).
    Sysfs(PathBuf),
    /// The QEMU test's virtio-serial port standing for the mailbox.
    TestPort(PathBuf),
}

impl Tryboot {
    pub fn arm(&self) -> Result<(), String> {
        let (path, line): (&PathBuf, &[u8]) = match self {
            Tryboot::Sysfs(p) => (p, b"1\n"),
            Tryboot::TestPort(p) => (p, b"tryboot\n"),
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        f.write_all(line).and_then(|()| f.flush()).map_err(|e| {
            format!(
                "cannot set the tryboot flag through {}: {e}",
                path.display()
            )
        })
    }
}
