//! The R4 search parameters, compiled once from `schemas/fhir-r4-search-params.json`.
//!
//! The JSON file is derived from HL7's own SearchParameter definitions by
//! `scripts/gen-search-params.py`: every parameter's FHIRPath expression is reduced there to
//! element paths. This module checks each path against the structural model (`model.rs`) and
//! expands choice elements named without their type (`Observation.effective` is
//! `effectiveDateTime`, `effectivePeriod`, ...), so a search never walks a path that no resource
//! can have.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

use super::model::{ElementKind, Model, TypeDef};

const SEARCH_PARAMS_JSON: &str = include_str!("../../schemas/fhir-r4-search-params.json");

/// The base named by parameters every resource type has (`_id`, `_lastUpdated`, ...).
const EVERY_RESOURCE: &str = "Resource";

/// What a string parameter reads of a complex element (a `HumanName`, an `Address`, the text of
/// anything else that has one): these children, strings or arrays of strings.
pub const STRING_PARTS: [&str; 13] = [
    "family",
    "given",
    "prefix",
    "suffix",
    "text",
    "line",
    "city",
    "district",
    "state",
    "postalCode",
    "country",
    "display",
    "value",
];

/// The compiled table could not be built (a broken build, never user input).
#[derive(Debug, thiserror::Error)]
pub enum SearchParamError {
    #[error("the embedded search parameter table does not parse")]
    Parse(#[from] serde_json::Error),
    #[error("the embedded FHIR model is broken")]
    Model(#[source] &'static super::model::ModelError),
    #[error("search parameter `{base}.{code}`: `{path}` is not an element of `{base}`")]
    UnknownElement { base: String, code: String, path: String },
    #[error("search parameter `{base}.{code}` has unknown type `{kind}`")]
    UnknownType { base: String, code: String, kind: String },
}

/// The process-wide table, built on first use from the embedded file and the R4 model.
pub fn r4() -> Result<&'static SearchParams, &'static SearchParamError> {
    static TABLE: OnceLock<Result<SearchParams, SearchParamError>> = OnceLock::new();
    TABLE.get_or_init(|| SearchParams::compile(super::model::r4().map_err(SearchParamError::Model)?)).as_ref()
}

/// FHIR search parameter types this server can index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Quantity,
    Uri,
}

impl ParamType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "number" => Self::Number,
            "date" => Self::Date,
            "string" => Self::String,
            "token" => Self::Token,
            "reference" => Self::Reference,
            "quantity" => Self::Quantity,
            "uri" => Self::Uri,
            _ => return None,
        })
    }
}

/// Where a parameter's values sit in a resource: JSON property names from the resource root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementPath {
    pub steps: Box<[Box<str>]>,
    /// Only elements whose child `.0` equals `.1` (`telecom` where `system` is `email`); the
    /// filter applies at the element the `filter_at` step reaches.
    pub filter: Option<(Box<str>, Box<str>)>,
    pub filter_at: usize,
    /// Only references to this resource type (`subject` where it resolves to a `Patient`).
    pub resolves: Option<Box<str>>,
}

#[derive(Debug, Clone)]
pub struct SearchParam {
    pub code: Box<str>,
    pub kind: ParamType,
    /// Alternatives: a value at any of these paths matches.
    pub paths: Box<[ElementPath]>,
    /// For references: the resource types the parameter may point at.
    pub targets: Box<[Box<str>]>,
    /// The parameter whose blind-index tokens answer this one: its own code, or for a token,
    /// string or uri parameter with the very paths of another of its type (`phonetic` and `name`),
    /// the smallest such code: the values are indexed once.
    pub indexed_as: Box<str>,
    /// For a string parameter: the parts of its values that another parameter of its type
    /// indexes on its own (`name`'s `family` is `family`).
    /// The part's values are indexed once, under the narrower parameter; a query of this one
    /// meets them there too.
    pub parts: Box<[StringPart]>,
    /// A string parameter whose every value is a part of another's (`family` of `name`): its
    /// tokens are written when that one is indexed.
    pub within: bool,
}

/// A part of a string parameter's values that a narrower parameter indexes (`family` of `name`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StringPart {
    /// The element's child (`family`, `city`; one of `STRING_PARTS`).
    pub part: Box<str>,
    /// The narrower parameter's `indexed_as`, whose tokens hold this part's values.
    pub key: Box<str>,
}

#[derive(Debug)]
pub struct SearchParams {
    by_type: HashMap<Box<str>, HashMap<Box<str>, SearchParam>>,
    /// Compartment type, then member resource type: the reference parameters that make a
    /// resource a member (R4 CompartmentDefinitions; the focal resource itself is not listed).
    compartments: HashMap<Box<str>, Compartment>,
}

/// One compartment's definition: member resource type, then the parameters that make it one.
type Compartment = HashMap<Box<str>, Box<[Box<str>]>>;

#[derive(Deserialize)]
struct RawTable {
    parameters: Vec<RawParam>,
    compartments: HashMap<String, HashMap<String, Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    base: String,
    code: String,
    #[serde(rename = "type")]
    kind: String,
    paths: Vec<RawPath>,
    #[serde(default)]
    targets: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPath {
    path: Vec<String>,
    #[serde(rename = "where")]
    filter: Option<(String, String)>,
    resolves: Option<String>,
    #[serde(default)]
    then: Vec<String>,
}

/// Token, string and uri parameters of one type with the same paths and kind have the same
/// values: each takes the tokens of the smallest code among them (`indexed_as`).
fn share_tokens(params: &mut HashMap<Box<str>, SearchParam>) {
    let blind = |p: &SearchParam| {
        matches!(p.kind, ParamType::Token | ParamType::String | ParamType::Uri) && !p.code.starts_with('_')
    };
    let shared: Vec<(Box<str>, Box<str>)> = params
        .values()
        .filter(|p| blind(p))
        .filter_map(|p| {
            let first = params
                .values()
                .filter(|q| blind(q) && q.kind == p.kind && q.paths == p.paths)
                .map(|q| &q.code)
                .min()?;
            (first != &p.code).then(|| (p.code.clone(), first.clone()))
        })
        .collect();
    for (code, first) in shared {
        if let Some(p) = params.get_mut(&code) {
            p.indexed_as = first;
        }
    }
}

/// The part `b` reads of each value of `a`, when `b`'s paths are `a`'s plus that one part:
/// `name.family` of `name`, `address.city` of `address`.
fn part_of<'a>(b: &'a SearchParam, a: &SearchParam) -> Option<&'a str> {
    if a.kind != ParamType::String || b.kind != ParamType::String || a.paths.len() != b.paths.len() {
        return None;
    }
    let mut part = None;
    for (pa, pb) in a.paths.iter().zip(b.paths.iter()) {
        let (last, head) = pb.steps.split_last()?;
        let plain = pa.filter.is_none() && pb.filter.is_none();
        if !plain || head != &*pa.steps || !STRING_PARTS.contains(&last.as_ref()) || *part.get_or_insert(last) != last {
            return None;
        }
    }
    part.map(AsRef::as_ref)
}

/// String parameters whose values are parts of another's (`family`, `given` of `name`;
/// `address-city` of `address`): index those values once (`parts`, `within`).
fn share_parts(params: &mut HashMap<Box<str>, SearchParam>) {
    let mut parts: Vec<(Box<str>, StringPart)> = Vec::new();
    let mut within: Vec<Box<str>> = Vec::new();
    for a in params.values() {
        for b in params.values() {
            if let Some(part) = part_of(b, a) {
                parts.push((a.code.clone(), StringPart { part: part.into(), key: b.indexed_as.clone() }));
                if a.indexed_as == a.code {
                    within.push(b.code.clone());
                }
            }
        }
    }
    parts.sort();
    for (code, part) in parts {
        if let Some(p) = params.get_mut(&code) {
            p.parts = p.parts.iter().cloned().chain([part]).collect();
        }
    }
    for code in within {
        if let Some(p) = params.get_mut(&code) {
            p.within = true;
        }
    }
}

impl SearchParams {
    fn compile(model: &Model) -> Result<Self, SearchParamError> {
        let raw: RawTable = serde_json::from_str(SEARCH_PARAMS_JSON)?;
        let mut by_type: HashMap<Box<str>, HashMap<Box<str>, SearchParam>> = HashMap::new();
        // Parameters of every resource resolve against any resource's definition.
        let any_resource = model.resource_names().next().unwrap_or("Patient");
        for p in raw.parameters {
            let unknown = |path: &str| SearchParamError::UnknownElement {
                base: p.base.clone(),
                code: p.code.clone(),
                path: path.to_owned(),
            };
            let kind = ParamType::parse(&p.kind).ok_or_else(|| SearchParamError::UnknownType {
                base: p.base.clone(),
                code: p.code.clone(),
                kind: p.kind.clone(),
            })?;
            let root_name = if p.base == EVERY_RESOURCE { any_resource } else { p.base.as_str() };
            let root = model.type_def(root_name).ok_or_else(|| unknown(root_name))?;
            let mut paths = Vec::new();
            for raw_path in &p.paths {
                let steps: Vec<&str> = raw_path.path.iter().chain(&raw_path.then).map(String::as_str).collect();
                let expanded = expand(model, root, &steps);
                if expanded.is_empty() {
                    return Err(unknown(&steps.join(".")));
                }
                let filter_at = raw_path.path.len();
                for steps in expanded {
                    paths.push(ElementPath {
                        steps: steps.into_iter().map(Into::into).collect(),
                        filter: raw_path.filter.as_ref().map(|(k, v)| (k.as_str().into(), v.as_str().into())),
                        filter_at,
                        resolves: raw_path.resolves.as_deref().map(Into::into),
                    });
                }
            }
            let param = SearchParam {
                code: p.code.as_str().into(),
                kind,
                paths: paths.into(),
                targets: p.targets.iter().map(|t| t.as_str().into()).collect(),
                indexed_as: p.code.as_str().into(),
                parts: Box::new([]),
                within: false,
            };
            by_type.entry(p.base.into()).or_default().insert(p.code.into(), param);
        }
        for params in by_type.values_mut() {
            share_tokens(params);
            share_parts(params);
        }
        let compartments = raw
            .compartments
            .into_iter()
            .map(|(compartment, members)| {
                let members = members
                    .into_iter()
                    .map(|(rt, params)| (rt.into(), params.into_iter().map(Into::into).collect()))
                    .collect();
                (compartment.into(), members)
            })
            .collect();
        Ok(Self { by_type, compartments })
    }

    /// The parameters through which a `resource_type` is in a `compartment` (`Patient`,
    /// `Encounter`, ...); `None` if that type cannot be in it.
    pub fn compartment_params(&self, compartment: &str, resource_type: &str) -> Option<&[Box<str>]> {
        self.compartments.get(compartment)?.get(resource_type).map(AsRef::as_ref)
    }

    /// Every (resource type, parameter) through which a resource is in a `compartment`.
    pub fn compartment_members(&self, compartment: &str) -> impl Iterator<Item = (&str, &[Box<str>])> {
        self.compartments.get(compartment).into_iter().flatten().map(|(rt, params)| (rt.as_ref(), params.as_ref()))
    }

    /// The parameter `code` of `resource_type`, or the one every resource has.
    pub fn get(&self, resource_type: &str, code: &str) -> Option<&SearchParam> {
        self.by_type
            .get(resource_type)
            .and_then(|params| params.get(code))
            .or_else(|| self.by_type.get(EVERY_RESOURCE).and_then(|params| params.get(code)))
    }

    /// Every parameter `resource_type` supports, its own and the common ones, sorted by code.
    pub fn for_type(&self, resource_type: &str) -> Vec<&SearchParam> {
        let own = self.by_type.get(resource_type).into_iter().flat_map(HashMap::values);
        let common = self.by_type.get(EVERY_RESOURCE).into_iter().flat_map(HashMap::values);
        let mut all: Vec<&SearchParam> = own.chain(common).collect();
        all.sort_by(|a, b| a.code.cmp(&b.code));
        all.dedup_by(|a, b| a.code == b.code);
        all
    }
}

/// Every concrete property path `steps` names from `root`: a step that is a choice element
/// without its type (`effective`) branches into each typed variant (`effectiveDateTime`, ...).
/// Empty when some step is not an element.
fn expand(model: &Model, root: &TypeDef, steps: &[&str]) -> Vec<Vec<String>> {
    let Some((step, rest)) = steps.split_first() else { return vec![Vec::new()] };
    let variants: Vec<&str> = if root.elements.contains_key(*step) {
        vec![step]
    } else {
        root.choices
            .iter()
            .flat_map(|group| group.iter())
            .map(AsRef::as_ref)
            .filter(|name: &&str| {
                name.strip_prefix(step).and_then(|suffix| suffix.chars().next()).is_some_and(char::is_uppercase)
            })
            .collect()
    };
    let mut out = Vec::new();
    for variant in variants {
        let Some(element) = root.elements.get(variant) else { continue };
        let tails = match (&element.kind, rest.is_empty()) {
            (_, true) => vec![Vec::new()],
            (ElementKind::Complex(i), false) => match model.type_at(*i) {
                Some(next) => expand(model, next, rest),
                None => Vec::new(),
            },
            // A primitive or a contained resource has no child elements to walk into.
            (ElementKind::Primitive { .. } | ElementKind::Resource, false) => Vec::new(),
        };
        for tail in tails {
            let mut path = vec![variant.to_owned()];
            path.extend(tail);
            out.push(path);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(path: &ElementPath) -> Vec<&str> {
        path.steps.iter().map(AsRef::as_ref).collect()
    }

    #[test]
    fn compartment_members_are_reference_parameters_of_their_types() {
        let table = r4().unwrap();
        let observation = table.compartment_params("Patient", "Observation").unwrap();
        assert_eq!(observation.iter().map(AsRef::as_ref).collect::<Vec<&str>>(), ["subject", "performer"]);
        assert_eq!(table.compartment_members("Patient").count(), 66);
        assert!(table.compartment_params("Patient", "Organization").is_none());
        for compartment in ["Device", "Encounter", "Patient", "Practitioner", "RelatedPerson"] {
            for (rt, params) in table.compartment_members(compartment) {
                for code in params {
                    let param = table.get(rt, code).unwrap();
                    assert_eq!(param.kind, ParamType::Reference, "{compartment}: {rt}.{code}");
                }
            }
        }
    }

    #[test]
    fn parameters_with_the_same_values_share_their_tokens_and_only_those() {
        let table = r4().unwrap();
        let indexed_as = |rt: &str, code: &str| table.get(rt, code).unwrap().indexed_as.to_string();
        for rt in ["Patient", "Practitioner", "Person", "RelatedPerson"] {
            assert_eq!(indexed_as(rt, "phonetic"), "name");
            assert_eq!(indexed_as(rt, "name"), "name");
        }
        assert_eq!(indexed_as("CodeSystem", "url"), "system");
        assert_eq!(indexed_as("Patient", "family"), "family");
        assert_eq!(indexed_as("Patient", "address-city"), "address-city");
        // References keep their own rows: compartments and includes name them.
        assert_eq!(indexed_as("Coverage", "patient"), "patient");
        let shared = table.by_type.values().flat_map(HashMap::values).filter(|p| p.indexed_as != p.code).count();
        assert_eq!(shared, 6, "phonetic four times, CodeSystem url, CapabilityStatement version");
    }

    #[test]
    fn parts_of_names_and_addresses_are_indexed_once_under_the_narrower_parameter() {
        let table = r4().unwrap();
        let param = |rt: &str, code: &str| table.get(rt, code).unwrap();
        let parts = |rt: &str, code: &str| -> Vec<(String, String)> {
            param(rt, code).parts.iter().map(|p| (p.part.to_string(), p.key.to_string())).collect()
        };
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter().map(|(p, k)| ((*p).to_owned(), (*k).to_owned())).collect()
        };
        for rt in ["Patient", "Practitioner"] {
            assert_eq!(parts(rt, "name"), pairs(&[("family", "family"), ("given", "given")]));
            assert_eq!(parts(rt, "phonetic"), parts(rt, "name"), "phonetic queries meet name's tokens");
            assert_eq!(
                parts(rt, "address"),
                pairs(&[
                    ("city", "address-city"),
                    ("country", "address-country"),
                    ("postalCode", "address-postalcode"),
                    ("state", "address-state"),
                ])
            );
            for within in ["family", "given", "address-city", "address-state", "address-postalcode", "address-country"]
            {
                assert!(param(rt, within).within, "{rt} {within}");
            }
            assert!(!param(rt, "name").within && !param(rt, "address").within && !param(rt, "phonetic").within);
        }
        // Only string parameters of that exact shape (`Organization.name` also reads `alias`).
        let mut within: Vec<String> = table
            .by_type
            .iter()
            .flat_map(|(rt, params)| params.values().filter(|p| p.within).map(move |p| format!("{rt}.{}", p.code)))
            .collect();
        within.sort();
        let mut expected: Vec<String> = ["InsurancePlan", "Location", "Organization", "Patient", "Person"]
            .into_iter()
            .chain(["Practitioner", "RelatedPerson"])
            .flat_map(|rt| ["city", "country", "postalcode", "state"].map(|part| format!("{rt}.address-{part}")))
            .chain(
                ["Patient", "Practitioner"].into_iter().flat_map(|rt| [format!("{rt}.family"), format!("{rt}.given")]),
            )
            .collect();
        expected.sort();
        assert_eq!(within, expected);
        assert!(table.by_type.values().flat_map(HashMap::values).all(|p| !p.within || p.kind == ParamType::String));
    }

    #[test]
    fn every_path_of_every_parameter_exists_in_the_model() {
        // `r4()` refuses a table with any path the model does not have.
        let table = r4().unwrap();
        // 133 resource types have parameters of their own, plus those of every resource.
        assert_eq!(table.by_type.len(), 134);
        let model = crate::fhir::model::r4().unwrap();
        let without: Vec<&str> = model.resource_names().filter(|rt| table.for_type(rt).len() < 2).collect();
        // Every resource type has at least `_id` and `_lastUpdated`.
        assert!(without.is_empty(), "{without:?}");
    }

    #[test]
    fn simple_paths_choices_filters_and_targets_compile_as_published() {
        let table = r4().unwrap();
        let family = table.get("Patient", "family").unwrap();
        assert_eq!(family.kind, ParamType::String);
        assert_eq!(family.paths.iter().map(steps).collect::<Vec<_>>(), [["name", "family"]]);

        // `Observation.effective` is a choice element: every typed variant.
        let date = table.get("Observation", "date").unwrap();
        let mut variants: Vec<Vec<&str>> = date.paths.iter().map(steps).collect();
        variants.sort();
        assert_eq!(variants, [["effectiveDateTime"], ["effectiveInstant"], ["effectivePeriod"], ["effectiveTiming"]]);

        let quantity = table.get("Observation", "value-quantity").unwrap();
        assert_eq!(quantity.kind, ParamType::Quantity);
        assert!(quantity.paths.iter().any(|p| steps(p) == ["valueQuantity"]));

        let email = table.get("Patient", "email").unwrap();
        assert_eq!(email.paths[0].filter, Some(("system".into(), "email".into())));
        assert_eq!(email.paths[0].filter_at, 1);

        let patient = table.get("Observation", "patient").unwrap();
        assert_eq!(patient.kind, ParamType::Reference);
        assert_eq!(patient.paths[0].resolves.as_deref(), Some("Patient"));
        assert!(patient.targets.iter().any(|t| t.as_ref() == "Patient"));

        // A cast with more steps after it: `(Observation.value as CodeableConcept).text`.
        let text = table.get("Observation", "value-string").unwrap();
        assert!(text.paths.iter().any(|p| steps(p) == ["valueCodeableConcept", "text"]));
    }

    #[test]
    fn parameters_of_every_resource_apply_to_each_type() {
        let table = r4().unwrap();
        let id = table.get("Encounter", "_id").unwrap();
        assert_eq!(id.kind, ParamType::Token);
        let updated = table.get("Encounter", "_lastUpdated").unwrap();
        assert_eq!(updated.paths.iter().map(steps).collect::<Vec<_>>(), [["meta", "lastUpdated"]]);
        assert!(table.get("Encounter", "no-such-parameter").is_none());
        let codes: Vec<&str> = table.for_type("Patient").iter().map(|p| p.code.as_ref()).collect();
        assert!(codes.contains(&"family") && codes.contains(&"_id") && codes.contains(&"birthdate"));
        assert!(codes.windows(2).all(|w| w[0] < w[1]), "sorted and distinct: {codes:?}");
    }
}
