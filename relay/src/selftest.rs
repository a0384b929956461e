//! The self-test: two fresh addresses, one message between them through the path SMTP uses,
//! then both removed again. Run by the admin pages' Test button and by an update's trial boot
//! before it commits, so it lives apart from both (`admin` → `update`, never back).

use crate::Relay;
use serde_json::{json, Value};

/// Makes two fresh addresses, sends a message of the shape the gate accepts from one to the
/// other through the same delivery path SMTP uses, checks it is in the INBOX, and removes both
/// again: registration, the gate and the store all answer.
pub(crate) async fn self_test(relay: &Relay) -> Value {
    let t0 = std::time::Instant::now();
    let mut steps: Vec<String> = Vec::new();
    let result = self_test_steps(relay, &mut steps).await;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(()) => json!({ "ok": true, "ms": (ms * 10.0).round() / 10.0, "steps": steps }),
        Err(e) => {
            tracing::warn!("admin self-test failed: {e}");
            json!({ "ok": false, "ms": (ms * 10.0).round() / 10.0, "steps": steps, "error": e })
        }
    }
}

/// The steps of [`self_test`], each described in `steps` as it passes.
pub(crate) async fn self_test_steps(relay: &Relay, steps: &mut Vec<String>) -> Result<(), String> {
    use crate::policy::{Direction, Envelope};
    let cfg = &relay.cfg;
    let (a, pa) = crate::accounts::random_credentials(cfg);
    let (b, pb) = crate::accounts::random_credentials(cfg);
    let mut made = Vec::new();
    let r: Result<(), String> = async {
        for (addr, pw) in [(&a, &pa), (&b, &pb)] {
            let u = relay
                .accounts
                .login(addr, pw)
                .await
                .map_err(|e| format!("creating {addr} failed: {e}"))?;
            made.push(u.account.id);
        }
        steps.push(format!("created {a} and {b} (first login)"));
        let target = relay
            .delivery
            .check_rcpt(&b, Direction::Outgoing)
            .map_err(|r| format!("recipient refused: {r}"))?;
        let env = Envelope {
            mail_from: a.clone(),
            rcpt_to: vec![b.clone()],
            peer: None,
        };
        let data = crate::policy::testmsg::encrypted(&a, &b);
        let reply = relay
            .delivery
            .submit(&env, &[target], data, Direction::Outgoing)
            .await;
        if reply.code != 250 {
            return Err(format!("delivery refused: {reply}"));
        }
        steps.push(format!("sent an encrypted-shaped message: {reply}"));
        let inbox = relay
            .store
            .mailboxes(made[1])
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|m| m.name == "INBOX")
            .ok_or("the recipient has no INBOX")?;
        let n = relay
            .store
            .messages(inbox.id)
            .map_err(|e| e.to_string())?
            .len();
        if n != 1 {
            return Err(format!(
                "the recipient's INBOX holds {n} messages, expected 1"
            ));
        }
        steps.push("the message is in the recipient's INBOX".into());
        Ok(())
    }
    .await;
    for id in made {
        if let Err(e) = relay.store.delete_account(id).await {
            tracing::warn!("self-test: cannot remove a test account: {e}");
        }
    }
    r
}
