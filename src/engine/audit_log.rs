//! The auditor's view of the tamper-evident log: the latest signed checkpoint and the proofs
//! that let an auditor check, against checkpoints they hold, that an entry is in the log and
//! that the log only ever grew. Each read is decided (`read-audit`) and itself audited.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tlog_tiles::{Hash, HashReader};

use crate::audit::package::Package;
use crate::audit::{Agent, AuditAction, AuditRecord, Target};
use crate::auth::Principal;
use crate::ids::ResourceType;
use crate::policy::Action;

use super::{Engine, EngineError, RequestContext};

/// What the auditor asks of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogQuery {
    /// The latest signed checkpoint.
    Checkpoint,
    /// Entry `index` is in the tree of `size`.
    Inclusion { index: u64, size: u64 },
    /// The tree of `from` is a prefix of the tree of `to`.
    Consistency { from: u64, to: u64 },
    /// An offline evidence package of entries `from..to` (see `audit::package`).
    Export { from: Option<u64>, to: Option<u64> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum LogAnswer {
    /// A signed note, as signed.
    Note(String),
    Proof(Value),
    /// An evidence package (NDJSON).
    Package(Vec<u8>),
}

/// A `HashReader` that only notes which stored hashes a proof needs (tlog's provers ask for
/// all of them in one call, whose indexes do not depend on the hashes).
#[derive(Default)]
struct Wanted(Mutex<Vec<u64>>);

impl HashReader for Wanted {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        if let Ok(mut wanted) = self.0.lock() {
            wanted.extend_from_slice(indexes);
        }
        Ok(vec![Hash([0; 32]); indexes.len()])
    }
}

struct Loaded(HashMap<u64, Hash>);

impl HashReader for Loaded {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes.iter().map(|i| self.0.get(i).copied().ok_or(tlog_tiles::Error::IndexesNotInTree)).collect()
    }
}

fn b64(h: &Hash) -> String {
    STANDARD.encode(h.0)
}

impl Engine {
    /// `GET /audit/{tenant}/checkpoint`, `.../proof/inclusion`, `.../proof/consistency`.
    pub async fn audit_log(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        query: LogQuery,
    ) -> Result<LogAnswer, EngineError> {
        let rt = ResourceType::AUDIT_EVENT;
        let target = Target { resource_type: Some(rt), ..Target::default() };
        let result = async {
            let permit = self
                .policies
                .authorize(principal, Action::ReadAudit, &self.policy_target(ctx, rt, None))
                .map_err(EngineError::Forbidden)?;
            let answer = self.answer_log_query(ctx.tenant.as_str(), query).await?;
            Ok((permit, answer))
        }
        .await;
        let (permit, answer) = self.audited(ctx, principal, AuditAction::AuditLog, target.clone(), result).await?;
        let record = AuditRecord::new(&ctx.meta, Some(&ctx.tenant), Agent::of(principal), AuditAction::AuditLog)
            .target(&target)
            .policy(Some(permit.rule()));
        self.commits.append_audit(record).await?;
        Ok(answer)
    }

    async fn answer_log_query(&self, log: &str, query: LogQuery) -> Result<LogAnswer, EngineError> {
        match query {
            LogQuery::Checkpoint => {
                let latest = self.index.log_checkpoints(log, true).await?;
                let checkpoint = latest
                    .into_iter()
                    .next()
                    .ok_or_else(|| EngineError::NoSuchTree("the audit log has no signed checkpoint yet".into()))?;
                Ok(LogAnswer::Note(checkpoint.note))
            }
            LogQuery::Inclusion { index, size } => {
                if index >= size {
                    return Err(EngineError::BadRequest(format!("`index` ({index}) must be below `size` ({size})")));
                }
                let wanted = Wanted::default();
                let leaf_index = tlog_tiles::stored_hash_index(0, index);
                let plan = tlog_tiles::prove_record(size, index, &wanted).map(drop);
                let hashes = self.load_hashes(log, wanted, &[leaf_index], size, plan).await?;
                let proof = tlog_tiles::prove_record(size, index, &hashes).map_err(|e| tree_error(size, &e))?;
                let leaf = hashes.0.get(&leaf_index).copied().ok_or_else(|| no_tree(size))?;
                Ok(LogAnswer::Proof(json!({
                    "index": index,
                    "size": size,
                    "leafHash": b64(&leaf),
                    "proof": proof.iter().map(b64).collect::<Vec<_>>(),
                })))
            }
            LogQuery::Export { from, to } => Ok(LogAnswer::Package(Box::pin(self.export(log, from, to)).await?)),
            LogQuery::Consistency { from, to } => {
                if from == 0 || from > to {
                    return Err(EngineError::BadRequest(format!(
                        "`from` ({from}) must be at least 1 and at most `to` ({to})"
                    )));
                }
                let wanted = Wanted::default();
                let plan = tlog_tiles::prove_tree(to, from, &wanted).map(drop);
                // The root of `to` is read too, so a size beyond the log is refused.
                let roots = tlog_tiles::sub_tree_index(0, to, Vec::new());
                let hashes = self.load_hashes(log, wanted, &roots, to, plan).await?;
                let proof = tlog_tiles::prove_tree(to, from, &hashes).map_err(|e| tree_error(to, &e))?;
                Ok(LogAnswer::Proof(json!({
                    "from": from,
                    "to": to,
                    "proof": proof.iter().map(b64).collect::<Vec<_>>(),
                })))
            }
        }
    }

    /// Entries `from..to` with what an offline verifier needs to check them against the
    /// signed checkpoints: `to` rounded up to the next checkpoint, so every entry is covered
    /// by a signature.
    async fn export(&self, log: &str, from: Option<u64>, to: Option<u64>) -> Result<Vec<u8>, EngineError> {
        let public_key = self
            .limits
            .audit_public_key
            .as_deref()
            .ok_or_else(|| EngineError::NoSuchTree("this server has no audit log key".into()))?;
        let checkpoints = self.index.log_checkpoints(log, false).await?;
        let latest = checkpoints
            .last()
            .ok_or_else(|| EngineError::NoSuchTree("the audit log has no signed checkpoint yet".into()))?;
        let from = from.unwrap_or(0);
        let wanted_to = to.unwrap_or(latest.size);
        if from > wanted_to {
            return Err(EngineError::BadRequest(format!("`from` ({from}) must be at most `to` ({wanted_to})")));
        }
        let end = checkpoints.iter().find(|c| c.size >= wanted_to.max(1)).ok_or_else(|| {
            EngineError::NoSuchTree(format!("no signed checkpoint covers entry {wanted_to} yet; try again shortly"))
        })?;
        let to = end.size;
        let max = self.limits.max_export_entries;
        if to - from > max {
            return Err(EngineError::TooLarge(format!(
                "entries {from} to {to} (rounded up to a checkpoint) are more than one package holds \
                 ({max}, `audit.max_export_entries`); export a smaller range"
            )));
        }
        let anchor = checkpoints.iter().rev().find(|c| c.size > 0 && c.size <= from);
        let mut package = Package::new(log, public_key, from, to);

        let frontier_indexes = crate::audit::log::Frontier::indexes(from);
        let frontier = self.index.log_hashes_at(log, &frontier_indexes).await?;
        if frontier.len() != frontier_indexes.len() {
            return Err(no_tree(from));
        }
        package.frontier(frontier.iter().map(|(_, h)| Hash(*h)));
        // The anchor, unless it is `from` itself (then it is already in range).
        for c in checkpoints.iter().filter(|c| c.size >= from && c.size <= to).chain(anchor.filter(|a| a.size < from)) {
            package.checkpoint(c.size, &c.note);
        }
        if latest.size > to {
            package.checkpoint(latest.size, &latest.note);
        }
        // Link the package to the signed history around it: from the last checkpoint at or
        // before `from`, and to the latest.
        let mut links: Vec<(u64, u64)> = Vec::new();
        if let Some(anchor) = anchor.filter(|a| a.size < to) {
            links.push((anchor.size, to));
        }
        if latest.size > to {
            links.push((to, latest.size));
        }
        for (a, b) in links {
            if let LogAnswer::Proof(proof) =
                self.answer_log_query(log, LogQuery::Consistency { from: a, to: b }).await?
            {
                package.consistency(a, b, &proof);
            }
        }
        let mut next = from;
        while next < to {
            let page = u32::try_from((to - next).min(EXPORT_PAGE)).unwrap_or(u32::MAX);
            let events = self.index.log_events(log, next, page).await?;
            let Some(&(last, _)) = events.last() else { break };
            next = last + 1;
            for (index, event) in events.iter().filter(|(i, _)| *i < to) {
                package.entry(*index, event);
            }
        }
        Ok(package.finish())
    }

    /// The stored hashes a prover asked for, plus `more`; any missing means the log has no
    /// tree of `size` yet.
    async fn load_hashes(
        &self,
        log: &str,
        wanted: Wanted,
        more: &[u64],
        size: u64,
        plan: Result<(), tlog_tiles::Error>,
    ) -> Result<Loaded, EngineError> {
        plan.map_err(|e| tree_error(size, &e))?;
        let mut indexes = wanted.0.into_inner().unwrap_or_default();
        indexes.extend_from_slice(more);
        indexes.sort_unstable();
        indexes.dedup();
        let rows = self.index.log_hashes_at(log, &indexes).await?;
        if rows.len() != indexes.len() {
            return Err(no_tree(size));
        }
        Ok(Loaded(rows.into_iter().map(|(i, h)| (i, Hash(h))).collect()))
    }
}

/// Entries read per statement while exporting.
const EXPORT_PAGE: u64 = 5_000;

fn no_tree(size: u64) -> EngineError {
    EngineError::NoSuchTree(format!("the audit log has no tree of {size} entries (yet)"))
}

fn tree_error(size: u64, e: &tlog_tiles::Error) -> EngineError {
    match e {
        tlog_tiles::Error::IndexesNotInTree => no_tree(size),
        other => EngineError::BadRequest(other.to_string()),
    }
}
