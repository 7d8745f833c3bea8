//! The CapabilityStatement: exactly what this server implements, nothing more.

use serde_json::{Value, json};

use super::search_params::{ParamType, SearchParams};
use crate::ids::{ResourceType, TenantId};
use crate::time::Timestamp;

/// The interactions every resource type supports, in the order the spec lists them.
pub const TYPE_INTERACTIONS: [&str; 9] =
    ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"];

/// How each search parameter type is matched, for `searchParam.documentation`.
fn search_documentation(kind: ParamType) -> &'static str {
    match kind {
        ParamType::String => {
            "Starts-with match on words, ignoring case and accents; `:exact` for the whole \
            value; `:missing`. Matched on blind-index tokens: `:contains` is not available."
        }
        ParamType::Token => "`code`, `system|code`, `|code`, `system|`; `:not`, `:missing`.",
        ParamType::Reference => {
            "`Type/id`, `id`, or an absolute URL; `:Type`, `:identifier`, `:missing`; chained one level \
            (`param[:Type].parameter`)."
        }
        ParamType::Date => "Prefixes `eq ne gt lt ge le sa eb`; partial dates are ranges; `:missing`.",
        ParamType::Number => "Prefixes `eq ne gt lt ge le sa eb ap`; precision from the digits given; `:missing`.",
        ParamType::Quantity => "`[prefix]number|system|code`, `[prefix]number||code`; `:missing`.",
        ParamType::Uri => "Exact match; `:missing`.",
    }
}

fn type_name(kind: ParamType) -> &'static str {
    match kind {
        ParamType::Number => "number",
        ParamType::Date => "date",
        ParamType::String => "string",
        ParamType::Token => "token",
        ParamType::Reference => "reference",
        ParamType::Quantity => "quantity",
        ParamType::Uri => "uri",
    }
}

/// AuditEvent is the sealed audit log, read-only, searched by these (name, type, documentation).
pub const AUDIT_EVENT_PARAMS: [(&str, &str, &str); 6] = [
    ("date", "date", "When the event was recorded (prefixes eq ne lt gt le ge sa eb)"),
    ("agent", "reference", "The user: the subject (`sub`) of their token"),
    ("entity", "reference", "The resource (`Type/id`), or the type a query searched (`Type`)"),
    ("patient", "reference", "The patient whose data it was (`Patient/id` or `id`)"),
    ("action", "token", "C, R, U, D or E (http://hl7.org/fhir/audit-event-action)"),
    ("outcome", "token", "0, 4, 8 or 12 (http://hl7.org/fhir/audit-event-outcome)"),
];

/// The entry of AuditEvent: the audit log, read and searched by auditors (and by a patient
/// for their own entries), newest first; never written by clients.
fn audit_event_resource() -> Value {
    let params: Vec<Value> = AUDIT_EVENT_PARAMS
        .iter()
        .map(|(name, kind, documentation)| json!({ "name": name, "type": kind, "documentation": documentation }))
        .collect();
    json!({
        "type": ResourceType::AUDIT_EVENT.as_str(),
        "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
        "documentation": "The tamper-evident audit log (IHE BALP AuditEvents sealed into a signed Merkle tree), \
            newest first, as sealed: its signed checkpoints and proofs are at /audit/{tenant}/. Read by \
            auditors; a patient reads the entries about their own data (see Patient `$access-log`). \
            Recorded by the server only: clients cannot create, change or delete AuditEvents. \
            `_count`, `_total` and paging links are supported.",
        "interaction": [{ "code": "read" }, { "code": "search-type" }],
        "searchParam": params,
    })
}

/// The CapabilityStatement of one tenant's FHIR base.
/// `conditional_delete_multiple`: whether a conditional delete may remove several resources.
pub fn statement(
    tenant: &TenantId,
    base_url: &str,
    params: &SearchParams,
    conditional_delete_multiple: bool,
    now: Timestamp,
) -> Value {
    let interactions: Vec<Value> = TYPE_INTERACTIONS.iter().map(|code| json!({ "code": code })).collect();
    // `Source:param` for every reference parameter, by the types it may point at.
    let mut rev_includes: std::collections::BTreeMap<&str, Vec<String>> = std::collections::BTreeMap::new();
    for source in ResourceType::all() {
        for p in params.for_type(source.as_str()).into_iter().filter(|p| p.kind == ParamType::Reference) {
            for target in p.targets.iter() {
                rev_includes.entry(target.as_ref()).or_default().push(format!("{source}:{}", p.code));
            }
        }
    }
    let resources: Vec<Value> = ResourceType::all()
        .map(|rt| {
            if rt == ResourceType::AUDIT_EVENT {
                return audit_event_resource();
            }
            let includes: Vec<String> = params
                .for_type(rt.as_str())
                .into_iter()
                .filter(|p| p.kind == ParamType::Reference)
                .map(|p| format!("{rt}:{}", p.code))
                .collect();
            let search_params: Vec<Value> = params
                .for_type(rt.as_str())
                .into_iter()
                .map(|p| {
                    json!({
                        "name": p.code.as_ref(),
                        "type": type_name(p.kind),
                        "documentation": search_documentation(p.kind),
                    })
                })
                .collect();
            let mut resource = json!({
                "type": rt.as_str(),
                "interaction": interactions,
                "searchParam": search_params,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": true,
                "conditionalDelete": if conditional_delete_multiple { "multiple" } else { "single" },
            });
            let Some(fields) = resource.as_object_mut() else { return resource };
            // FHIR forbids empty arrays: a type without references lists none.
            if !includes.is_empty() {
                fields.insert("searchInclude".into(), json!(includes));
            }
            if let Some(rev) = rev_includes.get(rt.as_str()) {
                fields.insert("searchRevInclude".into(), json!(rev));
            }
            if rt == ResourceType::PATIENT {
                fields.insert(
                    "operation".into(),
                    json!([
                        {
                            "name": "everything",
                            "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                            "documentation": "The patient, its compartment, and what those refer to; `_count` \
                                pages, `_type` narrows.",
                        },
                        {
                            "name": "access-log",
                            "definition": "https://fhirvault.eu/fhir/OperationDefinition/Patient-access-log",
                            "documentation": "Who accessed this patient's data, when, from where and why: the \
                                patient's entries of the audit log, newest first, for the patient themself \
                                (without the system's internals) and for auditors. Takes the AuditEvent \
                                search parameters, `_count` and `_total`.",
                        },
                        {
                            "name": "erase",
                            "definition": "https://fhirvault.eu/fhir/OperationDefinition/Patient-erase",
                            "documentation": "Administrators: erase the patient's data (crypto-shredding: its key \
                                is destroyed after the configured delay, then every record of the patient answers \
                                410). Refused (409) under a legal hold or a retention rule.",
                        },
                        {
                            "name": "erase-cancel",
                            "definition": "https://fhirvault.eu/fhir/OperationDefinition/Patient-erase-cancel",
                            "documentation": "Administrators: cancel a scheduled erasure before it is due.",
                        },
                        {
                            "name": "legal-hold",
                            "definition": "https://fhirvault.eu/fhir/OperationDefinition/Patient-legal-hold",
                            "documentation": "Administrators: set (Parameters `hold` true and a `reason`) or clear \
                                (`hold` false) a legal hold, which keeps the patient's data from erasure.",
                        },
                    ]),
                );
            }
            resource
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now.to_fhir(),
        "publisher": "fhirvault",
        "kind": "instance",
        "software": { "name": "fhirvault", "version": env!("CARGO_PKG_VERSION") },
        "implementation": {
            "description": format!("fhirvault FHIR R4 base of tenant {tenant}"),
            "url": base_url,
        },
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json", "application/json"],
        "rest": [{
            "mode": "server",
            "documentation": "Records are envelope-encrypted (AES-256-GCM, one key per version, \
                wrapped by a per-patient compartment key and a tenant key-encryption key) and every \
                interaction is audited. Only JSON is served. Search answers from a blind index: \
                strings, codes and identifiers are matched on keyed tokens, never stored in clear. \
                Search control parameters: `_count`, `_total` (`none`, `accurate`), `_summary=count`, \
                `_include` and `_revinclude` (with `:iterate`, one level), `_elements`, `_sort` (`_id`, \
                `_lastUpdated`, dates, numbers, quantities: blind-indexed values have no order); `_has` one level; \
                compartment search (`Patient/{id}/Observation`) for the compartments listed; \
                `Prefer: handling=lenient` ignores unknown parameters. Transactions are atomic; \
                `urn:uuid:` references and conditional references in them are resolved. PATCH takes \
                JSON Patch (`application/json-patch+json`; in a Bundle, a Binary of that type).",
            "interaction": [{ "code": "transaction" }, { "code": "batch" }],
            "compartment": [
                "http://hl7.org/fhir/CompartmentDefinition/device",
                "http://hl7.org/fhir/CompartmentDefinition/encounter",
                "http://hl7.org/fhir/CompartmentDefinition/patient",
                "http://hl7.org/fhir/CompartmentDefinition/practitioner",
                "http://hl7.org/fhir/CompartmentDefinition/relatedPerson",
            ],
            "security": {
                "cors": false,
                "service": [{
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                            "code": "SMART-on-FHIR",
                        },
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                            "code": "OAuth",
                        },
                    ],
                }],
                "description": "Bearer access tokens (JWT, RFC 9068) from the tenant's OpenID provider, \
                    with SMART scopes (v2 `user/`, `patient/`, `system/` with `cruds`; v1 `.read`, `.write`, \
                    `.*`). Endpoints: `.well-known/smart-configuration` under this base.",
            },
            "resource": resources,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::{model, validate};

    #[test]
    fn the_statement_is_valid_and_lists_every_type() {
        let tenant = TenantId::parse("demo").unwrap();
        let params = crate::fhir::search_params::r4().unwrap();
        let cs = statement(&tenant, "http://localhost/fhir/demo", params, false, Timestamp::now());
        let issues = validate::validate(model::r4().unwrap(), "CapabilityStatement", cs.as_object().unwrap());
        assert_eq!(issues, vec![]);
        let resources = cs["rest"][0]["resource"].as_array().unwrap();
        assert_eq!(resources.len(), 146);
        let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
        let names: Vec<&str> =
            patient["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"family") && names.contains(&"_id") && names.contains(&"birthdate"), "{names:?}");
        assert!(!names.contains(&"_text"), "special parameters are not listed");
        let listed = |field: &str| -> Vec<&str> {
            patient[field].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect()
        };
        assert!(listed("searchInclude").contains(&"Patient:general-practitioner"));
        assert!(listed("searchRevInclude").contains(&"Observation:subject"));
        assert_eq!(patient["operation"][0]["name"], "everything");
    }
}
