//! Access decisions. Every interaction asks `Policies::authorize` before it touches data.
//!
//! **Architecture Invariant:** a `Permit` can only be constructed in this module; functions that
//! read or write protected data take `&Permit`, so no path reaches data without a decision.
//! This module does no IO except `Policies::load_dir`.
//!
//! The rules are Cedar policies (`policies/*.cedar`, compiled in; `fhirvault policy check`
//! validates a directory of them), checked against `policies/schema.cedarschema` in strict mode
//! before the first decision. Each policy has an `@id` (recorded in the audit log), a `@reason`
//! (the refusal's message; `{tenant}`, `{token_tenant}`, `{type}` and `{permission}` are filled
//! in) and may have `@hide_existence("true")` (refuse with 404, not 403). A policy that fails to
//! evaluate denies (Cedar would skip it: a `forbid` that errors would let the request through).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet,
    Request, RestrictedExpression, Schema, ValidationMode, Validator,
};

use crate::auth::{Permission, Principal, Role, ScopeContext};
use crate::fhir::Compartment;
use crate::ids::{CountryCode, ResourceType, TenantId};
use crate::residency;

mod memo;

/// The schema and the policies shipped with the server (file name, text), in file-name order.
const SCHEMA: &str = include_str!("../../policies/schema.cedarschema");
const SHIPPED: [(&str, &str); 11] = [
    ("10-tenant-isolation.cedar", include_str!("../../policies/10-tenant-isolation.cedar")),
    ("15-jurisdiction.cedar", include_str!("../../policies/15-jurisdiction.cedar")),
    ("20-researchers.cedar", include_str!("../../policies/20-researchers.cedar")),
    ("25-purpose-of-use.cedar", include_str!("../../policies/25-purpose-of-use.cedar")),
    ("30-auditors.cedar", include_str!("../../policies/30-auditors.cedar")),
    ("35-audit-log.cedar", include_str!("../../policies/35-audit-log.cedar")),
    ("40-smart-scopes.cedar", include_str!("../../policies/40-smart-scopes.cedar")),
    ("50-patient-compartment.cedar", include_str!("../../policies/50-patient-compartment.cedar")),
    ("60-sensitive-labels.cedar", include_str!("../../policies/60-sensitive-labels.cedar")),
    ("70-erasure.cedar", include_str!("../../policies/70-erasure.cedar")),
    ("90-clinical-access.cedar", include_str!("../../policies/90-clinical-access.cedar")),
];
const SCHEMA_FILE: &str = "schema.cedarschema";

/// What the principal wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Create,
    Read,
    Update,
    Delete,
    /// Type-level history: a listing, like a search.
    HistoryType,
    /// A search: a listing whose entries are each decided as reads.
    Search,
    /// Reading the audit log (its checkpoints, proofs and events), on resource type
    /// `AuditEvent`, in a patient's compartment for that patient's access log.
    ReadAudit,
    /// Scheduling or cancelling the erasure of a patient's data (`Patient/{id}/$erase`).
    Erase,
    /// Setting or clearing a legal hold on a patient's data (`Patient/{id}/$legal-hold`).
    LegalHold,
}

impl Action {
    /// The action's name in the policies (`FhirVault::Action::"read"`).
    fn cedar_name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Read => "read",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::HistoryType => "history-type",
            Self::Search => "search",
            Self::ReadAudit => "read-audit",
            Self::Erase => "erase",
            Self::LegalHold => "legal-hold",
        }
    }

    fn permission(self) -> Permission {
        match self {
            Self::Create => Permission::Create,
            Self::Read => Permission::Read,
            Self::Update => Permission::Update,
            Self::Delete => Permission::Delete,
            Self::HistoryType | Self::Search => Permission::Search,
            Self::ReadAudit => Permission::Read,
            Self::Erase => Permission::Delete,
            Self::LegalHold => Permission::Update,
        }
    }
}

/// What the decision is about: everything the policies are shown of the resource (`Decisions`
/// remembers a decision by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Resource<'a> {
    pub tenant: &'a TenantId,
    pub resource_type: ResourceType,
    /// `None` for type-level actions (history of a type).
    pub compartment: Option<&'a Compartment>,
    /// The codes of the record's security labels, once it is opened; `None` before.
    pub labels: Option<&'a [String]>,
    /// The request's circumstance: the requester broke the glass, stating a reason.
    pub break_glass: bool,
}

impl<'a> Resource<'a> {
    /// A whole type of `tenant` (a search, a history of the type), in no special circumstance.
    pub fn type_level(tenant: &'a TenantId, resource_type: ResourceType) -> Self {
        Self { tenant, resource_type, compartment: None, labels: None, break_glass: false }
    }
}

/// Permission to proceed. Only `Policies::authorize` makes one.
#[derive(Debug)]
pub struct Permit {
    /// The ids of the policies that permitted, comma-separated.
    rule: String,
}

/// A refusal, with the rule that refused and whether the resource's existence must stay hidden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    pub rule: String,
    pub reason: String,
    /// Answer 404 rather than 403: saying "forbidden" would confirm the resource exists.
    pub hide_existence: bool,
}

impl Permit {
    pub fn rule(&self) -> &str {
        &self.rule
    }
}

/// The ids of the policies behind several permits (a listing's, and its entries'), each once,
/// sorted and comma-separated: what the audit record of the listing keeps.
pub fn rules<'a>(permits: impl IntoIterator<Item = &'a Permit>) -> String {
    let ids: std::collections::BTreeSet<&str> =
        permits.into_iter().flat_map(|p| p.rule.split(',')).filter(|id| !id.is_empty()).collect();
    ids.into_iter().collect::<Vec<_>>().join(",")
}

/// What the policies are told about a tenant, from its configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantFacts {
    /// Organizations in countries with an EU adequacy decision may be served.
    pub allows_adequacy: bool,
    /// Every refusal answers 404, not only those of `@hide_existence` policies.
    pub hide_denied_existence: bool,
    /// The country of the data centre holding the tenant's records (ISO 3166 alpha-2).
    pub location_jurisdiction: Option<CountryCode>,
}

/// A policy set that is not fit to decide: the message names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("the policies do not match the schema:\n{0}")]
    Validation(String),
}

fn invalid(file: &str, message: impl std::fmt::Display) -> PolicyError {
    PolicyError::Invalid { file: file.to_owned(), message: message.to_string() }
}

/// The access policies, validated, ready to decide.
pub struct Policies {
    set: PolicySet,
    /// Debug builds (the tests) check every request and its entities against it.
    schema: Schema,
    /// Forbid policies in file order: a refusal names the first of them that applied.
    forbids: Vec<PolicyId>,
    authorizer: Authorizer,
    types: EntityTypes,
    /// Tenants not listed have the default facts (nothing beyond the EEA, 403 refusals).
    tenants: HashMap<TenantId, TenantFacts>,
    /// What the policies read of the attributes a remembered decision may leave out.
    observes: memo::Observes,
    /// Decisions already taken, by everything they depend on (`memo`).
    remembered: moka::sync::Cache<memo::MemoKey, memo::Remembered>,
}

/// The entity types and the one principal and resource uid a request uses.
struct EntityTypes {
    tenant: EntityTypeName,
    zone: EntityTypeName,
    jurisdiction: EntityTypeName,
    organization: EntityTypeName,
    action: EntityTypeName,
    principal: EntityUid,
    resource: EntityUid,
}

impl EntityTypes {
    fn new() -> Result<Self, PolicyError> {
        let name = |n: &str| EntityTypeName::from_str(n).map_err(|e| invalid(SCHEMA_FILE, e));
        Ok(Self {
            tenant: name("FhirVault::Tenant")?,
            zone: name("FhirVault::Zone")?,
            jurisdiction: name("FhirVault::Jurisdiction")?,
            organization: name("FhirVault::Organization")?,
            action: name("FhirVault::Action")?,
            principal: EntityUid::from_type_name_and_id(name("FhirVault::Principal")?, EntityId::new("request")),
            resource: EntityUid::from_type_name_and_id(name("FhirVault::Resource")?, EntityId::new("request")),
        })
    }

    fn tenant(&self, tenant: &TenantId) -> EntityUid {
        EntityUid::from_type_name_and_id(self.tenant.clone(), EntityId::new(tenant.as_str()))
    }
}

impl Policies {
    /// The policies shipped in `policies/`, compiled into the server.
    pub fn shipped() -> Result<Self, PolicyError> {
        Self::from_sources(SCHEMA, SHIPPED.iter().map(|(file, text)| ((*file).to_owned(), (*text).to_owned())))
    }

    /// `schema.cedarschema` and every `*.cedar` file of `dir`, in file-name order.
    pub fn load_dir(dir: &Path) -> Result<Self, PolicyError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| PolicyError::Io { path: path.display().to_string(), source })
        };
        let schema = read(&dir.join(SCHEMA_FILE))?;
        let entries =
            std::fs::read_dir(dir).map_err(|source| PolicyError::Io { path: dir.display().to_string(), source })?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.map_err(|source| PolicyError::Io { path: dir.display().to_string(), source })?.path();
            if path.extension().is_some_and(|e| e == "cedar") {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                files.push((name, read(&path)?));
            }
        }
        files.sort();
        Self::from_sources(&schema, files.into_iter())
    }

    fn from_sources(schema: &str, files: impl Iterator<Item = (String, String)>) -> Result<Self, PolicyError> {
        let (schema, _warnings) = Schema::from_cedarschema_str(schema).map_err(|e| invalid(SCHEMA_FILE, e))?;
        let mut set = PolicySet::new();
        let mut forbids = Vec::new();
        for (file, text) in files {
            let parsed = PolicySet::from_str(&text).map_err(|e| invalid(&file, e))?;
            if parsed.policies().next().is_none() {
                return Err(invalid(&file, "holds no policy"));
            }
            for policy in parsed.policies() {
                let id = policy.annotation("id").ok_or_else(|| invalid(&file, "a policy has no @id"))?;
                if policy.annotation("reason").is_none() {
                    return Err(invalid(&file, format!("policy `{id}` has no @reason")));
                }
                let policy: Policy = policy.new_id(PolicyId::new(id));
                if policy.effect() == cedar_policy::Effect::Forbid {
                    forbids.push(policy.id().clone());
                }
                set.add(policy).map_err(|_| invalid(&file, format!("policy id `{id}` is used twice")))?;
            }
        }
        if set.is_empty() {
            return Err(invalid("policies", "no policy: nothing would ever be permitted"));
        }
        let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
        if !result.validation_passed() {
            return Err(PolicyError::Validation(result.to_string()));
        }
        Ok(Self {
            observes: memo::Observes::of(&set),
            set,
            schema,
            forbids,
            authorizer: Authorizer::new(),
            types: EntityTypes::new()?,
            tenants: HashMap::new(),
            remembered: memo::cache(),
        })
    }

    /// Tell the policies what a tenant's configuration says.
    #[must_use]
    pub fn with_tenant(mut self, tenant: TenantId, facts: TenantFacts) -> Self {
        self.tenants.insert(tenant, facts);
        self.remembered.invalidate_all();
        self
    }

    fn facts(&self, tenant: &TenantId) -> TenantFacts {
        self.tenants.get(tenant).copied().unwrap_or_default()
    }

    /// The ids of the policies, in file order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.set.policies().map(|p| p.id().as_ref())
    }

    /// The decisions of one listing (`principal` doing `action` to many resources).
    pub fn decisions<'a>(&'a self, principal: &'a Principal, action: Action) -> Decisions<'a> {
        Decisions { policies: self, principal, action, seen: HashMap::new() }
    }

    /// Whether the token's SMART scopes grant `action` on `resource_type` (in the context of
    /// the principal's role): what the policies see as `context.scopes_allow`.
    fn scopes_allow(&self, principal: &Principal, action: Action, resource_type: ResourceType) -> bool {
        let permission = action.permission();
        let contexts: &[ScopeContext] = match principal.role() {
            Role::Researcher => &[],
            // A person auditing (`user/AuditEvent.rs`) or an audit system (`system/...`).
            Role::Auditor => &[ScopeContext::User, ScopeContext::System],
            Role::Patient => &[ScopeContext::Patient],
            Role::Service => &[ScopeContext::System],
            Role::Practitioner | Role::Admin => &[ScopeContext::User],
        };
        !contexts.is_empty() && principal.scopes().allows(contexts, resource_type, permission)
    }

    /// Decide whether `principal` may perform `action` on `resource`.
    pub fn authorize(&self, principal: &Principal, action: Action, resource: &Resource<'_>) -> Result<Permit, Deny> {
        let scopes_allow = self.scopes_allow(principal, action, resource.resource_type);
        let now = now_seconds();
        let key = memo::MemoKey::new(self.observes, principal, action, resource, scopes_allow, now);
        if let Some(remembered) = self.remembered.get(&key) {
            return remembered.map(|rule| Permit { rule });
        }
        let decided = self.decide_now(principal, action, resource, scopes_allow, now);
        match &decided {
            Ok(permit) => self.remembered.insert(key, Ok(permit.rule.clone())),
            // A policy that failed to evaluate is asked again (and logged) every time.
            Err(deny) if deny.rule == EVALUATION_ERROR => {}
            Err(deny) => self.remembered.insert(key, Err(deny.clone())),
        }
        decided
    }

    /// Ask the policies, without the memo: what `authorize` costs for inputs it has not seen
    /// (the benchmarks measure both).
    pub fn decide_afresh(
        &self,
        principal: &Principal,
        action: Action,
        resource: &Resource<'_>,
    ) -> Result<Permit, Deny> {
        let scopes_allow = self.scopes_allow(principal, action, resource.resource_type);
        self.decide_now(principal, action, resource, scopes_allow, now_seconds())
    }

    /// `authorize` without remembering: ask the policies.
    fn decide_now(
        &self,
        principal: &Principal,
        action: Action,
        resource: &Resource<'_>,
        scopes_allow: bool,
        now: i64,
    ) -> Result<Permit, Deny> {
        let permission = action.permission();
        let decided = self.decide(principal, action, resource, scopes_allow, now).unwrap_or_else(|error| Decided {
            decision: Decision::Deny,
            reasons: HashSet::new(),
            failed: Some(error),
        });
        if decided.decision == Decision::Allow && decided.failed.is_none() {
            let mut ids: Vec<&str> = decided.reasons.iter().map(AsRef::as_ref).collect();
            ids.sort_unstable();
            return Ok(Permit { rule: ids.join(",") });
        }
        if let Some(error) = decided.failed {
            tracing::error!(%error, "an access policy failed to evaluate: denied");
            return Err(Deny {
                rule: EVALUATION_ERROR.into(),
                reason: "the access policies could not decide this request".into(),
                hide_existence: false,
            });
        }
        let Some(id) = self.forbids.iter().find(|id| decided.reasons.contains(*id)) else {
            return Err(Deny {
                rule: "no-permit".into(),
                reason: "no access policy permits this request".into(),
                hide_existence: false,
            });
        };
        let annotation = |key: &str| self.set.annotation(id, key).unwrap_or_default();
        let facts = self.facts(resource.tenant);
        let adequacy = if facts.allows_adequacy { " or a country with an EU adequacy decision" } else { "" };
        let country = principal.jurisdiction();
        let jurisdiction = country.as_ref().map_or("an undeclared country", CountryCode::as_str);
        let reason = annotation("reason")
            .replace("{tenant}", resource.tenant.as_str())
            .replace("{token_tenant}", principal.tenant().as_str())
            .replace("{type}", resource.resource_type.as_str())
            .replace("{permission}", &permission.letter().to_string())
            .replace("{adequacy}", adequacy)
            .replace("{jurisdiction}", jurisdiction)
            .replace("{purpose}", principal.purpose().unwrap_or("none"))
            .replace("{labels}", &resource.labels.unwrap_or_default().join(", "));
        // Only reads, updates and deletes name an existing resource whose existence could leak.
        let names_existing = matches!(action, Action::Read | Action::Update | Action::Delete);
        let hide_existence = (facts.hide_denied_existence && names_existing) || annotation("hide_existence") == "true";
        Err(Deny { rule: id.to_string(), reason, hide_existence })
    }

    fn decide(
        &self,
        principal: &Principal,
        action: Action,
        resource: &Resource<'_>,
        scopes_allow: bool,
        now: i64,
    ) -> Result<Decided, String> {
        let t = &self.types;
        // What this code builds matches the schema; the tests check it, a release build trusts it.
        let schema = cfg!(debug_assertions).then_some(&self.schema);
        let string = |s: &str| RestrictedExpression::new_string(s.to_owned());
        let mut who = HashMap::from([
            ("tenant".to_owned(), RestrictedExpression::new_entity_uid(t.tenant(principal.tenant()))),
            ("role".to_owned(), string(principal.role().as_str())),
        ]);
        if let Some(patient) = principal.patient() {
            who.insert("patient".to_owned(), string(&Compartment::Patient(patient.clone()).key_ref()));
        }
        if let Some(purpose) = principal.purpose() {
            who.insert("purpose_of_use".to_owned(), string(purpose));
        }
        let strings = |items: &[String]| RestrictedExpression::new_set(items.iter().map(|s| string(s)));
        who.insert("grants".to_owned(), strings(principal.grants()));
        let mut what = HashMap::from([
            ("tenant".to_owned(), RestrictedExpression::new_entity_uid(t.tenant(resource.tenant))),
            ("type".to_owned(), string(resource.resource_type.as_str())),
        ]);
        if let Some(compartment) = resource.compartment {
            what.insert("compartment".to_owned(), string(&compartment.key_ref()));
        }
        if let Some(labels) = resource.labels {
            what.insert("labels".to_owned(), strings(labels));
        }
        let mut tenants = vec![resource.tenant];
        if principal.tenant() != resource.tenant {
            tenants.push(principal.tenant());
        }
        let mut entities = tenants
            .into_iter()
            .map(|tenant| {
                let facts = self.facts(tenant);
                let attrs = [("allows_adequacy".to_owned(), RestrictedExpression::new_bool(facts.allows_adequacy))];
                Entity::new(t.tenant(tenant), attrs.into_iter().collect(), HashSet::new()).map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, String>>()?;
        if let Some(country) = principal.jurisdiction() {
            let zone =
                EntityUid::from_type_name_and_id(t.zone.clone(), EntityId::new(residency::zone(country.as_str())));
            let uid = EntityUid::from_type_name_and_id(t.jurisdiction.clone(), EntityId::new(country.as_str()));
            who.insert("jurisdiction".to_owned(), RestrictedExpression::new_entity_uid(uid.clone()));
            entities.push(Entity::new_no_attrs(zone.clone(), HashSet::new()));
            entities.push(Entity::new_no_attrs(uid, HashSet::from([zone])));
        }
        if let Some(organization) = principal.organization() {
            let uid = EntityUid::from_type_name_and_id(t.organization.clone(), EntityId::new(organization));
            who.insert("organization".to_owned(), RestrictedExpression::new_entity_uid(uid.clone()));
            entities.push(Entity::new_no_attrs(uid, HashSet::new()));
        }
        entities.push(Entity::new(t.principal.clone(), who, HashSet::new()).map_err(|e| e.to_string())?);
        entities.push(Entity::new(t.resource.clone(), what, HashSet::new()).map_err(|e| e.to_string())?);
        let entities = Entities::from_entities(entities, schema).map_err(|e| e.to_string())?;
        let context = Context::from_pairs([
            ("scopes_allow".to_owned(), RestrictedExpression::new_bool(scopes_allow)),
            ("break_glass".to_owned(), RestrictedExpression::new_bool(resource.break_glass)),
            ("now".to_owned(), RestrictedExpression::new_long(now)),
            (
                "location_jurisdiction".to_owned(),
                string(self.facts(resource.tenant).location_jurisdiction.as_ref().map_or("", CountryCode::as_str)),
            ),
        ])
        .map_err(|e| e.to_string())?;
        let action = EntityUid::from_type_name_and_id(t.action.clone(), EntityId::new(action.cedar_name()));
        let request = Request::new(t.principal.clone(), action, t.resource.clone(), context, schema)
            .map_err(|e| e.to_string())?;
        let response = self.authorizer.is_authorized(&request, &self.set, &entities);
        let failed = response.diagnostics().errors().next().map(ToString::to_string);
        Ok(Decided {
            decision: response.decision(),
            reasons: response.diagnostics().reason().cloned().collect(),
            failed,
        })
    }
}

/// The decisions of one listing: one principal and action over many resources. A resource the
/// policies would be shown exactly as one already decided (same tenant, type and compartment:
/// the entries of one patient's search) gets that decision without asking the policies again.
pub struct Decisions<'a> {
    policies: &'a Policies,
    principal: &'a Principal,
    action: Action,
    seen: HashMap<DecisionKey, Result<String, Deny>>,
}

impl Decisions<'_> {
    pub fn authorize(&mut self, resource: &Resource<'_>) -> Result<Permit, Deny> {
        // Every field of `Resource`, owned: a field added to it must be added here.
        let Resource { tenant, resource_type, compartment, labels, break_glass } = *resource;
        let key = (tenant.clone(), resource_type, compartment.cloned(), labels.map(<[String]>::to_vec), break_glass);
        if let Some(decided) = self.seen.get(&key) {
            return decided.clone().map(|rule| Permit { rule });
        }
        let decided = self.policies.authorize(self.principal, self.action, resource);
        self.seen.insert(key, decided.as_ref().map(|permit| permit.rule.clone()).map_err(Clone::clone));
        decided
    }
}

/// The rule of the refusal when a policy failed to evaluate.
const EVALUATION_ERROR: &str = "policy-evaluation-error";

/// Seconds since the epoch, for the policies' `context.now`.
fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Everything a decision of a listing depends on besides its principal and action.
type DecisionKey = (TenantId, ResourceType, Option<Compartment>, Option<Vec<String>>, bool);

struct Decided {
    decision: Decision,
    reasons: HashSet<PolicyId>,
    /// A policy that failed to evaluate (the request is denied).
    failed: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::{DevIssuer, TokenRequest};
    use crate::ids::ResourceId;

    struct Fixture {
        _dir: tempfile::TempDir,
        dev: DevIssuer,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("k");
            DevIssuer::ensure_key(&path).unwrap();
            // Tokens that name no country speak for an organization in France.
            let france = CountryCode::parse("FR").unwrap();
            let dev = DevIssuer::load(&path, "fhirvault", 0).unwrap().with_default_jurisdiction(france);
            Self { _dir: dir, dev }
        }

        fn principal(&self, tenant: &str, role: Role, scope: Option<&str>, patient: Option<&str>) -> Principal {
            self.principal_in(tenant, role, scope, patient, None)
        }

        fn principal_in(
            &self,
            tenant: &str,
            role: Role,
            scope: Option<&str>,
            patient: Option<&str>,
            country: Option<&str>,
        ) -> Principal {
            self.verify(&TokenRequest {
                jurisdiction: country.map(|c| CountryCode::parse(c).unwrap()),
                scope: scope.map(str::to_owned),
                patient: patient.map(|p| ResourceId::parse(p).unwrap()),
                ..request(tenant, role)
            })
        }

        /// The principal of a token minted for `req`.
        fn verify(&self, req: &TokenRequest) -> Principal {
            self.dev.verify(&self.dev.issue(req).unwrap()).unwrap()
        }
    }

    /// A token request for `role` on `tenant`, stating nothing else.
    fn request(tenant: &str, role: Role) -> TokenRequest {
        TokenRequest::new(TenantId::parse(tenant).unwrap(), role, Duration::from_secs(60))
    }

    #[test]
    fn decisions_table() {
        let f = Fixture::new();
        let policies = Policies::shipped().unwrap();
        let demo = TenantId::parse("demo").unwrap();
        let patient = ResourceType::PATIENT;
        let obs = ResourceType::parse("Observation").unwrap();
        let log = ResourceType::parse("AuditEvent").unwrap();
        let p1 = Compartment::Patient(ResourceId::parse("p1").unwrap());
        let p2 = Compartment::Patient(ResourceId::parse("p2").unwrap());
        let tenant_c = Compartment::Tenant;
        type Case<'a> = (
            &'a str,
            Role,
            Option<&'a str>,
            Option<&'a str>,
            Action,
            ResourceType,
            Option<&'a Compartment>,
            Result<(), &'a str>,
        );
        let cases: Vec<Case<'_>> = vec![
            ("demo", Role::Practitioner, None, None, Action::Read, patient, Some(&p1), Ok(())),
            ("demo", Role::Practitioner, None, None, Action::Delete, obs, Some(&p1), Ok(())),
            ("other", Role::Practitioner, None, None, Action::Read, patient, Some(&p1), Err("tenant-isolation")),
            (
                "demo",
                Role::Practitioner,
                Some("user/Observation.rs"),
                None,
                Action::Read,
                patient,
                Some(&p1),
                Err("smart-scopes"),
            ),
            (
                "demo",
                Role::Practitioner,
                Some("user/Observation.rs"),
                None,
                Action::Create,
                obs,
                Some(&p1),
                Err("smart-scopes"),
            ),
            (
                "demo",
                Role::Practitioner,
                Some("system/*.cruds"),
                None,
                Action::Read,
                obs,
                Some(&p1),
                Err("smart-scopes"),
            ),
            ("demo", Role::Service, None, None, Action::Update, obs, Some(&tenant_c), Ok(())),
            ("demo", Role::Researcher, None, None, Action::Read, obs, Some(&p1), Err("researcher-bulk-export-only")),
            ("demo", Role::Auditor, None, None, Action::Read, obs, Some(&p1), Err("auditor-no-clinical-data")),
            ("demo", Role::Patient, None, Some("p1"), Action::Read, obs, Some(&p1), Ok(())),
            ("demo", Role::Patient, None, Some("p1"), Action::Read, obs, Some(&p2), Err("patient-compartment")),
            ("demo", Role::Patient, None, Some("p1"), Action::Read, obs, Some(&tenant_c), Err("patient-compartment")),
            ("demo", Role::Patient, None, Some("p1"), Action::Update, obs, Some(&p1), Err("smart-scopes")),
            ("demo", Role::Patient, Some("patient/*.cruds"), Some("p1"), Action::Update, obs, Some(&p1), Ok(())),
            ("demo", Role::Patient, None, Some("p1"), Action::HistoryType, obs, None, Ok(())),
            ("demo", Role::Admin, None, None, Action::HistoryType, obs, None, Ok(())),
            // Tenant isolation holds for every role, before anything else is considered.
            ("other", Role::Service, None, None, Action::Read, obs, Some(&tenant_c), Err("tenant-isolation")),
            ("other", Role::Admin, None, None, Action::Delete, obs, Some(&p1), Err("tenant-isolation")),
            ("other", Role::Patient, None, Some("p1"), Action::Read, obs, Some(&p1), Err("tenant-isolation")),
            ("other", Role::Researcher, None, None, Action::Search, obs, None, Err("tenant-isolation")),
            ("other", Role::Auditor, None, None, Action::HistoryType, obs, None, Err("tenant-isolation")),
            ("other", Role::Practitioner, None, None, Action::Search, obs, None, Err("tenant-isolation")),
            // Researchers and auditors: no clinical interaction at all.
            ("demo", Role::Researcher, None, None, Action::Search, obs, None, Err("researcher-bulk-export-only")),
            ("demo", Role::Researcher, None, None, Action::Create, obs, Some(&p1), Err("researcher-bulk-export-only")),
            (
                "demo",
                Role::Researcher,
                None,
                None,
                Action::HistoryType,
                patient,
                None,
                Err("researcher-bulk-export-only"),
            ),
            ("demo", Role::Auditor, None, None, Action::Search, patient, None, Err("auditor-no-clinical-data")),
            ("demo", Role::Auditor, None, None, Action::Delete, obs, Some(&tenant_c), Err("auditor-no-clinical-data")),
            // The audit log: auditors, and a patient for their own record; nobody else.
            ("demo", Role::Auditor, None, None, Action::ReadAudit, log, None, Ok(())),
            ("demo", Role::Auditor, None, None, Action::ReadAudit, log, Some(&p1), Ok(())),
            ("other", Role::Auditor, None, None, Action::ReadAudit, log, None, Err("tenant-isolation")),
            (
                "demo",
                Role::Auditor,
                Some("user/Observation.rs"),
                None,
                Action::ReadAudit,
                log,
                None,
                Err("smart-scopes"),
            ),
            ("demo", Role::Patient, None, Some("p1"), Action::ReadAudit, log, Some(&p1), Ok(())),
            ("demo", Role::Patient, None, Some("p1"), Action::ReadAudit, log, Some(&p2), Err("patient-compartment")),
            ("demo", Role::Patient, None, Some("p1"), Action::ReadAudit, log, None, Err("patient-compartment")),
            ("demo", Role::Practitioner, None, None, Action::ReadAudit, log, None, Err("no-permit")),
            ("demo", Role::Admin, None, None, Action::ReadAudit, log, Some(&p1), Err("no-permit")),
            ("demo", Role::Service, None, None, Action::ReadAudit, log, None, Err("no-permit")),
            ("demo", Role::Researcher, None, None, Action::ReadAudit, log, None, Err("researcher-bulk-export-only")),
            // Erasure and legal holds: administrators only, on a patient's record, in their tenant.
            ("demo", Role::Admin, None, None, Action::Erase, patient, Some(&p1), Ok(())),
            ("demo", Role::Admin, None, None, Action::LegalHold, patient, Some(&p1), Ok(())),
            ("other", Role::Admin, None, None, Action::Erase, patient, Some(&p1), Err("tenant-isolation")),
            ("demo", Role::Admin, Some("user/Patient.r"), None, Action::Erase, patient, Some(&p1), Err("smart-scopes")),
            ("demo", Role::Practitioner, None, None, Action::Erase, patient, Some(&p1), Err("erasure-by-admins-only")),
            (
                "demo",
                Role::Patient,
                Some("patient/*.cruds"),
                Some("p1"),
                Action::Erase,
                patient,
                Some(&p1),
                Err("erasure-by-admins-only"),
            ),
            ("demo", Role::Auditor, None, None, Action::LegalHold, patient, Some(&p1), Err("auditor-no-clinical-data")),
            // Nobody writes the audit log through the API.
            (
                "demo",
                Role::Admin,
                None,
                None,
                Action::Create,
                log,
                Some(&tenant_c),
                Err("audit-events-are-server-written"),
            ),
            (
                "demo",
                Role::Practitioner,
                None,
                None,
                Action::Update,
                log,
                Some(&p1),
                Err("audit-events-are-server-written"),
            ),
            ("demo", Role::Service, None, None, Action::Delete, log, Some(&p1), Err("audit-events-are-server-written")),
            // Scopes: the context must match the role, the type and the permission letter.
            ("demo", Role::Service, Some("system/Observation.rs"), None, Action::Read, obs, Some(&p1), Ok(())),
            ("demo", Role::Service, Some("system/Observation.rs"), None, Action::Search, obs, None, Ok(())),
            (
                "demo",
                Role::Service,
                Some("system/Observation.rs"),
                None,
                Action::Update,
                obs,
                Some(&p1),
                Err("smart-scopes"),
            ),
            ("demo", Role::Service, Some("user/*.cruds"), None, Action::Read, obs, Some(&p1), Err("smart-scopes")),
            ("demo", Role::Practitioner, Some("user/*.read"), None, Action::Read, obs, Some(&p1), Ok(())),
            ("demo", Role::Practitioner, Some("user/*.read"), None, Action::Search, obs, None, Ok(())),
            (
                "demo",
                Role::Practitioner,
                Some("user/*.read"),
                None,
                Action::Create,
                obs,
                Some(&p1),
                Err("smart-scopes"),
            ),
            ("demo", Role::Practitioner, Some("user/Observation.write"), None, Action::Delete, obs, Some(&p1), Ok(())),
            ("demo", Role::Practitioner, Some("user/Observation.c"), None, Action::Create, obs, Some(&p1), Ok(())),
            (
                "demo",
                Role::Practitioner,
                Some("user/Observation.c"),
                None,
                Action::Update,
                obs,
                Some(&p1),
                Err("smart-scopes"),
            ),
            (
                "demo",
                Role::Patient,
                Some("user/*.cruds"),
                Some("p1"),
                Action::Read,
                obs,
                Some(&p1),
                Err("smart-scopes"),
            ),
            ("demo", Role::Patient, Some("patient/Observation.read"), Some("p1"), Action::Read, obs, Some(&p1), Ok(())),
            (
                "demo",
                Role::Patient,
                Some("patient/Observation.read"),
                Some("p1"),
                Action::Read,
                patient,
                Some(&p1),
                Err("smart-scopes"),
            ),
            // A patient: their own compartment only; listings are filtered entry by entry.
            ("demo", Role::Patient, None, Some("p1"), Action::Search, obs, None, Ok(())),
            ("demo", Role::Patient, None, Some("p2"), Action::Read, patient, Some(&p2), Ok(())),
            ("demo", Role::Patient, None, Some("p2"), Action::Read, patient, Some(&p1), Err("patient-compartment")),
            (
                "demo",
                Role::Patient,
                Some("patient/*.cruds"),
                Some("p1"),
                Action::Delete,
                obs,
                Some(&tenant_c),
                Err("patient-compartment"),
            ),
            // Administrators and practitioners within their tenant.
            ("demo", Role::Admin, None, None, Action::Delete, patient, Some(&tenant_c), Ok(())),
            ("demo", Role::Practitioner, None, None, Action::Search, patient, None, Ok(())),
        ];
        assert!(cases.len() >= 40, "{} rows", cases.len());
        for (tenant, role, scope, pat, action, rt, compartment, expected) in cases {
            let principal = f.principal(tenant, role, scope, pat);
            let decision = policies.authorize(
                &principal,
                action,
                &Resource { tenant: &demo, resource_type: rt, compartment, labels: None, break_glass: false },
            );
            match (&decision, expected) {
                (Ok(_), Ok(())) => {}
                (Err(deny), Err(rule)) => assert_eq!(deny.rule, rule, "{tenant} {role} {scope:?} {action:?} {rt}"),
                _ => panic!("{tenant} {role} {scope:?} {action:?} {rt} {compartment:?}: got {decision:?}"),
            }
        }
    }

    /// A policy set of the shipped schema and these files.
    fn with(files: &[(&str, &str)]) -> Result<Policies, PolicyError> {
        Policies::from_sources(SCHEMA, files.iter().map(|(f, t)| ((*f).to_owned(), (*t).to_owned())))
    }

    #[test]
    fn the_compiled_in_policies_are_the_files_of_the_policies_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let on_disk = Policies::load_dir(&dir).unwrap();
        let shipped = Policies::shipped().unwrap();
        assert_eq!(on_disk.ids().collect::<Vec<_>>(), shipped.ids().collect::<Vec<_>>());
        assert_eq!(
            shipped.ids().collect::<Vec<_>>(),
            [
                "tenant-isolation",
                "eea-jurisdiction",
                "researcher-bulk-export-only",
                "practitioner-treatment-purpose",
                "auditor-no-clinical-data",
                "auditor-reads-audit-log",
                "patient-reads-own-access-log",
                "audit-events-are-server-written",
                "smart-scopes",
                "patient-compartment",
                "sensitive-labels",
                "erasure-by-admins-only",
                "admin-erases",
                "clinical-access"
            ]
        );
    }

    #[test]
    fn a_policy_set_that_cannot_decide_is_refused_with_the_file_and_the_problem() {
        let permit = "@id(\"p\") @reason(\"r\") permit (principal, action, resource);";
        assert!(with(&[("a.cedar", permit)]).is_ok());
        let cases = [
            ("a.cedar", "permit (principal, action, resource);", "a.cedar: a policy has no @id"),
            ("a.cedar", "@id(\"p\") permit (principal, action, resource);", "a.cedar: policy `p` has no @reason"),
            ("a.cedar", "@id(\"p\") @reason(\"r\") permit (principal, action, resource", "a.cedar: "),
            ("a.cedar", "// nothing but a comment", "a.cedar: holds no policy"),
            (
                "b.cedar",
                "@id(\"p\") @reason(\"r\") forbid (principal, action, resource) when { principal.rol == \"x\" };",
                "do not match the schema",
            ),
        ];
        for (file, text, expected) in cases {
            let error = with(&[(file, text)]).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains(expected), "{text}: {error}");
        }
        let twice = with(&[("a.cedar", permit), ("b.cedar", permit)]).err().map(|e| e.to_string());
        assert_eq!(twice.as_deref(), Some("b.cedar: policy id `p` is used twice"));
        let none = with(&[]).err().map(|e| e.to_string());
        assert_eq!(none.as_deref(), Some("policies: no policy: nothing would ever be permitted"));
    }

    #[test]
    fn a_refusal_names_its_policy_and_says_why_in_the_policy_s_words() {
        let f = Fixture::new();
        let policies = Policies::shipped().unwrap();
        let demo = TenantId::parse("demo").unwrap();
        let obs = ResourceType::parse("Observation").unwrap();
        let p2 = Compartment::Patient(ResourceId::parse("p2").unwrap());
        let resource =
            Resource { tenant: &demo, resource_type: obs, compartment: Some(&p2), labels: None, break_glass: false };

        let other = f.principal("other", Role::Practitioner, None, None);
        let deny = policies.authorize(&other, Action::Read, &resource).unwrap_err();
        assert_eq!(
            deny,
            Deny {
                rule: "tenant-isolation".into(),
                reason: "the token is for tenant `other`, not `demo`".into(),
                hide_existence: false
            }
        );
        let scoped = f.principal("demo", Role::Practitioner, Some("user/Patient.rs"), None);
        let deny = policies.authorize(&scoped, Action::Read, &resource).unwrap_err();
        assert_eq!(deny.reason, "the token's scopes do not grant `r` on `Observation`");
        let patient = f.principal("demo", Role::Patient, None, Some("p1"));
        let deny = policies.authorize(&patient, Action::Read, &resource).unwrap_err();
        assert_eq!((deny.rule.as_str(), deny.hide_existence), ("patient-compartment", true));
        // A patient of another tenant reading another patient's record: isolation is named first.
        let elsewhere = f.principal("other", Role::Patient, None, Some("p1"));
        assert_eq!(policies.authorize(&elsewhere, Action::Read, &resource).unwrap_err().rule, "tenant-isolation");
        let practitioner = f.principal("demo", Role::Practitioner, None, None);
        assert_eq!(policies.authorize(&practitioner, Action::Read, &resource).unwrap().rule(), "clinical-access");
    }

    /// Each row: the organization's country, whether the tenant allows adequacy countries, and
    /// the rule expected to refuse (`None`: permitted).
    #[test]
    fn health_data_goes_to_the_eea_and_adequacy_countries_only_where_the_tenant_allows() {
        let f = Fixture::new();
        let demo = TenantId::parse("demo").unwrap();
        let p1 = Compartment::Patient(ResourceId::parse("p1").unwrap());
        let resource = Resource {
            tenant: &demo,
            resource_type: ResourceType::PATIENT,
            compartment: Some(&p1),
            labels: None,
            break_glass: false,
        };
        let strict = Policies::shipped().unwrap();
        let open = Policies::shipped()
            .unwrap()
            .with_tenant(demo.clone(), TenantFacts { allows_adequacy: true, ..TenantFacts::default() });
        let cases = [
            ("FR", false, None),
            ("NO", false, None),
            ("IS", false, None),
            ("CH", false, Some("eea-jurisdiction")),
            ("CH", true, None),
            ("GB", true, None),
            ("JP", true, None),
            ("US", false, Some("eea-jurisdiction")),
            ("US", true, Some("eea-jurisdiction")),
            ("CN", true, Some("eea-jurisdiction")),
        ];
        for (country, adequacy, expected) in cases {
            let policies = if adequacy { &open } else { &strict };
            let principal = f.principal_in("demo", Role::Practitioner, None, None, Some(country));
            let decision = policies.authorize(&principal, Action::Read, &resource);
            assert_eq!(decision.as_ref().err().map(|d| d.rule.as_str()), expected, "{country} adequacy={adequacy}");
        }
        let us = f.principal_in("demo", Role::Service, None, None, Some("US"));
        let deny = open.authorize(&us, Action::Read, &resource).unwrap_err();
        assert_eq!(
            deny.reason,
            "health data is served only to organizations operating from the EEA or a country with an EU adequacy \
             decision; this one operates from US"
        );

        // A token that says nothing of its country, from an issuer with no default: refused.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        DevIssuer::ensure_key(&path).unwrap();
        let bare = DevIssuer::load(&path, "fhirvault", 0).unwrap();
        let nowhere = bare.verify(&bare.issue(&request("demo", Role::Practitioner)).unwrap()).unwrap();
        let deny = strict.authorize(&nowhere, Action::Read, &resource).unwrap_err();
        assert_eq!(deny.rule, "eea-jurisdiction");
        assert!(deny.reason.ends_with("operates from an undeclared country"), "{}", deny.reason);
    }

    #[test]
    fn practitioners_use_the_clinical_api_for_treatment() {
        let f = Fixture::new();
        let policies = Policies::shipped().unwrap();
        let demo = TenantId::parse("demo").unwrap();
        let p1 = Compartment::Patient(ResourceId::parse("p1").unwrap());
        let resource = Resource {
            tenant: &demo,
            resource_type: ResourceType::PATIENT,
            compartment: Some(&p1),
            labels: None,
            break_glass: false,
        };
        let with_purpose = |role: Role, purpose: Option<&str>| {
            f.verify(&TokenRequest { purpose: purpose.map(str::to_owned), ..request("demo", role) })
        };
        let cases = [
            (Role::Practitioner, None, None),
            (Role::Practitioner, Some("TREAT"), None),
            (Role::Practitioner, Some("ETREAT"), None),
            (Role::Practitioner, Some("BTG"), None),
            (Role::Practitioner, Some("HRESCH"), Some("practitioner-treatment-purpose")),
            (Role::Practitioner, Some("HMARKT"), Some("practitioner-treatment-purpose")),
            (Role::Service, Some("HOPERAT"), None),
        ];
        for (role, purpose, expected) in cases {
            let decision = policies.authorize(&with_purpose(role, purpose), Action::Read, &resource);
            assert_eq!(decision.as_ref().err().map(|d| d.rule.as_str()), expected, "{role} {purpose:?}");
        }
        let deny = policies.authorize(&with_purpose(Role::Practitioner, Some("HRESCH")), Action::Read, &resource);
        assert_eq!(
            deny.unwrap_err().reason,
            "practitioners use the clinical API for treatment; this token's purpose of use is `HRESCH`"
        );
    }

    /// Each row: the record's labels, the principal's role and grants, break-glass, and the
    /// rule expected to refuse (`None`: permitted).
    #[test]
    fn sensitive_records_need_a_grant_or_break_glass() {
        let f = Fixture::new();
        let policies = Policies::shipped().unwrap();
        let demo = TenantId::parse("demo").unwrap();
        let p1 = Compartment::Patient(ResourceId::parse("p1").unwrap());
        let obs = ResourceType::parse("Observation").unwrap();
        let principal = |role: Role, grants: &[&str]| {
            f.verify(&TokenRequest {
                patient: (role == Role::Patient).then(|| ResourceId::parse("p1").unwrap()),
                grants: grants.iter().map(|g| (*g).to_owned()).collect(),
                ..request("demo", role)
            })
        };
        let refused = Some("sensitive-labels");
        type Case<'a> = (&'a [&'a str], Role, &'a [&'a str], bool, Option<&'a str>);
        let cases: [Case<'_>; 12] = [
            (&[], Role::Practitioner, &[], false, None),
            (&["N"], Role::Practitioner, &[], false, None),
            (&["PSY"], Role::Practitioner, &[], false, refused),
            (&["PSY"], Role::Practitioner, &["PSY"], false, None),
            (&["PSY", "HIV"], Role::Practitioner, &["PSY"], false, refused),
            (&["PSY", "HIV", "N"], Role::Practitioner, &["PSY", "HIV"], false, None),
            (&["R"], Role::Service, &[], false, refused),
            (&["V"], Role::Practitioner, &["R"], false, refused),
            (&["SUD"], Role::Practitioner, &[], true, None),
            (&["ETH"], Role::Service, &[], true, refused),
            (&["HIV"], Role::Patient, &[], true, refused),
            (&["HIV"], Role::Patient, &["HIV"], false, None),
        ];
        for (labels, role, grants, break_glass, expected) in cases {
            let labels: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
            let resource = Resource {
                tenant: &demo,
                resource_type: obs,
                compartment: Some(&p1),
                labels: Some(&labels),
                break_glass,
            };
            let decision = policies.authorize(&principal(role, grants), Action::Read, &resource);
            let got = decision.as_ref().err().map(|d| d.rule.as_str());
            assert_eq!(got, expected, "{labels:?} {role} {grants:?} break-glass={break_glass}");
        }
    }

    #[test]
    fn a_tenant_can_hide_the_existence_of_whatever_it_refuses() {
        let f = Fixture::new();
        let demo = TenantId::parse("demo").unwrap();
        let obs = ResourceType::parse("Observation").unwrap();
        let p1 = Compartment::Patient(ResourceId::parse("p1").unwrap());
        let resource =
            Resource { tenant: &demo, resource_type: obs, compartment: Some(&p1), labels: None, break_glass: false };
        let scoped = f.principal("demo", Role::Practitioner, Some("user/Patient.rs"), None);
        let plain = Policies::shipped().unwrap();
        assert!(!plain.authorize(&scoped, Action::Read, &resource).unwrap_err().hide_existence);
        let hiding = Policies::shipped()
            .unwrap()
            .with_tenant(demo.clone(), TenantFacts { hide_denied_existence: true, ..TenantFacts::default() });
        let deny = hiding.authorize(&scoped, Action::Read, &resource).unwrap_err();
        assert_eq!((deny.rule.as_str(), deny.hide_existence), ("smart-scopes", true));
    }

    #[test]
    fn a_listing_names_each_deciding_policy_once() {
        let permits = [Permit { rule: "b,a".into() }, Permit { rule: "a".into() }, Permit { rule: "c".into() }];
        assert_eq!(rules(&permits), "a,b,c");
        assert_eq!(rules(&[]), "");
    }

    /// Time and the storage location's country are in the context for policies an operator
    /// adds (the shipped ones do not need them).
    #[test]
    fn policies_may_use_the_time_and_the_storage_location() {
        let f = Fixture::new();
        let permit = "@id(\"p\") @reason(\"r\") permit (principal, action, resource);";
        let local = "@id(\"l\") @reason(\"records outside {tenant}'s country\") forbid (principal, action, resource) \
                     unless { context.location_jurisdiction == \"FR\" && context.now > 1700000000 };";
        let demo = TenantId::parse("demo").unwrap();
        let at = |country: &str| {
            let facts =
                TenantFacts { location_jurisdiction: CountryCode::parse(country).ok(), ..TenantFacts::default() };
            with(&[("a.cedar", permit), ("b.cedar", local)]).unwrap().with_tenant(demo.clone(), facts)
        };
        let resource = Resource::type_level(&demo, ResourceType::PATIENT);
        let reader = f.principal("demo", Role::Practitioner, None, None);
        assert!(at("FR").authorize(&reader, Action::Search, &resource).is_ok());
        assert_eq!(at("DE").authorize(&reader, Action::Search, &resource).unwrap_err().rule, "l");
    }

    #[test]
    fn policies_may_name_the_requesting_organization() {
        let f = Fixture::new();
        let permit = "@id(\"p\") @reason(\"r\") permit (principal, action, resource);";
        let only = "@id(\"o\") @reason(\"r\") forbid (principal, action, resource) unless { principal has \
                    organization && principal.organization == FhirVault::Organization::\"Organization/chu\" };";
        let policies = with(&[("a.cedar", permit), ("b.cedar", only)]).unwrap();
        let demo = TenantId::parse("demo").unwrap();
        let from = |organization: Option<&str>| {
            f.verify(&TokenRequest { organization: organization.map(str::to_owned), ..request("demo", Role::Service) })
        };
        let resource = Resource::type_level(&demo, ResourceType::PATIENT);
        assert!(policies.authorize(&from(Some("Organization/chu")), Action::Search, &resource).is_ok());
        for other in [Some("Organization/elsewhere"), None] {
            assert_eq!(policies.authorize(&from(other), Action::Search, &resource).unwrap_err().rule, "o");
        }
    }

    #[test]
    fn without_a_permit_nothing_is_allowed() {
        let f = Fixture::new();
        let forbid_only = "@id(\"f\") @reason(\"r\") forbid (principal, action, resource) when { false };";
        let policies = with(&[("a.cedar", forbid_only)]).unwrap();
        let demo = TenantId::parse("demo").unwrap();
        let resource = Resource {
            tenant: &demo,
            resource_type: ResourceType::PATIENT,
            compartment: None,
            labels: None,
            break_glass: false,
        };
        let admin = f.principal("demo", Role::Admin, None, None);
        assert_eq!(policies.authorize(&admin, Action::Search, &resource).unwrap_err().rule, "no-permit");
    }

    #[test]
    fn a_listing_decides_each_distinct_resource_once_and_as_alone() {
        let f = Fixture::new();
        let policies = Policies::shipped().unwrap();
        let demo = TenantId::parse("demo").unwrap();
        let obs = ResourceType::parse("Observation").unwrap();
        let (p1, p2) = (
            Compartment::Patient(ResourceId::parse("p1").unwrap()),
            Compartment::Patient(ResourceId::parse("p2").unwrap()),
        );
        let tenant_c = Compartment::Tenant;
        let entries = [&p1, &p2, &p1, &tenant_c, &p2, &p1];
        for principal in [
            f.principal("demo", Role::Patient, None, Some("p1")),
            f.principal("demo", Role::Practitioner, Some("user/Observation.rs"), None),
            f.principal("other", Role::Practitioner, None, None),
        ] {
            let mut decisions = policies.decisions(&principal, Action::Read);
            for compartment in entries {
                let resource = Resource {
                    tenant: &demo,
                    resource_type: obs,
                    compartment: Some(compartment),
                    labels: None,
                    break_glass: false,
                };
                let alone = policies.authorize(&principal, Action::Read, &resource);
                let listed = decisions.authorize(&resource);
                assert_eq!(listed.map(|p| p.rule).map_err(|d| d.rule), alone.map(|p| p.rule).map_err(|d| d.rule));
            }
            assert_eq!(decisions.seen.len(), 3, "p1, p2 and the tenant compartment, once each");
        }
    }

    /// What a remembered decision may leave out, read from the policies themselves.
    #[test]
    fn the_memo_leaves_out_only_what_no_policy_reads() {
        let shipped = Policies::shipped().unwrap();
        assert_eq!(shipped.observes, memo::Observes { now: false, compartment: false });
        let permit = "@id(\"p\") @reason(\"r\") permit (principal, action, resource);";
        let observes = |condition: &str| {
            let forbid =
                format!("@id(\"f\") @reason(\"r\") forbid (principal, action, resource) when {{ {condition} }};");
            with(&[("a.cedar", permit), ("b.cedar", &forbid)]).unwrap().observes
        };
        let none = memo::Observes { now: false, compartment: false };
        let now = memo::Observes { now: true, compartment: false };
        let compartment = memo::Observes { now: false, compartment: true };
        for (condition, expected) in [
            ("resource has compartment && principal has patient && resource.compartment != principal.patient", none),
            ("principal has patient && resource has compartment && principal.patient == resource.compartment", none),
            ("context.now > 1700000000", now),
            ("context.break_glass", none),
            ("resource has compartment && resource.compartment like \"Patient/vip-*\"", compartment),
            ("resource has compartment && resource.compartment == \"Patient/p1\"", compartment),
            ("resource has compartment && [\"Patient/p1\"].contains(resource.compartment)", compartment),
        ] {
            assert_eq!(observes(condition), expected, "{condition}");
        }
    }

    /// A remembered decision is the decision the policies take, for every principal, action and
    /// resource, whether the memo reduces the compartment (shipped policies) or keeps it.
    #[test]
    fn a_remembered_decision_is_the_decision_of_the_policies() {
        let f = Fixture::new();
        let permit = "@id(\"p\") @reason(\"r\") permit (principal, action, resource);";
        let vip = "@id(\"vip\") @reason(\"r\") forbid (principal, action, resource) when { principal.role == \
                   \"practitioner\" && resource has compartment && resource.compartment like \"Patient/vip-*\" };";
        let clock = "@id(\"clock\") @reason(\"r\") forbid (principal, action, resource) when { context.now < 0 };";
        let sets =
            [Policies::shipped().unwrap(), with(&[("a.cedar", permit), ("b.cedar", vip), ("c.cedar", clock)]).unwrap()];
        let demo = TenantId::parse("demo").unwrap();
        let principals = [
            f.principal("demo", Role::Practitioner, None, None),
            f.principal("demo", Role::Practitioner, Some("user/Observation.rs"), None),
            f.principal("demo", Role::Patient, None, Some("p1")),
            f.principal("demo", Role::Patient, Some("patient/*.cruds"), Some("vip-1")),
            f.principal("demo", Role::Auditor, None, None),
            f.principal("demo", Role::Admin, None, None),
            f.principal("other", Role::Practitioner, None, None),
            f.principal_in("demo", Role::Service, None, None, Some("US")),
        ];
        let compartments = [
            None,
            Some(Compartment::Tenant),
            Some(Compartment::Patient(ResourceId::parse("p1").unwrap())),
            Some(Compartment::Patient(ResourceId::parse("p2").unwrap())),
            Some(Compartment::Patient(ResourceId::parse("vip-1").unwrap())),
            Some(Compartment::Patient(ResourceId::parse("vip-2").unwrap())),
        ];
        let labels = ["PSY".to_owned()];
        let types = [ResourceType::PATIENT, ResourceType::parse("Observation").unwrap(), ResourceType::AUDIT_EVENT];
        let actions = [Action::Read, Action::Update, Action::Search, Action::ReadAudit, Action::Erase];
        let mut asked = 0;
        for policies in &sets {
            // Twice over: the first round fills the memo, the second answers from it.
            for _ in 0..2 {
                for principal in &principals {
                    for action in actions {
                        for rt in types {
                            for compartment in &compartments {
                                for labels in [None, Some(&labels[..])] {
                                    let resource = Resource {
                                        tenant: &demo,
                                        resource_type: rt,
                                        compartment: compartment.as_ref(),
                                        labels,
                                        break_glass: false,
                                    };
                                    let remembered = policies.authorize(principal, action, &resource);
                                    let fresh = policies.decide_afresh(principal, action, &resource);
                                    assert_eq!(
                                        remembered.map(|p| p.rule),
                                        fresh.map(|p| p.rule),
                                        "{principal:?} {action:?} {rt} {compartment:?} {labels:?}"
                                    );
                                    asked += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(asked, 2 * 2 * principals.len() * actions.len() * types.len() * compartments.len() * 2);
        for policies in &sets {
            policies.remembered.run_pending_tasks();
        }
        // The shipped policies never read a compartment's value: far fewer decisions than asked.
        assert!(sets[0].remembered.entry_count() < sets[1].remembered.entry_count());
    }
}
