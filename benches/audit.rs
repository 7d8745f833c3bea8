//! Audit log benchmarks (`cargo bench --bench audit`):
//!
//! - sealing: one pass of the sealer over 5,000 inbox records on the embedded SQLite index and
//!   on PostgreSQL (`FHIRVAULT_TEST_POSTGRES_URL`, as for the tests; skipped when it does not
//!   answer): read the inbox, render each AuditEvent, hash it into the tree, write entries,
//!   hashes and checkpoints, empty the inbox, commit; and the same pass's CPU work alone
//!   (render, hash, extend the tree, sign), without the database;
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

    // The same pass through a real index, on a log that grows as the benchmark runs (as a
    // server's does): each iteration appends 5,000 records to the inbox (not timed), then
    // times one sealing transaction.
    let dir = tempfile::tempdir().unwrap();
    let sqlite = runtime.block_on(sqlite_index(dir.path()));
    group.bench_function("SQLite index: one pass of 5,000 records", |b| {
        let mut sealer = sealer(&key);
        b.iter_custom(|iters| runtime.block_on(timed_passes(sqlite.as_ref(), &mut sealer, &records, iters)));
    });
    match runtime.block_on(postgres_index()) {
        Some((postgres, database)) => {
            group.bench_function("PostgreSQL index: one pass of 5,000 records", |b| {
                let mut sealer = sealer(&key);
                b.iter_custom(|iters| runtime.block_on(timed_passes(postgres.as_ref(), &mut sealer, &records, iters)));
            });
            drop(postgres);
            runtime.block_on(database.drop());
        }
        None => eprintln!("PostgreSQL is not reachable at {}: its sealing pass is not measured", postgres_admin_url()),
    }
    group.finish();
}

/// `iters` sealing passes of `records` (appended to the inbox first, untimed): their time.
async fn timed_passes(index: &dyn Index, sealer: &mut Sealer, records: &[AuditRecord], iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        index.append_audit(records).await.unwrap();
        let started = std::time::Instant::now();
        let report = index.seal(u32::try_from(records.len()).unwrap(), sealer).await.unwrap();
        total += started.elapsed();
        assert_eq!(report.sealed, records.len());
    }
    total
}

#[expect(clippy::disallowed_methods, reason = "the same variable the test suites read, not server configuration")]
fn postgres_admin_url() -> String {
    std::env::var("FHIRVAULT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database of its own on the PostgreSQL server the tests use, dropped by `drop`.
struct BenchDatabase {
    admin: String,
    name: String,
}

impl BenchDatabase {
    async fn drop(self) {
        use sqlx::Connection as _;
        let mut admin = sqlx::PgConnection::connect(&self.admin).await.unwrap();
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.unwrap();
    }
}

/// A fresh PostgreSQL index, or `None` when no server answers.
async fn postgres_index() -> Option<(Arc<dyn Index>, BenchDatabase)> {
    use sqlx::Connection as _;
    let admin = postgres_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
    let name = format!("fhirvault_bench_audit_{}", std::process::id());
    let sql = format!("CREATE DATABASE \"{name}\"");
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    let url = SecretString::from(format!("{base}/{name}"));
    let options = IndexOptions {
        max_connections: 4,
        connect_timeout: Duration::from_secs(10),
        statement_timeout: Duration::from_secs(60),
    };
    let index = open_index(&url, &options).await.unwrap();
    Some((index, BenchDatabase { admin, name }))
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
        columns_altered: Vec::new(),
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
/// log is built once, when the benchmark first runs (about two minutes, not timed).
fn verifying_a_million(c: &mut Criterion) {
    const EVENTS: u64 = 1_000_000;
    let runtime = Runtime::new().unwrap();
    let key = key();
    let dir = tempfile::tempdir().unwrap();
    let vkey = key.verifier_key("demo");
    let locations = fhirvault::storage::Locations::new();
    let mut group = c.benchmark_group("audit verify");
    group.throughput(Throughput::Elements(EVENTS));
    group.sample_size(10);
    // Built on first use, so that a run filtered to other benchmarks does not wait for it.
    let mut built: Option<Arc<dyn Index>> = None;
    group.bench_function("audit verify of 1,000,000 sealed events in a SQLite index", |b| {
        let index = built.get_or_insert_with(|| {
            runtime.block_on(async {
                let index = sqlite_index(dir.path()).await;
                let mut sealer = sealer(&key);
                for start in (0..EVENTS).step_by(usize::try_from(BATCH).unwrap()) {
                    let records: Vec<AuditRecord> = (start..start + BATCH).map(record).collect();
                    index.append_audit(&records).await.unwrap();
                    index.seal(u32::try_from(BATCH).unwrap(), &mut sealer).await.unwrap();
                }
                index
            })
        });
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
