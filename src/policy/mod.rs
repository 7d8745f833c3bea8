//! Access decisions. Every interaction asks `authorize` before it touches data.
//!
//! **Architecture Invariant:** a `Permit` can only be constructed in this module; functions that
//! read or write protected data take `&Permit`, so no path reaches data without a decision.
//! This module does no IO.
//!
//! The rules here are the skeleton's: tenant isolation, role, SMART scopes, patient compartment.
//! They move to Cedar policies (`policies/*.cedar`) with the policy-engine issue; each rule has
//! a stable id that the audit log records.

use crate::auth::{Permission, Principal, Role, ScopeContext};
use crate::fhir::Compartment;
use crate::ids::{ResourceType, TenantId};

/// What the principal wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Read,
    Update,
    Delete,
    /// Type-level history: a listing, like a search.
    HistoryType,
    /// A search: a listing whose entries are each decided as reads.
    Search,
}

impl Action {
    fn permission(self) -> Permission {
        match self {
            Self::Create => Permission::Create,
            Self::Read => Permission::Read,
            Self::Update => Permission::Update,
            Self::Delete => Permission::Delete,
            Self::HistoryType | Self::Search => Permission::Search,
        }
    }
}

/// What the decision is about.
#[derive(Debug, Clone, Copy)]
pub struct Resource<'a> {
    pub tenant: &'a TenantId,
    pub resource_type: ResourceType,
    /// `None` for type-level actions (history of a type).
    pub compartment: Option<&'a Compartment>,
}

/// Permission to proceed. Only `authorize` makes one.
#[derive(Debug)]
pub struct Permit {
    rule: &'static str,
}

/// A refusal, with the rule that refused and whether the resource's existence must stay hidden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    pub rule: &'static str,
    pub reason: String,
    /// Answer 404 rather than 403: saying "forbidden" would confirm the resource exists.
    pub hide_existence: bool,
}

impl Permit {
    pub fn rule(&self) -> &'static str {
        self.rule
    }
}

/// Decide whether `principal` may perform `action` on `resource`.
pub fn authorize(principal: &Principal, action: Action, resource: &Resource<'_>) -> Result<Permit, Deny> {
    if principal.tenant() != resource.tenant {
        return Err(Deny {
            rule: "tenant-isolation",
            reason: format!("the token is for tenant `{}`, not `{}`", principal.tenant(), resource.tenant),
            hide_existence: false,
        });
    }
    let contexts: &[ScopeContext] = match principal.role() {
        Role::Researcher => {
            return Err(Deny {
                rule: "researcher-bulk-export-only",
                reason: "researchers access pseudonymized data through bulk export, not the clinical API".into(),
                hide_existence: false,
            });
        }
        Role::Auditor => {
            return Err(Deny {
                rule: "auditor-no-clinical-data",
                reason: "auditors read the audit log, not clinical records".into(),
                hide_existence: false,
            });
        }
        Role::Patient => &[ScopeContext::Patient],
        Role::Service => &[ScopeContext::System],
        Role::Practitioner | Role::Admin => &[ScopeContext::User],
    };
    let permission = action.permission();
    if !principal.scopes().allows(contexts, resource.resource_type, permission) {
        return Err(Deny {
            rule: "smart-scopes",
            reason: format!(
                "the token's scopes do not grant `{}` on `{}`",
                permission.letter(),
                resource.resource_type
            ),
            hide_existence: false,
        });
    }
    if principal.role() == Role::Patient {
        let own = principal.patient().map(|p| Compartment::Patient(p.clone()));
        match (resource.compartment, own) {
            // Type-level listings are filtered entry by entry.
            (None, Some(_)) if matches!(action, Action::HistoryType | Action::Search) => {}
            (Some(c), Some(own)) if *c == own => {}
            _ => {
                return Err(Deny {
                    rule: "patient-compartment",
                    reason: "a patient may only access their own records".into(),
                    hide_existence: true,
                });
            }
        }
    }
    Ok(Permit { rule: "clinical-access" })
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
            let dev = DevIssuer::load(&path, "fhirvault", 0).unwrap();
            Self { _dir: dir, dev }
        }

        fn principal(&self, tenant: &str, role: Role, scope: Option<&str>, patient: Option<&str>) -> Principal {
            let req = TokenRequest {
                tenant: TenantId::parse(tenant).unwrap(),
                role,
                subject: None,
                jurisdiction: None,
                scope: scope.map(str::to_owned),
                patient: patient.map(|p| ResourceId::parse(p).unwrap()),
                purpose: None,
                ttl: Duration::from_secs(60),
            };
            self.dev.verify(&self.dev.issue(&req).unwrap()).unwrap()
        }
    }

    #[test]
    fn decisions_table() {
        let f = Fixture::new();
        let demo = TenantId::parse("demo").unwrap();
        let patient = ResourceType::PATIENT;
        let obs = ResourceType::parse("Observation").unwrap();
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
        ];
        for (tenant, role, scope, pat, action, rt, compartment, expected) in cases {
            let principal = f.principal(tenant, role, scope, pat);
            let decision = authorize(&principal, action, &Resource { tenant: &demo, resource_type: rt, compartment });
            match (&decision, expected) {
                (Ok(_), Ok(())) => {}
                (Err(deny), Err(rule)) => assert_eq!(deny.rule, rule, "{tenant} {role} {scope:?} {action:?} {rt}"),
                _ => panic!("{tenant} {role} {scope:?} {action:?} {rt} {compartment:?}: got {decision:?}"),
            }
        }
    }
}
