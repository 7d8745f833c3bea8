//! Opaque, MAC-bound paging links for history and search.
//!
//! A `next` link carries a cursor: where to continue (an opaque position: a commit sequence for
//! history, the last resource id for search), an expiry, and an HMAC over both plus the tenant,
//! the principal and the query it was issued for. A link replayed by another principal, on
//! another tenant, with another query, or after expiry is refused.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::auth::Principal;
use crate::crypto::MacKey;
use crate::crypto::mac::TAG_LEN;
use crate::time::Timestamp;

use super::RequestContext;

const CURSOR_LABEL: &str = "fhirvault/v1/paging";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PagingError {
    #[error("the paging link is invalid or was issued for another user or query")]
    Invalid,
    #[error("the paging link has expired; start again from the first page")]
    Expired,
}

impl PagingError {
    pub fn status(&self) -> u16 {
        match self {
            Self::Invalid => 400,
            Self::Expired => 410,
        }
    }
}

fn fields<'a>(
    ctx: &'a RequestContext,
    principal: &'a Principal,
    binding: &'a str,
    position: &'a [u8],
    expires: &'a [u8; 8],
) -> [&'a [u8]; 6] {
    [
        ctx.tenant.as_str().as_bytes(),
        principal.issuer().as_bytes(),
        principal.subject().as_bytes(),
        binding.as_bytes(),
        position,
        expires,
    ]
}

/// A cursor for `position`, bound to the tenant, the principal and `binding` (the query).
pub fn sign(
    mac: &MacKey,
    ctx: &RequestContext,
    principal: &Principal,
    binding: &str,
    position: &[u8],
    ttl: std::time::Duration,
) -> String {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let expires = Timestamp::now().millis().saturating_add(ttl_ms).to_be_bytes();
    let tag = mac.sign(CURSOR_LABEL, &fields(ctx, principal, binding, position, &expires));
    let mut raw = Vec::with_capacity(8 + TAG_LEN + position.len());
    raw.extend_from_slice(&expires);
    raw.extend_from_slice(&tag);
    raw.extend_from_slice(position);
    URL_SAFE_NO_PAD.encode(raw)
}

/// The position of a cursor `sign` issued for the same tenant, principal and `binding`.
pub fn verify(
    mac: &MacKey,
    ctx: &RequestContext,
    principal: &Principal,
    binding: &str,
    cursor: &str,
) -> Result<Vec<u8>, PagingError> {
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| PagingError::Invalid)?;
    let (expires, rest) = raw.split_first_chunk::<8>().ok_or(PagingError::Invalid)?;
    let (tag, position) = rest.split_first_chunk::<TAG_LEN>().ok_or(PagingError::Invalid)?;
    if !mac.verify(CURSOR_LABEL, &fields(ctx, principal, binding, position, expires), tag) {
        return Err(PagingError::Invalid);
    }
    if i64::from_be_bytes(*expires) < Timestamp::now().millis() {
        return Err(PagingError::Expired);
    }
    Ok(position.to_vec())
}

/// `verify` for a cursor whose position is a commit sequence.
pub fn verify_seq(
    mac: &MacKey,
    ctx: &RequestContext,
    principal: &Principal,
    binding: &str,
    cursor: &str,
) -> Result<i64, PagingError> {
    let position = verify(mac, ctx, principal, binding, cursor)?;
    let seq: [u8; 8] = position.as_slice().try_into().map_err(|_| PagingError::Invalid)?;
    Ok(i64::from_be_bytes(seq))
}
