//! `/api/v1/geofences`: create, list, read, replace and delete geofences. A change is in force
//! for the next fix a worker checks (the zone index is rebuilt at once), without a restart.

use crate::problem::Problem;
use crate::{AppState, json_response, now_ms};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use kickstand_domain::zone::{Area, ZoneKind};
use kickstand_engine::fleet::{FleetError, Geofence};
use kickstand_engine::watcher::FleetWatch;
use serde_json::{Value, json};
use std::sync::Arc;

impl From<FleetError> for Problem {
    fn from(e: FleetError) -> Problem {
        tracing::warn!(message = "fleet store failed", error = %e.0);
        Problem::unavailable("the fleet store is unavailable; retry later", 1)
    }
}

/// The fleet watch, or 404 when this process runs none (events are off).
pub(crate) fn fleet(app: &AppState) -> Result<Arc<FleetWatch>, Problem> {
    app.engine
        .fleet
        .clone()
        .ok_or_else(|| Problem::not_found("geofences and events are not available in this process"))
}

/// Runs a blocking store call off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Problem::unavailable("the request was cancelled", 1))?
}

fn invalid(field: &'static str, detail: impl Into<String>) -> Problem {
    let mut p = Problem::new(StatusCode::BAD_REQUEST, "Invalid geofence", detail);
    p.field = Some(field);
    p
}

/// A valid geofence or zone id: 1–64 characters of `[A-Za-z0-9_.:-]`.
pub(crate) fn check_id(id: &str) -> Result<(), Problem> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "id",
            "id must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', ':' and '-'",
        ))
    }
}

fn new_id() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source works");
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("gf_{hex}")
}

/// Reads a body: `{name, kind, max_speed_kmh?, geometry, id?}` or the same as a GeoJSON
/// Feature (`properties` holding the fields).
fn parse(body: &[u8], id_in_path: Option<&str>) -> Result<Geofence, Problem> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| invalid("body", format!("the body is not JSON: {e}")))?;
    let Value::Object(obj) = &v else {
        return Err(invalid("body", "the body must be a JSON object"));
    };
    let (props, geometry, body_id) = if obj.get("type").and_then(Value::as_str) == Some("Feature") {
        let props = obj
            .get("properties")
            .and_then(Value::as_object)
            .ok_or_else(|| invalid("properties", "a Feature needs an object of properties"))?;
        (props, obj.get("geometry"), obj.get("id"))
    } else {
        for key in obj.keys() {
            if !matches!(
                key.as_str(),
                "id" | "name" | "kind" | "max_speed_kmh" | "geometry"
            ) {
                return Err(invalid(
                    "body",
                    format!(
                        "unknown field {key:?}: expected id, name, kind, max_speed_kmh, geometry"
                    ),
                ));
            }
        }
        (obj, obj.get("geometry"), obj.get("id"))
    };
    let id = match (id_in_path, body_id) {
        (Some(p), Some(b)) if b.as_str() != Some(p) => {
            return Err(invalid(
                "id",
                "the id in the body differs from the one in the path",
            ));
        }
        (Some(p), _) => p.to_owned(),
        (None, Some(b)) => b
            .as_str()
            .ok_or_else(|| invalid("id", "id must be a string"))?
            .to_owned(),
        (None, None) => new_id(),
    };
    check_id(&id)?;
    let name = match props.get("name") {
        None | Some(Value::Null) => id.clone(),
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= 200 => s.clone(),
        Some(_) => return Err(invalid("name", "name must be a string of 1-200 characters")),
    };
    let kind = props
        .get("kind")
        .ok_or_else(|| {
            invalid(
                "kind",
                "kind is required: operating_area, no_parking, slow_zone or no_ride",
            )
        })?
        .as_str()
        .and_then(ZoneKind::parse)
        .ok_or_else(|| {
            invalid(
                "kind",
                "kind must be operating_area, no_parking, slow_zone or no_ride",
            )
        })?;
    let max_speed_kmh = match props.get("max_speed_kmh") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .filter(|s| s.is_finite() && *s > 0.0 && *s <= 250.0)
                .ok_or_else(|| {
                    invalid(
                        "max_speed_kmh",
                        "max_speed_kmh must be a number above 0 and at most 250",
                    )
                })?,
        ),
    };
    match (kind, max_speed_kmh) {
        (ZoneKind::SlowZone, None) => {
            return Err(invalid("max_speed_kmh", "a slow_zone needs max_speed_kmh"));
        }
        (k, Some(_)) if k != ZoneKind::SlowZone => {
            return Err(invalid(
                "max_speed_kmh",
                "only a slow_zone has max_speed_kmh",
            ));
        }
        _ => {}
    }
    let geometry = geometry.ok_or_else(|| {
        invalid(
            "geometry",
            "geometry is required: a GeoJSON Polygon or MultiPolygon",
        )
    })?;
    let area =
        Area::from_geojson(geometry).map_err(|e| invalid("geometry", format!("geometry.{e}")))?;
    let now = now_ms();
    Ok(Geofence {
        id,
        name,
        kind,
        max_speed_kmh,
        area,
        created_at: now,
        updated_at: now,
    })
}

fn to_json(g: &Geofence) -> Value {
    json!({
        "id": g.id,
        "name": g.name,
        "kind": g.kind.as_str(),
        "max_speed_kmh": g.max_speed_kmh,
        "geometry": g.area.to_geojson(),
        "created_at": kickstand_domain::timefmt::format_ms(g.created_at),
        "updated_at": kickstand_domain::timefmt::format_ms(g.updated_at),
    })
}

fn respond(status: StatusCode, v: &Value) -> Response {
    json_response(status, v.to_string().into_bytes())
}

/// Stores `g` (keeping the creation time of the one it replaces) and rebuilds the index.
async fn store(
    app: &AppState,
    mut g: Geofence,
    must_be_new: bool,
) -> Result<(Geofence, bool), Problem> {
    let fleet = fleet(app)?;
    blocking(move || {
        let old = fleet.store.geofence(&g.id)?;
        if let Some(old) = &old {
            if must_be_new {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!(
                        "a geofence {} exists; PUT /api/v1/geofences/{} replaces it",
                        old.id, old.id
                    ),
                ));
            }
            g.created_at = old.created_at;
        }
        fleet.store.put_geofence(&g)?;
        fleet.zones.reload()?;
        Ok((g, old.is_none()))
    })
    .await
}

#[utoipa::path(
    post,
    path = "/api/v1/geofences",
    tag = "geofences",
    summary = "Create a geofence",
    description = "The body is `{name, kind, max_speed_kmh?, geometry, id?}` or a GeoJSON \
        Feature with those fields in `properties`. `kind` is `operating_area`, `no_parking`, \
        `slow_zone` (with `max_speed_kmh`) or `no_ride`; `geometry` a GeoJSON Polygon or \
        MultiPolygon with closed rings. In force for the next fix, without a restart.",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses(
        (status = 201, description = "Created.", body = serde_json::Value, content_type = "application/json"),
        (status = 400, description = "The body is not a valid geofence; `field` and `detail` say where.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A geofence with this id exists.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(State(app): State<AppState>, body: Bytes) -> Result<Response, Problem> {
    let g = parse(&body, None)?;
    let (g, _) = store(&app, g, true).await?;
    Ok(respond(StatusCode::CREATED, &to_json(&g)))
}

#[utoipa::path(
    put,
    path = "/api/v1/geofences/{id}",
    tag = "geofences",
    summary = "Create or replace a geofence",
    params(("id" = String, Path, description = "The geofence id.")),
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses(
        (status = 200, description = "Replaced.", body = serde_json::Value, content_type = "application/json"),
        (status = 201, description = "Created.", body = serde_json::Value, content_type = "application/json"),
        (status = 400, description = "The body is not a valid geofence.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn replace(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    check_id(&id)?;
    let g = parse(&body, Some(&id))?;
    let (g, created) = store(&app, g, false).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(respond(status, &to_json(&g)))
}

#[utoipa::path(
    get,
    path = "/api/v1/geofences",
    tag = "geofences",
    summary = "List the geofences",
    responses(
        (status = 200, description = "`{geofences: [...]}`, by id.", body = serde_json::Value, content_type = "application/json"),
    )
)]
pub async fn list(State(app): State<AppState>) -> Result<Response, Problem> {
    let fleet = fleet(&app)?;
    let all = blocking(move || Ok(fleet.store.geofences()?)).await?;
    let items: Vec<Value> = all.iter().map(to_json).collect();
    Ok(respond(StatusCode::OK, &json!({ "geofences": items })))
}

#[utoipa::path(
    get,
    path = "/api/v1/geofences/{id}",
    tag = "geofences",
    summary = "Read a geofence",
    params(("id" = String, Path, description = "The geofence id.")),
    responses(
        (status = 200, description = "The geofence.", body = serde_json::Value, content_type = "application/json"),
        (status = 404, description = "No such geofence.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, Problem> {
    check_id(&id)?;
    let fleet = fleet(&app)?;
    let g = blocking(move || {
        fleet
            .store
            .geofence(&id)?
            .ok_or_else(|| Problem::not_found(format!("no geofence {id}")))
    })
    .await?;
    Ok(respond(StatusCode::OK, &to_json(&g)))
}

#[utoipa::path(
    delete,
    path = "/api/v1/geofences/{id}",
    tag = "geofences",
    summary = "Delete a geofence",
    params(("id" = String, Path, description = "The geofence id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such geofence.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    check_id(&id)?;
    let fleet = fleet(&app)?;
    blocking(move || {
        if !fleet.store.delete_geofence(&id)? {
            return Err(Problem::not_found(format!("no geofence {id}")));
        }
        fleet.zones.reload()?;
        Ok(())
    })
    .await?;
    Ok(axum::response::IntoResponse::into_response(
        StatusCode::NO_CONTENT,
    ))
}
