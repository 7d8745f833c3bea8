//! The structural model of FHIR R4, compiled once from `schemas/fhir-r4-model.json`.
//!
//! The JSON file is derived from HL7's own StructureDefinitions and ValueSets by
//! `scripts/gen-fhir-model.py`; this module turns it into lookup tables the validator walks.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use regex::Regex;
use serde::Deserialize;

const MODEL_JSON: &str = include_str!("../../schemas/fhir-r4-model.json");

/// The compiled model could not be built (a broken build, never user input).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("the embedded FHIR model does not parse")]
    Parse(#[from] serde_json::Error),
    #[error("the embedded FHIR model has an invalid regex for `{0}`")]
    Regex(String, #[source] regex::Error),
    #[error("the embedded FHIR model refers to unknown type `{0}`")]
    UnknownType(String),
}

/// The process-wide compiled model. It is immutable data (like a lookup table), built on first use.
pub fn r4() -> Result<&'static Model, &'static ModelError> {
    static MODEL: OnceLock<Result<Model, ModelError>> = OnceLock::new();
    MODEL.get_or_init(Model::compile).as_ref()
}

/// The FHIR primitive types, with the checks each one needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primitive {
    Boolean,
    Integer,
    PositiveInt,
    UnsignedInt,
    Decimal,
    Date,
    DateTime,
    Instant,
    Time,
    Base64Binary,
    Xhtml,
    /// Every other primitive is a JSON string checked by its regex alone.
    Text,
}

#[derive(Debug)]
pub enum ElementKind {
    Primitive {
        primitive: Primitive,
        name: Arc<str>,
        regex: Option<Arc<Regex>>,
    },
    Complex(usize),
    /// Any resource (`contained`, `Bundle.entry.resource`, `Parameters.parameter.resource`).
    Resource,
}

#[derive(Debug)]
pub struct ElementDef {
    pub kind: ElementKind,
    pub array: bool,
    /// Codes of the required binding, where it can be enumerated.
    pub value_set: Option<Arc<ValueSet>>,
}

#[derive(Debug)]
pub struct ValueSet {
    pub name: Box<str>,
    pub codes: HashSet<Box<str>>,
    pub ordered: Box<[Box<str>]>,
}

#[derive(Debug)]
pub struct TypeDef {
    pub name: Box<str>,
    pub elements: HashMap<Box<str>, ElementDef>,
    /// Each entry lists the alternative property names that satisfy one mandatory element.
    pub required: Box<[Box<[Box<str>]>]>,
    /// Each entry lists the property names of one choice element (`value[x]`): at most one may appear.
    pub choices: Box<[Box<[Box<str>]>]>,
}

#[derive(Debug)]
pub struct Model {
    types: Vec<TypeDef>,
    by_name: HashMap<Box<str>, usize>,
    resources: Vec<Box<str>>,
}

#[derive(Deserialize)]
struct RawModel {
    resources: Vec<String>,
    primitives: HashMap<String, Option<String>>,
    #[serde(rename = "valueSets")]
    value_sets: HashMap<String, Vec<String>>,
    types: HashMap<String, RawType>,
}

#[derive(Deserialize)]
struct RawType {
    elements: indexmap_free::OrderedElements,
    required: Vec<Vec<String>>,
    choices: Vec<Vec<String>>,
}

#[derive(Deserialize)]
struct RawElement {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    array: bool,
    #[serde(rename = "valueSet")]
    value_set: Option<String>,
}

mod indexmap_free {
    //! Elements keep their definition order (useful for messages); a Vec of pairs is enough.
    use serde::de::{Deserializer, MapAccess, Visitor};

    pub struct OrderedElements(pub Vec<(String, super::RawElement)>);

    impl<'de> serde::Deserialize<'de> for OrderedElements {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = OrderedElements;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a map of elements")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut out = Vec::new();
                    while let Some(entry) = map.next_entry()? {
                        out.push(entry);
                    }
                    Ok(OrderedElements(out))
                }
            }
            d.deserialize_map(V)
        }
    }
}

impl Model {
    fn compile() -> Result<Self, ModelError> {
        let raw: RawModel = serde_json::from_str(MODEL_JSON)?;
        let mut regexes: HashMap<String, Arc<Regex>> = HashMap::new();
        for (name, pattern) in &raw.primitives {
            if let Some(pattern) = pattern {
                let re = Regex::new(&format!("^(?:{})$", xml_schema_whitespace(pattern)))
                    .map_err(|e| ModelError::Regex(name.clone(), e))?;
                regexes.insert(name.clone(), Arc::new(re));
            }
        }
        let value_sets: HashMap<&str, Arc<ValueSet>> = raw
            .value_sets
            .iter()
            .map(|(name, codes)| {
                let vs = ValueSet {
                    name: name.as_str().into(),
                    codes: codes.iter().map(|c| c.as_str().into()).collect(),
                    ordered: codes.iter().map(|c| c.as_str().into()).collect(),
                };
                (name.as_str(), Arc::new(vs))
            })
            .collect();

        let mut names: Vec<&String> = raw.types.keys().collect();
        names.sort();
        let by_name: HashMap<Box<str>, usize> = names.iter().enumerate().map(|(i, n)| (n.as_str().into(), i)).collect();
        let primitive_names: HashMap<&str, Arc<str>> =
            raw.primitives.keys().map(|n| (n.as_str(), Arc::from(n.as_str()))).collect();

        let mut types = Vec::with_capacity(names.len());
        for name in names {
            let Some(raw_type) = raw.types.get(name) else { continue };
            let mut elements = HashMap::with_capacity(raw_type.elements.0.len());
            for (prop, el) in &raw_type.elements.0 {
                let kind = if el.ty == "Resource" {
                    ElementKind::Resource
                } else if let Some(prim_name) = primitive_names.get(el.ty.as_str()) {
                    ElementKind::Primitive {
                        primitive: primitive_of(&el.ty),
                        name: prim_name.clone(),
                        regex: regexes.get(&el.ty).cloned(),
                    }
                } else {
                    let idx =
                        by_name.get(el.ty.as_str()).copied().ok_or_else(|| ModelError::UnknownType(el.ty.clone()))?;
                    ElementKind::Complex(idx)
                };
                let value_set = match &el.value_set {
                    Some(vs) => {
                        Some(value_sets.get(vs.as_str()).cloned().ok_or_else(|| ModelError::UnknownType(vs.clone()))?)
                    }
                    None => None,
                };
                elements.insert(prop.as_str().into(), ElementDef { kind, array: el.array, value_set });
            }
            types.push(TypeDef {
                name: name.as_str().into(),
                elements,
                required: boxed_groups(&raw_type.required),
                choices: boxed_groups(&raw_type.choices),
            });
        }
        Ok(Self { types, by_name, resources: raw.resources.into_iter().map(Into::into).collect() })
    }

    /// The definition of a resource or data type by name (`Patient`, `HumanName`, `Patient.contact`).
    pub fn type_def(&self, name: &str) -> Option<&TypeDef> {
        self.by_name.get(name).and_then(|&i| self.types.get(i))
    }

    pub fn type_at(&self, index: usize) -> Option<&TypeDef> {
        self.types.get(index)
    }

    /// The resource types, as listed by the model file (sorted).
    pub fn resource_names(&self) -> impl Iterator<Item = &str> {
        self.resources.iter().map(AsRef::as_ref)
    }
}

/// The spec's regexes are XML Schema regexes, where `\s` is only space, tab, CR and LF. In
/// Rust (and JavaScript) `\s` is Unicode whitespace, which would refuse a no-break space inside
/// a string that the reference validator accepts. Spell the XML Schema meaning out.
fn xml_schema_whitespace(pattern: &str) -> String {
    pattern.replace("\\s", "[ \\t\\n\\r]").replace("\\S", "[^ \\t\\n\\r]")
}

fn boxed_groups(groups: &[Vec<String>]) -> Box<[Box<[Box<str>]>]> {
    groups.iter().map(|g| g.iter().map(|s| s.as_str().into()).collect()).collect()
}

fn primitive_of(name: &str) -> Primitive {
    match name {
        "boolean" => Primitive::Boolean,
        "integer" => Primitive::Integer,
        "positiveInt" => Primitive::PositiveInt,
        "unsignedInt" => Primitive::UnsignedInt,
        "decimal" => Primitive::Decimal,
        "date" => Primitive::Date,
        "dateTime" => Primitive::DateTime,
        "instant" => Primitive::Instant,
        "time" => Primitive::Time,
        "base64Binary" => Primitive::Base64Binary,
        "xhtml" => Primitive::Xhtml,
        _ => Primitive::Text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::resource_types::RESOURCE_TYPES;

    #[test]
    fn the_embedded_model_compiles_and_matches_the_resource_list() {
        let model = r4().unwrap();
        let listed: Vec<&str> = model.resource_names().collect();
        assert_eq!(listed, RESOURCE_TYPES.to_vec());
        for name in RESOURCE_TYPES {
            assert!(model.type_def(name).is_some(), "{name} has no definition");
        }
    }

    #[test]
    fn patient_gender_has_its_required_binding() {
        let model = r4().unwrap();
        let gender = model.type_def("Patient").unwrap().elements.get("gender").unwrap();
        let vs = gender.value_set.as_ref().unwrap();
        assert_eq!(&*vs.name, "administrative-gender");
        assert!(vs.codes.contains("female"));
        assert!(!vs.codes.contains("robot"));
    }
}
