//! Audit log benchmarks (`cargo bench --bench audit`):
//!
//! - sealing: one pass of the sealer over 5,000 inbox records on the embedded SQLite index
//!   (read the inbox, render each AuditEvent, hash it into the tree, write entries, hashes and
//!   checkpoints, empty the inbox, commit), and the same pass's CPU work alone (render, hash,
//!   extend the tree, sign), without the database;
//! - verifying: hashing 100,000 stored events, and rebuilding and checking their tree against
//!   100 signed checkpoints; and `audit verify` end to end (read from a SQLite index, hash,
//!   rebuild, check) on a log of 1,000,000 events.
//!
//! Results and how to reproduce them: BENCHMARKS.md.

#![expect(clippy::unwrap_used, reason = "benchmark set-up: failing loudly is right")]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fhirvault::audit::log::{LogKey, Tree};
use fhirvault::audit::sealer::{Cadence, Sealer};
use fhirvault::audit::verify::{self, EntrySummary, FoundCheckpoint, LogEvidence};
use fhirvault::audit::{Agent, AuditAction, AuditRecord, RequestMeta, Target, event};
use fhirvault::ids::{ResourceId, ResourceType, TenantId, VersionId};
use fhirvault::storage::audit_log::{InboxEntry, LogHead};
use fhirvault::storage::{Index, IndexOptions, LogSealer as _, open_index};
use secrecy::SecretString;
use tokio::runtime::Runtime;

const BATCH: u64 = 5_000;

/// A read of an Observation in a patient's compartment, as a practitioner's request leaves it.
fn record(i: u64) -> AuditRecord {
    let meta = RequestMeta { request_id: format!("01J{i:020}"), source_ip: Some("10.1.2.3".into()), break_glass: None };
    let agent = Agent {
        subject: Some(format!("practitioner-{}", i % 50)),
        issuer: Some("https://idp.hospital.example/realms/care".into()),
        role: Some("practitioner".into()),
        jurisdiction: Some("FR".into()),
        purpose: Some("TREAT".into()),
        token_id: Some(format!("jti-{i:032}")),
    };
    let target = Target {
        resource_type: Some(ResourceType::parse("Observation").unwrap()),
        resource_id: Some(ResourceId::parse(&format!("obs-{i}")).unwrap()),
        version: Some(VersionId::from_u32(1).unwrap()),
        compartment: Some(format!("Patient/p-{}", i % 2_000)),
    };
    AuditRecord::new(&meta, Some(&TenantId::parse("demo").unwrap()), agent, AuditAction::Read)
        .target(&target)
        .policy(Some("clinical-access"))
}

fn sealer(key: &Arc<LogKey>) -> Sealer {
    let cadence = Cadence {
        batch: u32::try_from(BATCH).unwrap(),
        idle: Duration::from_millis(200),
        checkpoint_every_entries: 1_000,
        checkpoint_every: Duration::from_secs(1),
    };
    Sealer::new(key.clone(), cadence, [TenantId::parse("demo").unwrap()])
}

/// A fresh embedded index in `dir`.
async fn sqlite_index(dir: &std::path::Path) -> Arc<dyn Index> {
    let url = SecretString::from(format!("sqlite://{}", dir.join("index.sqlite").display()));
    let options = IndexOptions {
        max_connections: 4,
        connect_timeout: Duration::from_secs(10),
        statement_timeout: Duration::from_secs(60),
    };
    open_index(&url, &options).await.unwrap()
}

fn key() -> Arc<LogKey> {
    Arc::new(LogKey::parse(&LogKey::generate("bench.example/audit").unwrap()).unwrap())
}

fn sealing(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let key = key();
    let records: Vec<AuditRecord> = (0..BATCH).map(record).collect();
    let mut group = c.benchmark_group("audit seal");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(10);

    group.bench_function("CPU only: render, hash, extend the tree, sign (5,000 records)", |b| {
        b.iter_batched(
            || (sealer(&key), records.iter().enumerate().map(|(i, r)| InboxEntry { seq: i as i64, record: r.clone() })),
            |(mut sealer, inbox)| {
                let heads = BTreeMap::from([("demo".to_owned(), LogHead::default())]);
                black_box(sealer.seal(&heads, Vec::new(), inbox.collect()).unwrap())
            },
            BatchSize::LargeInput,
        );
    });

    // The same pass through a real index: a fresh SQLite database with the records in its
    // inbox (set-up, not timed), then one sealing transaction.
    group.bench_function("SQLite index: one pass of 5,000 records", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let index: Arc<dyn Index> = runtime.block_on(async {
                    let index = sqlite_index(dir.path()).await;
                    index.append_audit(&records).await.unwrap();
                    index
                });
                (dir, index, sealer(&key))
            },
            |(_dir, index, mut sealer)| {
                let report = runtime.block_on(index.seal(u32::try_from(BATCH).unwrap(), &mut sealer)).unwrap();
                assert_eq!(report.sealed as u64, BATCH);
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

fn verifying(c: &mut Criterion) {
    const EVENTS: u64 = 100_000;
    let key = key();
    let events: Vec<Vec<u8>> = (0..EVENTS).map(|i| event::render(&record(i), i)).collect();
    let summaries: Vec<EntrySummary> = events.iter().map(|e| EntrySummary::of(e)).collect();
    let mut tree = Tree::new();
    let mut checkpoints = Vec::new();
    for (i, s) in summaries.iter().enumerate() {
        tree.push(s.leaf).unwrap();
        let size = i as u64 + 1;
        if size.is_multiple_of(1_000) {
            let note = key.sign("demo", size, tree.root_at(size).unwrap()).unwrap();
            checkpoints.push(FoundCheckpoint { source: format!("index:{size}"), note: note.into_bytes() });
        }
    }
    let evidence = LogEvidence {
        log: "demo".into(),
        entries: summaries,
        stored_hashes: Some(tree.stored_hashes().to_vec()),
        checkpoints,
    };
    let vkey = key.verifier_key("demo");

    let mut group = c.benchmark_group("audit verify");
    group.throughput(Throughput::Elements(EVENTS));
    group.sample_size(10);
    group.bench_function("hash 100,000 stored events (leaf hash and claimed index)", |b| {
        b.iter(|| black_box(events.iter().map(|e| EntrySummary::of(e)).collect::<Vec<_>>()));
    });
    group.bench_function("rebuild and check a tree of 100,000 against 100 checkpoints", |b| {
        b.iter(|| {
            let report = verify::verify_log(&evidence, &vkey);
            assert!(report.ok());
            report
        });
    });
    group.finish();
}

/// `audit verify` end to end on a log of a million sealed events in a SQLite index: read every
/// entry, stored hash and checkpoint (`verify::gather`), then rebuild and check the tree. The
/// log is built once (about two minutes, not timed).
fn verifying_a_million(c: &mut Criterion) {
    const EVENTS: u64 = 1_000_000;
    let runtime = Runtime::new().unwrap();
    let key = key();
    let dir = tempfile::tempdir().unwrap();
    let index: Arc<dyn Index> = runtime.block_on(async {
        let index = sqlite_index(dir.path()).await;
        let mut sealer = sealer(&key);
        for start in (0..EVENTS).step_by(usize::try_from(BATCH).unwrap()) {
            let records: Vec<AuditRecord> = (start..start + BATCH).map(record).collect();
            index.append_audit(&records).await.unwrap();
            index.seal(u32::try_from(BATCH).unwrap(), &mut sealer).await.unwrap();
        }
        index
    });
    let vkey = key.verifier_key("demo");
    let locations = fhirvault::storage::Locations::new();
    let mut group = c.benchmark_group("audit verify");
    group.throughput(Throughput::Elements(EVENTS));
    group.sample_size(10);
    group.bench_function("audit verify of 1,000,000 sealed events in a SQLite index", |b| {
        b.iter(|| {
            let evidence = runtime.block_on(verify::gather(index.as_ref(), &locations, "demo")).unwrap();
            let report = verify::verify_log(&evidence, &vkey);
            assert!(report.ok() && report.verified_size == EVENTS, "{:?}", report.findings);
            report
        });
    });
    group.finish();
}

criterion_group!(benches, sealing, verifying, verifying_a_million);
criterion_main!(benches);
