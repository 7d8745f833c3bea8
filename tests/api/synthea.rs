//! Real data: the 100 Synthea patients of `../shared/data/synthea-r4-100.tar.zst` (or the
//! archive `FHIRVAULT_SYNTHEA` names) loaded as the transaction Bundles they are. Every Bundle
//! must commit whole; then searches must count what the files hold, counted here from the JSON
//! directly; and the index must hold no patient's name, identifier or address in clear.
//!
//! The archive is shared test data, not part of the project: without it, the test says so and
//! passes (a fresh clone runs the rest of the suite on committed fixtures).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use futures::StreamExt as _;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{TestApp, spawn_app};

const SYNTHEA_SYSTEM: &str = "https://github.com/synthetichealth/synthea";

#[expect(clippy::disallowed_methods, reason = "tests find their shared data by environment")]
fn archive() -> Option<PathBuf> {
    let path = std::env::var("FHIRVAULT_SYNTHEA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/synthea-r4-100.tar.zst"));
    path.exists().then_some(path)
}

fn resources<'a>(bundle: &'a Value, rt: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    bundle["entry"].as_array().into_iter().flatten().map(|e| &e["resource"]).filter(move |r| r["resourceType"] == rt)
}

async fn post(app: &TestApp, bundle: &Value) -> (StatusCode, Value) {
    let response = app
        .request(Method::POST, "")
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn total(app: &TestApp, query: &str) -> u64 {
    let response = app.get(&format!("{query}&_summary=count")).await;
    assert_eq!(response.status(), StatusCode::OK, "{query}");
    let bundle: Value = response.json().await.unwrap();
    bundle["total"].as_u64().unwrap()
}

/// Every page of a search, through its `next` links: what matched and what was included.
async fn pages(app: &TestApp, query: &str) -> (Vec<String>, BTreeSet<String>) {
    let (mut matched, mut included) = (Vec::new(), BTreeSet::new());
    let mut url = query.to_owned();
    loop {
        let response = app.get(&url).await;
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        let bundle: Value = response.json().await.unwrap();
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            let r = &entry["resource"];
            let key = format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap());
            if entry["search"]["mode"] == "match" {
                matched.push(key);
            } else {
                included.insert(key);
            }
        }
        let next = bundle["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next");
        let Some(next) = next.and_then(|l| l["url"].as_str()) else { break };
        // The link is absolute; the test client takes a path below the tenant base.
        url = next.strip_prefix(&format!("{}/", app.base)).unwrap().to_owned();
    }
    (matched, included)
}

/// Lowercase words of a name, as a reader would split them.
fn words(s: &str) -> Vec<String> {
    s.to_lowercase().replace('\'', "").split(|c: char| !c.is_alphanumeric()).map(str::to_owned).collect()
}

#[tokio::test]
async fn the_synthea_patients_load_as_transactions_and_searches_count_what_the_files_hold() {
    let Some(path) = archive() else {
        eprintln!("skipped: the Synthea archive is not here (set FHIRVAULT_SYNTHEA to its path)");
        return;
    };
    let app = spawn_app().await;
    let bundles = fhirvault::bench::synthea::read_bundles(&path).unwrap();
    let (shared, patients): (Vec<_>, Vec<_>) = bundles.into_iter().partition(|(name, _)| {
        let file = name.rsplit('/').next().unwrap();
        file.starts_with("hospitalInformation") || file.starts_with("practitionerInformation")
    });
    assert_eq!((shared.len(), patients.len()), (2, 100));

    // Every Bundle commits whole: one `201 Created` per entry.
    let mut entries = 0;
    for (name, bundle) in &shared {
        let (status, answer) = post(&app, bundle).await;
        assert_eq!(status, StatusCode::OK, "{name}: {answer}");
        entries += answer["entry"].as_array().unwrap().len();
    }
    let answers: Vec<(String, StatusCode, Value)> = futures::stream::iter(&patients)
        .map(|(name, bundle)| async {
            let (status, answer) = post(&app, bundle).await;
            (name.clone(), status, answer)
        })
        .buffered(4)
        .collect()
        .await;
    for ((name, status, answer), (_, bundle)) in answers.iter().zip(&patients) {
        assert_eq!(*status, StatusCode::OK, "{name}: {answer}");
        let statuses: Vec<&str> =
            answer["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
        assert_eq!(statuses.len(), bundle["entry"].as_array().unwrap().len(), "{name}");
        assert!(statuses.iter().all(|s| *s == "201 Created"), "{name}");
        entries += statuses.len();
    }
    assert!(entries > 28_000, "{entries} resources");

    // Family names: how many patients have a name word starting with each.
    let families: Vec<Vec<String>> = patients
        .iter()
        .map(|(_, b)| {
            let patient = resources(b, "Patient").next().unwrap();
            patient["name"].as_array().unwrap().iter().flat_map(|n| words(n["family"].as_str().unwrap_or(""))).collect()
        })
        .collect();
    let loinc = "http://loinc.org";
    let since = chrono::DateTime::parse_from_rfc3339("2015-01-01T00:00:00Z").unwrap();
    for (_, bundle) in patients.iter().step_by(9) {
        let patient = resources(bundle, "Patient").next().unwrap();
        let family = patient["name"][0]["family"].as_str().unwrap();
        let query = words(family).into_iter().next().unwrap();
        let expected = families.iter().filter(|words| words.iter().any(|w| w.starts_with(&query))).count();
        assert_eq!(total(&app, &format!("Patient?family={query}")).await, expected as u64, "family {family}");

        // The server's id for this patient, by the identifier Synthea gave it.
        let synthea_id = patient["identifier"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["system"] == SYNTHEA_SYSTEM)
            .and_then(|i| i["value"].as_str())
            .unwrap();
        let found: Value =
            app.get(&format!("Patient?identifier={SYNTHEA_SYSTEM}|{synthea_id}")).await.json().await.unwrap();
        assert_eq!(found["total"], 1, "{synthea_id}");
        let id = found["entry"][0]["resource"]["id"].as_str().unwrap().to_owned();

        // Observations of this patient with its most frequent LOINC code, since 2015.
        let observations: Vec<&Value> = resources(bundle, "Observation").collect();
        let mut codes: BTreeMap<&str, usize> = BTreeMap::new();
        for obs in &observations {
            for coding in obs["code"]["coding"].as_array().into_iter().flatten().filter(|c| c["system"] == loinc) {
                *codes.entry(coding["code"].as_str().unwrap()).or_default() += 1;
            }
        }
        let Some((code, _)) = codes.iter().max_by_key(|(code, n)| (**n, *code)) else { continue };
        let expected = observations
            .iter()
            .filter(|o| {
                o["code"]["coding"].as_array().unwrap().iter().any(|c| c["system"] == loinc && c["code"] == *code)
            })
            .filter(|o| {
                let when = chrono::DateTime::parse_from_rfc3339(o["effectiveDateTime"].as_str().unwrap()).unwrap();
                when >= since
            })
            .count();
        let query = format!("Observation?patient={id}&code={loinc}|{code}&date=ge2015-01-01");
        assert_eq!(total(&app, &query).await, expected as u64, "{query}");

        let encounters = resources(bundle, "Encounter").count();
        assert_eq!(total(&app, &format!("Encounter?subject=Patient/{id}")).await, encounters as u64);

        // With their practitioners: every encounter matches once, and the practitioners
        // included over the pages are the distinct Practitioner entries the file's encounters
        // name (by `fullUrl`).
        let practitioner_urls: BTreeSet<&str> = bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "Practitioner")
            .filter_map(|e| e["fullUrl"].as_str())
            .collect();
        let practitioners: BTreeSet<&str> = resources(bundle, "Encounter")
            .flat_map(|e| e["participant"].as_array().into_iter().flatten())
            .filter_map(|p| p["individual"]["reference"].as_str())
            .filter(|r| practitioner_urls.contains(r))
            .collect();
        let (matched, included) =
            pages(&app, &format!("Encounter?subject={id}&_include=Encounter:practitioner&_count=200")).await;
        assert_eq!(matched.len(), encounters, "{id}");
        assert!(included.iter().all(|e| e.starts_with("Practitioner/")), "{included:?}");
        assert_eq!(included.len(), practitioners.len(), "{id}");
    }

    // Nothing that names a patient reaches the index in clear.
    let index = String::from_utf8_lossy(&app.index_contents().await).to_lowercase();
    for (name, bundle) in &patients {
        let patient = resources(bundle, "Patient").next().unwrap();
        let mut secrets: Vec<String> = Vec::new();
        for n in patient["name"].as_array().unwrap() {
            secrets.extend(n["family"].as_str().map(str::to_owned));
            secrets.extend(n["given"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned));
        }
        for identifier in patient["identifier"].as_array().unwrap() {
            secrets.extend(identifier["value"].as_str().map(str::to_owned));
        }
        for address in patient["address"].as_array().into_iter().flatten() {
            secrets
                .extend(address["line"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned));
        }
        for secret in secrets.iter().map(|s| s.to_lowercase()).filter(|s| s.len() >= 6) {
            assert!(!index.contains(&secret), "{name}: `{secret}` is in the index");
        }
    }
}
