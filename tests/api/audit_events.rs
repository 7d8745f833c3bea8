//! The audit log as FHIR: auditors search and read the sealed AuditEvents; a patient reads who
//! accessed their data (`$access-log`); nobody writes AuditEvents through the API; and each of
//! these reads is itself audited.

use fhirvault::auth::Role;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TokenSpec, observation, patient, spawn_app};

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.unwrap()
}

/// The ids (log indexes) of a searchset's entries, in order.
fn indexes(bundle: &Value) -> Vec<u64> {
    bundle["entry"]
        .as_array()
        .map(|entries| entries.iter().map(|e| e["resource"]["id"].as_str().unwrap().parse().unwrap()).collect())
        .unwrap_or_default()
}

fn events(bundle: &Value) -> Vec<&Value> {
    bundle["entry"].as_array().map(|entries| entries.iter().map(|e| &e["resource"]).collect()).unwrap_or_default()
}

/// The events a search finds, following every `next` link.
async fn search_all(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let mut url = format!("{}/{query}", app.base);
    let mut found = Vec::new();
    loop {
        let response = app.client.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let bundle = json_of(response).await;
        found.extend(events(&bundle).into_iter().cloned());
        let next = bundle["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next");
        match next {
            Some(link) => url = link["url"].as_str().unwrap().to_owned(),
            None => return found,
        }
    }
}

fn patient_token(app: &TestApp, id: &str) -> String {
    app.token_for(TokenSpec { role: Role::Patient, patient: Some(id), ..TokenSpec::default() })
}

/// A practitioner creates two patients and an observation for the first, reads the first, a
/// researcher is refused it; all sealed.
async fn app_with_history() -> (TestApp, String, String) {
    let app = spawn_app().await;
    let a = app.create_ok(&patient("Moreau")).await["id"].as_str().unwrap().to_owned();
    let b = app.create_ok(&patient("Girard")).await["id"].as_str().unwrap().to_owned();
    app.create_ok(&observation(&a)).await;
    assert_eq!(app.get(&format!("Patient/{a}")).await.status(), 200);
    assert_eq!(app.get_with(&format!("Patient/{a}"), &app.token(Role::Researcher)).await.status(), 403);
    app.seal().await;
    (app, a, b)
}

#[tokio::test]
async fn auditors_search_the_log_newest_first_by_each_parameter() {
    let (app, a, b) = app_with_history().await;
    let auditor = app.token(Role::Auditor);
    let all = search_all(&app, &auditor, "AuditEvent?_count=2").await;
    let ids: Vec<u64> = all.iter().map(|e| e["id"].as_str().unwrap().parse().unwrap()).collect();
    assert_eq!(ids, (0..5).rev().collect::<Vec<_>>(), "every entry, newest first, across pages");

    let by_entity = search_all(&app, &auditor, &format!("AuditEvent?entity=Patient/{a}")).await;
    let actions: Vec<&str> = by_entity.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["R", "R", "C"], "the refused read, the read and the creation of Patient/{a}");

    let by_patient = search_all(&app, &auditor, &format!("AuditEvent?patient={a}")).await;
    let actions: Vec<&str> = by_patient.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["R", "R", "C", "C"],
        "the refused read (it names the patient too), the read, and the creations of the observation and the patient"
    );
    let both = search_all(&app, &auditor, &format!("AuditEvent?patient=Patient/{a},Patient/{b}")).await;
    assert!(both.len() >= by_patient.len());

    let creates = search_all(&app, &auditor, "AuditEvent?action=C").await;
    assert_eq!(creates.len(), 3);
    assert!(creates.iter().all(|e| e["action"] == "C"));
    let with_system = search_all(&app, &auditor, "AuditEvent?action=http://hl7.org/fhir/audit-event-action|C").await;
    assert_eq!(with_system, creates);

    let refused = search_all(&app, &auditor, "AuditEvent?outcome=4").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["outcome"], "4");
    assert!(search_all(&app, &auditor, "AuditEvent?outcome=8").await.is_empty());

    // The researcher's subject, as the event names its user.
    let user = refused[0]["agent"].as_array().unwrap().iter().find(|a| a["requestor"] == true).unwrap();
    let subject = user["who"]["identifier"]["value"].as_str().unwrap();
    let by_agent = search_all(&app, &auditor, &format!("AuditEvent?agent={subject}")).await;
    assert_eq!(by_agent, refused);

    let recorded = all[1]["recorded"].as_str().unwrap();
    let since = search_all(&app, &auditor, &format!("AuditEvent?date=ge{}", recorded.replace('+', "%2B"))).await;
    assert!(since.len() >= 2 && since.iter().all(|e| e["recorded"].as_str().unwrap() >= recorded));
    let before = search_all(&app, &auditor, "AuditEvent?date=lt2000-01-01").await;
    assert!(before.is_empty());

    // AND across repeated parameters, OR within one.
    let both = search_all(&app, &auditor, &format!("AuditEvent?patient={a}&action=R&outcome=0")).await;
    assert_eq!(both.len(), 1);

    let total = json_of(app.get_with("AuditEvent?_count=1&_total=accurate", &auditor).await).await;
    assert_eq!(total["total"], 5);
    assert_eq!(indexes(&total), [4]);
}

#[tokio::test]
async fn bad_audit_searches_are_refused_with_an_outcome_and_paging_links_are_bound() {
    let (app, _, _) = app_with_history().await;
    let auditor = app.token(Role::Auditor);
    for query in [
        "AuditEvent?subtype=read",
        "AuditEvent?action=X",
        "AuditEvent?outcome=2",
        "AuditEvent?action=http://example.org|C",
        "AuditEvent?date=yesterday",
        "AuditEvent?entity=NotAType/1",
        "AuditEvent?_total=maybe",
    ] {
        let response = app.get_with(query, &auditor).await;
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(json_of(response).await["resourceType"], "OperationOutcome", "{query}");
    }
    let lenient = app
        .client
        .get(format!("{}/AuditEvent?subtype=read&_count=1", app.base))
        .bearer_auth(&auditor)
        .header("Prefer", "handling=lenient")
        .send()
        .await
        .unwrap();
    assert_eq!(lenient.status(), 200);
    let page = json_of(lenient).await;
    let next = page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!next.contains("subtype"), "an ignored parameter is left out of the links");
    let other_auditor =
        app.token_for(TokenSpec { role: Role::Auditor, subject: Some("another-auditor"), ..TokenSpec::default() });
    let replayed = app.client.get(&next).bearer_auth(other_auditor).send().await.unwrap();
    assert_eq!(replayed.status(), 400, "a paging link is bound to whom it was issued");
}

#[tokio::test]
async fn an_audit_event_reads_back_as_sealed() {
    let (app, _, _) = app_with_history().await;
    let auditor = app.token(Role::Auditor);
    let response = app.get_with("AuditEvent/2", &auditor).await;
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.unwrap();
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT event FROM audit_log WHERE tenant = 'demo' AND idx = 2")
        .fetch_one(&app.index().await)
        .await
        .unwrap();
    assert_eq!(body.as_ref(), sealed.as_slice(), "the bytes the tree hashed");
    assert_eq!(app.get_with("AuditEvent/99", &auditor).await.status(), 404);
    assert_eq!(app.get_with("AuditEvent/not-an-index", &auditor).await.status(), 404);
    assert_eq!(app.get("AuditEvent/2").await.status(), 403, "a practitioner does not read the log");
}

#[tokio::test]
async fn a_patient_reads_who_accessed_their_data_without_the_systems_internals() {
    let (app, a, b) = app_with_history().await;
    // A search that returns both patients is recorded once for each (BALP), so it shows in both
    // access logs.
    assert_eq!(app.get("Patient?_count=10").await.status(), 200);
    app.seal().await;

    let mine = patient_token(&app, &a);
    let log = search_all(&app, &mine, &format!("Patient/{a}/$access-log")).await;
    assert_eq!(log.len(), 5, "two creations, the read, the researcher's refused read, and the search");
    let refused: Vec<_> = log.iter().filter(|e| e["outcome"] == "4").collect();
    assert_eq!(refused.len(), 1, "a refused access shows in the patient's log too");
    let search = log.iter().find(|e| e["subtype"][0]["code"] == "search-type").unwrap();
    assert_eq!(search["entity"].as_array().unwrap().last().unwrap()["what"]["reference"], format!("Patient/{a}"));
    for event in &log {
        let text = event.to_string();
        assert!(!text.contains("network"), "no network address: {text}");
        assert!(!text.contains("XrequestId"), "no request id: {text}");
        assert!(!text.contains("urn:fhirvault:policy"), "no policy ids: {text}");
        assert_eq!(event["meta"]["security"][0]["code"], "REDACTED");
        let user = event["agent"].as_array().unwrap().iter().find(|a| a["requestor"] == true).unwrap();
        assert!(user["who"]["identifier"]["value"].is_string(), "who accessed it stays: {text}");
    }
    let by_query = search_all(&app, &mine, &format!("AuditEvent?patient={a}")).await;
    assert_eq!(by_query, log, "the same entries, searched as AuditEvents");

    // Someone else's log, or the whole log, is not theirs to read (nor to learn it exists).
    assert_eq!(app.get_with(&format!("Patient/{b}/$access-log"), &mine).await.status(), 404);
    assert_eq!(app.get_with("AuditEvent", &mine).await.status(), 404);
    assert_eq!(app.get(&format!("Patient/{a}/$access-log")).await.status(), 403, "nor a practitioner's");

    // An auditor sees the same entries whole.
    let auditor = app.token(Role::Auditor);
    let whole = search_all(&app, &auditor, &format!("Patient/{a}/$access-log")).await;
    assert_eq!(whole.len(), log.len());
    assert!(whole.iter().all(|e| e.to_string().contains("XrequestId")));

    let reads: Vec<(String, i64, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT action, outcome, agent_role, compartment FROM audit_records \
         WHERE action = 'operation-access-log' ORDER BY seq",
    )
    .fetch_all(&app.index().await)
    .await
    .unwrap();
    let seen: Vec<(i64, &str, &str)> =
        reads.iter().map(|(_, o, r, c)| (*o, r.as_deref().unwrap(), c.as_deref().unwrap_or("-"))).collect();
    let (pa, pb) = (format!("Patient/{a}"), format!("Patient/{b}"));
    assert_eq!(
        seen,
        [
            (200, "patient", pa.as_str()),
            (404, "patient", pb.as_str()),
            (403, "practitioner", pa.as_str()),
            (200, "auditor", pa.as_str())
        ]
    );
}

#[tokio::test]
async fn nobody_writes_audit_events_through_the_api() {
    let app = spawn_app().await;
    let event = json!({
        "resourceType": "AuditEvent",
        "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest" },
        "recorded": "2026-01-01T00:00:00Z",
        "agent": [{ "requestor": true }],
        "source": { "observer": { "display": "elsewhere" } },
    });
    for role in [Role::Admin, Role::Practitioner, Role::Service] {
        let response = app.post_with("AuditEvent", &event, &app.token(role)).await;
        assert_eq!(response.status(), 403, "{role:?}");
        let outcome = json_of(response).await;
        assert!(outcome.to_string().contains("recorded by the server"), "{outcome}");
    }
    let mut with_id = event.clone();
    with_id["id"] = json!("0");
    let put = app.request(reqwest::Method::PUT, "AuditEvent/0").json(&with_id).send().await.unwrap();
    assert_eq!(put.status(), 403);
    let delete = app.request(reqwest::Method::DELETE, "AuditEvent/0").send().await.unwrap();
    assert_eq!(delete.status(), 403);
    app.seal().await;
    let auditor = app.token(Role::Auditor);
    let refused = search_all(&app, &auditor, "AuditEvent?entity=AuditEvent,AuditEvent/0&outcome=4").await;
    assert_eq!(refused.len(), 5, "each attempt is in the log");
}

#[tokio::test]
async fn the_capability_statement_describes_the_audit_log() {
    let app = spawn_app().await;
    let statement = json_of(app.get("metadata").await).await;
    let resources = statement["rest"][0]["resource"].as_array().unwrap();
    let audit = resources.iter().find(|r| r["type"] == "AuditEvent").unwrap();
    let interactions: Vec<&str> =
        audit["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
    assert_eq!(interactions, ["read", "search-type"]);
    let params: Vec<&str> =
        audit["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(params, ["date", "agent", "entity", "patient", "action", "outcome"]);
    let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    let operations: Vec<&str> =
        patient["operation"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(operations, ["everything", "access-log", "erase", "erase-cancel", "legal-hold"]);
}
