//! SMART on FHIR scopes: v2 (`user/Observation.rs`) and the v1 forms (`.read`, `.write`, `.*`).
//!
//! Unknown or malformed scope tokens grant nothing (`openid`, `launch`, typos alike). Scopes
//! with v2 query restrictions (`?category=...`) are not supported yet and also grant nothing:
//! granting the unrestricted scope instead would leak.

use crate::ids::ResourceType;

/// The scope forms understood, as published in `/.well-known/smart-configuration`; any
/// resource type may stand in place of `*`.
pub const SUPPORTED_FORMS: [&str; 9] = [
    "patient/*.cruds",
    "user/*.cruds",
    "system/*.cruds",
    "patient/*.read",
    "user/*.read",
    "system/*.read",
    "patient/*.write",
    "user/*.write",
    "system/*.write",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeContext {
    Patient,
    User,
    System,
}

/// One SMART permission letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Permission {
    fn bit(self) -> u8 {
        match self {
            Self::Create => 1,
            Self::Read => 2,
            Self::Update => 4,
            Self::Delete => 8,
            Self::Search => 16,
        }
    }

    pub fn letter(self) -> char {
        match self {
            Self::Create => 'c',
            Self::Read => 'r',
            Self::Update => 'u',
            Self::Delete => 'd',
            Self::Search => 's',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    context: ScopeContext,
    /// `None` is `*`.
    resource: Option<ResourceType>,
    permissions: u8,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    grants: Vec<Grant>,
}

impl Scopes {
    /// Parse a space-separated `scope` claim.
    pub fn parse(scope: &str) -> Self {
        Self { grants: scope.split_ascii_whitespace().filter_map(parse_one).collect() }
    }

    /// Whether some scope in one of `contexts` grants `permission` on `resource`.
    pub fn allows(&self, contexts: &[ScopeContext], resource: ResourceType, permission: Permission) -> bool {
        self.grants.iter().any(|g| {
            contexts.contains(&g.context)
                && g.resource.is_none_or(|r| r == resource)
                && g.permissions & permission.bit() != 0
        })
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }
}

fn parse_one(token: &str) -> Option<Grant> {
    let (context, rest) = token.split_once('/')?;
    let context = match context {
        "patient" => ScopeContext::Patient,
        "user" => ScopeContext::User,
        "system" => ScopeContext::System,
        _ => return None,
    };
    let (resource, perms) = rest.split_once('.')?;
    let resource = match resource {
        "*" => None,
        name => Some(ResourceType::parse(name).ok()?),
    };
    let permissions = match perms {
        "read" => Permission::Read.bit() | Permission::Search.bit(),
        "write" => Permission::Create.bit() | Permission::Update.bit() | Permission::Delete.bit(),
        "*" => 0b1_1111,
        v2 => parse_v2(v2)?,
    };
    Some(Grant { context, resource, permissions })
}

/// `cruds` letters, each at most once, in that order (SMART v2).
fn parse_v2(letters: &str) -> Option<u8> {
    if letters.is_empty() {
        return None;
    }
    let order = ['c', 'r', 'u', 'd', 's'];
    let mut next = 0;
    let mut bits = 0u8;
    for ch in letters.chars() {
        let pos = order.iter().skip(next).position(|&o| o == ch)? + next;
        bits |= 1 << pos;
        next = pos + 1;
    }
    Some(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(s: &str) -> ResourceType {
        ResourceType::parse(s).unwrap()
    }

    #[test]
    fn grants_table() {
        use Permission::*;
        use ScopeContext::*;
        let cases: &[(&str, ScopeContext, &str, Permission, bool)] = &[
            ("user/*.cruds", User, "Patient", Delete, true),
            ("user/*.cruds", System, "Patient", Read, false),
            ("user/Observation.rs", User, "Observation", Read, true),
            ("user/Observation.rs", User, "Observation", Search, true),
            ("user/Observation.rs", User, "Observation", Create, false),
            ("user/Observation.rs", User, "Patient", Read, false),
            ("patient/*.read", Patient, "Condition", Search, true),
            ("patient/*.read", Patient, "Condition", Update, false),
            ("system/Patient.write", System, "Patient", Create, true),
            ("system/Patient.write", System, "Patient", Read, false),
            ("user/*.*", User, "Encounter", Delete, true),
            ("user/*.rc", User, "Patient", Read, false),
            ("user/*.rr", User, "Patient", Read, false),
            ("user/Robot.r", User, "Patient", Read, false),
            ("user/Observation.rs?category=laboratory", User, "Observation", Read, false),
            ("openid fhirUser launch", User, "Patient", Read, false),
            ("openid user/Patient.r", User, "Patient", Read, true),
        ];
        for (scope, ctx, resource, perm, expected) in cases {
            let allowed = Scopes::parse(scope).allows(&[*ctx], rt(resource), *perm);
            assert_eq!(allowed, *expected, "{scope} {ctx:?} {resource} {perm:?}");
        }
    }
}
