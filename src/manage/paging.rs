//! Page tokens: opaque, bound to the listing that issued them. Public for
//! the `page_token` fuzz target; the edges only see `Manager::list`/`audit`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::error::{invalid, ManageError};
use super::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};

/// Page size (default 50, at most 1000) and the store's cursor from a
/// request. Page tokens are opaque
/// and bound to the listing that issued them (`binding`: the RPC and its
/// filter); one from another listing is refused, never followed.
pub fn page(
    size: i32,
    token: &str,
    binding: &[u8; 8],
) -> Result<(usize, Option<Vec<u8>>), ManageError> {
    let size = match size {
        size if size < 0 => return Err(invalid("page_size", "must not be negative")),
        0 => DEFAULT_PAGE_SIZE,
        size => (size as usize).min(MAX_PAGE_SIZE),
    };
    if token.is_empty() {
        return Ok((size, None));
    }
    let foreign = || {
        invalid(
            "page_token",
            "not a token of this listing (same call, same filter)",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| foreign())?;
    match bytes.split_first_chunk::<9>() {
        Some((head, cursor)) if head[0] == PAGE_TOKEN_VERSION && head[1..] == binding[..] => {
            Ok((size, Some(cursor.to_vec())))
        }
        _ => Err(foreign()),
    }
}

pub const PAGE_TOKEN_VERSION: u8 = 1;

/// The next page's token: version, binding, the store's cursor.
pub fn next_page_token(binding: &[u8; 8], cursor: Option<Vec<u8>>) -> String {
    cursor.map_or_else(String::new, |cursor| {
        let mut bytes = Vec::with_capacity(9 + cursor.len());
        bytes.push(PAGE_TOKEN_VERSION);
        bytes.extend_from_slice(binding);
        bytes.extend_from_slice(&cursor);
        URL_SAFE_NO_PAD.encode(bytes)
    })
}

/// What a page token is bound to: the RPC and every part of its filter.
pub fn page_binding(parts: &[&[u8]]) -> [u8; 8] {
    let digest = crate::token::sha256_of_parts(parts);
    let mut binding = [0; 8];
    binding.copy_from_slice(&digest[..8]);
    binding
}
