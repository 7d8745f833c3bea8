//! The sealed audit log as FHIR: `GET /AuditEvent?...` (auditors), `GET /AuditEvent/{index}`,
//! and a patient's access log (`Patient/{id}/$access-log`, `AuditEvent?patient=`): who read or
//! changed that patient's data, when, from where and why.
//!
//! Entries are answered from the log itself, exactly as sealed and hashed (the bytes an
//! auditor can check against a signed checkpoint), newest first. The AuditEvent search
//! parameters map onto the columns the sealer wrote beside each event. A patient sees their
//! entries without what identifies the system's internals (network addresses, token ids,
//! request ids, policy ids), marked `REDACTED`.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::audit::event::{ACTION_SYSTEM, OUTCOME_SYSTEM, action_code};
use crate::audit::{Agent, AuditAction, AuditRecord, Target};
use crate::auth::{Principal, Role};
use crate::fhir::{Compartment, bundle};
use crate::ids::{ResourceId, ResourceType, VersionId};
use crate::policy::Action;
use crate::search::query::split_unescaped;
use crate::storage::{LogEntry, LogFilter, LogSearch, StorageError};

use super::read::ReadResult;
use super::{Engine, EngineError, RequestContext, paging};

/// A search of the audit log, its control parameters already read by the API.
#[derive(Debug, Clone, Default)]
pub struct AuditSearchRequest {
    /// The search parameters, in the client's order.
    pub params: Vec<(String, String)>,
    pub count: Option<u32>,
    /// `_total=accurate`.
    pub total: bool,
    pub cursor: Option<String>,
    /// `Prefer: handling=lenient`: unknown parameters are ignored (and left out of `self`).
    pub lenient: bool,
    /// `Patient/{id}/$access-log` or `Patient/{id}/AuditEvent`: that patient's entries only.
    pub patient: Option<ResourceId>,
}

impl AuditSearchRequest {
    /// Read the query of an audit log search.
    pub fn from_pairs(pairs: Vec<(String, String)>, lenient: bool) -> Result<Self, EngineError> {
        let mut request = Self { lenient, ..Self::default() };
        for (name, value) in pairs {
            match name.as_str() {
                "_count" => request.count = Some(super::parse_count(&value)?),
                "_cursor" => request.cursor = Some(value),
                "_total" => match value.as_str() {
                    "none" => request.total = false,
                    "accurate" | "estimate" => request.total = true,
                    other => {
                        return Err(EngineError::BadRequest(format!(
                            "`_total` takes `none`, `estimate` or `accurate`, not `{other}`"
                        )));
                    }
                },
                _ => request.params.push((name, value)),
            }
        }
        Ok(request)
    }
}

/// Where the search is served: its path under the tenant base, and the operation it is.
fn path_of(req: &AuditSearchRequest, access_log: bool) -> String {
    match (&req.patient, access_log) {
        (Some(id), true) => format!("Patient/{id}/$access-log"),
        (Some(id), false) => format!("Patient/{id}/AuditEvent"),
        (None, _) => "AuditEvent".to_owned(),
    }
}

impl Engine {
    /// `GET /AuditEvent?...`, `GET /Patient/{id}/AuditEvent?...` (`access_log: false`) and
    /// `GET /Patient/{id}/$access-log?...` (`access_log: true`): a `searchset` Bundle of the
    /// sealed entries that match, newest first.
    pub async fn search_audit_events(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        req: &AuditSearchRequest,
        access_log: bool,
    ) -> Result<Vec<u8>, EngineError> {
        let action = if access_log { AuditAction::AccessLog } else { AuditAction::SearchType };
        let mut target = Target { resource_type: Some(ResourceType::AUDIT_EVENT), ..Target::default() };
        let result = async {
            let (filters, used) = parse_filters(&req.params, &ctx.base_url, req.lenient)?;
            let patient = self.one_patient(req, &filters)?;
            target.compartment = patient.as_ref().map(Compartment::key_ref);
            let permit = self
                .policies
                .authorize(principal, Action::ReadAudit, &self.audit_target(ctx, patient.as_ref()))
                .map_err(EngineError::Forbidden)?;
            let answer = self.answer_audit_search(ctx, principal, req, access_log, filters, &used).await?;
            Ok((permit, answer))
        }
        .await;
        let ((permit, (bytes, shown)), target) = match result {
            Ok(answer) => (answer, target),
            Err(e) => return self.audited(ctx, principal, action, target, Err(e)).await,
        };
        let record = AuditRecord::new(&ctx.meta, Some(&ctx.tenant), Agent::of(principal), action)
            .target(&target)
            .outcome(200, Some(format!("{shown} entries")))
            .policy(Some(permit.rule()));
        self.commits.append_audit(record).await?;
        Ok(bytes)
    }

    /// `GET /AuditEvent/{index}`: one sealed entry. A patient reads only their own.
    pub async fn read_audit_event(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        id: &ResourceId,
    ) -> Result<ReadResult, EngineError> {
        let rt = ResourceType::AUDIT_EVENT;
        let mut target = Target { resource_type: Some(rt), resource_id: Some(id.clone()), ..Target::default() };
        let result = async {
            let not_found = || EngineError::NotFound { rt, id: id.clone() };
            let index: u64 = id.as_str().parse().map_err(|_| not_found())?;
            let entry = self.index.log_entries(ctx.tenant.as_str(), index, 1).await?.into_iter().next();
            let entry = entry.filter(|e| e.index == index).ok_or_else(not_found)?;
            let patient = entry.patient.as_deref().map(patient_compartment).transpose()?;
            target.compartment = patient.as_ref().map(Compartment::key_ref);
            let permit = self
                .policies
                .authorize(principal, Action::ReadAudit, &self.audit_target(ctx, patient.as_ref()))
                .map_err(EngineError::Forbidden)?;
            let body = shown_to(principal, entry.event)?;
            Ok((permit, ReadResult { version: VersionId::FIRST, last_updated: entry.recorded, body }))
        }
        .await;
        let (permit, answer) = match result {
            Ok(answer) => answer,
            Err(e) => return self.audited(ctx, principal, AuditAction::Read, target, Err(e)).await,
        };
        let record = AuditRecord::new(&ctx.meta, Some(&ctx.tenant), Agent::of(principal), AuditAction::Read)
            .target(&target)
            .policy(Some(permit.rule()));
        self.commits.append_audit(record).await?;
        Ok(answer)
    }

    fn audit_target<'a>(
        &self,
        ctx: &'a RequestContext,
        patient: Option<&'a Compartment>,
    ) -> crate::policy::Resource<'a> {
        self.policy_target(ctx, ResourceType::AUDIT_EVENT, patient)
    }

    /// The one patient a search is confined to (by the path, or by a single `patient` value):
    /// the compartment its reading is decided in.
    fn one_patient(&self, req: &AuditSearchRequest, filters: &[LogFilter]) -> Result<Option<Compartment>, EngineError> {
        if let Some(id) = &req.patient {
            return Ok(Some(Compartment::Patient(id.clone())));
        }
        let mut single = None;
        for filter in filters {
            if let LogFilter::Patient(values) = filter
                && let [one] = values.as_slice()
            {
                single = Some(patient_compartment(one)?);
            }
        }
        Ok(single)
    }

    async fn answer_audit_search(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        req: &AuditSearchRequest,
        access_log: bool,
        mut filters: Vec<LogFilter>,
        used: &[(String, String)],
    ) -> Result<(Vec<u8>, usize), EngineError> {
        if let Some(id) = &req.patient {
            filters.push(LogFilter::Patient(vec![format!("Patient/{id}")]));
        }
        let count = req.count.unwrap_or(self.limits.default_page_size).min(self.limits.max_page_size);
        let path = path_of(req, access_log);
        let self_query = self_query(used, count, req.total);
        let binding = format!("{path}?{self_query}");
        let mac = self.keys.mac_key(&ctx.tenant, "paging").await?;
        let before = match &req.cursor {
            Some(cursor) => Some(
                u64::try_from(paging::verify_seq(&mac, ctx, principal, &binding, cursor)?)
                    .map_err(|_| paging::PagingError::Invalid)?,
            ),
            None => None,
        };
        let mut query =
            LogSearch { log: ctx.tenant.as_str().to_owned(), filters, before, limit: count.saturating_add(1) };
        let mut entries = if count > 0 { self.index.search_log(&query).await? } else { Vec::new() };
        let has_next = entries.len() > count as usize;
        entries.truncate(count as usize);
        let total = match req.total {
            false => None,
            true if !has_next && before.is_none() => Some(entries.len() as u64),
            true => {
                query.before = None;
                Some(self.index.count_log(&query).await?)
            }
        };
        let mut links = vec![bundle::Link { relation: "self", url: format!("{}/{path}?{self_query}", ctx.base_url) }];
        if let Some(last) = entries.last().filter(|_| has_next) {
            let position = i64::try_from(last.index).map_err(|_| paging::PagingError::Invalid)?.to_be_bytes();
            let cursor = paging::sign(&mac, ctx, principal, &binding, &position, self.limits.paging_link_ttl);
            links.push(bundle::Link {
                relation: "next",
                url: format!("{}/{path}?{self_query}&_cursor={cursor}", ctx.base_url),
            });
        }
        let shown = entries.len();
        let bodies: Vec<(String, Vec<u8>)> = entries
            .into_iter()
            .map(|e: LogEntry| Ok((format!("{}/AuditEvent/{}", ctx.base_url, e.index), shown_to(principal, e.event)?)))
            .collect::<Result<_, EngineError>>()?;
        let entries: Vec<bundle::SearchEntry<'_>> = bodies
            .iter()
            .map(|(full_url, body)| bundle::SearchEntry { full_url: full_url.clone(), resource: body, mode: "match" })
            .collect();
        Ok((bundle::searchset(total, &links, &entries), shown))
    }
}

/// `Patient/{id}` (as the log stores it) as a compartment.
fn patient_compartment(reference: &str) -> Result<Compartment, EngineError> {
    let id = reference.strip_prefix("Patient/").unwrap_or(reference);
    let id = ResourceId::parse(id).map_err(|_| EngineError::BadRequest(format!("`{id}` is not a patient id")))?;
    Ok(Compartment::Patient(id))
}

/// Query parameters, as (name, value) in the client's order.
type Params = Vec<(String, String)>;

/// The search parameters as log filters, and those used (for `self`).
fn parse_filters(
    params: &[(String, String)],
    base_url: &str,
    lenient: bool,
) -> Result<(Vec<LogFilter>, Params), EngineError> {
    let bad = |m: String| EngineError::BadRequest(m);
    let mut filters = Vec::new();
    let mut used = Vec::new();
    for (name, value) in params {
        let values = split_unescaped(value, ',');
        let filter = match name.as_str() {
            "date" => LogFilter::Recorded(
                values
                    .iter()
                    .map(|v| crate::search::query::date_conds(v).map_err(bad))
                    .collect::<Result<Vec<_>, _>>()?
                    .concat(),
            ),
            "agent" => LogFilter::Agent(values),
            "entity" => LogFilter::Entity(values.iter().map(|v| entity(v, base_url)).collect::<Result<_, _>>()?),
            "patient" => LogFilter::Patient(
                values
                    .iter()
                    .map(|v| patient_compartment(local(v, base_url)).map(|c| c.key_ref()))
                    .collect::<Result<_, _>>()?,
            ),
            "action" => {
                let mut actions = BTreeSet::new();
                for v in &values {
                    let code = token(v, ACTION_SYSTEM, "action")?;
                    if !matches!(code, "C" | "R" | "U" | "D" | "E") {
                        return Err(bad(format!("`action` takes C, R, U, D or E, not `{code}`")));
                    }
                    actions.extend(AuditAction::ALL.iter().filter(|a| action_code(**a) == code).map(|a| a.as_str()));
                }
                LogFilter::Action(actions.into_iter().map(str::to_owned).collect())
            }
            "outcome" => LogFilter::Status(
                values
                    .iter()
                    .map(|v| match token(v, OUTCOME_SYSTEM, "outcome")? {
                        "0" => Ok((0, 400)),
                        "4" => Ok((400, 500)),
                        "8" => Ok((500, 1000)),
                        // A major failure (the server crashed): never recorded as such.
                        "12" => Ok((0, 0)),
                        other => Err(bad(format!("`outcome` takes 0, 4, 8 or 12, not `{other}`"))),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            _ if lenient => continue,
            _ => {
                let names: Vec<&str> = crate::fhir::capability::AUDIT_EVENT_PARAMS.iter().map(|(n, _, _)| *n).collect();
                return Err(bad(format!(
                    "the search parameter `{}` is not supported on AuditEvent (supported: {}, _count, _total)",
                    name.chars().take(64).collect::<String>(),
                    names.join(", ")
                )));
            }
        };
        filters.push(filter);
        used.push((name.clone(), value.clone()));
    }
    Ok((filters, used))
}

/// A reference search value relative to the base.
fn local<'a>(value: &'a str, base_url: &str) -> &'a str {
    value.strip_prefix(base_url).and_then(|rest| rest.strip_prefix('/')).unwrap_or(value)
}

/// `Type/id` (a version is dropped) or `Type`.
fn entity(value: &str, base_url: &str) -> Result<String, EngineError> {
    let value = local(value, base_url);
    let value = value.split_once("/_history/").map_or(value, |(resource, _)| resource);
    let (rt, id) = value.split_once('/').map_or((value, None), |(rt, id)| (rt, Some(id)));
    let rt = ResourceType::parse(rt).map_err(|e| EngineError::BadRequest(format!("`entity`: {e}")))?;
    match id {
        Some(id) => {
            let id = ResourceId::parse(id).map_err(|e| EngineError::BadRequest(format!("`entity`: {e}")))?;
            Ok(format!("{rt}/{id}"))
        }
        None => Ok(rt.to_string()),
    }
}

/// The code of a token value, whose system (when given) must be `system`.
fn token<'a>(value: &'a str, system: &str, name: &str) -> Result<&'a str, EngineError> {
    match value.split_once('|') {
        None => Ok(value),
        Some(("", code)) => Ok(code),
        Some((s, code)) if s == system => Ok(code),
        Some(_) => Err(EngineError::BadRequest(format!("`{name}` codes are of the system {system}"))),
    }
}

fn self_query(used: &[(String, String)], count: u32, total: bool) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in used {
        query.append_pair(name, value);
    }
    query.append_pair("_count", &count.to_string());
    if total {
        query.append_pair("_total", "accurate");
    }
    query.finish()
}

/// The event as this principal may see it: whole for an auditor; for a patient, without
/// the system's internals.
fn shown_to(principal: &Principal, event: Vec<u8>) -> Result<Vec<u8>, EngineError> {
    if principal.role() != Role::Patient {
        return Ok(event);
    }
    let corrupt = || EngineError::Storage(StorageError::Corrupt("a sealed AuditEvent is not JSON".into()));
    let mut value: Value = serde_json::from_slice(&event).map_err(|_| corrupt())?;
    crate::audit::event::redact_for_patient(&mut value);
    serde_json::to_vec(&value).map_err(|_| corrupt())
}
