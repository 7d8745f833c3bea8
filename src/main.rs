//! `fhirvault`: parse the command line, then hand over to the library.

use std::process::ExitCode;

use clap::Parser as _;
use fhirvault::cli::{self, Cli};

#[actix_web::main]
async fn main() -> ExitCode {
    fhirvault::crypto::install_tls_provider();
    let cli = Cli::parse();
    match cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut message = format!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message.push_str(&format!("\n  caused by: {cause}"));
                source = cause.source();
            }
            tracing::error!("{message}");
            let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{message}\n").as_bytes());
            ExitCode::FAILURE
        }
    }
}
