//! Strict JSON parsing: what a lenient parser would silently drop is an error here.
//!
//! `serde_json` keeps the last of two duplicate keys; a FHIR server that did the same would lose
//! the first value without telling anyone. We refuse duplicates instead.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JsonError {
    #[error("the body is not valid JSON: {message} at line {line}, column {column}")]
    Syntax { message: String, line: usize, column: usize },
    #[error("the body must be a JSON object")]
    NotAnObject,
}

/// Parse a JSON object, refusing syntax errors, duplicate keys and a non-object top level.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let syntax = |e: serde_json::Error| JsonError::Syntax {
        message: first_clause(&e.to_string()),
        line: e.line(),
        column: e.column(),
    };
    serde_json::from_slice::<NoDuplicates>(bytes).map_err(syntax)?;
    match serde_json::from_slice::<Value>(bytes).map_err(syntax)? {
        Value::Object(map) => Ok(map),
        _ => Err(JsonError::NotAnObject),
    }
}

/// serde_json appends " at line L column C"; we report those as fields.
fn first_clause(message: &str) -> String {
    message.split(" at line ").next().unwrap_or(message).to_owned()
}

/// Walks a document and fails on the first object with a repeated key.
struct NoDuplicates;

impl<'de> Deserialize<'de> for NoDuplicates {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NoDuplicatesVisitor)
    }
}

struct NoDuplicatesVisitor;

impl<'de> Visitor<'de> for NoDuplicatesVisitor {
    type Value = NoDuplicates;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_i64<E>(self, _: i64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_u64<E>(self, _: u64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_f64<E>(self, _: f64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_str<E>(self, _: &str) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_unit<E>(self) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoDuplicates, A::Error> {
        while seq.next_element::<NoDuplicates>()?.is_some() {}
        Ok(NoDuplicates)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoDuplicates, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value::<NoDuplicates>()?;
            if let Some(dup) = seen.replace(key) {
                return Err(de::Error::custom(format!("duplicate key `{dup}`")));
            }
        }
        Ok(NoDuplicates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_would_be_lost_or_misread() {
        let cases: &[(&[u8], &str)] = &[
            (br#"{"a": 1, "a": 2}"#, "duplicate key `a`"),
            (br#"{"x": {"b": 1, "b": 1}}"#, "duplicate key `b`"),
            (br#"{"a": [{"c": 1, "c": 2}]}"#, "duplicate key `c`"),
            (br#"{"a": 1,}"#, "trailing comma"),
            (b"{\"a\": 1", "EOF"),
            (b"", "EOF"),
        ];
        for (input, fragment) in cases {
            let err = parse_object(input).unwrap_err();
            assert!(err.to_string().contains(fragment), "{}: {err}", String::from_utf8_lossy(input));
        }
        assert_eq!(parse_object(b"[1]"), Err(JsonError::NotAnObject));
    }

    #[test]
    fn keeps_order_and_decimal_text() {
        let map = parse_object("\u{feff}{\"z\": 1.50, \"a\": 1e2, \"n\": 10}".as_bytes()).unwrap();
        assert_eq!(map.keys().collect::<Vec<_>>(), ["z", "a", "n"]);
        // Trailing zeros survive; serde_json only normalises the exponent sign.
        assert_eq!(serde_json::to_string(&map).unwrap(), r#"{"z":1.50,"a":1e+2,"n":10}"#);
    }
}
