//! The admin page's "Updates" panel: both slots and their versions, the last update's outcome,
//! the upload of a bundle (checked here so the page can show its version before the operator
//! confirms; checked again by the root agent, which trusts nothing the daemon says), and the
//! install request.

use super::api::{error, ok};
use super::upload::{upload_to_file, UploadTo};
use crate::update::{agent, bundle, UpdateEnv};
use crate::Relay;
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

/// The largest bundle the page takes (a bundle is at most 256 MiB + 1 GiB of images).
pub const UPLOAD_MAX: u64 = 3 << 29;
/// The longest an upload may take (1.25 GiB over a slow Wi-Fi).
const UPLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

pub fn env(relay: &Relay) -> UpdateEnv {
    UpdateEnv::from_config(&relay.cfg)
}

/// `GET update`: slots, versions, committed slot, the last update and the install's progress.
pub fn status(relay: &Relay) -> Value {
    let env = env(relay);
    let running = env.running_slot();
    let autoboot = env.autoboot();
    let (running, autoboot) = match (running, autoboot) {
        (Ok(r), Ok(a)) => (r, a),
        (Err(e), _) | (_, Err(e)) => {
            return json!({ "available": false, "reason": e, "version": env.running_version() })
        }
    };
    let state = env.read_state();
    let progress: Value = std::fs::read(env.progress_path())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let mut slots = state.slots.clone();
    slots.insert(running.name().into(), env.running_version());
    let slot = |s: crate::update::Slot| {
        json!({
            "name": s.name(),
            "version": slots.get(s.name()),
            "running": s == running,
            "committed": s == autoboot.committed,
        })
    };
    json!({
        "available": true,
        "version": env.running_version(),
        "running": running.name(),
        "committed": autoboot.committed.name(),
        "trial": running != autoboot.committed,
        "slots": [slot(crate::update::Slot::A), slot(crate::update::Slot::B)],
        "last": state,
        "progress": progress,
        "pending": pending(&env),
    })
}

/// The id of an uploaded, checked bundle waiting for the operator's confirmation.
fn pending(env: &UpdateEnv) -> Option<String> {
    std::fs::read_dir(env.incoming_dir())
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".update"))
                .map(str::to_string)
        })
        .next()
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `POST update/upload`: the body is the bundle. Streamed to `incoming/`, checked whole
/// (signature, manifest, length, hashes); a refused bundle is deleted at once and its reason
/// returned, a good one is kept (replacing any earlier upload) and its manifest returned.
pub async fn upload(relay: &Relay, declared: Option<u64>, body: Body) -> Response {
    let env = env(relay);
    // Before a gigabyte arrives: is there anything to update here, and may it be now?
    let ready = env.running_slot().and_then(|r| {
        if env.autoboot()?.committed == r {
            Ok(())
        } else {
            Err("an update is on trial; wait until it is committed".to_string())
        }
    });
    if let Err(e) = ready {
        return error(StatusCode::CONFLICT, e);
    }
    let to = UploadTo {
        dir: env.incoming_dir(),
        prefix: "upload",
        max: UPLOAD_MAX,
        timeout: UPLOAD_TIMEOUT,
    };
    let upload = match upload_to_file(&to, declared, body).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let path = upload.path().to_owned();
    let check = env.clone();
    let r = tokio::task::spawn_blocking(move || {
        let key = check.public_key()?;
        let running = check.running_version();
        let expect = bundle::Expect {
            pubkey: &key,
            arch: &check.arch,
            board: crate::update::BOARD,
            running_version: &running,
            allow_downgrade: false,
            boot_max: crate::update::BOOT_MAX,
            root_max: crate::update::ROOT_MAX,
        };
        bundle::verify_file(&path, &expect, &mut |_, _, _| Ok(())).map_err(|e| e.to_string())
    })
    .await;
    let header = match r {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    // One bundle waits at a time: each is over a gigabyte of /data.
    if let Ok(rd) = std::fs::read_dir(env.incoming_dir()) {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "update") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let id = upload
        .path()
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let kept = env.incoming_dir().join(format!("{id}.update"));
    if let Err(e) = std::fs::rename(upload.path(), &kept) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    ok(json!({ "id": id, "manifest": header.manifest }))
}

/// `POST update/install {"id":…}`: asks the root agent to install the uploaded bundle.
pub fn install(relay: &Relay, input: &Value) -> Result<Value, String> {
    let env = env(relay);
    let id = input.get("id").and_then(|v| v.as_str()).unwrap_or("");
    if !valid_id(id) {
        return Err("no such upload".into());
    }
    let bundle = env.incoming_dir().join(format!("{id}.update"));
    if !bundle.is_file() {
        return Err("no such upload (upload the bundle again)".into());
    }
    let running = env.running_slot()?;
    if env.autoboot()?.committed != running {
        return Err("an update is on trial; wait until it is committed".into());
    }
    env.write_progress("queued", 0, "");
    agent::send(
        &env,
        &agent::Request::Install {
            bundle,
            allow_downgrade: false,
        },
    )?;
    Ok(json!({ "queued": true }))
}
