//! The OpenAPI 3.1 description of the HTTP API (`GET /api/v1/openapi.json`) and the API page
//! that renders it (`GET /api/v1/docs`).
//!
//! **The document cannot drift from the routes.** [`crate::router`] adds every route with
//! `utoipa_axum::routes!`, which takes the method and path from the handler's
//! `#[utoipa::path]` annotation, so a route cannot be served without being documented, nor
//! documented with another path. Each guarded group passes through [`crate::guarded`], which
//! installs its auth layer and marks every operation of the group with the `bearer` security
//! requirement, the scope, and the 401/403 answers, from the same [`Scope`] value.
//!
//! **The body schemas here are documentation-only.** The handlers write their JSON by hand into
//! byte buffers ([`crate::json`]) for speed, so there is no `Serialize` type to derive the
//! schemas from. These types mirror that output (and the input of
//! `kickstand_domain::input::RawFix`), and the tests at the bottom of this file keep them
//! honest: they build real responses through the router and validate every body against the
//! schema the document declares for that operation, status and content type, and they check the
//! fix schema against the real body parser.

use crate::auth::Scope;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{
    ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoParams, Modify, ToSchema};

/// The name of the security scheme every guarded operation requires.
pub const BEARER: &str = "bearer";

/// The fixed parts of the document; the paths come from the router.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Kickstand HTTP API",
        description = "Self-hosted e-scooter fleet tracking: send positions (fixes), ask for the \
            latest state of vehicles, their tracks and the fleet, and follow the fleet live.\n\n\
            Errors are `application/problem+json` (RFC 9457). Apart from the health endpoints \
            and the static pages, every route needs an API key sent as \
            `Authorization: Bearer <key>`; a missing or unknown key gets 401, a key without \
            the route's scope 403. Scopes: `ingest`, `read`, `operate`, `admin` (which holds \
            every scope). Create keys with `kickstand key create`."
    ),
    components(schemas(StreamEvent)),
    modifiers(&BearerScheme),
    tags(
        (name = "telemetry", description = "Sending positions."),
        (name = "vehicles", description = "The latest state and history of vehicles."),
        (name = "fleet", description = "The fleet as a whole."),
        (name = "live", description = "The live stream and the map page."),
        (name = "operations", description = "Health, readiness, metrics, built-in tasks and this description."),
        (name = "history", description = "The stored history as a whole: export and housekeeping."),
    )
)]
pub struct ApiDoc;

/// Adds the `bearer` security scheme.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`ks_…`) from `kickstand key create`, sent as \
                         `Authorization: Bearer <key>`. The live stream also takes it as \
                         `access_token=` in the query, for browsers' EventSource.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every operation of a path item.
fn operations_mut(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
        &mut item.query,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
    .chain(item.additional_operations.values_mut())
}

fn problem_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
        .into()
}

/// Marks every operation of a route group as needing a key with `scope`: the security
/// requirement, a sentence in the description, and the 401 and 403 answers. Called by
/// [`crate::guarded`] with the scope its auth layer checks.
pub(crate) fn require_scope(openapi: &mut OpenApi, scope: Scope) {
    for item in openapi.paths.paths.values_mut() {
        for op in operations_mut(item) {
            op.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
            let note = format!(
                "Needs an API key with the `{}` scope (or `admin`).",
                scope.as_str()
            );
            op.description = Some(match op.description.take() {
                Some(d) if !d.is_empty() => format!("{d}\n\n{note}"),
                _ => note,
            });
            let responses = &mut op.responses.responses;
            responses.insert(
                "401".into(),
                problem_response("No API key was sent, or it is unknown or revoked."),
            );
            responses.insert(
                "403".into(),
                problem_response(&format!(
                    "The API key lacks the `{}` scope.",
                    scope.as_str()
                )),
            );
        }
    }
}

/// The document as served, built once from the router's route list.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        crate::routes(None)
            .into_openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serialises")
    })
}

/// The API page, compiled into the binary. It is self-contained (no external URL: Kickstand
/// runs offline) and renders `openapi.json`.
const API_HTML: &str = include_str!("../assets/api.html");

/// The OpenAPI document of the operations services a process mounts beside the API (see
/// [`crate::router_with`]), merged into the one `openapi.json` serves.
#[derive(Clone)]
pub struct OperationsDoc(pub std::sync::Arc<String>);

/// [`document`] with the paths and schemas of `extra` added.
pub fn document_with(extra: OpenApi) -> String {
    let mut doc = crate::routes(None).into_openapi();
    doc.merge(extra);
    doc.to_pretty_json()
        .expect("the OpenAPI document serialises")
}

/// The OpenAPI document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "operations",
    description = "This document: the OpenAPI 3.1 description of the HTTP API, generated from \
        the code. Open: it holds no fleet data.",
    responses(
        (status = 200, description = "The OpenAPI document.", body = Object, content_type = "application/json"),
    )
)]
pub(crate) async fn openapi_json(ops: Option<axum::Extension<OperationsDoc>>) -> Response {
    let body = match ops {
        Some(axum::Extension(OperationsDoc(doc))) => doc.as_str().to_owned(),
        None => document().to_owned(),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// The API page.
#[utoipa::path(
    get,
    path = "/api/v1/docs",
    tag = "operations",
    description = "A readable page of this API, rendered in the browser from `openapi.json`. \
        Open: it holds no fleet data.",
    responses(
        (status = 200, description = "The HTML page.", body = String, content_type = "text/html"),
    )
)]
pub(crate) async fn api_page() -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        API_HTML,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Schemas. `#[serde(deny_unknown_fields)]` gives `additionalProperties: false`, so a field
// added to the hand-written output without being documented fails the drift test.
// ---------------------------------------------------------------------------------------------

fn date_time(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .description(Some(description))
}

/// `[lon, lat]` pairs.
fn positions() -> Schema {
    let number = ObjectBuilder::new()
        .schema_type(Type::Number)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Double)));
    let pair = ArrayBuilder::new()
        .items(number)
        .min_items(Some(2))
        .max_items(Some(2));
    ArrayBuilder::new()
        .items(pair)
        .description(Some("`[lon, lat]` pairs in degrees, in time order."))
        .into()
}

/// RFC 3339 times.
fn times() -> Schema {
    ArrayBuilder::new()
        .items(date_time("RFC 3339, UTC, milliseconds."))
        .description(Some("The time of each coordinate, in the same order."))
        .into()
}

/// `ts` as sent: RFC 3339 or epoch milliseconds.
fn input_ts() -> Schema {
    OneOfBuilder::new()
        .item(date_time("RFC 3339, e.g. `2026-11-25T10:00:00Z`."))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .description(Some("Epoch milliseconds.")),
        )
        .description(Some(
            "When the fix was taken: RFC 3339 or epoch milliseconds. At most 5 minutes in the \
             future; stored to the millisecond.",
        ))
        .into()
}

/// A vehicle's operational state (MDS 2.0 `vehicle_state`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Available,
    Reserved,
    OnTrip,
    NonOperational,
    Elsewhere,
    Removed,
}

/// One position report ("fix") as sent to `POST /api/v1/telemetry`. Unknown fields are refused.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FixInput {
    /// 1–64 characters of `[A-Za-z0-9_.:-]`.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$", example = "scooter-1")]
    pub vehicle_id: String,
    #[schema(schema_with = input_ts)]
    pub ts: String,
    /// Latitude in degrees (stored to 1e-6°).
    #[schema(minimum = -90.0, maximum = 90.0, example = 37.5665)]
    pub lat: f64,
    /// Longitude in degrees (stored to 1e-6°).
    #[schema(minimum = -180.0, maximum = 180.0, example = 126.978)]
    pub lon: f64,
    /// Speed in km/h, 0–250 (stored to 0.1).
    #[schema(minimum = 0.0, maximum = 250.0)]
    pub speed_kmh: Option<f64>,
    /// Heading in degrees, 0–360 (stored to 0.1).
    #[schema(minimum = 0.0, maximum = 360.0)]
    pub heading_deg: Option<f64>,
    /// Battery charge in percent, 0–100 (stored to 0.1).
    #[schema(minimum = 0.0, maximum = 100.0)]
    pub battery_pct: Option<f64>,
    /// Horizontal accuracy in metres, 0–100000 (stored to 0.1).
    #[schema(minimum = 0.0, maximum = 100000.0)]
    pub accuracy_m: Option<f64>,
    /// Altitude in metres, -1000–20000 (stored to 0.1).
    #[schema(minimum = -1000.0, maximum = 20000.0)]
    pub altitude_m: Option<f64>,
    /// Odometer in metres (stored to whole metres).
    #[schema(minimum = 0.0, maximum = 1e12)]
    pub odometer_m: Option<f64>,
    pub state: Option<State>,
    pub locked: Option<bool>,
}

/// A JSON body: one fix or an array of fixes.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum TelemetryBody {
    One(FixInput),
    Many(Vec<FixInput>),
}

/// One refused item of a body.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rejection {
    /// Zero-based position of the item: its index in the array, or its line (from 0) in NDJSON.
    pub index: u64,
    /// The field at fault, or `""` when the item as a whole is wrong.
    pub field: String,
    pub reason: String,
}

/// The answer to an accepted body.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestResult {
    /// Fixes stored now (durable: on disk before this answer).
    pub accepted: u64,
    /// Fixes already stored before; not stored again.
    pub duplicates: u64,
    /// Items refused, with the field and the reason.
    pub rejected: Vec<Rejection>,
}

/// A vehicle's latest state: its newest fix. Optional fields appear only when the fix had them.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Vehicle {
    pub vehicle_id: String,
    /// When the fix was taken (RFC 3339, UTC, milliseconds).
    #[schema(format = DateTime)]
    pub ts: String,
    /// Latitude in degrees (to 1e-6°).
    #[schema(minimum = -90.0, maximum = 90.0)]
    pub lat: f64,
    /// Longitude in degrees (to 1e-6°).
    #[schema(minimum = -180.0, maximum = 180.0)]
    pub lon: f64,
    /// Speed in km/h (to 0.1).
    #[serde(default)]
    pub speed_kmh: f64,
    /// Heading in degrees (to 0.1).
    #[serde(default)]
    pub heading_deg: f64,
    /// Battery charge in percent (to 0.1).
    #[serde(default)]
    pub battery_pct: f64,
    /// Horizontal accuracy in metres (to 0.1).
    #[serde(default)]
    pub accuracy_m: f64,
    /// Altitude in metres (to 0.1).
    #[serde(default)]
    pub altitude_m: f64,
    /// Odometer in whole metres.
    #[serde(default)]
    pub odometer_m: u64,
    #[serde(default)]
    pub state: State,
    /// Whether the vehicle is locked.
    #[serde(default)]
    pub locked: bool,
    /// Metres from the `near` point; only in `near` results.
    #[serde(default)]
    pub distance_m: f64,
}

/// A page of vehicles.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VehicleList {
    pub vehicles: Vec<Vehicle>,
    /// For `bbox`: pass as `cursor=` to get the next page; `null` on the last page (and
    /// always for `near`).
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// One fix of a track.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrackFix {
    #[schema(format = DateTime)]
    pub ts: String,
    /// Latitude in degrees (to 1e-6°).
    #[schema(minimum = -90.0, maximum = 90.0)]
    pub lat: f64,
    /// Longitude in degrees (to 1e-6°).
    #[schema(minimum = -180.0, maximum = 180.0)]
    pub lon: f64,
    /// Speed in km/h (to 0.1).
    #[serde(default)]
    pub speed_kmh: f64,
    /// Heading in degrees (to 0.1).
    #[serde(default)]
    pub heading_deg: f64,
    /// Battery charge in percent (to 0.1).
    #[serde(default)]
    pub battery_pct: f64,
    /// Horizontal accuracy in metres (to 0.1).
    #[serde(default)]
    pub accuracy_m: f64,
    /// Altitude in metres (to 0.1).
    #[serde(default)]
    pub altitude_m: f64,
    /// Odometer in whole metres.
    #[serde(default)]
    pub odometer_m: u64,
    #[serde(default)]
    pub state: State,
    /// Whether the vehicle is locked.
    #[serde(default)]
    pub locked: bool,
    /// The quality filters the fix failed (`jump`, `inaccurate`, `zero_coordinates`,
    /// `out_of_date`); absent for a good fix. A flagged fix is kept in history but never
    /// became the latest state or an event.
    #[serde(default)]
    pub quality: Vec<QualityFlag>,
}

/// A quality filter a fix failed.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QualityFlag {
    Jump,
    Inaccurate,
    ZeroCoordinates,
    OutOfDate,
}

/// A vehicle's fixes in a time range, in time order.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Track {
    pub vehicle_id: String,
    #[schema(format = DateTime)]
    pub from: String,
    #[schema(format = DateTime)]
    pub to: String,
    pub count: u64,
    pub fixes: Vec<TrackFix>,
}

#[derive(Serialize, ToSchema)]
pub enum FeatureType {
    Feature,
}

#[derive(Serialize, ToSchema)]
pub enum LineStringType {
    LineString,
}

/// The line of a track.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineString {
    #[serde(rename = "type")]
    pub kind: LineStringType,
    #[schema(schema_with = positions)]
    pub coordinates: Vec<[f64; 2]>,
}

/// The properties of a track feature.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrackProperties {
    pub vehicle_id: String,
    #[schema(schema_with = times)]
    pub times: Vec<String>,
}

/// A track as a GeoJSON Feature (`format=geojson`).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrackFeature {
    #[serde(rename = "type")]
    pub kind: FeatureType,
    pub geometry: LineString,
    pub properties: TrackProperties,
}

/// Counts over the whole fleet.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetSummary {
    /// Vehicles known.
    pub vehicles: u64,
    /// Vehicles by the state of their newest fix; `unknown` when it carried none.
    pub by_state: BTreeMap<String, u64>,
    /// Vehicles by battery in steps of 10 %: `0-10`, `10-20`, … `90-100` (100 % counts in the
    /// last), and `unknown`.
    pub battery_pct: BTreeMap<String, u64>,
    /// Vehicles not heard from in `stale_minutes`.
    pub stale: u64,
    pub stale_minutes: u32,
}

/// What the map page needs from the settings.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MapConfig {
    /// A raster tile URL template with `{z}`, `{x}` and `{y}`; `null` when none is configured.
    #[schema(required = true)]
    pub tile_url: Option<String>,
}

/// The data of a live stream event (`snapshot` or `update`).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamEvent {
    pub vehicles: Vec<Vehicle>,
}

/// The query of `GET /api/v1/vehicles` (the handler reads a map and checks the names against
/// `KNOWN_LIST_PARAMS`; a test checks the two agree).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `LAT,LON`: vehicles within `radius_m` of this point, nearest first, with `distance_m`.
    /// Give exactly one of `near` and `bbox`.
    #[param(example = "37.5665,126.978")]
    pub near: Option<String>,
    /// Radius for `near` in metres, 0–50000 (default 500).
    #[param(minimum = 0.0, maximum = 50000.0)]
    pub radius_m: Option<f64>,
    /// `minLon,minLat,maxLon,maxLat`: vehicles in this box, by id, paged with `cursor`.
    #[param(example = "126.9,37.5,127.1,37.6")]
    pub bbox: Option<String>,
    /// Only vehicles whose newest fix has this state.
    pub state: Option<State>,
    /// Only vehicles with battery below this percentage (0–100).
    #[param(minimum = 0.0, maximum = 100.0)]
    pub battery_lt: Option<f64>,
    /// Most vehicles returned, 1–10000 (default 100).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
    /// For `bbox`: the `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AppState;
    use crate::auth::KeyStore;
    use axum::body::Body;
    use axum::http::{Method, Request};
    use http_body_util::BodyExt;
    use kickstand_engine::{Engine, EngineConfig};
    use serde_json::{Value, json};
    use std::sync::Arc;
    use tower::ServiceExt;

    fn doc() -> Value {
        serde_json::from_str(document()).expect("the document is JSON")
    }

    const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

    /// Every (method, path) the document lists.
    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                out.push((method.clone(), path.clone(), op.clone()));
            }
        }
        out
    }

    /// An engine with every service of `kickstand run`: the fleet store (geofences, events)
    /// and webhook subscriptions.
    fn engine(dir: &std::path::Path) -> Arc<Engine> {
        use kickstand_engine::fleet::FleetStore;
        use kickstand_engine::fleet::sqlite::SqliteFleetStore;
        use kickstand_engine::fleet::zones::Zones;
        use kickstand_engine::watcher::FleetWatch;
        let config = EngineConfig {
            workers: 2,
            ..EngineConfig::default()
        };
        let store: Arc<dyn FleetStore> =
            Arc::new(SqliteFleetStore::open(&dir.join("fleet.db")).expect("fleet store opens"));
        let fleet = Arc::new(FleetWatch {
            quality: Default::default(),
            events: Default::default(),
            zones: Arc::new(Zones::load(store.clone()).expect("zones load")),
            store,
        });
        let history = kickstand_engine::history::HistoryConfig::default();
        Arc::new(Engine::open_watching(dir, config, &history, Some(fleet)).expect("engine starts"))
    }

    fn app(engine: &Arc<Engine>, keys: Option<Arc<KeyStore>>) -> axum::Router {
        let fleet = engine.fleet.as_ref().expect("the test engine has a fleet");
        let dir = tempfile::tempdir().expect("a temporary directory").keep();
        let config = kickstand_webhooks::WebhookConfig::default();
        let webhooks = kickstand_webhooks::WebhookService {
            store: Arc::new(
                kickstand_webhooks::SqliteWebhookStore::open(dir.join("webhooks.db"))
                    .expect("webhook store opens"),
            ),
            feed: Arc::new(crate::events::StoreFeed(fleet.store.clone())),
            sender: kickstand_webhooks::Sender::new(&config).expect("a client"),
            config,
            dispatcher: None,
        };
        crate::router(
            AppState::new(
                engine.clone(),
                crate::HttpConfig::default(),
                crate::MapConfig::default(),
                keys,
                None,
            )
            .with_webhooks(Some(Arc::new(webhooks))),
        )
    }

    /// A concrete URI for a documented path.
    fn concrete(path: &str) -> String {
        path.replace("{id}", "scooter-1")
    }

    async fn call(
        app: &axum::Router,
        method: &str,
        uri: &str,
        body: Option<(&str, String)>,
    ) -> Response {
        let mut req = Request::builder()
            .method(Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap())
            .uri(uri);
        let body = match body {
            Some((ct, b)) => {
                req = req.header(header::CONTENT_TYPE, ct);
                Body::from(b)
            }
            None => Body::empty(),
        };
        app.clone().oneshot(req.body(body).unwrap()).await.unwrap()
    }

    /// A validator for `schema`, whose `$ref`s point into the document's components.
    fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "allOf": [schema],
            "components": doc["components"],
        });
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .expect("the schema compiles")
    }

    fn component(doc: &Value, name: &str) -> jsonschema::Validator {
        validator(
            doc,
            &json!({ "$ref": format!("#/components/schemas/{name}") }),
        )
    }

    fn assert_valid(v: &jsonschema::Validator, body: &Value, what: &str) {
        let errors: Vec<String> = v.iter_errors(body).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{what}: {errors:?}\nbody: {body}");
    }

    /// Validates a real response against the schema the document declares for its operation,
    /// status and content type; returns the body and its validator.
    async fn check(
        doc: &Value,
        method: &str,
        path: &str,
        resp: Response,
    ) -> (Value, jsonschema::Validator) {
        let status = resp.status().as_u16().to_string();
        let ct = resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).expect("the body is JSON");
        let declared = &doc["paths"][path][method]["responses"][&status];
        assert!(
            declared.is_object(),
            "{method} {path} answered {status}, which the document does not declare"
        );
        let schema = &declared["content"][&ct]["schema"];
        assert!(
            schema.is_object(),
            "{method} {path} {status} answered {ct}, which the document does not declare: {declared}"
        );
        let v = validator(doc, schema);
        assert_valid(&v, &body, &format!("{method} {path} {status} {ct}"));
        (body, v)
    }

    fn rejects(v: &jsonschema::Validator, body: &Value, change: impl FnOnce(&mut Value)) {
        let mut bad = body.clone();
        change(&mut bad);
        assert!(!v.is_valid(&bad), "the schema accepted a wrong body: {bad}");
    }

    /// The document is OpenAPI 3.1; it lists exactly the routes the router serves, and exactly
    /// the guarded ones need a key.
    #[tokio::test]
    async fn document_lists_every_route_and_guards_the_guarded() {
        let doc = doc();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        assert_eq!(
            doc["components"]["securitySchemes"][BEARER]["scheme"],
            "bearer"
        );
        let ops = operations(&doc);
        assert!(ops.len() >= 13, "{ops:?}");

        // Auth on: one key exists, no key is sent.
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(KeyStore::open(KeyStore::path_in(dir.path())).unwrap());
        keys.create("reader", &[Scope::Read]).unwrap();
        let engine = engine(dir.path());
        let app_keyed = app(&engine, Some(keys));
        // The guards run before the method check, so methods are probed with auth off.
        let app_open = app(&engine, None);
        let mut open = Vec::new();
        for (method, path, op) in &ops {
            assert!(
                op["summary"].is_string() || op["description"].is_string(),
                "{method} {path} has no text"
            );
            let resp = call(&app_keyed, method, &concrete(path), None).await;
            let status = resp.status();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(
                !String::from_utf8_lossy(&bytes).contains("no such route"),
                "{method} {path} is documented but not routed"
            );
            let bearer = op["security"] == json!([{ BEARER: [] }]);
            if status == StatusCode::UNAUTHORIZED {
                assert!(bearer, "{method} {path} needs a key but does not say so");
                for s in ["401", "403"] {
                    assert!(op["responses"][s].is_object(), "{method} {path} lacks {s}");
                }
                assert!(
                    op["description"].as_str().unwrap().contains("scope"),
                    "{method} {path}: the scope is not named"
                );
            } else {
                assert!(op["security"].is_null(), "{method} {path} is open");
                assert!(
                    op["responses"][status.as_str()].is_object(),
                    "{method} {path} answered {status}, which is not declared"
                );
                open.push(path.as_str());
            }
            // No undocumented method on a documented path.
            for other in METHODS.iter().filter(|m| *m != method) {
                if doc["paths"][path][other].is_null() {
                    let resp = call(&app_open, other, &concrete(path), None).await;
                    assert_eq!(
                        resp.status(),
                        StatusCode::METHOD_NOT_ALLOWED,
                        "{other} {path} is routed but not documented"
                    );
                }
            }
        }
        open.sort_unstable();
        assert_eq!(
            open,
            [
                "/",
                "/api/v1/docs",
                "/api/v1/openapi.json",
                "/gbfs/3.0/{file}",
                "/healthz",
                "/readyz"
            ],
            "the open routes"
        );
        // The routes of the README exist in the document.
        for path in [
            "/api/v1/telemetry",
            "/api/v1/vehicles",
            "/api/v1/vehicles/{id}",
            "/api/v1/vehicles/{id}/track",
            "/api/v1/fleet/summary",
            "/api/v1/stream",
            "/api/v1/map/config",
            "/metrics",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} is not documented");
        }
        engine.shutdown();
    }

    /// Routes may only be added through `routes!` (which documents them): the router's source
    /// has no plain `.route(`, `.route_service(` or `.nest_service(` call.
    #[test]
    fn routes_are_only_added_with_their_documentation() {
        for (name, src) in [
            ("lib.rs", include_str!("lib.rs")),
            ("stream.rs", include_str!("stream.rs")),
            ("openapi.rs", include_str!("openapi.rs")),
        ] {
            let code = src.split("#[cfg(test)]").next().unwrap();
            for call in [".route(", ".route_service(", ".nest_service(", ".nest("] {
                assert!(
                    !code.contains(call),
                    "{name} calls {call}: add routes with routes!(…) so they are documented"
                );
            }
        }
    }

    /// The list query's documented parameters are those the handler accepts.
    #[test]
    fn list_parameters_match_the_handler() {
        let doc = doc();
        let mut names: Vec<&str> = doc["paths"]["/api/v1/vehicles"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        names.sort_unstable();
        let mut known = crate::KNOWN_LIST_PARAMS.to_vec();
        known.sort_unstable();
        assert_eq!(names, known);
    }

    /// The fix schema accepts what the body parser accepts and refuses what it refuses, and its
    /// states are the domain's.
    #[test]
    fn fix_schema_matches_the_parser() {
        use kickstand_domain::VehicleState;
        use kickstand_domain::input::{BodyFormat, parse_body};
        let doc = doc();
        let states: Vec<&str> = doc["components"]["schemas"]["State"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        let domain: Vec<&str> = VehicleState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(states, domain);

        let body =
            doc["paths"]["/api/v1/telemetry"]["post"]["requestBody"]["content"]["application/json"]
                ["schema"]
                .clone();
        let v = validator(&doc, &body);
        let now = 1_800_000_000_000;
        let good = [
            json!({"vehicle_id":"scooter-1","ts":"2026-11-25T10:00:00Z","lat":37.5665,"lon":126.978}),
            json!({"vehicle_id":"s.1:a_b-c","ts":1_799_999_999_000i64,"lat":-90,"lon":180,
                   "speed_kmh":12.5,"heading_deg":359.9,"battery_pct":81,"accuracy_m":3.2,
                   "altitude_m":-10,"odometer_m":12345,"state":"on_trip","locked":false}),
            json!({"vehicle_id":"v","ts":1_799_999_999_000i64,"lat":0,"lon":0,"battery_pct":null,"state":null}),
            json!([{"vehicle_id":"a","ts":"2026-11-25T10:00:00.5+09:00","lat":1,"lon":2}]),
        ];
        for item in &good {
            assert_valid(&v, item, "a good body");
            let parsed = parse_body(item.to_string().as_bytes(), BodyFormat::Json, now).unwrap();
            assert!(parsed.rejected.is_empty(), "{item}: {:?}", parsed.rejected);
        }
        let bad = [
            json!({"vehicle_id":"a","ts":1,"lat":1}),
            json!({"vehicle_id":"a","ts":1,"lat":1,"lon":2,"colour":"red"}),
            json!({"vehicle_id":"a","ts":1,"lat":1,"lon":2,"state":"flying"}),
            json!({"vehicle_id":"a","ts":true,"lat":1,"lon":2}),
            json!({"vehicle_id":"a","ts":"yesterday","lat":1,"lon":2}),
            json!({"vehicle_id":"a","ts":1,"lat":91,"lon":2}),
            json!({"vehicle_id":"a b","ts":1,"lat":1,"lon":2}),
            json!({"vehicle_id":"a","ts":1,"lat":1,"lon":2,"battery_pct":101}),
            json!({"vehicle_id":"a","ts":1,"lat":1,"lon":2,"locked":"yes"}),
        ];
        for item in &bad {
            assert!(!v.is_valid(item), "the schema accepted {item}");
            let parsed = parse_body(item.to_string().as_bytes(), BodyFormat::Json, now).unwrap();
            assert!(parsed.fixes.is_empty(), "the parser accepted {item}");
        }
    }

    /// Real responses, built through the router, match the schemas the document declares.
    #[tokio::test]
    async fn responses_match_the_documented_schemas() {
        let doc = doc();
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path());
        let app = app(&engine, None);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let fixes = json!([
            {"vehicle_id":"scooter-1","ts":now - 60_000,"lat":37.5665,"lon":126.978,
             "battery_pct":81,"state":"available","locked":true},
            {"vehicle_id":"scooter-1","ts":now - 30_000,"lat":37.5666,"lon":126.9781,
             "speed_kmh":12.3,"heading_deg":90,"battery_pct":80.5,"accuracy_m":3,
             "altitude_m":-2.5,"odometer_m":1200,"state":"on_trip","locked":false},
            {"vehicle_id":"scooter-2","ts":now - 10_000,"lat":37.567,"lon":126.979},
            {"vehicle_id":"scooter-3","ts":"not a time","lat":37.567,"lon":126.979},
        ]);
        let tel = "/api/v1/telemetry";
        let resp = call(
            &app,
            "post",
            tel,
            Some(("application/json", fixes.to_string())),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let (body, v) = check(&doc, "post", tel, resp).await;
        assert_eq!(body["accepted"], 3);
        assert_eq!(body["rejected"][0]["field"], "ts");
        rejects(&v, &body, |b| b["rejected"][0]["index"] = json!("0"));
        rejects(&v, &body, |b| b["extra"] = json!(1));

        // One object; then NDJSON (a duplicate and one more vehicle).
        let one = json!({"vehicle_id":"scooter-4","ts":now - 5_000,"lat":37.6,"lon":127.0});
        let resp = call(
            &app,
            "post",
            tel,
            Some(("application/json", one.to_string())),
        )
        .await;
        check(&doc, "post", tel, resp).await;
        let ndjson = format!(
            "{}\n{}\n",
            fixes[2],
            json!({"vehicle_id":"scooter-5","ts":now,"lat":37.5,"lon":126.9})
        );
        let resp = call(&app, "post", tel, Some(("application/x-ndjson", ndjson))).await;
        let (body, _) = check(&doc, "post", tel, resp).await;
        assert_eq!(
            (body["accepted"].as_u64(), body["duplicates"].as_u64()),
            (Some(1), Some(1))
        );
        // Problems: 422 with errors, 400, 415.
        let resp = call(
            &app,
            "post",
            tel,
            Some(("application/json", json!([{"lat":1}]).to_string())),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let (body, v) = check(&doc, "post", tel, resp).await;
        assert_eq!(body["errors"][0]["field"], "vehicle_id");
        rejects(&v, &body, |b| b["status"] = json!("422"));
        rejects(&v, &body, |b| b["errors"][0]["reason"] = json!(null));
        let resp = call(&app, "post", tel, Some(("application/json", "{".into()))).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        check(&doc, "post", tel, resp).await;
        let resp = call(&app, "post", tel, Some(("text/plain", "x".into()))).await;
        assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        check(&doc, "post", tel, resp).await;

        // A vehicle, and a 404 and 400 problem.
        let one = "/api/v1/vehicles/{id}";
        let resp = call(&app, "get", "/api/v1/vehicles/scooter-1", None).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let (body, v) = check(&doc, "get", one, resp).await;
        assert_eq!(body["state"], "on_trip");
        assert_eq!(body["altitude_m"], -2.5);
        rejects(&v, &body, |b| b["lat"] = json!("37.5"));
        rejects(&v, &body, |b| b["ts"] = json!("yesterday"));
        rejects(&v, &body, |b| b["state"] = json!("flying"));
        rejects(&v, &body, |b| b["bogus"] = json!(1));
        rejects(&v, &body, |b| {
            b.as_object_mut().unwrap().remove("vehicle_id");
        });
        let resp = call(&app, "get", "/api/v1/vehicles/nobody", None).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let (body, v) = check(&doc, "get", one, resp).await;
        assert_eq!(body["title"], "Not found");
        rejects(&v, &body, |b| {
            b.as_object_mut().unwrap().remove("detail");
        });
        let resp = call(&app, "get", "/api/v1/vehicles/a%20b", None).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let (body, _) = check(&doc, "get", one, resp).await;
        assert_eq!(body["field"], "vehicle_id");

        // Lists: near (with distance_m), bbox paged (with a cursor), and a bad parameter.
        let list = "/api/v1/vehicles";
        let resp = call(
            &app,
            "get",
            "/api/v1/vehicles?near=37.5665,126.978&radius_m=1000",
            None,
        )
        .await;
        let (body, v) = check(&doc, "get", list, resp).await;
        assert!(body["vehicles"][0]["distance_m"].is_number(), "{body}");
        assert!(body["next_cursor"].is_null());
        rejects(&v, &body, |b| {
            b.as_object_mut().unwrap().remove("next_cursor");
        });
        rejects(&v, &body, |b| {
            b["vehicles"][0]["distance_m"] = json!("near")
        });
        let resp = call(
            &app,
            "get",
            "/api/v1/vehicles?bbox=126,37,128,38&limit=2",
            None,
        )
        .await;
        let (body, v) = check(&doc, "get", list, resp).await;
        assert_eq!(body["vehicles"].as_array().unwrap().len(), 2);
        assert_eq!(body["next_cursor"], "scooter-2");
        rejects(&v, &body, |b| b["next_cursor"] = json!(2));
        let resp = call(&app, "get", "/api/v1/vehicles?near=100,0", None).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        check(&doc, "get", list, resp).await;

        // The track as JSON and as GeoJSON.
        let track = "/api/v1/vehicles/{id}/track";
        let uri = format!(
            "/api/v1/vehicles/scooter-1/track?from={}&to={}",
            now - 120_000,
            now
        );
        let resp = call(&app, "get", &uri, None).await;
        let (body, v) = check(&doc, "get", track, resp).await;
        assert_eq!(body["count"], 2);
        rejects(&v, &body, |b| b["fixes"][0]["lat"] = json!(null));
        rejects(&v, &body, |b| b["count"] = json!(-1));
        rejects(&v, &body, |b| {
            b["fixes"][1]["vehicle_id"] = json!("scooter-1")
        });
        let resp = call(&app, "get", &format!("{uri}&format=geojson"), None).await;
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/geo+json");
        let (body, v) = check(&doc, "get", track, resp).await;
        assert_eq!(
            body["geometry"]["coordinates"][0],
            json!([126.978, 37.5665])
        );
        rejects(&v, &body, |b| b["type"] = json!("FeatureCollection"));
        rejects(&v, &body, |b| b["geometry"]["coordinates"][0] = json!([1]));
        rejects(&v, &body, |b| b["properties"]["times"][0] = json!(5));
        let resp = call(
            &app,
            "get",
            "/api/v1/vehicles/scooter-1/track?format=kml",
            None,
        )
        .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        check(&doc, "get", track, resp).await;

        // The fleet summary and the map config.
        let sum = "/api/v1/fleet/summary";
        let resp = call(&app, "get", "/api/v1/fleet/summary?stale_minutes=1", None).await;
        let (body, v) = check(&doc, "get", sum, resp).await;
        assert_eq!(body["vehicles"], 4);
        rejects(&v, &body, |b| b["by_state"]["available"] = json!("1"));
        rejects(&v, &body, |b| {
            b.as_object_mut().unwrap().remove("stale");
        });
        let resp = call(&app, "get", "/api/v1/fleet/summary?stale_minutes=x", None).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        check(&doc, "get", sum, resp).await;
        let map = "/api/v1/map/config";
        let (body, v) = check(&doc, "get", map, call(&app, "get", map, None).await).await;
        assert_eq!(body, json!({"tile_url": null}));
        rejects(&v, &body, |b| b["tile_url"] = json!(1));

        // The first event of the live stream.
        let resp = call(&app, "get", "/api/v1/stream?bbox=126,37,128,38", None).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let declared = &doc["paths"]["/api/v1/stream"]["get"]["responses"]["200"]["content"];
        assert!(declared["text/event-stream"].is_object(), "{declared}");
        let mut body = resp.into_body();
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let text = String::from_utf8(frame.to_vec()).unwrap();
        assert!(text.starts_with("event: snapshot\n"), "{text}");
        let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        let event: Value = serde_json::from_str(data).unwrap();
        assert_eq!(event["vehicles"].as_array().unwrap().len(), 4);
        assert_valid(&component(&doc, "StreamEvent"), &event, "a stream event");
        drop(body);

        // The document itself, as served.
        let resp = call(&app, "get", "/api/v1/openapi.json", None).await;
        let (body, _) = check(&doc, "get", "/api/v1/openapi.json", resp).await;
        assert_eq!(body, doc);
        engine.shutdown();
    }

    /// The API page is self-contained: it loads nothing from elsewhere.
    #[test]
    fn api_page_is_self_contained() {
        assert!(API_HTML.contains("openapi.json"));
        for external in ["http://", "https://", "//cdn", "<link", "src=\""] {
            assert!(
                !API_HTML.contains(external),
                "api.html refers to {external}"
            );
        }
    }
}
