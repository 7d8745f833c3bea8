//! Batched lookups: reads by id hand the resource they want to a lookup task, which reads all
//! the lookups that queued up meanwhile in one round trip (`Index::look_up`).
//!
//! On PostgreSQL a read's own `SELECT` cost the database about twice what the same statement
//! costs on a busy connection (each one wakes a sleeping server process), and the HTTP worker a
//! socket round trip of its own. A lookup task keeps one connection busy with batches instead.
//! It never waits for anything but the batch before it: a lookup does not share a round trip
//! with the audit records (whose commit waits for a flush), and a lone lookup goes at once.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Index, Lookup, StorageError, VersionRow};

/// At most this many lookups share a round trip.
const MAX_BATCH: usize = 256;
/// Lookups waiting beyond this make their senders wait (back-pressure, not unbounded memory).
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<Option<VersionRow>, StorageError>>;

/// The handle reads look up through. Cloning it is cheap; the task stops when every handle is
/// dropped and the queue is empty.
#[derive(Clone)]
pub struct Lookups {
    queue: mpsc::Sender<(Lookup, Reply)>,
}

impl Lookups {
    /// Start the lookup task on the current Tokio runtime.
    pub fn start(index: &Arc<dyn Index>) -> Self {
        let (queue, jobs) = mpsc::channel(QUEUE);
        tokio::spawn(work(Arc::clone(index), jobs));
        Self { queue }
    }

    /// The resource's current version, as `Index::current` answers it.
    pub async fn current(&self, lookup: Lookup) -> Result<Option<VersionRow>, StorageError> {
        let (done, outcome) = oneshot::channel();
        self.queue.send((lookup, done)).await.map_err(|_| StorageError::TaskStopped)?;
        outcome.await.map_err(|_| StorageError::TaskStopped)?
    }
}

/// Take what has queued up (waiting for the first lookup), read it, answer, repeat.
async fn work(index: Arc<dyn Index>, mut jobs: mpsc::Receiver<(Lookup, Reply)>) {
    let mut batch = Vec::new();
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (lookups, replies): (Vec<Lookup>, Vec<Reply>) = batch.drain(..).unzip();
        match index.look_up(&lookups).await {
            // A waiter that went away (its client disconnected) is fine.
            Ok(rows) if rows.len() == lookups.len() => {
                for (done, row) in replies.into_iter().zip(rows) {
                    let _ = done.send(Ok(row));
                }
            }
            Ok(_) => {
                for done in replies {
                    let _ = done.send(Err(StorageError::Corrupt("a batch of lookups lost an answer".into())));
                }
            }
            // A failed batch is read again lookup by lookup: each gets its own answer or error.
            Err(error) => {
                if lookups.len() > 1 {
                    tracing::warn!(%error, lookups = lookups.len(), "batched lookup failed; reading its lookups one by one");
                }
                for (l, done) in lookups.iter().zip(replies) {
                    let _ = done.send(index.current(&l.tenant, l.resource_type, &l.id).await);
                }
            }
        }
    }
}
