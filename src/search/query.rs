//! A search query's parameters, read into the index filters that answer them.
//!
//! `name[:modifier]=value[,value...]`: values separated by commas are alternatives (OR), and
//! repeated parameters must all hold (AND). `\,`, `\|` and `\\` escape the separators.

use crate::fhir::search_params::{ParamType, SearchParam, SearchParams};
use crate::storage::search::{Bound, Cmp, DateCond, Filter, Linked, NumberCond, Unit};

use super::extract::{RefValue, parse_reference};
use super::ranges::{date_range, number_range};
use super::{Blind, StringIndexing, kind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    #[error("unknown search parameter `{param}` for {resource_type}")]
    UnknownParameter { resource_type: String, param: String },
    #[error("`{param}`: {reason}")]
    Invalid { param: String, reason: String },
}

/// What `_total` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Total {
    /// Counted (the default).
    #[default]
    Accurate,
    None,
}

/// The filters of a query, and the parameters they came from (canonical, for `self` links).
#[derive(Debug, Default)]
pub struct Parsed {
    pub filters: Vec<Filter>,
    pub used: Vec<(String, String)>,
    /// The other resource types the query looks into (chains and `_has`): searching them must
    /// be permitted too.
    pub also_searched: Vec<String>,
}

/// What reading a query needs besides the parameters.
struct Reader<'a> {
    params: &'a SearchParams,
    base_url: &'a str,
    indexing: StringIndexing,
}

/// Read `pairs` (search parameters only; `_count` and the like are taken out before) for a
/// search of `blind`'s resource type. Unknown parameters are an error, or skipped if `lenient`.
pub fn parse(
    params: &SearchParams,
    blind: &Blind<'_>,
    pairs: &[(String, String)],
    base_url: &str,
    indexing: StringIndexing,
    lenient: bool,
) -> Result<Parsed, SearchError> {
    let reader = Reader { params, base_url, indexing };
    let mut parsed = Parsed::default();
    for (name, value) in pairs {
        // FHIR: a parameter without a value is ignored.
        if value.is_empty() {
            continue;
        }
        let filter = match reader.parameter(blind, name, value, &mut parsed.also_searched) {
            Err(SearchError::UnknownParameter { .. }) if lenient => continue,
            other => other?,
        };
        parsed.filters.push(filter);
        parsed.used.push((name.clone(), value.clone()));
    }
    parsed.also_searched.sort();
    parsed.also_searched.dedup();
    Ok(parsed)
}

impl Reader<'_> {
    /// One parameter: `_has:...`, a chain `ref[:Type].param`, or a parameter of the type.
    fn parameter(
        &self,
        blind: &Blind<'_>,
        name: &str,
        value: &str,
        also: &mut Vec<String>,
    ) -> Result<Filter, SearchError> {
        if let Some(rest) = name.strip_prefix("_has:") {
            return self.has(blind, name, rest, value, also);
        }
        if let Some((reference, chained)) = name.split_once('.') {
            return self.chain(blind, name, reference, chained, value, also);
        }
        self.plain(blind, name, value)
    }

    /// `name[:modifier]=value`, a parameter of `blind`'s own type.
    fn plain(&self, blind: &Blind<'_>, name: &str, value: &str) -> Result<Filter, SearchError> {
        let (code, modifier) = match name.split_once(':') {
            Some((code, modifier)) => (code, Some(modifier)),
            None => (name, None),
        };
        let invalid = |reason: String| SearchError::Invalid { param: name.to_owned(), reason };
        let param = self.param(blind.resource_type, code, name)?;
        if modifier == Some("missing") {
            let present = vec![blind.present(&param.indexed_as)];
            return match value {
                "true" => Ok(Filter::NoToken(present)),
                "false" => Ok(Filter::AnyToken(present)),
                _ => Err(invalid("`:missing` takes `true` or `false`".into())),
            };
        }
        let values = split_unescaped(value, ',');
        filter(param, blind, modifier, &values, self.base_url, self.indexing).map_err(invalid)
    }

    /// `reference[:Type].param[:modifier]=value`: resources whose `reference` points at a
    /// resource (of `Type`, or of any type the reference allows that has `param`) matching
    /// `param=value`. One level: the chained parameter is a plain one.
    fn chain(
        &self,
        blind: &Blind<'_>,
        name: &str,
        reference: &str,
        chained: &str,
        value: &str,
        also: &mut Vec<String>,
    ) -> Result<Filter, SearchError> {
        let invalid = |reason: String| SearchError::Invalid { param: name.to_owned(), reason };
        let (code, typed) = match reference.split_once(':') {
            Some((code, t)) => (code, Some(t)),
            None => (reference, None),
        };
        let param = self.param(blind.resource_type, code, name)?;
        if param.kind != ParamType::Reference {
            return Err(invalid(format!("`{code}` is not a reference parameter, so it cannot be chained")));
        }
        if chained.contains('.') || chained.starts_with("_has") {
            return Err(invalid("chains are supported one level deep".into()));
        }
        let chained_code = chained.split_once(':').map_or(chained, |(c, _)| c);
        let targets: Vec<&str> = match typed {
            Some(t) if param.targets.iter().any(|target| target.as_ref() == t) => vec![t],
            Some(t) => return Err(invalid(format!("`{code}` does not refer to {t}"))),
            None => {
                param.targets.iter().map(AsRef::as_ref).filter(|t| self.params.get(t, chained_code).is_some()).collect()
            }
        };
        if targets.is_empty() {
            let resource_type = format!("the types {}.{code} refers to", blind.resource_type);
            return Err(SearchError::UnknownParameter { resource_type, param: name.to_owned() });
        }
        let mut any = Vec::with_capacity(targets.len());
        for target in targets {
            let target_blind = Blind::new(blind.index, target);
            let inner = self.plain(&target_blind, chained, value).map_err(named(name))?;
            also.push(target.to_owned());
            any.push((target.to_owned(), vec![inner]));
        }
        Ok(Filter::Linked(Linked::Chain { param: code.to_owned(), any }))
    }

    /// `_has:Type:reference:param[:modifier]=value`: resources that some `Type` refers to
    /// through `reference`, that `Type` matching `param=value`. One level.
    fn has(
        &self,
        blind: &Blind<'_>,
        name: &str,
        rest: &str,
        value: &str,
        also: &mut Vec<String>,
    ) -> Result<Filter, SearchError> {
        let invalid = |reason: String| SearchError::Invalid { param: name.to_owned(), reason };
        let mut parts = rest.splitn(3, ':');
        let (Some(source), Some(reference), Some(inner)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid("`_has` takes the form `_has:Type:reference:parameter`".into()));
        };
        if inner.starts_with("_has") || inner.contains('.') {
            return Err(invalid("`_has` is supported one level deep, without chains".into()));
        }
        let param = self.param(source, reference, name)?;
        let refers_here = param.targets.is_empty() || param.targets.iter().any(|t| t.as_ref() == blind.resource_type);
        if param.kind != ParamType::Reference || !refers_here {
            return Err(invalid(format!("`{source}.{reference}` is not a reference to {}", blind.resource_type)));
        }
        let source_blind = Blind::new(blind.index, source);
        let filter = self.plain(&source_blind, inner, value).map_err(named(name))?;
        also.push(source.to_owned());
        Ok(Filter::Linked(Linked::Has {
            source_type: source.to_owned(),
            param: reference.to_owned(),
            filters: vec![filter],
        }))
    }

    fn param(&self, resource_type: &str, code: &str, name: &str) -> Result<&SearchParam, SearchError> {
        self.params.get(resource_type, code).ok_or_else(|| SearchError::UnknownParameter {
            resource_type: resource_type.to_owned(),
            param: name.to_owned(),
        })
    }
}

/// The error of a chain's or `_has`'s inner parameter, named by the whole parameter.
fn named(name: &str) -> impl Fn(SearchError) -> SearchError + '_ {
    move |e| match e {
        SearchError::Invalid { reason, .. } => SearchError::Invalid { param: name.to_owned(), reason },
        other => other,
    }
}

fn filter(
    param: &SearchParam,
    blind: &Blind<'_>,
    modifier: Option<&str>,
    values: &[String],
    base_url: &str,
    indexing: StringIndexing,
) -> Result<Filter, String> {
    let code = param.indexed_as.as_ref();
    if code == "_id" {
        no_modifier(modifier)?;
        return Ok(Filter::Id(values.to_vec()));
    }
    if code == "_lastUpdated" {
        no_modifier(modifier)?;
        return Ok(Filter::LastUpdated(values.iter().map(|v| date_conds(v)).collect::<Result<Vec<_>, _>>()?.concat()));
    }
    match param.kind {
        ParamType::Token => {
            let mut tokens = Vec::new();
            for value in values {
                tokens.push(token_query(blind, code, "", value));
            }
            match modifier {
                None => Ok(Filter::AnyToken(tokens)),
                Some("not") => Ok(Filter::NoToken(tokens)),
                Some(other) => Err(unsupported_modifier(other, "token", "`:missing`, `:not`")),
            }
        }
        ParamType::String => {
            // Its own tokens, and those of the parts indexed under narrower parameters.
            let keys = || std::iter::once(code).chain(param.parts.iter().map(|p| p.key.as_ref()));
            match modifier {
                None => {
                    // One token per value and key: each is one alternative.
                    let alternatives =
                        values.iter().flat_map(|v| keys().flat_map(|k| blind.string_query(k, v, indexing)));
                    Ok(Filter::AnyToken(alternatives.collect()))
                }
                Some("exact") => Ok(Filter::AnyToken(
                    values.iter().flat_map(|v| keys().map(|k| blind.token(k, kind::EXACT, &[v]))).collect(),
                )),
                Some("contains") => Err("`:contains` is not available: string values are stored encrypted, and their \
                 blind index answers only whole-word and word-prefix matches"
                    .into()),
                Some(other) => Err(unsupported_modifier(other, "string", "`:exact`, `:missing`")),
            }
        }
        ParamType::Uri => {
            no_modifier(modifier)?;
            Ok(Filter::AnyToken(values.iter().map(|v| blind.token(code, kind::URI, &[v])).collect()))
        }
        ParamType::Date => {
            no_modifier(modifier)?;
            let any = values.iter().map(|v| date_conds(v)).collect::<Result<Vec<_>, _>>()?.concat();
            Ok(Filter::Date { param: code.to_owned(), any })
        }
        ParamType::Number => {
            no_modifier(modifier)?;
            let any = values.iter().map(|v| number_conds(v)).collect::<Result<Vec<_>, _>>()?.concat();
            Ok(Filter::Number { param: code.to_owned(), any: any.into_iter().map(|c| (c, None)).collect() })
        }
        ParamType::Quantity => {
            no_modifier(modifier)?;
            let mut any = Vec::new();
            for value in values {
                let parts = split_unescaped(value, '|');
                let (number, unit) = match parts.as_slice() {
                    [number] => (number, None),
                    [number, system, code] if !code.is_empty() => {
                        let unit = if system.is_empty() {
                            Unit::Code(code.clone())
                        } else {
                            Unit::Coded { system: system.clone(), code: code.clone() }
                        };
                        (number, Some(unit))
                    }
                    _ => return Err(format!("`{value}` is not `[prefix]number[|system|code]`")),
                };
                any.extend(number_conds(number)?.into_iter().map(|c| (c, unit.clone())));
            }
            Ok(Filter::Number { param: code.to_owned(), any })
        }
        ParamType::Reference => reference_filter(param, blind, modifier, values, base_url),
    }
}

fn reference_filter(
    param: &SearchParam,
    blind: &Blind<'_>,
    modifier: Option<&str>,
    values: &[String],
    base_url: &str,
) -> Result<Filter, String> {
    let code = param.code.as_ref();
    if modifier == Some("identifier") {
        return Ok(Filter::AnyToken(values.iter().map(|v| token_query(blind, code, kind::IDENTIFIER, v)).collect()));
    }
    let typed = match modifier {
        None => None,
        Some(t) if param.targets.iter().any(|target| target.as_ref() == t) => Some(t),
        Some(other) => {
            return Err(format!(
                "`:{other}` is neither a type this parameter refers to nor a supported modifier (`:identifier`, \
                 `:missing`, or a target type)"
            ));
        }
    };
    let mut local = Vec::new();
    let mut urls = Vec::new();
    for value in values {
        if !value.contains('/') {
            // A bare id: of the modifier's type, of the one type the parameter can refer to, or of any type.
            let only = only_target(param);
            local.push((typed.map(str::to_owned).or(only), value.clone()));
            continue;
        }
        match parse_reference(value, base_url) {
            Some(RefValue::Local { resource_type, id }) => {
                if typed.is_some_and(|t| t != resource_type) {
                    return Err(format!("`{value}` is not a reference to a {}", typed.unwrap_or_default()));
                }
                local.push((Some(resource_type.to_owned()), id.to_owned()));
            }
            Some(RefValue::Url(url)) => urls.push(blind.token(code, kind::URL, &[url])),
            _ => return Err(format!("`{value}` is not a reference (`Type/id`, an id, or a URL)")),
        }
    }
    match (local.is_empty(), urls.is_empty()) {
        (_, true) => Ok(Filter::Ref { param: code.to_owned(), any: local }),
        (true, false) => Ok(Filter::AnyToken(urls)),
        (false, false) => Err("mixing local references and external URLs in one parameter is not supported; \
             repeat the search per kind"
            .into()),
    }
}

/// The one type a reference parameter can point at: its only target, or the type every one of
/// its paths resolves to (`Observation.patient` is `subject.where(resolve() is Patient)`).
fn only_target(param: &SearchParam) -> Option<String> {
    if let [only] = param.targets.as_ref() {
        return Some(only.to_string());
    }
    let first = param.paths.first()?.resolves.as_ref()?;
    param.paths.iter().all(|p| p.resolves.as_ref() == Some(first)).then(|| first.to_string())
}

/// The token a query value `system|code`, `|code`, `system|` or `code` looks up.
fn token_query(blind: &Blind<'_>, param: &str, scope: &str, value: &str) -> crate::storage::search::Token {
    let parts = split_unescaped(value, '|');
    match parts.as_slice() {
        [system, code] if system.is_empty() => blind.token(param, &format!("{scope}{}", kind::NO_SYSTEM_CODE), &[code]),
        [system, code] if code.is_empty() => blind.token(param, &format!("{scope}{}", kind::SYSTEM), &[system]),
        [system, code] => blind.token(param, &format!("{scope}{}", kind::SYSTEM_CODE), &[system, code]),
        _ => blind.token(param, &format!("{scope}{}", kind::CODE), &[&unescape(value)]),
    }
}

fn no_modifier(modifier: Option<&str>) -> Result<(), String> {
    match modifier {
        None => Ok(()),
        Some(m) => Err(format!("the modifier `:{m}` is not supported on this parameter (only `:missing`)")),
    }
}

fn unsupported_modifier(modifier: &str, kind: &str, supported: &str) -> String {
    format!("the modifier `:{modifier}` is not supported on {kind} parameters (supported: {supported})")
}

/// A comparison prefix and the rest of the value.
fn prefixed(value: &str) -> (&str, &str) {
    const PREFIXES: [&str; 9] = ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];
    match value.get(..2) {
        Some(p) if PREFIXES.contains(&p) => (p, value.get(2..).unwrap_or_default()),
        _ => ("eq", value),
    }
}

/// The alternatives a date query value stands for, on a stored range `[lo, hi)` (R4 3.1.1.4.1.1).
pub fn date_conds(value: &str) -> Result<Vec<DateCond>, String> {
    let (prefix, rest) = prefixed(value);
    let s = date_range(rest).ok_or_else(|| format!("`{rest}` is not a FHIR date, dateTime or instant"))?;
    let eq = vec![(Bound::Lo, Cmp::Ge, s.lo), (Bound::Hi, Cmp::Le, s.hi)];
    Ok(match prefix {
        "eq" => vec![eq],
        "ne" => vec![vec![(Bound::Lo, Cmp::Lt, s.lo)], vec![(Bound::Hi, Cmp::Gt, s.hi)]],
        "gt" => vec![vec![(Bound::Hi, Cmp::Gt, s.hi)]],
        "lt" => vec![vec![(Bound::Lo, Cmp::Lt, s.lo)]],
        "ge" => vec![vec![(Bound::Hi, Cmp::Gt, s.hi)], eq],
        "le" => vec![vec![(Bound::Lo, Cmp::Lt, s.lo)], eq],
        "sa" => vec![vec![(Bound::Lo, Cmp::Ge, s.hi)]],
        "eb" => vec![vec![(Bound::Hi, Cmp::Le, s.lo)]],
        _ => return Err("the prefix `ap` is not supported on dates".into()),
    })
}

/// The alternatives a number query value stands for, on a stored value (R4 3.1.1.4.1.2).
fn number_conds(value: &str) -> Result<Vec<NumberCond>, String> {
    let (prefix, rest) = prefixed(value);
    let s = number_range(rest).ok_or_else(|| format!("`{rest}` is not a number"))?;
    Ok(match prefix {
        "eq" => vec![vec![(Cmp::Ge, s.lo), (Cmp::Lt, s.hi)]],
        "ne" => vec![vec![(Cmp::Lt, s.lo)], vec![(Cmp::Ge, s.hi)]],
        "gt" | "sa" => vec![vec![(Cmp::Gt, s.value)]],
        "lt" | "eb" => vec![vec![(Cmp::Lt, s.value)]],
        "ge" => vec![vec![(Cmp::Ge, s.value)]],
        "le" => vec![vec![(Cmp::Le, s.value)]],
        // Approximately: within 10 % (the spec leaves the margin to the server).
        _ => {
            let margin = (s.value * 0.1).abs().max(s.hi - s.value);
            vec![vec![(Cmp::Ge, s.value - margin), (Cmp::Le, s.value + margin)]]
        }
    })
}

/// Split on `sep` where it is not escaped with `\`, and unescape each part.
pub fn split_unescaped(value: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next @ ('\\' | ',' | '|' | '$')) if next != sep => {
                    // Escaped for another level of splitting: keep the escape for it.
                    if let Some(last) = parts.last_mut() {
                        last.push('\\');
                        last.push(next);
                    }
                }
                Some(next) => {
                    if let Some(last) = parts.last_mut() {
                        last.push(next);
                    }
                }
                None => {
                    if let Some(last) = parts.last_mut() {
                        last.push('\\');
                    }
                }
            },
            c if c == sep => parts.push(String::new()),
            c => {
                if let Some(last) = parts.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    parts
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next().unwrap_or('\\') } else { c });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{MacKey, SecretKey};
    use crate::fhir::search_params;

    fn parse_one(rt: &str, name: &str, value: &str) -> Result<Vec<Filter>, SearchError> {
        let key = MacKey::new(SecretKey::generate().unwrap()).blind_index();
        let blind = Blind::new(&key, rt);
        let pairs = vec![(name.to_owned(), value.to_owned())];
        parse(search_params::r4().unwrap(), &blind, &pairs, "https://h/fhir/demo", StringIndexing::default(), false)
            .map(|p| p.filters)
    }

    #[test]
    fn escapes_split_only_their_own_level() {
        assert_eq!(split_unescaped(r"a\,b,c", ','), ["a,b", "c"]);
        assert_eq!(split_unescaped(r"s\|x|c", ','), [r"s\|x|c"]);
        assert_eq!(split_unescaped(r"s\|x|c", '|'), ["s|x", "c"]);
        assert_eq!(unescape(r"a\\b"), r"a\b");
    }

    #[test]
    fn dates_numbers_and_quantities_become_conditions() {
        let Filter::Date { param, any } = &parse_one("Patient", "birthdate", "ge1970,1980-01").unwrap()[0] else {
            panic!()
        };
        assert_eq!(param, "birthdate");
        assert_eq!(any.len(), 3, "ge gives gt-or-eq, and the second value one more");
        let filters = parse_one("Observation", "value-quantity", "gt5.4|http://unitsofmeasure.org|mg").unwrap();
        let Filter::Number { any, .. } = &filters[0] else { panic!() };
        assert_eq!(any[0].0, vec![(Cmp::Gt, 5.4)]);
        assert_eq!(any[0].1, Some(Unit::Coded { system: "http://unitsofmeasure.org".into(), code: "mg".into() }));
        let Filter::Ref { any, .. } = &parse_one("Observation", "subject", "Patient/p1,p2").unwrap()[0] else {
            panic!()
        };
        assert_eq!(any, &[(Some("Patient".into()), "p1".into()), (None, "p2".into())]);
        let Filter::Ref { any, .. } = &parse_one("Observation", "patient", "p2").unwrap()[0] else { panic!() };
        assert_eq!(any, &[(Some("Patient".into()), "p2".into())]);
    }

    #[test]
    fn chains_and_has_read_the_other_type_with_its_own_tokens() {
        let key = MacKey::new(SecretKey::generate().unwrap()).blind_index();
        let params = search_params::r4().unwrap();
        let read = |rt: &str, name: &str| {
            let pairs = vec![(name.to_owned(), "x".to_owned())];
            let blind = Blind::new(&key, rt);
            parse(params, &blind, &pairs, "https://h/fhir/demo", StringIndexing::default(), false).unwrap()
        };
        let typed = read("Observation", "subject:Patient.identifier");
        let Filter::Linked(Linked::Chain { param, any }) = &typed.filters[0] else { panic!("{typed:?}") };
        assert_eq!(param, "subject");
        let patient_token = Blind::new(&key, "Patient").token("identifier", kind::CODE, &["x"]);
        assert_eq!(any, &[("Patient".to_owned(), vec![Filter::AnyToken(vec![patient_token])])]);
        assert_eq!(typed.also_searched, ["Patient"]);
        // Untyped: every target type that has the parameter (of Patient, Group, Device and
        // Location, which Observation.subject may point at, Group and Device have no `name`).
        let untyped = read("Observation", "subject.name");
        let Filter::Linked(Linked::Chain { any, .. }) = &untyped.filters[0] else { panic!() };
        let types: Vec<&str> = any.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(types, ["Location", "Patient"]);
        let has = read("Patient", "_has:Observation:patient:code");
        let Filter::Linked(Linked::Has { source_type, param, filters }) = &has.filters[0] else { panic!() };
        assert_eq!((source_type.as_str(), param.as_str(), filters.len()), ("Observation", "patient", 1));
        assert_eq!(has.used, [("_has:Observation:patient:code".to_owned(), "x".to_owned())]);
    }

    #[test]
    fn refusals_name_the_parameter_and_the_reason() {
        let unknown = parse_one("Patient", "nickname", "x").unwrap_err();
        assert_eq!(unknown.to_string(), "unknown search parameter `nickname` for Patient");
        let contains = parse_one("Patient", "family:contains", "x").unwrap_err().to_string();
        assert!(contains.contains("not available") && contains.contains("encrypted"), "{contains}");
        for (name, value) in [
            ("birthdate", "1970-13"),
            ("birthdate", "ap1970"),
            ("birthdate:exact", "1970"),
            ("gender:text", "f"),
            ("general-practitioner:Patient", "x"),
            ("organization.nickname", "x"),
            ("organization:Patient.name", "x"),
            ("gender.name", "x"),
            ("organization.partof.name", "x"),
            ("_has:Observation:patient", "x"),
            ("_has:Observation:code:code", "x"),
            ("_has:Observation:patient:_has:Observation:patient:code", "x"),
            ("active:missing", "maybe"),
        ] {
            assert!(parse_one("Patient", name, value).is_err(), "{name}={value}");
        }
    }
}
