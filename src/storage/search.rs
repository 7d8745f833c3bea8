//! The search index, as storage sees it: rows to keep beside each current version, and filters
//! to find resources by. What the rows mean (which parameter, which blind token) is decided by
//! `crate::search`; here they are opaque tokens, ranges and ids.
//!
//! **Architecture Invariant:** a resource's search rows are those of its current version. They
//! are replaced in the transaction that moves its current pointer, and removed by its deletion.

use crate::ids::{ResourceType, TenantId};

/// A blind-index token (see `crypto::mac::BlindIndex`).
pub type Token = [u8; crate::crypto::mac::TOKEN_LEN];

/// Everything the index keeps to find one version by.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchRows {
    pub tokens: Vec<Token>,
    pub dates: Vec<DateRow>,
    pub numbers: Vec<NumberRow>,
    pub refs: Vec<RefRow>,
}

impl SearchRows {
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.dates.is_empty() && self.numbers.is_empty() && self.refs.is_empty()
    }

    /// The tokens as one value: `search_token_sets.tokens` on SQLite (what removes its token rows
    /// when the resource changes); on PostgreSQL the input of `fhirvault_token_array`.
    pub(super) fn token_set(&self) -> Vec<u8> {
        self.tokens.concat()
    }
}

/// The tokens of a `search_token_sets.tokens` value (a trailing partial token is not one).
pub(super) fn tokens_of_set(set: &[u8]) -> impl Iterator<Item = &[u8]> {
    set.chunks_exact(crate::crypto::mac::TOKEN_LEN)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateRow {
    pub param: Box<str>,
    /// `[lo, hi)`, milliseconds since the epoch.
    pub lo: i64,
    pub hi: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NumberRow {
    pub param: Box<str>,
    pub value: f64,
    /// Quantities: the unit's system, code and human-readable unit.
    pub system: Option<Box<str>>,
    pub code: Option<Box<str>>,
    pub unit: Option<Box<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefRow {
    pub param: Box<str>,
    pub target_type: Box<str>,
    pub target_id: Box<str>,
}

/// A comparison of one bound of a stored value with a query value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn sql(self) -> &'static str {
        match self {
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
        }
    }
}

/// Which bound of a stored date range a term compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Lo,
    Hi,
}

/// A conjunction of comparisons on one stored date range.
pub type DateCond = Vec<(Bound, Cmp, i64)>;
/// A conjunction of comparisons on one stored number.
pub type NumberCond = Vec<(Cmp, f64)>;

/// A quantity's unit as the query names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unit {
    /// `system|code`: both must match.
    Coded { system: String, code: String },
    /// `|code` or a bare code: the code or the written unit matches.
    Code(String),
}

/// One query parameter: a resource matches if ANY of its alternatives holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// The resource has one of these tokens.
    AnyToken(Vec<Token>),
    /// The resource has none of these tokens.
    NoToken(Vec<Token>),
    /// A date value of `param` meets one of the conditions.
    Date { param: String, any: Vec<DateCond> },
    /// A number (or quantity) value of `param` meets one of the conditions, in `unit` if given.
    Number { param: String, any: Vec<(NumberCond, Option<Unit>)> },
    /// `param` refers to one of these (`type` `None`: any type with that id).
    Ref { param: String, any: Vec<(Option<String>, String)> },
    /// A condition on the resources linked to this one.
    Linked(Linked),
    /// The resource id is one of these.
    Id(Vec<String>),
    /// The current version's `lastUpdated` meets one of the conditions.
    LastUpdated(Vec<DateCond>),
}

/// A filter answered through the references between resources (`search_refs`).
#[derive(Debug, Clone, PartialEq)]
pub enum Linked {
    /// `param` refers to a resource of one of these types that matches every filter given for
    /// it: a chained parameter (`subject:Patient.name=...`).
    Chain { param: String, any: Vec<(String, Vec<Filter>)> },
    /// Some current resource of `source_type` whose `param` refers to this one matches every
    /// filter of `filters` (`_has:source_type:param:...`).
    Has { source_type: String, param: String, filters: Vec<Filter> },
    /// One of `params` refers to `target_type/target_id`: membership of a compartment.
    RefersTo { params: Vec<String>, target_type: String, target_id: String },
}

/// A search over one resource type of one tenant: filters ANDed, results in `sort` order, then
/// by id.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub tenant: TenantId,
    pub resource_type: ResourceType,
    pub filters: Vec<Filter>,
    /// Keyset paging: only what comes after this position.
    pub after: Option<Position>,
    pub limit: u32,
    pub order: Order,
}

/// The order of a search's results: sort keys, then the id (the tie-breaker).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Order {
    pub keys: Vec<SortKey>,
    pub id_descending: bool,
}

/// What a result is sorted by. Only values kept in clear can be: blind tokens have no order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortBy {
    LastUpdated,
    /// A date parameter: ascending by the earliest start of its values, descending by the
    /// latest end; a resource without one comes last.
    Date(String),
    /// A number or quantity parameter: by the least value ascending, the greatest descending.
    Number(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub by: SortBy,
    pub descending: bool,
}

/// A sort key's value for one resource.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum SortValue {
    Int(i64),
    Real(f64),
}

/// Where a page ended: the last result's sort values (one per key) and id.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    #[serde(rename = "s", default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<SortValue>,
    #[serde(rename = "i")]
    pub id: String,
}

/// The references between current resources (`search_refs`) that `_include`, `_revinclude`
/// and `$everything` follow.
#[derive(Debug, Clone)]
pub struct LinkQuery {
    pub tenant: TenantId,
    pub direction: Direction,
    /// At most this many links (the caller asks for one more than it takes, to know).
    pub limit: u32,
}

#[derive(Debug, Clone)]
pub enum Direction {
    /// The references of these resources, through `params` (every parameter if empty).
    From { resource_type: ResourceType, ids: Vec<String>, params: Vec<String> },
    /// The references to these resources, from the (resource type, parameter) pairs of
    /// `sources` (any if empty).
    To { target_type: ResourceType, ids: Vec<String>, sources: Vec<(String, String)> },
}

/// A reference from a current resource, through one of its search parameters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Link {
    pub resource_type: String,
    pub resource_id: String,
    pub param: String,
    pub target_type: String,
    pub target_id: String,
}

/// A value bound to a `$n` parameter of a built statement.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Arg {
    Text(String),
    Int(i64),
    Real(f64),
    Blob(Vec<u8>),
}

/// Bind `args` (`Vec<Arg>`) to `query` (any sqlx query type), in order.
macro_rules! bind_args {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match arg {
                $crate::storage::search::Arg::Text(v) => query.bind(v),
                $crate::storage::search::Arg::Int(v) => query.bind(v),
                $crate::storage::search::Arg::Real(v) => query.bind(v),
                $crate::storage::search::Arg::Blob(v) => query.bind(v),
            };
        }
        query
    }};
}
pub(super) use bind_args;

/// SQL that both databases run (numbered `$n` parameters), with its arguments in order.
#[derive(Debug, Default)]
pub(super) struct Built {
    pub sql: String,
    pub args: Vec<Arg>,
}

impl Built {
    pub(super) fn arg(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        format!("${}", self.args.len())
    }
}

const MATCHES_RESOURCE: &str = "x.tenant = r.tenant AND x.resource_type = r.resource_type \
     AND x.resource_id = r.resource_id";

/// How a database best takes a set of ids computed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    /// `IN (SELECT ...)`: SQLite runs the subquery once and probes the primary key per id.
    Sqlite,
    /// `= ANY(ARRAY(SELECT ...))`: an init plan run once, then primary-key probes. PostgreSQL
    /// would otherwise turn `IN`/`EXISTS` into a semi-join and, ordering by id under a `LIMIT`,
    /// walk every resource of the type (0.8 ms at 3,000 Patients, growing with the table).
    Postgres,
}

/// The page of current versions matching `q` (`count: false`), or their number (`count: true`).
///
/// The first token or reference filter drives: its matching ids are computed first, and the
/// resources are looked up by them; the other filters are checked per resource (`EXISTS`).
pub(super) fn build(q: &SearchQuery, count: bool, dialect: Dialect) -> Built {
    let mut b = Built::default();
    let tenant = b.arg(Arg::Text(q.tenant.to_string()));
    let select = if count { "COUNT(*)" } else { super::sql::VERSION_FIELDS_OF_V };
    let mut sql =
        format!("SELECT {select} {}", matching(&mut b, &tenant, q.resource_type.as_str(), &q.filters, dialect));
    if !count {
        if let Some(after) = &q.after {
            sql.push_str(&format!(" AND ({})", keyset(&mut b, &q.order, after)));
        }
        let mut order: Vec<String> = q
            .order
            .keys
            .iter()
            .map(|key| format!("{}{}", sort_expr(&mut b, key), if key.descending { " DESC" } else { "" }))
            .collect();
        order.push(format!("r.resource_id{}", if q.order.id_descending { " DESC" } else { "" }));
        let limit = b.arg(Arg::Int(i64::from(q.limit)));
        sql.push_str(&format!(" ORDER BY {} LIMIT {limit}", order.join(", ")));
    }
    b.sql = sql;
    b
}

/// The sort values of one resource (`q`'s keys), to continue a page after it.
pub(super) fn build_position(q: &SearchQuery, id: &str) -> Built {
    let mut b = Built::default();
    let tenant = b.arg(Arg::Text(q.tenant.to_string()));
    let rt = b.arg(Arg::Text(q.resource_type.to_string()));
    let id = b.arg(Arg::Text(id.to_owned()));
    let values: Vec<String> = q.order.keys.iter().map(|key| sort_expr(&mut b, key)).collect();
    b.sql = format!(
        "SELECT {} FROM resources r JOIN resource_versions v ON v.tenant = r.tenant \
         AND v.resource_type = r.resource_type AND v.resource_id = r.resource_id \
         AND v.version = r.current_version WHERE r.tenant = {tenant} AND r.resource_type = {rt} \
         AND r.resource_id = {id}",
        if values.is_empty() { "1".to_owned() } else { values.join(", ") }
    );
    b
}

/// A sort key's value for the resource `r`, the missing value sorting last either way.
fn sort_expr(b: &mut Built, key: &SortKey) -> String {
    let (table, param, aggregate, missing) = match &key.by {
        SortBy::LastUpdated => return "v.last_updated".to_owned(),
        SortBy::Date(p) if key.descending => ("search_dates", p, "MAX(x.hi)", Arg::Int(i64::MIN)),
        SortBy::Date(p) => ("search_dates", p, "MIN(x.lo)", Arg::Int(i64::MAX)),
        SortBy::Number(p) if key.descending => ("search_numbers", p, "MAX(x.value)", Arg::Real(f64::MIN)),
        SortBy::Number(p) => ("search_numbers", p, "MIN(x.value)", Arg::Real(f64::MAX)),
    };
    let param = b.arg(Arg::Text(param.clone()));
    let missing = b.arg(missing);
    format!("COALESCE((SELECT {aggregate} FROM {table} x WHERE {MATCHES_RESOURCE} AND x.param = {param}), {missing})")
}

/// What comes after `after` in `order`: greater (or less, descending) on the first key that
/// differs, the id last.
fn keyset(b: &mut Built, order: &Order, after: &Position) -> String {
    let mut alternatives = Vec::new();
    for (i, key) in order.keys.iter().enumerate() {
        let mut terms = Vec::new();
        for (earlier, value) in order.keys.iter().zip(&after.values).take(i) {
            let expr = sort_expr(b, earlier);
            terms.push(format!("{expr} = {}", b.arg(sort_arg(*value))));
        }
        let Some(value) = after.values.get(i) else { break };
        let expr = sort_expr(b, key);
        let cmp = if key.descending { "<" } else { ">" };
        terms.push(format!("{expr} {cmp} {}", b.arg(sort_arg(*value))));
        alternatives.push(terms.join(" AND "));
    }
    let mut last = Vec::new();
    for (key, value) in order.keys.iter().zip(&after.values) {
        let expr = sort_expr(b, key);
        last.push(format!("{expr} = {}", b.arg(sort_arg(*value))));
    }
    let cmp = if order.id_descending { "<" } else { ">" };
    last.push(format!("r.resource_id {cmp} {}", b.arg(Arg::Text(after.id.clone()))));
    alternatives.push(last.join(" AND "));
    alternatives.iter().map(|a| format!("({a})")).collect::<Vec<_>>().join(" OR ")
}

fn sort_arg(value: SortValue) -> Arg {
    match value {
        SortValue::Int(v) => Arg::Int(v),
        SortValue::Real(v) => Arg::Real(v),
    }
}

/// `FROM ... WHERE ...`: the current, not deleted, resources of type `rt` that pass every
/// filter, as `r` (the resource) and `v` (its current version).
fn matching(b: &mut Built, tenant: &str, rt: &str, filters: &[Filter], dialect: Dialect) -> String {
    let rt = b.arg(Arg::Text(rt.to_owned()));
    let mut sql = format!(
        "FROM resources r JOIN resource_versions v ON v.tenant = r.tenant AND v.resource_type = r.resource_type \
         AND v.resource_id = r.resource_id AND v.version = r.current_version \
         WHERE r.tenant = {tenant} AND r.resource_type = {rt} AND v.method <> 'delete'"
    );
    let driver = filters.iter().position(|f| matches!(f, Filter::AnyToken(_) | Filter::Ref { .. } | Filter::Linked(_)));
    for (i, filter) in filters.iter().enumerate() {
        sql.push_str(" AND ");
        if Some(i) == driver {
            sql.push_str(&driving_sql(b, filter, tenant, &rt, dialect));
        } else {
            sql.push_str(&filter_sql(b, filter, tenant, &rt, dialect));
        }
    }
    sql
}

/// The ids of the resources of type `rt` that pass every filter (a subquery: its `r` and `v`
/// hide the outer ones).
fn ids_sql(b: &mut Built, tenant: &str, rt: &str, filters: &[Filter], dialect: Dialect) -> String {
    format!("SELECT r.resource_id {}", matching(b, tenant, rt, filters, dialect))
}

fn filter_sql(b: &mut Built, filter: &Filter, tenant: &str, rt: &str, dialect: Dialect) -> String {
    match filter {
        Filter::AnyToken(tokens) | Filter::NoToken(tokens) => {
            let (table, has_one) = tokens_sql(b, tokens, dialect);
            let exists = format!("EXISTS (SELECT 1 FROM {table} x WHERE {MATCHES_RESOURCE} AND {has_one})");
            if matches!(filter, Filter::NoToken(_)) { format!("NOT {exists}") } else { exists }
        }
        Filter::Date { param, any } => {
            let param = b.arg(Arg::Text(param.clone()));
            let any = alternatives(any.iter().map(|cond| date_cond(b, "x.lo", "x.hi", cond)));
            format!("EXISTS (SELECT 1 FROM search_dates x WHERE {MATCHES_RESOURCE} AND x.param = {param} AND ({any}))")
        }
        Filter::Number { param, any } => {
            let param = b.arg(Arg::Text(param.clone()));
            let any = alternatives(any.iter().map(|(cond, unit)| {
                let mut terms: Vec<String> =
                    cond.iter().map(|(cmp, v)| format!("x.value {} {}", cmp.sql(), b.arg(Arg::Real(*v)))).collect();
                match unit {
                    Some(Unit::Coded { system, code }) => {
                        let (s, c) = (b.arg(Arg::Text(system.clone())), b.arg(Arg::Text(code.clone())));
                        terms.push(format!("x.system = {s} AND x.code = {c}"));
                    }
                    Some(Unit::Code(code)) => {
                        let c = b.arg(Arg::Text(code.clone()));
                        terms.push(format!("(x.code = {c} OR x.unit = {c})"));
                    }
                    None => {}
                }
                conjunction(&terms)
            }));
            format!(
                "EXISTS (SELECT 1 FROM search_numbers x WHERE {MATCHES_RESOURCE} AND x.param = {param} AND ({any}))"
            )
        }
        Filter::Ref { param, any } => {
            let param = b.arg(Arg::Text(param.clone()));
            let any = alternatives(any.iter().map(|(target_type, id)| ref_cond(b, target_type.as_deref(), id)));
            format!("EXISTS (SELECT 1 FROM search_refs x WHERE {MATCHES_RESOURCE} AND x.param = {param} AND ({any}))")
        }
        Filter::Linked(linked) => format!("r.resource_id IN ({})", linked_ids(b, linked, tenant, rt, dialect)),
        Filter::Id(ids) => {
            let list = list(b, ids.iter().map(|id| Arg::Text(id.clone())));
            format!("r.resource_id IN ({list})")
        }
        Filter::LastUpdated(any) => {
            // A version's lastUpdated is an instant: the millisecond [t, t + 1).
            format!(
                "({})",
                alternatives(any.iter().map(|cond| date_cond(b, "v.last_updated", "(v.last_updated + 1)", cond)))
            )
        }
    }
}

/// Where a resource's tokens are (`x`), and the condition that it has one of `tokens`: a row per
/// token on SQLite, an array per resource under a GIN index on PostgreSQL (its migration 0004).
fn tokens_sql(b: &mut Built, tokens: &[Token], dialect: Dialect) -> (&'static str, String) {
    let list = list(b, tokens.iter().map(|t| Arg::Blob(t.to_vec())));
    match dialect {
        Dialect::Sqlite => ("search_tokens", format!("x.token IN ({list})")),
        Dialect::Postgres => ("search_token_sets", format!("x.tokens && ARRAY[{list}]::bytea[]")),
    }
}

/// `r.resource_id` among the ids `filter` selects, computed once (see `Dialect`).
fn driving_sql(b: &mut Built, filter: &Filter, tenant: &str, rt: &str, dialect: Dialect) -> String {
    let ids = match filter {
        Filter::AnyToken(tokens) => {
            let (table, has_one) = tokens_sql(b, tokens, dialect);
            format!(
                "SELECT x.resource_id FROM {table} x WHERE x.tenant = {tenant} AND x.resource_type = {rt} AND {has_one}"
            )
        }
        Filter::Ref { param, any } => {
            let param = b.arg(Arg::Text(param.clone()));
            let any = alternatives(any.iter().map(|(target_type, id)| ref_cond(b, target_type.as_deref(), id)));
            format!(
                "SELECT x.resource_id FROM search_refs x WHERE x.tenant = {tenant} AND x.resource_type = {rt} \
                 AND x.param = {param} AND ({any})"
            )
        }
        Filter::Linked(linked) => linked_ids(b, linked, tenant, rt, dialect),
        other => return filter_sql(b, other, tenant, rt, dialect),
    };
    match dialect {
        Dialect::Sqlite => format!("r.resource_id IN ({ids})"),
        Dialect::Postgres => format!("r.resource_id = ANY(ARRAY({ids}))"),
    }
}

/// The ids of the resources of type `rt` that a chain, `_has` or compartment filter selects,
/// through `search_refs`: never correlated with the outer query, so computed once.
fn linked_ids(b: &mut Built, linked: &Linked, tenant: &str, rt: &str, dialect: Dialect) -> String {
    match linked {
        Linked::Chain { param, any } => {
            let param = b.arg(Arg::Text(param.clone()));
            let any = alternatives(any.iter().map(|(target_type, filters)| {
                let target = b.arg(Arg::Text(target_type.clone()));
                let targets = ids_sql(b, tenant, target_type, filters, dialect);
                format!("x.target_type = {target} AND x.target_id IN ({targets})")
            }));
            format!(
                "SELECT x.resource_id FROM search_refs x WHERE x.tenant = {tenant} AND x.resource_type = {rt} \
                 AND x.param = {param} AND ({any})"
            )
        }
        Linked::Has { source_type, param, filters } => {
            let source = b.arg(Arg::Text(source_type.clone()));
            let param = b.arg(Arg::Text(param.clone()));
            let sources = ids_sql(b, tenant, source_type, filters, dialect);
            format!(
                "SELECT x.target_id FROM search_refs x WHERE x.tenant = {tenant} AND x.resource_type = {source} \
                 AND x.param = {param} AND x.target_type = {rt} AND x.resource_id IN ({sources})"
            )
        }
        Linked::RefersTo { params, target_type, target_id } => {
            let params = list(b, params.iter().map(|p| Arg::Text(p.clone())));
            let (target_type, target_id) = (b.arg(Arg::Text(target_type.clone())), b.arg(Arg::Text(target_id.clone())));
            format!(
                "SELECT x.resource_id FROM search_refs x WHERE x.tenant = {tenant} AND x.target_id = {target_id} \
                 AND x.target_type = {target_type} AND x.resource_type = {rt} AND x.param IN ({params})"
            )
        }
    }
}

/// The links `q` asks for.
pub(super) fn build_links(q: &LinkQuery) -> Built {
    let mut b = Built::default();
    let tenant = b.arg(Arg::Text(q.tenant.to_string()));
    let mut sql = format!(
        "SELECT x.resource_type, x.resource_id, x.param, x.target_type, x.target_id FROM search_refs x \
         WHERE x.tenant = {tenant}"
    );
    match &q.direction {
        Direction::From { resource_type, ids, params } => {
            let rt = b.arg(Arg::Text(resource_type.to_string()));
            let ids = list(&mut b, ids.iter().map(|id| Arg::Text(id.clone())));
            sql.push_str(&format!(" AND x.resource_type = {rt} AND x.resource_id IN ({ids})"));
            if !params.is_empty() {
                let params = list(&mut b, params.iter().map(|p| Arg::Text(p.clone())));
                sql.push_str(&format!(" AND x.param IN ({params})"));
            }
        }
        Direction::To { target_type, ids, sources } => {
            let ids = list(&mut b, ids.iter().map(|id| Arg::Text(id.clone())));
            let target = b.arg(Arg::Text(target_type.to_string()));
            sql.push_str(&format!(" AND x.target_id IN ({ids}) AND x.target_type = {target}"));
            if !sources.is_empty() {
                let any = alternatives(sources.iter().map(|(rt, param)| {
                    let (rt, param) = (b.arg(Arg::Text(rt.clone())), b.arg(Arg::Text(param.clone())));
                    format!("x.resource_type = {rt} AND x.param = {param}")
                }));
                sql.push_str(&format!(" AND ({any})"));
            }
        }
    }
    let limit = b.arg(Arg::Int(i64::from(q.limit)));
    sql.push_str(&format!(
        " ORDER BY x.resource_type, x.resource_id, x.param, x.target_type, x.target_id LIMIT {limit}"
    ));
    b.sql = sql;
    b
}

fn ref_cond(b: &mut Built, target_type: Option<&str>, id: &str) -> String {
    let id = b.arg(Arg::Text(id.to_owned()));
    match target_type {
        Some(t) => format!("x.target_id = {id} AND x.target_type = {}", b.arg(Arg::Text(t.to_owned()))),
        None => format!("x.target_id = {id}"),
    }
}

pub(super) fn date_cond(b: &mut Built, lo: &str, hi: &str, cond: &DateCond) -> String {
    conjunction(
        &cond
            .iter()
            .map(|(bound, cmp, v)| {
                let column = match bound {
                    Bound::Lo => lo,
                    Bound::Hi => hi,
                };
                format!("{column} {} {}", cmp.sql(), b.arg(Arg::Int(*v)))
            })
            .collect::<Vec<_>>(),
    )
}

pub(super) fn list(b: &mut Built, args: impl Iterator<Item = Arg>) -> String {
    args.map(|a| b.arg(a)).collect::<Vec<_>>().join(", ")
}

fn conjunction(terms: &[String]) -> String {
    if terms.is_empty() { "1 = 1".to_owned() } else { terms.join(" AND ") }
}

pub(super) fn alternatives(terms: impl Iterator<Item = String>) -> String {
    let terms: Vec<String> = terms.map(|t| format!("({t})")).collect();
    if terms.is_empty() { "1 = 0".to_owned() } else { terms.join(" OR ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_number_their_arguments_in_order() {
        let q = SearchQuery {
            tenant: TenantId::parse("demo").unwrap(),
            resource_type: ResourceType::parse("Observation").unwrap(),
            filters: vec![
                Filter::AnyToken(vec![[1; 16], [2; 16]]),
                Filter::Date {
                    param: "date".into(),
                    any: vec![vec![(Bound::Lo, Cmp::Ge, 5), (Bound::Hi, Cmp::Le, 9)]],
                },
                Filter::Ref {
                    param: "subject".into(),
                    any: vec![(Some("Patient".into()), "p1".into()), (None, "p2".into())],
                },
            ],
            after: Some(Position { values: Vec::new(), id: "a".into() }),
            order: Order::default(),
            limit: 11,
        };
        let built = build(&q, false, Dialect::Postgres);
        // Every argument is used, numbered in order ($1 and $2, tenant and type, are used again).
        let numbers: std::collections::BTreeSet<usize> = built
            .sql
            .split('$')
            .skip(1)
            .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap())
            .collect();
        let n = built.args.len();
        assert_eq!(numbers, (1..=n).collect());
        assert!(built.sql.ends_with(&format!("ORDER BY r.resource_id LIMIT ${n}")), "{}", built.sql);
        assert_eq!(built.args.last(), Some(&Arg::Int(11)));
        assert!(built.sql.contains("r.resource_id = ANY(ARRAY(SELECT x.resource_id FROM search_token_sets x"));
        assert!(build(&q, false, Dialect::Sqlite).sql.contains("r.resource_id IN (SELECT x.resource_id"));
        // Sorted: the keyset compares the sort values first, and the order names them.
        let sorted = SearchQuery {
            order: Order {
                keys: vec![SortKey { by: SortBy::Date("date".into()), descending: true }],
                id_descending: false,
            },
            after: Some(Position { values: vec![SortValue::Int(7)], id: "a".into() }),
            ..q.clone()
        };
        let built = build(&sorted, false, Dialect::Postgres);
        assert!(built.sql.contains("MAX(x.hi)") && built.sql.contains(" DESC, r.resource_id LIMIT"), "{}", built.sql);
        assert!(built.sql.contains(" < $"), "descending continues below the last value: {}", built.sql);
        let count = build(&q, true, Dialect::Postgres);
        assert!(count.sql.starts_with("SELECT COUNT(*)") && !count.sql.contains("LIMIT"));
        assert_eq!(count.args.len(), n - 2, "no keyset, no limit");
    }
}
