//! What a start means for the update in progress: a tryboot start of a new slot (commit it
//! once healthy, or go back), or a start on the committed slot after an update that did not
//! make it (record how it ended).

use super::state::{Phase, SlotVersion};
use super::{Slot, UpdateEnv};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Not on the A/B appliance (no slot on the kernel command line, no autoboot.txt).
    NotAppliance,
    /// Running the committed slot.
    Committed(Slot),
    /// Running a slot that is not committed: a one-shot trial.
    Tryboot(Slot),
}

/// Looks at the slots, and brings state.json up to date: a tryboot start becomes "trying", an
/// update that did not reach its commit becomes "rolled_back" or "interrupted" (only when
/// recorded in an earlier boot: the agent may still be at work in this one).
pub fn record_start(env: &UpdateEnv) -> Start {
    let Ok(running) = env.running_slot() else {
        return Start::NotAppliance;
    };
    let committed = match env.autoboot() {
        Ok(a) => a.committed,
        Err(e) => {
            tracing::warn!("update: {e}");
            return Start::NotAppliance;
        }
    };
    let mut s = env.read_state();
    let before = s.clone();
    let version = env.running_version();
    let this_boot = env.current_boot_id();
    let earlier = s.boot_id != this_boot;
    s.slots.insert(running.name().into(), version.clone());
    let start = if running != committed {
        // A trial that failed in this boot stays failed (its reboot is on the way); a daemon
        // restart does not get a fresh chance.
        let failed_now = s.phase == Some(Phase::Failed) && !earlier;
        if (s.phase != Some(Phase::Trying) || earlier) && !failed_now {
            s.phase = Some(Phase::Trying);
            s.boot_id = this_boot;
            s.message = String::new();
            s.trying_since = Some(super::now_secs());
            if s.to.as_ref().map(|t| t.slot) != Some(running) {
                s.to = Some(SlotVersion {
                    slot: running,
                    version,
                });
            }
        }
        Start::Tryboot(running)
    } else {
        let outcome = match s.phase {
            Some(Phase::Installing) if earlier => Some((
                Phase::Interrupted,
                "the install was cut short (power cut or crash) before its reboot; the running \
                 slot was not touched"
                    .to_string(),
            )),
            Some(Phase::Installed | Phase::Trying | Phase::Failed)
                if earlier && s.to.as_ref().map(|t| t.slot) != Some(running) =>
            {
                let to =
                    s.to.as_ref()
                        .map(|t| format!("version {} in slot {}", t.version, t.slot))
                        .unwrap_or_else(|| "the new slot".into());
                let why = match s.phase {
                    Some(Phase::Installed) => "did not start far enough to report".to_string(),
                    Some(Phase::Trying) => "was not healthy in time (or lost power)".to_string(),
                    _ => format!("failed its health check ({})", s.message),
                };
                Some((
                    Phase::RolledBack,
                    format!("{to} {why}; back on slot {running}, which was not touched"),
                ))
            }
            _ => None,
        };
        if let Some((phase, message)) = outcome {
            s.phase = Some(phase);
            s.message = message;
            s.boot_id = this_boot;
            s.finished = Some(super::rfc3339(super::now_secs()));
            if let Some(to) = &s.to {
                // Whatever is in that slot did not prove itself: not a version to show as
                // installed.
                s.slots.remove(to.slot.name());
            }
        }
        Start::Committed(running)
    };
    if s != before {
        if let Err(e) = env.write_state(&s) {
            tracing::warn!("update: {e}");
        }
    }
    start
}

/// Commits `slot` (the agent, for the daemon's request): the running slot, still on trial, in
/// this very boot. Rewrites autoboot.txt atomically and records "committed".
pub fn commit(env: &UpdateEnv, slot: Slot, boot_id: &str) -> Result<(), String> {
    let running = env.running_slot()?;
    if running != slot {
        return Err(format!(
            "commit of slot {slot} refused: slot {running} is running"
        ));
    }
    if boot_id != env.current_boot_id() {
        return Err("commit refused: the request is from an earlier boot".into());
    }
    let a = env.autoboot()?;
    if a.committed == running {
        return Ok(());
    }
    env.set_autoboot(running)?;
    let mut s = env.read_state();
    s.slots.insert(running.name().into(), env.running_version());
    env.write_state(&s)?;
    env.set_phase(Phase::Committed, "")?;
    Ok(())
}

/// Health of a tryboot start: every listener accepts a connection, the store answers, and a
/// message goes from a fresh account to another through the delivery path (the admin page's
/// self-test).
pub async fn health(relay: &crate::Relay) -> Result<(), String> {
    let l = &relay.cfg.listen;
    for a in l
        .smtp
        .iter()
        .chain(&l.submission)
        .chain(&l.submissions)
        .chain(&l.imap)
        .chain(&l.imaps)
        .chain(&l.http)
        .chain(&l.https)
    {
        let mut a = *a;
        // The server skips the IPv6 wildcard on a host without IPv6 (server::bind_in).
        if a.is_ipv6() && a.ip().is_unspecified() && !crate::net::ipv6_available() {
            continue;
        }
        if a.ip().is_unspecified() {
            a.set_ip(match a {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::net::TcpStream::connect(a),
        )
        .await
        .map_err(|_| format!("listener {a} does not answer"))?
        .map_err(|e| format!("listener {a}: {e}"))?;
    }
    relay
        .store
        .account_count()
        .map_err(|e| format!("the store does not answer: {e}"))?;
    let mut steps = Vec::new();
    crate::selftest::self_test_steps(relay, &mut steps)
        .await
        .map_err(|e| format!("the delivery self-test failed: {e}"))
}

/// After a tryboot start with all listeners up: commit the slot once healthy (through the
/// agent), then run the store migrations deferred until then; if not healthy within
/// `update.commit_timeout`, record "failed" and ask the agent for the reboot that returns to
/// the committed slot. Does nothing on a committed start or off the appliance.
pub fn spawn_watch(relay: std::sync::Arc<crate::Relay>) {
    let env = UpdateEnv::from_config(&relay.cfg);
    watch(relay, env);
}

/// [`spawn_watch`] with the paths given; the task, on a tryboot start.
pub fn watch(
    relay: std::sync::Arc<crate::Relay>,
    env: UpdateEnv,
) -> Option<tokio::task::JoinHandle<()>> {
    let Start::Tryboot(slot) = record_start(&env) else {
        return None;
    };
    let state = env.read_state();
    if state.phase == Some(Phase::Failed) {
        // Failed earlier in this boot: ask again for the reboot back, nothing else.
        tracing::error!("update: slot {slot} failed its trial: {}", state.message);
        if let Err(e) = super::agent::send(&env, &super::agent::Request::Reboot) {
            tracing::error!("update: {e}");
        }
        return None;
    }
    let since = state.trying_since.unwrap_or_else(super::now_secs);
    let used = u64::try_from(super::now_secs().saturating_sub(since)).unwrap_or(0);
    let left = relay.cfg.update.commit_timeout.0.saturating_sub(used);
    Some(tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(left);
        tracing::info!(%slot, "update: tryboot start; committing once healthy");
        if let Err(e) = commit_when_healthy(&relay, &env, slot, deadline).await {
            tracing::error!("update: slot {slot} not committed: {e}; rebooting to the old slot");
            let _ = env.set_phase(Phase::Failed, &e);
            if let Err(e) = super::agent::send(&env, &super::agent::Request::Reboot) {
                tracing::error!("update: {e}");
            }
            return;
        }
        tracing::info!(%slot, "update: slot committed");
        let store = relay.store.clone();
        match tokio::task::spawn_blocking(move || store.migrate()).await {
            Ok(Ok(f)) => tracing::info!(format = f, "update: store format up to date"),
            Ok(Err(e)) => tracing::error!("update: store migration failed: {e}"),
            Err(e) => tracing::error!("update: store migration failed: {e}"),
        }
    }))
}

async fn commit_when_healthy(
    relay: &crate::Relay,
    env: &UpdateEnv,
    slot: Slot,
    deadline: tokio::time::Instant,
) -> Result<(), String> {
    let pause = std::time::Duration::from_secs(5);
    loop {
        match health(relay).await {
            Ok(()) => break,
            Err(e) if tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!("update: not healthy yet: {e}");
                tokio::time::sleep(pause).await;
            }
            Err(e) => return Err(e),
        }
    }
    super::agent::send(
        env,
        &super::agent::Request::Commit {
            slot,
            boot_id: env.current_boot_id(),
        },
    )?;
    // The agent's answer is autoboot.txt itself.
    loop {
        if env.autoboot().map(|a| a.committed) == Ok(slot) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err("the update agent did not commit the slot in time".into());
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
