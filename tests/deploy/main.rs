//! The deployment files in the repository agree with the code: the example configuration loads
//! and passes the residency rules, and compose.yaml's services, ports and variables are ones the
//! configuration knows.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::result_large_err,
    reason = "tests: a failed expectation is a failed test; figment's Jail returns its own error type"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fhirvault::config::{BackendSettings, Settings, Sources, Sovereignty};
use figment::Jail;
use secrecy::ExposeSecret as _;
use yaml_rust2::{Yaml, YamlLoader};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn the_example_configuration_loads_and_passes_the_residency_rules() {
    // Inside a Jail: the other test sets FHIRVAULT__ variables in a Jail, and Jails take turns;
    // outside one, this load could read them mid-test (and see their `demo` tenant).
    Jail::expect_with(|_| {
        let settings =
            Settings::load(&Sources { file: Some(repo("deploy/fhirvault.example.toml")), ..Sources::default() })
                .expect("deploy/fhirvault.example.toml is valid");
        assert!(settings.database_url().expose_secret().starts_with("postgres://"));
        assert!(matches!(settings.locations["paris"].backend, BackendSettings::S3(_)));
        assert_eq!(settings.tenants["chu-exemple"].sovereignty, Sovereignty::Strict);
        let keycloak = &settings.auth.issuers["chu-keycloak"];
        assert_eq!(keycloak.claims.resolved().role, "realm_access.roles");
        assert_eq!(keycloak.tenants, ["chu-exemple"]);
        let report = fhirvault::residency::report(&settings);
        let reachable: BTreeMap<&str, bool> =
            report.tenants.iter().map(|t| (t.tenant.as_str(), t.reachable_from_outside_eea)).collect();
        assert_eq!(reachable, BTreeMap::from([("chu-exemple", false), ("research-network", true)]));
        Ok(())
    });
}

fn compose() -> Yaml {
    let text = std::fs::read_to_string(repo("compose.yaml")).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

/// A service's mapping, with a YAML merge key (`<<: *anchor`) applied.
fn service(compose: &Yaml, name: &str) -> yaml_rust2::yaml::Hash {
    let node = compose["services"][name].as_hash().unwrap_or_else(|| panic!("service `{name}` in compose.yaml"));
    let mut merged = node.get(&Yaml::from_str("<<")).and_then(Yaml::as_hash).cloned().unwrap_or_default();
    for (k, v) in node {
        if k.as_str() != Some("<<") {
            merged.insert(k.clone(), v.clone());
        }
    }
    merged
}

fn env_example() -> BTreeMap<String, String> {
    std::fs::read_to_string(repo("deploy/compose.env.example"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).unwrap())
        .collect()
}

/// `${NAME}` and `${NAME:?message}` replaced by the value in the example `.env`.
fn substitute(value: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed ${...}") + start;
        let name = rest[start + 2..end].split([':', '-']).next().unwrap();
        out.push_str(env.get(name).unwrap_or_else(|| panic!("`{name}` is missing from deploy/compose.env.example")));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn scalar(y: &Yaml) -> String {
    match y {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

#[test]
fn compose_services_ports_and_variables_exist_in_the_configuration() {
    let compose = compose();
    let example = env_example();
    let names: Vec<String> =
        compose["services"].as_hash().unwrap().keys().map(|k| k.as_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["postgres", "garage", "fhirvault-1", "fhirvault-2"]);

    for replica in ["fhirvault-1", "fhirvault-2"] {
        let svc = service(&compose, replica);
        let env: Vec<(String, String)> = svc[&Yaml::from_str("environment")]
            .as_hash()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str().unwrap().to_owned(), substitute(&scalar(v), &example)))
            .collect();
        assert!(env.iter().all(|(k, _)| k.starts_with(fhirvault::config::ENV_PREFIX)), "{env:?}");

        // The replica's environment, exactly as compose passes it, is a valid configuration.
        Jail::expect_with(|jail| {
            for (k, v) in &env {
                jail.set_env(k, v);
            }
            let settings = Settings::load(&Sources::default()).expect("compose.yaml's variables load");
            // The database and the object store are the compose services, on their ports.
            let db = url::Url::parse(settings.database_url().expose_secret()).unwrap();
            assert_eq!((db.host_str(), db.port()), (Some("postgres"), Some(5432)));
            let BackendSettings::S3(s3) = &settings.locations["garage"].backend else { panic!("S3 location") };
            let endpoint = url::Url::parse(s3.endpoint.as_deref().unwrap()).unwrap();
            assert_eq!(endpoint.host_str(), Some("garage"));
            let garage_toml = std::fs::read_to_string(repo("deploy/garage.toml")).unwrap();
            let s3_port = format!(":{}\"", endpoint.port().unwrap());
            assert!(garage_toml.lines().any(|l| l.starts_with("api_bind_addr") && l.ends_with(&s3_port)), "{s3_port}");
            // The published port reaches the port the server listens on.
            let ports = svc[&Yaml::from_str("ports")].as_vec().unwrap();
            let container_port = scalar(&ports[0]).rsplit(':').next().unwrap().to_owned();
            assert_eq!(settings.http.listen.port().to_string(), container_port);
            assert_eq!(settings.tenants["demo"].location, "garage");
            Ok(())
        });
    }
}
