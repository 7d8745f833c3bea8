//! The development key provider: a root key in a local file, tenant KEKs derived from it.
//!
//! Whoever can read the file can decrypt every record: the server warns loudly at start-up,
//! and the file must be private to its owner (mode 0600) or the server refuses to use it.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use super::{KeyError, KeyProvider, ProvisionedKek};
use crate::crypto::{Kek, KeyContext, SecretKey, WrappedKey, wrap};
use crate::ids::TenantId;

/// The id the index records for a derived KEK (there is no object to name).
const DERIVED: &[u8] = b"derived-from-root-file";

/// Write a new secret file (mode 0600) holding `text` and a newline, synced. A file already
/// there (another process created it first) is left as it is: theirs is used.
pub fn create_private_file(path: &Path, text: &str) -> std::io::Result<()> {
    let mut file = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    };
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// Read a secret file; refuses one other users can read (the reason is the error).
pub fn read_private_file(path: &Path) -> Result<Zeroizing<String>, String> {
    let meta = fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "mode {:o} lets other users read it; run `chmod 600` on it",
            meta.permissions().mode() & 0o777
        ));
    }
    Ok(Zeroizing::new(fs::read_to_string(path).map_err(|e| e.to_string())?))
}

pub struct LocalFileProvider {
    root: SecretKey,
    path: PathBuf,
}

impl LocalFileProvider {
    /// Create the root key file if it does not exist (mode 0600, never overwritten).
    pub fn ensure_file(path: &Path) -> Result<(), KeyError> {
        if path.exists() {
            return Ok(());
        }
        let key = SecretKey::generate()?;
        let encoded = Zeroizing::new(STANDARD.encode(key.expose()));
        create_private_file(path, &encoded)
            .map_err(|e| KeyError::Provider(format!("cannot create `{}`: {e}", path.display())))
    }

    /// Load the root key; refuses a file other users can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let fail = |why: String| KeyError::Provider(format!("root key file `{}`: {why}", path.display()));
        let text = read_private_file(path).map_err(fail)?;
        let bytes = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| fail("not base64".into()))?);
        let root = SecretKey::from_slice(&bytes).ok_or_else(|| fail("not a 256-bit key".into()))?;
        Ok(Self { root, path: path.to_owned() })
    }

    fn kek(&self, tenant: &TenantId, version: u32) -> Result<Kek, KeyError> {
        Ok(Kek::derive_local(&self.root, tenant, version)?)
    }
}

#[async_trait]
impl KeyProvider for LocalFileProvider {
    fn describe(&self) -> String {
        format!("insecure-local-file {}", self.path.display())
    }

    async fn wrap(
        &self,
        tenant: &TenantId,
        key_ref: &str,
        key: &SecretKey,
        version: u32,
    ) -> Result<WrappedKey, KeyError> {
        let ctx = KeyContext { tenant, key_ref, kek_version: version };
        Ok(wrap::wrap(&self.kek(tenant, version)?, &ctx, key)?)
    }

    async fn unwrap(&self, tenant: &TenantId, key_ref: &str, wrapped: &WrappedKey) -> Result<SecretKey, KeyError> {
        let ctx = KeyContext { tenant, key_ref, kek_version: wrapped.kek_version };
        Ok(wrap::unwrap(&self.kek(tenant, wrapped.kek_version)?, &ctx, wrapped)?)
    }

    async fn check(&self) -> Result<(), KeyError> {
        Ok(())
    }

    /// Every version is derived from the root key: there is nothing to find or generate.
    async fn provision_kek(&self, _: &TenantId, _: u32, _: bool) -> Result<ProvisionedKek, KeyError> {
        Ok(ProvisionedKek { id: DERIVED.to_vec(), generated: false })
    }

    /// A derived KEK cannot be destroyed: the root file derives it again. Only an HSM or a KMS
    /// makes an erasure reach copies of the index.
    async fn destroy_kek(&self, tenant: &TenantId, version: u32, _: &[u8]) -> Result<(), KeyError> {
        tracing::warn!(
            tenant = %tenant,
            version,
            "the development key provider cannot destroy a KEK (it derives every version from its root file): \
             copies of the index taken before an erasure can still open the erased data"
        );
        Ok(())
    }

    fn destroys_keks(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn creates_a_private_file_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        LocalFileProvider::ensure_file(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let before = fs::read(&path).unwrap();
        LocalFileProvider::ensure_file(&path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), before, "an existing key is never overwritten");

        let provider = LocalFileProvider::load(&path).unwrap();
        let tenant = TenantId::parse("demo").unwrap();
        let key = SecretKey::generate().unwrap();
        let wrapped = provider.wrap(&tenant, "Patient/1", &key, 1).await.unwrap();
        let again = LocalFileProvider::load(&path).unwrap();
        assert_eq!(again.unwrap(&tenant, "Patient/1", &wrapped).await.unwrap().expose(), key.expose());
        assert!(again.unwrap(&tenant, "Patient/2", &wrapped).await.is_err());
    }

    #[test]
    fn refuses_a_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        LocalFileProvider::ensure_file(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = LocalFileProvider::load(&path).err().unwrap();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
