//! `fhirvault-bench`: a bounded load generator for any FHIR R4 base URL.
//!
//! Phases run in order, each with a fixed number of requests spread over `concurrency` workers,
//! and the tool stops by itself. Per phase it reports throughput, latency percentiles, errors by
//! status and, given server PIDs, the CPU time those processes (and their children, such as
//! PostgreSQL backends under the postmaster) spent per request, and their memory.

pub mod procfs;
pub mod synthea;
mod workload;

pub use workload::family;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("refusing to load `{0}`: not a loopback address (pass --allow-remote to measure another host)")]
    Remote(String),
    #[error("invalid base URL `{0}`")]
    Url(String),
    #[error("phase `{0}` needs --synthea PATH")]
    NoSynthea(&'static str),
    #[error("phase `read` needs resources from a `create` phase earlier in the same run")]
    NothingToRead,
    #[error("cannot read the Synthea archive: {0}")]
    Synthea(String),
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Unmeasured creates and reads, to fill caches and connection pools.
    Warmup,
    /// N Patients with realistic content.
    Create,
    /// N Observations (vital signs) about the Patients created before.
    CreateObservation,
    /// N reads by id of the Patients created before.
    Read,
    /// N `Patient?family=` searches, each finding the N / 100 Patients of one family name
    /// (20 after a `create` phase of 2,000).
    Search,
    /// N / 10 transaction Bundles of 50 entries: a new Patient and 49 Observations about it.
    Transaction,
    /// The Synthea archive: hospital and practitioner bundles first (reported as
    /// `ingest-shared`), then one bundle per patient (`ingest-patients`).
    Ingest,
    IngestShared,
    IngestPatients,
}

impl Phase {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "warmup" => Self::Warmup,
            "create" => Self::Create,
            "create-observation" => Self::CreateObservation,
            "read" => Self::Read,
            "search" => Self::Search,
            "transaction" => Self::Transaction,
            "ingest" => Self::Ingest,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Warmup => "warmup",
            Self::Create => "create",
            Self::CreateObservation => "create-observation",
            Self::Read => "read",
            Self::Search => "search",
            Self::Transaction => "transaction",
            Self::Ingest => "ingest",
            Self::IngestShared => "ingest-shared",
            Self::IngestPatients => "ingest-patients",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The FHIR base, e.g. `http://127.0.0.1:8080/fhir/demo`.
    pub base: String,
    pub token: Option<String>,
    pub concurrency: usize,
    pub n: usize,
    pub warmup: usize,
    pub phases: Vec<Phase>,
    pub synthea: Option<PathBuf>,
    pub server_pids: Vec<u32>,
    pub allow_remote: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub phase: Phase,
    pub requests: u64,
    pub ok: u64,
    /// Failed requests by HTTP status (`"io"` for transport errors).
    pub errors: BTreeMap<String, u64>,
    pub seconds: f64,
    pub per_second: f64,
    /// Resources carried by the requests that succeeded (a Bundle counts its entries).
    pub resources: u64,
    pub resources_per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Server CPU time per request (processes given by `--server-pid` and their children).
    pub server_cpu_ms_per_request: Option<f64>,
    /// Resident memory of the server processes after the phase, and their peak so far (MiB).
    pub server_rss_mib: Option<f64>,
    pub server_peak_rss_mib: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub base: String,
    pub concurrency: usize,
    pub n: usize,
    /// Server resident memory before the first phase (MiB).
    pub server_idle_rss_mib: Option<f64>,
    pub phases: Vec<PhaseReport>,
}

/// One unit of work: a request (or, for ingest, a chain of requests that must run in order).
pub(crate) type Job = workload::Job;

/// Refuse anything but loopback unless allowed.
pub fn check_target(base: &str, allow_remote: bool) -> Result<(), BenchError> {
    let url = url::Url::parse(base).map_err(|_| BenchError::Url(base.to_owned()))?;
    let host = url.host_str().ok_or_else(|| BenchError::Url(base.to_owned()))?;
    let loopback =
        host == "localhost" || host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback || allow_remote { Ok(()) } else { Err(BenchError::Remote(host.to_owned())) }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Run every phase and report.
pub async fn run(options: &Options) -> Result<Report, BenchError> {
    check_target(&options.base, options.allow_remote)?;
    crate::crypto::install_tls_provider();
    let client = workload::Client::new(options)?;
    let idle = (!options.server_pids.is_empty()).then(|| mib(procfs::rss_kib(&options.server_pids).0));
    let mut created: Vec<String> = Vec::new();
    let mut phases = Vec::new();
    for &asked in &options.phases {
        // The ingest runs as two measured phases: shared resources first, then the patients.
        let batches: Vec<(Phase, Vec<Job>)> = match asked {
            Phase::Warmup => vec![(asked, workload::warmup(options.warmup))],
            Phase::Create => vec![(asked, workload::patients(options.n))],
            Phase::CreateObservation => {
                let subjects =
                    if created.is_empty() { vec![None] } else { created.iter().cloned().map(Some).collect() };
                vec![(asked, workload::observations(options.n, &subjects))]
            }
            Phase::Read => {
                if created.is_empty() {
                    return Err(BenchError::NothingToRead);
                }
                vec![(asked, workload::reads(options.n, &created))]
            }
            Phase::Search => vec![(asked, workload::searches(options.n))],
            Phase::Transaction => vec![(asked, workload::transactions((options.n / 10).max(1)))],
            Phase::Ingest | Phase::IngestShared | Phase::IngestPatients => {
                let path = options.synthea.as_ref().ok_or(BenchError::NoSynthea("ingest"))?;
                let ingest = synthea::ingest_jobs(path).map_err(BenchError::Synthea)?;
                vec![(Phase::IngestShared, ingest.shared), (Phase::IngestPatients, ingest.patients)]
            }
        };
        for (phase, jobs) in batches {
            let (report, ids) = run_phase(&client, phase, jobs, options).await;
            if phase == Phase::Create {
                created = ids;
            }
            if phase != Phase::Warmup {
                phases.push(report);
            }
        }
    }
    Ok(Report {
        base: options.base.clone(),
        concurrency: options.concurrency,
        n: options.n,
        server_idle_rss_mib: idle,
        phases,
    })
}

struct WorkerResult {
    histogram: Histogram<u64>,
    ok: u64,
    resources: u64,
    errors: BTreeMap<String, u64>,
    ids: Vec<String>,
}

async fn run_phase(
    client: &workload::Client,
    phase: Phase,
    jobs: Vec<Job>,
    options: &Options,
) -> (PhaseReport, Vec<String>) {
    let jobs = Arc::new(jobs);
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = (!options.server_pids.is_empty()).then(|| procfs::cpu_millis(&options.server_pids));
    let started = Instant::now();
    let workers: Vec<_> = (0..options.concurrency.max(1))
        .map(|_| {
            let (client, jobs, next) = (client.clone(), jobs.clone(), next.clone());
            tokio::spawn(async move {
                let mut result = WorkerResult {
                    histogram: histogram(),
                    ok: 0,
                    resources: 0,
                    errors: BTreeMap::new(),
                    ids: Vec::new(),
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    for request in job.chain() {
                        let t = Instant::now();
                        let outcome = client.send(request).await;
                        let micros = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
                        result.histogram.saturating_record(micros);
                        match outcome {
                            Ok(id) => {
                                result.ok += 1;
                                result.resources += request.resources as u64;
                                if let Some(id) = id {
                                    result.ids.push(id);
                                }
                            }
                            Err(status) => *result.errors.entry(status).or_default() += 1,
                        }
                    }
                }
                result
            })
        })
        .collect();
    let mut histogram = histogram();
    let (mut ok, mut resources, mut errors, mut ids) = (0, 0, BTreeMap::new(), Vec::new());
    for worker in workers {
        let Ok(result) = worker.await else {
            *errors.entry("worker panicked".to_owned()).or_default() += 1;
            continue;
        };
        let _ = histogram.add(&result.histogram);
        ok += result.ok;
        resources += result.resources;
        for (status, count) in result.errors {
            *errors.entry(status).or_default() += count;
        }
        ids.extend(result.ids);
    }
    let seconds = started.elapsed().as_secs_f64();
    let requests = histogram.len();
    let cpu = cpu_before.map(|before| procfs::cpu_millis(&options.server_pids).saturating_sub(before));
    let rss = (!options.server_pids.is_empty()).then(|| procfs::rss_kib(&options.server_pids));
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let report = PhaseReport {
        phase,
        requests,
        ok,
        errors,
        seconds,
        per_second: if seconds > 0.0 { requests as f64 / seconds } else { 0.0 },
        resources,
        resources_per_second: if seconds > 0.0 { resources as f64 / seconds } else { 0.0 },
        p50_ms: ms(0.50),
        p90_ms: ms(0.90),
        p99_ms: ms(0.99),
        max_ms: histogram.max() as f64 / 1000.0,
        server_cpu_ms_per_request: cpu.filter(|_| requests > 0).map(|c| c as f64 / requests as f64),
        server_rss_mib: rss.map(|(current, _)| mib(current)),
        server_peak_rss_mib: rss.map(|(_, peak)| mib(peak)),
    };
    (report, ids)
}

/// Latencies in microseconds, 1 µs to 10 min, 3 significant digits.
#[expect(clippy::expect_used, reason = "constant, valid bounds: creation cannot fail")]
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

impl Report {
    /// The human table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "base {}  concurrency {}  n {}", self.base, self.concurrency, self.n);
        if let Some(idle) = self.server_idle_rss_mib {
            let _ = writeln!(out, "server idle RSS {idle:.1} MiB");
        }
        let _ = writeln!(
            out,
            "{:<20} {:>8} {:>7} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9} {:>10} {:>9}",
            "phase",
            "requests",
            "errors",
            "req/s",
            "res/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "cpu ms/req",
            "peak MiB"
        );
        for p in &self.phases {
            let errors: u64 = p.errors.values().sum();
            let opt = |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
            let _ = writeln!(
                out,
                "{:<20} {:>8} {:>7} {:>10.1} {:>10.1} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>10} {:>9}",
                p.phase.name(),
                p.requests,
                errors,
                p.per_second,
                p.resources_per_second,
                p.p50_ms,
                p.p90_ms,
                p.p99_ms,
                p.max_ms,
                opt(p.server_cpu_ms_per_request, 3),
                opt(p.server_peak_rss_mib, 1),
            );
            for (status, count) in &p.errors {
                let _ = writeln!(out, "    {count} x {status}");
            }
        }
        out
    }
}
