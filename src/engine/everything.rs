//! `GET /Patient/{id}/$everything`: the patient, every resource of the Patient compartment (R4
//! CompartmentDefinition), and the resources those refer to (practitioners, organizations,
//! medications...), in pages.
//!
//! The compartment's members are listed from the index's references to the patient, sorted by
//! type and id; a page is the next `_count` members after the cursor's position, each decided
//! and opened as a read, followed by what they refer to (`mode: include`).

use std::collections::BTreeSet;

use crate::audit::{Agent, AuditAction, AuditRecord, Target};
use crate::auth::{Principal, Role};
use crate::fhir::bundle;
use crate::ids::{ResourceId, ResourceType};
use crate::policy::{self, Action};
use crate::storage::{Direction, VersionRow};

use super::include::MAX_INCLUDED;
use super::search::search_entries;
use super::{Engine, EngineError, RequestContext, paging};

/// A patient compartment larger than this is refused (with a message saying so).
const MAX_MEMBERS: usize = 200_000;

/// A `$everything` request.
#[derive(Debug, Clone)]
pub struct EverythingRequest {
    pub id: ResourceId,
    pub count: Option<u32>,
    /// `_type`: only these resource types (all if empty).
    pub types: Vec<ResourceType>,
    pub cursor: Option<String>,
}

impl Engine {
    /// A `searchset` Bundle: one page of the patient's compartment and what it refers to.
    pub async fn everything(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        req: &EverythingRequest,
    ) -> Result<Vec<u8>, EngineError> {
        let target = Target {
            resource_type: Some(ResourceType::PATIENT),
            resource_id: Some(req.id.clone()),
            ..Target::default()
        };
        let result = self.everything_inner(ctx, principal, req, &target).await;
        self.audited(ctx, principal, AuditAction::Everything, target, result).await
    }

    async fn everything_inner(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        req: &EverythingRequest,
        target: &Target,
    ) -> Result<Vec<u8>, EngineError> {
        let patient = ResourceType::PATIENT;
        let row = self.index.current(&ctx.tenant, patient, &req.id).await?;
        let row = row.ok_or_else(|| EngineError::NotFound { rt: patient, id: req.id.clone() })?;
        let (patient_permit, compartment) = self.authorize_row(ctx, principal, Action::Read, &row)?;
        if row.is_deletion() {
            return Err(EngineError::Gone {
                rt: patient,
                id: row.id,
                version: row.version,
                last_updated: row.last_updated,
            });
        }
        let wanted = |rt: &str| req.types.is_empty() || req.types.iter().any(|t| t.as_str() == rt);
        let sources: Vec<(String, String)> = self
            .search_params
            .compartment_members(patient.as_str())
            .filter(|(rt, _)| wanted(rt))
            .flat_map(|(rt, params)| params.iter().map(move |p| (rt.to_owned(), p.to_string())))
            .collect();
        let mut members: BTreeSet<(ResourceType, String)> = BTreeSet::new();
        if wanted(patient.as_str()) {
            members.insert((patient, req.id.to_string()));
        }
        if !sources.is_empty() {
            let direction = Direction::To { target_type: patient, ids: vec![req.id.to_string()], sources };
            let links = self.links(&ctx.tenant, direction, MAX_MEMBERS).await.map_err(|e| match e {
                EngineError::BadRequest(_) => EngineError::BadRequest(format!(
                    "this patient's compartment holds more than {MAX_MEMBERS} resources: narrow it with `_type`"
                )),
                other => other,
            })?;
            for link in links {
                if let Ok(rt) = ResourceType::parse(&link.resource_type) {
                    members.insert((rt, link.resource_id));
                }
            }
        }

        let count = req.count.unwrap_or(self.limits.default_page_size).min(self.limits.max_page_size).max(1);
        let mut self_query = url::form_urlencoded::Serializer::new(String::new());
        self_query.append_pair("_count", &count.to_string());
        if !req.types.is_empty() {
            let types: Vec<&str> = req.types.iter().map(|t| t.as_str()).collect();
            self_query.append_pair("_type", &types.join(","));
        }
        let self_query = self_query.finish();
        let path = format!("Patient/{}/$everything", req.id);
        let binding = format!("{path}?{self_query}");
        let mac = self.keys.mac_key(&ctx.tenant, "paging").await?;
        let after = match &req.cursor {
            Some(cursor) => {
                let position = paging::verify(&mac, ctx, principal, &binding, cursor)?;
                let position = String::from_utf8(position).map_err(|_| paging::PagingError::Invalid)?;
                let (rt, id) = position.split_once('/').ok_or(paging::PagingError::Invalid)?;
                Some((ResourceType::parse(rt).map_err(|_| paging::PagingError::Invalid)?, id.to_owned()))
            }
            None => None,
        };
        let mut page: Vec<(ResourceType, String)> = match &after {
            Some(after) => {
                members.range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)).cloned().collect()
            }
            None => members.iter().cloned().collect(),
        };
        let has_next = page.len() > count as usize;
        page.truncate(count as usize);
        let last = page.last().cloned().filter(|_| has_next);

        let mut rows = self.fetch_current(&ctx.tenant, page).await?;
        rows.sort_by(|a, b| (a.resource_type, &a.id).cmp(&(b.resource_type, &b.id)));
        let permitted = self.readable(ctx, principal, rows)?;
        let on_page: Vec<&VersionRow> = permitted.iter().map(|(_, row)| row).collect();
        let referenced = self.referenced(ctx, principal, &on_page, &members).await?;

        let (permitted, bodies) = self.open_rows(permitted).await?;
        let (referenced, referenced_bodies) = self.open_rows(referenced).await?;
        let (permitted, bodies) = self.screen_listing(ctx, principal, permitted, bodies)?;
        let (referenced, referenced_bodies) = self.screen_listing(ctx, principal, referenced, referenced_bodies)?;
        let entries = search_entries(ctx, &permitted, &bodies, "match")
            .chain(search_entries(ctx, &referenced, &referenced_bodies, "include"))
            .collect::<Vec<_>>();
        let mut links = vec![bundle::Link { relation: "self", url: format!("{}/{path}?{self_query}", ctx.base_url) }];
        if let Some((rt, id)) = last {
            let position = format!("{rt}/{id}");
            let cursor = paging::sign(&mac, ctx, principal, &binding, position.as_bytes(), self.limits.paging_link_ttl);
            links.push(bundle::Link {
                relation: "next",
                url: format!("{}/{path}?{self_query}&_cursor={cursor}", ctx.base_url),
            });
        }
        // As for a search: a patient's own count is not an unfiltered count of anything else,
        // but the members were counted before each was decided, so only staff see it.
        let total = (principal.role() != Role::Patient).then_some(members.len() as u64);
        let bytes = bundle::searchset(total, &links, &entries);

        let record = AuditRecord::new(&ctx.meta, Some(&ctx.tenant), Agent::of(principal), AuditAction::Everything)
            .target(&Target { compartment: Some(compartment.key_ref()), ..target.clone() })
            .outcome(200, Some(format!("{} members, {} referenced", permitted.len(), referenced.len())))
            .policy(Some(&policy::rules(
                std::iter::once(&patient_permit).chain(permitted.iter().chain(&referenced).map(|(p, _)| p)),
            )));
        self.commits.append_audit(record).await?;
        Ok(bytes)
    }

    /// What the page's resources refer to, outside the compartment, each decided as a read.
    async fn referenced(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        on_page: &[&VersionRow],
        members: &BTreeSet<(ResourceType, String)>,
    ) -> Result<Vec<(policy::Permit, VersionRow)>, EngineError> {
        let mut by_type: std::collections::BTreeMap<ResourceType, Vec<String>> = std::collections::BTreeMap::new();
        for row in on_page {
            by_type.entry(row.resource_type).or_default().push(row.id.to_string());
        }
        let mut wanted = BTreeSet::new();
        for (rt, ids) in by_type {
            let direction = Direction::From { resource_type: rt, ids, params: Vec::new() };
            for link in self.links(&ctx.tenant, direction, MAX_INCLUDED.saturating_mul(10)).await? {
                if let Ok(target) = ResourceType::parse(&link.target_type) {
                    let end = (target, link.target_id);
                    if !members.contains(&end) {
                        wanted.insert(end);
                    }
                }
            }
        }
        if wanted.len() > MAX_INCLUDED {
            return Err(EngineError::BadRequest(format!(
                "this page refers to more than {MAX_INCLUDED} other resources: ask for a smaller page (`_count`)"
            )));
        }
        let rows = self.fetch_current(&ctx.tenant, wanted.into_iter().collect()).await?;
        self.readable(ctx, principal, rows)
    }
}
