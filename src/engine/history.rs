//! Instance and type history, with `_count`, `_since` and opaque, MAC-bound paging links.
//!
//! A `next` link carries a cursor: the commit sequence to continue below, an expiry, and an
//! HMAC over both plus the tenant, the principal and the query. A link replayed by another
//! principal, on another tenant, with another query, or after expiry is refused.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::{StreamExt as _, TryStreamExt as _};

use crate::audit::{Agent, AuditAction, AuditRecord, Target};
use crate::auth::{Principal, Role};
use crate::crypto::MacKey;
use crate::fhir::{Compartment, bundle};
use crate::ids::{ResourceId, ResourceType};
use crate::policy::{self, Action};
use crate::storage::{HistoryQuery, Method, StorageError, VersionRow};
use crate::time::Timestamp;

use super::{Engine, EngineError, RequestContext};

const CURSOR_LABEL: &str = "fhirvault/v1/paging";
const CURSOR_LEN: usize = 8 + 8 + 32;
/// How many objects a history page fetches and opens at once.
const FETCH_CONCURRENCY: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PagingError {
    #[error("the paging link is invalid or was issued for another user or query")]
    Invalid,
    #[error("the paging link has expired; start again from the first page")]
    Expired,
}

impl PagingError {
    pub fn status(&self) -> u16 {
        match self {
            Self::Invalid => 400,
            Self::Expired => 410,
        }
    }
}

/// A history request, with its parameters already parsed.
#[derive(Debug, Clone)]
pub struct HistoryRequest {
    pub resource_type: ResourceType,
    pub id: Option<ResourceId>,
    pub count: Option<u32>,
    pub since: Option<Timestamp>,
    pub cursor: Option<String>,
}

impl HistoryRequest {
    /// The path of this history relative to the tenant base (`Patient/1/_history`).
    fn path(&self) -> String {
        match &self.id {
            Some(id) => format!("{}/{id}/_history", self.resource_type),
            None => format!("{}/_history", self.resource_type),
        }
    }

    /// The query string, without the cursor: what a paging link is bound to.
    fn query(&self, count: u32) -> String {
        let mut q = format!("_count={count}");
        if let Some(since) = self.since {
            q.push_str("&_since=");
            q.push_str(&since.to_fhir());
        }
        q
    }
}

impl Engine {
    /// `GET /{type}/_history` and `GET /{type}/{id}/_history`: a `history` Bundle.
    pub async fn history(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        req: &HistoryRequest,
    ) -> Result<Vec<u8>, EngineError> {
        let action = if req.id.is_some() { AuditAction::HistoryInstance } else { AuditAction::HistoryType };
        let target =
            Target { resource_type: Some(req.resource_type), resource_id: req.id.clone(), ..Target::default() };
        let result = self.history_inner(ctx, principal, req, action, &target).await;
        self.audited(ctx, principal, action, target, result).await
    }

    async fn history_inner(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        req: &HistoryRequest,
        action: AuditAction,
        target: &Target,
    ) -> Result<Vec<u8>, EngineError> {
        let rt = req.resource_type;
        // Instance history is a read of that resource; type history is a listing.
        let instance_compartment = match &req.id {
            Some(id) => {
                let current = self.index.current(&ctx.tenant, rt, id).await?;
                let current = current.ok_or_else(|| EngineError::NotFound { rt, id: id.clone() })?;
                let c = Compartment::parse_key_ref(&current.compartment)
                    .ok_or_else(|| StorageError::Corrupt("compartment".into()))?;
                policy::authorize(principal, Action::Read, &self.policy_target(ctx, rt, Some(&c)))?;
                Some(c)
            }
            None => {
                policy::authorize(principal, Action::HistoryType, &self.policy_target(ctx, rt, None))?;
                None
            }
        };

        let count = req.count.unwrap_or(self.limits.default_page_size).clamp(1, self.limits.max_page_size);
        let mac = self.keys.mac_key(&ctx.tenant, "paging").await?;
        let binding = format!("{}?{}", req.path(), req.query(count));
        let before_seq = match &req.cursor {
            Some(cursor) => Some(verify_cursor(&mac, ctx, principal, &binding, cursor)?),
            None => None,
        };
        let query = HistoryQuery {
            tenant: ctx.tenant.clone(),
            resource_type: rt,
            id: req.id.clone(),
            since: req.since,
            before_seq,
            limit: count.saturating_add(1),
        };
        let (mut rows, total) = tokio::try_join!(self.index.history(&query), self.index.history_total(&query))?;
        let has_next = rows.len() > count as usize;
        rows.truncate(count as usize);
        let next_seq = if has_next { rows.last().map(|r| r.seq) } else { None };

        // Every entry is decided on its own compartment; what is refused is left out.
        let mut permitted = Vec::with_capacity(rows.len());
        for row in rows {
            let c = Compartment::parse_key_ref(&row.compartment)
                .ok_or_else(|| StorageError::Corrupt("compartment".into()))?;
            if let Ok(permit) = policy::authorize(principal, Action::Read, &self.policy_target(ctx, rt, Some(&c))) {
                permitted.push((permit, row));
            }
        }
        let bodies: Vec<Option<Vec<u8>>> = futures::stream::iter(permitted.iter())
            .map(|(permit, row)| async move {
                if row.is_deletion() { Ok(None) } else { self.open_row(permit, row).await.map(Some) }
            })
            .buffered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;

        let entries: Vec<bundle::HistoryEntry<'_>> = permitted
            .iter()
            .zip(bodies.iter())
            .map(|((_, row), body)| history_entry(ctx, row, body.as_deref()))
            .collect();
        let mut links = vec![bundle::Link {
            relation: "self",
            url: format!("{}/{}?{}", ctx.base_url, req.path(), req.query(count)),
        }];
        if let Some(seq) = next_seq {
            let cursor = sign_cursor(&mac, ctx, principal, &binding, seq, self.limits.paging_link_ttl)?;
            links.push(bundle::Link {
                relation: "next",
                url: format!("{}/{}?{}&_cursor={cursor}", ctx.base_url, req.path(), req.query(count)),
            });
        }
        // A patient sees a filtered listing: the unfiltered total would leak counts.
        let total = (principal.role() != Role::Patient).then_some(total);
        let bytes = bundle::history(total, &links, &entries);

        let record = AuditRecord::new(&ctx.meta, Some(&ctx.tenant), Agent::of(principal), action)
            .target(&Target { compartment: instance_compartment.map(|c| c.key_ref()), ..target.clone() })
            .outcome(200, Some(format!("{} entries", entries.len())));
        self.commits.append_audit(record).await?;
        Ok(bytes)
    }
}

fn history_entry<'a>(ctx: &RequestContext, row: &VersionRow, body: Option<&'a [u8]>) -> bundle::HistoryEntry<'a> {
    let (method, url, status) = match row.method {
        Method::Create => ("POST", row.resource_type.to_string(), "201 Created"),
        Method::Update => ("PUT", format!("{}/{}", row.resource_type, row.id), "200 OK"),
        Method::Delete => ("DELETE", format!("{}/{}", row.resource_type, row.id), "204 No Content"),
    };
    bundle::HistoryEntry {
        full_url: Engine::full_url(ctx, row.resource_type, &row.id),
        resource: body,
        method,
        url,
        status,
        etag: format!("W/\"{}\"", row.version),
        last_modified: row.last_updated.to_fhir(),
    }
}

fn cursor_fields<'a>(
    ctx: &'a RequestContext,
    principal: &'a Principal,
    binding: &'a str,
    seq: &'a [u8; 8],
    expires: &'a [u8; 8],
) -> [&'a [u8]; 6] {
    [
        ctx.tenant.as_str().as_bytes(),
        principal.issuer().as_bytes(),
        principal.subject().as_bytes(),
        binding.as_bytes(),
        seq,
        expires,
    ]
}

fn sign_cursor(
    mac: &MacKey,
    ctx: &RequestContext,
    principal: &Principal,
    binding: &str,
    seq: i64,
    ttl: std::time::Duration,
) -> Result<String, EngineError> {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let expires = Timestamp::now().millis().saturating_add(ttl_ms).to_be_bytes();
    let seq = seq.to_be_bytes();
    let tag = mac.sign(CURSOR_LABEL, &cursor_fields(ctx, principal, binding, &seq, &expires));
    let mut raw = Vec::with_capacity(CURSOR_LEN);
    raw.extend_from_slice(&seq);
    raw.extend_from_slice(&expires);
    raw.extend_from_slice(&tag);
    Ok(URL_SAFE_NO_PAD.encode(raw))
}

fn verify_cursor(
    mac: &MacKey,
    ctx: &RequestContext,
    principal: &Principal,
    binding: &str,
    cursor: &str,
) -> Result<i64, PagingError> {
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| PagingError::Invalid)?;
    let (seq, rest) = raw.split_first_chunk::<8>().ok_or(PagingError::Invalid)?;
    let (expires, tag) = rest.split_first_chunk::<8>().ok_or(PagingError::Invalid)?;
    if !mac.verify(CURSOR_LABEL, &cursor_fields(ctx, principal, binding, seq, expires), tag) {
        return Err(PagingError::Invalid);
    }
    if i64::from_be_bytes(*expires) < Timestamp::now().millis() {
        return Err(PagingError::Expired);
    }
    Ok(i64::from_be_bytes(*seq))
}
