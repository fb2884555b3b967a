//! The official MDS 2.0 OpenAPI models as JSON Schemas, for the tests of this crate and the
//! live tests of the binary (which include this file by path).
//!
//! The models are YAML files that `$ref` each other by relative path
//! (`../data-types/uuid.yaml`). [`Mds`] loads the files an endpoint needs into one JSON Schema
//! (2020-12, which OpenAPI 3.1 schemas are) with every file under `$defs`, and rewrites each
//! reference to point there. Three repairs are made on the way, each a defect of the published
//! files rather than a loosening:
//!
//! - a `oneOf` over the four modes (`modes/car-share/…`, `modes/micromobility/…`, …) is cut to
//!   the micromobility branch: the mode schemas overlap (a micromobility record often matches
//!   car-share too), so `oneOf` over them rejects valid records, and Kickstand is a
//!   micromobility provider;
//! - `contains: [a, b, …]` (a list, which is not a schema) becomes `contains: {enum: [a, b, …]}`,
//!   what the mode files mean by it ("trip events need `trip_ids`");
//! - `$id`/`$schema` of embedded files (the GeoJSON schema's) are dropped, so the file is a
//!   plain subschema of the one document.

#![allow(dead_code)]

use jsonschema::Validator;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// The MDS 2.0 OpenAPI models, vendored in `conformance/` at the root of the repository.
pub fn mds_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/mds-2.0-openapi");
    assert!(
        root.join("reference/provider.yaml").is_file(),
        "the MDS 2.0 OpenAPI files are not at {}",
        root.display()
    );
    root
}

pub struct Mds {
    root: PathBuf,
    provider: Value,
}

impl Mds {
    pub fn load() -> Mds {
        let root = mds_root();
        let provider = yaml(&root.join("reference/provider.yaml"));
        Mds { root, provider }
    }

    /// The schema of the 200 answer of `GET path`, as the Provider API declares it.
    pub fn endpoint(&self, path: &str) -> Validator {
        let schema = &self.provider["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"];
        assert!(
            schema.is_object(),
            "provider.yaml has no 200 schema for {path}"
        );
        self.compile(schema.clone(), "reference")
    }

    /// The schema of one model file, such as `models/event.yaml`.
    pub fn model(&self, file: &str) -> Validator {
        self.compile(json!({ "$ref": format!("./{file}") }), "")
    }

    fn compile(&self, schema: Value, dir: &str) -> Validator {
        let mut defs = BTreeMap::new();
        let mut todo = Vec::new();
        let schema = rewrite(schema, Path::new(dir), "", &mut todo);
        while let Some(key) = todo.pop() {
            if defs.contains_key(&key) {
                continue;
            }
            let file = yaml(&self.root.join(&key));
            let dir = Path::new(&key)
                .parent()
                .expect("a file has a folder")
                .to_owned();
            defs.insert(key.clone(), rewrite(file, &dir, &key, &mut todo));
        }
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$defs": defs.into_iter().collect::<Map<_, _>>(),
            "allOf": [schema],
        });
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .expect("the MDS schema compiles")
    }
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A file's `$defs` key (its path under the checkout, `/`-separated) as a JSON pointer token.
fn pointer(key: &str) -> String {
    format!("#/$defs/{}", key.replace('~', "~0").replace('/', "~1"))
}

/// Rewrites one file's schema (`this` is the file's key, `dir` its folder) into the combined
/// document, queueing the files it refers to.
fn rewrite(v: Value, dir: &Path, this: &str, todo: &mut Vec<String>) -> Value {
    match v {
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|i| rewrite(i, dir, this, todo))
                .collect(),
        ),
        Value::Object(obj) => {
            let mut out = Map::new();
            for (k, v) in obj {
                let v = match (k.as_str(), v) {
                    ("x-stoplight" | "$id" | "$schema" | "examples", _) => continue,
                    ("$ref", Value::String(r)) => Value::String(reference(&r, dir, this, todo)),
                    ("contains", Value::Array(values)) => json!({ "enum": values }),
                    ("oneOf", Value::Array(branches)) if is_mode_choice(&branches) => {
                        let micro: Vec<Value> = branches
                            .into_iter()
                            .filter(|b| {
                                b["$ref"]
                                    .as_str()
                                    .unwrap()
                                    .contains("/modes/micromobility/")
                            })
                            .collect();
                        assert_eq!(micro.len(), 1, "one micromobility branch");
                        rewrite(Value::Array(micro), dir, this, todo)
                    }
                    (_, v) => rewrite(v, dir, this, todo),
                };
                out.insert(k, v);
            }
            Value::Object(out)
        }
        v => v,
    }
}

fn is_mode_choice(branches: &[Value]) -> bool {
    !branches.is_empty()
        && branches
            .iter()
            .all(|b| b["$ref"].as_str().is_some_and(|r| r.contains("/modes/")))
}

fn reference(r: &str, dir: &Path, this: &str, todo: &mut Vec<String>) -> String {
    let (file, fragment) = r.split_once('#').unwrap_or((r, ""));
    let key = if file.is_empty() {
        this.to_owned()
    } else {
        let mut parts: Vec<String> = Vec::new();
        for c in dir.join(file).components() {
            match c {
                Component::ParentDir => {
                    parts.pop().expect("a reference stays inside the checkout");
                }
                Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
                _ => {}
            }
        }
        let key = parts.join("/");
        todo.push(key.clone());
        key
    };
    format!("{}{}", pointer(&key), fragment)
}

#[track_caller]
pub fn assert_valid(v: &Validator, body: &Value, what: &str) {
    let errors: Vec<String> = v
        .iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:#?}\nbody: {body:#}");
}

#[track_caller]
pub fn assert_rejects(v: &Validator, body: &Value, what: &str, change: impl FnOnce(&mut Value)) {
    let mut bad = body.clone();
    change(&mut bad);
    assert_ne!(&bad, body, "{what}: the change changed nothing");
    assert!(!v.is_valid(&bad), "{what}: the schema accepted {bad:#}");
}
