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

use super::{KeyError, KeyProvider};
use crate::crypto::{Kek, KeyContext, SecretKey, WrappedKey, wrap};
use crate::ids::TenantId;

const KEK_VERSION: u32 = 1;

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
        let io = |e: std::io::Error| KeyError::Provider(format!("cannot create `{}`: {e}", path.display()));
        let key = SecretKey::generate()?;
        let encoded = Zeroizing::new(STANDARD.encode(key.expose()));
        let mut file = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(f) => f,
            // Another process created it first; use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(io(e)),
        };
        file.write_all(encoded.as_bytes()).map_err(io)?;
        file.write_all(b"\n").map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Load the root key; refuses a file other users can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let fail = |why: String| KeyError::Provider(format!("root key file `{}`: {why}", path.display()));
        let meta = fs::metadata(path).map_err(|e| fail(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(fail(format!(
                "mode {:o} lets other users read it; run `chmod 600` on it",
                meta.permissions().mode() & 0o777
            )));
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| fail(e.to_string()))?);
        let bytes = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| fail("not base64".into()))?);
        let root = SecretKey::from_slice(&bytes).ok_or_else(|| fail("not a 256-bit key".into()))?;
        Ok(Self { root, path: path.to_owned() })
    }

    fn kek(&self, tenant: &TenantId) -> Result<Kek, KeyError> {
        Ok(Kek::derive_local(&self.root, tenant)?)
    }
}

#[async_trait]
impl KeyProvider for LocalFileProvider {
    fn describe(&self) -> String {
        format!("insecure-local-file {}", self.path.display())
    }

    fn primary_version(&self) -> u32 {
        KEK_VERSION
    }

    async fn wrap(&self, tenant: &TenantId, key_ref: &str, key: &SecretKey) -> Result<WrappedKey, KeyError> {
        let ctx = KeyContext { tenant, key_ref, kek_version: KEK_VERSION };
        Ok(wrap::wrap(&self.kek(tenant)?, &ctx, key)?)
    }

    async fn unwrap(&self, tenant: &TenantId, key_ref: &str, wrapped: &WrappedKey) -> Result<SecretKey, KeyError> {
        let ctx = KeyContext { tenant, key_ref, kek_version: wrapped.kek_version };
        Ok(wrap::unwrap(&self.kek(tenant)?, &ctx, wrapped)?)
    }

    async fn check(&self) -> Result<(), KeyError> {
        Ok(())
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
        let wrapped = provider.wrap(&tenant, "Patient/1", &key).await.unwrap();
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
