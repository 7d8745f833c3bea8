//! OperationOutcome: how a FHIR server says what went wrong (or right).

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

/// The `IssueType` value set (required binding of `OperationOutcome.issue.code`), the codes we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IssueType {
    Invalid,
    Structure,
    Required,
    Value,
    Invariant,
    Security,
    Login,
    Forbidden,
    Expired,
    Processing,
    NotSupported,
    Duplicate,
    NotFound,
    Deleted,
    TooLong,
    BusinessRule,
    Conflict,
    Exception,
    Informational,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutcomeIssue {
    pub severity: Severity,
    pub code: IssueType,
    pub diagnostics: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expression: Vec<String>,
}

impl OutcomeIssue {
    pub fn error(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self { severity: Severity::Error, code, diagnostics: diagnostics.into(), expression: Vec::new() }
    }

    pub fn information(diagnostics: impl Into<String>) -> Self {
        Self {
            severity: Severity::Information,
            code: IssueType::Informational,
            diagnostics: diagnostics.into(),
            expression: Vec::new(),
        }
    }

    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression.push(expression.into());
        self
    }
}

#[derive(Serialize)]
struct OperationOutcome<'a> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    issue: &'a [OutcomeIssue],
}

/// Serialize an OperationOutcome with these issues.
pub fn to_json(issues: &[OutcomeIssue]) -> Vec<u8> {
    let oo = OperationOutcome { resource_type: "OperationOutcome", issue: issues };
    // INVARIANT: plain structs of strings always serialize.
    serde_json::to_vec(&oo).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::{model, validate};

    #[test]
    fn our_outcomes_are_valid_fhir() {
        let issues = [
            OutcomeIssue::error(IssueType::NotFound, "no such thing").at("Patient.id"),
            OutcomeIssue::information("all good"),
            OutcomeIssue::error(IssueType::TooLong, "too big"),
        ];
        let value: serde_json::Value = serde_json::from_slice(&to_json(&issues)).unwrap();
        let map = value.as_object().unwrap();
        assert_eq!(validate::validate(model::r4().unwrap(), "OperationOutcome", map), vec![]);
        assert_eq!(value["issue"][0]["code"], "not-found");
        assert_eq!(value["issue"][2]["code"], "too-long");
    }
}
