//! One-time codes, shared by every way natter sends one (email verification,
//! password reset; phone sign-in next): 6 random digits, valid 5 minutes, at
//! most 5 wrong tries, usable once, a new one replacing the old. Only an HMAC
//! of a code (keyed by the server key, bound to its purpose and subject) is
//! ever stored, so a copy of the database does not give the codes away even
//! though there are only a million of them.

use std::time::Duration;

use rand::Rng;

use super::server_key::ServerKey;
use crate::store::auth_state::CodePurpose;

/// How long a code is valid.
pub const CODE_TTL: Duration = Duration::from_secs(5 * 60);
/// Wrong tries before a code is gone.
pub const CODE_ATTEMPTS: u32 = 5;
/// Digits in a code.
pub const CODE_DIGITS: usize = 6;

/// A fresh code: 6 uniformly random digits.
pub fn new_code() -> String {
    format!("{:06}", rand::rng().random_range(0..1_000_000u32))
}

/// The code as typed, without spaces or dashes: `None` unless 6 digits remain.
pub fn normalize(code: &str) -> Option<String> {
    let digits: String = code.chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
    (digits.len() == CODE_DIGITS && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// What is stored for `code`: its HMAC under the server key, bound to what the
/// code is for and whom (a code for one account or purpose proves nothing
/// about another).
pub fn code_hash(key: &ServerKey, purpose: CodePurpose, subject: &str, code: &str) -> [u8; 32] {
    let data = format!("{}\n{subject}\n{code}", purpose.as_str());
    key.hmac("one-time-code", data.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits_and_vary() {
        let codes: std::collections::HashSet<String> = (0..50).map(|_| new_code()).collect();
        assert!(codes.len() > 40, "random: {codes:?}");
        assert!(codes.iter().all(|c| c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit())));
    }

    #[test]
    fn typed_codes_are_normalized_or_refused() {
        assert_eq!(normalize(" 123 456 ").as_deref(), Some("123456"));
        assert_eq!(normalize("123-456").as_deref(), Some("123456"));
        assert_eq!(normalize("12345"), None);
        assert_eq!(normalize("1234567"), None);
        assert_eq!(normalize("12345a"), None);
        assert_eq!(normalize("١٢٣٤٥٦"), None, "only ASCII digits");
    }

    #[test]
    fn a_hash_is_bound_to_key_purpose_subject_and_code() {
        let key = ServerKey::from_bytes(&[1; 32]);
        let other = ServerKey::from_bytes(&[2; 32]);
        let h = code_hash(&key, CodePurpose::ResetPassword, "a@example.org", "123456");
        assert_eq!(h, code_hash(&key, CodePurpose::ResetPassword, "a@example.org", "123456"));
        assert_ne!(h, code_hash(&other, CodePurpose::ResetPassword, "a@example.org", "123456"));
        assert_ne!(h, code_hash(&key, CodePurpose::VerifyEmail, "a@example.org", "123456"));
        assert_ne!(h, code_hash(&key, CodePurpose::ResetPassword, "b@example.org", "123456"));
        assert_ne!(h, code_hash(&key, CodePurpose::ResetPassword, "a@example.org", "123457"));
    }
}
