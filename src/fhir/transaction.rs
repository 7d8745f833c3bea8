//! Transaction and batch Bundles as clients send them: their entries, the URL each entry
//! names, and the references between entries (`urn:uuid:` full URLs, conditional references).

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::json::{self, JsonError};
use crate::ids::{ResourceId, ResourceType, VersionId};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error("the body must be a Bundle of type `transaction` or `batch`")]
    NotABundle,
    #[error("Bundle.type is `{0}`; this endpoint takes `transaction` or `batch`")]
    WrongType(String),
    #[error("entry {index}: {reason}")]
    Entry { index: usize, reason: String },
}

/// `transaction` (all or nothing) or `batch` (each entry on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    Transaction,
    Batch,
}

impl BundleKind {
    /// The `Bundle.type` of the response.
    pub fn response_type(self) -> &'static str {
        match self {
            Self::Transaction => "transaction-response",
            Self::Batch => "batch-response",
        }
    }
}

/// `Bundle.entry.request.method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryMethod {
    // The declaration order is the order a transaction processes its entries in (FHIR R4,
    // 3.1.0.11.2): deletes, creates, updates and patches, then reads.
    Delete,
    Post,
    Put,
    Patch,
    Get,
}

impl EntryMethod {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "DELETE" => Some(Self::Delete),
            "POST" => Some(Self::Post),
            "PUT" => Some(Self::Put),
            "PATCH" => Some(Self::Patch),
            "GET" | "HEAD" => Some(Self::Get),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delete => "DELETE",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Get => "GET",
        }
    }
}

/// What an entry's `request.url` names, relative to the tenant base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryUrl {
    /// `Type`
    Type(ResourceType),
    /// `Type?query` (a search, or the condition of a conditional update or delete)
    Search(ResourceType, String),
    /// `Type/id`
    Instance(ResourceType, ResourceId),
    /// `Type/id/_history/vid`
    Version(ResourceType, ResourceId, VersionId),
}

impl EntryUrl {
    pub fn resource_type(&self) -> ResourceType {
        match self {
            Self::Type(rt) | Self::Search(rt, _) | Self::Instance(rt, _) | Self::Version(rt, ..) => *rt,
        }
    }

    /// Read `url`, which is relative to `base_url` or starts with it.
    pub fn parse(url: &str, base_url: &str) -> Result<Self, String> {
        let relative = url.strip_prefix(base_url).map_or(url, |rest| rest.trim_start_matches('/'));
        let (path, query) = match relative.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (relative, None),
        };
        let segments: Vec<&str> = path.split('/').collect();
        let rt = |s: &str| ResourceType::parse(s).map_err(|_| format!("`{}` is not a resource type", short(s)));
        let id = |s: &str| ResourceId::parse(s).map_err(|_| format!("`{}` is not a valid id", short(s)));
        match (segments.as_slice(), query) {
            ([t], None) => Ok(Self::Type(rt(t)?)),
            ([t], Some(q)) => Ok(Self::Search(rt(t)?, q.to_owned())),
            ([t, i], None) => Ok(Self::Instance(rt(t)?, id(i)?)),
            ([t, i, "_history", v], None) => {
                let version = VersionId::parse(v).map_err(|_| format!("`{}` is not a version", short(v)))?;
                Ok(Self::Version(rt(t)?, id(i)?, version))
            }
            _ => Err(format!(
                "`{}` is not a URL a bundle entry can name here (`Type`, `Type?search`, `Type/id` or `Type/id/_history/vid`)",
                short(url)
            )),
        }
    }
}

/// One entry of a request Bundle.
#[derive(Debug, Clone)]
pub struct EntryRequest {
    pub full_url: Option<String>,
    pub method: EntryMethod,
    pub url: String,
    pub if_match: Option<String>,
    pub if_none_match: Option<String>,
    pub if_none_exist: Option<String>,
    pub resource: Option<Map<String, Value>>,
}

/// A parsed request Bundle.
#[derive(Debug)]
pub struct RequestBundle {
    pub kind: BundleKind,
    pub entries: Vec<EntryRequest>,
}

/// Parse a request Bundle. `max_entries` bounds it (`Err(Ok(count))` when exceeded: the caller
/// answers 413 naming its limit).
pub fn parse(bytes: &[u8], max_entries: usize) -> Result<RequestBundle, Result<usize, BundleError>> {
    let mut body = json::parse_object(bytes).map_err(|e| Err(e.into()))?;
    if body.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(Err(BundleError::NotABundle));
    }
    let kind = match body.get("type").and_then(Value::as_str) {
        Some("transaction") => BundleKind::Transaction,
        Some("batch") => BundleKind::Batch,
        Some(other) => return Err(Err(BundleError::WrongType(short(other)))),
        None => return Err(Err(BundleError::WrongType("(none)".into()))),
    };
    let raw = match body.remove("entry") {
        None => Vec::new(),
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(Err(BundleError::Entry { index: 0, reason: "`entry` must be an array".into() })),
    };
    if raw.len() > max_entries {
        return Err(Ok(raw.len()));
    }
    let entries = raw
        .into_iter()
        .enumerate()
        .map(|(index, entry)| entry_request(entry).map_err(|reason| Err(BundleError::Entry { index, reason })))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RequestBundle { kind, entries })
}

fn entry_request(entry: Value) -> Result<EntryRequest, String> {
    let Value::Object(mut entry) = entry else { return Err("an entry must be an object".into()) };
    let request = entry.get("request").and_then(Value::as_object).ok_or("`request` is required")?;
    let text = |key: &str| -> Result<Option<String>, String> {
        match request.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("`request.{key}` must be a string")),
        }
    };
    let method = text("method")?.ok_or("`request.method` is required")?;
    let method = EntryMethod::parse(&method)
        .ok_or_else(|| format!("`request.method` `{}` is not an HTTP method FHIR uses", short(&method)))?;
    let url = text("url")?.ok_or("`request.url` is required")?;
    let (if_match, if_none_match, if_none_exist) = (text("ifMatch")?, text("ifNoneMatch")?, text("ifNoneExist")?);
    let full_url = match entry.get("fullUrl") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("`fullUrl` must be a string".into()),
    };
    let resource = match entry.remove("resource") {
        None => None,
        Some(Value::Object(resource)) => Some(resource),
        Some(_) => return Err("`resource` must be an object".into()),
    };
    if matches!(method, EntryMethod::Post | EntryMethod::Put | EntryMethod::Patch) && resource.is_none() {
        return Err(format!("a {} entry needs a `resource`", method.as_str()));
    }
    Ok(EntryRequest { full_url, method, url, if_match, if_none_match, if_none_exist, resource })
}

/// Every `reference` string in `value` (the resource, its contained resources, extensions...).
pub fn references(value: &Map<String, Value>) -> BTreeSet<String> {
    fn walk(value: &Value, out: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => walk_map(map, out),
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    fn walk_map(map: &Map<String, Value>, out: &mut BTreeSet<String>) {
        for (key, value) in map {
            match value {
                Value::String(s) if key == "reference" => {
                    out.insert(s.clone());
                }
                other => walk(other, out),
            }
        }
    }
    let mut out = BTreeSet::new();
    walk_map(value, &mut out);
    out
}

/// Replace every `reference` string for which `resolve` has an answer.
pub fn rewrite_references(value: &mut Map<String, Value>, resolve: &dyn Fn(&str) -> Option<String>) {
    fn walk(value: &mut Value, resolve: &dyn Fn(&str) -> Option<String>) {
        match value {
            Value::Object(map) => walk_map(map, resolve),
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, resolve)),
            _ => {}
        }
    }
    fn walk_map(map: &mut Map<String, Value>, resolve: &dyn Fn(&str) -> Option<String>) {
        for (key, value) in map.iter_mut() {
            match value {
                Value::String(s) if key == "reference" => {
                    if let Some(new) = resolve(s) {
                        *s = new;
                    }
                }
                other => walk(other, resolve),
            }
        }
    }
    walk_map(value, resolve);
}

/// A reference that only means something inside its Bundle (`urn:uuid:`, `urn:oid:`).
pub fn is_placeholder(reference: &str) -> bool {
    reference.starts_with("urn:uuid:") || reference.starts_with("urn:oid:")
}

/// A conditional reference (`Patient?identifier=http://hospital|123`): its type and query.
pub fn conditional_reference(reference: &str) -> Option<(ResourceType, &str)> {
    let (path, query) = reference.split_once('?')?;
    let rt = ResourceType::parse(path).ok()?;
    Some((rt, query))
}

/// At most 64 characters of client input, for messages.
fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn entry_urls_read_relative_or_under_the_base() {
        let base = "http://h/fhir/demo";
        let patient = ResourceType::parse("Patient").unwrap();
        let id = ResourceId::parse("p1").unwrap();
        assert_eq!(EntryUrl::parse("Patient", base), Ok(EntryUrl::Type(patient)));
        assert_eq!(EntryUrl::parse("Patient/p1", base), Ok(EntryUrl::Instance(patient, id.clone())));
        assert_eq!(EntryUrl::parse("http://h/fhir/demo/Patient/p1", base), Ok(EntryUrl::Instance(patient, id.clone())));
        assert_eq!(
            EntryUrl::parse("Patient?identifier=a|b", base),
            Ok(EntryUrl::Search(patient, "identifier=a|b".into()))
        );
        assert_eq!(
            EntryUrl::parse("Patient/p1/_history/2", base),
            Ok(EntryUrl::Version(patient, id, VersionId::from_u32(2).unwrap()))
        );
        assert!(EntryUrl::parse("Nope/p1", base).is_err());
        assert!(EntryUrl::parse("Patient/p1/$everything", base).is_err());
    }

    #[test]
    fn references_are_found_and_rewritten_everywhere() {
        let mut body = json::parse_object(
            br#"{"resourceType":"Observation","subject":{"reference":"urn:uuid:1"},
                "contained":[{"resourceType":"Provenance","target":[{"reference":"urn:uuid:2"}]}],
                "extension":[{"url":"x","valueReference":{"reference":"Patient?identifier=s|v"}}],
                "note":[{"text":"reference"}]}"#,
        )
        .unwrap();
        let found: Vec<String> = references(&body).into_iter().collect();
        assert_eq!(found, ["Patient?identifier=s|v", "urn:uuid:1", "urn:uuid:2"]);
        rewrite_references(&mut body, &|r| r.strip_prefix("urn:uuid:").map(|n| format!("Patient/p{n}")));
        let found: Vec<String> = references(&body).into_iter().collect();
        assert_eq!(found, ["Patient/p1", "Patient/p2", "Patient?identifier=s|v"]);
        assert_eq!(
            conditional_reference("Patient?identifier=s|v").map(|(t, q)| (t.as_str(), q)),
            Some(("Patient", "identifier=s|v"))
        );
        assert!(conditional_reference("Patient/p1").is_none());
    }

    #[test]
    fn a_bundle_is_read_with_its_limits() {
        let bundle = br#"{"resourceType":"Bundle","type":"transaction","entry":[
            {"fullUrl":"urn:uuid:1","resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient"}},
            {"request":{"method":"GET","url":"Patient/p1"}}]}"#;
        let parsed = parse(bundle, 10).unwrap();
        assert_eq!(parsed.kind, BundleKind::Transaction);
        assert_eq!(parsed.entries.len(), 2);
        assert!(matches!(parse(bundle, 1), Err(Ok(2))));
        let no_resource =
            br#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"PUT","url":"Patient/p1"}}]}"#;
        assert!(matches!(parse(no_resource, 10), Err(Err(BundleError::Entry { index: 0, .. }))));
        let searchset = br#"{"resourceType":"Bundle","type":"searchset"}"#;
        assert!(matches!(parse(searchset, 10), Err(Err(BundleError::WrongType(_)))));
    }
}
