//! `relaybox update-agent`: the root one-shot that does what the unprivileged daemon may not
//! (write partitions and p1, set the tryboot flag, reboot). The daemon asks through a small
//! JSON file, `request`, in the update directory; the agent trusts nothing in it: it checks
//! the bundle again from scratch and the preconditions of a commit or reboot itself.

use super::install::{self, InstallOpts};
use super::{Slot, UpdateEnv};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Install {
        bundle: PathBuf,
        #[serde(default)]
        allow_downgrade: bool,
    },
    Commit {
        slot: Slot,
        boot_id: String,
    },
    Reboot,
}

/// What the caller does after the agent's work.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    Nothing,
    Reboot,
}

const REQUEST_MAX: u64 = 4096;

/// Writes a request for the agent (the daemon's side).
pub fn send(env: &UpdateEnv, req: &Request) -> Result<(), String> {
    let bytes = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    super::atomic_write(&env.request_path(), &bytes, 0o600)
        .map_err(|e| format!("cannot write {}: {e}", env.request_path().display()))
}

/// Takes the pending request (removing it, so the path unit does not start the agent again).
pub fn take(env: &UpdateEnv) -> Result<Option<Request>, String> {
    let p = env.request_path();
    let f = match open_nofollow(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open {}: {e}", p.display())),
    };
    let mut bytes = Vec::new();
    f.take(REQUEST_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let _ = std::fs::remove_file(&p);
    if bytes.len() as u64 > REQUEST_MAX {
        return Err("the update request is too large".into());
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("not an update request: {e}"))
}

fn open_nofollow(p: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(p)
}

/// A bundle the daemon names must be a plain file right in the incoming directory.
fn incoming_bundle(env: &UpdateEnv, bundle: &Path) -> Result<PathBuf, String> {
    let name = bundle
        .file_name()
        .filter(|n| bundle.parent().map(|d| d == env.incoming_dir()) == Some(true) && !n.is_empty())
        .ok_or_else(|| {
            format!(
                "refused: the bundle must be in {}",
                env.incoming_dir().display()
            )
        })?;
    let p = env.incoming_dir().join(name);
    let meta = std::fs::symlink_metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    if !meta.file_type().is_file() {
        return Err(format!("refused: {} is not a plain file", p.display()));
    }
    Ok(p)
}

/// Does one request. Progress and errors go to progress.json for the admin page.
pub fn handle(env: &UpdateEnv, req: Request) -> Result<After, String> {
    match req {
        Request::Install {
            bundle,
            allow_downgrade,
        } => {
            let r = incoming_bundle(env, &bundle).and_then(|p| {
                install::install(
                    env,
                    &p,
                    &InstallOpts { allow_downgrade },
                    &mut |step, pct| {
                        env.write_progress(step, pct, "");
                        Ok(())
                    },
                    &mut |_, _| true,
                )
            });
            // The bundle is the daemon's upload: 1 GiB that must not stay on /data.
            let _ = std::fs::remove_file(&bundle);
            match r {
                Ok(i) => {
                    env.write_progress(
                        "rebooting",
                        100,
                        &format!(
                            "version {} is in slot {}; rebooting to try it",
                            i.version, i.to
                        ),
                    );
                    Ok(After::Reboot)
                }
                Err(e) => {
                    env.write_progress("error", 0, &e);
                    Err(e)
                }
            }
        }
        Request::Commit { slot, boot_id } => {
            super::commit::commit(env, slot, &boot_id)?;
            Ok(After::Nothing)
        }
        Request::Reboot => {
            // Only a slot on trial may be abandoned this way; a committed system is rebooted
            // by its operator.
            let running = env.running_slot()?;
            if env.autoboot()?.committed == running {
                return Err("reboot refused: the running slot is committed".into());
            }
            Ok(After::Reboot)
        }
    }
}

/// `systemctl reboot` (the firmware then boots the committed slot, or the tryboot one if armed).
pub fn reboot() -> Result<(), String> {
    let st = std::process::Command::new("systemctl")
        .arg("reboot")
        .status()
        .map_err(|e| format!("cannot run systemctl reboot: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("systemctl reboot failed: {st}"))
    }
}
