//! `_include` and `_revinclude`: the resources a page of results refers to, or that refer to
//! it, found through the index's references (`search_refs`) and each decided as a read.

use std::collections::{BTreeMap, BTreeSet};

use crate::auth::Principal;
use crate::ids::{ResourceType, TenantId};
use crate::policy::Permit;
use crate::search::query::split_unescaped;
use crate::storage::search::Filter;
use crate::storage::{Direction, Link, LinkQuery, SearchQuery, StorageError, VersionRow};

use super::{Engine, EngineError, RequestContext};

/// How many resources one page may include (per pass); beyond, the request is refused so the
/// client can ask for a smaller page, rather than silently missing some.
pub const MAX_INCLUDED: usize = 1_000;

/// Ids looked up per statement when fetching included resources.
const FETCH_CHUNK: usize = 500;

/// One `_include` or `_revinclude` (`[:iterate]=Source:param[:Target]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// `_revinclude`: resources of `source` whose `param` refers to a result.
    pub reverse: bool,
    /// `:iterate`: applied to the included resources too (one level).
    pub iterate: bool,
    pub source: ResourceType,
    pub param: String,
    pub target: Option<ResourceType>,
}

impl Include {
    /// Read `_include[:iterate]` or `_revinclude[:iterate]` and its value.
    pub fn parse(name: &str, value: &str) -> Result<Self, EngineError> {
        let (kind, iterate) = match name.split_once(':') {
            Some((kind, "iterate" | "recurse")) => (kind, true),
            Some(_) => return Err(EngineError::BadRequest(format!("`{name}` takes no modifier but `:iterate`"))),
            None => (name, false),
        };
        let bad = || {
            EngineError::BadRequest(format!(
                "`{kind}={value}`: the value is `SourceType:parameter[:TargetType]` (`*` is not supported)"
            ))
        };
        let parts = split_unescaped(value, ':');
        let (source, param, target) = match parts.as_slice() {
            [source, param] => (source, param, None),
            [source, param, target] => (source, param, Some(target)),
            _ => return Err(bad()),
        };
        let source = ResourceType::parse(source).map_err(|_| bad())?;
        let target = target.map(|t| ResourceType::parse(t).map_err(|_| bad())).transpose()?;
        if param == "*" {
            return Err(bad());
        }
        Ok(Self { reverse: kind == "_revinclude", iterate, source, param: param.clone(), target })
    }

    /// As it was asked, for `self` links.
    pub fn query_pair(&self) -> (String, String) {
        let name = match (self.reverse, self.iterate) {
            (false, false) => "_include",
            (false, true) => "_include:iterate",
            (true, false) => "_revinclude",
            (true, true) => "_revinclude:iterate",
        };
        let mut value = format!("{}:{}", self.source, self.param);
        if let Some(target) = self.target {
            value.push(':');
            value.push_str(target.as_str());
        }
        (name.to_owned(), value)
    }
}

/// What a page's resources lead to, so far: what is already in the Bundle, and how many more
/// may join it.
struct Gathered {
    seen: BTreeSet<(ResourceType, String)>,
    budget: usize,
}

impl Gathered {
    /// The links' far ends that are new, counted against the budget.
    fn take(
        &mut self,
        ends: impl IntoIterator<Item = (ResourceType, String)>,
    ) -> Result<Vec<(ResourceType, String)>, EngineError> {
        let mut new = Vec::new();
        for end in ends {
            if self.seen.insert(end.clone()) {
                self.budget = self.budget.checked_sub(1).ok_or_else(too_many)?;
                new.push(end);
            }
        }
        Ok(new)
    }
}

fn too_many() -> EngineError {
    EngineError::BadRequest(format!(
        "more than {MAX_INCLUDED} resources to include in one page: ask for a smaller page (`_count`)"
    ))
}

impl Engine {
    /// Refuse includes that name no reference parameter of their source type.
    pub(super) fn check_includes(&self, searched: ResourceType, includes: &[Include]) -> Result<(), EngineError> {
        for include in includes {
            let (name, value) = include.query_pair();
            let param = self.search_params.get(include.source.as_str(), &include.param);
            let Some(param) = param.filter(|p| p.kind == crate::fhir::search_params::ParamType::Reference) else {
                return Err(EngineError::BadRequest(format!(
                    "`{name}={value}`: {} has no reference parameter `{}`",
                    include.source, include.param
                )));
            };
            if let Some(target) = include.target
                && !param.targets.iter().any(|t| t.as_ref() == target.as_str())
            {
                return Err(EngineError::BadRequest(format!(
                    "`{name}={value}`: {}.{} does not refer to {target}",
                    include.source, include.param
                )));
            }
            if !include.reverse && !include.iterate && include.source != searched {
                return Err(EngineError::BadRequest(format!(
                    "`{name}={value}`: `_include` follows references of the searched type ({searched}); \
                     use `_include:iterate` for references of included resources"
                )));
            }
        }
        Ok(())
    }

    /// The resources `includes` add to a page of `matches`, each decided as a read (refused
    /// ones are left out). Iterating includes apply once more to what the first pass added.
    pub(super) async fn included(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        matches: &[&VersionRow],
        includes: &[Include],
    ) -> Result<Vec<(Permit, VersionRow)>, EngineError> {
        if includes.is_empty() || matches.is_empty() {
            return Ok(Vec::new());
        }
        let seen = matches.iter().map(|row| (row.resource_type, row.id.to_string())).collect();
        let mut gathered = Gathered { seen, budget: MAX_INCLUDED };
        let mut rows = self.include_pass(ctx, matches, includes, &mut gathered).await?;
        let iterating: Vec<Include> = includes.iter().filter(|i| i.iterate).cloned().collect();
        if !iterating.is_empty() && !rows.is_empty() {
            let first: Vec<&VersionRow> = rows.iter().collect();
            let second = self.include_pass(ctx, &first, &iterating, &mut gathered).await?;
            rows.extend(second);
        }
        self.readable(ctx, principal, rows)
    }

    async fn include_pass(
        &self,
        ctx: &RequestContext,
        from: &[&VersionRow],
        includes: &[Include],
        gathered: &mut Gathered,
    ) -> Result<Vec<VersionRow>, EngineError> {
        let mut wanted = Vec::new();
        for include in includes {
            let links = if include.reverse {
                let targets = by_type(from.iter().filter(|row| include.target.is_none_or(|t| t == row.resource_type)));
                let sources = vec![(include.source.to_string(), include.param.clone())];
                let mut links = Vec::new();
                for (target_type, ids) in targets {
                    let direction = Direction::To { target_type, ids, sources: sources.clone() };
                    links.extend(self.links(&ctx.tenant, direction, gathered.budget).await?);
                }
                links.into_iter().map(|l| (l.resource_type, l.resource_id)).collect::<Vec<_>>()
            } else {
                let ids: Vec<String> = from
                    .iter()
                    .filter(|row| row.resource_type == include.source)
                    .map(|row| row.id.to_string())
                    .collect();
                if ids.is_empty() {
                    continue;
                }
                let direction =
                    Direction::From { resource_type: include.source, ids, params: vec![include.param.clone()] };
                let links = self.links(&ctx.tenant, direction, gathered.budget).await?;
                links
                    .into_iter()
                    .filter(|l| include.target.is_none_or(|t| t.as_str() == l.target_type))
                    .map(|l| (l.target_type, l.target_id))
                    .collect()
            };
            let ends = links
                .into_iter()
                .map(|(rt, id)| Ok((ResourceType::parse(&rt).map_err(|_| corrupt_link())?, id)))
                .collect::<Result<Vec<_>, EngineError>>()?;
            wanted.extend(gathered.take(ends)?);
        }
        self.fetch_current(&ctx.tenant, wanted).await
    }

    /// At most `budget` links (one more is asked for, to refuse rather than cut).
    pub(super) async fn links(
        &self,
        tenant: &TenantId,
        direction: Direction,
        budget: usize,
    ) -> Result<Vec<Link>, EngineError> {
        let limit = u32::try_from(budget.saturating_add(1)).unwrap_or(u32::MAX);
        let links = self.index.links(&LinkQuery { tenant: tenant.clone(), direction, limit }).await?;
        if links.len() > budget {
            return Err(too_many());
        }
        Ok(links)
    }

    /// The current, not deleted, versions of these resources (what no longer exists is left
    /// out), grouped by type and by id.
    pub(super) async fn fetch_current(
        &self,
        tenant: &TenantId,
        wanted: Vec<(ResourceType, String)>,
    ) -> Result<Vec<VersionRow>, EngineError> {
        let mut rows = Vec::with_capacity(wanted.len());
        let mut by_type: BTreeMap<ResourceType, Vec<String>> = BTreeMap::new();
        for (rt, id) in wanted {
            by_type.entry(rt).or_default().push(id);
        }
        for (rt, ids) in by_type {
            for chunk in ids.chunks(FETCH_CHUNK) {
                let query = SearchQuery {
                    tenant: tenant.clone(),
                    resource_type: rt,
                    filters: vec![Filter::Id(chunk.to_vec())],
                    after: None,
                    order: crate::storage::Order::default(),
                    limit: u32::try_from(chunk.len()).unwrap_or(u32::MAX),
                };
                rows.extend(self.index.search(&query).await?);
            }
        }
        Ok(rows)
    }
}

/// The ids of `rows`, by type.
fn by_type<'a>(rows: impl Iterator<Item = &'a &'a VersionRow>) -> BTreeMap<ResourceType, Vec<String>> {
    let mut grouped: BTreeMap<ResourceType, Vec<String>> = BTreeMap::new();
    for row in rows {
        grouped.entry(row.resource_type).or_default().push(row.id.to_string());
    }
    grouped
}

fn corrupt_link() -> EngineError {
    EngineError::Storage(StorageError::Corrupt("a reference row names no resource type".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_read_their_source_parameter_and_target() {
        let include = Include::parse("_include", "Encounter:practitioner:Practitioner").unwrap();
        assert_eq!(
            (include.reverse, include.iterate, include.source.as_str(), include.param.as_str()),
            (false, false, "Encounter", "practitioner")
        );
        assert_eq!(include.target.map(|t| t.as_str()), Some("Practitioner"));
        assert_eq!(include.query_pair(), ("_include".into(), "Encounter:practitioner:Practitioner".into()));
        let rev = Include::parse("_revinclude:iterate", "Provenance:target").unwrap();
        assert!(rev.reverse && rev.iterate && rev.target.is_none());
        for (name, value) in [("_include", "*"), ("_include", "Encounter"), ("_include:deep", "Encounter:subject")] {
            assert!(Include::parse(name, value).is_err(), "{name}={value}");
        }
        assert!(Include::parse("_include", "Encounter:*").is_err());
        assert!(Include::parse("_include", "Nothing:subject").is_err());
    }
}
