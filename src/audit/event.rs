//! An audit record as a FHIR R4 AuditEvent shaped after IHE BALP (Basic Audit Log Patterns).
//!
//! The sealer renders each record once, when it enters the log; the bytes it renders are the
//! leaf of the Merkle tree (`SHA-256(0x00 || bytes)`), stored as they are and served as they
//! are. Nothing re-serializes them, so no canonicalization is needed to verify them: the
//! verifier hashes exactly what the log holds.
//!
//! The event's `id` is its index in the tenant's log, which lets the verifier tell a removed,
//! inserted or reordered entry from an altered one.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{AuditAction, AuditRecord};
use crate::storage::audit_log::LogEntry;

const BALP: &str = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.";
const EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const BALP_ENTITY_TYPE: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";
const SECURITY_ROLE: &str = "http://terminology.hl7.org/CodeSystem/extra-security-role-type";
const SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
/// The code systems of `AuditEvent.action` and `AuditEvent.outcome`.
pub const ACTION_SYSTEM: &str = "http://hl7.org/fhir/audit-event-action";
pub const OUTCOME_SYSTEM: &str = "http://hl7.org/fhir/audit-event-outcome";
const OBSERVATION_VALUE: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";
/// The roles of this server (`practitioner`, `auditor`, ...), as the user agent's role.
pub const ROLE_SYSTEM: &str = "https://fhirvault.eu/fhir/CodeSystem/role";
/// The Cedar policies that decided, as the server agent's `policy`.
pub const POLICY_URN: &str = "urn:fhirvault:policy:";
/// What `detail` starts with when the request broke the glass.
const BREAK_GLASS: &str = "break-glass: ";

/// The AuditEvent of `record` at position `index` of its log, as the bytes the log keeps.
pub fn render(record: &AuditRecord, index: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(2_560);
    // Serializing plain structs of strings into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, &Event::of(record, index));
    out
}

/// A Coding (`system`, `code`, `display`).
#[derive(Clone, Copy, Serialize)]
struct Coding<'a> {
    system: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<&'a str>,
}

const fn coding<'a>(system: &'a str, code: &'a str, display: &'a str) -> Coding<'a> {
    Coding { system, code, display: Some(display) }
}

#[derive(Clone, Copy, Serialize)]
struct Concept<'a> {
    coding: [Coding<'a>; 1],
}

#[derive(Serialize)]
struct Meta {
    profile: [String; 1],
}

#[derive(Serialize)]
struct Display<'a> {
    display: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Event<'a> {
    resource_type: &'static str,
    id: String,
    meta: Meta,
    #[serde(rename = "type")]
    kind: Coding<'static>,
    subtype: [Coding<'static>; 1],
    action: &'static str,
    recorded: String,
    outcome: &'static str,
    outcome_desc: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    purpose_of_event: Vec<Concept<'a>>,
    agent: Vec<EventAgent<'a>>,
    source: Source<'a>,
    entity: Vec<Entity<'a>>,
}

#[derive(Serialize)]
struct Network<'a> {
    address: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct Identifier<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a str>,
    value: &'a str,
}

#[derive(Serialize)]
struct Who<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    identifier: Option<Identifier<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<&'a str>,
}

/// One agent: the client, the server, or the user. Fields follow in this order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventAgent<'a> {
    #[serde(rename = "type")]
    kind: Concept<'static>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<[Concept<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    who: Option<Who<'a>>,
    requestor: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<Display<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    policy: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<Network<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    purpose_of_use: Vec<Concept<'a>>,
}

#[derive(Serialize)]
struct Source<'a> {
    observer: Display<'static>,
    #[serde(rename = "type")]
    kind: [Coding<'static>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    site: Option<&'a str>,
}

#[derive(Serialize)]
struct What<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    identifier: Option<Identifier<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
}

#[derive(Serialize)]
struct Entity<'a> {
    what: What<'a>,
    #[serde(rename = "type")]
    kind: Coding<'static>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Coding<'static>>,
}

impl<'a> Event<'a> {
    fn of(r: &'a AuditRecord, index: u64) -> Self {
        let patient = r.compartment.as_deref().filter(|c| c.starts_with("Patient/"));
        let break_glass = r.detail.as_deref().is_some_and(|d| d.starts_with(BREAK_GLASS));
        let purposes = purposes(r.agent.purpose.as_deref(), break_glass);
        let mut outcome_desc = format!("HTTP {}", r.outcome);
        if let Some(detail) = &r.detail {
            outcome_desc.push_str(": ");
            outcome_desc.push_str(detail);
        }
        Self {
            resource_type: "AuditEvent",
            id: index.to_string(),
            meta: Meta { profile: [format!("{BALP}{}", profile(r.action, patient.is_some()))] },
            kind: event_type(r.action),
            subtype: [subtype(r.action)],
            action: action_code(r.action),
            recorded: r.recorded.to_fhir(),
            outcome: outcome_code(r.outcome),
            outcome_desc,
            agent: agents(r, purposes.clone()),
            purpose_of_event: purposes,
            source: Source {
                observer: Display { display: "fhirvault" },
                kind: [coding(SOURCE_TYPE, "4", "Application Server")],
                site: r.tenant.as_ref().map(|t| t.as_str()),
            },
            entity: entities(r, patient),
        }
    }
}

/// The BALP profile the event follows.
fn profile(action: AuditAction, patient: bool) -> &'static str {
    use AuditAction as A;
    match (action, patient) {
        (A::Create, false) => "Create",
        (A::Create, true) => "PatientCreate",
        (A::Read | A::Vread, false) => "Read",
        (A::Read | A::Vread, true) => "PatientRead",
        (A::Update, false) => "Update",
        (A::Update, true) => "PatientUpdate",
        (A::Delete, false) => "Delete",
        (A::Delete, true) => "PatientDelete",
        (A::HistoryInstance | A::HistoryType | A::SearchType | A::Everything, false) => "Query",
        (A::HistoryInstance | A::HistoryType | A::SearchType | A::Everything, true) => "PatientQuery",
        (A::Transaction | A::Batch, _) => "Query",
        (A::Authenticate | A::AuditLog, _) => "Read",
        (A::AccessLog, _) => "PatientRead",
        (A::Erase | A::EraseCancel | A::LegalHold, _) => "PatientDelete",
        (A::KeyRotation, _) => "Update",
    }
}

fn event_type(action: AuditAction) -> Coding<'static> {
    match action {
        AuditAction::Authenticate => coding(DCM, "110114", "User Authentication"),
        AuditAction::KeyRotation => coding(DCM, "110113", "Security Alert"),
        _ => coding(EVENT_TYPE, "rest", "RESTful Operation"),
    }
}

fn subtype(action: AuditAction) -> Coding<'static> {
    use AuditAction as A;
    let code = match action {
        A::Authenticate => return coding(DCM, "110122", "Login"),
        A::Everything | A::AuditLog | A::AccessLog | A::Erase | A::EraseCancel | A::LegalHold => "operation",
        A::KeyRotation => return coding(DCM, "110129", "Security Configuration"),
        A::Create | A::Read | A::Vread | A::Update | A::Delete => action.as_str(),
        A::HistoryInstance | A::HistoryType | A::SearchType | A::Transaction | A::Batch => action.as_str(),
    };
    Coding { system: INTERACTION, code, display: None }
}

/// C, R, U, D or E (execute: a query, a bundle, an operation, a login).
pub fn action_code(action: AuditAction) -> &'static str {
    use AuditAction as A;
    match action {
        A::Create => "C",
        A::Read | A::Vread => "R",
        A::Update => "U",
        A::Delete => "D",
        A::HistoryInstance
        | A::HistoryType
        | A::SearchType
        | A::Everything
        | A::Transaction
        | A::Batch
        | A::Authenticate => "E",
        A::AuditLog | A::AccessLog => "R",
        A::Erase => "D",
        A::EraseCancel | A::LegalHold | A::KeyRotation => "U",
    }
}

/// 0 success, 4 minor failure (the client's: 4xx), 8 serious failure (the server's: 5xx).
fn outcome_code(status: u16) -> &'static str {
    match status {
        0..400 => "0",
        400..500 => "4",
        _ => "8",
    }
}

fn purposes(purpose: Option<&str>, break_glass: bool) -> Vec<Concept<'_>> {
    let mut out = Vec::new();
    if let Some(code) = purpose {
        out.push(Concept { coding: [Coding { system: ACT_REASON, code, display: None }] });
    }
    if break_glass && purpose != Some("BTG") {
        out.push(Concept { coding: [coding(ACT_REASON, "BTG", "break the glass")] });
    }
    out
}

fn agents<'a>(r: &'a AuditRecord, purposes: Vec<Concept<'a>>) -> Vec<EventAgent<'a>> {
    let plain = |code, display| EventAgent {
        kind: Concept { coding: [coding(DCM, code, display)] },
        role: None,
        who: None,
        requestor: false,
        location: None,
        policy: Vec::new(),
        network: None,
        purpose_of_use: Vec::new(),
    };
    let client = EventAgent {
        network: r.source_ip.as_deref().map(|address| Network { address, kind: "2" }),
        ..plain("110153", "Source Role ID")
    };
    let server = EventAgent {
        who: Some(Who { identifier: None, display: Some("fhirvault") }),
        policy: r.policy.as_deref().map_or_else(Vec::new, |policy| {
            policy.split(',').map(str::trim).filter(|p| !p.is_empty()).map(|p| format!("{POLICY_URN}{p}")).collect()
        }),
        ..plain("110152", "Destination Role ID")
    };
    let mut agents = vec![client, server];
    let a = &r.agent;
    if a.subject.is_some() || a.token_id.is_some() {
        agents.push(EventAgent {
            kind: Concept { coding: [coding(SECURITY_ROLE, "humanuser", "human user")] },
            role: a
                .role
                .as_deref()
                .map(|code| [Concept { coding: [Coding { system: ROLE_SYSTEM, code, display: None }] }]),
            who: Some(Who {
                identifier: Some(Identifier {
                    system: Some(a.issuer.as_deref().unwrap_or("")),
                    value: a.subject.as_deref().unwrap_or(""),
                }),
                display: None,
            }),
            requestor: true,
            location: a.jurisdiction.as_deref().map(|display| Display { display }),
            policy: a.token_id.iter().cloned().collect(),
            network: None,
            purpose_of_use: purposes,
        });
    }
    agents
}

fn entities<'a>(r: &'a AuditRecord, patient: Option<&'a str>) -> Vec<Entity<'a>> {
    let mut out = vec![Entity {
        what: What { identifier: Some(Identifier { system: None, value: &r.request_id }), reference: None },
        kind: coding(BALP_ENTITY_TYPE, "XrequestId", "X-Request-Id"),
        role: None,
    }];
    if let Some(rt) = r.resource_type {
        let reference = match (&r.resource_id, r.version) {
            (Some(id), Some(v)) => format!("{rt}/{id}/_history/{}", v.get(), rt = rt.as_str(), id = id.as_str()),
            (Some(id), None) => format!("{}/{}", rt.as_str(), id.as_str()),
            (None, _) => rt.as_str().to_owned(),
        };
        let role = if r.resource_id.is_some() {
            coding(OBJECT_ROLE, "4", "Domain Resource")
        } else {
            coding(OBJECT_ROLE, "24", "Query")
        };
        out.push(Entity {
            what: What { identifier: None, reference: Some(reference) },
            kind: coding(ENTITY_TYPE, "2", "System Object"),
            role: Some(role),
        });
    }
    if let Some(patient) = patient {
        out.push(Entity {
            what: What { identifier: None, reference: Some(patient.to_owned()) },
            kind: coding(ENTITY_TYPE, "1", "Person"),
            role: Some(coding(OBJECT_ROLE, "1", "Patient")),
        });
    }
    out
}

/// Whether a sealed entry's search columns (time, action, outcome, user, patient, resource)
/// are those its event shows. The sealer writes both from one record, but only the event is in
/// the tree: a column changed afterwards (to hide an access from a patient's `$access-log`, or
/// to pin it on another user) would go unseen by the tree alone. Each column is rendered
/// again as the event shows it and compared.
pub fn columns_match(entry: &LogEntry) -> bool {
    let Ok(shown) = serde_json::from_slice::<Shown<'_>>(&entry.event) else { return false };
    let Some(action) = AuditAction::parse(&entry.action) else { return false };
    let status = entry.outcome;
    let desc = shown.outcome_desc.strip_prefix("HTTP ").and_then(|d| d.strip_prefix(status.to_string().as_str()));
    let user = shown.agent.iter().find(|a| a.requestor).and_then(|a| a.who.as_ref()?.identifier.as_ref());
    let user_matches = match (entry.agent.as_deref(), user.map(|i| i.value.as_ref())) {
        (Some(subject), Some(value)) => subject == value,
        (None, None | Some("")) => true,
        _ => false,
    };
    let patient = shown.entity.iter().find(|e| e.kind.code == "1" && e.kind.system == ENTITY_TYPE);
    let resource = shown.entity.iter().find(|e| e.kind.code == "2" && e.kind.system == ENTITY_TYPE);
    let resource = resource.and_then(|e| e.what.reference.as_deref()).map(|r| match r.split_once("/_history/") {
        Some((entity, version)) if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) => entity,
        _ => r,
    });
    shown
        .meta
        .profile
        .first()
        .is_some_and(|p| p.strip_prefix(BALP).is_some_and(|p| p == profile(action, entry.patient.is_some())))
        && shown.kind.code == event_type(action).code
        && shown.subtype.first().is_some_and(|c| c.code == subtype(action).code)
        && shown.action == action_code(action)
        && shown.recorded == entry.recorded.to_fhir()
        && shown.outcome == outcome_code(status)
        && desc.is_some_and(|rest| rest.is_empty() || rest.starts_with(": "))
        && user_matches
        && patient.and_then(|e| e.what.reference.as_deref()) == entry.patient.as_deref()
        && resource == entry.entity.as_deref()
}

/// What `columns_match` reads of an event (strings borrowed where they hold no escapes).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Shown<'a> {
    #[serde(borrow)]
    meta: ShownMeta<'a>,
    #[serde(rename = "type", borrow)]
    kind: ShownCoding<'a>,
    #[serde(borrow)]
    subtype: Vec<ShownCoding<'a>>,
    #[serde(borrow)]
    action: Cow<'a, str>,
    #[serde(borrow)]
    recorded: Cow<'a, str>,
    #[serde(borrow)]
    outcome: Cow<'a, str>,
    #[serde(borrow)]
    outcome_desc: Cow<'a, str>,
    #[serde(borrow)]
    agent: Vec<ShownAgent<'a>>,
    #[serde(borrow)]
    entity: Vec<ShownEntity<'a>>,
}

#[derive(Deserialize)]
struct ShownMeta<'a> {
    #[serde(borrow)]
    profile: Vec<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ShownCoding<'a> {
    #[serde(borrow)]
    system: Cow<'a, str>,
    #[serde(borrow)]
    code: Cow<'a, str>,
}

#[derive(Deserialize)]
struct ShownAgent<'a> {
    requestor: bool,
    #[serde(borrow)]
    who: Option<ShownWho<'a>>,
}

#[derive(Deserialize)]
struct ShownWho<'a> {
    #[serde(borrow)]
    identifier: Option<ShownIdentifier<'a>>,
}

#[derive(Deserialize)]
struct ShownIdentifier<'a> {
    #[serde(borrow)]
    value: Cow<'a, str>,
}

#[derive(Deserialize)]
struct ShownEntity<'a> {
    #[serde(borrow)]
    what: ShownWhat<'a>,
    #[serde(rename = "type", borrow)]
    kind: ShownCoding<'a>,
}

#[derive(Deserialize)]
struct ShownWhat<'a> {
    #[serde(borrow)]
    reference: Option<Cow<'a, str>>,
}

/// An event as its patient sees it in their access log: who, when, what and why, without the
/// system's internals (the client's network address, the token id, the request id, the ids of
/// the policies that decided), tagged `REDACTED`.
pub fn redact_for_patient(event: &mut Value) {
    if let Some(agents) = event.get_mut("agent").and_then(Value::as_array_mut) {
        for agent in agents.iter_mut().filter_map(Value::as_object_mut) {
            agent.remove("network");
            agent.remove("policy");
        }
    }
    if let Some(entities) = event.get_mut("entity").and_then(Value::as_array_mut) {
        entities.retain(|e| e.pointer("/type/code").and_then(Value::as_str) != Some("XrequestId"));
    }
    if let Some(meta) = event.get_mut("meta").and_then(Value::as_object_mut) {
        meta.insert(
            "security".into(),
            json!([{ "system": OBSERVATION_VALUE, "code": "REDACTED", "display": "redacted" }]),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Agent, RequestMeta, Target};
    use crate::ids::{ResourceId, ResourceType, TenantId, VersionId};
    use crate::time::Timestamp;

    fn record() -> AuditRecord {
        let meta = RequestMeta {
            request_id: "req-1".into(),
            source_ip: Some("127.0.0.1".into()),
            break_glass: Some("unconscious patient".into()),
        };
        let agent = Agent {
            subject: Some("dr-1".into()),
            issuer: Some("https://idp.example".into()),
            role: Some("practitioner".into()),
            jurisdiction: Some("FR".into()),
            purpose: Some("TREAT".into()),
            token_id: Some("jti-1".into()),
        };
        let tenant = TenantId::parse("demo").unwrap();
        let target = Target {
            resource_type: Some(ResourceType::parse("Observation").unwrap()),
            resource_id: Some(ResourceId::parse("o1").unwrap()),
            version: Some(VersionId::from_u32(2).unwrap()),
            compartment: Some("Patient/p1".into()),
        };
        AuditRecord::new(&meta, Some(&tenant), agent, AuditAction::Read)
            .target(&target)
            .policy(Some("clinical-read, eea-jurisdiction"))
    }

    #[test]
    fn a_read_follows_balp_patient_read() {
        let bytes = render(&record(), 7);
        let event: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(event["id"], "7");
        assert_eq!(event["meta"]["profile"][0], format!("{BALP}PatientRead"));
        assert_eq!(event["subtype"][0]["code"], "read");
        assert_eq!(event["action"], "R");
        assert_eq!(event["outcome"], "0");
        let user = &event["agent"][2];
        assert_eq!(user["who"]["identifier"]["value"], "dr-1");
        assert_eq!(user["policy"][0], "jti-1");
        assert_eq!(user["purposeOfUse"][0]["coding"][0]["code"], "TREAT");
        assert_eq!(user["purposeOfUse"][1]["coding"][0]["code"], "BTG");
        assert_eq!(event["agent"][1]["policy"][1], "urn:fhirvault:policy:eea-jurisdiction");
        assert_eq!(event["entity"][0]["what"]["identifier"]["value"], "req-1");
        assert_eq!(event["entity"][1]["what"]["reference"], "Observation/o1/_history/2");
        assert_eq!(event["entity"][2]["what"]["reference"], "Patient/p1");
        assert_eq!(event["source"]["site"], "demo");
    }

    #[test]
    fn the_search_columns_agree_with_the_event_and_a_changed_one_does_not() {
        use crate::audit::sealer::log_entry;
        let tenant = TenantId::parse("demo").unwrap();
        let meta = RequestMeta { request_id: "r".into(), ..RequestMeta::default() };
        let mut records = vec![record(), record().outcome(403, Some("refused".into()))];
        for action in AuditAction::ALL {
            records.push(AuditRecord::new(&meta, Some(&tenant), Agent::default(), action).outcome(500, None));
            let target = Target {
                resource_type: Some(ResourceType::parse("Patient").unwrap()),
                resource_id: Some(ResourceId::parse("p1").unwrap()),
                version: None,
                compartment: Some("Patient/p1".into()),
            };
            records.push(record_for(action).target(&target));
            let query = Target { resource_type: Some(ResourceType::parse("Encounter").unwrap()), ..Target::default() };
            records.push(record_for(action).target(&query));
        }
        for (i, r) in records.iter().enumerate() {
            let entry = log_entry("demo", i as u64, r, render(r, i as u64));
            assert!(columns_match(&entry), "{entry:?}");
            let changes: [&dyn Fn(&mut LogEntry); 6] = [
                &|e| e.recorded = Timestamp::from_millis(e.recorded.millis() + 1),
                &|e| e.action = if e.action == "read" { "vread".into() } else { "read".into() },
                &|e| e.outcome = if e.outcome == 200 { 201 } else { 200 },
                &|e| e.agent = if e.agent.is_some() { None } else { Some("someone".into()) },
                &|e| e.patient = if e.patient.is_some() { None } else { Some("Patient/other".into()) },
                &|e| e.entity = Some("Patient/other".into()),
            ];
            for change in changes {
                let mut changed = entry.clone();
                change(&mut changed);
                assert!(!columns_match(&changed), "{changed:?}");
            }
        }
    }

    fn record_for(action: AuditAction) -> AuditRecord {
        let mut r = record();
        r.action = action;
        r
    }

    #[test]
    fn rendering_is_deterministic() {
        let r = record();
        assert_eq!(render(&r, 3), render(&r, 3));
        assert_ne!(render(&r, 3), render(&r, 4));
    }

    #[test]
    fn a_refused_login_has_no_user_and_a_failure_outcome() {
        let meta = RequestMeta { request_id: "r".into(), ..RequestMeta::default() };
        let r = AuditRecord::new(&meta, None, Agent::default(), AuditAction::Authenticate)
            .outcome(401, Some("invalid token".into()));
        let event: Value = serde_json::from_slice(&render(&r, 0)).unwrap();
        assert_eq!(event["type"]["code"], "110114");
        assert_eq!(event["outcome"], "4");
        assert_eq!(event["outcomeDesc"], "HTTP 401: invalid token");
        assert_eq!(event["agent"].as_array().unwrap().len(), 2);
    }
}
