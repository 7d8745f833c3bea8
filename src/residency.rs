//! Residency: where each tenant's records, keys and identity provider live, and the rules the
//! configuration must satisfy before the server starts.
//!
//! **Architecture Invariant:** these checks read the configuration only. They are what the
//! operator declared, not what the network does; SECURITY.md says what that does and does not
//! guarantee. The storage location's name is also bound into every object's AAD, so an object
//! copied to another location does not open.

use serde::Serialize;

use crate::config::{
    BackendSettings, IssuerSettings, KeyProviderSettings, OperatorSettings, Profile, Settings, Sovereignty,
};
use crate::ids::CountryCode;

/// The European Economic Area: the 27 EU member states, Iceland, Liechtenstein and Norway
/// (ISO 3166-1 alpha-2; Greece is `GR`).
pub const EEA: [&str; 30] = [
    "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE", "IS", "IT", "LI", "LT",
    "LU", "LV", "MT", "NL", "NO", "PL", "PT", "RO", "SE", "SI", "SK",
];

pub fn in_eea(country: &str) -> bool {
    EEA.contains(&country)
}

/// Countries with an EU adequacy decision under GDPR art. 45, as of 2026: Andorra, Argentina,
/// Canada, the Faroe Islands, Guernsey, Israel, the Isle of Man, Japan, Jersey, New Zealand, the
/// Republic of Korea, Switzerland, the United Kingdom and Uruguay. The United States is left
/// out: its decision (the Data Privacy Framework) covers only certified organizations, which a
/// token cannot show; Canada's covers organizations under PIPEDA.
pub const ADEQUACY: [&str; 14] = ["AD", "AR", "CA", "FO", "GG", "IL", "IM", "JP", "JE", "NZ", "KR", "CH", "GB", "UY"];

/// The zone of a country for the access policies: `EEA`, `adequacy` or `other`.
pub fn zone(country: &str) -> &'static str {
    if in_eea(country) {
        "EEA"
    } else if ADEQUACY.contains(&country) {
        "adequacy"
    } else {
        "other"
    }
}

/// A configuration the residency rules refuse: the key at fault and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    pub reason: String,
}

fn violation(key: impl Into<String>, reason: impl Into<String>) -> Violation {
    Violation { key: key.into(), reason: reason.into() }
}

fn country(key: &str, raw: &str) -> Result<(), Violation> {
    CountryCode::parse(raw)
        .map(|_| ())
        .map_err(|_| violation(key, format!("`{raw}` is not an ISO 3166-1 alpha-2 country code such as `FR`")))
}

/// Why a `strict` tenant cannot use this operator, if it cannot.
fn strict_objection(operator: &OperatorSettings) -> Option<String> {
    if !operator.extraterritorial_laws.is_empty() {
        return Some(format!("is subject to {}", operator.extraterritorial_laws.join(", ")));
    }
    if !in_eea(&operator.country) {
        return Some(format!("is seated outside the EEA ({})", operator.country));
    }
    None
}

/// Every rule, in the order a reader of the configuration meets them; the first violation wins.
pub fn check(settings: &Settings) -> Result<(), Violation> {
    if settings.profile == Profile::Production && settings.hosting.is_none() {
        return Err(violation(
            "hosting",
            "the production profile must declare where the server runs (jurisdiction and operator)",
        ));
    }
    let hosting = settings.hosting();
    let sites = std::iter::once(("hosting".to_owned(), &hosting.jurisdiction, &hosting.operator))
        .chain(settings.locations.iter().map(|(name, l)| (format!("locations.{name}"), &l.jurisdiction, &l.operator)));
    for (key, jurisdiction, operator) in sites {
        country(&format!("{key}.jurisdiction"), jurisdiction)?;
        country(&format!("{key}.operator.country"), &operator.country)?;
        if !in_eea(jurisdiction) {
            return Err(violation(
                format!("{key}.jurisdiction"),
                format!("`{jurisdiction}` is outside the EEA; health data may only be stored and served in the EEA"),
            ));
        }
    }
    for (name, location) in &settings.locations {
        // A local directory is on the server's own disks: it is wherever the server is.
        if matches!(location.backend, BackendSettings::Local { .. }) && location.jurisdiction != hosting.jurisdiction {
            return Err(violation(
                format!("locations.{name}.jurisdiction"),
                format!(
                    "location `{name}` is a local directory, so it is where the server runs ({}), not {}",
                    hosting.jurisdiction, location.jurisdiction
                ),
            ));
        }
    }
    for (id, tenant) in &settings.tenants {
        let key = |field: &str| format!("tenants.{id}.{field}");
        if tenant.residency != "EEA" {
            country(&key("residency"), &tenant.residency)?;
            if !in_eea(&tenant.residency) {
                return Err(violation(
                    key("residency"),
                    format!("`{}` is outside the EEA; use `EEA` or an EEA country", tenant.residency),
                ));
            }
        }
        let Some(location) = settings.locations.get(&tenant.location) else {
            return Err(violation(
                key("location"),
                format!("no location `{}` is declared under `locations`", tenant.location),
            ));
        };
        if tenant.residency != "EEA" && location.jurisdiction != tenant.residency {
            return Err(violation(
                key("location"),
                format!(
                    "location `{}` is in {}, outside the tenant's residency {}",
                    tenant.location, location.jurisdiction, tenant.residency
                ),
            ));
        }
        if tenant.sovereignty == Sovereignty::Strict {
            if let Some(why) = strict_objection(&location.operator) {
                return Err(violation(
                    key("location"),
                    format!("the tenant is `strict` but the operator of location `{}` {why}", tenant.location),
                ));
            }
            if let Some(why) = strict_objection(&hosting.operator) {
                return Err(violation(
                    "hosting.operator",
                    format!("tenant `{id}` is `strict` but the operator of the server's site {why}"),
                ));
            }
        }
    }
    for (name, issuer) in &settings.auth.issuers {
        check_issuer(settings, name, issuer)?;
    }
    check_key_provider(settings)
}

/// The key provider holds every tenant's KEKs: whoever can compel its operator can open the
/// records. `strict` tenants accept only one in the EEA under an operator no non-EU law reaches.
fn check_key_provider(settings: &Settings) -> Result<(), Violation> {
    if let KeyProviderSettings::Transit(t) = &settings.keys.provider {
        match url::Url::parse(&t.address) {
            Ok(url) if url.scheme() == "https" => {}
            Ok(url) if url.scheme() == "http" && is_loopback(&url) => {}
            Ok(_) => {
                return Err(violation(
                    "keys.provider.address",
                    "tenant keys cross this connection: it must be `https` (plain `http` only on loopback)",
                ));
            }
            Err(e) => return Err(violation("keys.provider.address", format!("`{}` is not a URL: {e}", t.address))),
        }
    }
    let Some((jurisdiction, operator)) = settings.keys.provider.site() else {
        return Ok(());
    };
    country("keys.provider.jurisdiction", jurisdiction)?;
    country("keys.provider.operator.country", &operator.country)?;
    for (id, tenant) in &settings.tenants {
        if tenant.sovereignty != Sovereignty::Strict {
            continue;
        }
        if !in_eea(jurisdiction) {
            return Err(violation(
                "keys.provider.jurisdiction",
                format!("tenant `{id}` is `strict` but the key provider runs in {jurisdiction}, outside the EEA"),
            ));
        }
        if let Some(why) = strict_objection(operator) {
            return Err(violation(
                "keys.provider.operator",
                format!("tenant `{id}` is `strict` but the operator of the key provider {why}"),
            ));
        }
    }
    Ok(())
}

/// Why the key provider is reachable by a non-EU law, if it is.
fn key_provider_exposure(settings: &Settings) -> Option<String> {
    let (jurisdiction, operator) = settings.keys.provider.site()?;
    if in_eea(jurisdiction) {
        strict_objection(operator).map(|why| format!("key provider: operator {why}"))
    } else {
        Some(format!("key provider: runs in {jurisdiction}, outside the EEA"))
    }
}

/// An identity provider vouches for who reads the records: `strict` tenants accept only one
/// that runs in the EEA under an operator no non-EU law reaches.
fn check_issuer(settings: &Settings, name: &str, issuer: &IssuerSettings) -> Result<(), Violation> {
    let key = |field: &str| format!("auth.issuers.{name}.{field}");
    country(&key("jurisdiction"), &issuer.jurisdiction)?;
    country(&key("operator.country"), &issuer.operator.country)?;
    match url::Url::parse(&issuer.issuer) {
        Ok(url) if url.scheme() == "https" => {}
        Ok(url) if url.scheme() == "http" && is_loopback(&url) => {}
        Ok(_) => {
            return Err(violation(key("issuer"), "an issuer must be an `https` URL (plain `http` only on loopback)"));
        }
        Err(e) => return Err(violation(key("issuer"), format!("`{}` is not a URL: {e}", issuer.issuer))),
    }
    if issuer.tenants.is_empty() {
        return Err(violation(key("tenants"), "name the tenants that accept this issuer's tokens"));
    }
    for tenant_id in &issuer.tenants {
        let Some(tenant) = settings.tenants.get(tenant_id) else {
            return Err(violation(key("tenants"), format!("no tenant `{tenant_id}` is declared under `tenants`")));
        };
        if tenant.sovereignty != Sovereignty::Strict {
            continue;
        }
        if !in_eea(&issuer.jurisdiction) {
            return Err(violation(
                key("jurisdiction"),
                format!(
                    "tenant `{tenant_id}` is `strict` but identity provider `{name}` runs in {}, outside the EEA",
                    issuer.jurisdiction
                ),
            ));
        }
        if let Some(why) = strict_objection(&issuer.operator) {
            return Err(violation(
                key("operator"),
                format!("tenant `{tenant_id}` is `strict` but the operator of identity provider `{name}` {why}"),
            ));
        }
    }
    Ok(())
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// Tenants whose records are at a site, or whose users are vouched for by an identity
/// provider, that a non-EU law can reach (allowed for `standard` tenants; the server logs a
/// warning for each at start).
pub fn exposed_tenants(settings: &Settings) -> Vec<(String, String)> {
    let locations = settings.tenants.iter().filter_map(|(id, t)| {
        let location = settings.locations.get(&t.location)?;
        strict_objection(&location.operator)
            .map(|why| (id.clone(), format!("location `{}`: operator {why}", t.location)))
    });
    let issuers = settings.auth.issuers.iter().flat_map(|(name, issuer)| {
        let why = if in_eea(&issuer.jurisdiction) {
            strict_objection(&issuer.operator).map(|why| format!("operator {why}"))
        } else {
            Some(format!("runs in {}, outside the EEA", issuer.jurisdiction))
        };
        why.into_iter().flat_map(move |why| {
            issuer.tenants.iter().map(move |t| (t.clone(), format!("identity provider `{name}`: {why}")))
        })
    });
    let keys = key_provider_exposure(settings)
        .into_iter()
        .flat_map(|why| settings.tenants.keys().map(move |id| (id.clone(), why.clone())));
    locations.chain(issuers).chain(keys).collect()
}

/// The residency map HDS asks hosts to publish, built from the configuration alone.
#[derive(Debug, Serialize)]
pub struct Report {
    pub generated_from: &'static str,
    pub tenants: Vec<TenantReport>,
}

#[derive(Debug, Serialize)]
pub struct TenantReport {
    pub tenant: String,
    pub residency: String,
    pub sovereignty: Sovereignty,
    /// Where the sealed records are.
    pub records: Placement,
    /// Where the keys that open them are.
    pub keys: Placement,
    /// Who vouches for the users.
    pub identity: Vec<Placement>,
    /// Where the server that handles plaintext runs.
    pub server: Placement,
    /// Whether any of the above could be compelled from outside the EEA.
    pub reachable_from_outside_eea: bool,
}

#[derive(Debug, Serialize)]
pub struct Placement {
    pub what: String,
    pub jurisdiction: String,
    pub operator: String,
    pub operator_country: String,
    pub extraterritorial_laws: Vec<String>,
    pub reachable_from_outside_eea: bool,
}

impl Placement {
    fn new(what: String, jurisdiction: &str, operator: &OperatorSettings) -> Self {
        Self {
            what,
            jurisdiction: jurisdiction.to_owned(),
            operator: operator.name.clone().unwrap_or_else(|| "(not named)".to_owned()),
            operator_country: operator.country.clone(),
            extraterritorial_laws: operator.extraterritorial_laws.clone(),
            reachable_from_outside_eea: !in_eea(jurisdiction) || strict_objection(operator).is_some(),
        }
    }
}

pub fn report(settings: &Settings) -> Report {
    let host = &settings.hosting();
    let server = || Placement::new("the fhirvault server".to_owned(), &host.jurisdiction, &host.operator);
    let tenants = settings
        .tenants
        .iter()
        .map(|(id, tenant)| {
            let records = match settings.locations.get(&tenant.location) {
                Some(location) => {
                    let backend = match &location.backend {
                        BackendSettings::Local { .. } => "local directory on the server".to_owned(),
                        BackendSettings::S3(s3) => {
                            format!("S3 bucket `{}` at {}", s3.bucket, s3.endpoint.as_deref().unwrap_or("AWS"))
                        }
                    };
                    Placement::new(
                        format!("location `{}`: {backend}", tenant.location),
                        &location.jurisdiction,
                        &location.operator,
                    )
                }
                None => Placement::new(format!("undeclared location `{}`", tenant.location), "??", &host.operator),
            };
            let keys = match &settings.keys.provider {
                KeyProviderSettings::InsecureLocalFile { .. } => Placement::new(
                    "local key file on the server (development only)".to_owned(),
                    &host.jurisdiction,
                    &host.operator,
                ),
                KeyProviderSettings::Pkcs11(p) => {
                    Placement::new(format!("PKCS#11 token `{}` (HSM)", p.token_label), &p.jurisdiction, &p.operator)
                }
                KeyProviderSettings::Transit(t) => Placement::new(
                    format!("transit engine `{}` at {}", t.mount, t.address),
                    &t.jurisdiction,
                    &t.operator,
                ),
            };
            let mut identity = if settings.dev_issuer_enabled() {
                vec![Placement::new(
                    "development token issuer on the server (development only)".to_owned(),
                    &host.jurisdiction,
                    &host.operator,
                )]
            } else {
                Vec::new()
            };
            identity.extend(settings.auth.issuers.iter().filter(|(_, i)| i.tenants.contains(id)).map(
                |(name, issuer)| {
                    Placement::new(
                        format!("identity provider `{name}` ({})", issuer.issuer),
                        &issuer.jurisdiction,
                        &issuer.operator,
                    )
                },
            ));
            let server = server();
            let reachable = records.reachable_from_outside_eea
                || keys.reachable_from_outside_eea
                || server.reachable_from_outside_eea
                || identity.iter().any(|p| p.reachable_from_outside_eea);
            TenantReport {
                tenant: id.clone(),
                residency: tenant.residency.clone(),
                sovereignty: tenant.sovereignty,
                records,
                keys,
                identity,
                server,
                reachable_from_outside_eea: reachable,
            }
        })
        .collect();
    Report { generated_from: "configuration", tenants }
}

impl Report {
    pub fn to_markdown(&self) -> String {
        let mut out = String::from(
            "# Residency report\n\nGenerated from the configuration alone: what the operator declared for each site.\n",
        );
        for t in &self.tenants {
            let sovereignty = match t.sovereignty {
                Sovereignty::Standard => "standard",
                Sovereignty::Strict => "strict",
            };
            out.push_str(&format!(
                "\n## Tenant `{}`\n\nResidency {}, sovereignty {sovereignty}. Reachable from outside the EEA: **{}**.\n\n",
                t.tenant,
                t.residency,
                yes_no(t.reachable_from_outside_eea)
            ));
            out.push_str("| Role | Where | Jurisdiction | Operator | Operator's country | Extraterritorial laws | Reachable from outside the EEA |\n");
            out.push_str("|---|---|---|---|---|---|---|\n");
            let rows = [("Records", &t.records), ("Keys", &t.keys), ("Server", &t.server)]
                .into_iter()
                .chain(t.identity.iter().map(|p| ("Identity provider", p)));
            for (role, p) in rows {
                let laws = if p.extraterritorial_laws.is_empty() {
                    "none".to_owned()
                } else {
                    p.extraterritorial_laws.join(", ")
                };
                out.push_str(&format!(
                    "| {role} | {} | {} | {} | {} | {laws} | {} |\n",
                    p.what,
                    p.jurisdiction,
                    p.operator,
                    p.operator_country,
                    yes_no(p.reachable_from_outside_eea)
                ));
            }
            if t.identity.is_empty() {
                out.push_str("| Identity provider | none configured | | | | | |\n");
            }
        }
        out
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LocationSettings, S3Settings, SiteSettings, TenantSettings};

    fn settings() -> Settings {
        Settings::default()
    }

    fn location(jurisdiction: &str, operator_country: &str, laws: &[&str]) -> LocationSettings {
        LocationSettings {
            jurisdiction: jurisdiction.to_owned(),
            operator: OperatorSettings {
                name: Some("Operator".to_owned()),
                country: operator_country.to_owned(),
                extraterritorial_laws: laws.iter().map(|l| (*l).to_owned()).collect(),
            },
            backend: BackendSettings::S3(S3Settings {
                endpoint: Some("https://s3.example.eu".to_owned()),
                region: "eu".to_owned(),
                bucket: "records".to_owned(),
                prefix: None,
                access_key_id: None,
                secret_access_key: None,
                path_style: true,
                allow_http: false,
            }),
        }
    }

    fn with(mut s: Settings, name: &str, l: LocationSettings, tenant: TenantSettings) -> Settings {
        s.locations.insert(name.to_owned(), l);
        s.tenants.insert("t".to_owned(), TenantSettings { location: name.to_owned(), ..tenant });
        s
    }

    #[test]
    fn the_embedded_default_passes() {
        assert_eq!(check(&settings()), Ok(()));
    }

    #[test]
    fn a_location_outside_the_eea_is_refused() {
        let s = with(settings(), "virginia", location("US", "FR", &[]), TenantSettings::default());
        let v = check(&s).unwrap_err();
        assert_eq!(v.key, "locations.virginia.jurisdiction");
        assert!(v.reason.contains("outside the EEA"), "{v:?}");
        let mut s = settings();
        s.hosting = Some(SiteSettings { jurisdiction: "CH".to_owned(), ..SiteSettings::default() });
        assert_eq!(check(&s).unwrap_err().key, "hosting.jurisdiction");
    }

    #[test]
    fn production_declares_its_hosting_site_and_local_locations_follow_it() {
        let mut s = Settings { profile: Profile::Production, ..settings() };
        assert_eq!(check(&s).unwrap_err().key, "hosting");
        s.hosting = Some(SiteSettings { jurisdiction: "DE".to_owned(), ..SiteSettings::default() });
        // The default `local` location says FR, but a local directory is where the server is.
        let v = check(&s).unwrap_err();
        assert_eq!(v.key, "locations.local.jurisdiction");
        assert!(v.reason.contains("where the server runs (DE)"), "{v:?}");
        s.locations.get_mut("local").unwrap().jurisdiction = "DE".to_owned();
        assert_eq!(check(&s), Ok(()));
    }

    #[test]
    fn a_tenant_location_outside_its_residency_is_refused() {
        let tenant = TenantSettings { residency: "FR".to_owned(), ..TenantSettings::default() };
        let s = with(settings(), "frankfurt", location("DE", "DE", &[]), tenant.clone());
        let v = check(&s).unwrap_err();
        assert_eq!(v.key, "tenants.t.location");
        assert!(v.reason.contains("outside the tenant's residency FR"), "{v:?}");
        assert_eq!(check(&with(settings(), "paris", location("FR", "DE", &[]), tenant)), Ok(()));
        let outside = TenantSettings { residency: "GB".to_owned(), ..TenantSettings::default() };
        assert_eq!(
            check(&with(settings(), "paris", location("FR", "FR", &[]), outside)).unwrap_err().key,
            "tenants.t.residency"
        );
        let missing = TenantSettings { location: "nowhere".to_owned(), ..TenantSettings::default() };
        let mut s = settings();
        s.tenants.insert("t".to_owned(), missing);
        assert_eq!(check(&s).unwrap_err().key, "tenants.t.location");
    }

    #[test]
    fn a_strict_tenant_refuses_operators_under_extraterritorial_laws() {
        let strict = TenantSettings { sovereignty: Sovereignty::Strict, ..TenantSettings::default() };
        let hyperscaler = location("FR", "US", &["US CLOUD Act"]);
        let v = check(&with(settings(), "paris", hyperscaler.clone(), strict.clone())).unwrap_err();
        assert_eq!(v.key, "tenants.t.location");
        assert!(v.reason.contains("US CLOUD Act"), "{v:?}");
        let v = check(&with(settings(), "paris", location("FR", "US", &[]), strict.clone())).unwrap_err();
        assert!(v.reason.contains("seated outside the EEA"), "{v:?}");
        // A standard tenant may use it; the report says the data is reachable.
        let s = with(settings(), "paris", hyperscaler, TenantSettings::default());
        assert_eq!(check(&s), Ok(()));
        assert_eq!(exposed_tenants(&s).len(), 1);
        let r = report(&s);
        let t = r.tenants.iter().find(|t| t.tenant == "t").unwrap();
        assert!(t.reachable_from_outside_eea && t.records.reachable_from_outside_eea);
        // The server's own site counts too.
        let mut s = with(settings(), "paris", location("FR", "FR", &[]), strict);
        let mut hosting = SiteSettings::default();
        hosting.operator.extraterritorial_laws = vec!["US CLOUD Act".to_owned()];
        s.hosting = Some(hosting);
        assert_eq!(check(&s).unwrap_err().key, "hosting.operator");
    }

    #[test]
    fn bad_country_codes_are_named() {
        let s = with(settings(), "paris", location("France", "FR", &[]), TenantSettings::default());
        let v = check(&s).unwrap_err();
        assert_eq!(v.key, "locations.paris.jurisdiction");
        assert!(v.reason.contains("ISO 3166-1"), "{v:?}");
    }

    #[test]
    fn the_report_covers_every_tenant_in_both_formats() {
        let r = report(&settings());
        assert_eq!(r.tenants.len(), 1);
        let md = r.to_markdown();
        assert!(md.contains("## Tenant `demo`") && md.contains("| Records | location `local`"), "{md}");
        assert!(md.contains("| Keys | local key file on the server (development only) | FR"), "{md}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["tenants"][0]["records"]["jurisdiction"], "FR");
        assert_eq!(json["tenants"][0]["reachable_from_outside_eea"], false);
    }
}
