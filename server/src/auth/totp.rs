//! The TOTP second factor (RFC 6238: HMAC-SHA-1, 30-second steps, 6 digits — what
//! every authenticator app speaks) and the recovery codes that stand in for a lost
//! authenticator.
//!
//! Pure: the time is an argument (`now_unix_secs`), nothing here reads the clock,
//! the disk or the network; only [`TotpSecret::generate`] and
//! [`new_recovery_codes`] draw from the OS random number generator. Replay
//! protection is the caller's half of the contract: [`verify`] returns the matched
//! step, the caller stores it and passes it back as `last_used_step`.
//!
//! Must never: log, `Debug`-print or put into an error a secret, a code or a
//! recovery code (`TotpSecret`'s `Debug` prints no bytes); compare a code in
//! variable time; accept a code for a step at or before the last one used.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rand::rngs::OsRng;
use rand::TryRngCore;
use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, Builder, Secret, Totp};

/// Seconds per TOTP step (RFC 6238's recommended `X`).
pub const STEP_SECS: u64 = 30;
/// Digits in a code.
pub const DIGITS: usize = 6;
/// Bytes in a secret: 160 bits, RFC 4226's recommended length.
pub const SECRET_LEN: usize = 20;
/// How many recovery codes [`new_recovery_codes`] makes.
pub const RECOVERY_CODE_COUNT: usize = 10;

/// Steps either side of the current one that are still accepted (clock skew
/// between the phone and the server, and time to type), per RFC 6238 §5.2.
const SKEW_STEPS: u64 = 1;
/// Longer input is refused before it is copied: a code is 6 digits, perhaps spaced.
const MAX_CODE_INPUT: usize = 32;
/// RFC 4648 base32 in lower case: no 0/1/8/9, so no O/0 or l/1 confusion.
const RECOVERY_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// Characters per recovery code, without the dash: 10 × 5 bits = 50 bits.
const RECOVERY_CODE_CHARS: usize = 10;

/// Issuer and account are percent-encoded except RFC 3986's unreserved characters,
/// so `@`, spaces, `:` and non-ASCII letters survive any otpauth parser.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TotpError {
    /// Not 6 ASCII digits (after removing spaces).
    #[error("a code is 6 digits")]
    Malformed,
    /// Well-formed, but not the code for any step in the window.
    #[error("wrong code")]
    Wrong,
    /// The code for a step that was already used (a code is accepted once).
    #[error("this code was already used; wait for the next one")]
    Replayed,
    /// Stored secret bytes of the wrong length (a corrupt or foreign record).
    #[error("a TOTP secret is {SECRET_LEN} bytes, got {0}")]
    SecretLength(usize),
    /// An issuer or account name that cannot be put into an otpauth URI.
    #[error("otpauth label: {0}")]
    InvalidLabel(&'static str),
}

/// A user's 160-bit TOTP secret, shared with their authenticator app.
///
/// Its `Debug` prints no bytes. Stored only sealed (`auth::server_key`).
#[derive(Clone)]
pub struct TotpSecret([u8; SECRET_LEN]);

impl TotpSecret {
    /// A new secret from the OS random number generator.
    ///
    /// # Panics
    /// If the OS random number generator fails (the process cannot make any secret).
    pub fn generate() -> Self {
        let mut bytes = [0u8; SECRET_LEN];
        fill_random(&mut bytes);
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// # Errors
    /// [`TotpError::SecretLength`] unless `bytes` is exactly [`SECRET_LEN`] long.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TotpError> {
        let bytes: [u8; SECRET_LEN] = bytes.try_into().map_err(|_| TotpError::SecretLength(bytes.len()))?;
        Ok(Self(bytes))
    }

    /// RFC 4648 base32, upper case, no padding (32 characters): what authenticator
    /// apps accept when the secret is typed in instead of scanned.
    pub fn base32(&self) -> String {
        Secret::new_stack(self.0).to_base32()
    }

    /// The RFC 6238 generator for this secret: SHA-1, 30 s, 6 digits, no skew (the
    /// window is walked by [`verify`] itself, so each step is checked on its own).
    fn totp(&self) -> Totp {
        Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(DIGITS as u8)
            .with_step_duration(STEP_SECS)
            .with_skew(0)
            .with_secret(Secret::new_stack(self.0))
            .build()
            .expect("RFC 6238 parameters with a 160-bit secret are valid")
    }
}

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(..)")
    }
}

/// The otpauth URI an authenticator app scans (as a QR code) to enrol `secret`:
/// `otpauth://totp/Issuer:account?secret=…&issuer=Issuer&algorithm=SHA1&digits=6&period=30`,
/// issuer and account percent-encoded. The parameters are spelled out even where
/// they are the defaults, so no app has to guess.
///
/// # Errors
/// [`TotpError::InvalidLabel`] when `issuer` is empty or holds a `:` (the Key URI
/// format splits the label at the first colon, encoded or not, so it would be
/// misread), or `account` is empty. A colon in the account is fine: it comes after
/// the separator.
pub fn otpauth_uri(secret: &TotpSecret, issuer: &str, account: &str) -> Result<String, TotpError> {
    if issuer.is_empty() {
        return Err(TotpError::InvalidLabel("empty issuer"));
    }
    if issuer.contains(':') {
        return Err(TotpError::InvalidLabel("the issuer must not contain ':'"));
    }
    if account.is_empty() {
        return Err(TotpError::InvalidLabel("empty account name"));
    }
    let issuer = utf8_percent_encode(issuer, URI_COMPONENT);
    let account = utf8_percent_encode(account, URI_COMPONENT);
    Ok(format!(
        "otpauth://totp/{issuer}:{account}?secret={}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        secret.base32()
    ))
}

/// Checks `code` against the step of `now_unix_secs` and one step either side.
///
/// Returns the matched step (`unix_secs / 30`); the caller stores it and passes it
/// as `last_used_step` next time, so that each code is accepted once (RFC 6238
/// §5.2). Spaces are ignored (`"123 456"` is how apps show a code). Every step in
/// the window is compared, each in constant time, whatever matched before it.
///
/// # Errors
/// - [`TotpError::Malformed`]: not exactly 6 ASCII digits once spaces are removed.
/// - [`TotpError::Replayed`]: the code of a step at or before `last_used_step` (and
///   of no later step in the window).
/// - [`TotpError::Wrong`]: the code of no step in the window.
pub fn verify(
    secret: &TotpSecret,
    code: &str,
    now_unix_secs: u64,
    last_used_step: Option<u64>,
) -> Result<u64, TotpError> {
    let code = normalize_code(code)?;
    let totp = secret.totp();
    let current = now_unix_secs / STEP_SECS;
    let mut accepted = None;
    let mut replayed = false;
    for step in current.saturating_sub(SKEW_STEPS)..=current.saturating_add(SKEW_STEPS) {
        let Some(step_start) = step.checked_mul(STEP_SECS) else { continue };
        // `check` compares the parsed code with the generated one in constant time.
        if totp.check(&code, step_start).is_none() {
            continue;
        }
        if last_used_step.is_some_and(|last| step <= last) {
            replayed = true;
        } else if accepted.is_none() {
            accepted = Some(step);
        }
    }
    match accepted {
        Some(step) => Ok(step),
        None if replayed => Err(TotpError::Replayed),
        None => Err(TotpError::Wrong),
    }
}

/// The code an authenticator app shows for `secret` at `unix_secs`: for tests and
/// tooling that play the user's side.
pub fn code_at(secret: &TotpSecret, unix_secs: u64) -> String {
    secret.totp().generate(unix_secs).to_string()
}

/// The 6 digits of `code` without spaces.
fn normalize_code(code: &str) -> Result<String, TotpError> {
    if code.len() > MAX_CODE_INPUT {
        return Err(TotpError::Malformed);
    }
    let digits: String = code.trim().chars().filter(|&c| c != ' ').collect();
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TotpError::Malformed);
    }
    Ok(digits)
}

/// Ten new recovery codes, all different, each 10 random base32 characters shown
/// as `xxxxx-xxxxx` (50 bits). Shown to the user once; only
/// [`hash_recovery_code`] of each is stored.
///
/// # Panics
/// If the OS random number generator fails.
pub fn new_recovery_codes() -> Vec<String> {
    let mut codes: Vec<String> = Vec::with_capacity(RECOVERY_CODE_COUNT);
    while codes.len() < RECOVERY_CODE_COUNT {
        let code = new_recovery_code();
        // A repeat is a 2^-50 event; skipping it keeps "ten codes" true anyway.
        if !codes.contains(&code) {
            codes.push(code);
        }
    }
    codes
}

fn new_recovery_code() -> String {
    let mut random = [0u8; RECOVERY_CODE_CHARS];
    fill_random(&mut random);
    let mut code = String::with_capacity(RECOVERY_CODE_CHARS + 1);
    for (i, byte) in random.iter().enumerate() {
        if i == RECOVERY_CODE_CHARS / 2 {
            code.push('-');
        }
        // 256 is a multiple of 32, so the low 5 bits are uniform.
        code.push(char::from(RECOVERY_ALPHABET[usize::from(byte & 0x1f)]));
    }
    code
}

/// A recovery code as compared: lower case, dashes and whitespace removed, so
/// `ABCDE-FGHIJ`, `abcdefghij` and `abcde fghij` are the same code.
pub fn normalize_recovery_code(code: &str) -> String {
    code.chars().filter(|&c| c != '-' && !c.is_whitespace()).flat_map(char::to_lowercase).collect()
}

/// The stored form of a recovery code: SHA-256 of [`normalize_recovery_code`].
///
/// Unsalted and unkeyed: a leaked table lets an attacker test guesses offline
/// (50 bits per code). A caller that wants a leak to be useless without the server
/// key can store `ServerKey::hmac("recovery-code", normalize_recovery_code(code))`
/// instead.
pub fn hash_recovery_code(code: &str) -> [u8; 32] {
    Sha256::digest(normalize_recovery_code(code).as_bytes()).into()
}

fn fill_random(bytes: &mut [u8]) {
    OsRng.try_fill_bytes(bytes).expect("the OS random number generator failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B's SHA-1 seed: the ASCII string "12345678901234567890".
    fn rfc_secret() -> TotpSecret {
        TotpSecret::from_bytes(b"12345678901234567890").unwrap()
    }

    /// RFC 6238 Appendix B, SHA-1 rows: (time, 8-digit TOTP).
    const RFC6238_SHA1: [(u64, &str); 6] = [
        (59, "94287082"),
        (1_111_111_109, "07081804"),
        (1_111_111_111, "14050471"),
        (1_234_567_890, "89005924"),
        (2_000_000_000, "69279037"),
        (20_000_000_000, "65353130"),
    ];

    #[test]
    fn rfc6238_appendix_b_sha1_eight_digits() {
        // The same library and parameters as production, with the RFC's 8 digits:
        // the vectors hold byte for byte.
        let totp = Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(8)
            .with_step_duration(STEP_SECS)
            .with_secret(Secret::new_stack(*rfc_secret().as_bytes()))
            .build()
            .unwrap();
        for (time, expected) in RFC6238_SHA1 {
            assert_eq!(totp.generate(time).to_string(), expected, "time {time}");
        }
    }

    #[test]
    fn rfc6238_appendix_b_sha1_six_digits_verify_at_their_step() {
        let secret = rfc_secret();
        for (time, eight) in RFC6238_SHA1 {
            let six = &eight[2..];
            assert_eq!(code_at(&secret, time), six, "time {time}");
            assert_eq!(verify(&secret, six, time, None), Ok(time / STEP_SECS), "time {time}");
        }
    }

    #[test]
    fn one_step_either_side_is_accepted_and_returns_the_code_s_step() {
        let secret = rfc_secret();
        let time = 1_111_111_111;
        let step = time / STEP_SECS;
        let code = code_at(&secret, time);
        assert_eq!(verify(&secret, &code, time - STEP_SECS, None), Ok(step), "phone one step ahead");
        assert_eq!(verify(&secret, &code, time + STEP_SECS, None), Ok(step), "phone one step behind");
        // Anywhere within the step itself.
        assert_eq!(verify(&secret, &code, step * STEP_SECS, None), Ok(step));
        assert_eq!(verify(&secret, &code, step * STEP_SECS + STEP_SECS - 1, None), Ok(step));
    }

    #[test]
    fn two_steps_either_side_are_refused() {
        let secret = rfc_secret();
        let time = 1_111_111_111;
        let code = code_at(&secret, time);
        assert_eq!(verify(&secret, &code, time - 2 * STEP_SECS, None), Err(TotpError::Wrong));
        assert_eq!(verify(&secret, &code, time + 2 * STEP_SECS, None), Err(TotpError::Wrong));
    }

    #[test]
    fn a_code_is_accepted_once() {
        let secret = rfc_secret();
        let time = 1_234_567_890;
        let code = code_at(&secret, time);
        let step = verify(&secret, &code, time, None).unwrap();
        assert_eq!(verify(&secret, &code, time, Some(step)), Err(TotpError::Replayed));
        // Still refused a step later, while the code is inside the window.
        assert_eq!(verify(&secret, &code, time + STEP_SECS, Some(step)), Err(TotpError::Replayed));
        // An older code after a newer one was used is a replay too.
        let older = code_at(&secret, time - STEP_SECS);
        assert_eq!(verify(&secret, &older, time, Some(step)), Err(TotpError::Replayed));
        // The next step's code is fresh.
        let next = code_at(&secret, time + STEP_SECS);
        assert_eq!(verify(&secret, &next, time + STEP_SECS, Some(step)), Ok(step + 1));
        // A wrong code is wrong, not replayed.
        let wrong = if code == "000000" { "000001" } else { "000000" };
        assert_eq!(verify(&secret, wrong, time, Some(step)), Err(TotpError::Wrong));
    }

    #[test]
    fn malformed_codes_are_refused_before_any_comparison() {
        let secret = rfc_secret();
        for bad in [
            "",
            "      ",
            "28708",
            "2870820",
            "94287082",
            "28708a",
            "+28708",
            "-28708",
            "287.08",
            "２８７０８２",
            "٢٨٧٠٨٢",
        ] {
            assert_eq!(verify(&secret, bad, 59, None), Err(TotpError::Malformed), "{bad:?}");
        }
        assert_eq!(verify(&secret, &"1".repeat(10_000), 59, None), Err(TotpError::Malformed));
    }

    #[test]
    fn spaces_around_and_inside_a_code_are_ignored() {
        let secret = rfc_secret();
        for typed in ["287082", " 287082 ", "287 082", "\t287082\n", "2 8 7 0 8 2"] {
            assert_eq!(verify(&secret, typed, 59, None), Ok(1), "{typed:?}");
        }
    }

    #[test]
    fn step_zero_has_no_step_before_it() {
        let secret = rfc_secret();
        let code = code_at(&secret, 0);
        assert_eq!(verify(&secret, &code, 0, None), Ok(0));
        assert_eq!(verify(&secret, &code, 0, Some(0)), Err(TotpError::Replayed));
    }

    #[test]
    fn the_far_future_does_not_overflow() {
        let secret = rfc_secret();
        assert!(matches!(verify(&secret, "123456", u64::MAX, None), Ok(_) | Err(TotpError::Wrong)));
    }

    #[test]
    fn secrets_are_random_and_round_trip_through_bytes() {
        let a = TotpSecret::generate();
        let b = TotpSecret::generate();
        assert_ne!(a.as_bytes(), b.as_bytes());
        let again = TotpSecret::from_bytes(a.as_bytes()).unwrap();
        assert_eq!(again.as_bytes(), a.as_bytes());
        assert_eq!(TotpSecret::from_bytes(&[0; 19]).err(), Some(TotpError::SecretLength(19)));
        assert_eq!(TotpSecret::from_bytes(&[0; 21]).err(), Some(TotpError::SecretLength(21)));
    }

    #[test]
    fn debug_prints_no_secret_bytes() {
        let secret = rfc_secret();
        let printed = format!("{secret:?}");
        assert_eq!(printed, "TotpSecret(..)");
        assert!(!printed.contains(&secret.base32()));
    }

    #[test]
    fn base32_is_rfc4648_without_padding() {
        // RFC 4648 base32 of "12345678901234567890", the secret authenticator apps
        // are given for the RFC 6238 test key.
        assert_eq!(rfc_secret().base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        let random = TotpSecret::generate().base32();
        assert_eq!(random.len(), 32);
        assert!(random.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)), "{random}");
    }

    #[test]
    fn otpauth_uri_has_the_key_uri_shape() {
        let uri = otpauth_uri(&rfc_secret(), "natter", "alice@example.org").unwrap();
        assert_eq!(
            uri,
            "otpauth://totp/natter:alice%40example.org?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=natter&algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn otpauth_uri_percent_encodes_issuer_and_account() {
        let uri = otpauth_uri(&rfc_secret(), "Acme Chat & Co", "zoë+x:y@example.org").unwrap();
        assert!(
            uri.starts_with("otpauth://totp/Acme%20Chat%20%26%20Co:zo%C3%AB%2Bx%3Ay%40example.org?secret="),
            "{uri}"
        );
        assert!(uri.contains("&issuer=Acme%20Chat%20%26%20Co&"), "{uri}");
        // Exactly one literal colon after the scheme: the issuer/account separator.
        assert_eq!(uri.trim_start_matches("otpauth:").matches(':').count(), 1, "{uri}");
        assert_eq!(uri.matches('?').count(), 1, "{uri}");
    }

    #[test]
    fn otpauth_uri_refuses_labels_apps_would_misread() {
        let secret = rfc_secret();
        assert!(matches!(otpauth_uri(&secret, "", "a@b.c"), Err(TotpError::InvalidLabel(_))));
        assert!(matches!(otpauth_uri(&secret, "a:b", "a@b.c"), Err(TotpError::InvalidLabel(_))));
        assert!(matches!(otpauth_uri(&secret, "natter", ""), Err(TotpError::InvalidLabel(_))));
    }

    #[test]
    fn recovery_codes_are_ten_distinct_grouped_base32_codes() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODE_COUNT);
        for code in &codes {
            assert_eq!(code.len(), 11, "{code}");
            let (left, right) = code.split_once('-').expect("grouped xxxxx-xxxxx");
            assert_eq!((left.len(), right.len()), (5, 5), "{code}");
            assert!(left.bytes().chain(right.bytes()).all(|b| RECOVERY_ALPHABET.contains(&b)), "{code}");
        }
        let mut distinct = codes.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), codes.len());
        // A second batch shares nothing with the first.
        assert!(new_recovery_codes().iter().all(|c| !codes.contains(c)));
    }

    #[test]
    fn recovery_codes_use_the_whole_alphabet() {
        // 50 batches × 100 characters: a character missing from all of them would
        // mean a biased mapping (probability of a false alarm ≈ 32 · (31/32)^5000).
        let mut seen = [false; 32];
        for _ in 0..50 {
            for code in new_recovery_codes() {
                for b in normalize_recovery_code(&code).bytes() {
                    seen[RECOVERY_ALPHABET.iter().position(|&a| a == b).unwrap()] = true;
                }
            }
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
    }

    #[test]
    fn recovery_codes_hash_the_same_however_they_are_typed() {
        let code = "abcde-fgh23";
        let stored = hash_recovery_code(code);
        for typed in ["abcde-fgh23", "abcdefgh23", "ABCDE-FGH23", " abcde fgh23 ", "AbCdE-fGh23\n", "abc-de-fgh-23"] {
            assert_eq!(hash_recovery_code(typed), stored, "{typed:?}");
        }
        assert_ne!(hash_recovery_code("abcde-fgh24"), stored);
        assert_eq!(normalize_recovery_code(" ABCDE-FGH23 "), "abcdefgh23");
        let expected: [u8; 32] = Sha256::digest(b"abcdefgh23").into();
        assert_eq!(stored, expected);
    }

    #[test]
    fn generated_recovery_codes_hash_distinctly() {
        let codes = new_recovery_codes();
        let mut hashes: Vec<[u8; 32]> = codes.iter().map(|c| hash_recovery_code(c)).collect();
        hashes.sort();
        hashes.dedup();
        assert_eq!(hashes.len(), RECOVERY_CODE_COUNT);
    }
}
