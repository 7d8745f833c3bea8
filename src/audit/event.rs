//! An audit record as a FHIR R4 AuditEvent shaped after IHE BALP (Basic Audit Log Patterns).
//!
//! The sealer renders each record once, when it enters the log; the bytes it renders are the
//! leaf of the Merkle tree (`SHA-256(0x00 || bytes)`), stored as they are and served as they
//! are. Nothing re-serializes them, so no canonicalization is needed to verify them: the
//! verifier hashes exactly what the log holds.
//!
//! The event's `id` is its index in the tenant's log, which lets the verifier tell a removed,
//! inserted or reordered entry from an altered one.

use serde_json::{Value, json};

use super::{AuditAction, AuditRecord};

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
    serde_json::to_vec(&to_json(record, index)).unwrap_or_default()
}

fn to_json(r: &AuditRecord, index: u64) -> Value {
    let patient = r.compartment.as_deref().filter(|c| c.starts_with("Patient/"));
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": index.to_string(),
        "meta": { "profile": [format!("{BALP}{}", profile(r.action, patient.is_some()))] },
        "type": event_type(r.action),
    });
    let mut put = |key: &str, value: Value| {
        if let Some(map) = event.as_object_mut() {
            map.insert(key.to_owned(), value);
        }
    };
    if let Some(subtype) = subtype(r.action) {
        put("subtype", json!([subtype]));
    }
    put("action", json!(action_code(r.action)));
    put("recorded", json!(r.recorded.to_fhir()));
    put("outcome", json!(outcome_code(r.outcome)));
    let break_glass = r.detail.as_deref().is_some_and(|d| d.starts_with(BREAK_GLASS));
    let mut description = format!("HTTP {}", r.outcome);
    if let Some(detail) = &r.detail {
        description.push_str(": ");
        description.push_str(detail);
    }
    put("outcomeDesc", json!(description));
    let purposes = purposes(r.agent.purpose.as_deref(), break_glass);
    if !purposes.is_empty() {
        put("purposeOfEvent", Value::Array(purposes.clone()));
    }
    put("agent", Value::Array(agents(r, purposes)));
    let mut source = json!({
        "observer": { "display": "fhirvault" },
        "type": [{ "system": SOURCE_TYPE, "code": "4", "display": "Application Server" }],
    });
    if let (Some(tenant), Some(map)) = (&r.tenant, source.as_object_mut()) {
        map.insert("site".into(), json!(tenant.as_str()));
    }
    put("source", source);
    put("entity", Value::Array(entities(r, patient)));
    event
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
    }
}

fn event_type(action: AuditAction) -> Value {
    match action {
        AuditAction::Authenticate => json!({ "system": DCM, "code": "110114", "display": "User Authentication" }),
        _ => json!({ "system": EVENT_TYPE, "code": "rest", "display": "RESTful Operation" }),
    }
}

fn subtype(action: AuditAction) -> Option<Value> {
    use AuditAction as A;
    let code = match action {
        A::Authenticate => return Some(json!({ "system": DCM, "code": "110122", "display": "Login" })),
        A::Everything | A::AuditLog | A::AccessLog => "operation",
        A::Create | A::Read | A::Vread | A::Update | A::Delete => action.as_str(),
        A::HistoryInstance | A::HistoryType | A::SearchType | A::Transaction | A::Batch => action.as_str(),
    };
    Some(json!({ "system": INTERACTION, "code": code }))
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

fn purposes(purpose: Option<&str>, break_glass: bool) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(code) = purpose {
        out.push(json!({ "coding": [{ "system": ACT_REASON, "code": code }] }));
    }
    if break_glass && purpose != Some("BTG") {
        out.push(json!({ "coding": [{ "system": ACT_REASON, "code": "BTG", "display": "break the glass" }] }));
    }
    out
}

fn agents(r: &AuditRecord, purposes: Vec<Value>) -> Vec<Value> {
    let mut client = json!({
        "type": { "coding": [{ "system": DCM, "code": "110153", "display": "Source Role ID" }] },
        "requestor": false,
    });
    if let (Some(ip), Some(map)) = (&r.source_ip, client.as_object_mut()) {
        map.insert("network".into(), json!({ "address": ip, "type": "2" }));
    }
    let mut server = json!({
        "type": { "coding": [{ "system": DCM, "code": "110152", "display": "Destination Role ID" }] },
        "who": { "display": "fhirvault" },
        "requestor": false,
    });
    if let (Some(policy), Some(map)) = (&r.policy, server.as_object_mut()) {
        let ids: Vec<String> =
            policy.split(',').map(str::trim).filter(|p| !p.is_empty()).map(|p| format!("{POLICY_URN}{p}")).collect();
        map.insert("policy".into(), json!(ids));
    }
    let mut agents = vec![client, server];
    if r.agent.subject.is_some() || r.agent.token_id.is_some() {
        let a = &r.agent;
        let mut who = serde_json::Map::new();
        who.insert(
            "identifier".into(),
            json!({ "system": a.issuer.as_deref().unwrap_or(""), "value": a.subject.as_deref().unwrap_or("") }),
        );
        let mut user = serde_json::Map::new();
        user.insert(
            "type".into(),
            json!({ "coding": [{ "system": SECURITY_ROLE, "code": "humanuser", "display": "human user" }] }),
        );
        if let Some(role) = &a.role {
            user.insert("role".into(), json!([{ "coding": [{ "system": ROLE_SYSTEM, "code": role }] }]));
        }
        user.insert("who".into(), Value::Object(who));
        user.insert("requestor".into(), json!(true));
        if let Some(country) = &a.jurisdiction {
            user.insert("location".into(), json!({ "display": country }));
        }
        if let Some(token) = &a.token_id {
            user.insert("policy".into(), json!([token]));
        }
        if !purposes.is_empty() {
            user.insert("purposeOfUse".into(), Value::Array(purposes));
        }
        agents.push(Value::Object(user));
    }
    agents
}

fn entities(r: &AuditRecord, patient: Option<&str>) -> Vec<Value> {
    let mut out = vec![json!({
        "what": { "identifier": { "value": r.request_id } },
        "type": { "system": BALP_ENTITY_TYPE, "code": "XrequestId", "display": "X-Request-Id" },
    })];
    if let Some(rt) = r.resource_type {
        let reference = match (&r.resource_id, r.version) {
            (Some(id), Some(v)) => format!("{rt}/{id}/_history/{}", v.get(), rt = rt.as_str(), id = id.as_str()),
            (Some(id), None) => format!("{}/{}", rt.as_str(), id.as_str()),
            (None, _) => rt.as_str().to_owned(),
        };
        let role = if r.resource_id.is_some() {
            json!({ "system": OBJECT_ROLE, "code": "4", "display": "Domain Resource" })
        } else {
            json!({ "system": OBJECT_ROLE, "code": "24", "display": "Query" })
        };
        out.push(json!({
            "what": { "reference": reference },
            "type": { "system": ENTITY_TYPE, "code": "2", "display": "System Object" },
            "role": role,
        }));
    }
    if let Some(patient) = patient {
        out.push(json!({
            "what": { "reference": patient },
            "type": { "system": ENTITY_TYPE, "code": "1", "display": "Person" },
            "role": { "system": OBJECT_ROLE, "code": "1", "display": "Patient" },
        }));
    }
    out
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
