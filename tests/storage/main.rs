//! Storage conformance: the same checks for every index backend and every object store.
//!
//! The index runs on SQLite by default and on PostgreSQL with `FHIRVAULT_TEST_DATABASE=postgres`
//! (each test in its own database, dropped afterwards); `./scripts/test` runs both. Object
//! stores: the local directory always, S3 when a server is configured.

#![expect(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests: a failed expectation is a failed test")]

#[path = "../common/backends.rs"]
mod backends;

use std::sync::Arc;
use std::time::Duration;

use fhirvault::audit::log::LogKey;
use fhirvault::audit::sealer::{Cadence, Sealer};
use fhirvault::audit::verify;
use fhirvault::audit::{Agent, AuditAction, AuditRecord, RequestMeta, Target};
use fhirvault::config::Pkcs11Settings;
use fhirvault::crypto::{SecretKey, WrappedKey};
use fhirvault::ids::{ResourceId, ResourceType, TenantId, VersionId};
use fhirvault::keys::pkcs11::KekProtection;
use fhirvault::keys::{
    KeyProvider, KeyService, LocalFileProvider, Pkcs11Options, Pkcs11Provider, TransitOptions, TransitProvider,
};
use fhirvault::storage::search::{Bound, Cmp, DateRow, Filter, Linked, NumberRow, RefRow, SortBy, SortKey, Unit};
use fhirvault::storage::{
    Committer, Direction, HistoryQuery, Index, IndexOptions, LinkQuery, Locations, Lookup, Lookups, Method, NewVersion,
    ObjectKey, ObjectStorage, Order, Position, SearchQuery, SearchRows, StorageError, VersionCommit, open_index,
};
use fhirvault::time::Timestamp;
use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::backends::{PgDatabase, on_postgres, pkcs11_settings, s3_settings, transit_settings};

/// An empty index of the backend under test, with what keeps it alive.
struct TestIndex {
    index: Arc<dyn Index>,
    url: String,
    _dir: tempfile::TempDir,
    _database: Option<PgDatabase>,
}

fn options() -> IndexOptions {
    IndexOptions {
        max_connections: 8,
        connect_timeout: Duration::from_secs(10),
        statement_timeout: Duration::from_secs(30),
    }
}

async fn fresh_index() -> TestIndex {
    let dir = tempfile::tempdir().unwrap();
    let (url, database) = if on_postgres() {
        let db = PgDatabase::create().await;
        (db.url.clone(), Some(db))
    } else {
        (format!("sqlite://{}", dir.path().join("index.sqlite").display()), None)
    };
    let index = open_index(&SecretString::from(url.clone()), &options()).await.unwrap();
    TestIndex { index, url, _dir: dir, _database: database }
}

fn tenant() -> TenantId {
    TenantId::parse("demo").unwrap()
}

fn patient() -> ResourceType {
    ResourceType::parse("Patient").unwrap()
}

fn v(n: u32) -> VersionId {
    VersionId::from_u32(n).unwrap()
}

fn new_version(id: &str, version: u32, expected: Option<u32>, millis: i64) -> NewVersion {
    let (tenant, rt, rid) = (tenant(), patient(), ResourceId::parse(id).unwrap());
    NewVersion {
        object_key: Some(ObjectKey::new_for(&tenant, rt, &rid, v(version))),
        tenant,
        resource_type: rt,
        id: rid,
        version: v(version),
        method: if version == 1 { Method::Create } else { Method::Update },
        location: "local".to_owned(),
        compartment: format!("Patient/{id}"),
        last_updated: Timestamp::from_millis(millis),
        expected_current: expected.map(v),
    }
}

fn audit(request: &str) -> AuditRecord {
    let meta = RequestMeta { request_id: request.to_owned(), source_ip: None, break_glass: None };
    AuditRecord::new(&meta, Some(&tenant()), Agent::default(), AuditAction::Create)
}

fn history(id: Option<&str>) -> HistoryQuery {
    HistoryQuery {
        tenant: tenant(),
        resource_type: patient(),
        id: id.map(|i| ResourceId::parse(i).unwrap()),
        since: None,
        before_seq: None,
        limit: 100,
    }
}

#[test]
fn both_databases_have_the_same_migrations() {
    let list = |db: &str| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(db);
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        names.sort();
        names
    };
    let (sqlite, postgres) = (list("sqlite"), list("postgres"));
    assert!(!sqlite.is_empty());
    assert_eq!(sqlite, postgres, "migrations/sqlite and migrations/postgres must have the same versions");
}

#[tokio::test]
async fn other_url_schemes_are_refused_by_name() {
    let err = open_index(&SecretString::from("mysql://db/fhir"), &options()).await.err().unwrap();
    assert!(matches!(&err, StorageError::UnsupportedUrl(s) if s == "mysql"), "{err}");
    assert!(err.to_string().contains("use `sqlite://PATH` or `postgres://"), "{err}");
}

#[tokio::test]
async fn a_committed_version_reads_back_exactly() {
    let t = fresh_index().await;
    let (tenant, rt, id) = (tenant(), patient(), ResourceId::parse("p1").unwrap());
    assert!(t.index.current(&tenant, rt, &id).await.unwrap().is_none());
    let new = new_version("p1", 1, None, 1_700_000_000_123);
    let seq = t.index.commit_version(&new, &audit("r1")).await.unwrap();

    let current = t.index.current(&tenant, rt, &id).await.unwrap().unwrap();
    assert_eq!(current.seq, seq);
    assert_eq!((current.version, current.method), (v(1), Method::Create));
    assert_eq!(current.object_key, new.object_key);
    assert_eq!((current.location.as_str(), current.compartment.as_str()), ("local", "Patient/p1"));
    assert_eq!(current.last_updated, Timestamp::from_millis(1_700_000_000_123));
    assert_eq!(t.index.version(&tenant, rt, &id, v(1)).await.unwrap(), Some(current));
    assert!(t.index.version(&tenant, rt, &id, v(2)).await.unwrap().is_none());
    assert!(t.index.knows_object(new.object_key.as_ref().unwrap().as_str()).await.unwrap());
    assert!(!t.index.knows_object("tenants/demo/Patient/p1/1.unknown").await.unwrap());
}

#[tokio::test]
async fn a_stale_expectation_is_a_conflict_and_writes_nothing() {
    let t = fresh_index().await;
    t.index.commit_version(&new_version("p1", 1, None, 1), &audit("r1")).await.unwrap();
    let again = t.index.commit_version(&new_version("p1", 1, None, 2), &audit("r2")).await;
    assert!(matches!(again, Err(StorageError::Conflict { current: Some(c) }) if c == v(1)), "{again:?}");
    let skipped = t.index.commit_version(&new_version("p1", 3, Some(2), 3), &audit("r3")).await;
    assert!(matches!(skipped, Err(StorageError::Conflict { .. })), "{skipped:?}");
    assert_eq!(t.index.history_total(&history(Some("p1"))).await.unwrap(), 1);
}

#[tokio::test]
async fn of_concurrent_writers_of_one_version_exactly_one_wins() {
    let t = fresh_index().await;
    t.index.commit_version(&new_version("p1", 1, None, 1), &audit("r0")).await.unwrap();
    let writers = (0..8).map(|i| {
        let index = t.index.clone();
        tokio::spawn(
            async move { index.commit_version(&new_version("p1", 2, Some(1), 2), &audit(&format!("w{i}"))).await },
        )
    });
    let results = futures::future::join_all(writers).await;
    let won = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    let conflicts = results.iter().filter(|r| matches!(r, Ok(Err(StorageError::Conflict { .. })))).count();
    assert_eq!((won, conflicts), (1, 7), "{results:?}");
    let current = t.index.current(&tenant(), patient(), &ResourceId::parse("p1").unwrap()).await.unwrap().unwrap();
    assert_eq!(current.version, v(2));
}

#[tokio::test]
async fn history_is_newest_first_pages_by_seq_and_filters_by_time() {
    let t = fresh_index().await;
    let mut seqs = Vec::new();
    for (id, version, millis) in [("a", 1, 10), ("b", 1, 20), ("a", 2, 30), ("a", 3, 40), ("b", 2, 50)] {
        let expected = (version > 1).then(|| version - 1);
        seqs.push(t.index.commit_version(&new_version(id, version, expected, millis), &audit("r")).await.unwrap());
    }
    let all = t.index.history(&history(None)).await.unwrap();
    let order: Vec<(String, u32)> = all.iter().map(|r| (r.id.to_string(), r.version.get())).collect();
    assert_eq!(order, [("b", 2), ("a", 3), ("a", 2), ("b", 1), ("a", 1)].map(|(i, n)| (i.to_owned(), n)));
    assert!(all.windows(2).all(|w| w[0].seq > w[1].seq));
    assert_eq!(t.index.history_total(&history(None)).await.unwrap(), 5);

    let page = HistoryQuery { limit: 2, ..history(Some("a")) };
    let first = t.index.history(&page).await.unwrap();
    assert_eq!(first.iter().map(|r| r.version.get()).collect::<Vec<_>>(), [3, 2]);
    let next = HistoryQuery { before_seq: Some(first[1].seq), ..page };
    assert_eq!(t.index.history(&next).await.unwrap().iter().map(|r| r.version.get()).collect::<Vec<_>>(), [1]);

    let since = HistoryQuery { since: Some(Timestamp::from_millis(30)), ..history(None) };
    assert_eq!(t.index.history(&since).await.unwrap().len(), 3);
    assert_eq!(t.index.history_total(&since).await.unwrap(), 3);
    assert_eq!(
        t.index
            .history_total(&HistoryQuery { since: Some(Timestamp::from_millis(30)), ..history(Some("b")) })
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn a_deletion_has_no_object() {
    let t = fresh_index().await;
    t.index.commit_version(&new_version("p1", 1, None, 1), &audit("r1")).await.unwrap();
    let delete = NewVersion { method: Method::Delete, object_key: None, ..new_version("p1", 2, Some(1), 2) };
    t.index.commit_version(&delete, &audit("r2")).await.unwrap();
    let current = t.index.current(&tenant(), patient(), &ResourceId::parse("p1").unwrap()).await.unwrap().unwrap();
    assert!(current.is_deletion() && current.object_key.is_none());
}

#[tokio::test]
async fn a_batch_of_lookups_answers_each_as_current_does() {
    let t = fresh_index().await;
    let other = TenantId::parse("other").unwrap();
    t.index.commit_version(&new_version("p1", 1, None, 1), &audit("r1")).await.unwrap();
    t.index.commit_version(&new_version("p1", 2, Some(1), 2), &audit("r2")).await.unwrap();
    t.index.commit_version(&new_version("p2", 1, None, 3), &audit("r3")).await.unwrap();
    let delete = NewVersion { method: Method::Delete, object_key: None, ..new_version("p2", 2, Some(1), 4) };
    t.index.commit_version(&delete, &audit("r4")).await.unwrap();
    let in_other = NewVersion { tenant: other.clone(), ..new_version("p3", 1, None, 5) };
    t.index.commit_version(&in_other, &audit("r5")).await.unwrap();

    let lookup = |tenant: &TenantId, id: &str| Lookup {
        tenant: tenant.clone(),
        resource_type: patient(),
        id: ResourceId::parse(id).unwrap(),
    };
    // Present, deleted, never written, named twice, another tenant's (not ours to see), and
    // the other tenant's own; in an order that is not the rows' order.
    let lookups = [
        lookup(&tenant(), "p2"),
        lookup(&tenant(), "p1"),
        lookup(&tenant(), "nobody"),
        lookup(&tenant(), "p1"),
        lookup(&tenant(), "p3"),
        lookup(&other, "p3"),
    ];
    let rows = t.index.look_up(&lookups).await.unwrap();
    assert_eq!(rows.len(), lookups.len());
    for (l, row) in lookups.iter().zip(&rows) {
        assert_eq!(row, &t.index.current(&l.tenant, l.resource_type, &l.id).await.unwrap(), "{l:?}");
    }
    assert_eq!(rows[1].as_ref().unwrap().version, v(2));
    assert!(rows[0].as_ref().unwrap().is_deletion());
    assert!(rows[2].is_none() && rows[4].is_none());
    assert_eq!(rows[5].as_ref().unwrap().tenant, other);
    assert!(t.index.look_up(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_reads_through_the_lookup_task_each_get_their_own_row() {
    let t = fresh_index().await;
    for i in 0..40 {
        t.index.commit_version(&new_version(&format!("p{i}"), 1, None, i), &audit(&format!("r{i}"))).await.unwrap();
    }
    let lookups = Lookups::start(&t.index);
    let reads = (0..200).map(|i| {
        let lookups = lookups.clone();
        tokio::spawn(async move {
            let id = format!("p{}", i % 50);
            let lookup = Lookup { tenant: tenant(), resource_type: patient(), id: ResourceId::parse(&id).unwrap() };
            (id, lookups.current(lookup).await.unwrap())
        })
    });
    for read in futures::future::join_all(reads).await {
        let (id, row) = read.unwrap();
        let n: i64 = id[1..].parse().unwrap();
        match row {
            Some(row) => assert_eq!((row.id.as_str(), row.last_updated), (id.as_str(), Timestamp::from_millis(n))),
            None => assert!(n >= 40, "{id} was written"),
        }
    }
}

#[tokio::test]
async fn a_lookup_batch_whose_connection_died_is_read_again_one_by_one() {
    if !on_postgres() {
        return;
    }
    let t = fresh_index().await;
    t.index.commit_version(&new_version("p1", 1, None, 7), &audit("r1")).await.unwrap();
    let lookups = Lookups::start(&t.index);
    let lookup = || Lookup { tenant: tenant(), resource_type: patient(), id: ResourceId::parse("p1").unwrap() };
    assert_eq!(lookups.current(lookup()).await.unwrap().unwrap().last_updated, Timestamp::from_millis(7));
    // The database ends the lookups' session (a restart, a failover, an administrator): the
    // next batch fails on its connection, and each of its lookups is answered all the same.
    let pool = sqlx::PgPool::connect(&t.url).await.unwrap();
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'SELECT c.* FROM UNNEST%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(ended, [true]);
    let again = futures::future::join_all((0..3).map(|_| lookups.current(lookup()))).await;
    for row in again {
        assert_eq!(row.unwrap().unwrap().last_updated, Timestamp::from_millis(7));
    }
    assert!(lookups.current(lookup()).await.unwrap().is_some());
}

#[tokio::test]
async fn the_database_keeps_the_audit_inbox_unchangeable_and_the_log_append_only() {
    let t = fresh_index().await;
    t.index.append_audit(&[audit("a"), audit("b").outcome(404, Some("not found".into()))]).await.unwrap();
    t.index.commit_version(&new_version("p1", 1, None, 1), &audit("c")).await.unwrap();
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&t.url).await.unwrap();
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT request_id, outcome FROM audit_records ORDER BY seq").fetch_all(&pool).await.unwrap();
    assert_eq!(rows, [("a", 200), ("b", 404), ("c", 200)].map(|(r, o)| (r.to_owned(), o)));
    let mut refused = vec!["UPDATE audit_records SET outcome = 500".to_owned()];
    if on_postgres() {
        // Only the sealer's transaction may delete from the inbox.
        refused.extend(["DELETE FROM audit_records".to_owned(), "TRUNCATE audit_records".to_owned()]);
    }
    for statement in &refused {
        let err = sqlx::query(sqlx::AssertSqlSafe(statement.as_str())).execute(&pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{statement}: {err}");
    }

    let mut sealer = sealer(1);
    let report = t.index.seal(100, &mut sealer).await.unwrap();
    assert_eq!(report.sealed, 3);
    let inbox: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_records").fetch_one(&pool).await.unwrap();
    assert_eq!(inbox, 0, "sealed records leave the inbox");

    let mut refused = Vec::new();
    for table in ["audit_log", "audit_hash_runs", "audit_checkpoints"] {
        refused.push(format!("UPDATE {table} SET tenant = 'other'"));
        refused.push(format!("DELETE FROM {table}"));
        if on_postgres() {
            refused.push(format!("TRUNCATE {table}"));
        }
    }
    for statement in &refused {
        let err = sqlx::query(sqlx::AssertSqlSafe(statement.as_str())).execute(&pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{statement}: {err}");
    }
}

/// On PostgreSQL the server's own role has no UPDATE, DELETE or TRUNCATE on the log tables: even
/// with the triggers disabled (which the owner of a table may do), a sealed entry cannot be
/// changed. Checked as a role that owns its database but is not a superuser (superusers skip
/// privilege checks), as a production server should run. SQLite has no roles: the PostgreSQL
/// pass of this suite runs it.
#[tokio::test]
async fn on_postgres_the_servers_role_holds_no_update_or_delete_right_on_the_log() {
    if !on_postgres() {
        return;
    }
    use sqlx::Connection as _;
    let admin = backends::postgres_admin_url();
    let role = format!("fhirvault_app_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    for statement in [format!("CREATE ROLE \"{role}\" LOGIN"), format!("CREATE DATABASE \"{role}\" OWNER \"{role}\"")] {
        sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await.unwrap();
    }
    let base = admin.rsplit_once("://").map_or(admin.as_str(), |(_, rest)| rest);
    let host = base.split_once('@').map_or(base, |(_, host)| host);
    let host = host.split_once('/').map_or(host, |(host, _)| host);
    let url = format!("postgres://{role}@{host}/{role}");

    let outcome = async {
        let index = open_index(&SecretString::from(url.clone()), &options()).await.unwrap();
        index.append_audit(&[audit("a"), audit("b")]).await.unwrap();
        assert_eq!(index.seal(100, &mut sealer(1)).await.unwrap().sealed, 2, "the sealer needs no more rights");
        let mut app = sqlx::PgConnection::connect(&url).await.unwrap();
        for table in ["audit_log", "audit_hash_runs", "audit_checkpoints"] {
            let disable = format!("ALTER TABLE {table} DISABLE TRIGGER USER");
            sqlx::query(sqlx::AssertSqlSafe(disable)).execute(&mut app).await.unwrap();
            for statement in [
                format!("UPDATE {table} SET tenant = 'other'"),
                format!("DELETE FROM {table}"),
                format!("TRUNCATE {table}"),
            ] {
                let err = sqlx::query(sqlx::AssertSqlSafe(statement.as_str())).execute(&mut app).await.unwrap_err();
                assert!(err.to_string().contains("permission denied"), "{statement}: {err}");
            }
        }
        let err = sqlx::query("UPDATE audit_records SET outcome = 500").execute(&mut app).await.unwrap_err();
        assert!(err.to_string().contains("permission denied"), "{err}");
        app.close().await.unwrap();
        drop(index);
    };
    outcome.await;
    for statement in [format!("DROP DATABASE IF EXISTS \"{role}\" WITH (FORCE)"), format!("DROP ROLE \"{role}\"")] {
        sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await.unwrap();
    }
}

/// A sealer with a fresh log key, signing a checkpoint every `every` entries and at the end of
/// every pass.
fn sealer(every: u64) -> Sealer {
    let key = LogKey::parse(&LogKey::generate("audit.test").unwrap()).unwrap();
    let cadence = Cadence {
        batch: 1_000,
        idle: Duration::from_millis(10),
        checkpoint_every_entries: every,
        checkpoint_every: Duration::ZERO,
    };
    Sealer::new(Arc::new(key), cadence, [tenant()])
}

#[tokio::test]
async fn sealing_moves_the_inbox_into_a_tree_per_tenant_in_order() {
    let t = fresh_index().await;
    let other = TenantId::parse("other").unwrap();
    let meta = |r: &str| RequestMeta { request_id: r.to_owned(), source_ip: None, break_glass: None };
    let records: Vec<AuditRecord> = (0..25)
        .map(|i| {
            let tenant = if i % 5 == 4 {
                Some(other.clone())
            } else if i == 7 {
                None
            } else {
                Some(tenant())
            };
            AuditRecord::new(&meta(&format!("r{i}")), tenant.as_ref(), Agent::default(), AuditAction::Read)
        })
        .collect();
    t.index.append_audit(&records[..10]).await.unwrap();
    let mut sealer = sealer(4);
    assert_eq!(t.index.seal(100, &mut sealer).await.unwrap().sealed, 10);
    // A second sealer (another replica) continues the same trees from what the index holds.
    t.index.append_audit(&records[10..]).await.unwrap();
    let mut second = sealer_with_key_of(&sealer);
    let report = t.index.seal(6, &mut second).await.unwrap();
    assert_eq!(report.sealed, 6);
    assert_eq!(t.index.seal(100, &mut sealer).await.unwrap().sealed, 9, "the first sealer reloads the moved tree");

    let demo = t.index.log_entries("demo", 0, 100).await.unwrap();
    let ids: Vec<String> = demo
        .iter()
        .map(|e| {
            serde_json::from_slice::<serde_json::Value>(&e.event).unwrap()["entity"][0]["what"]["identifier"]["value"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let expected: Vec<String> = (0..25).filter(|i| i % 5 != 4 && *i != 7).map(|i| format!("r{i}")).collect();
    assert_eq!(ids, expected, "inbox order, one tree per tenant");
    assert!(demo.iter().enumerate().all(|(i, e)| e.index == i as u64));
    let events = t.index.log_events("demo", 3, 5).await.unwrap();
    let expected: Vec<(u64, Vec<u8>)> = demo[3..8].iter().map(|e| (e.index, e.event.clone())).collect();
    assert_eq!(events, expected, "the events alone, the same bytes, from an index on");
    assert_eq!(t.index.log_entries("other", 0, 100).await.unwrap().len(), 5);
    assert_eq!(t.index.log_entries("_server", 0, 100).await.unwrap().len(), 1);
    assert_eq!(t.index.log_names().await.unwrap(), ["_server", "demo", "other"]);

    let key = sealer.key();
    for log in ["demo", "other", "_server"] {
        let evidence = verify::gather(t.index.as_ref(), &Locations::new(), log).await.unwrap();
        let report = verify::verify_log(&evidence, &key.verifier_key(log));
        assert!(report.ok(), "{log}: {:?}", report.findings);
        assert_eq!(report.verified_size, report.entries, "{log}: the tail is signed too");
    }
    let sizes: Vec<u64> = t.index.log_checkpoints("demo", false).await.unwrap().iter().map(|c| c.size).collect();
    // Every 4 entries after the last checkpoint, and the tail at the end of each pass (first
    // pass: 7 entries; second: 4 more; third: the last 8).
    assert_eq!(sizes, [4, 7, 11, 12, 16, 19]);
}

/// The tree's stored hashes are kept in runs of consecutive hashes, one run per log and pass at
/// least: read back whole, page by page, or at chosen indexes (as a proof or a restarted sealer
/// asks), they are exactly the tree's, across runs and passes of every size.
#[tokio::test]
async fn stored_hashes_read_back_across_runs_and_passes() {
    let t = fresh_index().await;
    let first = sealer(50);
    let mut sealed = 0;
    for (pass, n) in [70, 1, 130, 64].into_iter().enumerate() {
        let records: Vec<AuditRecord> = (0..n).map(|i| audit(&format!("p{pass}-{i}"))).collect();
        t.index.append_audit(&records).await.unwrap();
        // A fresh sealer for each pass loads the tree's frontier from the runs.
        sealed += t.index.seal(1_000, &mut sealer_with_key_of(&first)).await.unwrap().sealed;
    }
    assert_eq!(sealed, 265);
    let mut tree = fhirvault::audit::log::Tree::new();
    for (_, event) in t.index.log_events("demo", 0, 1_000).await.unwrap() {
        tree.push(fhirvault::audit::log::record_hash(&event)).unwrap();
    }
    let expected: Vec<(u64, [u8; 32])> =
        tree.stored_hashes().iter().enumerate().map(|(i, h)| (i as u64, h.0)).collect();
    assert!(expected.len() > 500);

    assert_eq!(t.index.log_hashes("demo", 0, 10_000).await.unwrap(), expected, "read whole");
    let mut paged = Vec::new();
    loop {
        let page = t.index.log_hashes("demo", paged.len() as u64, 37).await.unwrap();
        assert!(page.len() <= 37);
        if page.is_empty() {
            break;
        }
        paged.extend(page);
    }
    assert_eq!(paged, expected, "read in pages that start inside runs");

    let size = expected.len() as u64;
    let wanted = [0, 1, 63, 64, 65, 139, 140, 141, 142, 300, size - 1, size, size + 100];
    let at = t.index.log_hashes_at("demo", &wanted).await.unwrap();
    let found: Vec<(u64, [u8; 32])> = expected.iter().filter(|(i, _)| wanted.contains(i)).copied().collect();
    assert_eq!(at, found, "chosen indexes, those beyond the tree left out");
    assert!(t.index.log_hashes_at("other", &[0, 1]).await.unwrap().is_empty());

    let evidence = verify::gather(t.index.as_ref(), &Locations::new(), "demo").await.unwrap();
    let report = verify::verify_log(&evidence, &first.key().verifier_key("demo"));
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.verified_size, 265);
}

/// Migration 0011 moves the stored tree hashes into runs (those already stored become runs of
/// one): a log sealed before it is read back, extended by the next pass and verified after it.
#[tokio::test]
async fn a_log_sealed_before_migration_11_is_extended_and_verified_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let database = if on_postgres() { Some(PgDatabase::create().await) } else { None };
    let url = database
        .as_ref()
        .map_or_else(|| format!("sqlite://{}", dir.path().join("index.sqlite").display()), |db| db.url.clone());
    if on_postgres() {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::migrate!("./migrations/postgres").run_to(10, &pool).await.unwrap();
        pool.close().await;
    } else {
        let options = url.parse::<sqlx::sqlite::SqliteConnectOptions>().unwrap().create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::migrate!("./migrations/sqlite").run_to(10, &pool).await.unwrap();
        pool.close().await;
    }
    // 40 entries and their stored hashes, a row each, as the sealer wrote them before 0011.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let mut tree = fhirvault::audit::log::Tree::new();
    for i in 0..40 {
        let record = audit(&format!("old-{i}"));
        let e = fhirvault::audit::sealer::log_entry("demo", i, &record, fhirvault::audit::event::render(&record, i));
        tree.push(fhirvault::audit::log::record_hash(&e.event)).unwrap();
        sqlx::query(
            "INSERT INTO audit_log (tenant, idx, recorded_at, action, outcome, agent, patient, entity, event) \
             VALUES ('demo', $1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(i as i64)
        .bind(e.recorded.millis())
        .bind(e.action)
        .bind(i64::from(e.outcome))
        .bind(e.agent)
        .bind(e.patient)
        .bind(e.entity)
        .bind(e.event)
        .execute(&pool)
        .await
        .unwrap();
    }
    for (i, hash) in tree.stored_hashes().iter().enumerate() {
        sqlx::query("INSERT INTO audit_hashes (tenant, idx, hash) VALUES ('demo', $1, $2)")
            .bind(i as i64)
            .bind(hash.0.to_vec())
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;

    let index = open_index(&SecretString::from(url.clone()), &options()).await.unwrap();
    let expected: Vec<(u64, [u8; 32])> =
        tree.stored_hashes().iter().enumerate().map(|(i, h)| (i as u64, h.0)).collect();
    assert_eq!(index.log_hashes("demo", 0, 10_000).await.unwrap(), expected, "the hashes, now runs of one");
    let records: Vec<AuditRecord> = (0..25).map(|i| audit(&format!("new-{i}"))).collect();
    index.append_audit(&records).await.unwrap();
    let mut sealer = sealer(8);
    assert_eq!(index.seal(100, &mut sealer).await.unwrap().sealed, 25, "a new sealer loads its frontier from them");
    let evidence = verify::gather(index.as_ref(), &Locations::new(), "demo").await.unwrap();
    let report = verify::verify_log(&evidence, &sealer.key().verifier_key("demo"));
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.verified_size, 65);
}

/// Another sealer holding the same log key (as a second replica would).
fn sealer_with_key_of(first: &Sealer) -> Sealer {
    let cadence = Cadence {
        batch: 1_000,
        idle: Duration::from_millis(10),
        checkpoint_every_entries: 4,
        checkpoint_every: Duration::ZERO,
    };
    Sealer::new(first.key(), cadence, [tenant()])
}

#[tokio::test]
async fn two_sealers_never_seal_the_same_record_twice() {
    let t = fresh_index().await;
    let records: Vec<AuditRecord> = (0..400).map(|i| audit(&format!("r{i}"))).collect();
    t.index.append_audit(&records).await.unwrap();
    let mut a = sealer(50);
    let mut b = sealer_with_key_of(&a);
    let (ia, ib) = (t.index.clone(), t.index.clone());
    let first = tokio::spawn(async move {
        let mut n = 0;
        for _ in 0..20 {
            n += ia.seal(20, &mut a).await.unwrap().sealed;
        }
        (n, a)
    });
    let second = tokio::spawn(async move {
        let mut n = 0;
        for _ in 0..20 {
            n += ib.seal(20, &mut b).await.unwrap().sealed;
        }
        n
    });
    let ((na, a), nb) = (first.await.unwrap(), second.await.unwrap());
    let mut a = a;
    let rest = t.index.seal(1_000, &mut a).await.unwrap().sealed;
    assert_eq!(na + nb + rest, 400);
    let evidence = verify::gather(t.index.as_ref(), &Locations::new(), "demo").await.unwrap();
    assert_eq!(evidence.entries.len(), 400);
    let report = verify::verify_log(&evidence, &a.key().verifier_key("demo"));
    assert!(report.ok(), "{:?}", report.findings);
}

/// The server's sealer works on a thread and runtime of its own, and ends with the runtime that
/// started it (a server shutting down, or a test's runtime) rather than outliving it.
#[tokio::test]
async fn the_background_sealer_seals_on_its_own_thread_and_stops_with_the_runtime_that_started_it() {
    let t = fresh_index().await;
    let records: Vec<AuditRecord> = (0..250).map(|i| audit(&format!("bg{i}"))).collect();
    t.index.append_audit(&records).await.unwrap();
    let first = sealer(100);
    let mut after = sealer_with_key_of(&first);

    let owner = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let background = {
        let _in_owner = owner.enter();
        fhirvault::audit::sealer::spawn(t.index.clone(), first, Locations::new()).unwrap()
    };
    assert_eq!(background.thread.thread().name(), Some("audit-sealer"));
    let mut sealed = background.sealed.clone();
    let bound = Duration::from_secs(60);
    tokio::time::timeout(bound, sealed.wait_for(|n| *n >= 250)).await.expect("sealed in time").unwrap();
    // The lowest CPU priority, except where writers wait for the pass's lock (SQLite).
    #[cfg(target_os = "linux")]
    assert_eq!(nice_of_thread("audit-sealer"), Some(if t.index.sealing_blocks_writers() { 0 } else { 19 }));

    owner.shutdown_background();
    let thread = background.thread;
    tokio::time::timeout(bound, tokio::task::spawn_blocking(move || thread.join()))
        .await
        .expect("the sealer's thread stops with its runtime")
        .unwrap()
        .unwrap();

    // Records that arrive after it stopped stay in the inbox.
    t.index.append_audit(&[audit("after")]).await.unwrap();
    let evidence = verify::gather(t.index.as_ref(), &Locations::new(), "demo").await.unwrap();
    assert_eq!(evidence.entries.len(), 250);
    let report = verify::verify_log(&evidence, &after.key().verifier_key("demo"));
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(t.index.seal(1_000, &mut after).await.unwrap().sealed, 1);
}

/// The nice value of this process's thread named `name` (`/proc/self/task/*/stat`, field 19).
#[cfg(target_os = "linux")]
fn nice_of_thread(name: &str) -> Option<i64> {
    std::fs::read_dir("/proc/self/task").unwrap().flatten().find_map(|task| {
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        if comm.trim_end() != name {
            return None;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        let (_, after_comm) = stat.rsplit_once(')')?;
        after_comm.split_whitespace().nth(16)?.parse().ok()
    })
}

fn commit(version: NewVersion, request: &str) -> VersionCommit {
    VersionCommit { version, audit: audit(request), new_key: None, search: None }
}

async fn audit_request_ids(url: &str) -> Vec<String> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT request_id FROM audit_records ORDER BY request_id").fetch_all(&pool).await.unwrap()
}

/// How the database would look up one version by its key, as the planner describes it.
async fn version_lookup_plan(url: &str) -> String {
    use sqlx::Row as _;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let lookup = "SELECT seq FROM resource_versions WHERE tenant = 'demo' AND resource_type = 'Patient' \
                  AND resource_id = 'bulk-1' AND version = 1";
    if on_postgres() {
        let lines: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {lookup}"))).fetch_all(&pool).await.unwrap();
        lines.join("\n")
    } else {
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {lookup}"))).fetch_all(&pool).await.unwrap();
        rows.iter().map(|row| row.get::<String, _>("detail")).collect::<Vec<_>>().join("\n")
    }
}

/// A fresh PostgreSQL database has no planner statistics until autovacuum's first `ANALYZE`,
/// and without them the planner looked versions up through the smaller by-type index, reading
/// every version of the type. After a bulk load the lookup must use the unique key.
#[tokio::test]
async fn after_a_bulk_load_a_version_is_looked_up_by_its_key() {
    let t = fresh_index().await;
    for chunk in 0..5 {
        let batch: Vec<VersionCommit> =
            (0..250).map(|i| commit(new_version(&format!("bulk-{}", chunk * 250 + i), 1, None, 1), "bulk")).collect();
        let outcomes = t.index.commit_batch(&batch, &[]).await.unwrap();
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    }
    let plan = version_lookup_plan(&t.url).await;
    assert!(!plan.contains("resource_versions_by_type"), "{plan}");
    assert!(plan.contains("resource_id"), "the lookup should search the unique key: {plan}");
}

#[tokio::test]
async fn a_batch_commits_its_winners_and_fails_only_its_conflicts() {
    let t = fresh_index().await;
    t.index.commit_version(&new_version("old", 1, None, 1), &audit("setup")).await.unwrap();
    let batch = [
        commit(new_version("n1", 1, None, 2), "create-n1"),
        commit(new_version("n1", 1, None, 2), "create-n1-again"),
        commit(new_version("old", 1, None, 2), "create-old"),
        commit(new_version("old", 2, Some(1), 2), "update-old"),
        commit(new_version("old", 2, Some(1), 2), "update-old-again"),
        commit(new_version("old", 3, Some(2), 2), "update-old-chained"),
        commit(new_version("n2", 1, None, 2), "create-n2"),
    ];
    let outcomes = t.index.commit_batch(&batch, &[audit("read-1"), audit("read-2")]).await.unwrap();
    let won: Vec<bool> = outcomes.iter().map(Result::is_ok).collect();
    // Within a batch the (type, id) order decides; a chained update after a winner also wins.
    assert_eq!(won, [true, false, false, true, false, true, true], "{outcomes:?}");
    for outcome in &outcomes {
        assert!(matches!(outcome, Ok(_) | Err(StorageError::Conflict { .. })), "{outcome:?}");
    }
    let seqs: Vec<i64> = outcomes.iter().filter_map(|o| o.as_ref().ok().copied()).collect();
    let distinct: std::collections::HashSet<_> = seqs.iter().collect();
    assert_eq!(distinct.len(), seqs.len());

    let old = t.index.current(&tenant(), patient(), &ResourceId::parse("old").unwrap()).await.unwrap().unwrap();
    assert_eq!(old.version, v(3));
    assert_eq!(t.index.history_total(&history(None)).await.unwrap(), 5);
    // Audit records only for what committed, plus the standalone ones.
    assert_eq!(
        audit_request_ids(&t.url).await,
        ["create-n1", "create-n2", "read-1", "read-2", "setup", "update-old", "update-old-chained"]
    );
}

/// Batches that only create resources take PostgreSQL's one-statement path; a clash in one of
/// them must still fail only the clashing versions.
#[tokio::test]
async fn a_batch_of_new_resources_commits_whole_or_settles_each_clash() {
    let t = fresh_index().await;
    let key = WrappedKey { kek_version: 1, bytes: vec![9; 40] };
    let with_key = |id: &str, request: &str| {
        let version = NewVersion { compartment: format!("Patient/{id}"), ..new_version(id, 1, None, 1) };
        VersionCommit { version, audit: audit(request), new_key: Some(key.clone()), search: None }
    };
    let fresh = [with_key("a1", "create-a1"), commit(new_version("a2", 1, None, 1), "create-a2")];
    let outcomes = t.index.commit_batch(&fresh, &[audit("read-1")]).await.unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(t.index.tenant_key(&tenant(), "Patient/a1").await.unwrap(), Some(key.clone()));

    let clashing = [
        commit(new_version("a1", 1, None, 2), "create-a1-again"),
        with_key("b1", "create-b1"),
        commit(new_version("b2", 1, None, 2), "create-b2"),
        commit(new_version("b2", 1, None, 2), "create-b2-again"),
    ];
    let outcomes = t.index.commit_batch(&clashing, &[audit("read-2")]).await.unwrap();
    let won: Vec<bool> = outcomes.iter().map(Result::is_ok).collect();
    assert_eq!(won, [false, true, true, false], "{outcomes:?}");
    assert!(matches!(outcomes.first(), Some(Err(StorageError::Conflict { current: Some(_) }))), "{outcomes:?}");
    assert_eq!(t.index.tenant_key(&tenant(), "Patient/b1").await.unwrap(), Some(key));
    assert_eq!(t.index.history_total(&history(None)).await.unwrap(), 4);
    assert_eq!(
        audit_request_ids(&t.url).await,
        ["create-a1", "create-a2", "create-b1", "create-b2", "read-1", "read-2"]
    );
}

/// A transaction Bundle commits through `commit_atomic`: one failing version (a stale
/// expectation, an id taken, a key name taken) leaves nothing of the others behind, not even
/// their audit records or search rows; without one, everything commits.
#[tokio::test]
async fn an_atomic_commit_writes_everything_or_nothing() {
    let t = fresh_index().await;
    t.index.commit_version(&new_version("old", 1, None, 1), &audit("setup")).await.unwrap();
    let token = || rows(&[1], None, None, None);
    let key = WrappedKey { kek_version: 1, bytes: vec![5; 40] };
    let with_key = |id: &str| {
        let version = NewVersion { compartment: format!("Patient/{id}"), ..new_version(id, 1, None, 2) };
        VersionCommit { new_key: Some(key.clone()), ..searchable(version, token()) }
    };
    let failing = [
        with_key("t1"),
        searchable(new_version("t2", 1, None, 2), token()),
        searchable(new_version("old", 2, Some(5), 2), token()),
    ];
    let outcome = t.index.commit_atomic(&failing, &[audit("transaction-1")]).await.unwrap();
    assert!(matches!(outcome, Err((2, StorageError::Conflict { current: Some(_) }))), "{outcome:?}");
    // Only new resources: PostgreSQL's one-statement path, failing on the taken id.
    let creates_only = [with_key("t1"), searchable(new_version("old", 1, None, 2), token())];
    let outcome = t.index.commit_atomic(&creates_only, &[audit("transaction-2")]).await.unwrap();
    assert!(matches!(outcome, Err((1, StorageError::Conflict { .. }))), "{outcome:?}");
    for id in ["t1", "t2"] {
        assert!(t.index.current(&tenant(), patient(), &ResourceId::parse(id).unwrap()).await.unwrap().is_none());
    }
    assert_eq!(t.index.tenant_key(&tenant(), "Patient/t1").await.unwrap(), None);
    assert!(found(t.index.as_ref(), vec![Filter::AnyToken(vec![[1; 16]])]).await.is_empty());
    assert_eq!(audit_request_ids(&t.url).await, ["setup"]);

    let passing = [
        with_key("t1"),
        searchable(new_version("t2", 1, None, 2), token()),
        searchable(new_version("old", 2, Some(1), 2), token()),
    ];
    let seqs = t.index.commit_atomic(&passing, &[audit("transaction-3")]).await.unwrap().unwrap();
    assert_eq!(seqs.len(), 3);
    assert_eq!(found(t.index.as_ref(), vec![Filter::AnyToken(vec![[1; 16]])]).await, ["old", "t1", "t2"]);
    assert_eq!(t.index.tenant_key(&tenant(), "Patient/t1").await.unwrap(), Some(key));
    assert_eq!(audit_request_ids(&t.url).await, ["search", "search", "search", "setup", "transaction-3"]);
}

#[tokio::test]
async fn a_new_compartment_key_commits_with_its_version_or_not_at_all() {
    let t = fresh_index().await;
    let wrapped = WrappedKey { kek_version: 1, bytes: vec![7; 40] };
    let first = VersionCommit { new_key: Some(wrapped.clone()), ..commit(new_version("p1", 1, None, 1), "first") };
    t.index.commit_batch(&[first], &[]).await.unwrap().pop().unwrap().unwrap();
    assert_eq!(t.index.tenant_key(&tenant(), "Patient/p1").await.unwrap(), Some(wrapped.clone()));

    // A key already stored under that name: the version does not commit (it was sealed with
    // another key), the stored key stays.
    let other = WrappedKey { kek_version: 1, bytes: vec![8; 40] };
    let version = NewVersion { compartment: "Patient/p1".into(), ..new_version("p2", 1, None, 1) };
    let clash = VersionCommit { version, audit: audit("clash"), new_key: Some(other), search: None };
    let outcome = t.index.commit_batch(&[clash], &[]).await.unwrap().pop().unwrap();
    assert!(matches!(&outcome, Err(StorageError::KeyExists(name)) if name == "Patient/p1"), "{outcome:?}");
    assert!(t.index.current(&tenant(), patient(), &ResourceId::parse("p2").unwrap()).await.unwrap().is_none());
    assert_eq!(t.index.tenant_key(&tenant(), "Patient/p1").await.unwrap(), Some(wrapped));
    assert_eq!(audit_request_ids(&t.url).await, ["first"]);
}

#[tokio::test]
async fn the_group_committer_acknowledges_each_job_with_its_own_outcome() {
    let t = fresh_index().await;
    let committer = Committer::start(&t.index);
    t.index.commit_version(&new_version("p1", 1, None, 1), &audit("setup")).await.unwrap();
    let jobs = (0..40).map(|i| {
        let committer = committer.clone();
        tokio::spawn(async move {
            if i % 2 == 0 {
                committer.append_audit(audit(&format!("read-{i:02}"))).await.map(|()| 0)
            } else {
                // All these race to be version 2 of p1: exactly one wins.
                committer.commit_version(commit(new_version("p1", 2, Some(1), 2), &format!("write-{i:02}"))).await
            }
        })
    });
    let outcomes: Vec<_> = futures::future::join_all(jobs).await.into_iter().map(Result::unwrap).collect();
    let reads_ok = outcomes.iter().step_by(2).filter(|o| o.is_ok()).count();
    let writes: Vec<_> = outcomes.iter().skip(1).step_by(2).collect();
    assert_eq!(reads_ok, 20);
    assert_eq!(writes.iter().filter(|o| o.is_ok()).count(), 1, "{writes:?}");
    assert!(writes.iter().all(|o| matches!(o, Ok(_) | Err(StorageError::Conflict { .. }))));
    let ids = audit_request_ids(&t.url).await;
    assert_eq!(ids.iter().filter(|r| r.starts_with("read-")).count(), 20);
    assert_eq!(ids.iter().filter(|r| r.starts_with("write-")).count(), 1);
}

/// A read's record, naming the version it read.
fn read_of(id: &str, version: u32) -> AuditRecord {
    let meta = RequestMeta { request_id: format!("read-{id}-{version}"), source_ip: None, break_glass: None };
    let target = Target {
        resource_type: Some(patient()),
        resource_id: Some(ResourceId::parse(id).unwrap()),
        version: Some(v(version)),
        compartment: Some(format!("Patient/{id}")),
    };
    AuditRecord::new(&meta, Some(&tenant()), Agent::default(), AuditAction::Read).target(&target).outcome(200, None)
}

#[tokio::test]
async fn a_remembered_reads_record_is_written_only_while_its_version_is_current() {
    let t = fresh_index().await;
    t.index.commit_version(&new_version("p1", 1, None, 1), &audit("setup-1")).await.unwrap();
    t.index.commit_version(&new_version("p2", 1, None, 1), &audit("setup-2")).await.unwrap();
    t.index.commit_version(&new_version("p2", 2, Some(1), 2), &audit("setup-3")).await.unwrap();
    let other_tenant = AuditRecord { tenant: Some(TenantId::parse("other").unwrap()), ..read_of("p1", 1) };
    let no_target = audit("no-target");
    let checked = [read_of("p1", 1), read_of("p2", 1), read_of("p2", 2), read_of("p3", 1), other_tenant, no_target];
    let current = t.index.append_audit_if_current(&[audit("plain")], &checked).await.unwrap();
    assert_eq!(current, [true, false, true, false, false, false]);
    let ids = audit_request_ids(&t.url).await;
    assert_eq!(ids, ["plain", "read-p1-1", "read-p2-2", "setup-1", "setup-2", "setup-3"]);
    // Nothing to check: the records alone, as `append_audit`.
    assert!(t.index.append_audit_if_current(&[audit("alone")], &[]).await.unwrap().is_empty());
    assert!(audit_request_ids(&t.url).await.contains(&"alone".to_owned()));
}

#[tokio::test]
async fn the_group_committer_checks_remembered_reads_against_the_writes_of_their_batch() {
    let t = fresh_index().await;
    let committer = Committer::start(&t.index);
    t.index.commit_version(&new_version("p1", 1, None, 1), &audit("setup")).await.unwrap();
    // Reads of version 1 race an update to version 2, with plain records between them: every
    // read's answer says whether its record was written, and the records say the same.
    let jobs = (0..30).map(|i| {
        let committer = committer.clone();
        tokio::spawn(async move {
            match i % 3 {
                0 => committer.append_audit_if_current(read_of("p1", 1)).await.map(i64::from),
                1 => committer.append_audit(audit(&format!("plain-{i:02}"))).await.map(|()| -1),
                _ => committer.commit_version(commit(new_version("p1", 2, Some(1), 2), &format!("write-{i:02}"))).await,
            }
        })
    });
    let outcomes: Vec<_> = futures::future::join_all(jobs).await.into_iter().map(Result::unwrap).collect();
    let reads_written = outcomes.iter().step_by(3).map(|o| *o.as_ref().unwrap()).sum::<i64>();
    assert_eq!(outcomes.iter().skip(2).step_by(3).filter(|o| o.is_ok()).count(), 1, "{outcomes:?}");
    let ids = audit_request_ids(&t.url).await;
    assert_eq!(ids.iter().filter(|r| r.starts_with("plain-")).count(), 10);
    assert_eq!(ids.iter().filter(|r| *r == "read-p1-1").count(), usize::try_from(reads_written).unwrap());
    // Once version 2 is current, a read of version 1 writes nothing.
    assert!(!committer.append_audit_if_current(read_of("p1", 1)).await.unwrap());
    assert!(committer.append_audit_if_current(read_of("p1", 2)).await.unwrap());
    let ids = audit_request_ids(&t.url).await;
    assert_eq!(ids.iter().filter(|r| *r == "read-p1-1").count(), usize::try_from(reads_written).unwrap());
    assert_eq!(ids.iter().filter(|r| *r == "read-p1-2").count(), 1);
}

#[tokio::test]
async fn the_first_stored_tenant_key_wins() {
    let t = fresh_index().await;
    let first = WrappedKey { kek_version: 1, bytes: vec![1; 40] };
    let second = WrappedKey { kek_version: 1, bytes: vec![2; 40] };
    assert!(t.index.tenant_key(&tenant(), "Patient/p1").await.unwrap().is_none());
    assert_eq!(t.index.insert_tenant_key(&tenant(), "Patient/p1", &first).await.unwrap(), first);
    assert_eq!(t.index.insert_tenant_key(&tenant(), "Patient/p1", &second).await.unwrap(), first);
    assert_eq!(t.index.tenant_key(&tenant(), "Patient/p1").await.unwrap(), Some(first));
}

/// The object store contract, for one store.
fn rows(tokens: &[u8], date: Option<(i64, i64)>, number: Option<(f64, &str)>, refers_to: Option<&str>) -> SearchRows {
    SearchRows {
        tokens: tokens.iter().map(|&t| [t; 16]).collect(),
        dates: date.map(|(lo, hi)| DateRow { param: "date".into(), lo, hi }).into_iter().collect(),
        numbers: number
            .map(|(value, code)| NumberRow {
                param: "value".into(),
                value,
                system: Some("http://unitsofmeasure.org".into()),
                code: Some(code.into()),
                unit: Some(code.into()),
            })
            .into_iter()
            .collect(),
        refs: refers_to
            .map(|id| RefRow { param: "subject".into(), target_type: "Patient".into(), target_id: id.into() })
            .into_iter()
            .collect(),
    }
}

fn searchable(version: NewVersion, rows: SearchRows) -> VersionCommit {
    VersionCommit { search: Some(rows), ..commit(version, "search") }
}

async fn found(index: &dyn Index, filters: Vec<Filter>) -> Vec<String> {
    found_of(index, patient(), filters).await
}

/// The ids of the resources of type `rt` that pass `filters`, checked against their count.
async fn found_of(index: &dyn Index, rt: ResourceType, filters: Vec<Filter>) -> Vec<String> {
    let q =
        SearchQuery { tenant: tenant(), resource_type: rt, filters, after: None, limit: 100, order: Order::default() };
    let ids: Vec<String> = index.search(&q).await.unwrap().into_iter().map(|r| r.id.to_string()).collect();
    assert_eq!(index.search_count(&q).await.unwrap(), ids.len() as u64);
    ids
}

#[tokio::test]
async fn search_rows_follow_the_current_version_and_every_filter_kind_answers() {
    let t = fresh_index().await;
    let index = t.index.as_ref();
    // New resources: on PostgreSQL through the one-statement path for creates.
    let outcomes = index
        .commit_batch(
            &[
                searchable(
                    new_version("a", 1, None, 1_000),
                    rows(&[1, 2], Some((100, 200)), Some((5.0, "mg")), Some("p1")),
                ),
                searchable(
                    new_version("b", 1, None, 2_000),
                    rows(&[2], Some((150, 400)), Some((7.5, "g")), Some("p2")),
                ),
                searchable(new_version("c", 1, None, 3_000), rows(&[3], None, None, None)),
            ],
            &[],
        )
        .await
        .unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");

    assert_eq!(found(index, vec![Filter::AnyToken(vec![[2; 16]])]).await, ["a", "b"]);
    assert_eq!(found(index, vec![Filter::AnyToken(vec![[1; 16], [3; 16]])]).await, ["a", "c"]);
    assert_eq!(found(index, vec![Filter::NoToken(vec![[1; 16]])]).await, ["b", "c"]);
    let both = vec![Filter::AnyToken(vec![[2; 16]]), Filter::NoToken(vec![[1; 16]])];
    assert_eq!(found(index, both).await, ["b"]);
    // Dates: stored range within [100, 300); or ending after 300.
    let within = vec![(Bound::Lo, Cmp::Ge, 100), (Bound::Hi, Cmp::Le, 300)];
    assert_eq!(found(index, vec![Filter::Date { param: "date".into(), any: vec![within.clone()] }]).await, ["a"]);
    let after = vec![(Bound::Hi, Cmp::Gt, 300)];
    assert_eq!(found(index, vec![Filter::Date { param: "date".into(), any: vec![within, after] }]).await, ["a", "b"]);
    assert!(found(index, vec![Filter::Date { param: "other".into(), any: vec![vec![]] }]).await.is_empty());
    // Numbers, with and without a unit.
    let above = |v: f64| vec![(Cmp::Gt, v)];
    assert_eq!(
        found(index, vec![Filter::Number { param: "value".into(), any: vec![(above(4.0), None)] }]).await,
        ["a", "b"]
    );
    let in_mg = Some(Unit::Coded { system: "http://unitsofmeasure.org".into(), code: "mg".into() });
    assert_eq!(
        found(index, vec![Filter::Number { param: "value".into(), any: vec![(above(4.0), in_mg)] }]).await,
        ["a"]
    );
    let in_g = Some(Unit::Code("g".into()));
    assert_eq!(
        found(index, vec![Filter::Number { param: "value".into(), any: vec![(above(4.0), in_g)] }]).await,
        ["b"]
    );
    // References, typed or not; ids; lastUpdated.
    let p2 = vec![(Some("Patient".to_owned()), "p2".to_owned()), (None, "p9".to_owned())];
    assert_eq!(found(index, vec![Filter::Ref { param: "subject".into(), any: p2 }]).await, ["b"]);
    assert_eq!(found(index, vec![Filter::Id(vec!["c".into(), "a".into()])]).await, ["a", "c"]);
    let since = vec![vec![(Bound::Lo, Cmp::Ge, 2_000)]];
    assert_eq!(found(index, vec![Filter::LastUpdated(since)]).await, ["b", "c"]);

    // Keyset paging by id.
    let page = |after: Option<&str>| SearchQuery {
        tenant: tenant(),
        resource_type: patient(),
        filters: Vec::new(),
        after: after.map(|id| Position { values: Vec::new(), id: id.to_owned() }),
        order: Order::default(),
        limit: 2,
    };
    let first: Vec<String> = index.search(&page(None)).await.unwrap().into_iter().map(|r| r.id.to_string()).collect();
    assert_eq!(first, ["a", "b"]);
    let second = index.search(&page(Some("b"))).await.unwrap();
    assert_eq!(second.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["c"]);

    // An update replaces the resource's rows (general path); a deletion removes them.
    let update = searchable(new_version("a", 2, Some(1), 4_000), rows(&[9], None, None, None));
    index.commit_batch(&[update], &[]).await.unwrap().pop().unwrap().unwrap();
    assert_eq!(found(index, vec![Filter::AnyToken(vec![[2; 16]])]).await, ["b"]);
    assert_eq!(found(index, vec![Filter::AnyToken(vec![[9; 16]])]).await, ["a"]);
    // A second update finds the first update's rows through the token set that replaced the first.
    let again = searchable(new_version("a", 3, Some(2), 4_500), rows(&[4], None, None, None));
    index.commit_batch(&[again], &[]).await.unwrap().pop().unwrap().unwrap();
    assert!(found(index, vec![Filter::AnyToken(vec![[9; 16], [1; 16]])]).await.is_empty());
    assert_eq!(found(index, vec![Filter::AnyToken(vec![[4; 16]])]).await, ["a"]);
    assert!(
        found(index, vec![Filter::Ref { param: "subject".into(), any: vec![(None, "p1".into())] }]).await.is_empty()
    );
    let mut delete = new_version("b", 2, Some(1), 5_000);
    delete.method = Method::Delete;
    delete.object_key = None;
    index.commit_batch(&[searchable(delete, SearchRows::default())], &[]).await.unwrap().pop().unwrap().unwrap();
    assert!(found(index, vec![Filter::AnyToken(vec![[2; 16]])]).await.is_empty());
    assert_eq!(found(index, Vec::new()).await, ["a", "c"], "a deleted resource is not found");
}

/// PostgreSQL's migration 0004 moves a resource's token rows into one array: an index written
/// before it finds the same resources after it, and an update replaces the migrated tokens.
/// (SQLite's migration 0004 changes nothing.)
#[tokio::test]
async fn token_rows_written_before_migration_4_are_found_after_it() {
    if !on_postgres() {
        return;
    }
    let db = PgDatabase::create().await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::migrate!("./migrations/postgres").run_to(3, &pool).await.unwrap();
    // Two resources as they were written before migration 0004: a row per token, and the set.
    for (id, tokens) in [("a", [[1_u8; 16], [2; 16]]), ("b", [[2; 16], [3; 16]])] {
        sqlx::query("INSERT INTO resources (tenant, resource_type, resource_id, current_version) VALUES ('demo', 'Patient', $1, 1)")
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO resource_versions (tenant, resource_type, resource_id, version, method, object_key, \
             location, compartment, last_updated) VALUES ('demo', 'Patient', $1, 1, 'create', $2, 'local', $3, 1000)",
        )
        .bind(id)
        .bind(format!("demo/Patient/{id}/1"))
        .bind(format!("Patient/{id}"))
        .execute(&pool)
        .await
        .unwrap();
        for token in tokens {
            sqlx::query("INSERT INTO search_tokens VALUES ('demo', 'Patient', $1, $2)")
                .bind(id)
                .bind(token.as_slice())
                .execute(&pool)
                .await
                .unwrap();
        }
        sqlx::query("INSERT INTO search_token_sets VALUES ('demo', 'Patient', $1, $2)")
            .bind(id)
            .bind(tokens.concat())
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
    let index = open_index(&SecretString::from(db.url.clone()), &options()).await.unwrap();
    let index = index.as_ref();
    assert_eq!(found(index, vec![Filter::AnyToken(vec![[2; 16]])]).await, ["a", "b"]);
    assert_eq!(found(index, vec![Filter::AnyToken(vec![[1; 16]])]).await, ["a"]);
    assert_eq!(found(index, vec![Filter::NoToken(vec![[1; 16]])]).await, ["b"]);
    let update = searchable(new_version("a", 2, Some(1), 2_000), rows(&[3], None, None, None));
    index.commit_batch(&[update], &[]).await.unwrap().pop().unwrap().unwrap();
    assert_eq!(found(index, vec![Filter::AnyToken(vec![[1; 16], [2; 16]])]).await, ["b"]);
    assert_eq!(found(index, vec![Filter::AnyToken(vec![[3; 16]])]).await, ["a", "b"]);
}

/// On PostgreSQL new tokens wait in the GIN index's pending list (migration 0012) until a
/// merge moves them into the tree: a search finds the same resources either way, and an update
/// drops the tokens of the version it replaces wherever they are.
#[tokio::test]
async fn tokens_are_found_alike_in_the_pending_list_and_after_its_merge() {
    if !on_postgres() {
        return;
    }
    let t = fresh_index().await;
    let index = t.index.as_ref();
    let pool = sqlx::PgPool::connect(&t.url).await.unwrap();
    let options: Vec<String> =
        sqlx::query_scalar("SELECT unnest(reloptions) FROM pg_class WHERE relname = 'search_token_sets_by_token'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(options, ["fastupdate=on", "gin_pending_list_limit=128"]);
    let merge = || async {
        let merged: i64 = sqlx::query_scalar("SELECT gin_clean_pending_list('search_token_sets_by_token')")
            .fetch_one(&pool)
            .await
            .unwrap();
        merged
    };
    let commits = [
        searchable(new_version("a", 1, None, 1_000), rows(&[1, 2], None, None, None)),
        searchable(new_version("b", 1, None, 2_000), rows(&[2, 3], None, None, None)),
    ];
    assert!(index.commit_batch(&commits, &[]).await.unwrap().iter().all(Result::is_ok));
    let answers = || async {
        (
            found(index, vec![Filter::AnyToken(vec![[2; 16]])]).await,
            found(index, vec![Filter::AnyToken(vec![[1; 16]])]).await,
            found(index, vec![Filter::NoToken(vec![[3; 16]])]).await,
        )
    };
    let from_pending_list = answers().await;
    assert_eq!(from_pending_list, (vec!["a".to_owned(), "b".to_owned()], vec!["a".to_owned()], vec!["a".to_owned()]));
    assert!(merge().await > 0, "the two resources' tokens were still pending");
    assert_eq!(answers().await, from_pending_list, "the merged tree answers as the pending list did");
    // An update while the old tokens are in the tree and the new ones pending.
    let update = searchable(new_version("a", 2, Some(1), 3_000), rows(&[3], None, None, None));
    index.commit_batch(&[update], &[]).await.unwrap().pop().unwrap().unwrap();
    assert_eq!(found(index, vec![Filter::AnyToken(vec![[1; 16]])]).await, Vec::<String>::new());
    assert_eq!(found(index, vec![Filter::AnyToken(vec![[3; 16]])]).await, ["a", "b"]);
    assert!(merge().await > 0);
    assert_eq!(found(index, vec![Filter::AnyToken(vec![[3; 16]])]).await, ["a", "b"]);
    assert_eq!(found(index, vec![Filter::AnyToken(vec![[2; 16]])]).await, ["b"]);
    pool.close().await;
}

#[tokio::test]
async fn sorted_searches_page_by_their_keys_with_missing_values_last() {
    let t = fresh_index().await;
    let index = t.index.as_ref();
    // Dates: a [100, 200), b [300, 400), c none, d [100, 150); numbers: a 5, b 1, c 3, d none.
    let commits = [
        searchable(new_version("a", 1, None, 4_000), rows(&[1], Some((100, 200)), Some((5.0, "mg")), None)),
        searchable(new_version("b", 1, None, 3_000), rows(&[1], Some((300, 400)), Some((1.0, "mg")), None)),
        searchable(new_version("c", 1, None, 2_000), rows(&[1], None, Some((3.0, "mg")), None)),
        searchable(new_version("d", 1, None, 1_000), rows(&[1], Some((100, 150)), None, None)),
    ];
    assert!(index.commit_batch(&commits, &[]).await.unwrap().iter().all(Result::is_ok));
    // Every page of two, following each page's last position.
    let all = |order: Order| async move {
        let mut q = SearchQuery {
            tenant: tenant(),
            resource_type: patient(),
            filters: vec![Filter::AnyToken(vec![[1; 16]])],
            after: None,
            limit: 2,
            order,
        };
        let mut ids = Vec::new();
        loop {
            let page = index.search(&q).await.unwrap();
            ids.extend(page.iter().map(|r| r.id.to_string()));
            let Some(last) = page.last().filter(|_| page.len() == 2) else { break };
            q.after = Some(index.sort_position(&q, last.id.as_str()).await.unwrap());
        }
        ids
    };
    let key = |by: SortBy, descending: bool| SortKey { by, descending };
    let order = |keys: Vec<SortKey>, id_descending: bool| Order { keys, id_descending };
    let date = || SortBy::Date("date".into());
    let number = || SortBy::Number("value".into());
    assert_eq!(all(order(vec![key(date(), false)], false)).await, ["a", "d", "b", "c"], "ties by id");
    assert_eq!(all(order(vec![key(date(), false)], true)).await, ["d", "a", "b", "c"], "ties by id descending");
    assert_eq!(all(order(vec![key(date(), true)], false)).await, ["b", "a", "d", "c"], "latest end first");
    assert_eq!(all(order(vec![key(number(), false)], false)).await, ["b", "c", "a", "d"]);
    assert_eq!(all(order(vec![key(number(), true)], false)).await, ["a", "c", "b", "d"]);
    assert_eq!(all(order(vec![key(SortBy::LastUpdated, false)], false)).await, ["d", "c", "b", "a"]);
    assert_eq!(all(order(Vec::new(), true)).await, ["d", "c", "b", "a"]);
    let two = order(vec![key(date(), false), key(number(), true)], false);
    assert_eq!(all(two).await, ["a", "d", "b", "c"]);
}

#[tokio::test]
async fn chains_has_compartments_and_links_follow_references_between_types() {
    let t = fresh_index().await;
    let index = t.index.as_ref();
    let observation = ResourceType::parse("Observation").unwrap();
    let of_type = |rt: ResourceType, id: &str, rows: SearchRows| {
        let mut version = new_version(id, 1, None, 1_000);
        version.resource_type = rt;
        version.object_key = Some(ObjectKey::new_for(&tenant(), rt, &version.id, v(1)));
        searchable(version, rows)
    };
    // Patients p1 (token 1) and p2 (token 2); o1 refers to p1 with token 5, o2 to p2 with token
    // 6, o3 to p2 through `performer` with token 5.
    let mut o3 = rows(&[5], None, None, Some("p2"));
    o3.refs[0].param = "performer".into();
    let commits = [
        of_type(patient(), "p1", rows(&[1], None, None, None)),
        of_type(patient(), "p2", rows(&[2], None, None, None)),
        of_type(observation, "o1", rows(&[5], None, None, Some("p1"))),
        of_type(observation, "o2", rows(&[6], None, None, Some("p2"))),
        of_type(observation, "o3", o3),
    ];
    assert!(index.commit_batch(&commits, &[]).await.unwrap().iter().all(Result::is_ok));
    let search = |rt: ResourceType, filters: Vec<Filter>| found_of(index, rt, filters);
    let chain = |token: u8| {
        Filter::Linked(Linked::Chain {
            param: "subject".into(),
            any: vec![("Patient".into(), vec![Filter::AnyToken(vec![[token; 16]])])],
        })
    };
    assert_eq!(search(observation, vec![chain(2)]).await, ["o2"]);
    // Driving or checked after another filter, the answer is the same.
    assert_eq!(search(observation, vec![Filter::AnyToken(vec![[5; 16], [6; 16]]), chain(1)]).await, ["o1"]);
    let has = |token: u8| {
        Filter::Linked(Linked::Has {
            source_type: "Observation".into(),
            param: "subject".into(),
            filters: vec![Filter::AnyToken(vec![[token; 16]])],
        })
    };
    assert_eq!(search(patient(), vec![has(5)]).await, ["p1"], "o3 refers to p2 through performer");
    assert_eq!(search(patient(), vec![Filter::AnyToken(vec![[2; 16]]), has(6)]).await, ["p2"]);
    assert!(search(patient(), vec![has(9)]).await.is_empty());
    let member = |params: &[&str]| {
        Filter::Linked(Linked::RefersTo {
            params: params.iter().map(|p| (*p).to_owned()).collect(),
            target_type: "Patient".into(),
            target_id: "p2".into(),
        })
    };
    assert_eq!(search(observation, vec![member(&["subject", "performer"])]).await, ["o2", "o3"]);
    assert_eq!(search(observation, vec![member(&["subject"])]).await, ["o2"]);

    // Links both ways, in a stable order, limited.
    let links = |direction: Direction, limit: u32| async move {
        let q = LinkQuery { tenant: tenant(), direction, limit };
        index
            .links(&q)
            .await
            .unwrap()
            .into_iter()
            .map(|l| format!("{}/{} {} {}/{}", l.resource_type, l.resource_id, l.param, l.target_type, l.target_id))
            .collect::<Vec<_>>()
    };
    let from = Direction::From { resource_type: observation, ids: vec!["o1".into(), "o3".into()], params: Vec::new() };
    assert_eq!(links(from, 10).await, ["Observation/o1 subject Patient/p1", "Observation/o3 performer Patient/p2"]);
    let only_subject = Direction::From {
        resource_type: observation,
        ids: vec!["o1".into(), "o3".into()],
        params: vec!["subject".into()],
    };
    assert_eq!(links(only_subject, 10).await, ["Observation/o1 subject Patient/p1"]);
    let to = Direction::To { target_type: patient(), ids: vec!["p2".into()], sources: Vec::new() };
    assert_eq!(
        links(to.clone(), 10).await,
        ["Observation/o2 subject Patient/p2", "Observation/o3 performer Patient/p2"]
    );
    assert_eq!(links(to, 1).await.len(), 1);
    let through = |param: &str| Direction::To {
        target_type: patient(),
        ids: vec!["p1".into(), "p2".into()],
        sources: vec![("Observation".into(), param.into()), ("Encounter".into(), "subject".into())],
    };
    assert_eq!(links(through("performer"), 10).await, ["Observation/o3 performer Patient/p2"]);
}

async fn object_store_conformance(store: &ObjectStorage, enforces_create_only: bool) {
    store.ping().await.unwrap();
    let key = ObjectKey::new_for(&tenant(), patient(), &ResourceId::parse("p1").unwrap(), v(1));
    store.put_new(&key, b"sealed".to_vec()).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap(), b"sealed");
    if enforces_create_only {
        assert!(matches!(store.put_new(&key, b"other".to_vec()).await, Err(StorageError::ObjectExists(_))));
        assert_eq!(store.get(&key).await.unwrap(), b"sealed");
    }
    let listed = store.list_objects().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].key.as_str(), listed[0].size), (key.as_str(), 6));
    assert!((listed[0].modified.millis() - Timestamp::now().millis()).abs() < 300_000, "modification time is sane");
    let missing = ObjectKey::new_for(&tenant(), patient(), &ResourceId::parse("p2").unwrap(), v(1));
    assert!(matches!(store.get(&missing).await, Err(StorageError::ObjectMissing(_))));
    store.delete_orphan(&key).await.unwrap();
    store.delete_orphan(&key).await.unwrap();
    assert!(store.list_objects().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_local_object_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    object_store_conformance(&ObjectStorage::local("local", dir.path()).unwrap(), true).await;
}

/// Whether the S3 server under test is Garage, which ignores `If-None-Match: *`.
#[expect(clippy::disallowed_methods, reason = "set by ./scripts/test: which S3 server runs")]
fn s3_is_garage() -> bool {
    std::env::var("FHIRVAULT_TEST_S3").is_ok_and(|s| s == "garage")
}

#[tokio::test]
async fn the_s3_object_store_conforms() {
    let Some(s3) = s3_settings() else { return };
    // Garage ignores `If-None-Match: *`; our guarantee comes from keys never being reused.
    object_store_conformance(&ObjectStorage::s3("s3", &s3).unwrap(), !s3_is_garage()).await;
}

/// What every key provider must do: a wrapped tenant key opens again, also in another
/// instance of the provider (a restart), and only under its own tenant, name and KEK version;
/// a wrapped key altered in any byte does not open.
async fn key_provider_conformance(mut open: impl FnMut() -> Arc<dyn KeyProvider>) {
    let provider = open();
    provider.check().await.unwrap();
    let demo = TenantId::parse("demo").unwrap();
    let other = TenantId::parse("other").unwrap();
    let key = SecretKey::generate().unwrap();
    let wrapped = provider.wrap(&demo, "Patient/1", &key, 1).await.unwrap();
    assert_eq!(wrapped.kek_version, 1);
    let in_clear = |w: &[u8]| SecretKey::from_slice(&Zeroizing::new(w.to_vec())).is_some_and(|k| k.same_as(&key));
    assert!(!wrapped.bytes.windows(32).any(in_clear), "the key is not in its wrapped form");
    assert!(provider.unwrap(&demo, "Patient/1", &wrapped).await.unwrap().same_as(&key));
    let again = provider.wrap(&demo, "Patient/1", &key, 1).await.unwrap();
    assert_ne!(again.bytes, wrapped.bytes, "every wrap takes a fresh nonce");

    let restarted = open();
    assert!(restarted.unwrap(&demo, "Patient/1", &wrapped).await.unwrap().same_as(&key));

    assert!(provider.unwrap(&demo, "Patient/2", &wrapped).await.is_err(), "another compartment");
    assert!(provider.unwrap(&other, "Patient/1", &wrapped).await.is_err(), "another tenant");
    let relabelled = WrappedKey { kek_version: wrapped.kek_version + 1, ..wrapped.clone() };
    assert!(provider.unwrap(&demo, "Patient/1", &relabelled).await.is_err(), "another KEK version");
    for i in 0..wrapped.bytes.len() {
        let mut bytes = wrapped.bytes.clone();
        bytes[i] ^= 0x01;
        let altered = WrappedKey { bytes, ..wrapped.clone() };
        assert!(provider.unwrap(&demo, "Patient/1", &altered).await.is_err(), "byte {i} altered");
    }
    let truncated = WrappedKey { bytes: wrapped.bytes[..20].to_vec(), ..wrapped.clone() };
    assert!(provider.unwrap(&demo, "Patient/1", &truncated).await.is_err(), "truncated");
}

#[tokio::test]
async fn the_local_key_file_provider_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.key");
    LocalFileProvider::ensure_file(&path).unwrap();
    key_provider_conformance(|| Arc::new(LocalFileProvider::load(&path).unwrap())).await;
}

fn pkcs11_options(settings: &Pkcs11Settings) -> Pkcs11Options {
    Pkcs11Options {
        module: settings.module.clone(),
        token_label: settings.token_label.clone(),
        pin: settings.pin.clone().unwrap(),
        label_prefix: settings.label_prefix.clone(),
        create_missing_keys: settings.create_missing_keys,
    }
}

/// A PKCS#11 provider on the test token with every tenant's KEK settled through `index`.
async fn open_pkcs11(options: &Pkcs11Options, index: &Arc<dyn Index>) -> Arc<dyn KeyProvider> {
    prepared(Arc::new(Pkcs11Provider::open(options.clone()).unwrap()), index).await
}

/// `provider` with the KEKs of tenants `demo` and `other` settled through `index`.
async fn prepared(provider: Arc<dyn KeyProvider>, index: &Arc<dyn Index>) -> Arc<dyn KeyProvider> {
    let keys = KeyService::new(provider.clone(), index.clone(), 16, Duration::from_secs(60));
    keys.prepare(&[TenantId::parse("demo").unwrap(), TenantId::parse("other").unwrap()]).await.unwrap();
    provider
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pkcs11_provider_conforms() {
    let Some(settings) = pkcs11_settings() else { return };
    let options = pkcs11_options(&settings);
    let db = fresh_index().await;
    let (first, second) = (open_pkcs11(&options, &db.index).await, open_pkcs11(&options, &db.index).await);
    let mut opened = vec![first, second].into_iter();
    key_provider_conformance(|| opened.next().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_keks_stay_in_the_token() {
    let Some(settings) = pkcs11_settings() else { return };
    let options = pkcs11_options(&settings);
    let db = fresh_index().await;
    open_pkcs11(&options, &db.index).await;
    let provider = Pkcs11Provider::open(options.clone()).unwrap();
    let demo = TenantId::parse("demo").unwrap();
    let protection = provider.protection(&demo, 1).await.unwrap();
    assert_eq!(
        protection,
        KekProtection { sensitive: true, extractable: false, never_extractable: true, always_sensitive: true }
    );
    assert!(!provider.kek_value_readable(&demo, 1).await.unwrap(), "the token must not give out a KEK");

    // Without permission to create them, a missing KEK stops the start, named.
    let strict = Pkcs11Options {
        create_missing_keys: false,
        label_prefix: format!("{}-missing", options.label_prefix),
        ..options.clone()
    };
    let keys =
        KeyService::new(Arc::new(Pkcs11Provider::open(strict).unwrap()), db.index.clone(), 16, Duration::from_secs(60));
    let err = keys.prepare(std::slice::from_ref(&demo)).await.unwrap_err().to_string();
    assert!(err.contains(&format!("{}-missing/demo/kek/v1", options.label_prefix)), "{err}");

    let err = Pkcs11Provider::open(Pkcs11Options { token_label: "no-such-token".into(), ..options.clone() })
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no PKCS#11 token labelled `no-such-token`"), "{err}");
    let err = Pkcs11Provider::open(Pkcs11Options { module: "/nonexistent/libpkcs11.so".into(), ..options })
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cannot load PKCS#11 module `/nonexistent/libpkcs11.so`"), "{err}");
}

/// Two replicas start at once on an empty token: each generates a KEK before either records
/// one. The index settles it: both use the first recorded, the other is destroyed, and what
/// one wraps the other opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_agree_on_one_kek() {
    let Some(settings) = pkcs11_settings() else { return };
    let options = pkcs11_options(&settings);
    let db = fresh_index().await;
    let demo = TenantId::parse("demo").unwrap();
    let a = Pkcs11Provider::open(options.clone()).unwrap();
    let b = Pkcs11Provider::open(options.clone()).unwrap();
    let found_by_a = a.provision_kek(&demo, 1, false).await.unwrap();
    // b looks before a's KEK is recorded: it finds a's, which it did not generate.
    let found_by_b = b.provision_kek(&demo, 1, false).await.unwrap();
    assert!(found_by_a.generated && !found_by_b.generated);
    assert_eq!(found_by_a.id, found_by_b.id);

    // A race both lose to a third: each generated its own before looking again.
    let c_label = format!("{}-race", options.label_prefix);
    let race = Pkcs11Options { label_prefix: c_label, ..options.clone() };
    let (c, d) = (Pkcs11Provider::open(race.clone()).unwrap(), Pkcs11Provider::open(race.clone()).unwrap());
    let (from_c, from_d) = (c.generate_kek(&demo, 1).await.unwrap(), d.generate_kek(&demo, 1).await.unwrap());
    assert_ne!(from_c, from_d);
    let recorded = db.index.claim_kek_id(&demo, 1, &from_c).await.unwrap();
    assert_eq!(recorded, from_c);
    assert_eq!(db.index.claim_kek_id(&demo, 1, &from_d).await.unwrap(), from_c, "the first record stays");
    c.adopt_kek(&demo, 1, &recorded, None).await.unwrap();
    d.adopt_kek(&demo, 1, &recorded, Some(&from_d)).await.unwrap();
    assert_eq!(c.kek_ids(&demo, 1).await.unwrap(), std::slice::from_ref(&recorded), "the spare KEK is destroyed");
    let key = SecretKey::generate().unwrap();
    let wrapped = d.wrap(&demo, "Patient/9", &key, 1).await.unwrap();
    assert!(c.unwrap(&demo, "Patient/9", &wrapped).await.unwrap().same_as(&key));
}

fn transit_options(settings: &fhirvault::config::TransitSettings) -> TransitOptions {
    TransitOptions {
        address: settings.address.parse().unwrap(),
        mount: settings.mount.clone(),
        token: settings.token.clone().unwrap(),
        key_prefix: settings.key_prefix.clone(),
        create_missing_keys: settings.create_missing_keys,
        timeout: Duration::from_secs(settings.timeout_seconds),
    }
}

/// A transit provider on the test engine with every tenant's key settled through `index`.
async fn open_transit(options: &TransitOptions, index: &Arc<dyn Index>) -> Arc<dyn KeyProvider> {
    prepared(Arc::new(TransitProvider::new(options.clone()).unwrap()), index).await
}

#[tokio::test]
async fn the_transit_provider_conforms() {
    let Some(settings) = transit_settings() else { return };
    let options = transit_options(&settings);
    let db = fresh_index().await;
    let (first, second) = (open_transit(&options, &db.index).await, open_transit(&options, &db.index).await);
    let mut opened = vec![first, second].into_iter();
    key_provider_conformance(|| opened.next().unwrap()).await;
}

#[tokio::test]
async fn the_transit_provider_refuses_what_it_cannot_use() {
    let Some(settings) = transit_settings() else { return };
    let options = transit_options(&settings);
    let db = fresh_index().await;
    let demo = TenantId::parse("demo").unwrap();
    open_transit(&options, &db.index).await;

    // Another prefix than the one the index records: refused, before anything is wrapped.
    let moved = TransitOptions { key_prefix: format!("{}-moved", options.key_prefix), ..options.clone() };
    let keys =
        KeyService::new(Arc::new(TransitProvider::new(moved).unwrap()), db.index.clone(), 16, Duration::from_secs(60));
    let err = keys.prepare(std::slice::from_ref(&demo)).await.unwrap_err().to_string();
    assert!(
        err.contains("the index records") && err.contains(&format!("transit/{}-demo", options.key_prefix)),
        "{err}"
    );

    // A missing key without permission to create it, on a fresh index: named.
    let other_db = fresh_index().await;
    let strict = TransitOptions {
        key_prefix: format!("{}-missing", options.key_prefix),
        create_missing_keys: false,
        ..options.clone()
    };
    let keys = KeyService::new(
        Arc::new(TransitProvider::new(strict).unwrap()),
        other_db.index.clone(),
        16,
        Duration::from_secs(60),
    );
    let err = keys.prepare(std::slice::from_ref(&demo)).await.unwrap_err().to_string();
    assert!(err.contains(&format!("holds no key `{}-missing-demo`", options.key_prefix)), "{err}");

    // A token the engine does not accept: the engine's refusal, not an integrity error.
    let forged = TransitOptions { token: SecretString::from("not-a-token"), ..options };
    let provider = TransitProvider::new(forged).unwrap();
    let err = provider.wrap(&demo, "tenant", &SecretKey::generate().unwrap(), 1).await.unwrap_err().to_string();
    assert!(err.contains("403"), "{err}");
}

/// An erasure waits for its due date, gives way to a legal hold, is cancellable until due,
/// and once executed leaves a tombstone for the compartment key and no search row of the
/// patient's records; other patients keep theirs.
#[tokio::test]
async fn an_erasure_shreds_the_key_and_the_search_rows_unless_held() {
    use fhirvault::storage::{ERASED, ErasureState, LegalHold};
    let t = fresh_index().await;
    let index = t.index.as_ref();
    let demo = tenant();
    let outcomes = index
        .commit_batch(
            &[
                searchable(new_version("a", 1, None, 1_000), rows(&[1, 2], Some((100, 200)), Some((5.0, "mg")), None)),
                searchable(new_version("b", 1, None, 2_000), rows(&[2], Some((150, 400)), None, Some("a"))),
            ],
            &[],
        )
        .await
        .unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    for id in ["a", "b"] {
        let key = WrappedKey { kek_version: 1, bytes: vec![7; 60] };
        index.insert_tenant_key(&demo, &format!("Patient/{id}"), &key).await.unwrap();
    }
    let now = Timestamp::now();
    let later = Timestamp::from_millis(now.millis() + 3_600_000);

    // Scheduled for later: not due, cancellable, then scheduled again.
    assert!(index.schedule_erasure(&demo, "a", "admin-1", later, &audit("erase-1")).await.unwrap());
    assert!(!index.schedule_erasure(&demo, "a", "admin-1", later, &audit("erase-2")).await.unwrap(), "once");
    assert!(index.due_erasures(now, 10).await.unwrap().is_empty());
    assert!(!index.erase(&demo, "a", &audit("run-1")).await.unwrap(), "not due yet");
    assert!(index.cancel_erasure(&demo, "a", &audit("cancel-1")).await.unwrap());
    assert!(!index.cancel_erasure(&demo, "a", &audit("cancel-2")).await.unwrap(), "nothing left to cancel");
    let status = index.patient_status(&demo, "a").await.unwrap();
    assert_eq!(status.erasure.unwrap().state, ErasureState::Cancelled);

    // A legal hold cancels a scheduled erasure and refuses new ones until cleared.
    assert!(index.schedule_erasure(&demo, "a", "admin-1", now, &audit("erase-3")).await.unwrap());
    let hold = LegalHold { reason: "court order 2026-118".into(), set_by: "admin-2".into(), set_at: now };
    assert!(index.set_legal_hold(&demo, "a", Some(&hold), &audit("hold-1")).await.unwrap(), "cancelled");
    assert!(!index.schedule_erasure(&demo, "a", "admin-1", now, &audit("erase-4")).await.unwrap(), "held");
    assert_eq!(index.patient_status(&demo, "a").await.unwrap().hold, Some(hold));
    assert!(!index.set_legal_hold(&demo, "a", None, &audit("hold-2")).await.unwrap());
    assert_eq!(index.patient_status(&demo, "a").await.unwrap().hold, None);

    // Due now: executed once.
    assert!(index.schedule_erasure(&demo, "a", "admin-1", now, &audit("erase-5")).await.unwrap());
    let due = index.due_erasures(Timestamp::from_millis(now.millis() + 1), 10).await.unwrap();
    assert_eq!(due, [("demo".to_owned(), "a".to_owned())]);
    let mut run = audit("run-2");
    run.recorded = Timestamp::from_millis(now.millis() + 1);
    assert!(index.erase(&demo, "a", &run).await.unwrap());
    assert!(!index.erase(&demo, "a", &run).await.unwrap(), "done once");
    let status = index.patient_status(&demo, "a").await.unwrap();
    assert_eq!(status.erasure.as_ref().map(|e| e.state), Some(ErasureState::Done));
    let tombstone = index.tenant_key(&demo, "Patient/a").await.unwrap().unwrap();
    assert_eq!(tombstone, WrappedKey { kek_version: ERASED, bytes: Vec::new() });
    assert_eq!(index.tenant_key(&demo, "Patient/b").await.unwrap().unwrap().kek_version, 1);
    let fresh = WrappedKey { kek_version: 1, bytes: vec![1; 60] };
    let stored = index.insert_tenant_key(&demo, "Patient/a", &fresh).await.unwrap();
    assert_eq!(stored.kek_version, ERASED, "nothing takes the erased key's place");

    // The erased patient's search rows are gone, every kind; the other patient's stay.
    assert_eq!(found(index, vec![Filter::AnyToken(vec![[2; 16]])]).await, ["b"]);
    assert!(found(index, vec![Filter::AnyToken(vec![[1; 16]])]).await.is_empty());
    let dates = vec![(Bound::Lo, Cmp::Ge, 0)];
    assert_eq!(found(index, vec![Filter::Date { param: "date".into(), any: vec![dates] }]).await, ["b"]);
    let numbers = vec![(Cmp::Gt, 0.0)];
    assert!(found(index, vec![Filter::Number { param: "value".into(), any: vec![(numbers, None)] }]).await.is_empty());
    let activity = index.compartment_activity(&demo, "Patient/b").await.unwrap();
    assert_eq!(activity, [("Patient".to_owned(), Timestamp::from_millis(2_000))]);
}

/// Rotation on a key provider: a new KEK version becomes primary, every stored key is
/// re-wrapped under it and opens as before, the old version is destroyed; a wrapped key kept
/// from before (a backup of the index) then no longer opens, which is what makes an erasure
/// reach backups. An interrupted rotation is finished by the next run.
async fn rotation_conformance(provider: Arc<dyn KeyProvider>, index: &Arc<dyn Index>) {
    use fhirvault::storage::ERASED;
    let demo = tenant();
    let keys = || {
        KeyService::new(provider.clone(), index.clone(), 16, Duration::from_secs(60))
            .with_version_refresh(Duration::ZERO)
    };
    let service = keys();
    service.prepare(std::slice::from_ref(&demo)).await.unwrap();
    for id in ["p1", "p2", "p3"] {
        service.compartment_key_for_write(&demo, &format!("Patient/{id}")).await.unwrap();
    }
    service.mac_key(&demo, "search").await.unwrap();
    let stored =
        |key_ref: &'static str| async move { index.tenant_key(&demo_tenant(), key_ref).await.unwrap().unwrap() };
    let clear = |wrapped: WrappedKey, key_ref: &'static str| {
        let provider = provider.clone();
        async move { provider.unwrap(&demo_tenant(), key_ref, &wrapped).await }
    };
    // The backup: the wrapped keys as a copy of the index taken now holds them.
    let backup_p1 = stored("Patient/p1").await;
    let backup_p2 = stored("Patient/p2").await;
    let p2 = clear(backup_p2.clone(), "Patient/p2").await.unwrap();
    assert_eq!(backup_p1.kek_version, 1);

    // Patient p1 is erased: the current index no longer holds the key.
    assert!(index.schedule_erasure(&demo, "p1", "admin", Timestamp::now(), &audit("erase")).await.unwrap());
    assert!(index.erase(&demo, "p1", &audit("run")).await.unwrap());
    assert_eq!(stored("Patient/p1").await.kek_version, ERASED);
    let err = keys().compartment_key(&demo, "Patient/p1").await.err().unwrap();
    assert!(matches!(err, fhirvault::keys::KeyError::Erased(_)), "{err}");
    assert!(clear(backup_p1.clone(), "Patient/p1").await.is_ok(), "until the next rotation, a backup still opens it");

    // The rotation: version 2 is primary, the live keys are re-wrapped, version 1 destroyed.
    let rotation = service.rotate(&demo, Duration::ZERO).await.unwrap();
    assert_eq!((rotation.primary, rotation.added, rotation.destroyed.as_slice()), (2, true, &[1][..]));
    assert_eq!(rotation.rewrapped, 3, "p2, p3 and the search key; the tombstone is left alone");
    let now_p2 = stored("Patient/p2").await;
    assert_eq!(now_p2.kek_version, 2);
    assert!(clear(now_p2, "Patient/p2").await.unwrap().same_as(&p2), "the same key, under the new KEK");
    assert!(keys().compartment_key(&demo, "Patient/p3").await.is_ok());
    assert_eq!(stored("Patient/p1").await.kek_version, ERASED);
    if provider.destroys_keks() {
        assert!(clear(backup_p1, "Patient/p1").await.is_err(), "the backup no longer opens the erased patient");
        assert!(clear(backup_p2, "Patient/p2").await.is_err(), "nor anything else under the destroyed KEK");
    }
    let usage = index.kek_usage().await.unwrap();
    let v1 = usage.iter().find(|u| u.tenant == "demo" && u.version == 1).unwrap();
    assert!(v1.destroyed_at.is_some() && v1.wrapped_keys == 0, "{v1:?}");

    // A rotation interrupted after its new version: the next run finishes it.
    let (primary, added) = keys().begin_rotation(&demo).await.unwrap();
    assert_eq!((primary, added), (3, true));
    let finished = keys().rotate(&demo, Duration::ZERO).await.unwrap();
    assert_eq!((finished.primary, finished.added, finished.destroyed.as_slice()), (3, false, &[2][..]));
    assert_eq!(finished.rewrapped, 3);
    keys().compartment_key_for_write(&demo, "Patient/p4").await.unwrap();
    assert_eq!(stored("Patient/p4").await.kek_version, 3, "new keys are wrapped under the primary version");

    // A stale re-wrap (what another rotation read before this one changed it) changes nothing.
    let current = stored("Patient/p3").await;
    let stale = WrappedKey { kek_version: 2, bytes: vec![0; 60] };
    assert!(!index.rewrap_tenant_key(&demo, "Patient/p3", &stale, &current).await.unwrap());

    // The provider calls were counted per version.
    service.flush_usage().await.unwrap();
    let usage = index.kek_usage().await.unwrap();
    let v2 = usage.iter().find(|u| u.tenant == "demo" && u.version == 2).unwrap();
    assert!(v2.wraps >= 3, "{v2:?}");
}

fn demo_tenant() -> TenantId {
    tenant()
}

#[tokio::test]
async fn the_local_key_file_provider_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.key");
    LocalFileProvider::ensure_file(&path).unwrap();
    let db = fresh_index().await;
    rotation_conformance(Arc::new(LocalFileProvider::load(&path).unwrap()), &db.index).await;
}

/// A label prefix of this test's own: rotation destroys KEKs, which the other tests share.
fn own_prefix(prefix: &str) -> String {
    let mut bytes = [0u8; 6];
    fhirvault::crypto::fill_random(&mut bytes).unwrap();
    format!("{prefix}-rot-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pkcs11_provider_rotates_and_destroys() {
    let Some(settings) = pkcs11_settings() else { return };
    let options = Pkcs11Options { label_prefix: own_prefix(&settings.label_prefix), ..pkcs11_options(&settings) };
    let db = fresh_index().await;
    let provider = Pkcs11Provider::open(options).unwrap();
    rotation_conformance(Arc::new(provider.clone()), &db.index).await;
    let demo = tenant();
    assert!(provider.kek_ids(&demo, 1).await.unwrap().is_empty(), "version 1 is gone from the token");
    assert!(provider.kek_ids(&demo, 2).await.unwrap().is_empty(), "version 2 too");
    assert_eq!(provider.kek_ids(&demo, 3).await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_transit_provider_rotates_and_destroys() {
    let Some(settings) = transit_settings() else { return };
    let options = TransitOptions { key_prefix: own_prefix(&settings.key_prefix), ..transit_options(&settings) };
    let db = fresh_index().await;
    rotation_conformance(Arc::new(TransitProvider::new(options).unwrap()), &db.index).await;
}
