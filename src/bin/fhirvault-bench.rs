//! `fhirvault-bench`: drive any FHIR R4 base URL with a bounded workload and report
//! throughput, latency, errors, and the server's CPU time and memory.
//!
//! ```sh
//! fhirvault-bench --base http://127.0.0.1:8080/fhir/demo --token "$TOKEN" \
//!     --concurrency 8 -n 2000 --phases warmup,create,read --server-pid "$(pgrep -x fhirvault)"
//! ```

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fhirvault::bench::{self, Options, Phase};

#[derive(Debug, Parser)]
#[command(name = "fhirvault-bench", version, about = "A bounded load generator for FHIR R4 servers")]
struct Args {
    /// The FHIR base URL, e.g. http://127.0.0.1:8080/fhir/demo.
    #[arg(long)]
    base: String,
    /// A bearer token (or use --token-file; none: requests go without Authorization).
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// A file holding the bearer token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Concurrent workers.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Requests per measured phase.
    #[arg(short, long, default_value_t = 2000)]
    n: usize,
    /// Unmeasured requests of the warm-up phase.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Comma-separated: warmup, create, create-observation, read, search, transaction, ingest.
    #[arg(long, default_value = "warmup,create,create-observation,read,search,transaction", value_delimiter = ',')]
    phases: Vec<String>,
    /// The Synthea archive (synthea-r4-100.tar.zst) for the ingest phase.
    #[arg(long)]
    synthea: Option<PathBuf>,
    /// Server process ids to measure (CPU time of each and its children; memory). Repeatable:
    /// give the fhirvault server and the PostgreSQL postmaster.
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Write the JSON report to this file ("-" for standard output, instead of the table).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Allow a base URL that is not on loopback.
    #[arg(long)]
    allow_remote: bool,
}

/// One thread, like wrk's: the load generator shares the machine with the server it measures,
/// and a multi-threaded runtime spent part of that machine waking its own threads.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let phases = args
        .phases
        .iter()
        .map(|p| Phase::parse(p.trim()).ok_or_else(|| format!("unknown phase `{p}`")))
        .collect::<Result<Vec<_>, _>>()?;
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.trim().to_owned()),
        (None, Some(file)) => {
            Some(std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?.trim().to_owned())
        }
        (None, None) => None,
    };
    let options = Options {
        base: args.base,
        token,
        concurrency: args.concurrency,
        n: args.n,
        warmup: args.warmup,
        phases,
        synthea: args.synthea,
        server_pids: args.server_pids,
        allow_remote: args.allow_remote,
    };
    let report = bench::run(&options).await.map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    let mut stdout = std::io::stdout();
    match &args.json {
        Some(path) if path.as_os_str() == "-" => writeln!(stdout, "{json}"),
        Some(path) => {
            std::fs::write(path, json + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
            write!(stdout, "{}", report.table())
        }
        None => write!(stdout, "{}", report.table()),
    }
    .map_err(|e| e.to_string())
}
