//! HTTP API tests: each starts the real application on port 0 with its own data directory.
//! `./scripts/test` runs them on SQLite and again on PostgreSQL (`FHIRVAULT_TEST_DATABASE`).

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "test helpers: a failed expectation is a failed test"
)]

mod at_rest;
mod audit;
mod audit_events;
mod audit_log;
#[path = "../common/backends.rs"]
mod backends;
mod bench;
mod binary;
mod conditional;
mod crud;
mod erasure;
mod errors;
mod gc;
mod health;
mod helpers;
mod history;
mod key_providers;
mod oidc;
mod policies;
mod readme;
mod residency;
mod roundtrip;
mod s3;
mod sdk_client;
mod search;
mod search_links;
mod synthea;
mod tamper;
mod transaction;
