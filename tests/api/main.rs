//! HTTP API tests: each starts the real application on port 0 with its own data directory.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "test helpers: a failed expectation is a failed test"
)]

mod at_rest;
mod audit;
mod binary;
mod crud;
mod errors;
mod health;
mod helpers;
mod history;
mod readme;
mod roundtrip;
mod sdk_client;
mod tamper;
