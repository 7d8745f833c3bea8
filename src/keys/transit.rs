//! The transit secrets engine of OpenBao or HashiCorp Vault as the key provider.
//!
//! Each tenant has one transit key, `{key_prefix}-{tenant}` (type `aes256-gcm96`, never
//! exportable), whose versions are the tenant's KEK versions. A tenant key is wrapped by the
//! engine's `encrypt` with the key's identity (tenant, key name, KEK version) as associated
//! data, pinned to the KEK version this server wraps under, and unwrapped by `decrypt` with
//! the same associated data: a wrapped key moved to another patient, tenant or version fails
//! the engine's tag. The stored form is the engine's ciphertext (`vault:v{n}:...`) as bytes.
//! The KEK never leaves the engine; the tenant key crosses the connection both ways, so
//! anything but loopback must be `https`.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::{KeyError, KeyProvider, ProvisionedKek};
use crate::crypto::{CryptoError, KeyContext, SecretKey, WrappedKey};
use crate::ids::TenantId;

/// Where the engine is and how to use it (from `keys.provider` with `kind = "transit"`).
#[derive(Debug, Clone)]
pub struct TransitOptions {
    /// The server's base URL, e.g. `https://bao.internal:8200`.
    pub address: url::Url,
    /// Where the transit engine is mounted.
    pub mount: String,
    pub token: SecretString,
    pub key_prefix: String,
    /// Create a tenant's transit key when it has none.
    pub create_missing_keys: bool,
    pub timeout: Duration,
}

/// Tenant KEKs as keys of a transit engine.
pub struct TransitProvider {
    options: TransitOptions,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Reply {
    data: Value,
}

#[derive(Deserialize)]
struct Errors {
    #[serde(default)]
    errors: Vec<String>,
}

/// What a refused call said.
enum Failure {
    /// The engine could not authenticate the ciphertext under this key and associated data.
    Integrity,
    NotFound,
    Other(KeyError),
}

impl TransitProvider {
    /// A client for the engine; nothing is contacted yet.
    pub fn new(options: TransitOptions) -> Result<Self, KeyError> {
        crate::crypto::install_tls_provider();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            .build()
            .map_err(|e| KeyError::Provider(format!("transit client: {e}")))?;
        Ok(Self { options, http })
    }

    /// The transit key name of `tenant`.
    pub fn key_name(&self, tenant: &TenantId) -> String {
        format!("{}-{}", self.options.key_prefix, tenant.as_str())
    }

    fn url(&self, path: &str) -> Result<url::Url, KeyError> {
        let path = format!("v1/{}/{path}", self.options.mount.trim_matches('/'));
        self.options.address.join(&path).map_err(|e| KeyError::Provider(format!("transit URL `{path}`: {e}")))
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Option<Value>, Failure> {
        let url = self.url(path).map_err(Failure::Other)?;
        let mut request = self.http.request(method, url).header("X-Vault-Token", self.options.token.expose_secret());
        if let Some(body) = body {
            request = request.header("Content-Type", "application/json").body(body.to_string());
        }
        let what = || format!("transit `{path}` at {}", self.options.address);
        let response =
            request.send().await.map_err(|e| Failure::Other(KeyError::Provider(format!("{}: {e}", what()))))?;
        let status = response.status();
        let bytes =
            response.bytes().await.map_err(|e| Failure::Other(KeyError::Provider(format!("{}: {e}", what()))))?;
        if status.is_success() {
            if bytes.is_empty() {
                return Ok(None);
            }
            let reply: Reply = serde_json::from_slice(&bytes)
                .map_err(|e| Failure::Other(KeyError::Provider(format!("{}: unexpected answer: {e}", what()))))?;
            return Ok(Some(reply.data));
        }
        let errors = serde_json::from_slice::<Errors>(&bytes).map(|e| e.errors).unwrap_or_default();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(Failure::NotFound);
        }
        if status == reqwest::StatusCode::BAD_REQUEST
            && errors.iter().any(|e| e.contains("message authentication failed") || e.contains("invalid ciphertext"))
        {
            return Err(Failure::Integrity);
        }
        let why = if errors.is_empty() { status.to_string() } else { format!("{status}: {}", errors.join("; ")) };
        Err(Failure::Other(KeyError::Provider(format!("{} refused: {why}", what()))))
    }

    /// The named key's latest version, if the key exists.
    async fn latest_version(&self, name: &str) -> Result<Option<u32>, KeyError> {
        match self.call(reqwest::Method::GET, &format!("keys/{name}"), None).await {
            Ok(data) => {
                let latest = data.as_ref().and_then(|d| d.get("latest_version")).and_then(Value::as_u64);
                latest
                    .and_then(|v| u32::try_from(v).ok())
                    .map(Some)
                    .ok_or_else(|| KeyError::Provider(format!("transit key `{name}`: no latest_version")))
            }
            Err(Failure::NotFound) => Ok(None),
            Err(Failure::Integrity) => Err(KeyError::Provider(format!("transit key `{name}`: unexpected answer"))),
            Err(Failure::Other(e)) => Err(e),
        }
    }
}

fn integrity() -> KeyError {
    KeyError::Crypto(CryptoError::Integrity { stage: "tenant-key" })
}

fn unexpected(e: Failure, what: &str) -> KeyError {
    match e {
        Failure::Other(e) => e,
        Failure::NotFound => KeyError::Provider(format!("transit: {what}: not found")),
        Failure::Integrity => integrity(),
    }
}

#[async_trait]
impl KeyProvider for TransitProvider {
    fn describe(&self) -> String {
        format!("transit engine `{}` at {}", self.options.mount, self.options.address)
    }

    async fn wrap(
        &self,
        tenant: &TenantId,
        key_ref: &str,
        key: &SecretKey,
        version: u32,
    ) -> Result<WrappedKey, KeyError> {
        let aad = KeyContext { tenant, key_ref, kek_version: version }.aad();
        let plaintext = Zeroizing::new(STANDARD.encode(key.expose()));
        let body = json!({
            "plaintext": plaintext.as_str(),
            "associated_data": STANDARD.encode(aad),
            "key_version": version,
        });
        let name = self.key_name(tenant);
        let data = self
            .call(reqwest::Method::POST, &format!("encrypt/{name}"), Some(&body))
            .await
            .map_err(|e| unexpected(e, &format!("key `{name}`")))?;
        let ciphertext = data
            .as_ref()
            .and_then(|d| d.get("ciphertext"))
            .and_then(Value::as_str)
            .ok_or_else(|| KeyError::Provider(format!("transit encrypt with `{name}`: no ciphertext")))?;
        // The engine says which version it used; it must be the one asked for.
        if !ciphertext.starts_with(&format!("vault:v{version}:")) {
            return Err(KeyError::Provider(format!("transit encrypt with `{name}` did not use version {version}")));
        }
        Ok(WrappedKey { kek_version: version, bytes: ciphertext.as_bytes().to_vec() })
    }

    async fn unwrap(&self, tenant: &TenantId, key_ref: &str, wrapped: &WrappedKey) -> Result<SecretKey, KeyError> {
        let version = wrapped.kek_version;
        let ciphertext = std::str::from_utf8(&wrapped.bytes).map_err(|_| integrity())?;
        // The engine reads the version from the ciphertext; it must be the one recorded.
        if !ciphertext.starts_with(&format!("vault:v{version}:")) {
            return Err(integrity());
        }
        let aad = KeyContext { tenant, key_ref, kek_version: version }.aad();
        let body = json!({ "ciphertext": ciphertext, "associated_data": STANDARD.encode(aad) });
        let name = self.key_name(tenant);
        let data = self
            .call(reqwest::Method::POST, &format!("decrypt/{name}"), Some(&body))
            .await
            .map_err(|e| unexpected(e, &format!("key `{name}`")))?;
        let encoded = data.as_ref().and_then(|d| d.get("plaintext")).and_then(Value::as_str).ok_or_else(integrity)?;
        let plain = Zeroizing::new(STANDARD.decode(encoded).map_err(|_| integrity())?);
        SecretKey::from_slice(&plain).ok_or_else(integrity)
    }

    async fn check(&self) -> Result<(), KeyError> {
        let url = self
            .options
            .address
            .join("v1/sys/health")
            .map_err(|e| KeyError::Provider(format!("transit health URL: {e}")))?;
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| KeyError::Provider(format!("transit at {}: {e}", self.options.address)))?;
        // 200: initialised, unsealed, active. Sealed (503) or uninitialised (501): not ready.
        if response.status().is_success() {
            Ok(())
        } else {
            Err(KeyError::Provider(format!("transit at {}: health {}", self.options.address, response.status())))
        }
    }

    /// The tenant's transit key at `version`: found, created when allowed (or rotating), and
    /// rotated in the engine up to `version` for a rotation. Its id is `{mount}/{name}`, which
    /// the index records, so a later start with another mount or prefix is refused rather than
    /// wrapping new keys under a KEK the old ones do not open with.
    async fn provision_kek(&self, tenant: &TenantId, version: u32, rotating: bool) -> Result<ProvisionedKek, KeyError> {
        let name = self.key_name(tenant);
        let id = format!("{}/{name}", self.options.mount).into_bytes();
        let mut latest = match self.latest_version(&name).await? {
            Some(latest) => latest,
            None if !self.options.create_missing_keys && !rotating => {
                return Err(KeyError::Provider(format!(
                    "transit engine `{}` holds no key `{name}`",
                    self.options.mount
                )));
            }
            None => {
                // Creating a key that exists changes nothing: replicas racing here end with one key.
                let body = json!({ "type": "aes256-gcm96", "exportable": false, "allow_plaintext_backup": false });
                self.call(reqwest::Method::POST, &format!("keys/{name}"), Some(&body))
                    .await
                    .map_err(|e| unexpected(e, &format!("creating key `{name}`")))?;
                tracing::info!(key = %name, "created a tenant KEK in the transit engine");
                1
            }
        };
        if latest < version && !rotating {
            return Err(KeyError::Provider(format!(
                "transit key `{name}` is at version {latest}; the index records version {version}"
            )));
        }
        // One engine rotation per missing version: the engine numbers versions as we do.
        while latest < version {
            self.call(reqwest::Method::POST, &format!("keys/{name}/rotate"), Some(&json!({})))
                .await
                .map_err(|e| unexpected(e, &format!("rotating key `{name}`")))?;
            latest = self
                .latest_version(&name)
                .await?
                .ok_or_else(|| KeyError::Provider(format!("transit key `{name}` vanished while rotating")))?;
            tracing::info!(key = %name, version = latest, "rotated a tenant KEK in the transit engine");
        }
        Ok(ProvisionedKek { id, generated: false })
    }

    /// Trim the transit key below `version + 1`: the engine deletes those versions for good
    /// (and no longer decrypts or encrypts with them).
    async fn destroy_kek(&self, tenant: &TenantId, version: u32, _id: &[u8]) -> Result<(), KeyError> {
        let name = self.key_name(tenant);
        let keep_from = version.saturating_add(1);
        let config = json!({ "min_decryption_version": keep_from, "min_encryption_version": keep_from });
        self.call(reqwest::Method::POST, &format!("keys/{name}/config"), Some(&config))
            .await
            .map_err(|e| unexpected(e, &format!("retiring version {version} of key `{name}`")))?;
        let trim = json!({ "min_available_version": keep_from });
        self.call(reqwest::Method::POST, &format!("keys/{name}/trim"), Some(&trim))
            .await
            .map_err(|e| unexpected(e, &format!("destroying version {version} of key `{name}`")))?;
        tracing::info!(key = %name, version, "destroyed a tenant KEK version in the transit engine");
        Ok(())
    }

    async fn adopt_kek(
        &self,
        tenant: &TenantId,
        version: u32,
        id: &[u8],
        _discard: Option<&[u8]>,
    ) -> Result<(), KeyError> {
        let name = self.key_name(tenant);
        let ours = format!("{}/{name}", self.options.mount);
        if id != ours.as_bytes() {
            return Err(KeyError::Provider(format!(
                "the index records `{}` as the KEK of tenant `{}`, version {version}, but the configuration \
                 names `{ours}`: keys wrapped before would not open",
                String::from_utf8_lossy(id),
                tenant.as_str()
            )));
        }
        match self.latest_version(&name).await? {
            Some(latest) if latest >= version => Ok(()),
            Some(_) | None => Err(KeyError::Provider(format!(
                "transit engine `{}` no longer holds version {version} of key `{name}` the index records",
                self.options.mount
            ))),
        }
    }
}
