//! fhirvault: a FHIR R4 REST API over envelope-encrypted records in EEA-only object storage.
//!
//! Start with `ARCHITECTURE.md` for the bird's-eye view and the invariants of each module.

pub mod api;
pub mod audit;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod engine;
pub mod fhir;
pub mod ids;
pub mod keys;
pub mod policy;
pub mod residency;
pub mod search;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub mod time;
