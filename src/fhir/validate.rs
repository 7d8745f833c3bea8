//! Structural validation of R4 resources against the compiled model.
//!
//! Checks: unknown elements, JSON types, cardinality (arrays vs single values, mandatory
//! elements, one choice at a time), primitive formats (the spec's regexes plus calendar validity,
//! integer ranges), codes of required bindings, and FHIR's JSON rules (no empty objects, no empty
//! arrays, `null` only inside arrays of primitives). Invariants written in FHIRPath are not run.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::model::{ElementDef, ElementKind, Model, Primitive, TypeDef};

/// Stop collecting after this many issues: the client has enough to fix.
const MAX_ISSUES: usize = 50;

/// One validation failure, located with a FHIRPath-like expression (`Patient.name[0].given[1]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub kind: IssueKind,
    pub expression: String,
    pub message: String,
}

/// The OperationOutcome issue type each failure maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueKind {
    /// Unknown element, wrong JSON shape, wrong cardinality.
    Structure,
    /// A mandatory element is missing.
    Required,
    /// A primitive is malformed or a code is outside its required value set.
    Value,
}

/// Validate `resource` as an instance of the resource type `resource_type`.
pub fn validate(model: &Model, resource_type: &str, resource: &Map<String, Value>) -> Vec<Issue> {
    let mut walker = Walker { model, issues: Vec::new() };
    let mut path = resource_type.to_owned();
    match model.type_def(resource_type) {
        Some(ty) => walker.check_resource(ty, resource, &mut path, false),
        None => walker.issue(&path, format!("`{resource_type}` is not an R4 resource type")),
    }
    walker.issues
}

struct Walker<'m> {
    model: &'m Model,
    issues: Vec<Issue>,
}

impl Walker<'_> {
    fn issue(&mut self, path: &str, message: String) {
        self.issue_of(IssueKind::Structure, path, message);
    }

    fn issue_of(&mut self, kind: IssueKind, path: &str, message: String) {
        if self.issues.len() < MAX_ISSUES {
            self.issues.push(Issue { kind, expression: path.to_owned(), message });
        }
    }

    fn full(&self) -> bool {
        self.issues.len() >= MAX_ISSUES
    }

    fn check_resource(&mut self, ty: &TypeDef, map: &Map<String, Value>, path: &mut String, contained: bool) {
        match map.get("resourceType") {
            Some(Value::String(rt)) if **rt == *ty.name => {}
            Some(other) => {
                let message = format!("`resourceType` must be `{}`, found {}", ty.name, short(other));
                self.issue(path, message);
            }
            None => self.issue(path, "missing `resourceType`".to_owned()),
        }
        if contained && map.contains_key("contained") {
            self.issue(path, "a contained resource cannot contain other resources".to_owned());
        }
        self.check_object(ty, map, path, true);
    }

    fn check_object(&mut self, ty: &TypeDef, map: &Map<String, Value>, path: &mut String, resource: bool) {
        if map.is_empty() {
            self.issue(path, "an element must have a value or children: empty objects are not allowed".to_owned());
            return;
        }
        for (key, value) in map {
            if self.full() {
                return;
            }
            if resource && key == "resourceType" {
                continue;
            }
            let len = path.len();
            path.push('.');
            path.push_str(key);
            match ty.elements.get(key.as_str()) {
                Some(el) => self.check_element(el, key, value, path, key == "contained"),
                None => {
                    let message = if key.is_empty() {
                        "empty property names are not allowed".to_owned()
                    } else {
                        format!("unknown element `{key}` in `{}`", ty.name)
                    };
                    self.issue(path, message);
                }
            }
            path.truncate(len);
        }
        for alternatives in ty.required.iter() {
            if !alternatives.iter().any(|a| map.contains_key(&**a)) {
                let name = alternatives.first().map_or("", |s| &**s);
                self.issue_of(IssueKind::Required, path, format!("missing mandatory element `{name}`"));
            }
        }
        for choice in ty.choices.iter() {
            let present: Vec<&str> = choice.iter().filter(|c| map.contains_key(&***c)).map(|c| &**c).collect();
            if present.len() > 1 {
                self.issue(path, format!("only one of {} may be present", present.join(", ")));
            }
        }
    }

    fn check_element(&mut self, el: &ElementDef, key: &str, value: &Value, path: &mut String, contained: bool) {
        let primitive_like = matches!(el.kind, ElementKind::Primitive { .. }) || key.starts_with('_');
        match (el.array, value) {
            (true, Value::Array(items)) => {
                if items.is_empty() {
                    self.issue(path, "arrays must not be empty".to_owned());
                    return;
                }
                if items.iter().all(Value::is_null) {
                    self.issue(path, "an array cannot hold only nulls".to_owned());
                }
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    let _ = write!(path, "[{i}]");
                    if item.is_null() {
                        if !primitive_like {
                            self.issue(path, "null is only allowed in arrays of primitive values".to_owned());
                        }
                    } else {
                        self.check_value(el, item, path, contained);
                    }
                    path.truncate(len);
                }
            }
            (true, other) => self.issue(path, format!("must be an array, found {}", short(other))),
            (false, Value::Array(_)) => {
                self.issue(path, "must be a single value, not an array (cardinality 0..1)".to_owned());
            }
            (false, Value::Null) => self.issue(path, "null is not allowed here".to_owned()),
            (false, v) => self.check_value(el, v, path, contained),
        }
    }

    fn check_value(&mut self, el: &ElementDef, value: &Value, path: &mut String, contained: bool) {
        match &el.kind {
            ElementKind::Primitive { primitive, name, regex } => {
                if let Some(message) = check_primitive(*primitive, name, regex.as_deref(), value) {
                    self.issue_of(IssueKind::Value, path, message);
                    return;
                }
                if let (Some(vs), Value::String(code)) = (&el.value_set, value)
                    && !vs.codes.contains(code.as_str())
                {
                    let mut expected: Vec<&str> = vs.ordered.iter().take(12).map(|c| &**c).collect();
                    if vs.ordered.len() > 12 {
                        expected.push("...");
                    }
                    let message = format!(
                        "`{}` is not a code of the required value set `{}` (expected one of: {})",
                        truncate(code),
                        vs.name,
                        expected.join(", ")
                    );
                    self.issue_of(IssueKind::Value, path, message);
                }
            }
            ElementKind::Complex(index) => match (value, self.model.type_at(*index)) {
                (Value::Object(map), Some(ty)) => self.check_object(ty, map, path, false),
                (other, _) => self.issue(path, format!("must be an object, found {}", short(other))),
            },
            ElementKind::Resource => match value {
                Value::Object(map) => {
                    let rt = map.get("resourceType").and_then(Value::as_str).unwrap_or("");
                    let is_resource = crate::ids::ResourceType::parse(rt).is_ok();
                    match self.model.type_def(rt).filter(|_| is_resource) {
                        Some(ty) => self.check_resource(ty, map, path, contained),
                        None if rt.is_empty() => self.issue(path, "missing `resourceType`".to_owned()),
                        None => self.issue(path, format!("`{}` is not an R4 resource type", truncate(rt))),
                    }
                }
                other => self.issue(path, format!("must be a resource object, found {}", short(other))),
            },
        }
    }
}

fn check_primitive(primitive: Primitive, name: &str, regex: Option<&regex::Regex>, value: &Value) -> Option<String> {
    match primitive {
        Primitive::Boolean => (!value.is_boolean()).then(|| format!("must be a JSON boolean, found {}", short(value))),
        Primitive::Integer | Primitive::PositiveInt | Primitive::UnsignedInt => {
            let Value::Number(n) = value else {
                return Some(format!("must be a JSON number ({name}), found {}", short(value)));
            };
            let Some(i) = n.as_i64().filter(|i| i32::try_from(*i).is_ok()) else {
                return Some(format!("`{n}` is not a 32-bit integer ({name})"));
            };
            match primitive {
                Primitive::PositiveInt if i < 1 => Some(format!("`{n}` must be at least 1 (positiveInt)")),
                Primitive::UnsignedInt if i < 0 => Some(format!("`{n}` must not be negative (unsignedInt)")),
                _ => None,
            }
        }
        Primitive::Decimal => {
            let Value::Number(n) = value else {
                return Some(format!("must be a JSON number (decimal), found {}", short(value)));
            };
            let text = n.to_string();
            match regex {
                Some(re) if !re.is_match(&text) => Some(format!("`{text}` is not a valid decimal")),
                _ => None,
            }
        }
        Primitive::Xhtml => match value {
            Value::String(s) if s.trim_start().starts_with("<div") => None,
            Value::String(_) => Some("narrative must be an XHTML `<div>` element".to_owned()),
            other => Some(format!("must be a JSON string (xhtml), found {}", short(other))),
        },
        _ => {
            let Value::String(s) = value else {
                return Some(format!("must be a JSON string ({name}), found {}", short(value)));
            };
            if let Some(re) = regex
                && !re.is_match(s)
            {
                return Some(format!("`{}` is not a valid {name}", truncate(s)));
            }
            match primitive {
                Primitive::Date | Primitive::DateTime | Primitive::Instant if !calendar_ok(s) => {
                    Some(format!("`{}` is not a calendar date", truncate(s)))
                }
                _ => None,
            }
        }
    }
}

/// The regexes accept 2023-02-31; FHIR says dates SHALL be valid dates.
fn calendar_ok(s: &str) -> bool {
    let digits = |r: std::ops::Range<usize>| s.get(r).and_then(|p| p.parse::<u32>().ok());
    let (Some(year), Some(month), Some(day)) = (digits(0..4), digits(5..7), digits(8..10)) else {
        return true; // A partial date (year or year-month) has no day to check.
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    (1..=days).contains(&day)
}

fn short(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// User input echoed in messages is cut short: an OperationOutcome is not a mirror.
fn truncate(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX { s.to_owned() } else { format!("{}...", s.chars().take(MAX).collect::<String>()) }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fhir::model;

    fn check(resource: &Value) -> Vec<Issue> {
        let map = resource.as_object().unwrap().clone();
        let rt = map["resourceType"].as_str().unwrap().to_owned();
        validate(model::r4().unwrap(), &rt, &map)
    }

    #[test]
    fn accepts_a_rich_patient() {
        let issues = check(&json!({
            "resourceType": "Patient",
            "id": "p1",
            "meta": {"profile": ["http://example.org/p"]},
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
            "extension": [{"url": "http://example.org/ext", "valueString": "v"}],
            "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
            "active": true,
            "name": [{"family": "Chalmers", "given": ["Peter", null], "_given": [null, {"extension": [{"url": "http://e", "valueCode": "x"}]}]}],
            "gender": "male",
            "birthDate": "1974-12-25",
            "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
            "deceasedBoolean": false,
            "multipleBirthInteger": 2,
            "contact": [{"gender": "female", "period": {"start": "2012"}}]
        }));
        assert!(issues.is_empty(), "{issues:?}");
    }

    #[test]
    fn rejects_each_kind_of_error_with_a_located_message() {
        let cases: &[(Value, &str, &str)] = &[
            (json!({"resourceType": "Patient", "gender": "robot"}), "Patient.gender", "required value set"),
            (json!({"resourceType": "Patient", "colour": "blue"}), "Patient.colour", "unknown element"),
            (json!({"resourceType": "Patient", "active": "yes"}), "Patient.active", "boolean"),
            (json!({"resourceType": "Patient", "birthDate": "25/12/1974"}), "Patient.birthDate", "valid date"),
            (json!({"resourceType": "Patient", "birthDate": "2023-02-30"}), "Patient.birthDate", "calendar"),
            (json!({"resourceType": "Patient", "name": {"family": "x"}}), "Patient.name", "array"),
            (json!({"resourceType": "Patient", "name": []}), "Patient.name", "empty"),
            (json!({"resourceType": "Patient", "gender": ["male"]}), "Patient.gender", "single value"),
            (
                json!({"resourceType": "Patient", "multipleBirthInteger": 1.5}),
                "Patient.multipleBirthInteger",
                "integer",
            ),
            (
                json!({"resourceType": "Patient", "deceasedBoolean": true, "deceasedDateTime": "2020"}),
                "Patient",
                "only one of",
            ),
            (json!({"resourceType": "Patient", "contact": [{}]}), "Patient.contact[0]", "empty objects"),
            (json!({"resourceType": "Patient", "active": null}), "Patient.active", "null"),
            (json!({"resourceType": "Observation", "code": {"text": "x"}}), "Observation", "`status`"),
            (json!({"resourceType": "Patient", "id": "a_b"}), "Patient.id", "valid id"),
            (
                json!({"resourceType": "Patient", "contained": [{"resourceType": "Robot"}]}),
                "Patient.contained[0]",
                "not an R4 resource type",
            ),
        ];
        for (resource, expression, fragment) in cases {
            let issues = check(resource);
            assert!(
                issues.iter().any(|i| i.expression == *expression && i.message.contains(fragment)),
                "{resource}: expected an issue at {expression} containing {fragment:?}, got {issues:?}"
            );
        }
    }

    #[test]
    fn decimals_keep_their_text() {
        let issues = check(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "valueQuantity": {"value": 1.50, "unit": "mg"}}));
        assert!(issues.is_empty(), "{issues:?}");
    }
}
