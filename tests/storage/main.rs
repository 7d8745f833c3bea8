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

use fhirvault::audit::{Agent, AuditAction, AuditRecord, RequestMeta};
use fhirvault::crypto::WrappedKey;
use fhirvault::ids::{ResourceId, ResourceType, TenantId, VersionId};
use fhirvault::storage::{
    HistoryQuery, Index, IndexOptions, Method, NewVersion, ObjectKey, ObjectStorage, StorageError, open_index,
};
use fhirvault::time::Timestamp;
use secrecy::SecretString;

use crate::backends::{PgDatabase, on_postgres, s3_settings};

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
    let meta = RequestMeta { request_id: request.to_owned(), source_ip: None };
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
async fn the_database_keeps_audit_records_append_only() {
    let t = fresh_index().await;
    t.index.append_audit(&[audit("a"), audit("b").outcome(404, Some("not found".into()))]).await.unwrap();
    t.index.commit_version(&new_version("p1", 1, None, 1), &audit("c")).await.unwrap();
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&t.url).await.unwrap();
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT request_id, outcome FROM audit_records ORDER BY seq").fetch_all(&pool).await.unwrap();
    assert_eq!(rows, [("a", 200), ("b", 404), ("c", 200)].map(|(r, o)| (r.to_owned(), o)));
    let mut refused = vec!["UPDATE audit_records SET outcome = 500", "DELETE FROM audit_records"];
    if on_postgres() {
        refused.push("TRUNCATE audit_records");
    }
    for statement in refused {
        let err = sqlx::query(statement).execute(&pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{statement}: {err}");
    }
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
