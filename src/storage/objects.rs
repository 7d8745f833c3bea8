//! Sealed objects in an object store (`object_store`: local files now, S3-compatible next).
//!
//! Object keys are create-only and never reused: each carries a random UUID, so even a retried
//! write of the same version gets a fresh key. The guarantee comes from the key design, not from
//! the store (some S3 implementations ignore `If-None-Match: *`).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::StorageError;
use crate::ids::{ResourceId, ResourceType, TenantId, VersionId};

/// The key of one sealed object: `tenants/{tenant}/{type}/{id}/{version}.{uuid}`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// A fresh key for a new version; never returned twice.
    pub fn new_for(tenant: &TenantId, rt: ResourceType, id: &ResourceId, version: VersionId) -> Self {
        Self(format!("tenants/{tenant}/{rt}/{id}/{version}.{}", uuid::Uuid::new_v4().simple()))
    }

    /// A key read back from the index.
    pub fn from_index(raw: String) -> Self {
        Self(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectKey({})", self.0)
    }
}

/// One storage location: a named object store.
#[derive(Clone)]
pub struct ObjectStorage {
    name: String,
    store: Arc<dyn ObjectStore>,
}

impl fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectStorage({}: {})", self.name, self.store)
    }
}

impl ObjectStorage {
    /// A local directory. Writes are fsynced (file and directory) before they count, so a
    /// committed index row never outlives its object in a power loss.
    pub fn local(name: &str, root: &Path) -> Result<Self, StorageError> {
        let store = LocalFileSystem::new_with_prefix(root)?.with_fsync(true).with_automatic_cleanup(true);
        Ok(Self { name: name.to_owned(), store: Arc::new(store) })
    }

    /// The location name, bound into every object's AAD.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Write a new object; fails if the key exists (it never should).
    pub async fn put_new(&self, key: &ObjectKey, bytes: Vec<u8>) -> Result<(), StorageError> {
        let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.store.put_opts(&StorePath::from(key.as_str()), PutPayload::from(bytes), opts).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(StorageError::ObjectExists(key.0.clone())),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get(&self, key: &ObjectKey) -> Result<Vec<u8>, StorageError> {
        let result = match self.store.get(&StorePath::from(key.as_str())).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Err(StorageError::ObjectMissing(key.0.clone())),
            Err(e) => return Err(e.into()),
        };
        Ok(result.bytes().await?.to_vec())
    }

    /// Readiness: the store answers a listing.
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.store.list_with_delimiter(Some(&StorePath::from("tenants"))).await?;
        Ok(())
    }
}
