//! Values taken from a fleet event into a rule's action: `{{ event.FIELD }}` placeholders in
//! the strings of `args` / `vars` (and every other string of the action).
//!
//! A string that is exactly one placeholder becomes the field's JSON value (a number stays a
//! number; an absent field is `null`); a placeholder inside a longer string is replaced by the
//! field's text (an absent field by nothing). Unknown fields are refused when the rule is
//! created. No expressions, loops or filters: the messenger's templates do the formatting.

use kickstand_engine::fleet::StoredEvent;
use serde_json::{Value as Json, json};

/// The fields a placeholder may name.
pub const FIELDS: &[&str] = &[
    "id",
    "seq",
    "kind",
    "vehicle_id",
    "ts",
    "time",
    "lat",
    "lon",
    "zone_id",
    "from_state",
    "to_state",
    "battery_pct",
    "speed_kmh",
    "limit_kmh",
    "last_fix_ts",
];

/// The value of `field` for `ev` (`null` when the event has none).
pub fn field(ev: &StoredEvent, field: &str) -> Json {
    let e = &ev.event;
    let state = |s: Option<kickstand_domain::VehicleState>| {
        s.map_or(Json::Null, |s| {
            serde_json::to_value(s).unwrap_or(Json::Null)
        })
    };
    match field {
        "id" => json!(e.id),
        "seq" => json!(ev.seq),
        "kind" => json!(e.kind.as_str()),
        "vehicle_id" => json!(e.vehicle_id.as_str()),
        "ts" => json!(e.ts),
        "time" => json!(kickstand_domain::timefmt::format_ms(e.ts)),
        "lat" => json!(e.lat()),
        "lon" => json!(e.lon()),
        "zone_id" => json!(e.zone_id),
        "from_state" => state(e.from_state),
        "to_state" => state(e.to_state),
        "battery_pct" => e
            .battery_dpct
            .map_or(Json::Null, |d| json!(f64::from(d) / 10.0)),
        "speed_kmh" => e
            .speed_dkmh
            .map_or(Json::Null, |d| json!(f64::from(d) / 10.0)),
        "limit_kmh" => e
            .limit_dkmh
            .map_or(Json::Null, |d| json!(f64::from(d) / 10.0)),
        "last_fix_ts" => json!(e.last_fix_ts),
        _ => Json::Null,
    }
}

/// The placeholders of `text`: `(start, end, field)` for each `{{ event.FIELD }}`.
fn placeholders(text: &str) -> Vec<(usize, usize, &str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(open) = text[from..].find("{{") {
        let start = from + open;
        let Some(close) = text[start..].find("}}") else {
            break;
        };
        let end = start + close + 2;
        let inner = text[start + 2..end - 2].trim();
        out.push((start, end, inner));
        from = end;
    }
    out
}

/// Checks every placeholder in `value`; `Err` names the first bad one.
pub fn check(value: &Json) -> Result<(), String> {
    match value {
        Json::String(s) => {
            for (_, _, inner) in placeholders(s) {
                match inner.strip_prefix("event.") {
                    Some(f) if FIELDS.contains(&f) => {}
                    _ => {
                        return Err(format!(
                            "`{{{{ {inner} }}}}` is not a placeholder; use {{{{ event.FIELD }}}} with FIELD one of {}",
                            FIELDS.join(", ")
                        ));
                    }
                }
            }
            Ok(())
        }
        Json::Array(a) => a.iter().try_for_each(check),
        Json::Object(o) => o.values().try_for_each(check),
        _ => Ok(()),
    }
}

/// `value` with the placeholders filled from `ev`.
pub fn render(value: &Json, ev: &StoredEvent) -> Json {
    match value {
        Json::String(s) => {
            let found = placeholders(s);
            if found.is_empty() {
                return value.clone();
            }
            if let [(0, end, inner)] = found.as_slice()
                && *end == s.len()
            {
                return field(ev, inner.trim_start_matches("event."));
            }
            let mut out = String::with_capacity(s.len());
            let mut at = 0;
            for (start, end, inner) in found {
                out.push_str(&s[at..start]);
                match field(ev, inner.trim_start_matches("event.")) {
                    Json::Null => {}
                    Json::String(t) => out.push_str(&t),
                    // 15.0 reads as 15 in a sentence.
                    Json::Number(n)
                        if n.as_f64()
                            .is_some_and(|f| f.fract() == 0.0 && f.abs() < 1e15) =>
                    {
                        out.push_str(&(n.as_f64().unwrap_or_default() as i64).to_string())
                    }
                    other => out.push_str(&other.to_string()),
                }
                at = end;
            }
            out.push_str(&s[at..]);
            Json::String(out)
        }
        Json::Array(a) => Json::Array(a.iter().map(|v| render(v, ev)).collect()),
        Json::Object(o) => {
            Json::Object(o.iter().map(|(k, v)| (k.clone(), render(v, ev))).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kickstand_domain::VehicleId;
    use kickstand_domain::event::{Event, EventKind};

    #[test]
    fn placeholders_take_values_from_the_event() {
        let mut e = Event::new(
            VehicleId::new("s-7").unwrap(),
            EventKind::BatteryLow,
            1_700_000_000_000,
            52_520_000,
            13_405_000,
            None,
        );
        e.battery_dpct = Some(123);
        let ev = StoredEvent {
            seq: 9,
            recorded_at: 0,
            event: e,
        };
        let v = json!({
            "pct": "{{ event.battery_pct }}",
            "text": "Scooter {{event.vehicle_id}} at {{ event.battery_pct }}% (zone {{ event.zone_id }})",
            "list": ["{{ event.seq }}", 1],
            "plain": "no {{ placeholders"
        });
        check(&v).unwrap();
        assert_eq!(
            render(&v, &ev),
            json!({
                "pct": 12.3,
                "text": "Scooter s-7 at 12.3% (zone )",
                "list": [9, 1],
                "plain": "no {{ placeholders"
            })
        );
        assert!(check(&json!({"a": "{{ event.password }}"})).is_err());
        assert!(check(&json!(["{{ env.HOME }}"])).is_err());
    }
}
