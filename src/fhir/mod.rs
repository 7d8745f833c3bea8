//! FHIR R4: resource parsing and validation, OperationOutcome, bundles, the CapabilityStatement.
//!
//! **Architecture Invariant:** this module does no IO and knows nothing of HTTP, storage or keys.

pub mod bundle;
pub mod capability;
pub mod json;
pub mod model;
pub mod outcome;
pub mod resource;
pub mod resource_types;
pub mod search_params;
pub mod transaction;
pub mod validate;

pub use resource::{Compartment, Resource, ResourceError};
