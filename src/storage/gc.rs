//! The orphan sweeper: removes objects that no index row names and that are older than a grace
//! period.
//!
//! Orphans come from writes that PUT their object and then failed to commit the index row (a
//! lost race, a crash, a database error). The grace period protects writes in flight: a writer
//! commits its row within seconds of its PUT (the database statement timeout bounds it), so an
//! object older than the grace period with no row will never get one. It must stay far longer
//! than any write can take; the default is an hour.

use std::time::Duration;

use super::{Index, ObjectStorage, StorageError};
use crate::time::Timestamp;

/// What one sweep of one location did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SweepReport {
    pub location: String,
    /// Objects listed.
    pub scanned: u64,
    /// Objects an index row names (kept).
    pub referenced: u64,
    /// Orphans younger than the grace period (kept for now).
    pub recent_orphans: u64,
    /// Orphans removed.
    pub deleted: u64,
    pub deleted_bytes: u64,
}

/// Sweep one location. Safe to run on several replicas at once: each deletion is idempotent and
/// only ever removes objects no row names.
pub async fn sweep(index: &dyn Index, storage: &ObjectStorage, grace: Duration) -> Result<SweepReport, StorageError> {
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let cutoff = Timestamp::now().millis().saturating_sub(grace_ms);
    let mut report = SweepReport { location: storage.name().to_owned(), ..SweepReport::default() };
    for object in storage.list_objects().await? {
        report.scanned += 1;
        if index.knows_object(object.key.as_str()).await? {
            report.referenced += 1;
        } else if object.modified.millis() > cutoff {
            report.recent_orphans += 1;
        } else {
            storage.delete_orphan(&object.key).await?;
            tracing::info!(location = storage.name(), key = object.key.as_str(), "removed an orphan object");
            report.deleted += 1;
            report.deleted_bytes += object.size;
        }
    }
    Ok(report)
}
