//! The Synthea ingest workload, read from `synthea-r4-100.tar.zst`: one transaction Bundle per
//! patient plus the hospital and practitioner bundles, which load first.
//!
//! Until the server under test takes transaction Bundles, each entry is sent as its own
//! `PUT {type}/{uuid}` (the entry's `urn:uuid:` id), with `urn:uuid:` references rewritten to
//! `{type}/{uuid}`: the same resources and references a transaction would store.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::Path;

use bytes::Bytes;
use reqwest::Method;
use serde_json::Value;

use super::workload::{Job, Request};

/// The two waves of the ingest: shared resources (hospitals, practitioners), then patients.
pub struct Ingest {
    pub shared: Vec<Job>,
    pub patients: Vec<Job>,
}

fn read_bundles(path: &Path) -> Result<Vec<(String, Value)>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let decoder = ruzstd::decoding::StreamingDecoder::new(std::io::BufReader::new(file)).map_err(|e| e.to_string())?;
    let mut archive = tar::Archive::new(decoder);
    let mut bundles = Vec::new();
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let name = entry.path().map_err(|e| e.to_string())?.to_string_lossy().into_owned();
        if !name.ends_with(".json") {
            continue;
        }
        let mut text = String::new();
        entry.read_to_string(&mut text).map_err(|e| format!("{name}: {e}"))?;
        let bundle: Value = serde_json::from_str(&text).map_err(|e| format!("{name}: {e}"))?;
        bundles.push((name, bundle));
    }
    bundles.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(bundles)
}

fn entries(bundle: &Value) -> impl Iterator<Item = (&str, &Value)> {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e.get("fullUrl").and_then(Value::as_str)?, e.get("resource")?)))
}

/// `urn:uuid:X` -> `Type/X`, recursively.
fn rewrite(value: &mut Value, types: &HashMap<String, String>) {
    match value {
        Value::String(s) => {
            if let Some(t) = s.strip_prefix("urn:uuid:").and_then(|uuid| types.get(uuid).map(|t| (t, uuid))) {
                *s = format!("{}/{}", t.0, t.1);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite(v, types)),
        Value::Object(map) => map.values_mut().for_each(|v| rewrite(v, types)),
        _ => {}
    }
}

fn put(uuid: &str, resource: &Value, types: &HashMap<String, String>) -> Option<Request> {
    let rt = resource.get("resourceType").and_then(Value::as_str)?.to_owned();
    let mut resource = resource.clone();
    rewrite(&mut resource, types);
    resource.as_object_mut()?.insert("id".to_owned(), Value::String(uuid.to_owned()));
    Some(Request {
        method: Method::PUT,
        path: format!("{rt}/{uuid}"),
        body: Some(Bytes::from(resource.to_string())),
        want_id: false,
    })
}

pub fn ingest_jobs(path: &Path) -> Result<Ingest, String> {
    let bundles = read_bundles(path)?;
    let mut types = HashMap::new();
    for (_, bundle) in &bundles {
        for (full_url, resource) in entries(bundle) {
            if let (Some(uuid), Some(rt)) =
                (full_url.strip_prefix("urn:uuid:"), resource.get("resourceType").and_then(Value::as_str))
            {
                types.insert(uuid.to_owned(), rt.to_owned());
            }
        }
    }
    let mut ingest = Ingest { shared: Vec::new(), patients: Vec::new() };
    for (name, bundle) in &bundles {
        let file = name.rsplit('/').next().unwrap_or_default();
        let shared = file.starts_with("hospitalInformation") || file.starts_with("practitionerInformation");
        let requests = entries(bundle)
            .filter_map(|(full_url, resource)| put(full_url.strip_prefix("urn:uuid:")?, resource, &types));
        if shared {
            // Independent resources: each its own job, spread over the workers.
            ingest.shared.extend(requests.map(|r| Job(vec![r])));
        } else {
            // One patient's resources in bundle order, on one worker.
            ingest.patients.push(Job(requests.collect()));
        }
    }
    if ingest.patients.is_empty() {
        return Err(format!("{}: no patient bundles found", path.display()));
    }
    Ok(ingest)
}
