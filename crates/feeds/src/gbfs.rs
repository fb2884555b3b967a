//! GBFS 3.0 public feeds: the files a rider app or trip planner reads to show where vehicles
//! can be rented and where they may be ridden and parked.
//!
//! This module owns the *content* of `gbfs.json`, `manifest.json`, `system_information.json`,
//! `vehicle_types.json`, `vehicle_status.json` and `geofencing_zones.json`, and the operator's
//! `[gbfs]` configuration section. Each builder takes plain inputs and returns the whole file as
//! a [`serde_json::Value`]; the HTTP layer gathers the inputs and serves the value under
//! `/gbfs/3.0/<file>`.
//!
//! **Architecture Invariant:** no I/O, no clock, no randomness, and nothing here can fail: the
//! caller passes the time (`now_ms`) and the id-rotation key, and input that cannot be shown
//! correctly (a vehicle with an impossible position, a zone with broken geometry) is left out
//! of the feed rather than published wrong.
//!
//! **Architecture Invariant:** a real vehicle id never appears in a feed. `vehicle_status`
//! publishes a keyed hash that changes after every trip ([`public_vehicle_id`]), lists no
//! vehicle that is on a trip or reserved, and orders vehicles by that hash so that a
//! vehicle's position in the list does not identify it either.

use std::collections::HashSet;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// The GBFS version every file declares.
pub const VERSION: &str = "3.0";

/// The files served under `/gbfs/3.0/`, in the order of the builders below. The first is the
/// discovery file, the second the manifest; the others are the feeds `gbfs.json` lists.
pub const FEEDS: [&str; 6] = [
    "gbfs.json",
    "manifest.json",
    "system_information.json",
    "vehicle_types.json",
    "vehicle_status.json",
    "geofencing_zones.json",
];

/// Operator details and feed settings (`[gbfs]` in the config file).
///
/// Call [`GbfsConfig::validate`] at start-up: the builders trust these values and would
/// otherwise publish files that fail the GBFS schemas.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GbfsConfig {
    /// Identifier of this system in `system_information.json` and `manifest.json`. Should be
    /// globally unique, e.g. `acme-lisbon`.
    pub system_id: String,
    /// Name of the system as riders see it.
    pub name: String,
    /// Name of the operator, when it differs from the system name.
    pub operator_name: Option<String>,
    /// The system's web site (absolute `https://` URL).
    pub url: Option<String>,
    /// Where riders sign up or buy a pass (absolute URL).
    pub purchase_url: Option<String>,
    /// Customer-service phone number in E.164 format, e.g. `+351210000000`.
    pub phone_number: Option<String>,
    /// Customer-service email address.
    pub email: Option<String>,
    /// Where consumers of the feed report technical problems. Required by GBFS.
    pub feed_contact_email: String,
    /// IANA time zone of the system, e.g. `Europe/Lisbon`.
    pub timezone: String,
    /// Languages of the translated strings, as IETF BCP 47 codes (`en`, `pt`, `pt-BR`). Every
    /// name is published once per language (Kickstand has one text per name).
    pub languages: Vec<String>,
    /// SPDX identifier of a standard licence for the data, e.g. `CC0-1.0`. Use this or
    /// `license_url`, not both; with neither, GBFS reads the data as public domain.
    pub license_id: Option<String>,
    /// URL of non-standard licence terms for the data.
    pub license_url: Option<String>,
    /// Organisation to credit when the licence requires attribution.
    pub attribution_organization_name: Option<String>,
    /// URL of the organisation to credit.
    pub attribution_url: Option<String>,
    /// Hours of operation in OpenStreetMap `opening_hours` syntax. Required by GBFS 3.0.
    pub opening_hours: String,
    /// Seconds consumers may cache every file except `vehicle_status.json`.
    pub ttl_secs: u32,
    /// Seconds consumers may cache `vehicle_status.json`. Keep it short: a vehicle that was
    /// just rented stays visible to other riders for up to this long.
    pub vehicle_status_ttl_secs: u32,
    /// The kinds of vehicle in the fleet. Default: one standing electric scooter type
    /// `scooter`.
    pub vehicle_types: Vec<VehicleTypeConfig>,
    /// The type of every vehicle whose type is not known otherwise. Must be one of
    /// `vehicle_types`.
    pub default_vehicle_type_id: String,
    /// Key of the public vehicle-id rotation. Anyone who knows it can map public ids back to
    /// fleet ids, so keep it secret. Empty: the server derives one at start-up.
    pub rotation_secret: String,
}

impl Default for GbfsConfig {
    fn default() -> Self {
        GbfsConfig {
            system_id: "kickstand".into(),
            name: "Kickstand".into(),
            operator_name: None,
            url: None,
            purchase_url: None,
            phone_number: None,
            email: None,
            feed_contact_email: "operator@example.com".into(),
            timezone: "Etc/UTC".into(),
            languages: vec!["en".into()],
            license_id: None,
            license_url: None,
            attribution_organization_name: None,
            attribution_url: None,
            opening_hours: "24/7".into(),
            ttl_secs: 60,
            vehicle_status_ttl_secs: 15,
            vehicle_types: vec![VehicleTypeConfig::default()],
            default_vehicle_type_id: "scooter".into(),
            rotation_secret: String::new(),
        }
    }
}

/// One kind of vehicle in `vehicle_types.json` (`[[gbfs.vehicle_types]]`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct VehicleTypeConfig {
    /// Identifier of the type, referenced by every vehicle of the type.
    pub vehicle_type_id: String,
    /// General shape of the vehicle.
    pub form_factor: FormFactor,
    /// What moves the vehicle.
    pub propulsion_type: PropulsionType,
    /// Range in metres on a full battery or tank. Each vehicle's current range is this times
    /// its battery level. Required by GBFS for motorised types.
    pub max_range_meters: f64,
    /// Name of the type as riders see it.
    pub name: String,
    /// How many riders the vehicle may carry.
    pub rider_capacity: Option<u32>,
    /// Legal top speed in km/h.
    pub max_permitted_speed_kmh: Option<u32>,
    /// Number of wheels.
    pub wheel_count: Option<u32>,
    /// Manufacturer.
    pub make: Option<String>,
    /// Model name.
    pub model: Option<String>,
    /// URL of a JPEG or PNG picture of the vehicle.
    pub vehicle_image: Option<String>,
}

impl Default for VehicleTypeConfig {
    fn default() -> Self {
        VehicleTypeConfig {
            vehicle_type_id: "scooter".into(),
            form_factor: FormFactor::ScooterStanding,
            propulsion_type: PropulsionType::Electric,
            max_range_meters: 40_000.0,
            name: "E-scooter".into(),
            rider_capacity: Some(1),
            max_permitted_speed_kmh: None,
            wheel_count: None,
            make: None,
            model: None,
            vehicle_image: None,
        }
    }
}

/// GBFS `form_factor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FormFactor {
    Bicycle,
    CargoBicycle,
    Car,
    Moped,
    ScooterStanding,
    ScooterSeated,
    Other,
}

impl FormFactor {
    pub fn as_str(self) -> &'static str {
        match self {
            FormFactor::Bicycle => "bicycle",
            FormFactor::CargoBicycle => "cargo_bicycle",
            FormFactor::Car => "car",
            FormFactor::Moped => "moped",
            FormFactor::ScooterStanding => "scooter_standing",
            FormFactor::ScooterSeated => "scooter_seated",
            FormFactor::Other => "other",
        }
    }
}

/// GBFS `propulsion_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PropulsionType {
    Human,
    ElectricAssist,
    Electric,
    Combustion,
    CombustionDiesel,
    Hybrid,
    PlugInHybrid,
    HydrogenFuelCell,
}

impl PropulsionType {
    pub fn as_str(self) -> &'static str {
        match self {
            PropulsionType::Human => "human",
            PropulsionType::ElectricAssist => "electric_assist",
            PropulsionType::Electric => "electric",
            PropulsionType::Combustion => "combustion",
            PropulsionType::CombustionDiesel => "combustion_diesel",
            PropulsionType::Hybrid => "hybrid",
            PropulsionType::PlugInHybrid => "plug_in_hybrid",
            PropulsionType::HydrogenFuelCell => "hydrogen_fuel_cell",
        }
    }

    /// Whether GBFS requires a range (`max_range_meters`, `current_range_meters`).
    pub fn is_motorized(self) -> bool {
        self != PropulsionType::Human
    }
}

/// A `[gbfs]` setting that would make a feed fail the GBFS schemas.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("gbfs.{field}: {reason}")]
pub struct GbfsConfigError {
    /// The offending setting, e.g. `vehicle_types[1].max_range_meters`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl GbfsConfig {
    /// Checks what the GBFS schemas check and the builders cannot repair. The time zone is
    /// only checked for presence (the schema's list of IANA names is not compiled in).
    pub fn validate(&self) -> Result<(), GbfsConfigError> {
        let err = |field: &str, reason: &str| {
            Err(GbfsConfigError {
                field: field.to_owned(),
                reason: reason.to_owned(),
            })
        };
        if self.system_id.is_empty() {
            return err("system_id", "must not be empty");
        }
        if self.languages.is_empty() {
            return err("languages", "must name at least one language");
        }
        if let Some(bad) = self.languages.iter().find(|l| !is_language_code(l)) {
            return err(
                "languages",
                &format!("{bad:?} is not a code like `en` or `pt-BR`"),
            );
        }
        if self.timezone.is_empty() || self.timezone.contains(char::is_whitespace) {
            return err(
                "timezone",
                "must be an IANA time zone such as `Europe/Lisbon`",
            );
        }
        if self.opening_hours.is_empty() {
            return err("opening_hours", "must not be empty (e.g. `24/7`)");
        }
        if !is_email(&self.feed_contact_email) {
            return err("feed_contact_email", "must be an email address");
        }
        if self.email.as_deref().is_some_and(|e| !is_email(e)) {
            return err("email", "must be an email address");
        }
        if self.phone_number.as_deref().is_some_and(|p| !is_e164(p)) {
            return err(
                "phone_number",
                "must be in E.164 format, e.g. `+351210000000`",
            );
        }
        let urls = [
            ("url", &self.url),
            ("purchase_url", &self.purchase_url),
            ("license_url", &self.license_url),
            ("attribution_url", &self.attribution_url),
        ];
        for (field, url) in urls {
            if url.as_deref().is_some_and(|u| !is_absolute_url(u)) {
                return err(field, "must be an absolute http(s) URL");
            }
        }
        if self.license_id.is_some() && self.license_url.is_some() {
            return err("license_id", "set license_id or license_url, not both");
        }
        let mut ids = HashSet::new();
        for (i, t) in self.vehicle_types.iter().enumerate() {
            let field = |name: &str| format!("vehicle_types[{i}].{name}");
            if t.vehicle_type_id.is_empty() {
                return err(&field("vehicle_type_id"), "must not be empty");
            }
            if !ids.insert(t.vehicle_type_id.as_str()) {
                return err(&field("vehicle_type_id"), "is used by two types");
            }
            if !(t.max_range_meters.is_finite() && t.max_range_meters >= 0.0) {
                return err(
                    &field("max_range_meters"),
                    "must be a number of metres, 0 or more",
                );
            }
            if t.vehicle_image
                .as_deref()
                .is_some_and(|u| !is_absolute_url(u))
            {
                return err(&field("vehicle_image"), "must be an absolute http(s) URL");
            }
        }
        if !ids.contains(self.default_vehicle_type_id.as_str()) {
            return err("default_vehicle_type_id", "must be one of vehicle_types");
        }
        Ok(())
    }

    fn vehicle_type(&self, id: &str) -> Option<&VehicleTypeConfig> {
        self.vehicle_types.iter().find(|t| t.vehicle_type_id == id)
    }
}

/// One vehicle as the feed sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FeedVehicle<'a> {
    /// The fleet's own id. Never published.
    pub vehicle_id: &'a str,
    /// Last known position, WGS 84 degrees.
    pub lat: f64,
    pub lon: f64,
    /// Battery level in percent (0–100), when known.
    pub battery_pct: Option<f64>,
    /// `available`, `reserved`, `on_trip`, `non_operational`, `elsewhere` or `removed`.
    pub state: Option<&'a str>,
    /// Epoch ms of the vehicle's last report.
    pub last_reported_ms: i64,
    /// Changes after every trip, e.g. the epoch ms the last trip ended; 0 if none is known.
    pub trip_epoch: u64,
    /// One of the configured vehicle types; `None` means the configured default.
    pub vehicle_type_id: Option<&'a str>,
}

/// One geofence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FeedZone<'a> {
    /// The operator's id of the zone. Not published.
    pub id: &'a str,
    /// Public name of the zone.
    pub name: &'a str,
    /// `operating_area`, `no_parking`, `slow_zone` or `no_ride`.
    pub kind: &'a str,
    /// Speed limit of a `slow_zone`, km/h.
    pub max_speed_kmh: Option<f64>,
    /// GeoJSON `Polygon` or `MultiPolygon`.
    pub geometry: &'a Value,
}

/// `gbfs.json`: the discovery file, linking every feed by its full URL. `base_url` is the
/// absolute URL the server is reached at, e.g. `https://fleet.example.com`.
///
/// `manifest.json` is not listed: GBFS 3.0 has no feed name for it (the schema's `name`
/// enum lacks it); consumers find it at its well-known URL.
pub fn gbfs_json(cfg: &GbfsConfig, base_url: &str, now_ms: i64) -> Value {
    let feeds: Vec<Value> = FEEDS[2..]
        .iter()
        .map(|file| {
            let name = file.trim_end_matches(".json");
            json!({ "name": name, "url": feed_url(base_url, file) })
        })
        .collect();
    envelope(cfg.ttl_secs, now_ms, json!({ "feeds": feeds }))
}

/// `manifest.json`: this system's one data set and the one version it is published in.
pub fn manifest_json(cfg: &GbfsConfig, base_url: &str, now_ms: i64) -> Value {
    let data = json!({
        "datasets": [{
            "system_id": cfg.system_id,
            "versions": [{ "version": VERSION, "url": feed_url(base_url, FEEDS[0]) }],
        }],
    });
    envelope(cfg.ttl_secs, now_ms, data)
}

/// `system_information.json`: who runs the system, where to reach them, and its licence.
pub fn system_information(cfg: &GbfsConfig, now_ms: i64) -> Value {
    let mut data = Map::new();
    data.insert("system_id".into(), json!(cfg.system_id));
    data.insert("languages".into(), json!(cfg.languages));
    data.insert("name".into(), localized(cfg, &cfg.name));
    data.insert("opening_hours".into(), json!(cfg.opening_hours));
    data.insert("feed_contact_email".into(), json!(cfg.feed_contact_email));
    data.insert("timezone".into(), json!(cfg.timezone));
    if let Some(operator) = &cfg.operator_name {
        data.insert("operator".into(), localized(cfg, operator));
    }
    if let Some(org) = &cfg.attribution_organization_name {
        data.insert("attribution_organization_name".into(), localized(cfg, org));
    }
    let plain = [
        ("url", &cfg.url),
        ("purchase_url", &cfg.purchase_url),
        ("phone_number", &cfg.phone_number),
        ("email", &cfg.email),
        ("license_id", &cfg.license_id),
        ("license_url", &cfg.license_url),
        ("attribution_url", &cfg.attribution_url),
    ];
    for (key, value) in plain {
        if let Some(value) = value {
            data.insert(key.into(), json!(value));
        }
    }
    envelope(cfg.ttl_secs, now_ms, Value::Object(data))
}

/// `vehicle_types.json`: the configured types. Every type is free-floating (returned
/// anywhere parking is allowed).
pub fn vehicle_types(cfg: &GbfsConfig, now_ms: i64) -> Value {
    let types: Vec<Value> = cfg
        .vehicle_types
        .iter()
        .map(|t| {
            let mut o = Map::new();
            o.insert("vehicle_type_id".into(), json!(t.vehicle_type_id));
            o.insert("form_factor".into(), json!(t.form_factor.as_str()));
            o.insert("propulsion_type".into(), json!(t.propulsion_type.as_str()));
            if t.propulsion_type.is_motorized() {
                o.insert("max_range_meters".into(), json!(t.max_range_meters));
            }
            o.insert("name".into(), localized(cfg, &t.name));
            o.insert("return_constraint".into(), json!("free_floating"));
            let counts = [
                ("rider_capacity", t.rider_capacity),
                ("max_permitted_speed", t.max_permitted_speed_kmh),
                ("wheel_count", t.wheel_count),
            ];
            for (key, value) in counts {
                if let Some(value) = value {
                    o.insert(key.into(), json!(value));
                }
            }
            if let Some(make) = &t.make {
                o.insert("make".into(), localized(cfg, make));
            }
            if let Some(model) = &t.model {
                o.insert("model".into(), localized(cfg, model));
            }
            if let Some(image) = &t.vehicle_image {
                o.insert("vehicle_image".into(), json!(image));
            }
            Value::Object(o)
        })
        .collect();
    envelope(cfg.ttl_secs, now_ms, json!({ "vehicle_types": types }))
}

/// `vehicle_status.json`: the vehicles a rider could walk up to, under rotating public ids.
///
/// Listed: `available` (`is_disabled: false`) and `non_operational` (`is_disabled: true`).
/// Left out: `on_trip` and `reserved` (GBFS forbids publishing vehicles in use, and a
/// reservation is the first minutes of a trip), `removed` and `elsewhere` (not in the service
/// area for riders), an unknown or absent state (it could be a trip), a position that is not a
/// valid coordinate, a type that is not configured, a motorised vehicle whose battery level is
/// unknown (GBFS requires its current range), and a second vehicle with the same public id.
///
/// The list is ordered by public id, so the order says nothing about fleet ids.
pub fn vehicle_status<'a>(
    cfg: &GbfsConfig,
    vehicles: impl IntoIterator<Item = FeedVehicle<'a>>,
    now_ms: i64,
) -> Value {
    let mut listed: Vec<(String, Value)> = Vec::new();
    let mut seen = HashSet::new();
    for v in vehicles {
        let is_disabled = match v.state {
            Some("available") => false,
            Some("non_operational") => true,
            _ => continue,
        };
        if !is_position(v.lat, v.lon) {
            continue;
        }
        let type_id = v.vehicle_type_id.unwrap_or(&cfg.default_vehicle_type_id);
        let Some(vehicle_type) = cfg.vehicle_type(type_id) else {
            continue;
        };
        let fuel = v
            .battery_pct
            .filter(|p| p.is_finite())
            .map(|p| ((p / 100.0).clamp(0.0, 1.0) * 100.0).round() / 100.0);
        let motorized = vehicle_type.propulsion_type.is_motorized();
        if motorized && fuel.is_none() {
            continue;
        }
        let public_id = public_vehicle_id(&cfg.rotation_secret, v.vehicle_id, v.trip_epoch);
        if !seen.insert(public_id.clone()) {
            continue;
        }
        let mut o = Map::new();
        o.insert("vehicle_id".into(), json!(public_id));
        o.insert("lat".into(), json!(v.lat));
        o.insert("lon".into(), json!(v.lon));
        o.insert("is_reserved".into(), json!(false));
        o.insert("is_disabled".into(), json!(is_disabled));
        o.insert(
            "vehicle_type_id".into(),
            json!(vehicle_type.vehicle_type_id),
        );
        if v.last_reported_ms > 0 {
            o.insert(
                "last_reported".into(),
                json!(rfc3339(v.last_reported_ms.min(now_ms))),
            );
        }
        if let Some(fuel) = fuel {
            o.insert("current_fuel_percent".into(), json!(fuel));
            if motorized {
                let range = (fuel * vehicle_type.max_range_meters).round();
                o.insert("current_range_meters".into(), json!(range));
            }
        }
        listed.push((public_id, Value::Object(o)));
    }
    listed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let vehicles: Vec<Value> = listed.into_iter().map(|(_, v)| v).collect();
    envelope(
        cfg.vehicle_status_ttl_secs,
        now_ms,
        json!({ "vehicles": vehicles }),
    )
}

/// `geofencing_zones.json`: every zone as a GeoJSON `MultiPolygon` feature with one rule for
/// all configured vehicle types, plus the rule outside every zone (`global_rules`).
///
/// | kind             | start | end   | through | speed limit |
/// |------------------|-------|-------|---------|-------------|
/// | `operating_area` | yes   | yes   | yes     |             |
/// | `slow_zone`      | yes   | yes   | yes     | `max_speed_kmh`, rounded down |
/// | `no_parking`     | no    | no    | yes     |             |
/// | `no_ride`        | no    | no    | no      |             |
/// | outside all zones, when an operating area exists | no | no | yes | |
/// | outside all zones, otherwise | yes | yes | yes |  |
///
/// GBFS gives the earlier of two overlapping zones precedence, so zones are published most
/// restrictive kind first (`no_ride`, `no_parking`, `slow_zone`, `operating_area`), in input
/// order within a kind. A `slow_zone` overlapping a `no_parking` zone therefore loses its speed
/// limit in the overlap. Zones of an unknown kind or without a usable polygon are left out.
/// Rings are closed if open, reduced to longitude and latitude, and oriented by the right-hand
/// rule (exterior counter-clockwise, holes clockwise) as GBFS requires.
pub fn geofencing_zones<'a>(
    cfg: &GbfsConfig,
    zones: impl IntoIterator<Item = FeedZone<'a>>,
    now_ms: i64,
) -> Value {
    let type_ids: Vec<&str> = cfg
        .vehicle_types
        .iter()
        .map(|t| t.vehicle_type_id.as_str())
        .collect();
    let rule = |start: bool, end: bool, through: bool| {
        json!({
            "vehicle_type_ids": type_ids,
            "ride_start_allowed": start,
            "ride_end_allowed": end,
            "ride_through_allowed": through,
        })
    };
    let mut features: Vec<(u8, Value)> = Vec::new();
    let mut has_operating_area = false;
    for zone in zones {
        let (precedence, mut zone_rule) = match zone.kind {
            "no_ride" => (0, rule(false, false, false)),
            "no_parking" => (1, rule(false, false, true)),
            "slow_zone" => (2, rule(true, true, true)),
            "operating_area" => (3, rule(true, true, true)),
            _ => continue,
        };
        let Some(geometry) = multipolygon(zone.geometry) else {
            continue;
        };
        if zone.kind == "slow_zone"
            && let Some(kmh) = zone.max_speed_kmh.filter(|k| k.is_finite())
        {
            // Rounded down: a limit published too low is safe, one too high is not.
            zone_rule["maximum_speed_kph"] = json!(kmh.max(0.0).floor() as u32);
        }
        has_operating_area |= zone.kind == "operating_area";
        let mut properties = Map::new();
        if !zone.name.is_empty() {
            properties.insert("name".into(), localized(cfg, zone.name));
        }
        properties.insert("rules".into(), json!([zone_rule]));
        let feature = json!({ "type": "Feature", "geometry": geometry, "properties": properties });
        features.push((precedence, feature));
    }
    features.sort_by_key(|(precedence, _)| *precedence);
    let features: Vec<Value> = features.into_iter().map(|(_, f)| f).collect();
    let outside = !has_operating_area;
    let data = json!({
        "geofencing_zones": { "type": "FeatureCollection", "features": features },
        "global_rules": [rule(outside, outside, true)],
    });
    envelope(cfg.ttl_secs, now_ms, data)
}

/// The id `vehicle_status.json` publishes for a vehicle: the first 16 bytes, in hex, of
/// HMAC-SHA256 keyed with `secret` over `vehicle_id:trip_epoch`. It changes after every
/// trip, and without the secret it cannot be linked to the fleet id or to earlier public ids.
pub fn public_vehicle_id(secret: &str, vehicle_id: &str, trip_epoch: u64) -> String {
    let epoch = trip_epoch.to_string();
    let mac = hmac_sha256(
        secret.as_bytes(),
        &[vehicle_id.as_bytes(), b":", epoch.as_bytes()],
    );
    let mut out = String::with_capacity(32);
    for byte in &mac[..16] {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// HMAC-SHA256 (RFC 2104) of the concatenation of `parts`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        block_key[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block_key[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block_key.map(|b| b ^ 0x36));
    for part in parts {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(block_key.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The fields every GBFS file shares around its `data`.
fn envelope(ttl: u32, now_ms: i64, data: Value) -> Value {
    json!({ "last_updated": rfc3339(now_ms), "ttl": ttl, "version": VERSION, "data": data })
}

fn feed_url(base_url: &str, file: &str) -> String {
    format!("{}/gbfs/{VERSION}/{file}", base_url.trim_end_matches('/'))
}

/// A GBFS localized string: the one text once per configured language.
fn localized(cfg: &GbfsConfig, text: &str) -> Value {
    let entries: Vec<Value> = cfg
        .languages
        .iter()
        .map(|language| json!({ "text": text, "language": language }))
        .collect();
    Value::Array(entries)
}

/// `YYYY-MM-DDTHH:MM:SSZ`: whole seconds, as in the GBFS examples; times outside the years
/// 1970–9999 are clamped into them.
fn rfc3339(ms: i64) -> String {
    let ms = ms.clamp(0, 253_402_300_799_000);
    let bytes = kickstand_domain::timefmt::rfc3339_bytes(ms).expect("clamped into years 1970-9999");
    let mut out = String::from_utf8_lossy(&bytes[..19]).into_owned();
    out.push('Z');
    out
}

fn is_position(lat: f64, lon: f64) -> bool {
    (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)
}

/// A GeoJSON `Polygon` or `MultiPolygon` as a GBFS `MultiPolygon`, keeping the polygons
/// whose exterior ring is usable; `None` when none is.
fn multipolygon(geometry: &Value) -> Option<Value> {
    let coordinates = geometry.get("coordinates")?;
    let polygons: Vec<Value> = match geometry.get("type")?.as_str()? {
        "Polygon" => polygon(coordinates).into_iter().collect(),
        "MultiPolygon" => coordinates.as_array()?.iter().filter_map(polygon).collect(),
        _ => return None,
    };
    if polygons.is_empty() {
        return None;
    }
    Some(json!({ "type": "MultiPolygon", "coordinates": polygons }))
}

/// One polygon's rings, or `None` when its exterior ring is unusable. Unusable holes are
/// dropped (the zone then covers them too, which errs on the side of the zone's rule).
fn polygon(rings: &Value) -> Option<Value> {
    let mut rings = rings.as_array()?.iter();
    let exterior = ring(rings.next()?, true)?;
    let mut out = vec![exterior];
    out.extend(rings.filter_map(|r| ring(r, false)));
    Some(json!(out))
}

/// A closed ring of `[lon, lat]` positions with at least four positions (three corners) and
/// a non-zero area, wound counter-clockwise when `exterior`, clockwise otherwise.
fn ring(positions: &Value, exterior: bool) -> Option<Vec<[f64; 2]>> {
    let mut ring = Vec::new();
    for position in positions.as_array()? {
        let position = position.as_array()?;
        let lon = position.first()?.as_f64()?;
        let lat = position.get(1)?.as_f64()?;
        if !is_position(lat, lon) {
            return None;
        }
        ring.push([lon, lat]);
    }
    if ring.first() != ring.last() {
        ring.push(*ring.first()?);
    }
    if ring.len() < 4 {
        return None;
    }
    // Twice the signed area (shoelace): positive when counter-clockwise.
    let area: f64 = ring
        .windows(2)
        .map(|w| w[0][0] * w[1][1] - w[1][0] * w[0][1])
        .sum();
    if area == 0.0 {
        return None;
    }
    if (area > 0.0) != exterior {
        ring.reverse();
    }
    Some(ring)
}

fn is_language_code(code: &str) -> bool {
    let (primary, region) = match code.split_once('-') {
        Some((p, r)) => (p, Some(r)),
        None => (code, None),
    };
    (2..=3).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_lowercase())
        && region.is_none_or(|r| r.len() == 2 && r.bytes().all(|b| b.is_ascii_uppercase()))
}

fn is_email(text: &str) -> bool {
    match text.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !text.contains(char::is_whitespace)
                && !domain.contains('@')
        }
        None => false,
    }
}

fn is_e164(text: &str) -> bool {
    let Some(digits) = text.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

fn is_absolute_url(text: &str) -> bool {
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !text.contains(char::is_whitespace))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const NOW_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    const BASE_URL: &str = "https://fleet.example.com/";
    const STATES: [Option<&str>; 8] = [
        Some("available"),
        Some("reserved"),
        Some("on_trip"),
        Some("non_operational"),
        Some("elsewhere"),
        Some("removed"),
        None,
        Some("parked"),
    ];

    /// The official GBFS 3.0 schemas, vendored in `conformance/` at the root of the repository.
    fn schema_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../conformance/gbfs-v3.0")
    }

    fn validator(feed: &str) -> jsonschema::Validator {
        let path = schema_dir().join(feed);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("schema {} missing: {e}", path.display()));
        let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
        jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap_or_else(|e| panic!("schema {feed} does not compile: {e}"))
    }

    /// Every schema error in `instance`, one line each.
    fn errors(feed: &str, instance: &Value) -> Vec<String> {
        validator(feed)
            .iter_errors(instance)
            .map(|e| {
                format!(
                    "{} at {} (schema {})",
                    e.masked(),
                    e.instance_path(),
                    e.schema_path()
                )
            })
            .collect()
    }

    fn assert_valid(feed: &str, instance: &Value) {
        let errors = errors(feed, instance);
        assert!(
            errors.is_empty(),
            "{feed}: {} schema errors:\n{}",
            errors.len(),
            errors.join("\n")
        );
    }

    fn config() -> GbfsConfig {
        GbfsConfig {
            system_id: "acme-lisbon".into(),
            name: "Acme Scooters Lisboa".into(),
            operator_name: Some("Acme Mobility, Lda.".into()),
            url: Some("https://acme.example.com".into()),
            purchase_url: Some("https://acme.example.com/join".into()),
            phone_number: Some("+351210000000".into()),
            email: Some("help@acme.example.com".into()),
            feed_contact_email: "gbfs@acme.example.com".into(),
            timezone: "Europe/Lisbon".into(),
            languages: vec!["en".into(), "pt".into(), "pt-BR".into()],
            license_id: Some("CC0-1.0".into()),
            license_url: None,
            attribution_organization_name: Some("Acme Mobility".into()),
            attribution_url: Some("https://acme.example.com/about".into()),
            opening_hours: "Mo-Su 06:00-24:00".into(),
            ttl_secs: 60,
            vehicle_status_ttl_secs: 15,
            vehicle_types: vec![
                VehicleTypeConfig::default(),
                VehicleTypeConfig {
                    vehicle_type_id: "seated".into(),
                    form_factor: FormFactor::ScooterSeated,
                    propulsion_type: PropulsionType::Electric,
                    max_range_meters: 55_000.0,
                    name: "Seated e-scooter".into(),
                    rider_capacity: Some(1),
                    max_permitted_speed_kmh: Some(25),
                    wheel_count: Some(2),
                    make: Some("Acme".into()),
                    model: Some("S2".into()),
                    vehicle_image: Some("https://acme.example.com/s2.png".into()),
                },
                VehicleTypeConfig {
                    vehicle_type_id: "bike".into(),
                    form_factor: FormFactor::Bicycle,
                    propulsion_type: PropulsionType::Human,
                    max_range_meters: 0.0,
                    name: "Bike".into(),
                    ..VehicleTypeConfig::default()
                },
            ],
            default_vehicle_type_id: "scooter".into(),
            rotation_secret: "test-rotation-secret".into(),
        }
    }

    /// A deterministic fleet in every state: `(real id, trip epoch)` per vehicle, plus the
    /// vehicles themselves.
    fn fleet(count: usize) -> Vec<(String, usize)> {
        (0..count).map(|i| (format!("KS-{i:05}"), i)).collect()
    }

    fn vehicle(id: &str, i: usize) -> FeedVehicle<'_> {
        // A cheap deterministic scatter around Lisbon.
        let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let jitter = |shift: u32| ((h >> shift) & 0xffff) as f64 / 65_535.0 - 0.5;
        FeedVehicle {
            vehicle_id: id,
            lat: if i % 97 == 13 {
                95.0
            } else {
                38.72 + jitter(0) * 0.1
            },
            lon: -9.14 + jitter(16) * 0.1,
            battery_pct: match i % 5 {
                0 => None,
                1 => Some(104.0),
                2 => Some(-3.0),
                _ => Some((h % 10_000) as f64 / 100.0),
            },
            state: STATES[i % STATES.len()],
            last_reported_ms: if i.is_multiple_of(11) {
                0
            } else {
                NOW_MS - (i as i64) * 1_000
            },
            trip_epoch: (i as u64 % 3) * 1_700_000_000_000,
            vehicle_type_id: match i % 9 {
                0 | 1 => Some("seated"),
                2 => Some("bike"),
                3 => Some("hoverboard"),
                4 => Some("scooter"),
                _ => None,
            },
        }
    }

    fn square(lon: f64, lat: f64, size: f64) -> Vec<[f64; 2]> {
        vec![
            [lon, lat],
            [lon + size, lat],
            [lon + size, lat + size],
            [lon, lat + size],
            [lon, lat],
        ]
    }

    fn geometries() -> Vec<(&'static str, &'static str, Option<f64>, Value)> {
        let mut clockwise = square(-9.15, 38.70, 0.01);
        clockwise.reverse();
        vec![
            (
                "city",
                "operating_area",
                None,
                json!({"type": "Polygon", "coordinates": [square(-9.25, 38.65, 0.2), square(-9.2, 38.7, 0.02)]}),
            ),
            (
                "riverside",
                "operating_area",
                None,
                json!({"type": "MultiPolygon", "coordinates": [[square(-9.3, 38.6, 0.05)], [square(-9.0, 38.6, 0.05)]]}),
            ),
            (
                "praça",
                "no_parking",
                None,
                json!({"type": "Polygon", "coordinates": [clockwise]}),
            ),
            (
                "market",
                "no_parking",
                None,
                json!({"type": "MultiPolygon", "coordinates": [[square(-9.13, 38.71, 0.003)]]}),
            ),
            (
                "old town",
                "slow_zone",
                Some(10.9),
                json!({"type": "Polygon", "coordinates": [square(-9.14, 38.71, 0.01)]}),
            ),
            (
                "school",
                "slow_zone",
                None,
                json!({"type": "Polygon", "coordinates": [[[-9.1, 38.7, 12.0], [-9.09, 38.7, 12.0], [-9.09, 38.71, 12.0]]]}),
            ),
            (
                "bridge",
                "no_ride",
                None,
                json!({"type": "MultiPolygon", "coordinates": [[square(-9.18, 38.69, 0.01)], [square(-9.17, 38.69, 0.01)]]}),
            ),
            (
                "",
                "no_ride",
                None,
                json!({"type": "Polygon", "coordinates": [square(-9.11, 38.73, 0.002)]}),
            ),
            (
                "a line",
                "no_ride",
                None,
                json!({"type": "LineString", "coordinates": [[-9.1, 38.7], [-9.0, 38.7]]}),
            ),
            (
                "too few",
                "no_ride",
                None,
                json!({"type": "Polygon", "coordinates": [[[-9.1, 38.7], [-9.0, 38.7], [-9.1, 38.7]]]}),
            ),
            (
                "bad kind",
                "party_zone",
                None,
                json!({"type": "Polygon", "coordinates": [square(-9.1, 38.7, 0.01)]}),
            ),
        ]
    }

    fn zones<'a>(
        geometries: &'a [(&'static str, &'static str, Option<f64>, Value)],
    ) -> Vec<FeedZone<'a>> {
        geometries
            .iter()
            .map(|(name, kind, max_speed_kmh, geometry)| FeedZone {
                id: name,
                name,
                kind,
                max_speed_kmh: *max_speed_kmh,
                geometry,
            })
            .collect()
    }

    /// Every builder's output, by file name.
    fn all_feeds(cfg: &GbfsConfig) -> Vec<(&'static str, Value)> {
        let fleet = fleet(700);
        let geometries = geometries();
        vec![
            (FEEDS[0], gbfs_json(cfg, BASE_URL, NOW_MS)),
            (FEEDS[1], manifest_json(cfg, BASE_URL, NOW_MS)),
            (FEEDS[2], system_information(cfg, NOW_MS)),
            (FEEDS[3], vehicle_types(cfg, NOW_MS)),
            (
                FEEDS[4],
                vehicle_status(cfg, fleet.iter().map(|(id, i)| vehicle(id, *i)), NOW_MS),
            ),
            (FEEDS[5], geofencing_zones(cfg, zones(&geometries), NOW_MS)),
        ]
    }

    #[test]
    fn gbfs_every_feed_passes_its_schema() {
        for cfg in [config(), GbfsConfig::default()] {
            cfg.validate().expect("test configs are valid");
            for (feed, output) in all_feeds(&cfg) {
                assert_valid(feed, &output);
                assert_eq!(output["version"], "3.0");
                assert_eq!(output["last_updated"], "2026-01-01T00:00:00Z");
            }
        }
    }

    #[test]
    fn gbfs_schema_catches_broken_output() {
        let cfg = config();
        let feeds = all_feeds(&cfg);
        type Mutation = fn(&mut Value);
        let mutations: [(&str, Mutation); 13] = [
            (FEEDS[0], |v| {
                drop(v.as_object_mut().unwrap().remove("last_updated"))
            }),
            (FEEDS[0], |v| {
                v["data"]["feeds"][0]["url"] = json!("not a url")
            }),
            (FEEDS[1], |v| {
                drop(
                    v["data"]["datasets"][0]
                        .as_object_mut()
                        .unwrap()
                        .remove("versions"),
                )
            }),
            (FEEDS[2], |v| {
                drop(v["data"].as_object_mut().unwrap().remove("opening_hours"))
            }),
            (FEEDS[2], |v| {
                v["data"]["timezone"] = json!("Mars/Olympus_Mons")
            }),
            (FEEDS[2], |v| v["last_updated"] = json!(1_767_225_600)),
            (FEEDS[3], |v| {
                drop(
                    v["data"]["vehicle_types"][0]
                        .as_object_mut()
                        .unwrap()
                        .remove("max_range_meters"),
                )
            }),
            (FEEDS[4], |v| {
                drop(
                    v["data"]["vehicles"][0]
                        .as_object_mut()
                        .unwrap()
                        .remove("is_disabled"),
                )
            }),
            (FEEDS[4], |v| {
                v["data"]["vehicles"][0]["current_fuel_percent"] = json!(57)
            }),
            (FEEDS[4], |v| {
                v["data"]["vehicles"][0]["last_reported"] = json!("2026-01-01 00:00")
            }),
            (FEEDS[5], |v| {
                v["data"]["geofencing_zones"]["features"][0]["geometry"]["type"] = json!("Polygon")
            }),
            (FEEDS[5], |v| {
                drop(v["data"].as_object_mut().unwrap().remove("global_rules"))
            }),
            (FEEDS[5], |v| {
                v["data"]["geofencing_zones"]["features"][0]["properties"]["rules"][0]["maximum_speed_kph"] =
                    json!(10.5)
            }),
        ];
        for (i, (feed, mutate)) in mutations.into_iter().enumerate() {
            let (_, output) = feeds
                .iter()
                .find(|(f, _)| *f == feed)
                .expect("every feed is built");
            let mut broken = output.clone();
            mutate(&mut broken);
            assert_ne!(&broken, output, "mutation {i} changed nothing");
            assert!(
                !errors(feed, &broken).is_empty(),
                "mutation {i} of {feed} passed the schema"
            );
        }
    }

    #[test]
    fn gbfs_discovery_and_manifest_link_every_feed() {
        let cfg = config();
        let discovery = gbfs_json(&cfg, BASE_URL, NOW_MS);
        let listed: Vec<(&str, &str)> = discovery["data"]["feeds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["name"].as_str().unwrap(), f["url"].as_str().unwrap()))
            .collect();
        assert_eq!(
            listed,
            [
                (
                    "system_information",
                    "https://fleet.example.com/gbfs/3.0/system_information.json"
                ),
                (
                    "vehicle_types",
                    "https://fleet.example.com/gbfs/3.0/vehicle_types.json"
                ),
                (
                    "vehicle_status",
                    "https://fleet.example.com/gbfs/3.0/vehicle_status.json"
                ),
                (
                    "geofencing_zones",
                    "https://fleet.example.com/gbfs/3.0/geofencing_zones.json"
                ),
            ]
        );
        let manifest = manifest_json(&cfg, "https://fleet.example.com", NOW_MS);
        assert_eq!(
            manifest["data"],
            json!({"datasets": [{"system_id": "acme-lisbon", "versions": [
                {"version": "3.0", "url": "https://fleet.example.com/gbfs/3.0/gbfs.json"}
            ]}]})
        );
    }

    #[test]
    fn gbfs_names_are_published_in_every_language() {
        let info = system_information(&config(), NOW_MS);
        assert_eq!(
            info["data"]["name"],
            json!([
                {"text": "Acme Scooters Lisboa", "language": "en"},
                {"text": "Acme Scooters Lisboa", "language": "pt"},
                {"text": "Acme Scooters Lisboa", "language": "pt-BR"},
            ])
        );
        assert_eq!(info["data"]["license_id"], "CC0-1.0");
    }

    #[test]
    fn gbfs_vehicle_states_map_to_listing() {
        let cfg = config();
        let check = |state: Option<&str>, expect: Option<bool>| {
            let v = FeedVehicle {
                state,
                ..vehicle("KS-1", 7)
            };
            let v = FeedVehicle {
                battery_pct: Some(50.0),
                lat: 38.7,
                ..v
            };
            let out = vehicle_status(&cfg, [v], NOW_MS);
            let listed = out["data"]["vehicles"].as_array().unwrap();
            let disabled = listed.first().map(|v| v["is_disabled"].as_bool().unwrap());
            assert_eq!(disabled, expect, "state {state:?}");
            if let Some(v) = listed.first() {
                assert_eq!(v["is_reserved"], false);
            }
        };
        check(Some("available"), Some(false));
        check(Some("non_operational"), Some(true));
        check(Some("reserved"), None);
        check(Some("on_trip"), None);
        check(Some("removed"), None);
        check(Some("elsewhere"), None);
        check(None, None);
        check(Some("Available"), None);
    }

    #[test]
    fn gbfs_vehicle_fields() {
        let cfg = config();
        let base = FeedVehicle {
            vehicle_id: "KS-7",
            lat: 38.7,
            lon: -9.1,
            battery_pct: Some(57.4),
            state: Some("available"),
            last_reported_ms: NOW_MS - 61_500,
            trip_epoch: 5,
            vehicle_type_id: Some("seated"),
        };
        let one = |v: FeedVehicle<'_>| {
            let out = vehicle_status(&cfg, [v], NOW_MS);
            out["data"]["vehicles"].get(0).cloned()
        };
        let v = one(base).expect("listed");
        assert_eq!(
            v["vehicle_id"],
            public_vehicle_id("test-rotation-secret", "KS-7", 5)
        );
        assert_eq!(v["vehicle_type_id"], "seated");
        assert_eq!(v["current_fuel_percent"], 0.57);
        assert_eq!(v["current_range_meters"], 31_350.0);
        assert_eq!(v["last_reported"], "2025-12-31T23:58:58Z");
        assert_eq!(
            (v["lat"].as_f64(), v["lon"].as_f64()),
            (Some(38.7), Some(-9.1))
        );
        // Default type, battery clamped, a report from the future clamped to now.
        let v = one(FeedVehicle {
            vehicle_type_id: None,
            battery_pct: Some(130.0),
            last_reported_ms: NOW_MS + 9_000,
            ..base
        })
        .unwrap();
        assert_eq!(
            (
                v["vehicle_type_id"].as_str(),
                v["current_range_meters"].as_f64()
            ),
            (Some("scooter"), Some(40_000.0))
        );
        assert_eq!(v["last_reported"], "2026-01-01T00:00:00Z");
        // A bike needs no battery; a motorised vehicle without one is not listed.
        let bike = one(FeedVehicle {
            vehicle_type_id: Some("bike"),
            battery_pct: None,
            last_reported_ms: 0,
            ..base
        })
        .unwrap();
        assert!(bike.get("current_range_meters").is_none() && bike.get("last_reported").is_none());
        assert_eq!(
            one(FeedVehicle {
                battery_pct: None,
                ..base
            }),
            None
        );
        assert_eq!(
            one(FeedVehicle {
                battery_pct: Some(f64::NAN),
                ..base
            }),
            None
        );
        assert_eq!(
            one(FeedVehicle {
                vehicle_type_id: Some("hoverboard"),
                ..base
            }),
            None
        );
        assert_eq!(
            one(FeedVehicle {
                lat: f64::NAN,
                ..base
            }),
            None
        );
        assert_eq!(one(FeedVehicle { lon: 180.5, ..base }), None);
    }

    #[test]
    fn gbfs_vehicle_ids_are_private_rotating_and_unique() {
        let cfg = config();
        let fleet = fleet(700);
        let out = vehicle_status(&cfg, fleet.iter().map(|(id, i)| vehicle(id, *i)), NOW_MS);
        let text = out.to_string();
        assert!(!text.contains("KS-"), "a fleet id leaked into the feed");
        let ids: Vec<&str> = out["data"]["vehicles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["vehicle_id"].as_str().unwrap())
            .collect();
        assert!(ids.len() > 100, "only {} vehicles listed", ids.len());
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids are sorted and unique"
        );
        // Listed exactly: available or non_operational, on the map, of a known type, with a
        // battery unless a bike.
        let expected = fleet
            .iter()
            .map(|(id, i)| vehicle(id, *i))
            .filter(|v| matches!(v.state, Some("available" | "non_operational")))
            .filter(|v| v.lat <= 90.0)
            .filter(|v| v.vehicle_type_id != Some("hoverboard"))
            .filter(|v| v.battery_pct.is_some() || v.vehicle_type_id == Some("bike"))
            .count();
        assert_eq!(ids.len(), expected);

        let id =
            |vehicle: &str, epoch: u64| public_vehicle_id(&cfg.rotation_secret, vehicle, epoch);
        assert_eq!(id("KS-1", 7), id("KS-1", 7), "stable within a trip epoch");
        assert_ne!(id("KS-1", 7), id("KS-1", 8), "rotated after a trip");
        assert_ne!(id("KS-1", 7), id("KS-2", 7));
        assert_ne!(
            id("KS-1", 7),
            public_vehicle_id("another-secret", "KS-1", 7)
        );
        assert_ne!(
            id("KS-1:1", 2),
            id("KS-1", 12),
            "the encoding is unambiguous"
        );
        assert_eq!(id("KS-1", 7).len(), 32);

        // The same vehicle twice in the input is listed once.
        let v = FeedVehicle {
            battery_pct: Some(50.0),
            lat: 38.7,
            state: Some("available"),
            ..vehicle("KS-1", 7)
        };
        let out = vehicle_status(&cfg, [v, v], NOW_MS);
        assert_eq!(out["data"]["vehicles"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn gbfs_hmac_matches_rfc_4231() {
        let hex = |bytes: [u8; 32]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(hmac_sha256(&[0x0b; 20], &[b"Hi There"])),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex(hmac_sha256(
                b"Jefe",
                &[b"what do ya want ", b"for nothing?"]
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        assert_eq!(
            hex(hmac_sha256(
                &[0xaa; 131],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn gbfs_zone_rules_by_kind() {
        let cfg = config();
        let geometries = geometries();
        let out = geofencing_zones(&cfg, zones(&geometries), NOW_MS);
        let features = out["data"]["geofencing_zones"]["features"]
            .as_array()
            .unwrap();
        let summary: Vec<(String, bool, bool, bool, Option<u64>)> = features
            .iter()
            .map(|f| {
                let name = f["properties"]["name"][0]["text"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                let r = &f["properties"]["rules"][0];
                assert_eq!(r["vehicle_type_ids"], json!(["scooter", "seated", "bike"]));
                let b = |k: &str| r[k].as_bool().unwrap();
                (
                    name,
                    b("ride_start_allowed"),
                    b("ride_end_allowed"),
                    b("ride_through_allowed"),
                    r["maximum_speed_kph"].as_u64(),
                )
            })
            .collect();
        let expect = [
            ("bridge", false, false, false, None),
            ("", false, false, false, None),
            ("praça", false, false, true, None),
            ("market", false, false, true, None),
            ("old town", true, true, true, Some(10)),
            ("school", true, true, true, None),
            ("city", true, true, true, None),
            ("riverside", true, true, true, None),
        ];
        let expect: Vec<_> = expect
            .iter()
            .map(|(n, s, e, t, k)| (n.to_string(), *s, *e, *t, *k))
            .collect();
        assert_eq!(
            summary, expect,
            "most restrictive first, unusable zones left out"
        );
        let outside = |out: &Value| {
            let r = &out["data"]["global_rules"][0];
            (
                r["ride_start_allowed"].clone(),
                r["ride_end_allowed"].clone(),
                r["ride_through_allowed"].clone(),
            )
        };
        assert_eq!(outside(&out), (json!(false), json!(false), json!(true)));
        let without_area = zones(&geometries)
            .into_iter()
            .filter(|z| z.kind != "operating_area");
        let out = geofencing_zones(&cfg, without_area, NOW_MS);
        assert_eq!(outside(&out), (json!(true), json!(true), json!(true)));
    }

    #[test]
    fn gbfs_geometry_becomes_right_handed_multipolygon() {
        // Clockwise, open, with altitude and a counter-clockwise hole.
        let polygon = json!({"type": "Polygon", "coordinates": [
            [[0.0, 0.0, 5.0], [0.0, 1.0, 5.0], [1.0, 1.0, 5.0], [1.0, 0.0, 5.0]],
            [[0.2, 0.2], [0.4, 0.2], [0.4, 0.4], [0.2, 0.2]],
            [[0.5, 0.5], [0.6, 0.6], [0.5, 0.5]],
        ]});
        assert_eq!(
            multipolygon(&polygon),
            Some(json!({"type": "MultiPolygon", "coordinates": [[
                [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]],
                [[0.2, 0.2], [0.4, 0.4], [0.4, 0.2], [0.2, 0.2]],
            ]]}))
        );
        assert_eq!(
            multipolygon(&json!({"type": "Polygon", "coordinates": []})),
            None
        );
        assert_eq!(
            multipolygon(
                &json!({"type": "Polygon", "coordinates": [[[0, 0], [200, 0], [0, 1], [0, 0]]]})
            ),
            None
        );
        assert_eq!(
            multipolygon(&json!({"type": "Point", "coordinates": [0, 0]})),
            None
        );
        assert_eq!(multipolygon(&json!({"coordinates": []})), None);
    }

    #[test]
    fn gbfs_config_defaults_and_validation() {
        let parsed: GbfsConfig = serde_json::from_value(json!({})).unwrap();
        assert_eq!(parsed, GbfsConfig::default());
        parsed.validate().unwrap();
        let partial: GbfsConfig = serde_json::from_value(json!({
            "vehicle_types": [{"vehicle_type_id": "moped", "form_factor": "moped", "propulsion_type": "electric"}],
            "default_vehicle_type_id": "moped",
        }))
        .unwrap();
        assert_eq!(partial.vehicle_types[0].max_range_meters, 40_000.0);
        partial.validate().unwrap();
        assert!(serde_json::from_value::<GbfsConfig>(json!({"ttl": 5})).is_err());
        assert!(
            serde_json::from_value::<GbfsConfig>(json!({"vehicle_types": [{"range": 5}]})).is_err()
        );

        let check = |change: fn(&mut GbfsConfig), field: &str| {
            let mut cfg = config();
            change(&mut cfg);
            assert_eq!(cfg.validate().map_err(|e| e.field), Err(field.to_owned()));
        };
        check(|c| c.languages = vec!["EN".into()], "languages");
        check(|c| c.languages.clear(), "languages");
        check(
            |c| c.phone_number = Some("021 000 000".into()),
            "phone_number",
        );
        check(
            |c| c.feed_contact_email = "nobody".into(),
            "feed_contact_email",
        );
        check(
            |c| c.license_url = Some("https://acme.example.com/licence".into()),
            "license_id",
        );
        check(|c| c.url = Some("acme.example.com".into()), "url");
        check(
            |c| c.default_vehicle_type_id = "hoverboard".into(),
            "default_vehicle_type_id",
        );
        check(
            |c| c.vehicle_types[1].vehicle_type_id = "scooter".into(),
            "vehicle_types[1].vehicle_type_id",
        );
        check(
            |c| c.vehicle_types[0].max_range_meters = f64::NAN,
            "vehicle_types[0].max_range_meters",
        );
        check(|c| c.opening_hours.clear(), "opening_hours");
    }
}
