//! Installing a bundle into the inactive slot: check everything, write, read back, arm tryboot.
//!
//! Nothing is written to a partition before the bundle is fully checked (signature, manifest,
//! length, both hashes) and the system is known able to boot it (slots, partition sizes,
//! tryboot flag). The committed slot is never opened for writing: an install cut short at any
//! point leaves a system that boots as before.

use super::bundle::{self, BundleError, Expect, Header};
use super::state::{Phase, SlotVersion};
use super::{Slot, UpdateEnv};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub struct InstallOpts {
    pub allow_downgrade: bool,
}

/// Progress: (step, percent of that step). An error stops the install.
pub type Progress<'a> = &'a mut dyn FnMut(&str, u32) -> std::io::Result<()>;

#[derive(Debug)]
pub struct Installed {
    pub version: String,
    pub from: Slot,
    pub to: Slot,
}

/// Everything checked before writing: what goes where.
pub struct Plan {
    pub header: Header,
    pub from: Slot,
    pub to: Slot,
    pub boot_dev: PathBuf,
    pub root_dev: PathBuf,
    pub tryboot: super::firmware::Tryboot,
    pub running_version: String,
}

fn device_size(p: &Path) -> Result<u64, String> {
    // A block device's metadata length is 0; its end is its size.
    let mut f = std::fs::File::open(p).map_err(|e| format!("cannot open {}: {e}", p.display()))?;
    f.seek(SeekFrom::End(0))
        .map_err(|e| format!("cannot size {}: {e}", p.display()))
}

/// Ticks a byte count into whole percents, calling `progress` only when the percent changes.
fn ticker<'a>(
    progress: &'a mut dyn FnMut(&str, u32) -> std::io::Result<()>,
) -> impl FnMut(&str, u64, u64) -> std::io::Result<()> + 'a {
    let mut last: Option<(String, u32)> = None;
    move |step, done, total| {
        let pct = done
            .saturating_mul(100)
            .checked_div(total)
            .map_or(100, |p| u32::try_from(p).unwrap_or(100));
        if last.as_ref().is_some_and(|(s, p)| s == step && *p == pct) {
            return Ok(());
        }
        last = Some((step.to_string(), pct));
        progress(step, pct)
    }
}

/// Checks the system and the whole bundle; writes nothing.
pub fn check(
    env: &UpdateEnv,
    bundle_path: &Path,
    opts: &InstallOpts,
    progress: Progress,
) -> Result<Plan, String> {
    let from = env.running_slot()?;
    let autoboot = env.autoboot()?;
    if autoboot.committed != from {
        return Err(format!(
            "slot {from} is running but slot {} is committed: this start is a trial of an \
             update; wait for it to be committed (or reboot back) before updating again",
            autoboot.committed
        ));
    }
    let to = from.other();
    let boot_dev = env.partition(to.boot_partition());
    let root_dev = env.partition(to.root_partition());
    let boot_size = device_size(&boot_dev)?;
    let root_size = device_size(&root_dev)?;
    let tryboot = env.tryboot_mechanism()?;
    let pubkey = env.public_key()?;
    let running_version = env.running_version();
    let expect = Expect {
        pubkey: &pubkey,
        arch: &env.arch,
        board: super::BOARD,
        running_version: &running_version,
        allow_downgrade: opts.allow_downgrade,
        boot_max: boot_size.min(super::BOOT_MAX),
        root_max: root_size.min(super::ROOT_MAX),
    };
    let mut tick = ticker(progress);
    let header = bundle::verify_file(bundle_path, &expect, &mut tick).map_err(|e| e.to_string())?;
    Ok(Plan {
        header,
        from,
        to,
        boot_dev,
        root_dev,
        tryboot,
        running_version,
    })
}

/// Checks, then writes the bundle into the inactive slot, reads it back, and arms tryboot.
/// The caller reboots.
/// `confirm` sees the checked manifest before anything is written; false stops there.
pub fn install(
    env: &UpdateEnv,
    bundle_path: &Path,
    opts: &InstallOpts,
    progress: Progress,
    confirm: &mut dyn FnMut(&bundle::Manifest, Slot) -> bool,
) -> Result<Installed, String> {
    let plan = check(env, bundle_path, opts, progress)?;
    let m = &plan.header.manifest;
    if !confirm(m, plan.to) {
        return Err("not installed".into());
    }
    let mut s = env.read_state();
    s.phase = Some(Phase::Installing);
    s.from = Some(SlotVersion {
        slot: plan.from,
        version: plan.running_version.clone(),
    });
    s.to = Some(SlotVersion {
        slot: plan.to,
        version: m.version.clone(),
    });
    s.started = Some(super::rfc3339(super::now_secs()));
    s.finished = None;
    s.message = String::new();
    s.boot_id = env.current_boot_id();
    s.slots
        .insert(plan.from.name().into(), plan.running_version.clone());
    // The slot is about to be overwritten: whatever it held is gone from the first byte on.
    s.slots.remove(plan.to.name());
    env.write_state(&s)?;
    match write_slot(env, bundle_path, &plan, progress) {
        Ok(()) => {}
        Err(e) => {
            let msg = format!("the install of {} stopped: {e}", m.version);
            let _ = env.set_phase(Phase::Interrupted, &msg);
            return Err(msg);
        }
    }
    let mut s = env.read_state();
    s.phase = Some(Phase::Installed);
    s.slots.insert(plan.to.name().into(), m.version.clone());
    env.write_state(&s)?;
    if let Err(e) = plan.tryboot.arm() {
        let _ = env.set_phase(Phase::Interrupted, &e);
        return Err(e);
    }
    Ok(Installed {
        version: m.version.clone(),
        from: plan.from,
        to: plan.to,
    })
}

fn write_slot(
    env: &UpdateEnv,
    bundle_path: &Path,
    plan: &Plan,
    progress: Progress,
) -> Result<(), String> {
    let m = &plan.header.manifest;
    // The tryboot start must boot the slot just written, whatever an earlier hand left there.
    env.set_autoboot(plan.from)?;
    let mut f = std::fs::File::open(bundle_path)
        .map_err(|e| format!("cannot open {}: {e}", bundle_path.display()))?;
    f.seek(SeekFrom::Start(plan.header.payload_offset))
        .map_err(|e| e.to_string())?;
    let mut tick = ticker(progress);
    for (what, p, dev) in [
        ("boot", &m.boot, &plan.boot_dev),
        ("root", &m.root, &plan.root_dev),
    ] {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .open(dev)
            .map_err(|e| format!("cannot open {} for writing: {e}", dev.display()))?;
        let step = format!("writing {what}");
        let got = bundle::copy_hashed(&mut f, Some(&mut out), p.size, what, &mut |d| {
            tick(&step, d, p.size)
        })
        .map_err(|e| e.to_string())?;
        if got != p.sha256 {
            // Verified a moment ago: someone changed the file since.
            return Err(BundleError::HashMismatch(what).to_string());
        }
        out.sync_all()
            .map_err(|e| format!("cannot flush {}: {e}", dev.display()))?;
    }
    for (what, p, dev) in [
        ("boot", &m.boot, &plan.boot_dev),
        ("root", &m.root, &plan.root_dev),
    ] {
        let back = std::fs::File::open(dev)
            .map_err(|e| format!("cannot open {} to read it back: {e}", dev.display()))?;
        let step = format!("checking {what}");
        let got = bundle::copy_hashed(&mut back.take(p.size), None, p.size, what, &mut |d| {
            tick(&step, d, p.size)
        })
        .map_err(|e| format!("reading back {}: {e}", dev.display()))?;
        if got != p.sha256 {
            return Err(format!(
                "what was written to {} does not read back the same (bad card?)",
                dev.display()
            ));
        }
    }
    Ok(())
}
