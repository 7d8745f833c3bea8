//! Residency: the server refuses to start on a configuration that breaks the EEA rules (naming
//! the key and the reason), and an object moved to another location no longer opens.

use std::process::Command;

use fhirvault::config::{BackendSettings, LocationSettings, OperatorSettings};

use crate::binary::BIN;
use crate::helpers::{patient, spawn_app_with};

/// Start `fhirvault serve` on the configuration `toml`; it must refuse. Its error output.
pub fn refused(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fhirvault.toml");
    std::fs::write(&config, toml).unwrap();
    let output = Command::new(BIN)
        .current_dir(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success(), "the server must refuse to start on:\n{toml}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const PARIS: &str =
    "[locations.paris]\njurisdiction = \"FR\"\noperator = { country = \"FR\" }\nbackend = { kind = \"local\" }\n";

#[test]
fn the_server_refuses_to_start_outside_the_rules() {
    let outside = "[locations.virginia]\njurisdiction = \"US\"\noperator = { country = \"US\" }\n\
                   backend = { kind = \"local\" }\n[tenants.demo]\nlocation = \"virginia\"\n";
    let err = refused(outside);
    assert!(err.contains("locations.virginia.jurisdiction") && err.contains("outside the EEA"), "{err}");

    let wrong_country = format!("{PARIS}[tenants.demo]\nresidency = \"DE\"\nlocation = \"paris\"\n");
    let err = refused(&wrong_country);
    assert!(err.contains("tenants.demo.location") && err.contains("outside the tenant's residency DE"), "{err}");

    let cloud_act = "[locations.paris]\njurisdiction = \"FR\"\n\
                     operator = { name = \"Hyperscaler France\", country = \"FR\", extraterritorial_laws = [\"US CLOUD Act\"] }\n\
                     backend = { kind = \"local\" }\n[tenants.demo]\nsovereignty = \"strict\"\nlocation = \"paris\"\n";
    let err = refused(cloud_act);
    assert!(err.contains("tenants.demo.location") && err.contains("US CLOUD Act"), "{err}");

    // The key provider holds the KEKs: a `strict` tenant refuses one outside the EEA, or one
    // whose operator a non-EU law reaches. (Checked before the token is ever opened.)
    let hsm = |jurisdiction: &str, operator: &str| {
        format!(
            "{PARIS}[tenants.demo]\nsovereignty = \"strict\"\nlocation = \"paris\"\n[keys.provider]\n\
             kind = \"pkcs11\"\nmodule = \"/nonexistent/libpkcs11.so\"\ntoken_label = \"kek\"\npin = \"1234\"\n\
             jurisdiction = \"{jurisdiction}\"\noperator = {operator}\n"
        )
    };
    let err = refused(&hsm("CH", "{ country = \"CH\" }"));
    assert!(err.contains("keys.provider.jurisdiction") && err.contains("runs in CH, outside the EEA"), "{err}");
    let err = refused(&hsm("DE", "{ country = \"DE\", extraterritorial_laws = [\"US CLOUD Act\"] }"));
    assert!(err.contains("keys.provider.operator") && err.contains("US CLOUD Act"), "{err}");

    let transit = "[keys.provider]\nkind = \"transit\"\naddress = \"http://kms.example.eu:8200\"\ntoken = \"t\"\n\
                   jurisdiction = \"FR\"\noperator = { country = \"FR\" }\n";
    let err = refused(transit);
    assert!(err.contains("keys.provider.address") && err.contains("must be `https`"), "{err}");

    let err = refused("[database]\nurl = \"mysql://db/fhir\"\n");
    assert!(err.contains("database.url") && err.contains("unsupported scheme `mysql`"), "{err}");
}

#[test]
fn the_residency_report_comes_from_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fhirvault.toml");
    let toml =
        format!("{PARIS}[tenants.chu-lyon]\nresidency = \"FR\"\nsovereignty = \"strict\"\nlocation = \"paris\"\n");
    std::fs::write(&config, toml).unwrap();
    let run = |format: &str| {
        let output = Command::new(BIN)
            .args(["residency", "report", "--format", format, "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let json: serde_json::Value = serde_json::from_str(&run("json")).unwrap();
    let tenant = &json["tenants"][0];
    assert_eq!(tenant["tenant"], "chu-lyon");
    assert_eq!(tenant["records"]["jurisdiction"], "FR");
    assert_eq!(tenant["reachable_from_outside_eea"], false);
    let md = run("md");
    assert!(md.contains("## Tenant `chu-lyon`") && md.contains("location `paris`"), "{md}");
}

#[tokio::test]
async fn an_object_moved_to_another_location_does_not_open() {
    let elsewhere = tempfile::tempdir().unwrap();
    let lyon = LocationSettings {
        jurisdiction: "FR".to_owned(),
        operator: OperatorSettings { name: None, country: "FR".to_owned(), extraterritorial_laws: Vec::new() },
        backend: BackendSettings::Local { path: Some(elsewhere.path().to_path_buf()) },
    };
    let app = spawn_app_with(|s| {
        s.locations.insert("lyon".to_owned(), lyon);
    })
    .await;
    // Written through a second server on the same index and stores: `app` has not seen the
    // version, so it reads the row from the index (a server reads a version it wrote or read
    // itself from memory, where a later change to the index row does not reach).
    let shared = app.settings.clone();
    let writer = spawn_app_with(move |s| *s = shared).await;
    let id = writer.create_ok(&patient("Moved")).await["id"].as_str().unwrap().to_owned();

    // Someone with access to both stores and the index copies the object to `lyon` and points
    // the index row at it: the location is bound into the AAD, so it does not open.
    let (_, file) = app.object_files("Patient", &id).await.remove(0);
    let relative = file.strip_prefix(app.data_path().join("objects")).unwrap();
    std::fs::create_dir_all(elsewhere.path().join(relative).parent().unwrap()).unwrap();
    std::fs::copy(&file, elsewhere.path().join(relative)).unwrap();
    let pool = app.index().await;
    sqlx::query("UPDATE resource_versions SET location = 'lyon'").execute(&pool).await.unwrap();

    let response = app.get(&format!("Patient/{id}")).await;
    assert_eq!(response.status(), 500);
    let detail: String = sqlx::query_scalar("SELECT detail FROM audit_records ORDER BY seq DESC LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(detail.starts_with("integrity failure"), "{detail}");
}
