//! The values a resource has for each of its type's search parameters.
//!
//! Every parameter of the R4 table (`fhir::search_params`) names element paths; this walks them
//! through the resource's JSON (arrays at any step) and reads each element found according to
//! the parameter's type and the element's shape: a token from a `code`, `Coding`,
//! `CodeableConcept`, `Identifier`, `ContactPoint` or `boolean`; strings from a `string`,
//! `HumanName` or `Address`; a date range from a `date`, `dateTime`, `instant`, `Period` or
//! `Timing`; and so on. `_id` and `_lastUpdated` are not extracted: the index has them as columns.

use serde_json::{Map, Value};

use super::ranges::{DateRange, date_range};
use crate::fhir::search_params::{ElementPath, ParamType, STRING_PARTS, SearchParam, SearchParams};

/// One value of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Extracted<'a> {
    Token {
        system: Option<&'a str>,
        code: &'a str,
    },
    String(&'a str),
    /// A string read from a part of a complex element (`family` of a `HumanName`).
    Part {
        part: &'static str,
        value: &'a str,
    },
    Uri(&'a str),
    Date(DateRange),
    Number(f64),
    Quantity {
        value: f64,
        system: Option<&'a str>,
        code: Option<&'a str>,
        unit: Option<&'a str>,
    },
    Reference(RefValue<'a>),
}

/// What a `Reference` (or a canonical) points at.
#[derive(Debug, Clone, PartialEq)]
pub enum RefValue<'a> {
    /// `Type/id` (relative, or absolute under this server's base, or with `_history`).
    Local { resource_type: &'a str, id: &'a str },
    /// Any other URL, canonical or absolute (matched as a whole).
    Url(&'a str),
    /// `Reference.identifier`, for the `:identifier` modifier.
    Identifier { system: Option<&'a str>, value: &'a str },
}

/// The parameters of `resource_type` that `body` has values for: `(parameter, values)`.
pub fn extract<'a>(
    params: &'a SearchParams,
    resource_type: &str,
    body: &'a Map<String, Value>,
    base_url: &str,
) -> Vec<(&'a SearchParam, Vec<Extracted<'a>>)> {
    let mut out = Vec::new();
    for param in params.for_type(resource_type) {
        if matches!(param.code.as_ref(), "_id" | "_lastUpdated") {
            continue;
        }
        let mut values = Vec::new();
        for path in param.paths.iter() {
            let mut elements = Vec::new();
            walk(body, path, 0, &mut elements);
            for element in elements {
                read(param.kind, element, path, base_url, &mut values);
            }
        }
        if !values.is_empty() {
            out.push((param, values));
        }
    }
    out
}

/// Collect the elements at `path.steps[at..]` below `node`, applying the path's filter.
fn walk<'a>(node: &'a Map<String, Value>, path: &ElementPath, at: usize, out: &mut Vec<&'a Value>) {
    if let Some((name, value)) = path.filter.as_ref().filter(|_| at == path.filter_at && at > 0)
        && node.get(name.as_ref()).and_then(Value::as_str) != Some(value.as_ref())
    {
        return;
    }
    let Some(step) = path.steps.get(at) else { return };
    let Some(child) = node.get(step.as_ref()) else { return };
    let items: &[Value] = match child {
        Value::Array(items) => items,
        single => std::slice::from_ref(single),
    };
    let last = at + 1 == path.steps.len();
    for item in items {
        match (last, item) {
            (true, Value::Object(map)) if path.filter_at == path.steps.len() && path.filter.is_some() => {
                if let Some((name, value)) = &path.filter
                    && map.get(name.as_ref()).and_then(Value::as_str) == Some(value.as_ref())
                {
                    out.push(item);
                }
            }
            (true, _) => out.push(item),
            (false, Value::Object(map)) => walk(map, path, at + 1, out),
            (false, _) => {}
        }
    }
}

fn read<'a>(kind: ParamType, element: &'a Value, path: &ElementPath, base_url: &str, out: &mut Vec<Extracted<'a>>) {
    match kind {
        ParamType::Token => token(element, out),
        ParamType::String => strings(element, out),
        ParamType::Uri => {
            if let Some(s) = element.as_str() {
                out.push(Extracted::Uri(s));
            }
        }
        ParamType::Date => date(element, out),
        ParamType::Number => {
            if let Some(n) = element.as_f64() {
                out.push(Extracted::Number(n));
            }
        }
        ParamType::Quantity => quantity(element, out),
        ParamType::Reference => reference(element, path, base_url, out),
    }
}

fn token<'a>(element: &'a Value, out: &mut Vec<Extracted<'a>>) {
    let text = |map: &'a Map<String, Value>, key: &str| map.get(key).and_then(Value::as_str);
    match element {
        Value::String(code) => out.push(Extracted::Token { system: None, code }),
        Value::Bool(b) => out.push(Extracted::Token { system: None, code: if *b { "true" } else { "false" } }),
        Value::Object(map) => {
            if let Some(Value::Array(codings)) = map.get("coding") {
                for coding in codings {
                    token(coding, out);
                }
            } else if let Some(code) = text(map, "code") {
                // Coding (and Quantity, whose `code` is its unit).
                out.push(Extracted::Token { system: text(map, "system"), code });
            } else if let Some(value) = text(map, "value") {
                // Identifier, ContactPoint.
                out.push(Extracted::Token { system: text(map, "system"), code: value });
            }
        }
        _ => {}
    }
}

fn strings<'a>(element: &'a Value, out: &mut Vec<Extracted<'a>>) {
    match element {
        Value::String(s) => out.push(Extracted::String(s)),
        Value::Object(map) => {
            // HumanName, Address, and the text of anything else that has one.
            for part in STRING_PARTS {
                match map.get(part) {
                    Some(Value::String(value)) => out.push(Extracted::Part { part, value }),
                    Some(Value::Array(items)) => {
                        out.extend(items.iter().filter_map(Value::as_str).map(|value| Extracted::Part { part, value }))
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

fn date<'a>(element: &'a Value, out: &mut Vec<Extracted<'a>>) {
    match element {
        Value::String(s) => out.extend(date_range(s).map(Extracted::Date)),
        Value::Object(map) if map.contains_key("start") || map.contains_key("end") => {
            // Period: an open end is unbounded on that side.
            let start = map.get("start").and_then(Value::as_str).and_then(date_range);
            let end = map.get("end").and_then(Value::as_str).and_then(date_range);
            out.push(Extracted::Date(DateRange {
                lo: start.map_or(DateRange::ALL.lo, |r| r.lo),
                hi: end.map_or(DateRange::ALL.hi, |r| r.hi),
            }));
        }
        Value::Object(map) => {
            // Timing: its events.
            if let Some(Value::Array(events)) = map.get("event") {
                out.extend(events.iter().filter_map(Value::as_str).filter_map(date_range).map(Extracted::Date));
            }
        }
        _ => {}
    }
}

fn quantity<'a>(element: &'a Value, out: &mut Vec<Extracted<'a>>) {
    let Value::Object(map) = element else { return };
    let Some(value) = map.get("value").and_then(Value::as_f64) else { return };
    let text = |key: &str| map.get(key).and_then(Value::as_str);
    out.push(Extracted::Quantity { value, system: text("system"), code: text("code"), unit: text("unit") });
}

fn reference<'a>(element: &'a Value, path: &ElementPath, base_url: &str, out: &mut Vec<Extracted<'a>>) {
    match element {
        // A canonical or uri parameter of type reference.
        Value::String(url) => out.push(Extracted::Reference(RefValue::Url(url))),
        Value::Object(map) => {
            if let Some(target) = map.get("reference").and_then(Value::as_str) {
                match parse_reference(target, base_url) {
                    Some(RefValue::Local { resource_type, id })
                        if path.resolves.as_deref().is_none_or(|only| only == resource_type) =>
                    {
                        out.push(Extracted::Reference(RefValue::Local { resource_type, id }));
                    }
                    Some(other) if path.resolves.is_none() => out.push(Extracted::Reference(other)),
                    _ => {}
                }
            }
            if let Some(Value::Object(identifier)) = map.get("identifier")
                && let Some(value) = identifier.get("value").and_then(Value::as_str)
            {
                let system = identifier.get("system").and_then(Value::as_str);
                out.push(Extracted::Reference(RefValue::Identifier { system, value }));
            }
        }
        _ => {}
    }
}

/// Read a reference string: `Type/id[/_history/v]`, the same under `base_url`, or another URL.
/// Contained (`#id`) and unresolved `urn:` references point at nothing searchable.
pub fn parse_reference<'a>(target: &'a str, base_url: &str) -> Option<RefValue<'a>> {
    if target.starts_with('#') || target.starts_with("urn:") {
        return None;
    }
    let local = target
        .strip_prefix(base_url)
        .and_then(|rest| rest.strip_prefix('/'))
        .or_else(|| (!target.contains("://")).then_some(target));
    let Some(local) = local else { return Some(RefValue::Url(target)) };
    let local = local.split("/_history/").next().unwrap_or(local);
    let (resource_type, id) = local.split_once('/')?;
    let type_ok = resource_type.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && resource_type.chars().all(|c| c.is_ascii_alphanumeric());
    let id_ok = crate::ids::ResourceId::parse(id).is_ok();
    (type_ok && id_ok).then_some(RefValue::Local { resource_type, id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::search_params;

    fn values<'a>(body: &'a Map<String, Value>, rt: &str, code: &str) -> Vec<Extracted<'a>> {
        let params = search_params::r4().unwrap();
        extract(params, rt, body, "https://h/fhir/demo")
            .into_iter()
            .find(|(p, _)| p.code.as_ref() == code)
            .map(|(_, v)| v)
            .unwrap_or_default()
    }

    fn json(s: &str) -> Map<String, Value> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn tokens_come_from_every_shape() {
        let body = json(
            r#"{"resourceType":"Patient","gender":"female","active":true,
                "identifier":[{"system":"urn:mrn","value":"123"},{"value":"x"}],
                "telecom":[{"system":"email","value":"a@b.c"},{"system":"phone","value":"555"}],
                "maritalStatus":{"coding":[{"system":"http://s","code":"M"},{"code":"W"}],"text":"Married"}}"#,
        );
        assert_eq!(values(&body, "Patient", "gender"), [Extracted::Token { system: None, code: "female" }]);
        assert_eq!(values(&body, "Patient", "active"), [Extracted::Token { system: None, code: "true" }]);
        assert_eq!(
            values(&body, "Patient", "identifier"),
            [Extracted::Token { system: Some("urn:mrn"), code: "123" }, Extracted::Token { system: None, code: "x" }]
        );
        // `email` is `telecom.where(system='email')`.
        assert_eq!(values(&body, "Patient", "email"), [Extracted::Token { system: Some("email"), code: "a@b.c" }]);
        assert_eq!(values(&body, "Patient", "telecom").len(), 2);
    }

    #[test]
    fn names_addresses_dates_quantities_and_references() {
        let body = json(
            r##"{"resourceType":"Patient","birthDate":"1970-03",
                "name":[{"family":"Müller","given":["Anna","Lena"],"text":"Anna Müller"}],
                "address":[{"line":["1 Rue X"],"city":"Lyon","postalCode":"69001"}],
                "generalPractitioner":[{"reference":"Practitioner/p1"},
                   {"reference":"https://h/fhir/demo/Organization/o1/_history/2"},
                   {"reference":"https://elsewhere/Practitioner/9"},{"reference":"#c1"},
                   {"identifier":{"system":"urn:npi","value":"77"}}]}"##,
        );
        assert_eq!(values(&body, "Patient", "family"), [Extracted::String("Müller")]);
        assert_eq!(values(&body, "Patient", "given"), [Extracted::String("Anna"), Extracted::String("Lena")]);
        assert_eq!(values(&body, "Patient", "name").len(), 4);
        assert!(values(&body, "Patient", "address").contains(&Extracted::Part { part: "city", value: "Lyon" }));
        assert_eq!(values(&body, "Patient", "address-postalcode"), [Extracted::String("69001")]);
        let Extracted::Date(range) = values(&body, "Patient", "birthdate")[0] else { panic!() };
        assert_eq!(range, date_range("1970-03").unwrap());
        assert_eq!(
            values(&body, "Patient", "general-practitioner"),
            [
                Extracted::Reference(RefValue::Local { resource_type: "Practitioner", id: "p1" }),
                Extracted::Reference(RefValue::Local { resource_type: "Organization", id: "o1" }),
                Extracted::Reference(RefValue::Url("https://elsewhere/Practitioner/9")),
                Extracted::Reference(RefValue::Identifier { system: Some("urn:npi"), value: "77" }),
            ]
        );

        let obs = json(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},
                "subject":{"reference":"Patient/p1"},"effectivePeriod":{"start":"2020-01-01"},
                "valueQuantity":{"value":7.5,"unit":"mmol/L","system":"http://unitsofmeasure.org","code":"mmol/L"}}"#,
        );
        assert_eq!(
            values(&obs, "Observation", "patient"),
            [Extracted::Reference(RefValue::Local { resource_type: "Patient", id: "p1" })]
        );
        let Extracted::Date(period) = values(&obs, "Observation", "date")[0] else { panic!() };
        assert_eq!((period.lo, period.hi), (date_range("2020-01-01").unwrap().lo, i64::MAX));
        assert_eq!(
            values(&obs, "Observation", "value-quantity"),
            [Extracted::Quantity {
                value: 7.5,
                system: Some("http://unitsofmeasure.org"),
                code: Some("mmol/L"),
                unit: Some("mmol/L")
            }]
        );
    }

    #[test]
    fn reference_strings() {
        let base = "https://h/fhir/demo";
        assert_eq!(
            parse_reference("Patient/1/_history/3", base),
            Some(RefValue::Local { resource_type: "Patient", id: "1" })
        );
        assert_eq!(parse_reference("urn:uuid:abc", base), None);
        assert_eq!(parse_reference("patient/1", base), None);
        assert_eq!(parse_reference("http://x/y", base), Some(RefValue::Url("http://x/y")));
    }
}
