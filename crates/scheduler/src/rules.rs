//! Rules: follow the fleet events and perform a rule's action for each matching event, with a
//! cool-down per (rule, vehicle).
//!
//! The leader reads events after the stored cursor (`scheduler_state.rules_cursor`), in
//! order. Per matching (rule, event) it inserts a history row unique by `(rule_id,
//! event_id)` before acting, and acts with the idempotency key `rule-{rule_id}-{event_id}`;
//! the cursor moves after the batch. A restart re-reads at most one batch: rows already
//! `fired`, `failed` or `suppressed` are skipped, rows left `firing` are performed again with
//! the same key (the receiver answers its first result), so no event is lost or acted on twice.

use crate::Scheduler;
use crate::action::{Action, Outcome};
use crate::render;
use crate::store::Rule;
use kickstand_engine::fleet::{EventQuery, StoredEvent};
use kickstand_service::{DbError, now_ms, params};
use std::sync::Arc;

const CURSOR: &str = "rules_cursor";
const BATCH: usize = 500;

/// Whether `pattern` (`*` matches any run of characters) matches all of `text`.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Whether `rule` applies to `ev`.
pub fn matches(rule: &Rule, ev: &StoredEvent) -> bool {
    let e = &ev.event;
    rule.kinds.iter().any(|k| k == e.kind.as_str())
        && rule
            .zone_id
            .as_ref()
            .is_none_or(|z| e.zone_id.as_deref() == Some(z.as_str()))
        && rule
            .vehicle_pattern
            .as_ref()
            .is_none_or(|p| glob(p, e.vehicle_id.as_str()))
}

/// The rules loop: runs until `stop`.
pub async fn rules_loop(s: Arc<Scheduler>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(events) = s.events.clone() else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(s.config.rules_poll) => {}
            _ = stop.changed() => return,
        }
        if !s.leadership.is_leader() {
            continue;
        }
        loop {
            match rules_pass(&s, &events).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(error) => {
                    tracing::warn!(message = "rules: a pass failed; retried", %error);
                    break;
                }
            }
        }
    }
}

/// On the very first start (no cursor stored yet), the rules follow events from the store's
/// head at that moment: stored history is not replayed, and an event stored after `start`
/// returned is never missed (the loop's first pass comes later).
pub(crate) async fn init_cursor(
    store: &crate::store::Store,
    events: &Arc<dyn kickstand_engine::fleet::FleetStore>,
) -> Result<(), String> {
    if store
        .state(CURSOR)
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(());
    }
    let ev = events.clone();
    let head = tokio::task::spawn_blocking(move || ev.event_head())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    store
        .set_state(CURSOR, head as i64)
        .await
        .map_err(|e| e.to_string())
}

/// One batch of events; `true` when there may be more.
async fn rules_pass(
    s: &Arc<Scheduler>,
    events: &Arc<dyn kickstand_engine::fleet::FleetStore>,
) -> Result<bool, String> {
    let cursor = match s.store.state(CURSOR).await.map_err(|e| e.to_string())? {
        Some(c) => c as u64,
        None => {
            // First start: follow from now on, not the whole stored history.
            let ev = events.clone();
            let head = tokio::task::spawn_blocking(move || ev.event_head())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            s.store
                .set_state(CURSOR, head as i64)
                .await
                .map_err(|e| e.to_string())?;
            head
        }
    };
    let ev = events.clone();
    let batch = tokio::task::spawn_blocking(move || {
        ev.events(&EventQuery {
            after_seq: cursor,
            limit: BATCH,
            ..EventQuery::default()
        })
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let Some(last) = batch.last().map(|e| e.seq) else {
        return Ok(false);
    };
    let rules = s.store.active_rules().await.map_err(|e| e.to_string())?;
    for ev in &batch {
        for rule in rules.iter().filter(|r| matches(r, ev)) {
            fire(s, rule, ev).await.map_err(|e| e.to_string())?;
        }
    }
    s.store
        .set_state(CURSOR, last as i64)
        .await
        .map_err(|e| e.to_string())?;
    Ok(batch.len() == BATCH)
}

/// Handles one (rule, event): suppressed by the cool-down, or fired.
async fn fire(s: &Arc<Scheduler>, rule: &Rule, ev: &StoredEvent) -> Result<(), DbError> {
    let e = &ev.event;
    let now = now_ms();
    let db = &s.store.db;
    let existing = db
        .query_opt(
            "SELECT outcome FROM scheduler_rule_history WHERE rule_id = $1 AND event_id = $2",
            params![&rule.id, &e.id],
        )
        .await?;
    match existing.as_ref().map(|r| r.text(0)).transpose()? {
        Some("firing") => {}
        Some(_) => return Ok(()),
        None => {
            let last = db
                .query_opt(
                    "SELECT last_fired_ts FROM scheduler_cooldowns WHERE rule_id = $1 AND vehicle_id = $2",
                    params![&rule.id, e.vehicle_id.as_str()],
                )
                .await?
                .map(|r| r.int(0))
                .transpose()?;
            let cooling = last.is_some_and(|t| e.ts >= t && e.ts - t < rule.cooldown_secs * 1000);
            let outcome = if cooling { "suppressed" } else { "firing" };
            let mut statements = vec![(
                "INSERT INTO scheduler_rule_history (rule_id, event_id, event_seq, event_kind, \
                 vehicle_id, at, outcome) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (rule_id, event_id) DO NOTHING"
                    .to_owned(),
                params![
                    &rule.id,
                    &e.id,
                    ev.seq as i64,
                    e.kind.as_str(),
                    e.vehicle_id.as_str(),
                    now,
                    outcome
                ],
            )];
            if !cooling {
                statements.push((
                    "INSERT INTO scheduler_cooldowns (rule_id, vehicle_id, last_fired_ts) \
                     VALUES ($1, $2, $3) ON CONFLICT (rule_id, vehicle_id) \
                     DO UPDATE SET last_fired_ts = excluded.last_fired_ts"
                        .to_owned(),
                    params![&rule.id, e.vehicle_id.as_str(), e.ts],
                ));
            }
            db.batch(statements).await?;
            if cooling {
                return Ok(());
            }
        }
    }
    let action = render_action(&rule.action, ev);
    let key = format!("rule-{}-{}", rule.id, e.id);
    let (outcome, answer, error) = match s.client.perform(&action, &key).await {
        Outcome::Done(a) | Outcome::Started { answer: a, .. } => {
            ("fired", Some(a.to_string()), None)
        }
        Outcome::Failed(err) => ("failed", None, Some(err)),
    };
    db.execute(
        "UPDATE scheduler_rule_history SET outcome = $3, answer = $4, error = $5, at = $6 \
         WHERE rule_id = $1 AND event_id = $2",
        params![&rule.id, &e.id, outcome, answer, error, now_ms()],
    )
    .await?;
    Ok(())
}

/// The rule's action with the event's values in its placeholders.
pub fn render_action(action: &Action, ev: &StoredEvent) -> Action {
    let value = serde_json::to_value(action).expect("an action serializes");
    serde_json::from_value(render::render(&value, ev)).unwrap_or_else(|_| action.clone())
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn vehicle_patterns() {
        assert!(glob("*", "s-1"));
        assert!(glob("s-*", "s-1"));
        assert!(glob("*-1", "s-1"));
        assert!(glob("s*1*", "s-10"));
        assert!(!glob("s-*", "t-1"));
        assert!(!glob("s-1", "s-10"));
        assert!(glob("s-1", "s-1"));
    }
}
