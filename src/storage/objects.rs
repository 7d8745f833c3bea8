//! Sealed objects in object stores (`object_store`: local directories and S3-compatible services),
//! one store per named storage location.
//!
//! Object keys are create-only and never reused: each carries a random UUID, so even a retried
//! write of the same version gets a fresh key. The guarantee comes from the key design, not from
//! the store (some S3 implementations ignore `If-None-Match: *`).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use futures::TryStreamExt as _;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use secrecy::ExposeSecret as _;

use super::StorageError;
use crate::config::S3Settings;
use crate::ids::{ResourceId, ResourceType, TenantId, VersionId};
use crate::time::Timestamp;

/// The key of one sealed object: `tenants/{tenant}/{type}/{fan}/{id}_{version}.{uuid}`, where
/// `fan` is two hex digits of SHA-256(id). Versions of one resource sit together, a type's
/// objects spread over 256 folders, and no write creates a folder once those exist (on a local
/// disk, a folder per resource cost a `mkdir` and two more fsyncs per create). `_` is not in
/// FHIR's id alphabet, so the name splits unambiguously.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// A fresh key for a new version; never returned twice.
    pub fn new_for(tenant: &TenantId, rt: ResourceType, id: &ResourceId, version: VersionId) -> Self {
        let fan = ring::digest::digest(&ring::digest::SHA256, id.as_str().as_bytes()).as_ref().first().copied();
        let fan = fan.unwrap_or_default();
        Self(format!("tenants/{tenant}/{rt}/{fan:02x}/{id}_{version}.{}", uuid::Uuid::new_v4().simple()))
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
    /// The same store when it is a local directory: reads take a shortcut through it.
    local: Option<Arc<LocalFileSystem>>,
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
        let store = Arc::new(store);
        Ok(Self { name: name.to_owned(), store: Arc::clone(&store) as Arc<dyn ObjectStore>, local: Some(store) })
    }

    /// An S3-compatible bucket. Writes still ask for create-only (`If-None-Match: *`), but some
    /// servers (Garage) ignore it: uniqueness comes from the keys, which are never reused.
    pub fn s3(name: &str, s3: &S3Settings) -> Result<Self, StorageError> {
        crate::crypto::install_tls_provider();
        let mut builder = AmazonS3Builder::new()
            .with_region(&s3.region)
            .with_bucket_name(&s3.bucket)
            .with_virtual_hosted_style_request(!s3.path_style)
            .with_allow_http(s3.allow_http);
        if let Some(endpoint) = &s3.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(id) = &s3.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &s3.secret_access_key {
            builder = builder.with_secret_access_key(secret.expose_secret());
        }
        let store = builder.build()?;
        let store: Arc<dyn ObjectStore> = match s3.prefix.as_deref().map(|p| p.trim_matches('/')) {
            Some(prefix) if !prefix.is_empty() => Arc::new(PrefixStore::new(store, prefix)),
            _ => Arc::new(store),
        };
        Ok(Self { name: name.to_owned(), store, local: None })
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
        if let Some(local) = &self.local {
            return get_local(local, key).await;
        }
        let result = match self.store.get(&StorePath::from(key.as_str())).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Err(StorageError::ObjectMissing(key.0.clone())),
            Err(e) => return Err(e.into()),
        };
        Ok(result.bytes().await?.to_vec())
    }

    /// Every object under `tenants/`, with its size and modification time (for the sweeper).
    pub async fn list_objects(&self) -> Result<Vec<StoredObject>, StorageError> {
        let metas: Vec<ObjectMeta> = self.store.list(Some(&StorePath::from("tenants"))).try_collect().await?;
        Ok(metas
            .into_iter()
            .map(|m| StoredObject {
                key: ObjectKey(m.location.to_string()),
                modified: Timestamp::from_millis(m.last_modified.timestamp_millis()),
                size: m.size,
            })
            .collect())
    }

    /// The keys of the objects under `prefix`, in key order.
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<ObjectKey>, StorageError> {
        let metas: Vec<ObjectMeta> = self.store.list(Some(&StorePath::from(prefix))).try_collect().await?;
        let mut keys: Vec<ObjectKey> = metas.into_iter().map(|m| ObjectKey(m.location.to_string())).collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(keys)
    }

    /// Remove an object. Only the orphan sweeper calls this, for objects no index row names.
    pub async fn delete_orphan(&self, key: &ObjectKey) -> Result<(), StorageError> {
        match self.store.delete(&StorePath::from(key.as_str())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Readiness: the store answers a listing.
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.store.list_with_delimiter(Some(&StorePath::from("tenants"))).await?;
        Ok(())
    }
}

/// A local object from memory on this thread when the kernel has it cached (see `page_cache`),
/// else in one trip through Tokio's blocking pool: object_store's own `get` takes two (open and
/// stat, then read), and on a read-heavy load the second hop cost about a tenth of the server's
/// CPU. The file name is object_store's own mapping of the key.
async fn get_local(store: &LocalFileSystem, key: &ObjectKey) -> Result<Vec<u8>, StorageError> {
    let path = store.path_to_filesystem(&StorePath::from(key.as_str()))?;
    if let Some(bytes) = super::page_cache::read_if_cached(&path) {
        return Ok(bytes);
    }
    let generic = |source: Box<dyn std::error::Error + Send + Sync>| object_store::Error::Generic {
        store: "LocalFileSystem",
        source,
    };
    match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Err(StorageError::ObjectMissing(key.0.clone())),
        Ok(Err(e)) => Err(generic(Box::new(e)).into()),
        Err(e) => Err(generic(Box::new(e)).into()),
    }
}

/// An object as a listing shows it.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub key: ObjectKey,
    pub modified: Timestamp,
    pub size: u64,
}

/// The configured storage locations, and which one each tenant writes to.
#[derive(Debug, Default)]
pub struct Locations {
    by_name: HashMap<String, ObjectStorage>,
    by_tenant: HashMap<TenantId, String>,
}

impl Locations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, storage: ObjectStorage) {
        self.by_name.insert(storage.name.clone(), storage);
    }

    pub fn assign(&mut self, tenant: TenantId, location: &str) {
        self.by_tenant.insert(tenant, location.to_owned());
    }

    /// Where a tenant writes new versions.
    pub fn for_tenant(&self, tenant: &TenantId) -> Option<&ObjectStorage> {
        self.by_tenant.get(tenant).and_then(|name| self.by_name.get(name))
    }

    /// A location by name (reading a version written there).
    pub fn get(&self, name: &str) -> Option<&ObjectStorage> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ObjectStorage> {
        self.by_name.values()
    }
}
