//! The command line: `serve`, `token`, `config`, `residency`, `gc`, `policy`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::auth::dev_issuer::DevIssuer;
use crate::auth::{Role, TokenRequest};
use crate::config::{self, Settings, Sources};
use crate::ids::{CountryCode, ResourceId, TenantId};
use crate::startup::{self, Application};

#[derive(Debug, Parser)]
#[command(name = "fhirvault", version, about = "Health-data sovereign storage: a FHIR R4 API over encrypted records")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the FHIR server (zero configuration: the embedded default).
    Serve(ServeArgs),
    /// Print a bearer token signed by the development issuer.
    Token(TokenArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Where each tenant's records, keys and identity provider live.
    #[command(subcommand)]
    Residency(ResidencyCommand),
    /// Remove orphan objects (no index row, older than the grace period) from every location.
    Gc(GcArgs),
    /// The access policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Key-encryption keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List each tenant's KEK versions (and the server's own, `-server`): the provider's key
    /// and how many stored keys each wraps (what must be re-wrapped before a version can go).
    Status(KeysStatusArgs),
    /// Rotate the KEKs: a new version of each tenant's KEK (and of the server's own) becomes
    /// primary, every stored key is re-wrapped under it (the keys, never the data), and the
    /// old versions are destroyed in the provider, so that copies of the index taken before
    /// no longer open what was erased since. Online, audited; run it again after a crash to
    /// finish.
    Rotate(KeysRotateArgs),
}

#[derive(Debug, Args)]
pub struct KeysRotateArgs {
    #[command(flatten)]
    pub common: Common,
    /// Rotate only this tenant (`-server` for the server's own keys).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KeysStatusArgs {
    #[command(flatten)]
    pub common: Common,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the audit logs offline: recompute each tree, check every checkpoint (in the index
    /// and in the object store) against the log key, and report which entries were altered,
    /// removed, inserted or reordered. Exits non-zero when anything is found.
    Verify(VerifyArgs),
    /// Seal every record waiting in the inbox now, and sign checkpoints.
    Seal(Common),
    /// Print the log key's verifier key: what auditors pin and pass to `audit verify --key`.
    Key(Common),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub common: Common,
    /// The index to check (`sqlite:...` or `postgres://...`); default: the configuration's.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// The log key's verifier key (`<name>+<id>+<key>`, from `fhirvault audit key`). Without
    /// it, it is derived from the signing key file, which proves nothing against whoever can
    /// replace that file: pin the key.
    #[arg(long, value_name = "VKEY")]
    pub key: Option<String>,
    /// Only this log (a tenant id, or `_server`).
    #[arg(long, value_name = "LOG")]
    pub log: Option<String>,
    /// More checkpoints to hold the log to (files holding one signed note each), such as those
    /// an auditor kept.
    #[arg(long = "checkpoint", value_name = "FILE")]
    pub checkpoints: Vec<PathBuf>,
    /// Check an evidence package (from `GET /audit/{tenant}/export`) instead of an index: no
    /// database or server needed.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["database_url", "log", "checkpoints"])]
    pub package: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a directory of policies (`schema.cedarschema` and `*.cedar`) against its schema,
    /// as the server does when it starts; without DIR, the policies compiled into this server.
    Check {
        /// The directory to check.
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ResidencyCommand {
    /// Print the residency map, from the configuration alone.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub common: Common,
    /// `md` (Markdown, for people and publication) or `json`.
    #[arg(long, default_value = "md", value_parser = ["md", "json"])]
    pub format: String,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct Common {
    /// A TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The data directory (default `./fhirvault-data`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Address to listen on (default `127.0.0.1:8080`).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub tenant: String,
    /// practitioner, service, researcher, auditor, patient or admin.
    #[arg(long)]
    pub role: String,
    /// Subject (`sub`); defaults to `dev-{role}`.
    #[arg(long)]
    pub subject: Option<String>,
    /// Country the requesting organization operates from (ISO 3166 alpha-2, e.g. `FR`); the
    /// server takes its own site's country when none is given. Outside the EEA (and adequacy
    /// countries, where the tenant allows them) the token is refused access.
    #[arg(long)]
    pub jurisdiction: Option<String>,
    /// SMART scopes, e.g. "user/*.cruds"; defaults depend on the role.
    #[arg(long)]
    pub scope: Option<String>,
    /// The patient's own Patient id (role `patient` only).
    #[arg(long)]
    pub patient: Option<String>,
    /// Purpose of use (e.g. `TREAT`, `HRESCH`).
    #[arg(long)]
    pub purpose: Option<String>,
    /// A sensitivity label the token is cleared for (`PSY`, `HIV`, `ETH`, `SUD`, `R`, `V`);
    /// repeat for several.
    #[arg(long = "grant")]
    pub grants: Vec<String>,
    /// The requesting organization, e.g. `Organization/chu-exemple`.
    #[arg(long)]
    pub organization: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_seconds: u64,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the JSON schema of the configuration.
    Schema,
    /// Load and check the configuration, then print it (secrets redacted).
    Check(Common),
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Startup(#[from] startup::StartupError),
    #[error(transparent)]
    Token(#[from] crate::auth::dev_issuer::DevIssuerError),
    #[error("{0}")]
    Usage(String),
    #[error("i/o")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error("audit log storage")]
    Audit(#[from] crate::storage::StorageError),
    #[error("the log key")]
    LogKey(#[from] crate::audit::log::LogError),
    #[error("the evidence package")]
    Package(#[from] crate::audit::package::PackageError),
    #[error("the audit log failed verification: {0} finding(s)")]
    Tampered(usize),
    #[error("orphan sweep of location `{location}` failed")]
    Gc { location: String, source: crate::storage::StorageError },
}

fn sources(common: &Common, listen: Option<SocketAddr>) -> Sources {
    Sources { file: common.config.clone(), listen, data_dir: common.data_dir.clone() }
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => {
            let settings = Settings::load(&sources(&args.common, args.listen))?;
            crate::telemetry::init(&settings.log);
            let app = Application::build(settings).await?;
            app.run_until_stopped().await?;
            Ok(())
        }
        Command::Token(args) => {
            let settings = Settings::load(&sources(&args.common, None))?;
            let token = issue_token(&settings, &args)?;
            writeln!(std::io::stdout(), "{token}")?;
            Ok(())
        }
        Command::Config(ConfigCommand::Schema) => {
            write!(std::io::stdout(), "{}", config::json_schema())?;
            Ok(())
        }
        Command::Residency(ResidencyCommand::Report(args)) => {
            let settings = Settings::load(&sources(&args.common, None))?;
            let report = crate::residency::report(&settings);
            let text = match args.format.as_str() {
                "json" => serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
                _ => report.to_markdown(),
            };
            write!(std::io::stdout(), "{text}")?;
            Ok(())
        }
        Command::Policy(PolicyCommand::Check { dir }) => {
            let policies = match &dir {
                Some(dir) => crate::policy::Policies::load_dir(dir)?,
                None => crate::policy::Policies::shipped()?,
            };
            let ids: Vec<&str> = policies.ids().collect();
            writeln!(std::io::stdout(), "{} policies valid: {}", ids.len(), ids.join(", "))?;
            Ok(())
        }
        Command::Gc(args) => {
            let settings = Settings::load(&sources(&args.common, None))?;
            crate::telemetry::init(&settings.log);
            let (index, locations) = startup::open_storage(&settings).await?;
            let grace = Duration::from_secs(settings.gc.grace_seconds);
            for location in locations.iter() {
                let report = crate::storage::gc::sweep(index.as_ref(), location, grace)
                    .await
                    .map_err(|source| CliError::Gc { location: location.name().to_owned(), source })?;
                writeln!(std::io::stdout(), "{}", serde_json::to_string(&report).unwrap_or_default())?;
            }
            Ok(())
        }
        Command::Audit(AuditCommand::Verify(args)) => audit_verify(&args).await,
        Command::Audit(AuditCommand::Seal(common)) => {
            let settings = Settings::load(&sources(&common, None))?;
            crate::telemetry::init(&settings.log);
            let (index, locations) = startup::open_storage(&settings).await?;
            let mut sealer = startup::audit_sealer(&settings, &index).await?;
            let sealed = crate::audit::sealer::drain(index.as_ref(), &mut sealer, &locations).await?;
            writeln!(std::io::stdout(), "{sealed} record(s) sealed")?;
            Ok(())
        }
        Command::Keys(KeysCommand::Rotate(args)) => keys_rotate(&args).await,
        Command::Keys(KeysCommand::Status(args)) => {
            let settings = Settings::load(&sources(&args.common, None))?;
            let (index, _) = startup::open_storage(&settings).await?;
            keys_status(&index.kek_usage().await?, args.json)
        }
        Command::Audit(AuditCommand::Key(common)) => {
            let settings = Settings::load(&sources(&common, None))?;
            startup::prepare_data_dir(&settings)?;
            let (index, _) = startup::open_storage(&settings).await?;
            let sealer_key = startup::audit_key(&settings, &index).await?;
            writeln!(std::io::stdout(), "{}", sealer_key.public_key())?;
            Ok(())
        }
        Command::Config(ConfigCommand::Check(common)) => {
            let settings = Settings::load(&sources(&common, None))?;
            writeln!(std::io::stdout(), "{settings:#?}")?;
            Ok(())
        }
    }
}

async fn audit_verify(args: &VerifyArgs) -> Result<(), CliError> {
    use crate::audit::verify;
    if let Some(path) = &args.package {
        return report(&[verify_package(path, args.key.as_deref())?], args.json);
    }
    let mut settings = Settings::load(&sources(&args.common, None))?;
    if let Some(url) = &args.database_url {
        settings.database.url = Some(url.clone().into());
    }
    let (index, locations) = startup::open_storage(&settings).await?;
    let public_key = match &args.key {
        Some(key) => key.clone(),
        None => {
            // The server's own key, as it is: a key file is read, never created here.
            let (key, kept) = if startup::audit_key_is_managed(&settings) {
                (startup::audit_key(&settings, &index).await?, "kept by the key provider".to_owned())
            } else {
                let path = settings.audit_key_path();
                (crate::audit::log::LogKey::load(&path)?, format!("in {}", path.display()))
            };
            let _ = writeln!(
                std::io::stderr(),
                "note: checking against the key {kept}; pin it with --key {}",
                key.public_key()
            );
            key.public_key()
        }
    };
    let logs = match &args.log {
        Some(log) => vec![log.clone()],
        None => index.log_names().await?,
    };
    let mut extra = Vec::new();
    for path in &args.checkpoints {
        let note = std::fs::read(path)?;
        extra.push(verify::FoundCheckpoint { source: path.display().to_string(), note });
    }
    let mut reports = Vec::new();
    for log in logs {
        let mut evidence = verify::gather(index.as_ref(), &locations, &log).await?;
        let vkey = crate::audit::log::log_verifier_key(&public_key, &log)?;
        // A checkpoint file belongs to the log whose origin it names.
        let origin = format!("{}\n", vkey.split('+').next().unwrap_or_default());
        evidence.checkpoints.extend(extra.iter().filter(|c| c.note.starts_with(origin.as_bytes())).cloned());
        reports.push(verify::verify_log(&evidence, &vkey));
    }
    report(&reports, args.json)
}

/// Check one evidence package against the pinned key, or the one it names.
fn verify_package(path: &std::path::Path, key: Option<&str>) -> Result<crate::audit::verify::LogReport, CliError> {
    use crate::audit::package;
    let text = std::fs::read_to_string(path)?;
    let read = package::read(&text)?;
    let public_key = match key {
        Some(key) => key.to_owned(),
        None => {
            let _ = writeln!(
                std::io::stderr(),
                "note: checking against the key the package names; pin the one you trust with --key {}",
                read.public_key
            );
            read.public_key.clone()
        }
    };
    let vkey = crate::audit::log::log_verifier_key(&public_key, &read.log)?;
    Ok(package::verify(&read, &vkey))
}

/// Print the reports; any finding is an error (a non-zero exit).
/// A provider's key id as text when it is (a transit key's `mount/name`), else in hex (an HSM
/// key's `CKA_ID`); the development provider derives its KEKs and records none.
fn key_id_text(id: Option<&[u8]>) -> String {
    match id {
        None => "-".to_owned(),
        Some(id) => match std::str::from_utf8(id) {
            Ok(text) if !text.is_empty() && text.chars().all(|c| c.is_ascii_graphic()) => text.to_owned(),
            _ => id.iter().map(|b| format!("{b:02x}")).collect(),
        },
    }
}

/// `fhirvault keys rotate`: every tenant's rotation is begun, the servers are given
/// `keys.version_refresh_seconds` to wrap under the new versions, then each is finished, and
/// each leaves an audit record (failed ones too).
async fn keys_rotate(args: &KeysRotateArgs) -> Result<(), CliError> {
    use crate::audit::{Agent, AuditAction, AuditRecord, RequestMeta};
    use crate::ids::TenantId;
    let settings = Settings::load(&sources(&args.common, None))?;
    crate::telemetry::init_to_stderr(&settings.log);
    startup::prepare_data_dir(&settings)?;
    let (index, _) = startup::open_storage(&settings).await?;
    let keys = startup::key_service(&settings, startup::key_provider(&settings).await?, &index);
    let mut tenants = settings.tenant_ids();
    tenants.push(TenantId::server_scope());
    if let Some(only) = &args.tenant {
        tenants.retain(|t| t.as_str() == only);
        if tenants.is_empty() {
            return Err(CliError::Usage(format!("`{only}` is not a configured tenant (nor `-server`)")));
        }
    }
    keys.prepare(&tenants).await.map_err(startup::StartupError::Keys)?;
    let meta = RequestMeta {
        request_id: format!("key-rotation-{}", crate::time::Timestamp::now().millis()),
        ..RequestMeta::default()
    };
    let agent =
        Agent { subject: Some("fhirvault keys rotate".into()), role: Some("operator".into()), ..Agent::default() };
    let mut begun = Vec::new();
    let mut outcomes = Vec::new();
    for tenant in &tenants {
        match keys.begin_rotation(tenant).await {
            Ok(started) => begun.push((tenant, started)),
            Err(e) => outcomes.push((tenant, Err(e))),
        }
    }
    if begun.iter().any(|(_, (_, added))| *added) && settings.keys.version_refresh_seconds > 0 {
        let settle = Duration::from_secs(settings.keys.version_refresh_seconds);
        writeln!(
            std::io::stderr(),
            "waiting {}s for the servers to wrap under the new KEK versions",
            settle.as_secs()
        )?;
        tokio::time::sleep(settle).await;
    }
    for (tenant, (primary, added)) in begun {
        outcomes.push((tenant, keys.finish_rotation(tenant, primary, added).await));
    }
    let mut failed = 0;
    let mut done = Vec::new();
    for (tenant, outcome) in outcomes {
        let audit_tenant = (tenant != &TenantId::server_scope()).then_some(tenant);
        let record = AuditRecord::new(&meta, audit_tenant, agent.clone(), AuditAction::KeyRotation);
        let record = match &outcome {
            Ok(r) => record.outcome(
                200,
                Some(format!(
                    "KEK version {} primary; {} keys re-wrapped; destroyed: {:?}",
                    r.primary, r.rewrapped, r.destroyed
                )),
            ),
            Err(e) => {
                failed += 1;
                writeln!(std::io::stderr(), "tenant `{tenant}`: rotation failed: {e}")?;
                record.outcome(500, Some("key rotation failed".into()))
            }
        };
        index.append_audit(&[record]).await?;
        if let Ok(r) = outcome {
            done.push(r);
        }
    }
    keys.flush_usage().await.map_err(startup::StartupError::Keys)?;
    let mut out = std::io::stdout();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&done).unwrap_or_default())?;
    } else {
        writeln!(out, "{:<24} {:>8} {:>10}  destroyed", "tenant", "primary", "re-wrapped")?;
        for r in &done {
            writeln!(out, "{:<24} {:>8} {:>10}  {:?}", r.tenant, r.primary, r.rewrapped, r.destroyed)?;
        }
    }
    if failed > 0 {
        return Err(CliError::Usage(format!("{failed} rotation(s) failed; run `fhirvault keys rotate` again")));
    }
    Ok(())
}

fn keys_status(usage: &[crate::storage::KekUsage], json: bool) -> Result<(), CliError> {
    let mut out = std::io::stdout();
    if json {
        let rows: Vec<serde_json::Value> = usage
            .iter()
            .map(|u| {
                serde_json::json!({
                    "tenant": u.tenant,
                    "kek_version": u.version,
                    "state": kek_state(u, usage),
                    "provider_key": u.key_id.as_ref().map(|id| key_id_text(Some(id))),
                    "wrapped_keys": u.wrapped_keys,
                    "wraps": u.wraps,
                    "unwraps": u.unwraps,
                    "created_at": u.created_at.map(crate::time::Timestamp::to_fhir),
                    "destroyed_at": u.destroyed_at.map(crate::time::Timestamp::to_fhir),
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows).unwrap_or_default())?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<24} {:>7} {:<12} {:>12} {:>9} {:>9}  provider key",
        "tenant", "KEK", "state", "wrapped keys", "wraps", "unwraps"
    )?;
    for u in usage {
        writeln!(
            out,
            "{:<24} {:>7} {:<12} {:>12} {:>9} {:>9}  {}",
            u.tenant,
            u.version,
            kek_state(u, usage),
            u.wrapped_keys,
            u.wraps,
            u.unwraps,
            key_id_text(u.key_id.as_deref())
        )?;
    }
    Ok(())
}

/// `primary` (new keys are wrapped under it), `decrypt-only` (an older version still live),
/// `destroyed`, or `erased` (version 0: the tombstones of erased patients' keys).
fn kek_state(u: &crate::storage::KekUsage, all: &[crate::storage::KekUsage]) -> &'static str {
    if u.version == crate::storage::ERASED {
        return "erased";
    }
    if u.destroyed_at.is_some() {
        return "destroyed";
    }
    let newest = all
        .iter()
        .filter(|o| o.tenant == u.tenant && o.destroyed_at.is_none() && o.version != crate::storage::ERASED)
        .map(|o| o.version)
        .max();
    if newest == Some(u.version) { "primary" } else { "decrypt-only" }
}

fn report(reports: &[crate::audit::verify::LogReport], json: bool) -> Result<(), CliError> {
    use crate::audit::verify;
    let mut out = std::io::stdout();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&reports).unwrap_or_default())?;
    } else {
        for r in reports {
            let verdict = if r.ok() { "OK" } else { "TAMPERED" };
            writeln!(
                out,
                "log {}: {verdict}: {} entries, {} checkpoints, verified up to {}",
                r.log, r.entries, r.checkpoints, r.verified_size
            )?;
            for f in &r.findings {
                writeln!(out, "  - {}", verify::describe(f))?;
            }
        }
    }
    let findings: usize = reports.iter().map(|r| r.findings.len()).sum();
    if findings > 0 { Err(CliError::Tampered(findings)) } else { Ok(()) }
}

fn issue_token(settings: &Settings, args: &TokenArgs) -> Result<String, CliError> {
    let usage = |m: String| CliError::Usage(m);
    let tenant = TenantId::parse(&args.tenant).map_err(|e| usage(e.to_string()))?;
    if !settings.tenant_ids().contains(&tenant) {
        return Err(usage(format!("tenant `{tenant}` is not configured")));
    }
    let role = Role::parse(&args.role).ok_or_else(|| {
        let roles: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        usage(format!("unknown role `{}` (one of: {})", args.role, roles.join(", ")))
    })?;
    let request = TokenRequest {
        tenant,
        role,
        subject: args.subject.clone(),
        jurisdiction: args
            .jurisdiction
            .as_deref()
            .map(CountryCode::parse)
            .transpose()
            .map_err(|e| usage(e.to_string()))?,
        scope: args.scope.clone(),
        patient: args.patient.as_deref().map(ResourceId::parse).transpose().map_err(|e| usage(e.to_string()))?,
        purpose: args.purpose.clone(),
        grants: args.grants.clone(),
        organization: args.organization.clone(),
        ttl: Duration::from_secs(args.ttl_seconds),
    };
    let path = settings.dev_issuer_key_path();
    startup::create_private_dir(&settings.data_dir.join("keys"))?;
    DevIssuer::ensure_key(&path)?;
    let issuer = DevIssuer::load(&path, &settings.auth.audience, settings.auth.leeway_seconds)?;
    Ok(issuer.issue(&request)?)
}
