//! Type-level search (`GET /{type}?...`, `POST /{type}/_search`): the query is read into index
//! filters (`crate::search`), the index answers with the current versions that match, by id,
//! and each entry is decided and opened like a read. Paging continues after the last id, through
//! a MAC-bound cursor (`paging`).

use futures::{StreamExt as _, TryStreamExt as _};

use crate::audit::{Agent, AuditAction, AuditRecord, Target};
use crate::auth::{Principal, Role};
use crate::fhir::bundle;
use crate::ids::ResourceType;
use crate::policy::{self, Action};
use crate::search::{self, Blind, Total};
use crate::storage::SearchQuery;

use super::history::FETCH_CONCURRENCY;
use super::{Engine, EngineError, RequestContext, SEARCH_KEY, paging};

/// A search request, its control parameters already read by the API.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub resource_type: ResourceType,
    /// The search parameters, in the client's order.
    pub params: Vec<(String, String)>,
    pub count: Option<u32>,
    pub total: Total,
    /// `_summary=count`: only the total.
    pub summary_count: bool,
    pub cursor: Option<String>,
    /// `Prefer: handling=lenient`: unknown parameters are ignored (and left out of `self`).
    pub lenient: bool,
}

impl SearchRequest {
    /// Read a search's query: its control parameters, and the rest (the search's own).
    pub fn from_pairs(
        resource_type: ResourceType,
        pairs: Vec<(String, String)>,
        lenient: bool,
    ) -> Result<Self, EngineError> {
        let mut request = SearchRequest {
            resource_type,
            params: Vec::new(),
            count: None,
            total: Total::default(),
            summary_count: false,
            cursor: None,
            lenient,
        };
        for (name, value) in pairs {
            match name.as_str() {
                "_count" => {
                    let count = value.parse::<u32>().map_err(|_| {
                        EngineError::BadRequest(format!("`_count` must be a non-negative integer, not `{value}`"))
                    })?;
                    request.count = Some(count);
                }
                "_total" => {
                    request.total = match value.as_str() {
                        "none" => Total::None,
                        // An estimate costs the same as the exact count here.
                        "accurate" | "estimate" => Total::Accurate,
                        other => {
                            return Err(EngineError::BadRequest(format!(
                                "`_total` takes `none`, `estimate` or `accurate`, not `{other}`"
                            )));
                        }
                    };
                }
                "_summary" if value == "count" => request.summary_count = true,
                "_summary" if value == "false" => {}
                "_cursor" => request.cursor = Some(value),
                "_sort" | "_include" | "_revinclude" | "_elements" | "_summary" | "_has" | "_contained"
                | "_containedType" | "_text" | "_content" | "_list" | "_query" | "_filter" | "_type" => {
                    if !lenient {
                        return Err(EngineError::BadRequest(format!(
                            "the search parameter `{name}` is not supported yet"
                        )));
                    }
                }
                _ => request.params.push((name, value)),
            }
        }
        Ok(request)
    }
}

impl Engine {
    /// A `searchset` Bundle of the current versions of `req.resource_type` that match.
    pub async fn search(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        req: &SearchRequest,
    ) -> Result<Vec<u8>, EngineError> {
        let target = Target { resource_type: Some(req.resource_type), ..Target::default() };
        let result = self.search_inner(ctx, principal, req, &target).await;
        self.audited(ctx, principal, AuditAction::SearchType, target, result).await
    }

    async fn search_inner(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        req: &SearchRequest,
        target: &Target,
    ) -> Result<Vec<u8>, EngineError> {
        let rt = req.resource_type;
        policy::authorize(principal, Action::Search, &self.policy_target(ctx, rt, None))?;
        let search_key = self.keys.mac_key(&ctx.tenant, SEARCH_KEY).await?;
        let blind_index = search_key.blind_index();
        let blind = Blind::new(&blind_index, rt.as_str());
        let parsed = search::parse(
            self.search_params,
            &blind,
            &req.params,
            &ctx.base_url,
            self.limits.string_indexing,
            req.lenient,
        )
        .map_err(|e| EngineError::BadRequest(e.to_string()))?;

        let count = req.count.unwrap_or(self.limits.default_page_size).min(self.limits.max_page_size);
        let self_query = query_string(&parsed.used, count, req);
        let mac = self.keys.mac_key(&ctx.tenant, "paging").await?;
        let binding = format!("{rt}?{self_query}");
        let after_id = match &req.cursor {
            Some(cursor) => {
                let position = paging::verify(&mac, ctx, principal, &binding, cursor)?;
                Some(String::from_utf8(position).map_err(|_| paging::PagingError::Invalid)?)
            }
            None => None,
        };
        let query = SearchQuery {
            tenant: ctx.tenant.clone(),
            resource_type: rt,
            filters: parsed.filters,
            after_id,
            limit: count.saturating_add(1),
        };
        // A patient sees a filtered listing: an unfiltered total would leak counts.
        let counted = principal.role() != Role::Patient && (req.total == Total::Accurate || req.summary_count);
        let listed = !req.summary_count && count > 0;
        let mut rows = if listed { self.index.search(&query).await? } else { Vec::new() };
        let has_next = rows.len() > count as usize;
        rows.truncate(count as usize);
        // A first page that holds every match is its own count; otherwise the index counts.
        let total = match counted {
            false => None,
            true if listed && !has_next && query.after_id.is_none() => Some(rows.len() as u64),
            true => Some(self.index.search_count(&query).await?),
        };
        // The next page continues after the last row of this one, permitted or not.
        let last_id = rows.last().map(|row| row.id.clone()).filter(|_| has_next);

        let permitted = self.readable(ctx, principal, rows)?;
        let bodies: Vec<Vec<u8>> = futures::stream::iter(permitted.iter())
            .map(|(permit, row)| self.open_row(permit, row))
            .buffered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        let entries: Vec<bundle::SearchEntry<'_>> = permitted
            .iter()
            .zip(bodies.iter())
            .map(|((_, row), body)| bundle::SearchEntry {
                full_url: Engine::full_url(ctx, row.resource_type, &row.id),
                resource: body,
                mode: "match",
            })
            .collect();

        let mut links = vec![bundle::Link { relation: "self", url: format!("{}/{rt}?{self_query}", ctx.base_url) }];
        if let Some(last) = last_id {
            let cursor =
                paging::sign(&mac, ctx, principal, &binding, last.as_str().as_bytes(), self.limits.paging_link_ttl);
            links.push(bundle::Link {
                relation: "next",
                url: format!("{}/{rt}?{self_query}&_cursor={cursor}", ctx.base_url),
            });
        }
        let bytes = bundle::searchset(total, &links, &entries);

        let record = AuditRecord::new(&ctx.meta, Some(&ctx.tenant), Agent::of(principal), AuditAction::SearchType)
            .target(target)
            .outcome(200, Some(format!("{} entries", entries.len())));
        self.commits.append_audit(record).await?;
        Ok(bytes)
    }
}

/// The canonical query string of a search: the parameters used, then the control parameters.
fn query_string(used: &[(String, String)], count: u32, req: &SearchRequest) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in used {
        query.append_pair(name, value);
    }
    query.append_pair("_count", &count.to_string());
    if req.total == Total::None {
        query.append_pair("_total", "none");
    }
    if req.summary_count {
        query.append_pair("_summary", "count");
    }
    query.finish()
}
