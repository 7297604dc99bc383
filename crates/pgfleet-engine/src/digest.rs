//! The one SHA-256 hex digest pgfleet stores (audit chain links, token and
//! API key hashes, export digests), so every stored hash is spelled alike.

use sha2::{Digest as _, Sha256};

/// Lower-case hex of the SHA-256 of `bytes`.
pub fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
