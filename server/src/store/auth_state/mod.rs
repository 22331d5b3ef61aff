//! Short-lived authentication state, kept in the store (so every node sees it)
//! but outside the log and outside the read models that `rebuild` replays:
//! pending one-time codes (only an HMAC of each), fixed-window counters for
//! limits that hold across nodes, the newest TOTP step each user spent (a code
//! is accepted once), second-factor challenges, when and from where each
//! session was last used, and the id of the server key that sealed the TOTP
//! secrets.
//!
//! Losing it (a restart of the embedded store, a restored backup) only ever
//! costs a user a new code or challenge: nothing here is a fact of the log.
//! It never holds a code, a token or a secret in plaintext.

pub mod postgres;
pub mod sqlite;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{Millis, SignInMethod, TokenHash, UserId};
use crate::store::StoreError;

/// What a one-time code proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodePurpose {
    /// The user receives mail at their address (subject: the user id).
    VerifyEmail,
    /// Forgotten password (subject: the normalized email).
    ResetPassword,
    /// Signing in by text (subject: the E.164 number).
    PhoneSignIn,
    /// Adding a number to a signed-in account (subject: `<user id> <E.164 number>`).
    AddPhone,
}

impl CodePurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            CodePurpose::VerifyEmail => "verify_email",
            CodePurpose::ResetPassword => "reset_password",
            CodePurpose::PhoneSignIn => "phone_sign_in",
            CodePurpose::AddPhone => "add_phone",
        }
    }
}

/// The answer to a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    /// Right, in time: consumed (a code is usable once).
    Accepted,
    /// Wrong; this many tries are left (0: the code is gone).
    Wrong { attempts_left: u32 },
    /// No code is pending: none was sent, it expired, was used, or ran out of tries.
    Missing,
}

/// A first factor that passed, waiting for the second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingChallenge {
    pub user_id: UserId,
    pub device_name: String,
    pub method: SignInMethod,
}

/// When and from where a session was last used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionActivity {
    pub last_used: Millis,
    pub last_address: String,
}

#[async_trait]
pub trait AuthState: Send + Sync {
    /// Stores a fresh code for `(purpose, subject)`, replacing any pending one.
    async fn put_code(
        &self,
        purpose: CodePurpose,
        subject: &str,
        code_hash: [u8; 32],
        expires_at: Millis,
        attempts: u32,
    ) -> Result<(), StoreError>;

    /// Checks a code atomically (two nodes cannot both accept it, nor both
    /// spend the same try): a match consumes it, a mismatch spends a try.
    async fn check_code(
        &self,
        purpose: CodePurpose,
        subject: &str,
        code_hash: [u8; 32],
        now: Millis,
    ) -> Result<CodeCheck, StoreError>;

    /// Counts one more event under `key` in the current fixed window of
    /// `window` and returns the count, this one included.
    async fn hit(&self, key: &str, window: Duration, now: Millis) -> Result<u32, StoreError>;

    /// The count under `key` in the current window, without adding to it.
    async fn hits(&self, key: &str, window: Duration, now: Millis) -> Result<u32, StoreError>;

    /// Spends TOTP step `step` of `user`: `false` when it (or a later one)
    /// was spent already, i.e. a replayed code.
    async fn use_totp_step(&self, user: UserId, step: u64) -> Result<bool, StoreError>;

    async fn put_challenge(
        &self,
        challenge_hash: [u8; 32],
        challenge: &PendingChallenge,
        expires_at: Millis,
        attempts: u32,
    ) -> Result<(), StoreError>;

    /// A live challenge, without consuming it.
    async fn challenge(&self, challenge_hash: [u8; 32], now: Millis) -> Result<Option<PendingChallenge>, StoreError>;

    /// A wrong second factor: spends a try and returns how many are left (0:
    /// the challenge is gone).
    async fn challenge_failed(&self, challenge_hash: [u8; 32]) -> Result<u32, StoreError>;

    /// Consumes a challenge; `false` when another request consumed it first.
    async fn take_challenge(&self, challenge_hash: [u8; 32]) -> Result<bool, StoreError>;

    async fn touch_session(&self, token_hash: TokenHash, at: Millis, address: &str) -> Result<(), StoreError>;

    async fn session_activity(
        &self,
        token_hashes: &[TokenHash],
    ) -> Result<HashMap<TokenHash, SessionActivity>, StoreError>;

    /// Records `key_id` the first time; afterwards answers whether it is the
    /// one recorded (a different server key cannot open the sealed secrets).
    async fn check_key_id(&self, key_id: &str) -> Result<bool, StoreError>;

    /// Forgets what can no longer matter at `now`: expired codes and
    /// challenges, and counters whose window ended more than
    /// [`COUNTER_RETENTION`] ago. Returns how many rows went.
    async fn sweep(&self, now: Millis) -> Result<u64, StoreError>;

    /// An erased account: forgets its codes and counters (by `subjects`, its
    /// emails and phone numbers), TOTP steps, challenges and the last address
    /// of each of its sessions (`tokens`).
    async fn forget(&self, user: UserId, subjects: Vec<String>, tokens: Vec<TokenHash>) -> Result<(), StoreError>;
}

/// Counters outlive their window by this much before a sweep drops them
/// (longer than the longest window, a day).
pub const COUNTER_RETENTION: Duration = Duration::from_secs(2 * 86_400);

/// The start of the fixed window of `window` that `now` falls into. Shared by
/// both backends.
pub(crate) fn window_start(now: Millis, window: Duration) -> u64 {
    let w = window.as_millis().max(1) as u64;
    now.0 - now.0 % w
}
