//! What the benchmark sends: realistic Patients and Observations, reads, and an HTTP client.

use bytes::Bytes;
use reqwest::Method;
use serde_json::{Value, json};

use super::{BenchError, Options};

/// One HTTP request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// Relative to the base (`Patient`, `Patient/123`).
    pub path: String,
    pub body: Option<Bytes>,
    /// Read the `id` of the answer (creates whose ids later phases use).
    pub want_id: bool,
    /// How many resources the request carries or asks for (a Bundle's entries; else 1).
    pub resources: usize,
}

/// Requests that must run in this order, on one worker (one bundle's resources, for ingest).
#[derive(Debug, Clone)]
pub struct Job(pub Vec<Request>);

impl Job {
    pub fn chain(&self) -> &[Request] {
        &self.0
    }

    fn one(request: Request) -> Self {
        Self(vec![request])
    }
}

fn post(rt: &str, body: &Value, want_id: bool) -> Request {
    Request {
        method: Method::POST,
        path: rt.to_owned(),
        body: Some(Bytes::from(body.to_string())),
        want_id,
        resources: 1,
    }
}

/// Family names are built from two syllables: 100 names, none a prefix of another, so a
/// `Patient?family=` search of one finds exactly the Patients given it (N / 100 of them: 20 in
/// the standard run of 2,000).
const FAMILY_STARTS: [&str; 10] = ["Bel", "Cor", "Dan", "Fer", "Gal", "Mor", "Pel", "Rou", "Sau", "Vil"];
const FAMILY_ENDS: [&str; 10] = ["lard", "vet", "ier", "ot", "bert", "mont", "quin", "zac", "ris", "tel"];

/// The family name of the `i`-th Patient.
pub fn family(i: usize) -> String {
    format!("{}{}", pick(&FAMILY_STARTS, i / 10), pick(&FAMILY_ENDS, i))
}
const GIVEN: [&str; 12] =
    ["Camille", "Louise", "Léa", "Gabriel", "Raphaël", "Jules", "Chloé", "Arthur", "Emma", "Hugo", "Inès", "Lucas"];
const CITIES: [(&str, &str); 6] = [
    ("Lyon", "69003"),
    ("Paris", "75011"),
    ("Marseille", "13005"),
    ("Lille", "59000"),
    ("Nantes", "44000"),
    ("Rennes", "35000"),
];

fn pick<T: Copy + Default>(items: &[T], i: usize) -> T {
    items.get(i % items.len().max(1)).copied().unwrap_or_default()
}

/// A Patient of about 1.5 KB, as a hospital system sends it.
pub fn patient(i: usize) -> Value {
    let (city, postcode) = pick(&CITIES, i / 7);
    let family = family(i);
    json!({
        "resourceType": "Patient",
        "meta": {"profile": ["http://interopsante.org/fhir/StructureDefinition/FrPatient"]},
        "identifier": [
            {"use": "official", "system": "urn:oid:1.2.250.1.213.1.4.8", "value": format!("{}", 1_850_775_000_000u64 + i as u64)},
            {"use": "usual", "system": "https://hospital.example.fr/ipp", "value": format!("IPP{i:08}")}
        ],
        "active": true,
        "name": [{"use": "official", "family": family, "given": [pick(&GIVEN, i / 3), pick(&GIVEN, i / 5 + 1)]}],
        "telecom": [
            {"system": "phone", "value": format!("+33 6 {:02} {:02} {:02} {:02}", i % 97, i % 89, i % 83, i % 79), "use": "mobile"},
            {"system": "email", "value": format!("{}.{i}@example.fr", family.to_lowercase())}
        ],
        "gender": if i.is_multiple_of(2) { "female" } else { "male" },
        "birthDate": format!("{}-{:02}-{:02}", 1930 + i % 90, 1 + i % 12, 1 + i % 28),
        "address": [{"use": "home", "line": [format!("{} rue de la République", 1 + i % 200)], "city": city, "postalCode": postcode, "country": "FR"}],
        "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": if i.is_multiple_of(3) { "M" } else { "S" }}]},
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "fr-FR"}]}, "preferred": true}]
    })
}

/// A vital-signs Observation about `subject` (a `Patient/{id}` reference), when there is one.
pub fn observation(i: usize, subject: Option<&str>) -> Value {
    let (code, display, value, unit, ucum) = match i % 4 {
        0 => ("8867-4", "Heart rate", 60 + (i % 40) as i64, "beats/minute", "/min"),
        1 => ("29463-7", "Body weight", 50 + (i % 50) as i64, "kg", "kg"),
        2 => ("8310-5", "Body temperature", 36 + (i % 3) as i64, "Cel", "Cel"),
        _ => ("9279-1", "Respiratory rate", 12 + (i % 10) as i64, "breaths/minute", "/min"),
    };
    let mut obs = json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display},
        "effectiveDateTime": format!("2026-{:02}-{:02}T{:02}:{:02}:00+01:00", 1 + i % 12, 1 + i % 28, i % 24, i % 60),
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": ucum}
    });
    if let (Some(subject), Some(map)) = (subject, obs.as_object_mut()) {
        map.insert("subject".to_owned(), json!({"reference": subject}));
    }
    obs
}

pub fn warmup(n: usize) -> Vec<Job> {
    (0..n)
        .map(|i| {
            let resource = if i.is_multiple_of(2) {
                // Not one of the 100 family names: the search phase's hit counts stay exact.
                let mut p = patient(i);
                if let Some(family) = p.pointer_mut("/name/0/family") {
                    *family = json!("Warmup");
                }
                ("Patient", p)
            } else {
                ("Observation", observation(i, None))
            };
            Job::one(post(resource.0, &resource.1, false))
        })
        .collect()
}

pub fn patients(n: usize) -> Vec<Job> {
    (0..n).map(|i| Job::one(post("Patient", &patient(i), true))).collect()
}

/// `subjects` are `Patient/{id}` references (or `[None]` for no subject).
pub fn observations(n: usize, subjects: &[Option<String>]) -> Vec<Job> {
    (0..n)
        .map(|i| {
            let subject = subjects.get(i % subjects.len().max(1)).cloned().flatten();
            Job::one(post("Observation", &observation(i, subject.as_deref()), false))
        })
        .collect()
}

/// `Patient?family=` searches, cycling through the 100 family names.
pub fn searches(n: usize) -> Vec<Job> {
    (0..n)
        .map(|i| {
            Job::one(Request {
                method: Method::GET,
                path: format!("Patient?family={}", family(i)),
                body: None,
                want_id: false,
                resources: 1,
            })
        })
        .collect()
}

/// Transaction Bundles of `TRANSACTION_ENTRIES` entries: a new Patient and Observations about
/// it, referring to it by its `urn:uuid:` full URL (what an EHR connector sends per encounter).
pub fn transactions(n: usize) -> Vec<Job> {
    (0..n)
        .map(|i| {
            let patient_url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
            let mut entries = vec![json!({
                "fullUrl": patient_url,
                "resource": patient(i),
                "request": {"method": "POST", "url": "Patient"},
            })];
            entries.extend((1..TRANSACTION_ENTRIES).map(|k| {
                json!({
                    "resource": observation(i * TRANSACTION_ENTRIES + k, Some(&patient_url)),
                    "request": {"method": "POST", "url": "Observation"},
                })
            }));
            let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
            Job::one(Request {
                method: Method::POST,
                path: String::new(),
                body: Some(Bytes::from(bundle.to_string())),
                want_id: false,
                resources: TRANSACTION_ENTRIES,
            })
        })
        .collect()
}

/// Entries of each Bundle of the `transaction` phase.
pub const TRANSACTION_ENTRIES: usize = 50;

/// `created` are `Patient/{id}` paths.
pub fn reads(n: usize, created: &[String]) -> Vec<Job> {
    (0..n)
        .filter_map(|i| created.get(i % created.len().max(1)))
        .map(|path| {
            Job::one(Request { method: Method::GET, path: path.clone(), body: None, want_id: false, resources: 1 })
        })
        .collect()
}

/// The HTTP client every worker shares (one connection pool).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    authorization: Option<String>,
}

impl Client {
    pub fn new(options: &Options) -> Result<Self, BenchError> {
        let http = reqwest::Client::builder().pool_max_idle_per_host(options.concurrency.max(1) * 2).build()?;
        Ok(Self {
            http,
            base: options.base.trim_end_matches('/').to_owned(),
            authorization: options.token.as_ref().map(|t| format!("Bearer {t}")),
        })
    }

    /// Send; `Ok(Some("Type/id"))` for a create that wanted its id, `Err(status)` on failure.
    pub async fn send(&self, request: &Request) -> Result<Option<String>, String> {
        let mut builder = self
            .http
            .request(request.method.clone(), format!("{}/{}", self.base, request.path))
            .header("Accept", "application/fhir+json");
        if let Some(auth) = &self.authorization {
            builder = builder.header("Authorization", auth);
        }
        if let Some(body) = &request.body {
            builder = builder.header("Content-Type", "application/fhir+json").body(body.clone());
        }
        let response = builder.send().await.map_err(|_| "io".to_owned())?;
        let status = response.status();
        // `{base}/Patient/{id}/_history/{v}`: servers that answer creates without a body say it here.
        let location = response
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .and_then(|l| l.strip_prefix(&format!("{}/", self.base)).map(str::to_owned))
            .map(|l| l.split("/_history").next().unwrap_or_default().to_owned());
        let body = response.bytes().await.map_err(|_| "io".to_owned())?;
        if !status.is_success() {
            return Err(status.as_u16().to_string());
        }
        if !request.want_id {
            return Ok(None);
        }
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        match (value.get("resourceType").and_then(Value::as_str), value.get("id").and_then(Value::as_str), location) {
            (Some(rt), Some(id), _) => Ok(Some(format!("{rt}/{id}"))),
            (_, _, Some(location)) => Ok(Some(location)),
            _ => Err(format!("{} (no id in the answer)", status.as_u16())),
        }
    }
}
