//! Signed A/B updates of the appliance (README "Updating and rollback", /work/notes/UPD-IFACE.md).
//!
//! `bundle` reads and checks a `.update` file (parsing and policy, no partition in sight);
//! `install` writes a checked bundle into the inactive slot; `firmware` is the Pi firmware's
//! side (autoboot.txt, the tryboot flag); `state` the record of the last update that the admin
//! page shows; `agent` the root one-shot that does what the unprivileged daemon asks;
//! `commit` the daemon's health check after a tryboot start.
//!
//! Every path the code touches is in [`UpdateEnv`], so the tests run a whole install against
//! plain files standing for partitions, cmdline and firmware directory.

pub mod agent;
pub mod bundle;
pub mod commit;
pub mod firmware;
pub mod install;
pub mod state;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::{Path, PathBuf};

/// The MBR disk signature of the image ("RBOX"): partitions are `52424f58-0N`.
pub const DISK_ID: &str = "52424f58";
/// The board name bundles and images carry.
pub const BOARD: &str = "rpi-arm64";
/// Where the image keeps the public key its bundles must be signed with.
pub const PUBKEY_PATH: &str = "/usr/share/relaybox/update-key.pub";
/// The largest boot image a slot takes (the FAT boot partitions p2/p3).
pub const BOOT_MAX: u64 = 256 << 20;
/// The largest root image a slot takes (the EROFS root partitions p5/p6).
pub const ROOT_MAX: u64 = 1 << 30;

/// One of the two A/B slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
    /// The partition number of the slot's boot partition (autoboot.txt's `boot_partition`).
    pub fn boot_partition(self) -> u8 {
        match self {
            Slot::A => 2,
            Slot::B => 3,
        }
    }
    pub fn root_partition(self) -> u8 {
        match self {
            Slot::A => 5,
            Slot::B => 6,
        }
    }
    pub fn from_boot_partition(n: u8) -> Option<Slot> {
        match n {
            2 => Some(Slot::A),
            3 => Some(Slot::B),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything an update reads or writes outside the bundle. [`UpdateEnv::system`] is the real
/// appliance; tests point every field into a temporary directory.
#[derive(Debug, Clone)]
pub struct UpdateEnv {
    /// The kernel command line (`root=PARTUUID=…` names the running slot).
    pub cmdline: PathBuf,
    /// The directory of partition device links (`/dev/disk/by-partuuid`).
    pub partuuid_dir: PathBuf,
    /// The mounted config partition p1 with `autoboot.txt`.
    pub firmware_dir: PathBuf,
    /// The tryboot flag of the `relaybox_tryboot` kernel module.
    pub tryboot_sysfs: PathBuf,
    /// The QEMU test's stand-in for the firmware mailbox (used only with
    /// `relaybox.test_firmware=1` on the kernel command line).
    pub test_port: PathBuf,
    /// The running image's os-release (its `VERSION_ID` is the running version).
    pub os_release: PathBuf,
    /// `/data/update`: state, progress, requests, uploaded bundles.
    pub dir: PathBuf,
    /// The release public key (hex, one line).
    pub pubkey: PathBuf,
    /// The kernel's id of this boot, to tell a request or state of this boot from an old one.
    pub boot_id: PathBuf,
    /// The architecture a bundle must be built for.
    pub arch: String,
}

impl UpdateEnv {
    /// The appliance's paths; `dir` and `firmware_dir` come from the config.
    pub fn system(dir: &Path, firmware_dir: &Path) -> UpdateEnv {
        UpdateEnv {
            cmdline: "/proc/cmdline".into(),
            partuuid_dir: "/dev/disk/by-partuuid".into(),
            firmware_dir: firmware_dir.to_owned(),
            tryboot_sysfs: "/sys/kernel/relaybox_tryboot/arm".into(),
            test_port: "/dev/virtio-ports/org.relaybox.firmware".into(),
            os_release: "/etc/os-release".into(),
            dir: dir.to_owned(),
            pubkey: PUBKEY_PATH.into(),
            boot_id: "/proc/sys/kernel/random/boot_id".into(),
            arch: std::env::consts::ARCH.into(),
        }
    }

    pub fn from_config(cfg: &crate::config::Config) -> UpdateEnv {
        UpdateEnv::system(&cfg.update.dir, &cfg.update.firmware_dir)
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn progress_path(&self) -> PathBuf {
        self.dir.join("progress.json")
    }
    pub fn request_path(&self) -> PathBuf {
        self.dir.join("request")
    }
    pub fn incoming_dir(&self) -> PathBuf {
        self.dir.join("incoming")
    }
    pub fn partition(&self, n: u8) -> PathBuf {
        self.partuuid_dir.join(format!("{DISK_ID}-{n:02}"))
    }

    fn read_cmdline(&self) -> Result<String, String> {
        std::fs::read_to_string(&self.cmdline)
            .map_err(|e| format!("cannot read {}: {e}", self.cmdline.display()))
    }

    /// The running slot, from `root=PARTUUID=52424f58-05|06` on the kernel command line.
    pub fn running_slot(&self) -> Result<Slot, String> {
        let cmdline = self.read_cmdline()?;
        running_slot_of(&cmdline).ok_or_else(|| {
            format!(
                "not running from an A/B slot of the relaybox image (no root=PARTUUID={DISK_ID}-05 \
                 or -06 in {})",
                self.cmdline.display()
            )
        })
    }

    /// Whether the kernel command line allows the QEMU test's firmware port.
    pub fn test_firmware(&self) -> bool {
        self.read_cmdline()
            .map(|c| {
                c.split_whitespace()
                    .any(|w| w == "relaybox.test_firmware=1")
            })
            .unwrap_or(false)
    }

    /// The running image's version: os-release `VERSION_ID`, else this binary's.
    pub fn running_version(&self) -> String {
        crate::version::os_release(&self.os_release)
            .and_then(|m| m.get("VERSION_ID").cloned())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string())
    }

    pub fn current_boot_id(&self) -> String {
        std::fs::read_to_string(&self.boot_id)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    /// The release public key (32 bytes).
    pub fn public_key(&self) -> Result<[u8; 32], String> {
        read_pubkey(&self.pubkey)
    }
}

pub fn running_slot_of(cmdline: &str) -> Option<Slot> {
    cmdline.split_whitespace().find_map(|w| {
        let uuid = w.strip_prefix("root=PARTUUID=")?;
        let n = uuid.strip_prefix(DISK_ID)?.strip_prefix('-')?;
        match n {
            "05" => Some(Slot::A),
            "06" => Some(Slot::B),
            _ => None,
        }
    })
}

/// Reads a public key file: one line of 64 hex digits.
pub fn read_pubkey(path: &Path) -> Result<[u8; 32], String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the release public key {}: {e}", path.display()))?;
    parse_pubkey(text.trim()).ok_or_else(|| {
        format!(
            "{} is not a public key (one line of 64 hex digits)",
            path.display()
        )
    })
}

pub fn parse_pubkey(hex: &str) -> Option<[u8; 32]> {
    let bytes = from_hex(hex)?;
    bytes.try_into().ok()
}

pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Compares dotted version numbers (`0.1.10` > `0.1.9`); a pre-release suffix (`0.2.0-rc1`)
/// is older than the plain version.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    fn split(v: &str) -> (Vec<u64>, Option<&str>) {
        let (nums, pre) = match v.split_once(['-', '+']) {
            Some((n, p)) => (n, Some(p)),
            None => (v, None),
        };
        let mut parts: Vec<u64> = nums
            .split('.')
            .map(|p| {
                let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().unwrap_or(0)
            })
            .collect();
        while parts.last() == Some(&0) {
            parts.pop();
        }
        (parts, pre)
    }
    let (na, pa) = split(a.trim());
    let (nb, pb) = split(b.trim());
    na.cmp(&nb).then_with(|| match (pa, pb) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (Some(_), None) => std::cmp::Ordering::Less,
        (Some(x), Some(y)) => x.cmp(y),
    })
}

/// A file written whole in a temporary name beside its target, fsynced, not yet in place.
/// [`Staged::commit`] renames it and fsyncs the directory; a crash before that leaves the old
/// file as it was (the next write replaces the stale temporary).
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
}

impl Staged {
    /// `mode` is set whatever the umask (the root agent's files are read by the daemon);
    /// None for files on FAT, which has no modes.
    pub fn write(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<Staged> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let name = path
            .file_name()
            .ok_or_else(|| std::io::Error::other("no file name"))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode.unwrap_or(0o600))
            .open(&tmp)?;
        if let Some(mode) = mode {
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(Staged {
            tmp,
            path: path.to_owned(),
        })
    }

    pub fn commit(self) -> std::io::Result<()> {
        std::fs::rename(&self.tmp, &self.path)?;
        fsync_dir(&self.path)
    }
}

fn fsync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Replaces `path` atomically: temp file, fsync, rename, fsync dir.
pub fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    Staged::write(path, bytes, Some(mode))?.commit()
}

/// Seconds since the epoch as RFC 3339 (UTC).
pub fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}
