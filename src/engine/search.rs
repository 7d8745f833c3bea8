//! Type-level search (`GET /{type}?...`, `POST /{type}/_search`): the query is read into index
//! filters (`crate::search`), the index answers with the current versions that match, by id,
//! and each entry is decided and opened like a read. Paging continues after the last id, through
//! a MAC-bound cursor (`paging`).

use futures::{StreamExt as _, TryStreamExt as _};

use crate::audit::{Agent, AuditAction, AuditRecord, Target};
use crate::auth::{Principal, Role};
use crate::fhir::bundle;
use crate::fhir::search_params::ParamType;
use crate::ids::{ResourceId, ResourceType};
use crate::policy::{self, Action, Permit};
use crate::search::{self, Blind, Total};
use crate::storage::search::{Filter, Linked, SortBy, SortKey};
use crate::storage::{Order, Position, SearchQuery, StorageError, VersionRow};

use super::history::FETCH_CONCURRENCY;
use super::include::Include;
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
    /// `_include` and `_revinclude`, in the client's order.
    pub includes: Vec<Include>,
    /// `_elements`: the top-level elements each match keeps (all if `None`).
    pub elements: Option<Vec<String>>,
    /// A compartment search (`Patient/{id}/Observation`): the compartment's type and id.
    pub compartment: Option<(ResourceType, ResourceId)>,
    /// `_sort`: parameter names, `-` first for descending, in priority order.
    pub sort: Vec<String>,
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
            includes: Vec::new(),
            elements: None,
            compartment: None,
            sort: Vec::new(),
        };
        for (name, value) in pairs {
            match name.as_str() {
                "_count" => request.count = Some(parse_count(&value)?),
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
                "_include"
                | "_include:iterate"
                | "_include:recurse"
                | "_revinclude"
                | "_revinclude:iterate"
                | "_revinclude:recurse" => request.includes.push(Include::parse(&name, &value)?),
                "_elements" => {
                    let elements = request.elements.get_or_insert_with(Vec::new);
                    elements.extend(value.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned));
                }
                "_sort" => request.sort.extend(value.split(',').filter(|k| !k.is_empty()).map(str::to_owned)),
                "_summary" | "_contained" | "_containedType" | "_text" | "_content" | "_list" | "_query"
                | "_filter" | "_type" => {
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
        let listing_permit = self.policies.authorize(principal, Action::Search, &self.policy_target(ctx, rt, None))?;
        let search_key = self.keys.mac_key(&ctx.tenant, SEARCH_KEY).await?;
        let blind_index = search_key.blind_index();
        let blind = Blind::new(&blind_index, rt.as_str());
        let mut parsed = search::parse(
            self.search_params,
            &blind,
            &req.params,
            &ctx.base_url,
            self.limits.string_indexing,
            req.lenient,
        )
        .map_err(|e| EngineError::BadRequest(e.to_string()))?;
        // A chain or `_has` reads the index of other types: searching them must be permitted.
        for other in &parsed.also_searched {
            let other =
                ResourceType::parse(other).map_err(|_| EngineError::BadRequest(format!("unknown type {other}")))?;
            self.policies.authorize(principal, Action::Search, &self.policy_target(ctx, other, None))?;
        }
        self.check_includes(rt, &req.includes)?;
        let path = match &req.compartment {
            Some((ctype, cid)) => {
                parsed.filters.push(self.compartment_filter(*ctype, cid, rt)?);
                format!("{ctype}/{cid}/{rt}")
            }
            None => rt.to_string(),
        };

        let count = req.count.unwrap_or(self.limits.default_page_size).min(self.limits.max_page_size);
        let self_query = query_string(&parsed.used, count, req);
        let mac = self.keys.mac_key(&ctx.tenant, "paging").await?;
        let binding = format!("{path}?{self_query}");
        let order = self.order(rt, &req.sort)?;
        let after = match &req.cursor {
            Some(cursor) => {
                let position = paging::verify(&mac, ctx, principal, &binding, cursor)?;
                let position: Position = serde_json::from_slice(&position).map_err(|_| paging::PagingError::Invalid)?;
                if position.values.len() != order.keys.len() {
                    return Err(paging::PagingError::Invalid.into());
                }
                Some(position)
            }
            None => None,
        };
        let query = SearchQuery {
            tenant: ctx.tenant.clone(),
            resource_type: rt,
            filters: parsed.filters,
            after,
            limit: count.saturating_add(1),
            order,
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
            true if listed && !has_next && query.after.is_none() => Some(rows.len() as u64),
            true => Some(self.index.search_count(&query).await?),
        };
        // The next page continues after the last row of this one, permitted or not.
        let last = match rows.last().filter(|_| has_next) {
            Some(row) if query.order.keys.is_empty() => Some(Position { values: Vec::new(), id: row.id.to_string() }),
            Some(row) => Some(self.index.sort_position(&query, row.id.as_str()).await?),
            None => None,
        };

        let permitted = self.readable(ctx, principal, rows)?;
        let matched: Vec<&VersionRow> = permitted.iter().map(|(_, row)| row).collect();
        let included = self.included(ctx, principal, &matched, &req.includes).await?;
        let (permitted, bodies) = self.open_rows(permitted).await?;
        let (permitted, mut bodies) = self.screen_listing(ctx, principal, permitted, bodies)?;
        if let Some(elements) = &req.elements {
            for body in &mut bodies {
                *body = subset(body, elements)?;
            }
        }
        let (included, included_bodies) = self.open_rows(included).await?;
        let (included, included_bodies) = self.screen_listing(ctx, principal, included, included_bodies)?;
        let entries = search_entries(ctx, &permitted, &bodies, "match")
            .chain(search_entries(ctx, &included, &included_bodies, "include"))
            .collect::<Vec<_>>();

        let mut links = vec![bundle::Link { relation: "self", url: format!("{}/{path}?{self_query}", ctx.base_url) }];
        if let Some(last) = last {
            let position = serde_json::to_vec(&last).map_err(|_| paging::PagingError::Invalid)?;
            let cursor = paging::sign(&mac, ctx, principal, &binding, &position, self.limits.paging_link_ttl);
            links.push(bundle::Link {
                relation: "next",
                url: format!("{}/{path}?{self_query}&_cursor={cursor}", ctx.base_url),
            });
        }
        let bytes = bundle::searchset(total, &links, &entries);

        let record = AuditRecord::new(&ctx.meta, Some(&ctx.tenant), Agent::of(principal), AuditAction::SearchType)
            .target(target)
            .outcome(200, Some(format!("{} matches, {} included", permitted.len(), included.len())))
            .policy(Some(&policy::rules(
                std::iter::once(&listing_permit).chain(permitted.iter().chain(&included).map(|(p, _)| p)),
            )))
            .per_patient(permitted.iter().chain(&included).map(|(_, row)| row.compartment.as_str()));
        self.commits.append_audits(record).await?;
        Ok(bytes)
    }

    /// `_sort`: `_id`, `_lastUpdated`, and date, number and quantity parameters, whose values
    /// the index keeps in clear. Tokens and strings are blind: they have no order to sort by.
    fn order(&self, rt: ResourceType, sort: &[String]) -> Result<Order, EngineError> {
        let mut order = Order::default();
        for key in sort {
            let (code, descending) = match key.strip_prefix('-') {
                Some(code) => (code, true),
                None => (key.as_str(), false),
            };
            let by = match code {
                "_id" => {
                    // Ids are unique: keys after it cannot matter.
                    order.id_descending = descending;
                    break;
                }
                "_lastUpdated" => SortBy::LastUpdated,
                _ => {
                    let param = self.search_params.get(rt.as_str(), code).ok_or_else(|| {
                        EngineError::BadRequest(format!("`_sort`: unknown search parameter `{code}` for {rt}"))
                    })?;
                    match param.kind {
                        ParamType::Date => SortBy::Date(code.to_owned()),
                        ParamType::Number | ParamType::Quantity => SortBy::Number(code.to_owned()),
                        _ => {
                            return Err(EngineError::BadRequest(format!(
                                "`_sort`: `{code}` cannot be sorted on: string, token, uri and reference values \
                                 are stored as keyed blind-index tokens, which have no order (sort on `_id`, \
                                 `_lastUpdated`, dates, numbers or quantities)"
                            )));
                        }
                    }
                }
            };
            order.keys.push(SortKey { by, descending });
        }
        Ok(order)
    }

    /// Membership of a compartment (`Patient/{id}/Observation`): one of the parameters the
    /// compartment's definition names for `rt` refers to it.
    fn compartment_filter(
        &self,
        ctype: ResourceType,
        cid: &ResourceId,
        rt: ResourceType,
    ) -> Result<Filter, EngineError> {
        let params = self
            .search_params
            .compartment_params(ctype.as_str(), rt.as_str())
            .ok_or_else(|| EngineError::BadRequest(format!("{rt} resources are not in the {ctype} compartment")))?;
        Ok(Filter::Linked(Linked::RefersTo {
            params: params.iter().map(ToString::to_string).collect(),
            target_type: ctype.to_string(),
            target_id: cid.to_string(),
        }))
    }

    /// Open the objects of permitted rows, a few at a time, in order. Rows of erased patients
    /// are left out (a listing reaches them through references from other records).
    pub(super) async fn open_rows(&self, rows: Vec<(Permit, VersionRow)>) -> Result<super::Opened, EngineError> {
        let bodies: Vec<Option<Vec<u8>>> = futures::stream::iter(rows.iter())
            .map(|(permit, row)| async move { super::unless_erased(self.open_row(permit, row).await) })
            .buffered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        let keep: Vec<bool> = bodies.iter().map(Option::is_some).collect();
        Ok((super::kept(rows, &keep), bodies.into_iter().flatten().collect()))
    }
}

/// The Bundle entries of opened rows.
pub(super) fn search_entries<'a>(
    ctx: &'a RequestContext,
    rows: &'a [(Permit, VersionRow)],
    bodies: &'a [Vec<u8>],
    mode: &'static str,
) -> impl Iterator<Item = bundle::SearchEntry<'a>> {
    rows.iter().zip(bodies).map(move |((_, row), body)| bundle::SearchEntry {
        full_url: Engine::full_url(ctx, row.resource_type, &row.id),
        resource: body,
        mode,
    })
}

/// `_elements`: the resource with only the named top-level elements (and `resourceType`, `id`,
/// `meta`), marked `SUBSETTED` as R4 asks. A choice element is named without its type
/// (`value` keeps `valueQuantity`); a primitive's extension (`_birthDate`) follows its value.
fn subset(body: &[u8], elements: &[String]) -> Result<Vec<u8>, EngineError> {
    let corrupt = || EngineError::Storage(StorageError::Corrupt("a stored resource is not a JSON object".into()));
    let serde_json::Value::Object(map) = serde_json::from_slice(body).map_err(|_| corrupt())? else {
        return Err(corrupt());
    };
    let wanted = |key: &str| {
        let key = key.strip_prefix('_').unwrap_or(key);
        matches!(key, "resourceType" | "id" | "meta")
            || elements.iter().any(|e| {
                key.strip_prefix(e.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_uppercase))
            })
    };
    let mut kept: serde_json::Map<String, serde_json::Value> = map.into_iter().filter(|(k, _)| wanted(k)).collect();
    let meta = kept.entry("meta").or_insert_with(|| serde_json::json!({}));
    if let Some(meta) = meta.as_object_mut() {
        let tags = meta.entry("tag").or_insert_with(|| serde_json::json!([]));
        if let Some(tags) = tags.as_array_mut() {
            tags.push(serde_json::json!({
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                "code": "SUBSETTED"
            }));
        }
    }
    serde_json::to_vec(&kept).map_err(|_| corrupt())
}

/// `_count`: a page size.
pub fn parse_count(value: &str) -> Result<u32, EngineError> {
    value
        .parse::<u32>()
        .map_err(|_| EngineError::BadRequest(format!("`_count` must be a non-negative integer, not `{value}`")))
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
    if !req.sort.is_empty() {
        query.append_pair("_sort", &req.sort.join(","));
    }
    for include in &req.includes {
        let (name, value) = include.query_pair();
        query.append_pair(&name, &value);
    }
    if let Some(elements) = &req.elements {
        query.append_pair("_elements", &elements.join(","));
    }
    query.finish()
}
