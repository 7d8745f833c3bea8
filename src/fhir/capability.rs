//! The CapabilityStatement: exactly what this server implements, nothing more.

use serde_json::{Value, json};

use crate::ids::{ResourceType, TenantId};
use crate::time::Timestamp;

/// The interactions every resource type supports, in the order the spec lists them.
pub const TYPE_INTERACTIONS: [&str; 7] =
    ["read", "vread", "update", "delete", "history-instance", "history-type", "create"];

/// The CapabilityStatement of one tenant's FHIR base.
pub fn statement(tenant: &TenantId, base_url: &str, now: Timestamp) -> Value {
    let interactions: Vec<Value> = TYPE_INTERACTIONS.iter().map(|code| json!({ "code": code })).collect();
    let resources: Vec<Value> = ResourceType::all()
        .map(|rt| {
            json!({
                "type": rt.as_str(),
                "interaction": interactions,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": false,
                "conditionalRead": "not-supported",
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
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
                interaction is audited. Only JSON is served. Search, transactions and batches are not \
                available yet.",
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
        let cs = statement(&tenant, "http://localhost/fhir/demo", Timestamp::now());
        let issues = validate::validate(model::r4().unwrap(), "CapabilityStatement", cs.as_object().unwrap());
        assert_eq!(issues, vec![]);
        assert_eq!(cs["rest"][0]["resource"].as_array().unwrap().len(), 146);
    }
}
