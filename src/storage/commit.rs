//! Group commit: requests hand their index writes (version commits and audit records) to a
//! committer task, which writes whatever has queued up meanwhile in one transaction.
//!
//! A durable commit costs a flush (an fsync of the WAL, on either database) and, on PostgreSQL,
//! a few round trips; sharing them between the requests that arrive together is what lets every
//! read carry a durable audit record at little cost. Nothing is acknowledged before its
//! transaction committed, so a request never answers with its audit record still in flight.
//!
//! **Architecture Invariant:** a job's outcome is its own. A version that conflicts fails
//! alone (the batch commits the others); a batch whose transaction fails is retried job by job,
//! so one bad job cannot fail the requests that happened to share its batch.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Index, StorageError, VersionCommit};
use crate::audit::AuditRecord;

/// At most this many jobs share a transaction.
const MAX_BATCH: usize = 256;
/// Jobs waiting beyond this make their senders wait (back-pressure, not unbounded memory).
const QUEUE: usize = 4096;

enum Job {
    Version(Box<VersionCommit>, oneshot::Sender<Result<i64, StorageError>>),
    /// One request's records: they commit together.
    Audit(Vec<AuditRecord>, oneshot::Sender<Result<(), StorageError>>),
    /// A read's record, written only while the version it names is current (`true`).
    AuditIfCurrent(Box<AuditRecord>, oneshot::Sender<Result<bool, StorageError>>),
}

/// The handle requests commit through. Cloning it is cheap; the task stops when every handle
/// is dropped and the queue is empty.
#[derive(Clone)]
pub struct Committer {
    jobs: mpsc::Sender<Job>,
}

impl Committer {
    /// Start the committer task on the current Tokio runtime. One task on either database:
    /// SQLite has a single writer, and PostgreSQL flushes one commit at a time, so a second
    /// task only split the batches and added flushes (BENCHMARKS.md, "One committer"). The
    /// next batch fills while one commits.
    pub fn start(index: &Arc<dyn Index>) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(work(Arc::clone(index), queue));
        Self { jobs }
    }

    /// Commit one version (see `Index::commit_batch`); returns its `seq` once durable.
    pub async fn commit_version(&self, commit: VersionCommit) -> Result<i64, StorageError> {
        let (done, outcome) = oneshot::channel();
        self.send(Job::Version(Box::new(commit), done)).await?;
        outcome.await.map_err(|_| StorageError::TaskStopped)?
    }

    /// Append one audit record; returns once it is durable.
    pub async fn append_audit(&self, record: AuditRecord) -> Result<(), StorageError> {
        self.append_audits(vec![record]).await
    }

    /// Append the records of one request (all or none); returns once they are durable.
    pub async fn append_audits(&self, records: Vec<AuditRecord>) -> Result<(), StorageError> {
        let (done, outcome) = oneshot::channel();
        self.send(Job::Audit(records, done)).await?;
        outcome.await.map_err(|_| StorageError::TaskStopped)?
    }

    /// Append `record` only while the version it names is its resource's current version
    /// (`Index::append_audit_if_current`); returns once durable whether it was, and so was
    /// written.
    pub async fn append_audit_if_current(&self, record: AuditRecord) -> Result<bool, StorageError> {
        let (done, outcome) = oneshot::channel();
        self.send(Job::AuditIfCurrent(Box::new(record), done)).await?;
        outcome.await.map_err(|_| StorageError::TaskStopped)?
    }

    async fn send(&self, job: Job) -> Result<(), StorageError> {
        self.jobs.send(job).await.map_err(|_| StorageError::TaskStopped)
    }
}

/// Take what has queued up (waiting for the first job), commit it, repeat.
async fn work(index: Arc<dyn Index>, mut queue: mpsc::Receiver<Job>) {
    loop {
        let mut batch = Vec::new();
        if queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        commit(index.as_ref(), batch).await;
    }
}

/// A batch of reads' records alone, or with other records, is one statement and one flush;
/// with versions as well, the checked records take a second transaction after the first.
async fn commit(index: &dyn Index, batch: Vec<Job>) {
    let mut versions = Vec::new();
    let mut version_done = Vec::new();
    let mut audits = Vec::new();
    let mut audit_done = Vec::new();
    let mut checked = Vec::new();
    let mut checked_done = Vec::new();
    for job in batch {
        match job {
            Job::Version(commit, done) => {
                versions.push(*commit);
                version_done.push(done);
            }
            Job::Audit(records, done) => {
                audit_done.push((records.len(), done));
                audits.extend(records);
            }
            Job::AuditIfCurrent(record, done) => {
                checked.push(*record);
                checked_done.push(done);
            }
        }
    }
    if checked.is_empty() {
        commit_versions(index, versions, version_done, audits, audit_done).await;
    } else if versions.is_empty() {
        commit_checked(index, audits, audit_done, checked, checked_done).await;
    } else {
        commit_versions(index, versions, version_done, audits, audit_done).await;
        commit_checked(index, Vec::new(), Vec::new(), checked, checked_done).await;
    }
}

type AuditDone = (usize, oneshot::Sender<Result<(), StorageError>>);

/// Records, and records only while current, in one transaction; one by one if it fails.
async fn commit_checked(
    index: &dyn Index,
    audits: Vec<AuditRecord>,
    audit_done: Vec<AuditDone>,
    checked: Vec<AuditRecord>,
    checked_done: Vec<oneshot::Sender<Result<bool, StorageError>>>,
) {
    let jobs = audit_done.len() + checked_done.len();
    match index.append_audit_if_current(&audits, &checked).await {
        Ok(current) if current.len() == checked.len() => {
            for (_, done) in audit_done {
                let _ = done.send(Ok(()));
            }
            for (done, current) in checked_done.into_iter().zip(current) {
                let _ = done.send(Ok(current));
            }
        }
        Ok(_) => {
            let lost = || StorageError::Corrupt("a batch of checked audit records lost an answer".into());
            for (_, done) in audit_done {
                let _ = done.send(Err(lost()));
            }
            for done in checked_done {
                let _ = done.send(Err(lost()));
            }
        }
        Err(error) if jobs == 1 => {
            if let Some((_, done)) = audit_done.into_iter().next() {
                let _ = done.send(Err(error));
            } else if let Some(done) = checked_done.into_iter().next() {
                let _ = done.send(Err(error));
            }
        }
        Err(error) => {
            tracing::warn!(%error, jobs, "batch of audit records failed; committing them one by one");
            append_each(index, &audits, audit_done).await;
            for (record, done) in checked.into_iter().zip(checked_done) {
                let outcome = index.append_audit_if_current(&[], std::slice::from_ref(&record)).await;
                let _ = done.send(outcome.map(|current| current.first().copied().unwrap_or(false)));
            }
        }
    }
}

/// Versions and records in one transaction; job by job if it fails.
async fn commit_versions(
    index: &dyn Index,
    versions: Vec<VersionCommit>,
    mut version_done: Vec<oneshot::Sender<Result<i64, StorageError>>>,
    audits: Vec<AuditRecord>,
    mut audit_done: Vec<AuditDone>,
) {
    let jobs = versions.len() + audit_done.len();
    match index.commit_batch(&versions, &audits).await {
        Ok(outcomes) => {
            // A waiter that went away (its client disconnected) is fine: the job committed.
            for (done, outcome) in version_done.into_iter().zip(outcomes) {
                let _ = done.send(outcome);
            }
            for (_, done) in audit_done {
                let _ = done.send(Ok(()));
            }
        }
        Err(error) if jobs == 1 => {
            if let Some(done) = version_done.pop() {
                let _ = done.send(Err(error));
            } else if let Some((_, done)) = audit_done.pop() {
                let _ = done.send(Err(error));
            }
        }
        Err(error) => {
            tracing::warn!(%error, jobs, "batch commit failed; committing its jobs one by one");
            for (commit, done) in versions.into_iter().zip(version_done) {
                let outcome = index.commit_batch(std::slice::from_ref(&commit), &[]).await;
                let outcome = outcome.and_then(|mut o| o.pop().unwrap_or(Err(StorageError::TaskStopped)));
                let _ = done.send(outcome);
            }
            append_each(index, &audits, audit_done).await;
        }
    }
}

/// After a failed batch: each request's records (the first `n` of what is left, in order) in
/// a transaction of their own, each answered with its own outcome.
async fn append_each(index: &dyn Index, audits: &[AuditRecord], audit_done: Vec<AuditDone>) {
    let mut rest = audits;
    for (n, done) in audit_done {
        let (records, after) = rest.split_at(n.min(rest.len()));
        rest = after;
        let _ = done.send(index.append_audit(records).await);
    }
}
