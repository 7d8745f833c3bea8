//! The sealer: moves committed audit records from the inbox into each tenant's log, extends the
//! log's Merkle tree and signs checkpoints.
//!
//! One pass is one index transaction under the sealer lock (an advisory lock on PostgreSQL,
//! the write lock on SQLite), so several replicas may run a sealer: one seals, the others find
//! the lock taken. The sealer keeps each log's frontier (the hashes of its right edge) in
//! memory, checked against the log's size in the index at every pass, and reloaded when
//! another process has moved it.
//!
//! A checkpoint is signed every `checkpoint_every_entries` entries of a log, and when a log has
//! entries no checkpoint covers yet and the last one is `checkpoint_every_ms` old. Each is
//! stored in the index (same transaction) and then copied to the tenant's object storage under
//! a create-only key, where someone able to rewrite the database cannot rewrite it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::log::{Frontier, Hash, LogKey, SERVER_LOG, record_hash};
use super::{AuditRecord, event};
use crate::ids::TenantId;
use crate::storage::audit_log::{InboxEntry, LogEntry, LogHead, LogSealer, Sealed, StoredCheckpoint, log_of};
use crate::storage::{Index, Locations, ObjectKey, StorageError};
use crate::time::Timestamp;

/// How often and how much the sealer works.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    /// Records taken from the inbox per transaction.
    pub batch: u32,
    /// How long the sealer sleeps when the inbox was empty.
    pub idle: Duration,
    pub checkpoint_every_entries: u64,
    pub checkpoint_every: Duration,
}

struct LogState {
    frontier: Frontier,
    checkpoint_size: u64,
    checkpoint_at: Option<Instant>,
}

/// The sealer's state across passes (see the module comment).
pub struct Sealer {
    key: Arc<LogKey>,
    cadence: Cadence,
    /// Logs named at start (every tenant, and the server's), so that a tail left unsigned by a
    /// previous process gets its checkpoint.
    known: BTreeSet<String>,
    logs: BTreeMap<String, LogState>,
    /// Sign every unsigned tail at the end of each pass, whatever its age (`drain`).
    sign_tails: bool,
}

impl Sealer {
    pub fn new(key: Arc<LogKey>, cadence: Cadence, tenants: impl IntoIterator<Item = TenantId>) -> Self {
        let mut known: BTreeSet<String> = tenants.into_iter().map(|t| t.as_str().to_owned()).collect();
        known.insert(SERVER_LOG.to_owned());
        Self { key, cadence, known, logs: BTreeMap::new(), sign_tails: false }
    }

    /// The log key it signs with.
    pub fn key(&self) -> Arc<LogKey> {
        self.key.clone()
    }
}

/// Whether the in-memory state of `log` matches the index's head.
fn current(logs: &BTreeMap<String, LogState>, log: &str, head: LogHead) -> bool {
    logs.get(log).is_some_and(|s| s.frontier.size() == head.size)
}

/// Sign `log`'s tree as it stands, and note that it is signed.
fn sign_checkpoint(key: &LogKey, log: &str, state: &mut LogState) -> Result<StoredCheckpoint, StorageError> {
    let root = state.frontier.root().map_err(|e| StorageError::Corrupt(e.to_string()))?;
    let size = state.frontier.size();
    let note = key.sign(log, size, root).map_err(|e| StorageError::Corrupt(e.to_string()))?;
    state.checkpoint_size = size;
    state.checkpoint_at = Some(Instant::now());
    Ok(StoredCheckpoint { log: log.to_owned(), size, note, created: Timestamp::now() })
}

impl LogSealer for Sealer {
    fn logs(&self) -> Vec<String> {
        self.known.iter().chain(self.logs.keys()).cloned().collect()
    }

    fn needs(&self, heads: &BTreeMap<String, LogHead>) -> Vec<(String, Vec<u64>)> {
        heads
            .iter()
            .filter(|(log, head)| head.size > 0 && !current(&self.logs, log, **head))
            .map(|(log, head)| (log.clone(), Frontier::indexes(head.size)))
            .collect()
    }

    fn seal(
        &mut self,
        heads: &BTreeMap<String, LogHead>,
        loaded: Vec<(String, u64, [u8; 32])>,
        inbox: Vec<InboxEntry>,
    ) -> Result<Sealed, StorageError> {
        let corrupt = |e: super::log::LogError| StorageError::Corrupt(e.to_string());
        let mut loaded_by_log: BTreeMap<String, Vec<(u64, Hash)>> = BTreeMap::new();
        for (log, i, hash) in loaded {
            loaded_by_log.entry(log).or_default().push((i, Hash(hash)));
        }
        for (log, head) in heads {
            if current(&self.logs, log, *head) {
                if let Some(state) = self.logs.get_mut(log) {
                    state.checkpoint_size = head.checkpoint_size;
                }
                continue;
            }
            let frontier = Frontier::load(head.size, loaded_by_log.remove(log).unwrap_or_default()).map_err(corrupt)?;
            self.logs
                .insert(log.clone(), LogState { frontier, checkpoint_size: head.checkpoint_size, checkpoint_at: None });
        }

        let mut sealed = Sealed::default();
        for entry in inbox {
            let log = log_of(&entry.record);
            let every = self.cadence.checkpoint_every_entries.max(1);
            let Some(state) = self.logs.get_mut(&log) else {
                return Err(StorageError::Corrupt(format!("no head read for log {log}")));
            };
            let index = state.frontier.size();
            let bytes = event::render(&entry.record, index);
            let added = state.frontier.append(record_hash(&bytes)).map_err(corrupt)?;
            sealed.hashes.extend(added.into_iter().map(|(i, h)| (log.clone(), i, h.0)));
            sealed.entries.push(log_entry(&log, index, &entry.record, bytes));
            if state.frontier.size() - state.checkpoint_size >= every {
                sealed.checkpoints.push(sign_checkpoint(&self.key, &log, state)?);
            }
        }
        let due: Vec<String> = self
            .logs
            .iter()
            .filter(|(_, s)| {
                s.frontier.size() > s.checkpoint_size
                    && (self.sign_tails
                        || s.checkpoint_at.is_none_or(|at| at.elapsed() >= self.cadence.checkpoint_every))
            })
            .map(|(log, _)| log.clone())
            .collect();
        for log in due {
            if let Some(state) = self.logs.get_mut(&log) {
                sealed.checkpoints.push(sign_checkpoint(&self.key, &log, state)?);
            }
        }
        Ok(sealed)
    }

    fn abort(&mut self) {
        self.logs.clear();
    }
}

/// Lowers the calling thread to the lowest CPU priority (nice 19; on Linux the nice value is
/// the thread's own). Where the system refuses, the thread keeps its priority: sealing is then
/// only less polite, not wrong.
fn background() {
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
        tracing::debug!(%error, "the sealer's thread keeps its CPU priority");
    }
}

/// The entry of `record` at `index` of `log`: its rendered event, and beside it the columns
/// auditors search by (`event::columns_match` checks that they agree).
pub fn log_entry(log: &str, index: u64, r: &AuditRecord, event: Vec<u8>) -> LogEntry {
    LogEntry {
        log: log.to_owned(),
        index,
        recorded: r.recorded,
        action: r.action.as_str().to_owned(),
        outcome: r.outcome,
        agent: r.agent.subject.clone(),
        patient: r.compartment.clone().filter(|c| c.starts_with("Patient/")),
        entity: r.resource_type.map(|rt| match &r.resource_id {
            Some(id) => format!("{}/{}", rt.as_str(), id.as_str()),
            None => rt.as_str().to_owned(),
        }),
        event,
    }
}

/// The object key of a checkpoint: outside `tenants/` (the orphan sweeper's prefix), by log and
/// zero-padded size so that a listing is in order.
pub fn checkpoint_key(log: &str, size: u64) -> ObjectKey {
    ObjectKey::from_index(format!("audit/{log}/checkpoints/{size:020}"))
}

/// Copy checkpoints to their tenant's storage location (the server's log goes to every
/// location's first, by name). A checkpoint already there is left as it is.
pub async fn publish(locations: &Locations, checkpoints: &[StoredCheckpoint]) -> Result<(), StorageError> {
    for c in checkpoints {
        let storage = match TenantId::parse(&c.log) {
            Ok(tenant) => locations.for_tenant(&tenant),
            Err(_) => locations.iter().next(),
        };
        let Some(storage) = storage else { continue };
        match storage.put_new(&checkpoint_key(&c.log, c.size), c.note.clone().into_bytes()).await {
            Ok(()) | Err(StorageError::ObjectExists(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One pass: seal what the inbox holds (up to a batch), publish the checkpoints it signed.
pub async fn pass(index: &dyn Index, sealer: &mut Sealer, locations: &Locations) -> Result<usize, StorageError> {
    let batch = sealer.cadence.batch;
    let report = index.seal(batch, sealer).await?;
    if !report.checkpoints.is_empty() {
        publish(locations, &report.checkpoints).await?;
    }
    Ok(report.sealed)
}

/// Seal until the inbox is empty, and sign every log's tail (tests, `audit seal`).
pub async fn drain(index: &dyn Index, sealer: &mut Sealer, locations: &Locations) -> Result<usize, StorageError> {
    sealer.sign_tails = true;
    let mut total = 0;
    loop {
        let sealed = pass(index, sealer, locations).await?;
        total += sealed;
        if sealed < usize::try_from(sealer.cadence.batch).unwrap_or(usize::MAX) {
            return Ok(total);
        }
    }
}

/// The background sealer, on a thread of its own (`audit-sealer`) with a single-threaded
/// runtime of its own, at the lowest CPU priority except where its lock holds up writers
/// (SQLite): a pass, then another at once while the inbox was full, else after `idle`. A failed
/// pass is logged and retried: records wait in the inbox, nothing is lost.
///
/// The server's main runtime is single-threaded and runs the committer that answers every
/// read's audit record (and, on PostgreSQL, the task that answers its lookup). A pass on it
/// (decoding a few thousand inbox rows, rendering and hashing them, encoding and sending about
/// 12 MB of `COPY` data, freeing it all) held up every read in flight for milliseconds at a
/// time; here it takes the cores only where requests leave them idle. Its one deadline is the next checkpoint; theirs is the client waiting.
///
/// The thread stops (at its next pass or wait) when the runtime that called `spawn` shuts down.
/// An error: the sealer's runtime or thread could not start.
pub fn spawn(index: Arc<dyn Index>, sealer: Sealer, locations: Locations) -> std::io::Result<Background> {
    // Built here, so that a runtime that cannot start stops the server's start (an error, not
    // a log line while records pile up in the inbox).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (running, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _running = running;
        std::future::pending::<()>().await;
    });
    let (progress, sealed) = tokio::sync::watch::channel(0);
    // Where writers wait for the pass's lock, the lowest priority would make them wait on a
    // thread the scheduler runs last: the sealer then keeps its priority.
    let polite = !index.sealing_blocks_writers();
    let thread = std::thread::Builder::new().name("audit-sealer".to_owned()).spawn(move || {
        if polite {
            background();
        }
        runtime.block_on(async move {
            tokio::select! {
                _ = stopped => {}
                () = seal_forever(index, sealer, locations, progress) => {}
            }
        });
    })?;
    Ok(Background { sealed, thread })
}

/// The background sealer's thread, and how many records it has sealed so far.
pub struct Background {
    pub sealed: tokio::sync::watch::Receiver<u64>,
    pub thread: std::thread::JoinHandle<()>,
}

async fn seal_forever(
    index: Arc<dyn Index>,
    mut sealer: Sealer,
    locations: Locations,
    progress: tokio::sync::watch::Sender<u64>,
) {
    let full = usize::try_from(sealer.cadence.batch).unwrap_or(usize::MAX);
    loop {
        let wait = match pass(index.as_ref(), &mut sealer, &locations).await {
            Ok(sealed) => {
                progress.send_modify(|total| *total = total.saturating_add(u64::try_from(sealed).unwrap_or(u64::MAX)));
                if sealed >= full { Duration::ZERO } else { sealer.cadence.idle }
            }
            Err(error) => {
                tracing::error!(%error, "audit sealing failed; the records wait in the inbox");
                sealer.cadence.idle.max(Duration::from_secs(1))
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}
