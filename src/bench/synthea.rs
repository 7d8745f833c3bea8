//! The Synthea ingest workload, read from `synthea-r4-100.tar.zst`: one transaction Bundle per
//! patient plus the hospital and practitioner bundles, which load first.
//!
//! Each Bundle is posted as it is to the base, as the transaction it is; the shared Bundles
//! (hospitals, practitioners) first, since patient Bundles may refer to what they hold.

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

/// Every JSON file of the archive, by name, in name order.
pub fn read_bundles(path: &Path) -> Result<Vec<(String, Value)>, String> {
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

/// One job per Bundle, posted as it is (a transaction) to the base.
pub fn ingest_jobs(path: &Path) -> Result<Ingest, String> {
    let bundles = read_bundles(path)?;
    let mut ingest = Ingest { shared: Vec::new(), patients: Vec::new() };
    for (name, bundle) in &bundles {
        let file = name.rsplit('/').next().unwrap_or_default();
        let shared = file.starts_with("hospitalInformation") || file.starts_with("practitionerInformation");
        let resources = bundle.get("entry").and_then(Value::as_array).map_or(0, Vec::len);
        let job = Job(vec![Request {
            method: Method::POST,
            path: String::new(),
            body: Some(Bytes::from(bundle.to_string())),
            want_id: false,
            resources,
        }]);
        if shared { ingest.shared.push(job) } else { ingest.patients.push(job) }
    }
    if ingest.patients.is_empty() {
        return Err(format!("{}: no patient bundles found", path.display()));
    }
    Ok(ingest)
}
