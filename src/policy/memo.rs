//! Remembered decisions. A decision is a pure function of what the policies are shown (the
//! principal's attributes, the action, the resource's attributes and the context) and of the
//! policy set, which does not change while the server runs; asking Cedar again for the same
//! inputs gives the same answer, at a cost of about a quarter of a read's CPU in this server.
//!
//! So decisions are remembered under a key that holds every input, with two reductions, each
//! made only when reading the policies proves it changes nothing:
//! - `context.now` (seconds) is left out when no policy reads it;
//! - a resource's compartment is reduced to "absent", "the principal's own patient" or
//!   "another" when the policies only ever test its presence (`resource has compartment`) and
//!   compare it with the principal's patient (`resource.compartment == principal.patient`, or
//!   `!=`). Under that reduction one decision serves a practitioner's reads across every
//!   patient, where the full value would make each patient a new decision.
//!
//! The proof is syntactic and conservative: any other mention of either attribute (a `like`, a
//! comparison with a literal, the whole `context` record) keeps the attribute in the key.

use std::time::Duration;

use cedar_policy::PolicySet;
use serde_json::Value;

use super::{Action, Deny, Resource};
use crate::auth::{Principal, Role};
use crate::fhir::Compartment;
use crate::ids::{CountryCode, ResourceId, ResourceType, TenantId};

/// Remembered decisions at most (a key is a few hundred bytes).
const CAPACITY: u64 = 10_000;
/// A remembered decision is forgotten after this long: the principals it was about come and go.
const TTL: Duration = Duration::from_secs(600);

/// What the policy set reads of the attributes the memo key may leave out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Observes {
    /// Some policy reads `context.now` (or the whole `context`).
    pub now: bool,
    /// Some policy reads `resource.compartment` other than by comparing it with
    /// `principal.patient` or testing its presence.
    pub compartment: bool,
}

impl Observes {
    /// Read every policy of `set` (in Cedar's JSON form).
    pub fn of(set: &PolicySet) -> Self {
        let mut observes = Self { now: false, compartment: false };
        for policy in set.policies() {
            match policy.to_json() {
                Ok(json) => observes.walk(&json),
                // A policy that cannot be shown as JSON cannot be read: assume it reads both.
                Err(_) => observes = Self { now: true, compartment: true },
            }
        }
        observes
    }

    fn walk(&mut self, value: &Value) {
        match value {
            Value::Array(items) => items.iter().for_each(|item| self.walk(item)),
            Value::Object(map) => {
                for (key, inner) in map {
                    match key.as_str() {
                        "==" | "!=" if compares_compartment_with_patient(inner) => {}
                        "." | "has" => self.attribute(key == "has", inner),
                        "Var" if inner == "context" => self.now = true,
                        _ => self.walk(inner),
                    }
                }
            }
            _ => {}
        }
    }

    /// `left.attr` or `left has attr`.
    fn attribute(&mut self, presence: bool, inner: &Value) {
        let left = &inner["left"];
        let attr = inner["attr"].as_str();
        if is_var(left, "context") {
            // Other context attributes are in the key; `now` is what may be left out.
            if attr == Some("now") || attr.is_none() {
                self.now = true;
            }
        } else if is_var(left, "resource") && attr == Some("compartment") {
            if !presence {
                self.compartment = true;
            }
        } else {
            self.walk(left);
        }
    }
}

fn is_var(value: &Value, name: &str) -> bool {
    value.get("Var").is_some_and(|v| v == name)
}

fn is_attr(value: &Value, var: &str, attr: &str) -> bool {
    value.get(".").is_some_and(|a| is_var(&a["left"], var) && a["attr"] == attr)
}

/// `resource.compartment == principal.patient`, either way round.
fn compares_compartment_with_patient(inner: &Value) -> bool {
    let (left, right) = (&inner["left"], &inner["right"]);
    (is_attr(left, "resource", "compartment") && is_attr(right, "principal", "patient"))
        || (is_attr(left, "principal", "patient") && is_attr(right, "resource", "compartment"))
}

/// What the policies can see of a resource's compartment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SeenCompartment {
    Absent,
    /// Reduced: whether it is the principal's own patient.
    OwnPatient(bool),
    Value(Compartment),
}

/// Every input of a decision (see the module comment for what may be reduced).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct MemoKey {
    action: Action,
    scopes_allow: bool,
    principal_tenant: TenantId,
    role: Role,
    patient: Option<ResourceId>,
    purpose: Option<String>,
    grants: Vec<String>,
    jurisdiction: Option<CountryCode>,
    organization: Option<String>,
    tenant: TenantId,
    resource_type: ResourceType,
    compartment: SeenCompartment,
    labels: Option<Vec<String>>,
    break_glass: bool,
    now: Option<i64>,
}

impl MemoKey {
    pub fn new(
        observes: Observes,
        principal: &Principal,
        action: Action,
        resource: &Resource<'_>,
        scopes_allow: bool,
        now: i64,
    ) -> Self {
        // Every field of `Resource`: a field added to it must be added here.
        let Resource { tenant, resource_type, compartment, labels, break_glass } = *resource;
        let compartment = match compartment {
            None => SeenCompartment::Absent,
            Some(c) if observes.compartment => SeenCompartment::Value(c.clone()),
            Some(c) => SeenCompartment::OwnPatient(
                principal.patient().is_some_and(|p| matches!(c, Compartment::Patient(id) if id == p)),
            ),
        };
        Self {
            action,
            scopes_allow,
            principal_tenant: principal.tenant().clone(),
            role: principal.role(),
            patient: principal.patient().cloned(),
            purpose: principal.purpose().map(str::to_owned),
            grants: principal.grants().to_vec(),
            jurisdiction: principal.jurisdiction(),
            organization: principal.organization().map(str::to_owned),
            tenant: tenant.clone(),
            resource_type,
            compartment,
            labels: labels.map(<[String]>::to_vec),
            break_glass,
            now: observes.now.then_some(now),
        }
    }
}

/// A remembered outcome: the permit's rule, or the refusal.
pub(super) type Remembered = Result<String, Deny>;

pub(super) fn cache() -> moka::sync::Cache<MemoKey, Remembered> {
    // Room for a few principals at first: the map grows with use rather than taking the memory
    // of its whole capacity at start.
    moka::sync::Cache::builder().max_capacity(CAPACITY).initial_capacity(256).time_to_live(TTL).build()
}
