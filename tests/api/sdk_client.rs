//! An independent client (fhir-sdk, R4B models) drives the server: create, read, conditional
//! update, vread, history, delete, capabilities.

use fhir_sdk::client::{Client, RequestSettings, ResourceWrite as _};
use fhir_sdk::r4b::codes::AdministrativeGender;
use fhir_sdk::r4b::resources::Patient;
use fhir_sdk::r4b::types::HumanName;
use fhir_sdk::version::FhirR4B;

use crate::helpers::spawn_app;

#[tokio::test]
async fn fhir_sdk_client_round_trip() {
    let app = spawn_app().await;
    let bearer = format!("Bearer {}", app.practitioner()).parse().unwrap();
    let settings = RequestSettings::default().header(fhir_sdk::header::AUTHORIZATION, bearer);
    let client: Client<FhirR4B> = Client::builder()
        .base_url(format!("{}/", app.base).parse().unwrap())
        .request_settings(settings)
        .build()
        .unwrap();

    let capabilities = client.capabilities().await.unwrap();
    assert_eq!(capabilities.rest.len(), 1);

    let mut patient = Patient::builder()
        .active(true)
        .gender(AdministrativeGender::Female)
        .name(vec![Some(HumanName::builder().family("Sdkclient".to_owned()).build().unwrap())])
        .build()
        .unwrap();
    let id = patient.create(&client).await.unwrap();
    assert_eq!(patient.meta.as_ref().and_then(|m| m.version_id.clone()).as_deref(), Some("1"));

    let read = client.read::<Patient>(&id).await.unwrap().unwrap();
    assert_eq!(read.name[0].as_ref().unwrap().family.as_deref(), Some("Sdkclient"));
    assert_eq!(read.gender, Some(AdministrativeGender::Female));

    let mut changed = read.clone();
    changed.active = Some(false);
    let created = changed.update(true, &client).await.unwrap();
    assert!(!created);
    let v1 = client.read_version::<Patient>(&id, "1").await.unwrap().unwrap();
    assert_eq!(v1.active, Some(true));
    let v2 = client.read::<Patient>(&id).await.unwrap().unwrap();
    assert_eq!(v2.active, Some(false));

    // A conditional update from the stale copy (version 1) must be refused.
    let mut stale = read;
    stale.active = Some(true);
    assert!(stale.update(true, &client).await.is_err());

    let history = client.history::<Patient>(Some(&id)).await.unwrap();
    assert_eq!(history.entries().count(), 2);

    changed.delete(&client).await.unwrap();
    assert!(client.read::<Patient>(&id).await.unwrap().is_none());
}
