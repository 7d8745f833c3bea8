//! The auditor's view of the tamper-evident log: the latest signed checkpoint and the proofs
//! that let an auditor check, against checkpoints they hold, that an entry is in the log and
//! that the log only ever grew. Each read is decided (`read-audit`) and itself audited.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tlog_tiles::{Hash, HashReader};

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
}

#[derive(Debug, Clone, PartialEq)]
pub enum LogAnswer {
    /// A signed note, as signed.
    Note(String),
    Proof(Value),
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

fn no_tree(size: u64) -> EngineError {
    EngineError::NoSuchTree(format!("the audit log has no tree of {size} entries (yet)"))
}

fn tree_error(size: u64, e: &tlog_tiles::Error) -> EngineError {
    match e {
        tlog_tiles::Error::IndexesNotInTree => no_tree(size),
        other => EngineError::BadRequest(other.to_string()),
    }
}
