//! Micro-benchmarks (`cargo bench`): the per-request costs the load benchmark adds up.
//!
//! - sealing and opening a 2 KB and a 64 KB resource;
//! - a compartment key from the cache (hit) and from the index + key provider (miss);
//! - validating Synthea's Patient, Observation and Encounter against the R4 model, and parsing +
//!   re-serialising a Patient;
//! - one access decision by the shipped Cedar policies, asked afresh (a permit and a refusal) and
//!   remembered;
//! - a whole request in process (routing, token check, JSON, index, object, crypto, audit) for a
//!   Patient read and create, on the embedded default.
//!
//! Results and how to reproduce them: BENCHMARKS.md.

#![expect(clippy::unwrap_used, reason = "benchmark set-up: failing loudly is right")]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, test as actix_test};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fhirvault::auth::{DevIssuer, Role, TokenRequest};
use fhirvault::config::{Settings, dev_issuer_key_path};
use fhirvault::crypto::{CompartmentKey, ObjectIdentity, SecretKey, envelope};
use fhirvault::fhir::{Compartment, model, resource, validate};
use fhirvault::ids::{ResourceId, ResourceType, TenantId, VersionId};
use fhirvault::keys::{KeyService, LocalFileProvider};
use fhirvault::policy::{Action, Policies, Resource as PolicyResource};
use fhirvault::startup::{build_state, open_storage, prepare_data_dir};
use fhirvault::time::Timestamp;
use tokio::runtime::Runtime;

const PATIENT: &str = include_str!("fixtures/synthea-Patient.json");
const OBSERVATION: &str = include_str!("fixtures/synthea-Observation.json");
const ENCOUNTER: &str = include_str!("fixtures/synthea-Encounter.json");

/// A practitioner's development token for `tenant`, valid for an hour.
fn practitioner_token(issuer: &DevIssuer, tenant: &str) -> String {
    let request = TokenRequest::new(TenantId::parse(tenant).unwrap(), Role::Practitioner, Duration::from_secs(3600));
    issuer.issue(&request).unwrap()
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

fn envelope(c: &mut Criterion) {
    let key = CompartmentKey::new(SecretKey::generate().unwrap());
    let tenant = TenantId::parse("demo").unwrap();
    let id = ResourceId::parse("example").unwrap();
    let identity = ObjectIdentity {
        tenant: &tenant,
        location: "local",
        resource_type: ResourceType::parse("Patient").unwrap(),
        id: &id,
        version: VersionId::FIRST,
        compartment: "Patient/example",
    };
    let mut group = c.benchmark_group("envelope");
    for size in [2 * 1024, 64 * 1024] {
        let plaintext = vec![b'x'; size];
        let sealed = envelope::seal(&key, &identity, &plaintext).unwrap();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("seal", size), &plaintext, |b, p| {
            b.iter(|| envelope::seal(&key, &identity, black_box(p)).unwrap());
        });
        group.bench_with_input(BenchmarkId::new("open", size), &sealed, |b, s| {
            b.iter(|| envelope::open(&key, &identity, black_box(s)).unwrap());
        });
    }
    group.finish();
}

fn key_cache(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings { data_dir: dir.path().to_path_buf(), ..Settings::default() };
    prepare_data_dir(&settings).unwrap();
    let (index, _) = rt.block_on(open_storage(&settings)).unwrap();
    let provider = Arc::new(LocalFileProvider::load(&settings.root_key_path().unwrap()).unwrap());
    let cached = KeyService::new(provider.clone(), index.clone(), 1000, Duration::from_secs(600));
    // A cache that keeps nothing: every lookup reads the wrapped key and unwraps it.
    let uncached = KeyService::new(provider, index, 0, Duration::from_secs(600));
    let tenant = TenantId::parse("demo").unwrap();
    rt.block_on(cached.compartment_key_for_write(&tenant, "Patient/example")).unwrap();

    let mut group = c.benchmark_group("compartment_key");
    group.bench_function("hit", |b| {
        b.to_async(&rt).iter(|| async { cached.compartment_key(&tenant, "Patient/example").await.unwrap() });
    });
    group.bench_function("miss (index read + unwrap)", |b| {
        b.to_async(&rt).iter(|| async { uncached.compartment_key(&tenant, "Patient/example").await.unwrap() });
    });
    group.finish();
}

fn validation(c: &mut Criterion) {
    let model = model::r4().unwrap();
    let mut group = c.benchmark_group("validate");
    for (name, text) in [("Patient", PATIENT), ("Observation", OBSERVATION), ("Encounter", ENCOUNTER)] {
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        let map = value.as_object().unwrap().clone();
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(format!("synthea {name}"), |b| {
            b.iter(|| {
                let issues = validate::validate(model, name, black_box(&map));
                assert!(issues.is_empty(), "{issues:?}");
            });
        });
    }
    group.finish();

    let rt = ResourceType::parse("Patient").unwrap();
    let id = ResourceId::parse("example").unwrap();
    c.bench_function("json/patient parse + validate + serialize", |b| {
        b.iter(|| {
            let parsed = resource::parse(model, black_box(PATIENT.as_bytes()), rt).unwrap();
            parsed.stored_json(&id, VersionId::FIRST, Timestamp::from_millis(1_700_000_000_000))
        });
    });
}

fn request(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings { data_dir: dir.path().to_path_buf(), ..Settings::default() };
    let (state, _) = rt.block_on(build_state(&settings)).unwrap();
    let issuer = DevIssuer::load(&dev_issuer_key_path(dir.path()), &settings.auth.audience, 0).unwrap();
    let auth = format!("Bearer {}", practitioner_token(&issuer, "demo"));
    let app = rt.block_on(actix_test::init_service(
        App::new()
            .app_data(state)
            .wrap(actix_web::middleware::from_fn(fhirvault::api::request_context))
            .configure(fhirvault::api::routes),
    ));
    let create = || {
        actix_test::TestRequest::post()
            .uri("/fhir/demo/Patient")
            .insert_header(("Authorization", auth.as_str()))
            .insert_header(("Content-Type", "application/fhir+json"))
            .set_payload(PATIENT)
            .to_request()
    };
    let created = rt.block_on(actix_test::call_service(&app, create()));
    assert_eq!(created.status(), 201);
    let location = created.headers().get("location").unwrap().to_str().unwrap().to_owned();
    let path =
        location.split("/_history").next().unwrap().split("/fhir/").nth(1).map(|p| format!("/fhir/{p}")).unwrap();

    let mut group = c.benchmark_group("request (in process, embedded default)");
    group.bench_function("read Patient", |b| {
        b.to_async(&rt).iter(|| async {
            let req =
                actix_test::TestRequest::get().uri(&path).insert_header(("Authorization", auth.as_str())).to_request();
            let response = actix_test::call_service(&app, req).await;
            assert_eq!(response.status(), 200);
        });
    });
    group.bench_function("create Patient", |b| {
        b.to_async(&rt).iter(|| async {
            let response = actix_test::call_service(&app, create()).await;
            assert_eq!(response.status(), 201);
        });
    });
    group.finish();
}

fn policy(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("issuer.key");
    DevIssuer::ensure_key(&path).unwrap();
    let france = fhirvault::ids::CountryCode::parse("FR").unwrap();
    let issuer = DevIssuer::load(&path, "fhirvault", 0).unwrap().with_default_jurisdiction(france);
    let principal = |tenant: &str| issuer.verify(&practitioner_token(&issuer, tenant)).unwrap();
    let policies = Policies::shipped().unwrap();
    let demo = TenantId::parse("demo").unwrap();
    let compartment = Compartment::Patient(ResourceId::parse("p1").unwrap());
    let resource = PolicyResource {
        tenant: &demo,
        resource_type: ResourceType::parse("Observation").unwrap(),
        compartment: Some(&compartment),
        labels: None,
        break_glass: false,
    };
    let (own, other) = (principal("demo"), principal("other"));
    assert!(policies.authorize(&own, Action::Read, &resource).is_ok(), "the permit case permits");
    assert!(policies.authorize(&other, Action::Read, &resource).is_err(), "the deny case denies");
    let mut group = c.benchmark_group("access decision (shipped policies)");
    // Asked afresh: what a decision costs the first time the server sees its inputs.
    group.bench_function("permit: practitioner reads an Observation", |b| {
        b.iter(|| black_box(policies.decide_afresh(&own, Action::Read, &resource).is_ok()));
    });
    group.bench_function("deny: another tenant's token", |b| {
        b.iter(|| black_box(policies.decide_afresh(&other, Action::Read, &resource).is_err()));
    });
    // The heaviest shipped decision: an opened record with a sensitive label, by break-glass.
    let labels = vec!["PSY".to_owned(), "N".to_owned()];
    let labelled = PolicyResource { labels: Some(&labels), break_glass: true, ..resource };
    assert!(policies.authorize(&own, Action::Read, &labelled).is_ok(), "break-glass permits");
    group.bench_function("permit: labelled record, break-glass", |b| {
        b.iter(|| black_box(policies.decide_afresh(&own, Action::Read, &labelled).is_ok()));
    });
    // Remembered (`policy::memo`): the same reader, another patient's record each time.
    let patients: Vec<Compartment> =
        (0..1_000).map(|i| Compartment::Patient(ResourceId::parse(&format!("p{i}")).unwrap())).collect();
    let mut next = patients.iter().cycle();
    group.bench_function("remembered permit: practitioner reads another patient's Observation", |b| {
        b.iter(|| {
            let compartment = next.next();
            black_box(policies.authorize(&own, Action::Read, &PolicyResource { compartment, ..resource }).is_ok())
        });
    });
    group.finish();

    let cases = [("permit", &own, &resource), ("deny", &other, &resource), ("labelled, break-glass", &own, &labelled)];
    for (name, principal, target) in cases {
        percentiles(name, || black_box(policies.decide_afresh(principal, Action::Read, target).is_ok()));
    }
}

/// The bound on access decisions is on the 99th percentile of single decisions, which
/// criterion's means do not show: time 50,000 of them one by one and print the percentiles.
#[expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]
fn percentiles(name: &str, mut decide: impl FnMut() -> bool) {
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for _ in 0..50_000 {
        let started = std::time::Instant::now();
        decide();
        histogram.record(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)).unwrap();
    }
    let micros = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "access decision ({name}), 50,000 single decisions: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs",
        micros(0.5),
        micros(0.99),
        micros(0.999),
        histogram.max() as f64 / 1000.0
    );
}

criterion_group!(benches, envelope, key_cache, validation, policy, request);
criterion_main!(benches);
