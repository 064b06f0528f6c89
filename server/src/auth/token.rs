//! API tokens for scripts: `rft_` and 48 hex digits, stored only as their SHA-256.

use crate::db::{Role, Scope};

/// Prefix of API tokens, so a leaked one is recognisable in logs and secret scanners.
pub const API_TOKEN_PREFIX: &str = "rft_";
/// Longest `Authorization` token looked up (ours are 52 characters).
const MAX_TOKEN_CHARS: usize = 200;

/// A new API token's text and the hash that is stored.
pub fn new_api_token() -> (String, String) {
    let secret = crate::hub::random_hex(24);
    let text = format!("{API_TOKEN_PREFIX}{secret}");
    let hash = hash_token(&text);
    (text, hash)
}

/// SHA-256 hex of a token's text.
pub fn hash_token(text: &str) -> String {
    super::sha256_hex(text)
}

/// The token of an `Authorization: Bearer rft_…` header value, if it has that shape.
pub fn bearer_token(header: &str) -> Option<&str> {
    header
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| t.starts_with(API_TOKEN_PREFIX) && t.len() < MAX_TOKEN_CHARS)
}

/// How strong a scope is: read ⊂ write ⊂ admin.
pub fn rank(s: Scope) -> u8 {
    match s {
        Scope::Read => 1,
        Scope::Write => 2,
        Scope::Admin => 3,
    }
}

/// The API scope of a dashboard role (admin, operator, viewer: admin, write, read).
pub fn role_scope(role: Role) -> Scope {
    match role {
        Role::Admin => Scope::Admin,
        Role::Operator => Scope::Write,
        Role::Viewer => Scope::Read,
    }
}

/// The strongest of a token's scopes.
pub fn strongest(scopes: &[Scope]) -> Option<Scope> {
    scopes.iter().copied().max_by_key(|s| rank(*s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_prefix_and_their_hash() {
        let (text, hash) = new_api_token();
        assert!(text.starts_with(API_TOKEN_PREFIX));
        assert_eq!(hash, hash_token(&text));
        assert_eq!(bearer_token(&format!("Bearer {text}")), Some(text.as_str()));
        assert_eq!(bearer_token("Bearer abc"), None);
        assert_eq!(bearer_token(&text), None);
        assert_eq!(
            strongest(&[Scope::Read, Scope::Admin, Scope::Write]),
            Some(Scope::Admin)
        );
        assert_eq!(strongest(&[]), None);
    }
}
