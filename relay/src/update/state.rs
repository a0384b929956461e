//! `state.json`: the last update and the version of each slot, for the admin page and for the
//! next start to tell how the update ended. Written atomically; readable by everyone (it
//! holds no secret, and the root agent and the unprivileged daemon both write it).

use super::{Slot, UpdateEnv};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Writing the inactive slot (a start that finds this from an earlier boot: interrupted).
    Installing,
    /// Written and verified, tryboot flag set, reboot asked for.
    Installed,
    /// Running the new slot, not yet committed.
    Trying,
    Committed,
    /// The new slot did not commit; the firmware went back to the old one.
    RolledBack,
    /// The new slot failed its health check (it asks for the reboot back).
    Failed,
    /// The install stopped before the reboot (power cut, crash, error while writing).
    Interrupted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotVersion {
    pub slot: Slot,
    pub version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<SlotVersion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<SlotVersion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The boot in which `phase` was last written.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub boot_id: String,
    /// The version installed in each slot, as far as known.
    #[serde(default)]
    pub slots: BTreeMap<String, String>,
}

impl UpdateEnv {
    /// The state, or an empty one when there is none or it is unreadable.
    pub fn read_state(&self) -> State {
        std::fs::read(self.state_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn write_state(&self, s: &State) -> Result<(), String> {
        let p = self.state_path();
        let mut bytes = serde_json::to_vec_pretty(s).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        super::atomic_write(&p, &bytes, 0o644)
            .map_err(|e| format!("cannot write {}: {e}", p.display()))
    }

    /// Sets the phase (and message) of the current update, stamped with this boot.
    pub fn set_phase(&self, phase: Phase, message: &str) -> Result<State, String> {
        let mut s = self.read_state();
        s.phase = Some(phase);
        s.message = message.to_string();
        s.boot_id = self.current_boot_id();
        if matches!(
            phase,
            Phase::Committed | Phase::RolledBack | Phase::Interrupted | Phase::Failed
        ) {
            s.finished = Some(super::rfc3339(super::now_secs()));
        }
        self.write_state(&s)?;
        Ok(s)
    }

    /// Progress for the admin page: `{"step":…,"percent":…,"message":…}`.
    pub fn write_progress(&self, step: &str, percent: u32, message: &str) {
        let v = serde_json::json!({
            "step": step,
            "percent": percent,
            "message": message,
            "time": super::now_secs(),
        });
        // Progress is advisory: a failed write must not fail the install.
        let _ = super::atomic_write(&self.progress_path(), v.to_string().as_bytes(), 0o644);
    }
}
