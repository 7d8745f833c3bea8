//! A resource as a client sent it: parsed, checked against the URL, validated, then stamped
//! with the server-assigned `id` and `meta` before it is sealed.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use super::json::{self, JsonError};
use super::model::Model;
use super::validate::{self, Issue};
use crate::ids::{ResourceId, ResourceType, VersionId};
use crate::time::Timestamp;

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error("missing `resourceType`")]
    MissingResourceType,
    #[error("`resourceType` is `{found}` but the URL is for `{expected}`")]
    WrongResourceType { expected: ResourceType, found: String },
    #[error("the resource has no `id`; an update must carry the id of the URL")]
    MissingId,
    #[error("the resource `id` `{found}` does not match the id `{expected}` in the URL")]
    IdMismatch { expected: ResourceId, found: String },
    #[error("the resource is not valid FHIR R4 ({} issue(s))", .0.len())]
    Invalid(Vec<Issue>),
}

/// A validated resource body; its `resourceType` matches `resource_type`.
#[derive(Debug)]
pub struct Resource {
    resource_type: ResourceType,
    body: Map<String, Value>,
}

/// Where a resource's keys live: in its patient's compartment, or in the tenant's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Compartment {
    Patient(ResourceId),
    Tenant,
}

impl Compartment {
    /// The stable name of the compartment, as stored in the index and bound into the crypto AAD.
    pub fn key_ref(&self) -> String {
        match self {
            Self::Patient(id) => format!("Patient/{id}"),
            Self::Tenant => "tenant".to_owned(),
        }
    }

    /// Whether this is the compartment of the Patient `id` itself.
    pub fn is_patient(&self, id: &ResourceId) -> bool {
        matches!(self, Self::Patient(own) if own == id)
    }

    pub fn parse_key_ref(s: &str) -> Option<Self> {
        match s.strip_prefix("Patient/") {
            Some(id) => ResourceId::parse(id).ok().map(Self::Patient),
            None if s == "tenant" => Some(Self::Tenant),
            None => None,
        }
    }
}

/// Parse and validate a request body meant for `expected` (the type in the URL).
pub fn parse(model: &Model, bytes: &[u8], expected: ResourceType) -> Result<Resource, ResourceError> {
    from_object(model, json::parse_object(bytes)?, expected)
}

/// Validate a JSON object already parsed (a Bundle entry's resource) meant for `expected`.
pub fn from_object(model: &Model, body: Map<String, Value>, expected: ResourceType) -> Result<Resource, ResourceError> {
    match body.get("resourceType") {
        None => return Err(ResourceError::MissingResourceType),
        Some(Value::String(s)) if s == expected.as_str() => {}
        Some(other) => {
            let found = other.as_str().map_or_else(|| other.to_string(), str::to_owned);
            return Err(ResourceError::WrongResourceType { expected, found: found.chars().take(64).collect() });
        }
    }
    let issues = validate::validate(model, expected.as_str(), &body);
    if !issues.is_empty() {
        return Err(ResourceError::Invalid(issues));
    }
    Ok(Resource { resource_type: expected, body })
}

impl Resource {
    /// The client's JSON, as validated (before the server stamps `id` and `meta`).
    pub fn body(&self) -> &Map<String, Value> {
        &self.body
    }

    pub fn resource_type(&self) -> ResourceType {
        self.resource_type
    }

    /// The `id` the client put in the body, if any.
    pub fn body_id(&self) -> Option<&str> {
        self.body.get("id").and_then(Value::as_str)
    }

    /// Give the resource `id` (a conditional update that matched a resource whose id the
    /// client did not know).
    pub fn set_id(&mut self, id: &ResourceId) {
        self.body.insert("id".to_owned(), Value::String(id.as_str().to_owned()));
    }

    /// An update must carry the URL's id in its body (FHIR RESTful API, update).
    pub fn check_id(&self, expected: &ResourceId) -> Result<(), ResourceError> {
        match self.body_id() {
            None => Err(ResourceError::MissingId),
            Some(id) if id == expected.as_str() => Ok(()),
            Some(id) => Err(ResourceError::IdMismatch { expected: expected.clone(), found: id.to_owned() }),
        }
    }

    /// The compartment of this resource once it has the id `own_id`: the Patient itself, a
    /// resource whose `subject`, `patient` or `beneficiary` is a relative `Patient/{id}`
    /// reference, or else the tenant compartment.
    pub fn compartment(&self, own_id: &ResourceId) -> Compartment {
        if self.resource_type == ResourceType::PATIENT {
            return Compartment::Patient(own_id.clone());
        }
        ["subject", "patient", "beneficiary"]
            .iter()
            .filter_map(|field| self.body.get(*field))
            .flat_map(|v| match v {
                Value::Array(items) => items.iter().collect::<Vec<_>>(),
                other => vec![other],
            })
            .filter_map(|r| r.get("reference").and_then(Value::as_str))
            .find_map(patient_reference)
            .map_or(Compartment::Tenant, Compartment::Patient)
    }

    /// The stored form: the client's JSON with `id`, `meta.versionId` and `meta.lastUpdated`
    /// set by the server, `resourceType`, `id` and `meta` first, everything else in client order.
    pub fn stored_json(&self, id: &ResourceId, version: VersionId, last_updated: Timestamp) -> Vec<u8> {
        let stored = Stored { resource: self, id, version: version.to_string(), last_updated: last_updated.to_fhir() };
        // INVARIANT: a map of JSON values always serializes.
        serde_json::to_vec(&stored).unwrap_or_default()
    }
}

struct Stored<'a> {
    resource: &'a Resource,
    id: &'a ResourceId,
    version: String,
    last_updated: String,
}

impl Serialize for Stored<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let body = &self.resource.body;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("resourceType", self.resource.resource_type.as_str())?;
        map.serialize_entry("id", self.id.as_str())?;
        let meta = StoredMeta {
            client: body.get("meta").and_then(Value::as_object),
            version: &self.version,
            last_updated: &self.last_updated,
        };
        map.serialize_entry("meta", &meta)?;
        for (key, value) in body {
            if !matches!(key.as_str(), "resourceType" | "id" | "meta") {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}

struct StoredMeta<'a> {
    client: Option<&'a Map<String, Value>>,
    version: &'a str,
    last_updated: &'a str,
}

impl Serialize for StoredMeta<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("versionId", self.version)?;
        map.serialize_entry("lastUpdated", self.last_updated)?;
        for (key, value) in self.client.into_iter().flatten() {
            if !matches!(key.as_str(), "versionId" | "lastUpdated" | "_versionId" | "_lastUpdated") {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}

/// `Patient/123` or `Patient/123/_history/4` -> `123`.
fn patient_reference(reference: &str) -> Option<ResourceId> {
    let rest = reference.strip_prefix("Patient/")?;
    let id = rest.split('/').next()?;
    ResourceId::parse(id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::model;

    fn parse_as(body: &str, rt: &str) -> Result<Resource, ResourceError> {
        parse(model::r4().unwrap(), body.as_bytes(), ResourceType::parse(rt).unwrap())
    }

    #[test]
    fn url_and_body_must_agree() {
        assert!(matches!(
            parse_as(r#"{"resourceType":"Observation"}"#, "Patient"),
            Err(ResourceError::WrongResourceType { .. })
        ));
        assert!(matches!(parse_as(r#"{"id":"x"}"#, "Patient"), Err(ResourceError::MissingResourceType)));
        assert!(matches!(
            parse_as(r#"{"resourceType":"Patient","gender":"robot"}"#, "Patient"),
            Err(ResourceError::Invalid(_))
        ));
        let r = parse_as(r#"{"resourceType":"Patient","id":"a"}"#, "Patient").unwrap();
        assert!(r.check_id(&ResourceId::parse("a").unwrap()).is_ok());
        assert!(matches!(r.check_id(&ResourceId::parse("b").unwrap()), Err(ResourceError::IdMismatch { .. })));
    }

    #[test]
    fn compartments() {
        let id = ResourceId::parse("self").unwrap();
        let cases = [
            (r#"{"resourceType":"Patient"}"#, "Patient", "Patient/self"),
            (
                r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}"#,
                "Observation",
                "Patient/p1",
            ),
            (r#"{"resourceType":"Claim","patient":{"reference":"Patient/p2/_history/3"}}"#, "Claim", "Patient/p2"),
            (
                r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Group/g"}}"#,
                "Observation",
                "tenant",
            ),
            (r#"{"resourceType":"Organization","name":"x"}"#, "Organization", "tenant"),
        ];
        for (body, rt, expected) in cases {
            let r = parse(model::r4().unwrap(), body.as_bytes(), ResourceType::parse(rt).unwrap());
            let r = match r {
                Ok(r) => r,
                Err(ResourceError::Invalid(_)) => {
                    // Claim without its mandatory elements still tells us its compartment.
                    Resource {
                        resource_type: ResourceType::parse(rt).unwrap(),
                        body: json::parse_object(body.as_bytes()).unwrap(),
                    }
                }
                Err(e) => panic!("{e}"),
            };
            assert_eq!(r.compartment(&id).key_ref(), expected, "{body}");
        }
    }

    #[test]
    fn stamping_puts_server_fields_first_and_keeps_the_rest() {
        let r = parse_as(
            r#"{"gender":"female","resourceType":"Patient","meta":{"tag":[{"code":"x"}],"versionId":"9"},"id":"old"}"#,
            "Patient",
        )
        .unwrap();
        let out = r.stored_json(&ResourceId::parse("new").unwrap(), VersionId::FIRST, Timestamp::from_millis(0));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"resourceType":"Patient","id":"new","meta":{"versionId":"1","lastUpdated":"1970-01-01T00:00:00.000Z","tag":[{"code":"x"}]},"gender":"female"}"#
        );
    }
}
