//! Search over encrypted data: what the index keeps of a resource, and how a query reads it.
//!
//! Token, string and uri values, and references that are not this server's own ids, reach the
//! database only as blind-index tokens: HMAC-SHA256 under the tenant's search key (its own key,
//! `KeyService::mac_key(tenant, "search")`, never a data key) of the resource type, the
//! parameter, the kind of token and the value. Equal values give equal tokens, so equality
//! search works; nothing else about the value can be read from the token. Strings are folded
//! (`normalize`) and indexed by word: a token per word prefix of `min_prefix_chars` up to
//! `max_prefix_chars` characters (the longest is the word itself), a whole-word token only for
//! words shorter than that, and for values of several words a token per prefix of the whole
//! value; FHIR's default string match (starts with, ignoring case and accents) is served by
//! those. A part of a name or an address that a narrower parameter indexes (`family` of `name`,
//! `city` of `address`) is indexed once, under the narrower one, and queries of the wider one
//! look there too (`SearchParam::parts`). Dates, numbers, quantities and references to this server's
//! opaque ids are stored in clear (`storage::search`).
//!
//! **Architecture Invariant:** no plaintext string, code, identifier or external URL of a
//! resource is written to the index. The same function (`Blind::token`) makes the tokens of the
//! stored values and of the query values, so the two cannot drift apart.

pub mod extract;
pub mod normalize;
pub mod query;
pub mod ranges;

use crate::crypto::mac::BlindIndex;
use crate::fhir::search_params::SearchParams;
use crate::storage::search::{DateRow, NumberRow, RefRow, SearchRows, Token};
use extract::{Extracted, RefValue};
use normalize::{fold, prefix};

pub use query::{SearchError, Total, parse};

/// How strings are indexed (configuration `search`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StringIndexing {
    /// Word prefixes shorter than this are not indexed; a shorter query word matches whole words.
    pub min_prefix_chars: usize,
    /// Prefixes are indexed up to this length; a longer query word is matched on its first
    /// `max_prefix_chars` characters.
    pub max_prefix_chars: usize,
}

impl Default for StringIndexing {
    fn default() -> Self {
        Self { min_prefix_chars: 3, max_prefix_chars: 16 }
    }
}

/// The kinds of token, each its own domain in the HMAC input.
mod kind {
    pub const CODE: &str = "code";
    pub const SYSTEM_CODE: &str = "system|code";
    pub const NO_SYSTEM_CODE: &str = "|code";
    pub const SYSTEM: &str = "system|";
    pub const WORD: &str = "word";
    pub const WORD_PREFIX: &str = "word-prefix";
    pub const VALUE_PREFIX: &str = "value-prefix";
    pub const EXACT: &str = "exact";
    pub const URI: &str = "uri";
    pub const URL: &str = "reference-url";
    pub const IDENTIFIER: &str = "reference-identifier";
    pub const PRESENT: &str = "present";
}

/// Blind tokens of one resource type's parameters under one tenant's search key.
pub struct Blind<'a> {
    index: &'a BlindIndex,
    resource_type: &'a str,
}

impl<'a> Blind<'a> {
    pub fn new(index: &'a BlindIndex, resource_type: &'a str) -> Self {
        Self { index, resource_type }
    }

    fn token(&self, param: &str, kind: &str, parts: &[&str]) -> Token {
        let mut fields: Vec<&[u8]> = Vec::with_capacity(3 + parts.len());
        fields.extend([self.resource_type.as_bytes(), param.as_bytes(), kind.as_bytes()]);
        fields.extend(parts.iter().map(|p| p.as_bytes()));
        self.index.token(&fields)
    }

    /// The token a value of `param` is found by when a query names it `system|code`, `|code`,
    /// `system|` or `code` (`scope` separates `Reference.identifier` from plain tokens).
    fn coded(&self, param: &str, scope: &str, system: Option<&str>, code: &str, out: &mut Vec<Token>) {
        out.push(self.token(param, &format!("{scope}{}", kind::CODE), &[code]));
        match system {
            Some(system) => {
                out.push(self.token(param, &format!("{scope}{}", kind::SYSTEM_CODE), &[system, code]));
                out.push(self.token(param, &format!("{scope}{}", kind::SYSTEM), &[system]));
            }
            None => out.push(self.token(param, &format!("{scope}{}", kind::NO_SYSTEM_CODE), &[code])),
        }
    }

    /// Whether `param` has any value (`:missing`).
    fn present(&self, param: &str) -> Token {
        self.token(param, kind::PRESENT, &[])
    }

    /// The tokens a string value is found by.
    fn string(&self, param: &str, value: &str, indexing: StringIndexing, out: &mut Vec<Token>) {
        out.push(self.token(param, kind::EXACT, &[value]));
        let folded = fold(value);
        let mut words = folded.split(' ').filter(|w| !w.is_empty()).peekable();
        let first_len = words.peek().map_or(0, |w| w.chars().count());
        for word in words {
            let len = word.chars().count();
            // A query word shorter than the shortest prefix matches whole words; a longer one,
            // the prefix tokens (the longest of which is the word itself).
            if len < indexing.min_prefix_chars {
                out.push(self.token(param, kind::WORD, &[word]));
            }
            for n in indexing.min_prefix_chars.max(1)..=len.min(indexing.max_prefix_chars) {
                out.push(self.token(param, kind::WORD_PREFIX, &[prefix(word, n)]));
            }
        }
        // Several words: prefixes of the whole value that reach into its second word.
        let total = folded.chars().count();
        if total > first_len {
            for n in first_len + 2..=total.min(indexing.max_prefix_chars) {
                out.push(self.token(param, kind::VALUE_PREFIX, &[prefix(&folded, n)]));
            }
        }
    }

    /// The token a query string is matched with (FHIR's default: starts with, folded).
    fn string_query(&self, param: &str, value: &str, indexing: StringIndexing) -> Vec<Token> {
        let folded = fold(value);
        let words: Vec<&str> = folded.split(' ').filter(|w| !w.is_empty()).collect();
        match words.as_slice() {
            [] => Vec::new(),
            [word] if word.chars().count() < indexing.min_prefix_chars => {
                vec![self.token(param, kind::WORD, &[word])]
            }
            [word] => vec![self.token(param, kind::WORD_PREFIX, &[prefix(word, indexing.max_prefix_chars)])],
            _ => vec![self.token(param, kind::VALUE_PREFIX, &[prefix(&folded, indexing.max_prefix_chars)])],
        }
    }
}

/// The search rows of a resource: every parameter of its type that it has a value for.
pub fn index_rows(
    params: &SearchParams,
    blind: &Blind<'_>,
    body: &serde_json::Map<String, serde_json::Value>,
    base_url: &str,
    indexing: StringIndexing,
) -> SearchRows {
    let mut rows = SearchRows::default();
    for (param, values) in extract::extract(params, blind.resource_type, body, base_url) {
        if param.indexed_as != param.code || param.within {
            continue; // Its values are indexed under `indexed_as`, or as parts of another's.
        }
        let code = param.code.as_ref();
        rows.tokens.push(blind.present(code));
        for value in values {
            match value {
                Extracted::Token { system, code: value } => blind.coded(code, "", system, value, &mut rows.tokens),
                Extracted::String(s) => blind.string(code, s, indexing, &mut rows.tokens),
                Extracted::Part { part, value } => {
                    // Under the parameter that has this part to itself (`family`), if any.
                    let key = param.parts.iter().find(|p| &*p.part == part).map_or(code, |p| &p.key);
                    if key != code {
                        rows.tokens.push(blind.present(key));
                    }
                    blind.string(key, value, indexing, &mut rows.tokens);
                }
                Extracted::Uri(s) => rows.tokens.push(blind.token(code, kind::URI, &[s])),
                Extracted::Date(range) => rows.dates.push(DateRow { param: code.into(), lo: range.lo, hi: range.hi }),
                Extracted::Number(value) => {
                    rows.numbers.push(NumberRow { param: code.into(), value, system: None, code: None, unit: None });
                }
                Extracted::Quantity { value, system, code: unit_code, unit } => rows.numbers.push(NumberRow {
                    param: code.into(),
                    value,
                    system: system.map(Into::into),
                    code: unit_code.map(Into::into),
                    unit: unit.map(Into::into),
                }),
                Extracted::Reference(RefValue::Local { resource_type, id }) => rows.refs.push(RefRow {
                    param: code.into(),
                    target_type: resource_type.into(),
                    target_id: id.into(),
                }),
                Extracted::Reference(RefValue::Url(url)) => rows.tokens.push(blind.token(code, kind::URL, &[url])),
                Extracted::Reference(RefValue::Identifier { system, value }) => {
                    blind.coded(code, kind::IDENTIFIER, system, value, &mut rows.tokens);
                }
            }
        }
    }
    rows.tokens.sort_unstable();
    rows.tokens.dedup();
    rows.dates.sort_by(|a, b| (&a.param, a.lo, a.hi).cmp(&(&b.param, b.lo, b.hi)));
    rows.dates.dedup();
    rows.refs.sort_by(|a, b| (&a.param, &a.target_type, &a.target_id).cmp(&(&b.param, &b.target_type, &b.target_id)));
    rows.refs.dedup();
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{MacKey, SecretKey};
    use crate::fhir::search_params;

    #[test]
    fn query_tokens_meet_the_tokens_of_the_values_they_should_match() {
        let key = MacKey::new(SecretKey::generate().unwrap()).blind_index();
        let blind = Blind::new(&key, "Patient");
        let indexing = StringIndexing::default();
        let mut stored = Vec::new();
        blind.string("name", "Anna-Maria Müller", indexing, &mut stored);
        blind.string("name", "Li", indexing, &mut stored);
        let found = |q: &str| blind.string_query("name", q, indexing).iter().all(|t| stored.contains(t));
        for hit in ["anna", "ANNA", "Mül", "muller", "maria", "anna mar", "Anna-Maria M", "li", "Li"] {
            assert!(found(hit), "{hit} should match");
        }
        // Not a word start; a short query matches whole words only; other value; other param.
        for miss in ["ller", "mu", "l", "maria anna", "anna müllerx"] {
            assert!(!found(miss), "{miss} should not match");
        }
        assert!(!blind.string_query("family", "anna", indexing).iter().all(|t| stored.contains(t)));
    }

    #[test]
    fn a_resource_is_indexed_without_its_plaintext() {
        let key = MacKey::new(SecretKey::generate().unwrap()).blind_index();
        let body: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"resourceType":"Patient","gender":"female","birthDate":"1980-02-03",
                "name":[{"family":"Dupont","given":["Jeanne"]}],
                "identifier":[{"system":"urn:oid:1.2.250","value":"1800275123456"}],
                "managingOrganization":{"reference":"Organization/org1"}}"#,
        )
        .unwrap();
        let params = search_params::r4().unwrap();
        let rows =
            index_rows(params, &Blind::new(&key, "Patient"), &body, "https://h/fhir/demo", StringIndexing::default());
        assert!(rows.tokens.len() > 20, "{}", rows.tokens.len());
        assert_eq!(rows.dates.len(), 1);
        assert_eq!(
            rows.refs,
            [RefRow { param: "organization".into(), target_type: "Organization".into(), target_id: "org1".into() }]
        );
        // `phonetic` has the paths of `name`: its queries meet `name`'s tokens, stored once.
        let phonetic = parse(
            params,
            &Blind::new(&key, "Patient"),
            &[("phonetic".to_owned(), "Dup".to_owned()), ("phonetic:missing".to_owned(), "false".to_owned())],
            "https://h/fhir/demo",
            StringIndexing::default(),
            false,
        )
        .unwrap();
        let tokens: Vec<Token> = phonetic
            .filters
            .iter()
            .flat_map(|f| match f {
                crate::storage::search::Filter::AnyToken(tokens) => tokens.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        // `Dup` may be the start of a family name, a given name, or any other part of `name`:
        // one alternative per key, and the family name's is stored (under `family`).
        let present = Blind::new(&key, "Patient").present("name");
        assert!(tokens.contains(&present) && rows.tokens.contains(&present));
        assert_eq!(tokens.len(), 1 + 3, "present; name, family, given");
        assert_eq!(tokens.iter().filter(|t| rows.tokens.contains(t)).count(), 2);
        let debug = format!("{rows:?}").to_lowercase();
        for secret in ["dupont", "jeanne", "1800275123456", "female", "urn:oid"] {
            assert!(!debug.contains(secret), "{secret} leaked");
        }
    }
}
