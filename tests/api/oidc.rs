//! Tokens of a real OpenID provider: oidc-provider (OpenID Certified), started by
//! `./scripts/test` from `tests/oidc-provider/`. Its tokens work end to end (SMART Backend
//! Services with `private_key_jwt`, and authorization code + PKCE); every forged token is
//! refused with 401, `WWW-Authenticate` and an OperationOutcome.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fhirvault::config::{IssuerSettings, OperatorSettings};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::backends::required;
use crate::helpers::{TestApp, diagnostics, patient, spawn_app_with};

/// What the provider wrote at start (`provider.json`).
#[derive(Deserialize)]
struct Provider {
    issuer: String,
    audience: String,
    other_audience: String,
    callback: String,
    client_key_pem: String,
    client_key_id: String,
    signing_keys_pem: BTreeMap<String, String>,
}

/// The provider `./scripts/test` started (`FHIRVAULT_TEST_OIDC` names its state file); `None`
/// outside CI when there is none.
#[expect(clippy::disallowed_methods, reason = "test harness: the provider comes from the environment")]
fn provider() -> Option<Provider> {
    let Ok(path) = std::env::var("FHIRVAULT_TEST_OIDC") else {
        assert!(!required(), "CI must run the OpenID tests: FHIRVAULT_TEST_OIDC is not set");
        eprintln!("skipped: no OpenID provider (FHIRVAULT_TEST_OIDC); ./scripts/test starts one");
        return None;
    };
    Some(serde_json::from_slice(&std::fs::read(path).expect("provider.json")).expect("provider.json parses"))
}

fn issuer_settings(provider: &Provider) -> IssuerSettings {
    issuer_at(&provider.issuer)
}

fn issuer_at(url: &str) -> IssuerSettings {
    IssuerSettings {
        issuer: url.to_owned(),
        tenants: vec!["demo".to_owned()],
        jurisdiction: "FR".to_owned(),
        operator: OperatorSettings { name: None, country: "FR".to_owned(), extraterritorial_laws: Vec::new() },
        audience: Vec::new(),
        jwks_hosts: Vec::new(),
        jwks_min_refresh_seconds: 30,
        jwks_max_age_seconds: 3600,
        claims: Default::default(),
    }
}

/// The app trusting the provider; its public base URL is the provider's resource (`aud`).
async fn spawn_with(provider: &Provider) -> TestApp {
    let base = provider.audience.trim_end_matches("/fhir/demo").to_owned();
    let issuer = issuer_settings(provider);
    spawn_app_with(|s| {
        s.http.public_base_url = Some(base);
        s.auth.issuers.insert("test-idp".to_owned(), issuer);
    })
    .await
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

async fn token_request(provider: &Provider, pairs: &[(&str, &str)]) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}/token", provider.issuer))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(pairs))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "token endpoint: {body}");
    body
}

/// SMART Backend Services: client credentials, the client authenticated by a JWT it signs
/// with its own key (`private_key_jwt`).
async fn backend_token(provider: &Provider, client_id: &str, scope: &str, resource: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(provider.client_key_id.clone());
    let claims = json!({
        "iss": client_id, "sub": client_id, "aud": provider.issuer,
        "jti": uuid::Uuid::new_v4().to_string(), "iat": now(), "exp": now() + 60,
    });
    let key = EncodingKey::from_ec_der(&der(&provider.client_key_pem));
    let assertion = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let mut pairs = vec![
        ("grant_type", "client_credentials"),
        ("scope", scope),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", assertion.as_str()),
    ];
    if let Some(resource) = resource {
        pairs.push(("resource", resource));
    }
    let body = token_request(provider, &pairs).await;
    body["access_token"].as_str().unwrap().to_owned()
}

/// Authorization code + PKCE (S256) for a public SMART app; the provider's test interactions
/// log `login_hint` in and consent without a form.
async fn user_token(provider: &Provider, login_hint: &str, scope: &str) -> String {
    let verifier = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()));
    let callback = provider.callback.clone();
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.url().as_str().starts_with(&callback) {
                attempt.stop()
            } else if attempt.previous().len() > 10 {
                attempt.error("too many redirects")
            } else {
                attempt.follow()
            }
        }))
        .build()
        .unwrap();
    let query = form(&[
        ("client_id", "smart-app"),
        ("response_type", "code"),
        ("redirect_uri", &provider.callback),
        ("scope", &format!("openid {scope}")),
        ("state", "state-1"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
        ("login_hint", login_hint),
    ]);
    let response = browser.get(format!("{}/auth?{query}", provider.issuer)).send().await.unwrap();
    let location = response.headers().get("location").map(|l| l.to_str().unwrap().to_owned());
    let location = location.expect("the provider redirects to the app");
    let redirect = url::Url::parse(&location).unwrap();
    let code = redirect.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.into_owned());
    let code = code.expect("the redirect carries a code");
    let body = token_request(
        provider,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &provider.callback),
            ("client_id", "smart-app"),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    body["access_token"].as_str().unwrap().to_owned()
}

fn claims_of(token: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

/// A token with `claims` signed by `pem` (PKCS#8, ES256) under `kid`.
fn sign(claims: &Value, pem: &str, kid: &str) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    header.typ = Some("at+jwt".to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&der(pem))).unwrap()
}

/// The DER inside a PEM block.
fn der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).unwrap()
}

/// A fresh P-256 key nobody published (PKCS#8 PEM).
fn stranger_key() -> String {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        ring::signature::EcdsaKeyPair::generate_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let body = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
    format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n")
}

#[tokio::test]
async fn backend_service_tokens_work_end_to_end() {
    let Some(provider) = provider() else { return };
    let app = spawn_with(&provider).await;
    let token = backend_token(&provider, "backend-service", "system/*.cruds", None).await;
    let claims = claims_of(&token);
    assert_eq!(claims["iss"], provider.issuer.as_str());
    assert_eq!(claims["aud"], provider.audience.as_str());

    let created = app.post_with("Patient", &patient("Oidcbackend"), &token).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let id = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let read = app.get_with(&format!("Patient/{id}"), &token).await;
    assert_eq!(read.status(), StatusCode::OK);

    // The provider drops scopes it does not know and grants what it was asked; the server
    // enforces the scopes itself: a read-only Patient scope cannot create.
    let narrow = backend_token(&provider, "backend-service", "system/Patient.rs", None).await;
    assert_eq!(claims_of(&narrow)["scope"], "system/Patient.rs");
    assert_eq!(app.get_with(&format!("Patient/{id}"), &narrow).await.status(), StatusCode::OK);
    let refused = app.post_with("Patient", &patient("Oidcnarrow"), &narrow).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let made_up = backend_token(&provider, "backend-service", "system/*.* launch/made-up", None).await;
    assert_eq!(app.get_with(&format!("Patient/{id}"), &made_up).await.status(), StatusCode::FORBIDDEN);

    // A genuine token of an organization operating from outside the EEA: authenticated, then
    // refused by the jurisdiction policy.
    let foreign = backend_token(&provider, "foreign-service", "system/*.rs", None).await;
    assert_eq!(claims_of(&foreign)["jurisdiction"], "US");
    let refused = app.get_with(&format!("Patient/{id}"), &foreign).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(diagnostics(refused).await.contains("operates from US"));
}

#[tokio::test]
async fn authorization_code_with_pkce_works_for_practitioners_and_patients() {
    let Some(provider) = provider() else { return };
    let app = spawn_with(&provider).await;
    let mine = app.create_ok(&patient("Oidcmine")).await;
    let theirs = app.create_ok(&patient("Oidctheirs")).await;
    let (mine, theirs) = (mine["id"].as_str().unwrap(), theirs["id"].as_str().unwrap());

    let practitioner = user_token(&provider, "practitioner-7", "user/*.rs").await;
    let claims = claims_of(&practitioner);
    assert_eq!(claims["sub"], "practitioner-7");
    assert_eq!(claims["fhirUser"], "Practitioner/practitioner-7");
    assert_eq!(app.get_with(&format!("Patient/{theirs}"), &practitioner).await.status(), StatusCode::OK);

    let patient_token = user_token(&provider, &format!("patient:{mine}"), "patient/*.rs").await;
    assert_eq!(app.get_with(&format!("Patient/{mine}"), &patient_token).await.status(), StatusCode::OK);
    let other = app.get_with(&format!("Patient/{theirs}"), &patient_token).await;
    assert!(matches!(other.status(), StatusCode::FORBIDDEN | StatusCode::NOT_FOUND), "{}", other.status());
}

/// Each forged token answers 401 with a `WWW-Authenticate` challenge and an OperationOutcome
/// that says why.
#[tokio::test]
async fn forged_tokens_are_refused() {
    let Some(provider) = provider() else { return };
    let app = spawn_with(&provider).await;
    let real = backend_token(&provider, "backend-service", "system/*.rs", None).await;
    let claims = claims_of(&real);
    let es_key = &provider.signing_keys_pem["es-1"];
    let parts: Vec<&str> = real.split('.').collect();
    let with_claims = |change: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        change(&mut c);
        c
    };

    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"at+jwt"}"#);
    let alg_none = format!("{none_header}.{}.", parts[1]);
    // HMAC keyed with the provider's public key: the classic algorithm confusion.
    let jwks: Value = reqwest::get(format!("{}/jwks", provider.issuer)).await.unwrap().json().await.unwrap();
    let public = serde_json::to_vec(&jwks["keys"][0]).unwrap();
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("es-1".to_owned());
    let symmetric = jsonwebtoken::encode(&hs_header, &claims, &EncodingKey::from_secret(&public)).unwrap();
    let unknown_issuer =
        sign(&with_claims(&|c| c["iss"] = "https://idp.unknown.example".into()), &stranger_key(), "es-1");
    let wrong_audience =
        backend_token(&provider, "backend-service", "system/*.rs", Some(&provider.other_audience)).await;
    assert_eq!(claims_of(&wrong_audience)["aud"], provider.other_audience.as_str());
    let expired = sign(
        &with_claims(&|c| {
            c["iat"] = (now() - 7200).into();
            c["exp"] = (now() - 3600).into();
        }),
        es_key,
        "es-1",
    );
    let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    signature[10] ^= 0x01;
    let bad_signature = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&signature));
    let same_kid_other_key = sign(&claims, &stranger_key(), "es-1");
    let unknown_kid = sign(&claims, &stranger_key(), "not-published");
    let other_tenant = sign(&with_claims(&|c| c["tenant"] = "other".into()), es_key, "es-1");
    let no_role = sign(&with_claims(&|c| c["role"] = "janitor".into()), es_key, "es-1");

    // The provider's own key, with the claims unchanged, is accepted: each case below differs
    // from a valid token in the one way it names.
    assert_eq!(app.get_with("Patient", &sign(&claims, es_key, "es-1")).await.status(), StatusCode::OK);
    assert_eq!(app.get_with("Patient", &real).await.status(), StatusCode::OK);

    let cases = [
        ("alg none", alg_none, "alg: none"),
        ("symmetric algorithm", symmetric, "not accepted"),
        ("unknown issuer", unknown_issuer, "untrusted issuer"),
        ("wrong audience", wrong_audience, "wrong audience"),
        ("expired", expired, "expired"),
        ("bad signature", bad_signature, "bad signature"),
        ("another key with the same kid", same_kid_other_key, "bad signature"),
        ("unknown kid", unknown_kid, "no key `not-published`"),
        ("tenant the issuer is not trusted for", other_tenant, "not trusted for tenant `other`"),
        ("no known role", no_role, "names no fhirvault role"),
    ];
    for (case, token, says) in cases {
        let response = app.get_with("Patient", &token).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{case}");
        let challenge = response.headers().get("www-authenticate").map(|h| h.to_str().unwrap().to_owned());
        assert!(challenge.is_some_and(|c| c.starts_with("Bearer ")), "{case}: WWW-Authenticate");
        let text = diagnostics(response).await;
        assert!(text.contains(says), "{case}: {text}");
    }
}

#[test]
fn a_strict_tenant_refuses_an_identity_provider_outside_the_eea() {
    let mut settings = fhirvault::config::Settings::default();
    settings.tenants.get_mut("demo").unwrap().sovereignty = fhirvault::config::Sovereignty::Strict;
    let mut issuer = issuer_at("https://idp.example.com/realms/hospital");
    issuer.jurisdiction = "US".to_owned();
    settings.auth.issuers.insert("abroad".to_owned(), issuer.clone());
    let refused = fhirvault::residency::check(&settings).unwrap_err();
    assert_eq!(refused.key, "auth.issuers.abroad.jurisdiction");
    assert!(refused.reason.contains("outside the EEA"), "{}", refused.reason);

    issuer.jurisdiction = "IE".to_owned();
    issuer.operator.extraterritorial_laws = vec!["US CLOUD Act".to_owned()];
    settings.auth.issuers.insert("abroad".to_owned(), issuer);
    let refused = fhirvault::residency::check(&settings).unwrap_err();
    assert_eq!(refused.key, "auth.issuers.abroad.operator");

    // A standard tenant may use it; the residency report says it is reachable from abroad.
    settings.tenants.get_mut("demo").unwrap().sovereignty = fhirvault::config::Sovereignty::Standard;
    fhirvault::residency::check(&settings).unwrap();
    let report = fhirvault::residency::report(&settings);
    let identity = &report.tenants[0].identity;
    assert!(identity.iter().any(|p| p.what.contains("abroad") && p.reachable_from_outside_eea));
}

#[tokio::test]
async fn each_tenant_base_publishes_its_smart_configuration() {
    let Some(provider) = provider() else { return };
    let app = spawn_with(&provider).await;
    let response = app.client.get(format!("{}/.well-known/smart-configuration", app.base)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let config: Value = response.json().await.unwrap();
    assert_eq!(config["issuer"], provider.issuer.as_str());
    assert_eq!(config["token_endpoint"], format!("{}/token", provider.issuer));
    assert_eq!(config["authorization_endpoint"], format!("{}/auth", provider.issuer));
    assert_eq!(config["jwks_uri"], format!("{}/jwks", provider.issuer));
    let listed = |field: &str, value: &str| config[field].as_array().unwrap().iter().any(|v| v == value);
    assert!(listed("code_challenge_methods_supported", "S256"));
    assert!(listed("token_endpoint_auth_methods_supported", "private_key_jwt"));
    assert!(listed("grant_types_supported", "client_credentials"));
    assert!(listed("capabilities", "permission-v2"));
    assert!(listed("capabilities", "client-confidential-asymmetric"));

    // Tenant `other` trusts no provider: a clear 404, not an empty document.
    let none =
        app.client.get(format!("{}/fhir/other/.well-known/smart-configuration", app.address)).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::NOT_FOUND);
    assert!(diagnostics(none).await.contains("no OpenID provider"));
}
