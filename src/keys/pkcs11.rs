//! A PKCS#11 token (a hardware security module; SoftHSM2 in the tests) as the key provider.
//!
//! Each tenant has its own AES-256 KEK per KEK version, generated inside the token as a
//! sensitive, non-extractable secret key labelled `{prefix}/{tenant}/kek/v{version}`. Tenant
//! keys are wrapped by AES-GCM encryption inside the token, with the key's identity (tenant,
//! key name, KEK version) as additional authenticated data, in the same layout as every other
//! provider's (`nonce || ciphertext || tag`). The KEK never leaves the token; the unwrapped
//! tenant key does, into this process's key cache, as envelope encryption intends.
//!
//! A generated KEK carries a random `CKA_ID`, which the index records (`KeyService::prepare`):
//! replicas that start together on an empty token may each generate one, and all of them then
//! use the recorded one (the others are destroyed before any wrap used them).
//!
//! PKCS#11 is a process-wide C library: it is initialised once per module path and never
//! finalised, and every provider built on the same module shares that context. Calls block, so
//! each runs on tokio's blocking pool, on a session taken from a small pool (a session serves
//! one operation at a time; the login is shared by all sessions of the process).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use async_trait::async_trait;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use secrecy::SecretString;
use zeroize::Zeroizing;

use super::{KeyError, KeyProvider, ProvisionedKek};
use crate::crypto::aead::NONCE_LEN;
use crate::crypto::{KeyContext, SecretKey, WrappedKey, fill_random};
use crate::ids::TenantId;

/// AES-GCM tags of 128 bits, as everywhere else.
const TAG_BITS: std::os::raw::c_ulong = 128;
/// Sessions kept open for reuse.
const IDLE_SESSIONS: usize = 8;

/// Where the token is and how to use it (from `keys.provider` with `kind = "pkcs11"`).
#[derive(Debug, Clone)]
pub struct Pkcs11Options {
    pub module: PathBuf,
    pub token_label: String,
    pub pin: SecretString,
    pub label_prefix: String,
    /// Generate a tenant's first KEK in the token when it has none.
    pub create_missing_keys: bool,
}

/// Initialised PKCS#11 modules, by path, for the life of the process.
static MODULES: LazyLock<Mutex<HashMap<PathBuf, Pkcs11>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn module(path: &Path) -> Result<Pkcs11, KeyError> {
    let mut modules = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(ctx) = modules.get(path) {
        return Ok(ctx.clone());
    }
    let ctx =
        Pkcs11::new(path).map_err(|e| provider(format!("cannot load PKCS#11 module `{}`", path.display()), &e))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(provider(format!("cannot initialise PKCS#11 module `{}`", path.display()), &e)),
    }
    modules.insert(path.to_owned(), ctx.clone());
    Ok(ctx)
}

/// A provider error that names what failed; PKCS#11 return values by their short name.
fn provider(what: impl std::fmt::Display, e: &CkError) -> KeyError {
    match e {
        CkError::Pkcs11(rv, function) => KeyError::Provider(format!("{what}: {function:?} returned {rv:?}")),
        other => KeyError::Provider(format!("{what}: {other}")),
    }
}

struct Token {
    ctx: Pkcs11,
    slot: Slot,
    pin: SecretString,
    options: Pkcs11Options,
    idle: Mutex<Vec<Session>>,
    /// KEK handles by (tenant, version): object handles stay valid while the library is loaded.
    keks: Mutex<HashMap<(TenantId, u32), ObjectHandle>>,
}

/// Creating and destroying token objects, one at a time in this process. SoftHSM2's file
/// store fails concurrent object creation at random (CKR_GENERAL_ERROR or
/// CKR_TEMPLATE_INCONSISTENT; SoftHSMv2 issue 573); a KEK is created or destroyed at start and
/// at rotation only, so serializing costs nothing. Wrapping and unwrapping stay concurrent.
static OBJECT_CHANGES: Mutex<()> = Mutex::new(());

/// Tenant KEKs inside a PKCS#11 token.
#[derive(Clone)]
pub struct Pkcs11Provider {
    token: Arc<Token>,
}

impl Pkcs11Provider {
    /// Load the module, find the token by label and log in. Blocking.
    pub fn open(options: Pkcs11Options) -> Result<Self, KeyError> {
        let ctx = module(&options.module)?;
        let mut found = Vec::new();
        for slot in ctx.get_slots_with_token().map_err(|e| provider("cannot list the PKCS#11 slots", &e))? {
            let info = ctx.get_token_info(slot).map_err(|e| provider("cannot read a PKCS#11 token", &e))?;
            if info.label().trim_end() == options.token_label {
                found.push(slot);
            }
        }
        let slot = match found.as_slice() {
            [slot] => *slot,
            [] => {
                return Err(KeyError::Provider(format!(
                    "no PKCS#11 token labelled `{}` in `{}`",
                    options.token_label,
                    options.module.display()
                )));
            }
            _ => {
                return Err(KeyError::Provider(format!(
                    "{} PKCS#11 tokens are labelled `{}`; label them apart",
                    found.len(),
                    options.token_label
                )));
            }
        };
        let pin = options.pin.clone();
        let token = Arc::new(Token { ctx, slot, pin, options, idle: Mutex::new(Vec::new()), keks: Mutex::default() });
        // Log in now, so that a wrong PIN stops the start rather than the first request.
        let session = token.session()?;
        token.done(session);
        Ok(Self { token })
    }

    /// The label of a tenant's KEK of `version` in the token.
    pub fn kek_label(&self, tenant: &TenantId, version: u32) -> String {
        kek_label(&self.token.options.label_prefix, tenant, version)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Token) -> Result<T, KeyError> + Send + 'static,
    ) -> Result<T, KeyError> {
        let token = self.token.clone();
        tokio::task::spawn_blocking(move || f(&token))
            .await
            .map_err(|e| KeyError::Provider(format!("PKCS#11 call did not complete: {e}")))?
    }
}

pub fn kek_label(prefix: &str, tenant: &TenantId, version: u32) -> String {
    format!("{prefix}/{}/kek/v{version}", tenant.as_str())
}

impl Token {
    /// An open, logged-in session: an idle one, or a new one.
    fn session(&self) -> Result<Session, KeyError> {
        if let Some(session) = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop() {
            return Ok(session);
        }
        let session = self.ctx.open_rw_session(self.slot).map_err(|e| provider("cannot open a PKCS#11 session", &e))?;
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                Err(KeyError::Provider(format!("PKCS#11 token `{}` refused the PIN", self.options.token_label)))
            }
            Err(e) => Err(provider(format!("cannot log in to PKCS#11 token `{}`", self.options.token_label), &e)),
        }
    }

    /// Give a session back after a successful operation (a failed one is closed: its state
    /// is unknown).
    fn done(&self, session: Session) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < IDLE_SESSIONS {
            idle.push(session);
        }
    }

    /// Run `f` on a session, returning the session to the pool when it succeeded.
    fn with_session<T>(&self, f: impl FnOnce(&Session) -> Result<T, KeyError>) -> Result<T, KeyError> {
        let session = self.session()?;
        let out = f(&session)?;
        self.done(session);
        Ok(out)
    }

    /// The handle of `tenant`'s KEK of `version`: the one adopted at start, or the only key
    /// the token holds under its label.
    fn kek(&self, tenant: &TenantId, version: u32) -> Result<ObjectHandle, KeyError> {
        let cache_key = (tenant.clone(), version);
        if let Some(handle) = self.keks.lock().unwrap_or_else(PoisonError::into_inner).get(&cache_key) {
            return Ok(*handle);
        }
        let label = kek_label(&self.options.label_prefix, tenant, version);
        let handle = match self.with_session(|s| find_keys(s, &label, None))?.as_slice() {
            [(handle, _)] => *handle,
            [] => return Err(self.missing(&label)),
            more => return Err(self.ambiguous(&label, more.len())),
        };
        self.keks.lock().unwrap_or_else(PoisonError::into_inner).insert(cache_key, handle);
        Ok(handle)
    }

    fn missing(&self, label: &str) -> KeyError {
        KeyError::Provider(format!("PKCS#11 token `{}` holds no KEK labelled `{label}`", self.options.token_label))
    }

    fn ambiguous(&self, label: &str, n: usize) -> KeyError {
        KeyError::Provider(format!(
            "PKCS#11 token `{}` holds {n} keys labelled `{label}` and the index records none of them; \
             remove all but one",
            self.options.token_label
        ))
    }

    /// Find `tenant`'s KEK of `version` by its label, or generate it when none is there and
    /// generating is allowed. Several under the label (replicas that generated at once): the
    /// one with the smallest id, which `adopt` then settles through the index.
    fn provision(&self, tenant: &TenantId, version: u32, rotating: bool) -> Result<ProvisionedKek, KeyError> {
        let label = kek_label(&self.options.label_prefix, tenant, version);
        let _one_at_a_time = OBJECT_CHANGES.lock().unwrap_or_else(PoisonError::into_inner);
        self.with_session(|s| {
            let mut found = find_keys(s, &label, None)?;
            found.sort_by(|a, b| a.1.cmp(&b.1));
            if let Some((_, id)) = found.into_iter().next() {
                return Ok(ProvisionedKek { id, generated: false });
            }
            if !self.options.create_missing_keys && !rotating {
                return Err(self.missing(&label));
            }
            Ok(ProvisionedKek { id: generate_kek(s, &label)?, generated: true })
        })
    }

    /// Use the KEK with `id` under its label; destroy `discard` (ours, not recorded).
    fn adopt(&self, tenant: &TenantId, version: u32, id: &[u8], discard: Option<&[u8]>) -> Result<(), KeyError> {
        let label = kek_label(&self.options.label_prefix, tenant, version);
        let _one_at_a_time = OBJECT_CHANGES.lock().unwrap_or_else(PoisonError::into_inner);
        let handle = self.with_session(|s| {
            if let Some(ours) = discard {
                for (handle, _) in find_keys(s, &label, Some(ours))? {
                    s.destroy_object(handle).map_err(|e| provider(format!("cannot destroy a spare `{label}`"), &e))?;
                    tracing::info!(label, "destroyed the KEK this replica generated: another one is recorded");
                }
            }
            match find_keys(s, &label, Some(id))?.as_slice() {
                [(handle, _)] => Ok(*handle),
                [] => Err(KeyError::Provider(format!(
                    "PKCS#11 token `{}` no longer holds the KEK `{label}` the index records (id {}); \
                     without it, the keys it wrapped cannot be opened",
                    self.options.token_label,
                    hex(id)
                ))),
                more => Err(self.ambiguous(&label, more.len())),
            }
        })?;
        self.keks.lock().unwrap_or_else(PoisonError::into_inner).insert((tenant.clone(), version), handle);
        Ok(())
    }
}

impl Token {
    /// Destroy the KEK with `id` under the label of `tenant`'s KEK of `version` (none there:
    /// already destroyed).
    fn destroy(&self, tenant: &TenantId, version: u32, id: &[u8]) -> Result<(), KeyError> {
        let label = kek_label(&self.options.label_prefix, tenant, version);
        let _one_at_a_time = OBJECT_CHANGES.lock().unwrap_or_else(PoisonError::into_inner);
        self.keks.lock().unwrap_or_else(PoisonError::into_inner).remove(&(tenant.clone(), version));
        self.with_session(|s| {
            for (handle, _) in find_keys(s, &label, Some(id))? {
                s.destroy_object(handle).map_err(|e| provider(format!("cannot destroy KEK `{label}`"), &e))?;
                tracing::info!(label, "destroyed a tenant KEK version in the PKCS#11 token");
            }
            Ok(())
        })
    }
}

/// Bytes of a generated KEK's `CKA_ID`.
const KEK_ID_LEN: usize = 16;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The secret keys under `label` (with `id`, when given), with their ids. A key made without
/// `CKA_ID` (by an operator's tool) is known by its label.
fn find_keys(session: &Session, label: &str, id: Option<&[u8]>) -> Result<Vec<(ObjectHandle, Vec<u8>)>, KeyError> {
    let lookup = |e: CkError| provider(format!("cannot look up KEK `{label}`"), &e);
    let mut found = Vec::new();
    let template = [Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Label(label.as_bytes().to_vec())];
    for handle in session.find_objects(&template).map_err(lookup)? {
        let attrs = session.get_attributes(handle, &[AttributeType::Id]).map_err(lookup)?;
        let key_id = attrs
            .into_iter()
            .find_map(|a| match a {
                Attribute::Id(v) if !v.is_empty() => Some(v),
                _ => None,
            })
            .unwrap_or_else(|| label.as_bytes().to_vec());
        if id.is_none_or(|want| want == key_id.as_slice()) {
            found.push((handle, key_id));
        }
    }
    Ok(found)
}

/// A new AES-256 KEK inside the token: kept in the token, sensitive, never extractable, usable
/// only to encrypt and decrypt. Returns the random `CKA_ID` it carries.
fn generate_kek(session: &Session, label: &str) -> Result<Vec<u8>, KeyError> {
    let mut id = vec![0u8; KEK_ID_LEN];
    fill_random(&mut id)?;
    let template = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.clone()),
    ];
    session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(|e| provider(format!("cannot generate KEK `{label}`"), &e))?;
    tracing::info!(label, "generated a tenant KEK in the PKCS#11 token");
    Ok(id)
}

/// AES-GCM with a 96-bit `iv`, 128-bit tags and `aad`, as the token runs it.
fn aes_gcm<'a>(iv: &'a mut [u8; NONCE_LEN], aad: &'a [u8]) -> Result<Mechanism<'a>, KeyError> {
    let params = GcmParams::new(iv, aad, TAG_BITS.into()).map_err(|e| provider("AES-GCM parameters", &e))?;
    Ok(Mechanism::AesGcm(params))
}

/// The attributes that keep a KEK inside its token, as the token reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KekProtection {
    pub sensitive: bool,
    pub extractable: bool,
    pub never_extractable: bool,
    pub always_sensitive: bool,
}

impl Pkcs11Provider {
    /// How the token protects `tenant`'s KEK of `version` (operators' check, tests).
    pub async fn protection(&self, tenant: &TenantId, version: u32) -> Result<KekProtection, KeyError> {
        let tenant = tenant.clone();
        self.blocking(move |token| {
            let kek = token.kek(&tenant, version)?;
            token.with_session(|s| {
                let wanted = [
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                    AttributeType::AlwaysSensitive,
                ];
                let attrs = s.get_attributes(kek, &wanted).map_err(|e| provider("cannot read KEK attributes", &e))?;
                let mut p = KekProtection {
                    sensitive: false,
                    extractable: true,
                    never_extractable: false,
                    always_sensitive: false,
                };
                for a in attrs {
                    match a {
                        Attribute::Sensitive(v) => p.sensitive = v,
                        Attribute::Extractable(v) => p.extractable = v,
                        Attribute::NeverExtractable(v) => p.never_extractable = v,
                        Attribute::AlwaysSensitive(v) => p.always_sensitive = v,
                        _ => {}
                    }
                }
                Ok(p)
            })
        })
        .await
    }

    /// Generate a new KEK for `tenant` and `version` under its label; returns its id, which
    /// nothing records (start-up and rotation go through `KeyService`, which does).
    pub async fn generate_kek(&self, tenant: &TenantId, version: u32) -> Result<Vec<u8>, KeyError> {
        let label = self.kek_label(tenant, version);
        self.blocking(move |token| {
            let _one_at_a_time = OBJECT_CHANGES.lock().unwrap_or_else(PoisonError::into_inner);
            token.with_session(|s| generate_kek(s, &label))
        })
        .await
    }

    /// The ids of the keys the token holds under the label of `tenant`'s KEK of `version`.
    pub async fn kek_ids(&self, tenant: &TenantId, version: u32) -> Result<Vec<Vec<u8>>, KeyError> {
        let label = self.kek_label(tenant, version);
        self.blocking(move |token| {
            token.with_session(|s| Ok(find_keys(s, &label, None)?.into_iter().map(|(_, id)| id).collect()))
        })
        .await
    }

    /// Whether the token gives out the KEK's value (it must not).
    pub async fn kek_value_readable(&self, tenant: &TenantId, version: u32) -> Result<bool, KeyError> {
        let tenant = tenant.clone();
        self.blocking(move |token| {
            let kek = token.kek(&tenant, version)?;
            token.with_session(|s| match s.get_attributes(kek, &[AttributeType::Value]) {
                Ok(attrs) => Ok(attrs.iter().any(|a| matches!(a, Attribute::Value(v) if !v.is_empty()))),
                Err(CkError::Pkcs11(RvError::AttributeSensitive, _)) => Ok(false),
                Err(e) => Err(provider("cannot read KEK attributes", &e)),
            })
        })
        .await
    }
}

#[async_trait]
impl KeyProvider for Pkcs11Provider {
    fn describe(&self) -> String {
        format!("pkcs11 token `{}` ({})", self.token.options.token_label, self.token.options.module.display())
    }

    async fn wrap(
        &self,
        tenant: &TenantId,
        key_ref: &str,
        key: &SecretKey,
        version: u32,
    ) -> Result<WrappedKey, KeyError> {
        let aad = KeyContext { tenant, key_ref, kek_version: version }.aad();
        let plain = Zeroizing::new(key.expose().to_vec());
        let tenant = tenant.clone();
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let bytes = self
            .blocking(move |token| {
                let kek = token.kek(&tenant, version)?;
                token.with_session(|s| {
                    let mut iv = nonce;
                    let sealed = s
                        .encrypt(&aes_gcm(&mut iv, &aad)?, kek, &plain)
                        .map_err(|e| provider("cannot wrap a tenant key in the PKCS#11 token", &e))?;
                    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
                    out.extend_from_slice(&nonce);
                    out.extend_from_slice(&sealed);
                    Ok(out)
                })
            })
            .await?;
        Ok(WrappedKey { kek_version: version, bytes })
    }

    async fn unwrap(&self, tenant: &TenantId, key_ref: &str, wrapped: &WrappedKey) -> Result<SecretKey, KeyError> {
        let integrity = || KeyError::Crypto(crate::crypto::CryptoError::Integrity { stage: "tenant-key" });
        let version = wrapped.kek_version;
        let aad = KeyContext { tenant, key_ref, kek_version: version }.aad();
        let Some((nonce, sealed)) = wrapped.bytes.split_first_chunk::<NONCE_LEN>() else {
            return Err(integrity());
        };
        let (nonce, sealed, tenant) = (*nonce, sealed.to_vec(), tenant.clone());
        let plain = self
            .blocking(move |token| {
                let kek = token.kek(&tenant, version)?;
                token.with_session(|s| {
                    let mut iv = nonce;
                    match s.decrypt(&aes_gcm(&mut iv, &aad)?, kek, &sealed) {
                        Ok(plain) => Ok(Some(Zeroizing::new(plain))),
                        // A tag that does not check: the wrapped key or its identity was altered.
                        Err(CkError::Pkcs11(RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange, _)) => {
                            Ok(None)
                        }
                        Err(e) => Err(provider("cannot unwrap a tenant key in the PKCS#11 token", &e)),
                    }
                })
            })
            .await?
            .ok_or_else(integrity)?;
        SecretKey::from_slice(&plain).ok_or_else(integrity)
    }

    async fn provision_kek(&self, tenant: &TenantId, version: u32, rotating: bool) -> Result<ProvisionedKek, KeyError> {
        let tenant = tenant.clone();
        self.blocking(move |token| token.provision(&tenant, version, rotating)).await
    }

    async fn destroy_kek(&self, tenant: &TenantId, version: u32, id: &[u8]) -> Result<(), KeyError> {
        let (tenant, id) = (tenant.clone(), id.to_vec());
        self.blocking(move |token| token.destroy(&tenant, version, &id)).await
    }

    async fn adopt_kek(
        &self,
        tenant: &TenantId,
        version: u32,
        id: &[u8],
        discard: Option<&[u8]>,
    ) -> Result<(), KeyError> {
        let (tenant, id, discard) = (tenant.clone(), id.to_vec(), discard.map(<[u8]>::to_vec));
        self.blocking(move |token| token.adopt(&tenant, version, &id, discard.as_deref())).await
    }

    async fn check(&self) -> Result<(), KeyError> {
        self.blocking(|token| {
            token.with_session(|s| {
                s.get_session_info().map_err(|e| provider("PKCS#11 session", &e))?;
                Ok(())
            })
        })
        .await
    }
}
