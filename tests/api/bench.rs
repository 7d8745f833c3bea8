//! `fhirvault-bench` against the real application: every phase runs, counts and measures what it
//! sent, the Synthea ingest rewrites `urn:uuid:` references, and non-loopback targets are refused.

use fhirvault::bench::{self, Options, Phase, check_target};
use serde_json::json;

use crate::helpers::spawn_app;

fn options(app: &crate::helpers::TestApp, phases: Vec<Phase>) -> Options {
    Options {
        base: app.base.clone(),
        token: Some(app.practitioner()),
        concurrency: 4,
        n: 24,
        warmup: 6,
        phases,
        synthea: None,
        server_pids: vec![std::process::id()],
        allow_remote: false,
    }
}

#[tokio::test]
async fn every_phase_runs_and_is_measured() {
    let app = spawn_app().await;
    let phases = vec![Phase::Warmup, Phase::Create, Phase::CreateObservation, Phase::Read, Phase::Search];
    let report = bench::run(&options(&app, phases)).await.unwrap();
    let names: Vec<&str> = report.phases.iter().map(|p| p.phase.name()).collect();
    assert_eq!(names, ["create", "create-observation", "read", "search"], "the warm-up is not reported");
    for phase in &report.phases {
        assert_eq!((phase.requests, phase.ok), (24, 24), "{phase:?}");
        assert!(phase.errors.is_empty(), "{phase:?}");
        assert!(phase.p50_ms <= phase.p90_ms && phase.p90_ms <= phase.p99_ms && phase.p99_ms <= phase.max_ms);
        assert!(phase.per_second > 0.0 && phase.server_cpu_ms_per_request.is_some());
    }
    // 6 warm-up creates + 24 Patients + 24 Observations.
    let history: serde_json::Value = app.get("Observation/_history?_count=1").await.json().await.unwrap();
    assert_eq!(history["total"], 3 + 24);
    // Each of the first 100 Patients has a family name of its own (the warm-up's are apart).
    let found: serde_json::Value = app.get(&format!("Patient?family={}", bench::family(3))).await.json().await.unwrap();
    assert_eq!(found["total"], 1);
    let table = report.table();
    assert!(table.contains("create-observation") && table.contains("p99 ms"), "{table}");
}

#[tokio::test]
async fn failures_are_counted_by_status() {
    let app = spawn_app().await;
    let mut opts = options(&app, vec![Phase::Create]);
    opts.token = None;
    let report = bench::run(&opts).await.unwrap();
    assert_eq!(report.phases[0].ok, 0);
    assert_eq!(report.phases[0].errors.get("401"), Some(&24));
}

/// A two-bundle Synthea-shaped archive: a hospital bundle and one patient bundle (which, like
/// Synthea's, holds its own copy of its organization).
fn tiny_synthea(dir: &std::path::Path) -> std::path::PathBuf {
    let organization = |uuid: &str| {
        json!({"fullUrl": format!("urn:uuid:{uuid}"),
               "resource": {"resourceType": "Organization", "name": "Hôpital Exemple"},
               "request": {"method": "POST", "url": "Organization"}})
    };
    let hospital = json!({"resourceType": "Bundle", "type": "transaction",
        "entry": [organization("0a1b2c3d-0000-4000-8000-000000000001")]});
    let patient = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        organization("0a1b2c3d-0000-4000-8000-000000000004"),
        {"fullUrl": "urn:uuid:0a1b2c3d-0000-4000-8000-000000000002",
         "resource": {"resourceType": "Patient", "name": [{"family": "Synthea"}],
                      "managingOrganization": {"reference": "urn:uuid:0a1b2c3d-0000-4000-8000-000000000004"}},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:0a1b2c3d-0000-4000-8000-000000000003",
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
                      "subject": {"reference": "urn:uuid:0a1b2c3d-0000-4000-8000-000000000002"}},
         "request": {"method": "POST", "url": "Observation"}}]});
    let mut tar = tar::Builder::new(Vec::new());
    for (name, bundle) in [("r4-100/hospitalInformation1.json", hospital), ("r4-100/Jean_Synthea.json", patient)] {
        let bytes = bundle.to_string().into_bytes();
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes.as_slice()).unwrap();
    }
    let archive = tar.into_inner().unwrap();
    let compressed = ruzstd::encoding::compress_to_vec(archive.as_slice(), ruzstd::encoding::CompressionLevel::Fastest);
    let path = dir.join("synthea.tar.zst");
    std::fs::write(&path, compressed).unwrap();
    path
}

#[tokio::test]
async fn the_synthea_ingest_posts_shared_bundles_first_as_transactions() {
    let app = spawn_app().await;
    let mut opts = options(&app, vec![Phase::Ingest]);
    opts.synthea = Some(tiny_synthea(app.data_path()));
    let report = bench::run(&opts).await.unwrap();
    let summary: Vec<(&str, u64, u64, u64)> =
        report.phases.iter().map(|p| (p.phase.name(), p.requests, p.ok, p.resources)).collect();
    assert_eq!(summary, [("ingest-shared", 1, 1, 1), ("ingest-patients", 1, 1, 3)]);
    let found: serde_json::Value = app.get("Patient?family=Synthea").await.json().await.unwrap();
    let patient = &found["entry"][0]["resource"];
    let organization = patient["managingOrganization"]["reference"].as_str().unwrap();
    assert_eq!(app.get(organization).await.status(), 200, "{organization}");
    let subject = format!("Patient/{}", patient["id"].as_str().unwrap());
    let obs: serde_json::Value = app.get(&format!("Observation?subject={subject}")).await.json().await.unwrap();
    assert_eq!(obs["total"], 1);
}

#[tokio::test]
async fn the_transaction_phase_sends_fifty_entry_bundles() {
    let app = spawn_app().await;
    let mut opts = options(&app, vec![Phase::Transaction]);
    opts.n = 20;
    let report = bench::run(&opts).await.unwrap();
    let phase = &report.phases[0];
    assert_eq!((phase.requests, phase.ok, phase.resources), (2, 2, 100), "{phase:?}");
    let history: serde_json::Value = app.get("Observation/_history?_count=1").await.json().await.unwrap();
    assert_eq!(history["total"], 98);
}

#[test]
fn only_loopback_targets_unless_allowed() {
    for ok in ["http://127.0.0.1:8080/fhir/demo", "http://localhost/fhir", "http://[::1]:80/fhir"] {
        assert!(check_target(ok, false).is_ok(), "{ok}");
    }
    let err = check_target("https://fhir.example.org/r4", false).unwrap_err();
    assert!(err.to_string().contains("--allow-remote"), "{err}");
    assert!(check_target("https://fhir.example.org/r4", true).is_ok());
}
