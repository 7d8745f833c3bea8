//! Instance and type history, with `_count`, `_since` and opaque, MAC-bound paging links
//! (`paging`): a `next` link continues below the commit sequence of the last entry.

use futures::{StreamExt as _, TryStreamExt as _};

use crate::audit::{Agent, AuditAction, AuditRecord, Target};
use crate::auth::{Principal, Role};
use crate::fhir::bundle;
use crate::ids::{ResourceId, ResourceType};
use crate::policy::{self, Action};
use crate::storage::{HistoryQuery, Method, VersionRow};
use crate::time::Timestamp;

use super::{Engine, EngineError, RequestContext, paging};

/// How many objects a history page fetches and opens at once.
pub(super) const FETCH_CONCURRENCY: usize = 16;

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
        let (listing_permit, instance_compartment) = match &req.id {
            Some(id) => {
                let current = self.index.current(&ctx.tenant, rt, id).await?;
                let current = current.ok_or_else(|| EngineError::NotFound { rt, id: id.clone() })?;
                let (permit, compartment) = self.authorize_row(ctx, principal, Action::Read, &current)?;
                (permit, Some(compartment))
            }
            None => {
                let permit =
                    self.policies.authorize(principal, Action::HistoryType, &self.policy_target(ctx, rt, None))?;
                (permit, None)
            }
        };

        let count = req.count.unwrap_or(self.limits.default_page_size).clamp(1, self.limits.max_page_size);
        let mac = self.keys.mac_key(&ctx.tenant, "paging").await?;
        let binding = format!("{}?{}", req.path(), req.query(count));
        let before_seq = match &req.cursor {
            Some(cursor) => Some(paging::verify_seq(&mac, ctx, principal, &binding, cursor)?),
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

        let permitted = self.readable(ctx, principal, rows)?;
        // `None`: an erased patient's version, left out; `Some(None)`: a deletion.
        let opened: Vec<Option<Option<Vec<u8>>>> = futures::stream::iter(permitted.iter())
            .map(|(permit, row)| async move {
                if row.is_deletion() {
                    Ok(Some(None))
                } else {
                    super::unless_erased(self.open_row(permit, row).await).map(|body| body.map(Some))
                }
            })
            .buffered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        let present: Vec<bool> = opened.iter().map(Option::is_some).collect();
        let permitted = super::kept(permitted, &present);
        let bodies: Vec<Option<Vec<u8>>> = opened.into_iter().flatten().collect();
        let keep =
            self.screened(ctx, principal, permitted.iter().map(|(_, r)| r).zip(bodies.iter().map(Option::as_deref)))?;
        let (permitted, bodies) = (super::kept(permitted, &keep), super::kept(bodies, &keep));

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
            let cursor = paging::sign(&mac, ctx, principal, &binding, &seq.to_be_bytes(), self.limits.paging_link_ttl);
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
            .outcome(200, Some(format!("{} entries", entries.len())))
            .policy(Some(&policy::rules(std::iter::once(&listing_permit).chain(permitted.iter().map(|(p, _)| p)))));
        let records = record.per_patient(permitted.iter().map(|(_, row)| row.compartment.as_str()));
        self.commits.append_audits(records).await?;
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
