//! The sealed-object format (version 1). `SECURITY.md` documents it byte by byte.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "FVLT"
//!      4     1  format version = 1
//!      5     1  suite = 1 (AES-256-GCM, HMAC-SHA256 key commitment)
//!      6    60  wrapped DEK: nonce (12) || AES-256-GCM(compartment key, DEK) (32) || tag (16)
//!     66    32  key commitment: HMAC-SHA256(DEK, "fhirvault/v1/key-commitment")
//!     98    12  payload nonce
//!    110     n  AES-256-GCM(DEK, resource JSON) || tag (16)
//! ```
//! The DEK wrap binds the object identity; the payload binds the identity and the whole header.

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::keys::{CompartmentKey, SecretKey};
use super::{CryptoError, aead, encode_fields, mac};
use crate::ids::{ResourceId, ResourceType, TenantId, VersionId};

const MAGIC: &[u8; 4] = b"FVLT";
const FORMAT_V1: u8 = 1;
const SUITE_AES256GCM_HMAC: u8 = 1;
const WRAPPED_DEK_LEN: usize = aead::NONCE_LEN + 32 + aead::TAG_LEN;
const HEADER_LEN: usize = 4 + 1 + 1 + WRAPPED_DEK_LEN + mac::TAG_LEN + aead::NONCE_LEN;
const COMMITMENT_LABEL: &[u8] = b"fhirvault/v1/key-commitment";

/// Everything a sealed object is bound to. Never change the encoding (`fields`): every stored
/// object in every deployment authenticates these exact bytes.
#[derive(Debug, Clone, Copy)]
pub struct ObjectIdentity<'a> {
    pub tenant: &'a TenantId,
    /// The storage location the object was written to (its jurisdiction is in the config).
    pub location: &'a str,
    pub resource_type: ResourceType,
    pub id: &'a ResourceId,
    pub version: VersionId,
    /// The compartment whose key wraps the DEK (`Patient/{id}` or `tenant`).
    pub compartment: &'a str,
}

impl ObjectIdentity<'_> {
    fn aad(&self, label: &str, header: Option<&[u8]>) -> Vec<u8> {
        let version = self.version.get().to_be_bytes();
        let mut fields: Vec<&[u8]> = vec![
            self.tenant.as_str().as_bytes(),
            self.location.as_bytes(),
            self.resource_type.as_str().as_bytes(),
            self.id.as_str().as_bytes(),
            &version,
            self.compartment.as_bytes(),
        ];
        if let Some(header) = header {
            fields.push(header);
        }
        encode_fields(label, &fields)
    }
}

/// Ciphertext as stored in the object store.
pub struct Sealed(Vec<u8>);

/// Plaintext (the resource JSON) after every check passed.
pub struct Opened(Vec<u8>);

impl Sealed {
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl Opened {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Seal `plaintext` with a fresh DEK wrapped by `key`, bound to `identity`.
pub fn seal(key: &CompartmentKey, identity: &ObjectIdentity<'_>, plaintext: &[u8]) -> Result<Sealed, CryptoError> {
    let dek = SecretKey::generate()?;
    let wrapped = aead::seal(key.key().expose(), &identity.aad("fhirvault/v1/dek", None), dek.expose())?;
    let commitment = mac::hmac_sha256(dek.expose(), COMMITMENT_LABEL);
    let mut nonce = [0u8; aead::NONCE_LEN];
    super::fill_random(&mut nonce)?;

    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + aead::TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_V1);
    out.push(SUITE_AES256GCM_HMAC);
    out.extend_from_slice(&wrapped);
    out.extend_from_slice(&commitment);
    out.extend_from_slice(&nonce);
    if out.len() != HEADER_LEN {
        return Err(CryptoError::Integrity { stage: "header-length" });
    }
    let aad = identity.aad("fhirvault/v1/payload", Some(&out));
    let ciphertext = aead::seal_with_nonce(dek.expose(), &nonce, &aad, plaintext)?;
    out.extend_from_slice(&ciphertext);
    Ok(Sealed(out))
}

/// Open a sealed object; any change to the bytes, the identity or the key is an integrity error.
pub fn open(key: &CompartmentKey, identity: &ObjectIdentity<'_>, sealed: &Sealed) -> Result<Opened, CryptoError> {
    let header_err = CryptoError::Integrity { stage: "header" };
    let bytes = sealed.as_bytes();
    let header = bytes.get(..HEADER_LEN).ok_or(header_err.clone())?;
    let ciphertext = bytes.get(HEADER_LEN..).ok_or(header_err.clone())?;
    let (magic, rest) = header.split_first_chunk::<4>().ok_or(header_err.clone())?;
    let (&[format, suite], rest) = rest.split_first_chunk::<2>().ok_or(header_err.clone())?;
    if magic != MAGIC || format != FORMAT_V1 || suite != SUITE_AES256GCM_HMAC {
        return Err(header_err);
    }
    let (wrapped, rest) = rest.split_first_chunk::<WRAPPED_DEK_LEN>().ok_or(header_err.clone())?;
    let (commitment, rest) = rest.split_first_chunk::<{ mac::TAG_LEN }>().ok_or(header_err.clone())?;
    let nonce: &[u8; aead::NONCE_LEN] = rest.try_into().map_err(|_| header_err)?;

    let dek_bytes =
        Zeroizing::new(aead::open(key.key().expose(), &identity.aad("fhirvault/v1/dek", None), wrapped, "data-key")?);
    let dek = SecretKey::from_slice(&dek_bytes).ok_or(CryptoError::Integrity { stage: "data-key" })?;
    let expected = mac::hmac_sha256(dek.expose(), COMMITMENT_LABEL);
    if !bool::from(expected.ct_eq(commitment)) {
        return Err(CryptoError::Integrity { stage: "commitment" });
    }
    let aad = identity.aad("fhirvault/v1/payload", Some(header));
    let plaintext = aead::open_with_nonce(dek.expose(), nonce, &aad, ciphertext, "payload")?;
    Ok(Opened(plaintext))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        tenant: TenantId,
        id: ResourceId,
        other: ResourceId,
    }

    fn fixture() -> Fixture {
        Fixture {
            tenant: TenantId::parse("demo").unwrap(),
            id: ResourceId::parse("p1").unwrap(),
            other: ResourceId::parse("p2").unwrap(),
        }
    }

    fn identity(f: &Fixture) -> ObjectIdentity<'_> {
        ObjectIdentity {
            tenant: &f.tenant,
            location: "local",
            resource_type: ResourceType::PATIENT,
            id: &f.id,
            version: VersionId::FIRST,
            compartment: "Patient/p1",
        }
    }

    #[test]
    fn round_trip_and_no_plaintext_in_the_output() {
        let f = fixture();
        let key = CompartmentKey::new(SecretKey::generate().unwrap());
        let plaintext = br#"{"resourceType":"Patient","name":[{"family":"Zyxwvutsrq"}]}"#;
        let sealed = seal(&key, &identity(&f), plaintext).unwrap();
        assert!(!sealed.as_bytes().windows(10).any(|w| w == b"Zyxwvutsrq"));
        assert_eq!(sealed.as_bytes().len(), HEADER_LEN + plaintext.len() + aead::TAG_LEN);
        assert_eq!(open(&key, &identity(&f), &sealed).unwrap().as_bytes(), plaintext);
    }

    #[test]
    fn every_binding_is_checked() {
        let f = fixture();
        let key = CompartmentKey::new(SecretKey::generate().unwrap());
        let sealed = seal(&key, &identity(&f), b"{}").unwrap();
        let t2 = TenantId::parse("other").unwrap();
        let wrong = [
            ObjectIdentity { tenant: &t2, ..identity(&f) },
            ObjectIdentity { location: "elsewhere", ..identity(&f) },
            ObjectIdentity { resource_type: ResourceType::parse("Observation").unwrap(), ..identity(&f) },
            ObjectIdentity { id: &f.other, ..identity(&f) },
            ObjectIdentity { version: VersionId::FIRST.next().unwrap(), ..identity(&f) },
            ObjectIdentity { compartment: "tenant", ..identity(&f) },
        ];
        for (i, bad) in wrong.iter().enumerate() {
            assert!(matches!(open(&key, bad, &sealed), Err(CryptoError::Integrity { .. })), "case {i}");
        }
        let other_key = CompartmentKey::new(SecretKey::generate().unwrap());
        assert!(open(&other_key, &identity(&f), &sealed).is_err());
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let f = fixture();
        let key = CompartmentKey::new(SecretKey::generate().unwrap());
        let sealed = seal(&key, &identity(&f), b"{\"resourceType\":\"Patient\"}").unwrap();
        for i in 0..sealed.as_bytes().len() {
            let mut bytes = sealed.as_bytes().to_vec();
            bytes[i] ^= 0x01;
            assert!(open(&key, &identity(&f), &Sealed::from_bytes(bytes)).is_err(), "byte {i}");
        }
        let truncated = sealed.as_bytes()[..HEADER_LEN - 1].to_vec();
        assert!(open(&key, &identity(&f), &Sealed::from_bytes(truncated)).is_err());
    }

    #[test]
    fn the_commitment_is_checked_before_the_payload() {
        // A header whose commitment does not match its DEK is refused even if the payload
        // tag would verify: this is what stops one ciphertext opening under two keys.
        let f = fixture();
        let key = CompartmentKey::new(SecretKey::generate().unwrap());
        let sealed = seal(&key, &identity(&f), b"{}").unwrap();
        let mut bytes = sealed.into_bytes();
        bytes[70] ^= 0xff;
        let err = open(&key, &identity(&f), &Sealed::from_bytes(bytes)).err().unwrap();
        assert_eq!(err, CryptoError::Integrity { stage: "commitment" });
    }

    /// More than 10,000 randomized attacks on sealed objects and on the wrapped keys that open
    /// them, none accepted: a bit flipped in any header field (magic, format, suite, the
    /// wrapped DEK's nonce, ciphertext and tag, the commitment, the payload nonce) or in the
    /// payload or its tag; an object opened under an identity that differs in one part (tenant,
    /// location, type, id, version, compartment) or under another compartment's key; objects
    /// swapped across tenants, patients, versions and locations; one field spliced in from
    /// another object; truncation and extension; a wrapped compartment key flipped, or unwrapped
    /// under another tenant, name or KEK version. Deterministic (a fixed seed).
    #[test]
    fn ten_thousand_random_attacks_are_all_refused() {
        use crate::audit::log::tests::Rng;
        use crate::crypto::keys::Kek;
        use crate::crypto::wrap::{self, KeyContext, WrappedKey};

        let tenants = [TenantId::parse("demo").unwrap(), TenantId::parse("other").unwrap()];
        let ids = [ResourceId::parse("p1").unwrap(), ResourceId::parse("p2").unwrap()];
        let compartments = ["Patient/p1", "Patient/p2"];
        let locations = ["paris", "frankfurt"];
        let versions = [VersionId::FIRST, VersionId::FIRST.next().unwrap()];
        let kek = Kek::new(SecretKey::generate().unwrap());
        let mut rng = Rng(0x5eed_f00d_dead_beef);

        // Every (tenant, patient, location, version): an object sealed under that patient's key.
        struct Object<'a> {
            identity: ObjectIdentity<'a>,
            key: usize,
            sealed: Vec<u8>,
        }
        let keys: Vec<CompartmentKey> = (0..4).map(|_| CompartmentKey::new(SecretKey::generate().unwrap())).collect();
        let mut objects = Vec::new();
        for (t, tenant) in tenants.iter().enumerate() {
            for (p, id) in ids.iter().enumerate() {
                for location in locations {
                    for version in versions {
                        let identity = ObjectIdentity {
                            tenant,
                            location,
                            resource_type: ResourceType::PATIENT,
                            id,
                            version,
                            compartment: compartments[p],
                        };
                        let body = format!(r#"{{"resourceType":"Patient","id":"{}","n":{}}}"#, id.as_str(), rng.next());
                        let sealed = seal(&keys[t * 2 + p], &identity, body.as_bytes()).unwrap().into_bytes();
                        objects.push(Object { identity, key: t * 2 + p, sealed });
                    }
                }
            }
        }
        let fields: [(usize, usize); 10] =
            [(0, 4), (4, 5), (5, 6), (6, 18), (18, 50), (50, 66), (66, 98), (98, 110), (110, 0), (0, 16)];
        let other_type = ResourceType::parse("Observation").unwrap();
        let mut attacks = 0;
        for round in 0..12_000 {
            let o = &objects[rng.below(objects.len() as u64) as usize];
            let key = &keys[o.key];
            let refused = |bytes: Vec<u8>, identity: &ObjectIdentity<'_>, key: &CompartmentKey| {
                matches!(open(key, identity, &Sealed::from_bytes(bytes)), Err(CryptoError::Integrity { .. }))
            };
            let ok = match rng.below(6) {
                0 => {
                    // A bit in one field: payload fields are measured from the end.
                    let (start, end) = fields[rng.below(fields.len() as u64) as usize];
                    let len = o.sealed.len();
                    let (start, end) = match (start, end) {
                        (110, 0) => (110, len - 16),
                        (0, 16) => (len - 16, len),
                        other => other,
                    };
                    let mut bytes = o.sealed.clone();
                    let bit = start * 8 + rng.below(((end - start) * 8) as u64) as usize;
                    bytes[bit / 8] ^= 1 << (bit % 8);
                    refused(bytes, &o.identity, key)
                }
                1 => {
                    let mut identity = o.identity;
                    match rng.below(6) {
                        0 => identity.tenant = &tenants[usize::from(identity.tenant == &tenants[0])],
                        1 => identity.location = if identity.location == "paris" { "frankfurt" } else { "paris" },
                        2 => identity.resource_type = other_type,
                        3 => identity.id = &ids[usize::from(identity.id == &ids[0])],
                        4 => identity.version = versions[usize::from(identity.version == versions[0])],
                        _ => {
                            identity.compartment =
                                if identity.compartment == "tenant" { "Patient/p1" } else { "tenant" }
                        }
                    }
                    refused(o.sealed.clone(), &identity, key)
                }
                2 => {
                    // Another object (another tenant, patient, location or version) in this
                    // one's place, opened with this one's key, or with its own key.
                    let mut j = rng.below(objects.len() as u64) as usize;
                    while std::ptr::eq(&objects[j], o) {
                        j = rng.below(objects.len() as u64) as usize;
                    }
                    let with = if rng.below(2) == 0 { key } else { &keys[objects[j].key] };
                    refused(objects[j].sealed.clone(), &o.identity, with)
                }
                3 => {
                    // One header field taken from another object.
                    let donor = &objects[rng.below(objects.len() as u64) as usize];
                    if std::ptr::eq(donor, o) {
                        continue;
                    }
                    let (start, end) = fields[3 + rng.below(5) as usize];
                    let mut bytes = o.sealed.clone();
                    bytes[start..end].copy_from_slice(&donor.sealed[start..end]);
                    refused(bytes, &o.identity, key)
                }
                4 => {
                    let mut bytes = o.sealed.clone();
                    if rng.below(2) == 0 {
                        bytes.truncate(rng.below(bytes.len() as u64) as usize);
                    } else {
                        for _ in 0..=rng.below(32) {
                            bytes.push(rng.next() as u8);
                        }
                    }
                    refused(bytes, &o.identity, key)
                }
                _ => {
                    let tenant = &tenants[rng.below(2) as usize];
                    let ctx = KeyContext { tenant, key_ref: compartments[rng.below(2) as usize], kek_version: 1 };
                    let wrapped = wrap::wrap(&kek, &ctx, &SecretKey::generate().unwrap()).unwrap();
                    let other_tenant = &tenants[usize::from(tenant == &tenants[0])];
                    let other_ref = if ctx.key_ref == compartments[0] { compartments[1] } else { compartments[0] };
                    match rng.below(4) {
                        0 => {
                            let mut bytes = wrapped.bytes.clone();
                            let bit = rng.below((bytes.len() * 8) as u64) as usize;
                            bytes[bit / 8] ^= 1 << (bit % 8);
                            wrap::unwrap(&kek, &ctx, &WrappedKey { bytes, ..wrapped }).is_err()
                        }
                        1 => wrap::unwrap(&kek, &KeyContext { tenant: other_tenant, ..ctx }, &wrapped).is_err(),
                        2 => wrap::unwrap(&kek, &KeyContext { key_ref: other_ref, ..ctx }, &wrapped).is_err(),
                        _ => {
                            let relabelled = WrappedKey { kek_version: 2, ..wrapped };
                            wrap::unwrap(&kek, &KeyContext { kek_version: 2, ..ctx }, &relabelled).is_err()
                        }
                    }
                }
            };
            assert!(ok, "round {round}: a mutation was accepted");
            attacks += 1;
        }
        assert!(attacks >= 10_000, "{attacks} attacks");
    }
}
