//! Wrapping tenant keys (compartment keys, MAC keys) under a tenant KEK.
//!
//! AES-256-GCM with a random nonce; the AAD binds the tenant, the key's name and the KEK
//! version, so a wrapped key copied to another tenant, another name or relabelled with another
//! KEK version does not unwrap.

use zeroize::Zeroizing;

use super::keys::{Kek, SecretKey};
use super::{CryptoError, aead, encode_fields};
use crate::ids::TenantId;

/// A wrapped key as stored in the index: public bytes, useless without the KEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// Which version of the tenant KEK wrapped it (rotation keeps older versions decrypt-only).
    pub kek_version: u32,
    /// nonce (12) || ciphertext (32) || tag (16)
    pub bytes: Vec<u8>,
}

/// What a wrapped key is bound to.
#[derive(Debug, Clone, Copy)]
pub struct KeyContext<'a> {
    pub tenant: &'a TenantId,
    /// `Patient/{id}`, `tenant`, `mac:paging`...
    pub key_ref: &'a str,
    pub kek_version: u32,
}

impl KeyContext<'_> {
    /// Never change this encoding: every wrapped key in every database is bound to it.
    pub(crate) fn aad(&self) -> Vec<u8> {
        encode_fields(
            "fhirvault/v1/tenant-key",
            &[self.tenant.as_str().as_bytes(), self.key_ref.as_bytes(), &self.kek_version.to_be_bytes()],
        )
    }
}

pub fn wrap(kek: &Kek, ctx: &KeyContext<'_>, key: &SecretKey) -> Result<WrappedKey, CryptoError> {
    let bytes = aead::seal(kek.key().expose(), &ctx.aad(), key.expose())?;
    Ok(WrappedKey { kek_version: ctx.kek_version, bytes })
}

pub fn unwrap(kek: &Kek, ctx: &KeyContext<'_>, wrapped: &WrappedKey) -> Result<SecretKey, CryptoError> {
    if wrapped.kek_version != ctx.kek_version {
        return Err(CryptoError::Integrity { stage: "tenant-key-version" });
    }
    let plain = Zeroizing::new(aead::open(kek.key().expose(), &ctx.aad(), &wrapped.bytes, "tenant-key")?);
    SecretKey::from_slice(&plain).ok_or(CryptoError::Integrity { stage: "tenant-key-length" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_key_only_unwraps_in_its_own_context() {
        let kek = Kek::new(SecretKey::generate().unwrap());
        let other_kek = Kek::new(SecretKey::generate().unwrap());
        let t = TenantId::parse("t").unwrap();
        let u = TenantId::parse("u").unwrap();
        let ctx = KeyContext { tenant: &t, key_ref: "Patient/1", kek_version: 1 };
        let key = SecretKey::generate().unwrap();
        let wrapped = wrap(&kek, &ctx, &key).unwrap();
        assert_eq!(unwrap(&kek, &ctx, &wrapped).unwrap().expose(), key.expose());

        let wrong = [
            KeyContext { tenant: &u, ..ctx },
            KeyContext { key_ref: "Patient/2", ..ctx },
            KeyContext { kek_version: 2, ..ctx },
        ];
        for bad in wrong {
            assert!(unwrap(&kek, &bad, &WrappedKey { kek_version: bad.kek_version, ..wrapped.clone() }).is_err());
        }
        assert!(unwrap(&other_kek, &ctx, &wrapped).is_err());
    }
}
