//! Bundles written straight from stored bytes.
//!
//! A stored resource is already the JSON we answer with; a bundle splices those bytes in
//! rather than parsing and re-serializing every entry.

use serde::Serialize;

/// One `Bundle.link`.
#[derive(Debug, Clone, Serialize)]
pub struct Link {
    pub relation: &'static str,
    pub url: String,
}

/// One entry of a `history` bundle.
#[derive(Debug)]
pub struct HistoryEntry<'a> {
    pub full_url: String,
    /// The stored JSON of the version, `None` for a deletion.
    pub resource: Option<&'a [u8]>,
    pub method: &'static str,
    pub url: String,
    pub status: &'static str,
    pub etag: String,
    pub last_modified: String,
}

#[derive(Serialize)]
struct Request<'a> {
    method: &'a str,
    url: &'a str,
}

#[derive(Serialize)]
struct Response<'a> {
    status: &'a str,
    etag: &'a str,
    #[serde(rename = "lastModified")]
    last_modified: &'a str,
}

/// A `history` Bundle. `entries` hold JSON that the server itself produced (and authenticated).
pub fn history(total: Option<u64>, links: &[Link], entries: &[HistoryEntry<'_>]) -> Vec<u8> {
    let size: usize = entries.iter().map(|e| e.resource.map_or(0, <[u8]>::len) + 256).sum();
    let mut out = start("history", total, links, size);
    if !entries.is_empty() {
        out.extend_from_slice(br#","entry":["#);
        for (i, entry) in entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(br#"{"fullUrl":"#);
            write_json(&mut out, &entry.full_url);
            if let Some(resource) = entry.resource {
                out.extend_from_slice(br#","resource":"#);
                out.extend_from_slice(resource);
            }
            out.extend_from_slice(br#","request":"#);
            write_json(&mut out, &Request { method: entry.method, url: &entry.url });
            out.extend_from_slice(br#","response":"#);
            let response = Response { status: entry.status, etag: &entry.etag, last_modified: &entry.last_modified };
            write_json(&mut out, &response);
            out.push(b'}');
        }
        out.push(b']');
    }
    out.push(b'}');
    out
}

/// One entry of a `searchset` bundle.
#[derive(Debug)]
pub struct SearchEntry<'a> {
    pub full_url: String,
    /// The stored JSON of the current version.
    pub resource: &'a [u8],
    /// `match` for what the query matched, `include` for what `_include` added.
    pub mode: &'static str,
}

/// A `searchset` Bundle. `entries` hold JSON that the server itself produced (and authenticated).
pub fn searchset(total: Option<u64>, links: &[Link], entries: &[SearchEntry<'_>]) -> Vec<u8> {
    let size: usize = entries.iter().map(|e| e.resource.len() + 128).sum();
    let mut out = start("searchset", total, links, size);
    if !entries.is_empty() {
        out.extend_from_slice(br#","entry":["#);
        for (i, entry) in entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(br#"{"fullUrl":"#);
            write_json(&mut out, &entry.full_url);
            out.extend_from_slice(br#","resource":"#);
            out.extend_from_slice(entry.resource);
            out.extend_from_slice(br#","search":{"mode":"#);
            write_json(&mut out, entry.mode);
            out.extend_from_slice(b"}}");
        }
        out.push(b']');
    }
    out.push(b'}');
    out
}

/// One entry of a `transaction-response` or `batch-response` bundle.
#[derive(Debug, Default)]
pub struct ResponseEntry {
    pub full_url: Option<String>,
    /// JSON the server itself produced: a stored resource, or a searchset Bundle.
    pub resource: Option<Vec<u8>>,
    /// `201 Created`, `404 Not Found`...
    pub status: String,
    pub location: Option<String>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// An OperationOutcome the server produced.
    pub outcome: Option<Vec<u8>>,
}

#[derive(Serialize)]
struct EntryResponse<'a> {
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<&'a str>,
    #[serde(rename = "lastModified", skip_serializing_if = "Option::is_none")]
    last_modified: Option<&'a str>,
}

/// A `transaction-response` or `batch-response` Bundle, its entries in the request's order.
pub fn response(kind: &str, entries: &[ResponseEntry]) -> Vec<u8> {
    let size: usize = entries.iter().map(|e| e.resource.as_ref().map_or(0, Vec::len) + 256).sum();
    let mut out = start(kind, None, &[], size);
    out.extend_from_slice(br#","entry":["#);
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'{');
        if let Some(full_url) = &entry.full_url {
            out.extend_from_slice(br#""fullUrl":"#);
            write_json(&mut out, full_url);
            out.push(b',');
        }
        if let Some(resource) = &entry.resource {
            out.extend_from_slice(br#""resource":"#);
            out.extend_from_slice(resource);
            out.push(b',');
        }
        out.extend_from_slice(br#""response":"#);
        let response = EntryResponse {
            status: &entry.status,
            location: entry.location.as_deref(),
            etag: entry.etag.as_deref(),
            last_modified: entry.last_modified.as_deref(),
        };
        let mut response = serde_json::to_vec(&response).unwrap_or_else(|_| b"{}".to_vec());
        if let Some(outcome) = &entry.outcome {
            response.pop();
            response.extend_from_slice(br#","outcome":"#);
            response.extend_from_slice(outcome);
            response.push(b'}');
        }
        out.extend_from_slice(&response);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// A bundle's opening: type, total and links (the caller adds entries and the closing brace).
fn start(kind: &str, total: Option<u64>, links: &[Link], entries_size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries_size + 256);
    out.extend_from_slice(br#"{"resourceType":"Bundle","type":"#);
    write_json(&mut out, kind);
    if let Some(total) = total {
        out.extend_from_slice(format!(r#","total":{total}"#).as_bytes());
    }
    if !links.is_empty() {
        out.extend_from_slice(br#","link":"#);
        write_json(&mut out, &links);
    }
    out
}

fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // INVARIANT: strings and plain structs serialize into a Vec without error.
    let _ = serde_json::to_writer(out, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::{json, model, validate};

    #[test]
    fn a_history_bundle_is_valid_fhir() {
        let resource = br#"{"resourceType":"Patient","id":"a","meta":{"versionId":"1"}}"#;
        let entries = [
            HistoryEntry {
                full_url: "http://h/fhir/demo/Patient/a".into(),
                resource: None,
                method: "DELETE",
                url: "Patient/a".into(),
                status: "204 No Content",
                etag: "W/\"2\"".into(),
                last_modified: "2024-01-01T00:00:00.000Z".into(),
            },
            HistoryEntry {
                full_url: "http://h/fhir/demo/Patient/a".into(),
                resource: Some(resource),
                method: "POST",
                url: "Patient".into(),
                status: "201 Created",
                etag: "W/\"1\"".into(),
                last_modified: "2024-01-01T00:00:00.000Z".into(),
            },
        ];
        let links = [Link { relation: "self", url: "http://h/fhir/demo/Patient/a/_history".into() }];
        let bytes = history(Some(2), &links, &entries);
        let map = json::parse_object(&bytes).unwrap();
        assert_eq!(validate::validate(model::r4().unwrap(), "Bundle", &map), vec![]);
        assert_eq!(map["entry"][1]["resource"]["id"], "a");
    }

    #[test]
    fn a_searchset_bundle_is_valid_fhir() {
        let resource = br#"{"resourceType":"Patient","id":"a","meta":{"versionId":"1"}}"#;
        let entries = [SearchEntry { full_url: "http://h/fhir/demo/Patient/a".into(), resource, mode: "match" }];
        let links = [
            Link { relation: "self", url: "http://h/fhir/demo/Patient?family=x".into() },
            Link { relation: "next", url: "http://h/fhir/demo/Patient?family=x&_cursor=abc".into() },
        ];
        let bytes = searchset(Some(7), &links, &entries);
        let map = json::parse_object(&bytes).unwrap();
        assert_eq!(validate::validate(model::r4().unwrap(), "Bundle", &map), vec![]);
        assert_eq!((map["type"].as_str(), map["total"].as_u64()), (Some("searchset"), Some(7)));
        assert_eq!(map["entry"][0]["search"]["mode"], "match");
        let empty = json::parse_object(&searchset(Some(0), &links[..1], &[])).unwrap();
        assert_eq!(validate::validate(model::r4().unwrap(), "Bundle", &empty), vec![]);
    }
}
