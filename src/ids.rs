//! Typed identifiers that cross module boundaries.
//!
//! Every identifier is parsed once, at the edge, into a newtype with a private field; the rest
//! of the code can rely on its shape (parse, don't validate).

use std::fmt;

use crate::fhir::resource_types::RESOURCE_TYPES;

/// Why an identifier was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("`{0}` is not a valid tenant id (1-63 characters: lowercase letters, digits, `-`)")]
    Tenant(String),
    #[error("`{0}` is not an R4 resource type")]
    ResourceType(String),
    #[error("`{0}` is not a valid resource id (1-64 characters: letters, digits, `-`, `.`)")]
    ResourceId(String),
    #[error("`{0}` is not a valid version id (a positive integer)")]
    VersionId(String),
    #[error("`{0}` is not an ISO 3166-1 alpha-2 country code")]
    Country(String),
}

/// A tenant: one hospital, research platform or other customer, isolated by key and prefix.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Box<str>);

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok { Ok(Self(s.into())) } else { Err(IdError::Tenant(s.to_owned())) }
    }

    /// The scope of keys that belong to the server rather than to a tenant (the audit log's
    /// signing key): kept and wrapped like a tenant's, under a KEK of its own. No tenant can
    /// have this id, since tenant ids do not start with `-`.
    pub fn server_scope() -> Self {
        Self("-server".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One of the 146 resource types of FHIR R4 (4.0.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType(&'static str);

impl ResourceType {
    pub const PATIENT: Self = Self("Patient");
    pub const AUDIT_EVENT: Self = Self("AuditEvent");

    pub fn parse(s: &str) -> Result<Self, IdError> {
        RESOURCE_TYPES
            .binary_search(&s)
            .ok()
            .and_then(|i| RESOURCE_TYPES.get(i))
            .map(|name| Self(name))
            .ok_or_else(|| IdError::ResourceType(s.to_owned()))
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }

    /// Every R4 resource type, in alphabetical order.
    pub fn all() -> impl Iterator<Item = Self> {
        RESOURCE_TYPES.iter().map(|name| Self(name))
    }
}

/// A logical resource id (`[A-Za-z0-9\-\.]{1,64}`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId(Box<str>);

impl ResourceId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok =
            !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if ok { Ok(Self(s.into())) } else { Err(IdError::ResourceId(s.to_owned())) }
    }

    /// A fresh server-assigned id: a random UUID (122 random bits), never reused.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string().into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A version of a resource: 1, 2, 3... in the order the server committed them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionId(u32);

impl VersionId {
    pub const FIRST: Self = Self(1);

    pub fn parse(s: &str) -> Result<Self, IdError> {
        match s.parse::<u32>() {
            Ok(n) if n > 0 && !s.starts_with('0') && !s.starts_with('+') => Ok(Self(n)),
            _ => Err(IdError::VersionId(s.to_owned())),
        }
    }

    pub fn from_u32(n: u32) -> Result<Self, IdError> {
        if n == 0 { Err(IdError::VersionId(n.to_string())) } else { Ok(Self(n)) }
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// The version after this one, or `None` past `u32::MAX` updates.
    pub fn next(self) -> Option<Self> {
        self.0.checked_add(1).map(Self)
    }
}

/// An ISO 3166-1 alpha-2 country code, upper case (`FR`, `DE`, `US`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        match s.as_bytes() {
            [a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => Ok(Self([*a, *b])),
            _ => Err(IdError::Country(s.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        // INVARIANT: both bytes are ASCII upper-case letters (checked in `parse`).
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($t), self.as_str())
            }
        }
    )*};
}

display_as_str!(TenantId, ResourceType, ResourceId, CountryCode);

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VersionId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        for ok in ["demo", "chu-lyon", "a", "h0spital"] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Demo", "-x", "x-", "a/b", "a b", &"x".repeat(64)] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resource_types_are_the_r4_list() {
        assert_eq!(ResourceType::all().count(), 146);
        assert!(ResourceType::parse("Patient").is_ok());
        assert!(ResourceType::parse("MedicinalProductPackaged").is_ok());
        for bad in ["patient", "Resource", "DomainResource", "SubscriptionStatus", "User", ""] {
            assert!(ResourceType::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resource_ids() {
        assert!(ResourceId::parse("example").is_ok());
        assert!(ResourceId::parse("a.b-C9").is_ok());
        assert!(ResourceId::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "a_b", "a/b", "é", &"a".repeat(65)] {
            assert!(ResourceId::parse(bad).is_err(), "{bad}");
        }
        assert_ne!(ResourceId::generate(), ResourceId::generate());
    }

    #[test]
    fn version_ids() {
        assert_eq!(VersionId::parse("1").unwrap().get(), 1);
        assert_eq!(VersionId::parse("42").unwrap().get(), 42);
        for bad in ["0", "01", "-1", "+1", "x", "", "4294967296"] {
            assert!(VersionId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn countries() {
        assert_eq!(CountryCode::parse("FR").unwrap().as_str(), "FR");
        for bad in ["fr", "FRA", "F", "", "1A"] {
            assert!(CountryCode::parse(bad).is_err(), "{bad}");
        }
    }
}
