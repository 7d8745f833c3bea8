//! Envelope encryption and the primitives it rests on.
//!
//! **Architecture Invariant:** this module does no IO. Keys come in as typed values and go out
//! only as wrapped (encrypted) bytes; see `SECURITY.md` for the formats.
//!
//! Layers: a resource version is sealed with a fresh data key (DEK); the DEK is wrapped by the
//! compartment key of its patient (or of the tenant); compartment keys are wrapped by the
//! tenant's key-encryption key (KEK), which the `keys` module obtains from a `KeyProvider`.

pub mod aead;
pub mod envelope;
pub mod keys;
pub mod mac;
pub mod wrap;

pub use envelope::{ObjectIdentity, Opened, Sealed};
pub use keys::{CompartmentKey, Kek, MacKey, SecretKey};
pub use wrap::{KeyContext, WrappedKey};

/// Everything that can go wrong in `crypto`. Deliberately coarse: an attacker probing sealed
/// objects learns only "integrity", never which check failed (the log gets the stage).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("integrity check failed ({stage})")]
    Integrity { stage: &'static str },
    #[error("the system random number generator failed")]
    Random,
    #[error("plaintext too large to seal")]
    TooLarge,
}

/// Fill `buf` from the operating system's CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    use ring::rand::SecureRandom as _;
    ring::rand::SystemRandom::new().fill(buf).map_err(|_| CryptoError::Random)
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Length-prefixed concatenation, the one encoding every AAD and MAC input uses: a domain label,
/// then each field as a big-endian u32 length and its bytes. Unambiguous by construction.
pub(crate) fn encode_fields(label: &str, fields: &[&[u8]]) -> Vec<u8> {
    let len = label.len() + 1 + fields.iter().map(|f| f.len() + 4).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(label.as_bytes());
    out.push(0);
    for field in fields {
        // Fields are identifiers and headers, far below 4 GiB.
        let n = u32::try_from(field.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

/// Make ring the process's TLS crypto provider (for outgoing HTTPS: S3, later OIDC and KMS), so
/// that one crypto library serves everything. Idempotent.
pub fn install_tls_provider() {
    // An error only means a provider is installed already.
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_encoding_is_unambiguous() {
        assert_ne!(encode_fields("l", &[b"ab", b"c"]), encode_fields("l", &[b"a", b"bc"]));
        assert_ne!(encode_fields("l1", &[b"x"]), encode_fields("l", &[b"1x"]));
    }
}
