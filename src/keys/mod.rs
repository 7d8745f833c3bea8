//! Key management: the `KeyProvider` that holds tenant KEKs, and the `KeyService` that keeps
//! wrapped tenant keys in the index and unwrapped ones in a bounded, expiring cache.
//!
//! **Architecture Invariant:** KEK material never leaves its provider except, for the local
//! development provider, as a derived key in this process's memory. Compartment and MAC keys
//! are stored only wrapped. A read of a cached compartment key needs no provider call.

pub mod local;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use moka::future::Cache;

use crate::crypto::{CompartmentKey, CryptoError, MacKey, SecretKey, WrappedKey};
use crate::ids::TenantId;
use crate::storage::{Index, StorageError};

pub use local::LocalFileProvider;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key provider: {0}")]
    Provider(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("tenant key `{0}` does not exist")]
    Missing(String),
}

/// Holds the tenant key-encryption keys and wraps/unwraps tenant keys with them.
#[async_trait]
pub trait KeyProvider: Send + Sync {
    /// A short description for logs and the residency report (never key material).
    fn describe(&self) -> String;

    /// The KEK version new wraps use.
    fn primary_version(&self) -> u32;

    async fn wrap(&self, tenant: &TenantId, key_ref: &str, key: &SecretKey) -> Result<WrappedKey, KeyError>;

    async fn unwrap(&self, tenant: &TenantId, key_ref: &str, wrapped: &WrappedKey) -> Result<SecretKey, KeyError>;

    /// Readiness: the provider can be used now.
    async fn check(&self) -> Result<(), KeyError>;
}

type CacheKey = (TenantId, String);

/// Tenant keys by name, created on first use, cached unwrapped for a bounded time.
#[derive(Clone)]
pub struct KeyService {
    provider: Arc<dyn KeyProvider>,
    index: Arc<dyn Index>,
    compartments: Cache<CacheKey, Arc<CompartmentKey>>,
    macs: Cache<CacheKey, Arc<MacKey>>,
}

impl KeyService {
    pub fn new(provider: Arc<dyn KeyProvider>, index: Arc<dyn Index>, capacity: u64, ttl: Duration) -> Self {
        Self {
            provider,
            index,
            compartments: Cache::builder().max_capacity(capacity).time_to_live(ttl).build(),
            macs: Cache::builder().max_capacity(1024).time_to_live(ttl).build(),
        }
    }

    pub fn provider(&self) -> &dyn KeyProvider {
        self.provider.as_ref()
    }

    /// The compartment key for a write: created (and stored wrapped) if the compartment is new.
    pub async fn compartment_key_for_write(
        &self,
        tenant: &TenantId,
        key_ref: &str,
    ) -> Result<Arc<CompartmentKey>, KeyError> {
        let cache_key = (tenant.clone(), key_ref.to_owned());
        let this = self.clone();
        self.compartments
            .try_get_with(cache_key, async move {
                this.load_or_create(tenant, key_ref).await.map(|k| Arc::new(CompartmentKey::new(k)))
            })
            .await
            .map_err(|e| unshare(&e))
    }

    /// A key for a compartment that this write creates (a new Patient's own, under an id the
    /// server just chose): generated and wrapped now, stored by the transaction that commits the
    /// version using it (`VersionCommit::new_key`), and cached only once that committed
    /// (`remember_compartment_key`). Saves the separate insert and its flush per new patient.
    pub async fn new_compartment_key(
        &self,
        tenant: &TenantId,
        key_ref: &str,
    ) -> Result<(Arc<CompartmentKey>, WrappedKey), KeyError> {
        let fresh = SecretKey::generate()?;
        let wrapped = self.provider.wrap(tenant, key_ref, &fresh).await?;
        Ok((Arc::new(CompartmentKey::new(fresh)), wrapped))
    }

    /// Cache a key from `new_compartment_key` once it is stored.
    pub async fn remember_compartment_key(&self, tenant: &TenantId, key_ref: &str, key: Arc<CompartmentKey>) {
        self.compartments.insert((tenant.clone(), key_ref.to_owned()), key).await;
    }

    /// The compartment key for a read: it must exist (a missing key is an integrity failure).
    pub async fn compartment_key(&self, tenant: &TenantId, key_ref: &str) -> Result<Arc<CompartmentKey>, KeyError> {
        let cache_key = (tenant.clone(), key_ref.to_owned());
        let this = self.clone();
        self.compartments
            .try_get_with(cache_key, async move {
                let wrapped = this
                    .index
                    .tenant_key(tenant, key_ref)
                    .await?
                    .ok_or_else(|| KeyError::Missing(key_ref.to_owned()))?;
                let key = this.provider.unwrap(tenant, key_ref, &wrapped).await?;
                Ok(Arc::new(CompartmentKey::new(key)))
            })
            .await
            .map_err(|e| unshare(&e))
    }

    /// A MAC key for `purpose` (`paging`, later `search`), created on first use.
    pub async fn mac_key(&self, tenant: &TenantId, purpose: &str) -> Result<Arc<MacKey>, KeyError> {
        let key_ref = format!("mac:{purpose}");
        let cache_key = (tenant.clone(), key_ref.clone());
        let this = self.clone();
        self.macs
            .try_get_with(cache_key, async move {
                this.load_or_create(tenant, &key_ref).await.map(|k| Arc::new(MacKey::new(k)))
            })
            .await
            .map_err(|e| unshare(&e))
    }

    async fn load_or_create(&self, tenant: &TenantId, key_ref: &str) -> Result<SecretKey, KeyError> {
        if let Some(wrapped) = self.index.tenant_key(tenant, key_ref).await? {
            return self.provider.unwrap(tenant, key_ref, &wrapped).await;
        }
        let fresh = SecretKey::generate()?;
        let wrapped = self.provider.wrap(tenant, key_ref, &fresh).await?;
        let stored = self.index.insert_tenant_key(tenant, key_ref, &wrapped).await?;
        if stored == wrapped {
            Ok(fresh)
        } else {
            // A concurrent writer (another replica) stored its key first: use that one.
            self.provider.unwrap(tenant, key_ref, &stored).await
        }
    }
}

/// moka shares an initialisation error between concurrent callers; give each its own copy.
fn unshare(e: &Arc<KeyError>) -> KeyError {
    match e.as_ref() {
        KeyError::Provider(s) => KeyError::Provider(s.clone()),
        KeyError::Crypto(c) => KeyError::Crypto(c.clone()),
        KeyError::Missing(s) => KeyError::Missing(s.clone()),
        KeyError::Storage(s) => KeyError::Provider(format!("index: {s}")),
    }
}
