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
        ParamType::Reference => "`Type/id`, `id`, or an absolute URL; `:Type`, `:identifier`, `:missing`.",
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
    let resources: Vec<Value> = ResourceType::all()
        .map(|rt| {
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
            json!({
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
            })
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
                Search control parameters: `_count`, `_total` (`none`, `accurate`), `_summary=count`; \
                `Prefer: handling=lenient` ignores unknown parameters. Transactions are atomic; \
                `urn:uuid:` references and conditional references in them are resolved. PATCH takes \
                JSON Patch (`application/json-patch+json`; in a Bundle, a Binary of that type).",
            "interaction": [{ "code": "transaction" }, { "code": "batch" }],
            "security": {
                "cors": false,
                "service": [{
                    "coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "OAuth",
                    }],
                }],
                "description": "Bearer access tokens (JWT) with SMART v2 scopes (`user/`, `patient/`, \
                    `system/` with `cruds`).",
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
    }
}
