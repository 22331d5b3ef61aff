//! Account security on the control stream: the device list and signing
//! devices out, changing and resetting the password, verifying the email
//! address, and the TOTP second factor (with recovery codes) that every
//! sign-in then needs.
//!
//! Everything that changes an account is an event in the user's stream;
//! short-lived state (codes, challenges, counters, the newest TOTP step) is in
//! [`crate::store::auth_state`]. Nothing here logs a code, a secret or a token.

use std::time::Duration;

use natter_proto::wire::{self, response::Result as Reply};
use natter_proto::ErrorCode;
use uuid::Uuid;

use super::{Identity, Service, WireError};
use crate::auth::mail::{Mail, MailError};
use crate::auth::totp::{self, TotpError, TotpSecret};
use crate::auth::{codes, hash_token, new_session_token};
use crate::domain::account::{self, NewSession};
use crate::domain::{DeviceId, Email, Event, Millis, SignInMethod, TokenHash, UserId};
use crate::store::auth_state::{CodeCheck, CodePurpose, PendingChallenge};
use crate::store::{ExpectedVersion, NewEvent, StoreError, StreamAppend, StreamName, UserRecord};

/// How long a second-factor challenge lives.
const CHALLENGE_TTL: Duration = Duration::from_secs(5 * 60);
/// Wrong second factors per challenge.
const CHALLENGE_ATTEMPTS: u32 = 5;
/// Wrong second factors per account in [`MFA_WINDOW`], over all challenges.
const MFA_ATTEMPTS_PER_WINDOW: u32 = 10;
const MFA_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Mails with a code per address (and per client address): in 10 minutes, and in a day.
const MAILS_PER_10_MIN: u32 = 3;
const MAILS_PER_DAY: u32 = 10;
const MAILS_PER_ADDRESS_PER_10_MIN: u32 = 20;
/// The name authenticator apps show above the code.
const TOTP_ISSUER: &str = "natter";

/// What a disabled account's sign-in gets (after its credentials checked out).
pub(super) fn account_disabled() -> WireError {
    WireError::new(ErrorCode::ACCOUNT_DISABLED, "an admin disabled this account; ask them to enable it")
}

impl Service {
    fn unix_secs(&self) -> u64 {
        self.now().0 / 1000
    }

    /// Hashes a password on the blocking pool (at most one per core at once).
    pub(super) async fn hash_password(&self, password: String) -> Result<String, WireError> {
        let hasher = self.hasher.clone();
        let permit = self.hashing.clone().acquire_owned().await.map_err(|_| StoreError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hasher.hash(&password)
        })
        .await
        .map_err(|e| StoreError::Database(format!("hashing task: {e}")))?
        .map_err(|e| {
            tracing::error!(error = %e, "password hashing failed");
            WireError::new(ErrorCode::INTERNAL, "internal error")
        })
    }

    /// Verifies a password (against the decoy when there is no account).
    pub(super) async fn verify_password(&self, password: String, stored: Option<String>) -> Result<bool, WireError> {
        let hasher = self.hasher.clone();
        let permit = self.hashing.clone().acquire_owned().await.map_err(|_| StoreError::Closed)?;
        Ok(tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hasher.verify(&password, stored.as_deref())
        })
        .await
        .map_err(|e| StoreError::Database(format!("verify task: {e}")))?)
    }

    /// After a first factor passed: a session (token and identity), or, with
    /// TOTP on, `MFA_REQUIRED` carrying a challenge for [`Service::verify_mfa`].
    ///
    /// # Errors
    /// `MFA_REQUIRED` is the expected answer for accounts with TOTP on.
    pub(super) async fn first_factor_passed(
        &self,
        user: &UserRecord,
        device_name: &str,
        method: SignInMethod,
        remote: std::net::IpAddr,
    ) -> Result<(String, Identity), WireError> {
        account::check_name("device_name", device_name.trim())?;
        if user.disabled {
            return Err(account_disabled());
        }
        if user.totp_sealed_secret.is_none() {
            return self.open_session(user, device_name, method, remote).await;
        }
        let (challenge, challenge_hash) = new_session_token();
        let pending = PendingChallenge { user_id: user.user_id, device_name: device_name.to_owned(), method };
        let expires = Millis(self.now().0 + CHALLENGE_TTL.as_millis() as u64);
        self.security.auth_state.put_challenge(challenge_hash.0, &pending, expires, CHALLENGE_ATTEMPTS).await?;
        let mut e = WireError::new(
            ErrorCode::MFA_REQUIRED,
            "enter the code from your authenticator app (or a recovery code) with VerifyMfa",
        );
        e.mfa_challenge = challenge;
        Err(e)
    }

    /// A new session on a new device for `user`.
    pub(super) async fn open_session(
        &self,
        user: &UserRecord,
        device_name: &str,
        method: SignInMethod,
        remote: std::net::IpAddr,
    ) -> Result<(String, Identity), WireError> {
        let (token, token_hash) = new_session_token();
        let device_id = DeviceId(Uuid::new_v4());
        let session = NewSession { user_id: user.user_id, device_id, device_name, token_hash, method };
        let event = account::start_session(session, self.now())?;
        self.append_to_user(user.user_id, vec![event]).await?;
        // An admin may have disabled the account since it was read. Disabling
        // revokes every session as of a version of the account's stream, so a
        // session started before it is revoked there; one started after it
        // sees it here, and goes.
        if self.user(user.user_id).await?.disabled {
            let revoked = Event::SessionRevoked { user_id: user.user_id, token_hash, at: self.now() };
            self.append_to_user(user.user_id, vec![revoked]).await?;
            return Err(account_disabled());
        }
        self.touch_session(token_hash, remote);
        Ok((
            token,
            Identity {
                user_id: user.user_id,
                device_id,
                token_hash,
                email: user.email.clone(),
                display_name: user.display_name.clone(),
            },
        ))
    }

    /// Records that a session was used now from `remote`, in the background.
    pub(super) fn touch_session(&self, token_hash: TokenHash, remote: std::net::IpAddr) {
        let state = self.security.auth_state.clone();
        let now = self.now();
        self.background.spawn(async move {
            if let Err(e) = state.touch_session(token_hash, now, &remote.to_string()).await {
                tracing::warn!(error = %e, "session activity not recorded");
            }
        });
    }

    pub(super) async fn append_to_user(&self, user: UserId, events: Vec<Event>) -> Result<(), WireError> {
        let events = events.into_iter().map(NewEvent::fresh).collect();
        self.store.append(vec![StreamAppend::new(StreamName::user(user), ExpectedVersion::Any, events)]).await?;
        Ok(())
    }

    pub(super) async fn user(&self, user: UserId) -> Result<UserRecord, WireError> {
        self.store
            .user_by_id(user)
            .await?
            .ok_or_else(|| StoreError::Database(format!("user {user} signed in but not in the read model")).into())
    }

    /// The newest event of a stream, with its version.
    pub(super) async fn last_event(&self, stream: &StreamName) -> Result<Option<(u64, Event)>, WireError> {
        let mut last = None;
        loop {
            let after = last.as_ref().map_or(0, |(v, _)| *v);
            let page = self.store.read_stream(stream, after, 1000).await?;
            let full = page.len() == 1000;
            if let Some(rec) = page.into_iter().last() {
                last = Some((rec.version, rec.event));
            }
            if !full {
                return Ok(last);
            }
        }
    }

    /// How to claim a number's or an identity's stream (`phone:`,
    /// `identity:`): it was never claimed, or its last holder released it.
    /// `Err` with the holder while someone holds it.
    pub(super) async fn claim_of(&self, stream: &StreamName) -> Result<Result<ExpectedVersion, UserId>, WireError> {
        Ok(match self.last_event(stream).await? {
            None => Ok(ExpectedVersion::NoStream),
            Some((version, Event::IdentityReleased { .. } | Event::PhoneReleased { .. })) => {
                Ok(ExpectedVersion::Exact(version))
            }
            Some((_, Event::IdentityClaimed { user_id, .. } | Event::PhoneClaimed { user_id, .. })) => Err(user_id),
            Some((_, other)) => {
                return Err(StoreError::Database(format!("{stream} holds an unexpected {}", other.type_name())).into())
            }
        })
    }

    /// The ways into an account, with the version of its stream they were
    /// read at: a change that removes one appends at that version, so two
    /// removals cannot both leave the other one as the last.
    pub(super) async fn ways_in(&self, user: UserId) -> Result<(u64, Vec<WayIn>), WireError> {
        let version = self.last_event(&StreamName::user(user)).await?.map_or(0, |(v, _)| v);
        let record = self.user(user).await?;
        let mut ways = Vec::new();
        if record.password_hash.is_some() && record.email.is_some() {
            ways.push(WayIn::Password);
        }
        if record.phone.is_some() {
            ways.push(WayIn::Phone);
        }
        ways.extend(self.store.identities_of(user).await?.iter().map(|i| WayIn::Identity(i.provider)));
        Ok((version, ways))
    }

    /// Counts a hit against a limit shared by every node.
    pub(super) async fn limit(&self, key: String, window: Duration, max: u32, what: &str) -> Result<(), WireError> {
        let now = self.now();
        let count = self.security.auth_state.hit(&key, window, now).await?;
        if count > max {
            return Err(WireError::rate_limited(what, until_next(window, now)));
        }
        Ok(())
    }

    /// Refuses while `key` has `max` hits in the current window (the hits
    /// are counted elsewhere, after the fact: wrong codes, wrong factors).
    pub(super) async fn refuse_while_over(
        &self,
        key: &str,
        window: Duration,
        max: u32,
        what: &str,
    ) -> Result<(), WireError> {
        let now = self.now();
        if self.security.auth_state.hits(key, window, now).await? >= max {
            return Err(WireError::rate_limited(what, until_next(window, now)));
        }
        Ok(())
    }

    // ------------------------------------------------------------ second factor

    /// Completes a sign-in that answered `MFA_REQUIRED`.
    pub(super) async fn verify_mfa(
        &self,
        req: wire::VerifyMfa,
        remote: std::net::IpAddr,
    ) -> Result<(String, Identity), WireError> {
        let expired = || WireError::new(ErrorCode::CODE_EXPIRED, "the sign-in challenge expired; sign in again");
        let challenge_hash = hash_token(&req.challenge).0;
        let pending = self.security.auth_state.challenge(challenge_hash, self.now()).await?.ok_or_else(expired)?;
        let user = self.user(pending.user_id).await?;
        match self.check_second_factor(&user, req.factor.as_ref()).await {
            Ok(()) => {}
            Err(e) if e.code == ErrorCode::CODE_INVALID => {
                let left = self.security.auth_state.challenge_failed(challenge_hash).await?;
                let mut e = e;
                if left == 0 {
                    e.message = format!("{}; no tries left: sign in again", e.message);
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        if !self.security.auth_state.take_challenge(challenge_hash).await? {
            return Err(expired());
        }
        self.open_session(&user, &pending.device_name, pending.method, remote).await
    }

    /// Checks a TOTP code or a recovery code of `user` (TOTP on), spending it.
    async fn check_second_factor(
        &self,
        user: &UserRecord,
        factor: Option<&wire::verify_mfa::Factor>,
    ) -> Result<(), WireError> {
        let sealed = user
            .totp_sealed_secret
            .as_ref()
            .ok_or_else(|| WireError::new(ErrorCode::MFA_NOT_ENABLED, "two-factor sign-in is off for this account"))?;
        // Wrong factors are counted (after the fact); at the limit even a
        // right one waits for the window to pass.
        let failures = format!("mfa-failures:{}", user.user_id);
        let what = "too many wrong second factors for this account";
        self.refuse_while_over(&failures, MFA_WINDOW, MFA_ATTEMPTS_PER_WINDOW, what).await?;
        let now = self.now();
        let checked = self.check_factor(user, sealed, factor).await;
        if matches!(&checked, Err(e) if e.code == ErrorCode::CODE_INVALID) {
            self.security.auth_state.hit(&failures, MFA_WINDOW, now).await?;
        }
        checked
    }

    async fn check_factor(
        &self,
        user: &UserRecord,
        sealed: &[u8],
        factor: Option<&wire::verify_mfa::Factor>,
    ) -> Result<(), WireError> {
        use wire::verify_mfa::Factor;
        match factor {
            Some(Factor::Code(code)) => {
                let secret = self.open_totp_secret(user.user_id, sealed)?;
                self.spend_totp(user.user_id, &secret, code).await
            }
            Some(Factor::RecoveryCode(code)) => {
                let hash = self.recovery_hash(code);
                if !self.store.recovery_code_unused(user.user_id, hash).await? {
                    return Err(WireError::new(ErrorCode::CODE_INVALID, "wrong or already used recovery code"));
                }
                let used = Event::RecoveryCodeUsed { user_id: user.user_id, code_hash: hash, at: self.now() };
                self.append_to_user(user.user_id, vec![used]).await
            }
            None => Err(super::invalid("factor", "give a code or a recovery code")),
        }
    }

    /// What is stored of a recovery code: an HMAC under the server key (50
    /// bits of entropy would not survive an offline search of a plain hash).
    fn recovery_hash(&self, code: &str) -> [u8; 32] {
        self.security.server_key.hmac("recovery-code", totp::normalize_recovery_code(code).as_bytes())
    }

    fn open_totp_secret(&self, user: UserId, sealed: &[u8]) -> Result<TotpSecret, WireError> {
        let bytes = self.security.server_key.open(sealed, user.to_string().as_bytes()).map_err(|e| {
            tracing::error!(error = %e, user = %user, "a sealed TOTP secret does not open with the server key");
            WireError::new(ErrorCode::INTERNAL, "internal error")
        })?;
        TotpSecret::from_bytes(&bytes).map_err(|e| {
            tracing::error!(error = %e, "a stored TOTP secret is malformed");
            WireError::new(ErrorCode::INTERNAL, "internal error")
        })
    }

    /// Verifies `code` for `secret` now and spends its step (a code works once,
    /// on every node).
    async fn spend_totp(&self, user: UserId, secret: &TotpSecret, code: &str) -> Result<(), WireError> {
        let step = totp::verify(secret, code, self.unix_secs(), None).map_err(|e| match e {
            TotpError::Malformed => super::invalid("code", "a code is 6 digits"),
            _ => WireError::new(ErrorCode::CODE_INVALID, "wrong code"),
        })?;
        if !self.security.auth_state.use_totp_step(user, step).await? {
            return Err(WireError::new(ErrorCode::CODE_INVALID, "this code was already used; wait for the next one"));
        }
        Ok(())
    }

    /// A fresh secret for `me` (not in force until [`Service::confirm_totp`]).
    pub(super) async fn enable_totp(&self, me: &Identity) -> Result<(TotpSecret, Reply), WireError> {
        let user = self.user(me.user_id).await?;
        if user.totp_sealed_secret.is_some() {
            return Err(WireError::new(ErrorCode::MFA_ALREADY_ENABLED, "two-factor sign-in is already on"));
        }
        let secret = TotpSecret::generate();
        // The account's name in the app: its email, else its number, else its name.
        let label = match (&user.email, &user.phone) {
            (Some(email), _) => email.as_str(),
            (None, Some(phone)) => phone.as_str(),
            (None, None) => user.display_name.as_str(),
        };
        let uri = totp::otpauth_uri(&secret, TOTP_ISSUER, label).map_err(|e| {
            tracing::error!(error = %e, "otpauth URI");
            WireError::new(ErrorCode::INTERNAL, "internal error")
        })?;
        let reply = Reply::TotpSetup(wire::TotpSetup { secret_base32: secret.base32(), otpauth_uri: uri });
        Ok((secret, reply))
    }

    /// Turns TOTP on with the secret of [`Service::enable_totp`], once a code
    /// from the app proves the app has it.
    pub(super) async fn confirm_totp(
        &self,
        me: &Identity,
        pending: Option<&TotpSecret>,
        req: wire::ConfirmTotp,
    ) -> Result<Reply, WireError> {
        let secret =
            pending.ok_or_else(|| super::invalid("confirm_totp", "send EnableTotp first, on this connection"))?;
        let user = self.user(me.user_id).await?;
        if user.totp_sealed_secret.is_some() {
            return Err(WireError::new(ErrorCode::MFA_ALREADY_ENABLED, "two-factor sign-in is already on"));
        }
        self.spend_totp(me.user_id, secret, &req.code).await?;
        let sealed = self.security.server_key.seal(secret.as_bytes(), me.user_id.to_string().as_bytes());
        let codes = totp::new_recovery_codes();
        let recovery_codes = codes.iter().map(|c| self.recovery_hash(c)).collect();
        let event = Event::TotpEnabled { user_id: me.user_id, sealed_secret: sealed, recovery_codes, at: self.now() };
        self.append_to_user(me.user_id, vec![event]).await?;
        Ok(Reply::RecoveryCodes(wire::RecoveryCodes { codes }))
    }

    /// A current code (or a recovery code) of `me`, spent.
    pub(super) async fn current_factor(&self, me: &Identity, code: &str) -> Result<UserRecord, WireError> {
        let user = self.user(me.user_id).await?;
        let factor = if codes::normalize(code).is_some() {
            wire::verify_mfa::Factor::Code(code.to_owned())
        } else {
            wire::verify_mfa::Factor::RecoveryCode(code.to_owned())
        };
        self.check_second_factor(&user, Some(&factor)).await?;
        Ok(user)
    }

    pub(super) async fn disable_totp(&self, me: &Identity, req: wire::DisableTotp) -> Result<Reply, WireError> {
        self.current_factor(me, &req.code).await?;
        self.append_to_user(me.user_id, vec![Event::TotpDisabled { user_id: me.user_id, at: self.now() }]).await?;
        Ok(Reply::TotpDisabled(wire::TotpDisabledOk {}))
    }

    pub(super) async fn new_recovery_codes(
        &self,
        me: &Identity,
        req: wire::NewRecoveryCodes,
    ) -> Result<Reply, WireError> {
        self.current_factor(me, &req.code).await?;
        let codes = totp::new_recovery_codes();
        let recovery_codes = codes.iter().map(|c| self.recovery_hash(c)).collect();
        let event = Event::RecoveryCodesIssued { user_id: me.user_id, recovery_codes, at: self.now() };
        self.append_to_user(me.user_id, vec![event]).await?;
        Ok(Reply::RecoveryCodes(wire::RecoveryCodes { codes }))
    }

    // ------------------------------------------------------------ devices

    pub(super) async fn list_sessions(&self, me: &Identity) -> Result<Reply, WireError> {
        let sessions = self.session_infos(me.user_id, Some(me.token_hash)).await?;
        Ok(Reply::Sessions(wire::SessionList { sessions }))
    }

    /// `user`'s sessions, oldest first, with when and where each was last
    /// used; `current` marks the session of the asking connection.
    pub(super) async fn session_infos(
        &self,
        user: UserId,
        current: Option<TokenHash>,
    ) -> Result<Vec<wire::SessionInfo>, WireError> {
        let sessions = self.store.sessions_of(user).await?;
        let hashes: Vec<TokenHash> = sessions.iter().map(|s| s.token_hash).collect();
        let activity = self.security.auth_state.session_activity(&hashes).await?;
        Ok(sessions
            .into_iter()
            .map(|s| {
                let seen = activity.get(&s.token_hash);
                wire::SessionInfo {
                    session_id: s.device_id.to_string(),
                    device_name: s.device_name,
                    method: s.method.as_str().to_owned(),
                    created_at_ms: s.created_at.0,
                    last_used_at_ms: seen.map_or(0, |a| a.last_used.0),
                    last_address: seen.map(|a| a.last_address.clone()).unwrap_or_default(),
                    current: Some(s.token_hash) == current,
                }
            })
            .collect())
    }

    /// Revokes sessions of `user` (their connections close at once on every
    /// node: the router follows the log); returns how many.
    async fn revoke(&self, user: UserId, keep: Option<TokenHash>) -> Result<u32, WireError> {
        let at = self.now();
        let events: Vec<Event> = self
            .store
            .sessions_of(user)
            .await?
            .into_iter()
            .filter(|s| Some(s.token_hash) != keep)
            .map(|s| Event::SessionRevoked { user_id: user, token_hash: s.token_hash, at })
            .collect();
        let n = events.len() as u32;
        if n > 0 {
            self.append_to_user(user, events).await?;
        }
        Ok(n)
    }

    pub(super) async fn revoke_session(&self, me: &Identity, req: wire::RevokeSession) -> Result<Reply, WireError> {
        let not_found = || WireError::new(ErrorCode::NOT_FOUND, "you have no such session");
        let device = Uuid::try_parse(&req.session_id).map_err(|_| not_found())?;
        let session = self
            .store
            .sessions_of(me.user_id)
            .await?
            .into_iter()
            .find(|s| s.device_id.0 == device)
            .ok_or_else(not_found)?;
        if session.token_hash == me.token_hash {
            return Err(super::invalid("session_id", "that is this connection's session: use Logout"));
        }
        let event = Event::SessionRevoked { user_id: me.user_id, token_hash: session.token_hash, at: self.now() };
        self.append_to_user(me.user_id, vec![event]).await?;
        Ok(Reply::Revoked(wire::RevokeOk { revoked: 1 }))
    }

    pub(super) async fn revoke_other_sessions(&self, me: &Identity) -> Result<Reply, WireError> {
        let revoked = self.revoke(me.user_id, Some(me.token_hash)).await?;
        Ok(Reply::Revoked(wire::RevokeOk { revoked }))
    }

    // ------------------------------------------------------------ passwords

    pub(super) async fn change_password(&self, me: &Identity, req: wire::ChangePassword) -> Result<Reply, WireError> {
        let user = self.user(me.user_id).await?;
        let email = user.email.as_ref().ok_or_else(|| {
            super::invalid("password", "an account without an email address has no password (it signs in by text)")
        })?;
        let stored = user.password_hash.clone().ok_or_else(|| {
            super::invalid("old_password", "this account has no password yet: set one with a password reset")
        })?;
        account::check_password(&req.new_password, email)?;
        let ok = self.verify_password(req.old_password, Some(stored)).await?;
        self.record_login(email, ok).await?;
        if !ok {
            return Err(WireError::new(ErrorCode::INVALID_CREDENTIALS, "the current password is wrong"));
        }
        let hash = self.hash_password(req.new_password).await?;
        let event = Event::PasswordChanged { user_id: user.user_id, password_hash: hash, at: self.now() };
        self.append_to_user(user.user_id, vec![event]).await?;
        let revoked_sessions = self.revoke(user.user_id, Some(me.token_hash)).await?;
        Ok(Reply::Password(wire::PasswordOk { revoked_sessions }))
    }

    /// Sends a code by mail for `purpose`, within the per-address limits
    /// (shared by every node). The mail goes out in the background, so the
    /// answer takes as long whether or not there was anyone to mail.
    async fn mail_code(
        &self,
        purpose: CodePurpose,
        subject: &str,
        to: Option<&Email>,
        remote: std::net::IpAddr,
    ) -> Result<Reply, WireError> {
        let ten_min = Duration::from_secs(600);
        let day = Duration::from_secs(86_400);
        let key = format!("mail:{}:{subject}", purpose.as_str());
        self.limit(format!("{key}:10m"), ten_min, MAILS_PER_10_MIN, "too many codes sent to this address").await?;
        self.limit(format!("{key}:1d"), day, MAILS_PER_DAY, "too many codes sent to this address today").await?;
        self.limit(format!("mail-from:{remote}"), ten_min, MAILS_PER_ADDRESS_PER_10_MIN, "too many codes requested")
            .await?;
        let expires_in_ms = codes::CODE_TTL.as_millis() as u32;
        let Some(to) = to else {
            return Ok(Reply::CodeSent(wire::CodeSent { expires_in_ms }));
        };
        let code = codes::new_code();
        let hash = codes::code_hash(&self.security.server_key, purpose, subject, &code);
        let expires = Millis(self.now().0 + codes::CODE_TTL.as_millis() as u64);
        self.security.auth_state.put_code(purpose, subject, hash, expires, codes::CODE_ATTEMPTS).await?;
        let (subject_line, what) = match purpose {
            CodePurpose::VerifyEmail => ("Your natter verification code", "verify your email address"),
            CodePurpose::ResetPassword => ("Your natter password reset code", "choose a new password"),
            CodePurpose::PhoneSignIn | CodePurpose::AddPhone => {
                unreachable!("phone codes are texted (session::phone)")
            }
        };
        let mail = Mail {
            to: to.as_str().to_owned(),
            subject: format!("{subject_line}: {code}"),
            text: format!(
                "Your code to {what} is {code}.\n\nIt is valid for 5 minutes. If you did not ask for it, ignore \
                 this mail: nothing changes without the code.\n"
            ),
        };
        let mailer = self.security.mailer.clone();
        self.background.spawn(async move {
            match mailer.send(mail).await {
                Ok(()) => {}
                Err(MailError::Unavailable { reason, .. }) => {
                    tracing::warn!(reason = %reason, "a code mail could not be sent for now")
                }
                Err(e) => tracing::warn!(error = %e, "a code mail was refused"),
            }
        });
        Ok(Reply::CodeSent(wire::CodeSent { expires_in_ms }))
    }

    pub(super) async fn start_password_reset(
        &self,
        req: wire::StartPasswordReset,
        remote: std::net::IpAddr,
    ) -> Result<Reply, WireError> {
        let email = Email::parse(&req.email)?;
        let user = self.store.user_by_email(&email).await?;
        let to = user.as_ref().and_then(|u| u.email.as_ref());
        self.mail_code(CodePurpose::ResetPassword, email.as_str(), to, remote).await
    }

    pub(super) async fn reset_password(&self, req: wire::ResetPassword) -> Result<Reply, WireError> {
        let email = Email::parse(&req.email)?;
        // Checked first, so a weak choice does not burn the code.
        account::check_password(&req.new_password, &email)?;
        self.check_code(CodePurpose::ResetPassword, email.as_str(), &req.code).await?;
        let user = self.store.user_by_email(&email).await?.ok_or_else(|| {
            WireError::new(ErrorCode::CODE_EXPIRED, "no reset code is pending for this address; ask for a new one")
        })?;
        let hash = self.hash_password(req.new_password).await?;
        let event = Event::PasswordChanged { user_id: user.user_id, password_hash: hash, at: self.now() };
        self.append_to_user(user.user_id, vec![event]).await?;
        // The right code proves the mailbox: a lock-out of the account ends.
        self.record_login(&email, true).await?;
        let revoked_sessions = self.revoke(user.user_id, None).await?;
        Ok(Reply::Password(wire::PasswordOk { revoked_sessions }))
    }

    pub(super) async fn check_code(&self, purpose: CodePurpose, subject: &str, code: &str) -> Result<(), WireError> {
        let code = codes::normalize(code).ok_or_else(|| super::invalid("code", "a code is 6 digits"))?;
        let hash = codes::code_hash(&self.security.server_key, purpose, subject, &code);
        match self.security.auth_state.check_code(purpose, subject, hash, self.now()).await? {
            CodeCheck::Accepted => Ok(()),
            CodeCheck::Wrong { attempts_left } => Err(WireError::new(
                ErrorCode::CODE_INVALID,
                if attempts_left == 0 {
                    "wrong code; no tries left: ask for a new one".to_owned()
                } else {
                    format!("wrong code; {attempts_left} tries left")
                },
            )),
            CodeCheck::Missing => {
                Err(WireError::new(ErrorCode::CODE_EXPIRED, "no code is pending (expired or used); ask for a new one"))
            }
        }
    }

    // ------------------------------------------------------------ email

    /// Mails `user` a verification code (after signup, or when asked again).
    pub(super) async fn send_verification(
        &self,
        user: &UserRecord,
        remote: std::net::IpAddr,
    ) -> Result<Reply, WireError> {
        let email = user.email.as_ref().ok_or_else(no_email)?;
        self.mail_code(CodePurpose::VerifyEmail, &user.user_id.to_string(), Some(email), remote).await
    }

    pub(super) async fn start_email_verification(
        &self,
        me: &Identity,
        remote: std::net::IpAddr,
    ) -> Result<Reply, WireError> {
        let user = self.user(me.user_id).await?;
        if let (true, Some(email)) = (user.email_verified, &user.email) {
            return Ok(Reply::EmailVerified(wire::EmailVerifiedOk { email: email.as_str().to_owned() }));
        }
        self.send_verification(&user, remote).await
    }

    pub(super) async fn verify_email(&self, me: &Identity, req: wire::VerifyEmail) -> Result<Reply, WireError> {
        let user = self.user(me.user_id).await?;
        let email = user.email.clone().ok_or_else(no_email)?;
        if !user.email_verified {
            self.check_code(CodePurpose::VerifyEmail, &user.user_id.to_string(), &req.code).await?;
            let event = Event::EmailVerified { user_id: user.user_id, email: email.clone(), at: self.now() };
            self.append_to_user(me.user_id, vec![event]).await?;
        }
        Ok(Reply::EmailVerified(wire::EmailVerifiedOk { email: email.as_str().to_owned() }))
    }
}

/// A way of signing in to an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WayIn {
    Password,
    Phone,
    Identity(crate::domain::IdentityProvider),
}

/// `LAST_SIGN_IN_METHOD` when `removing` is the only one of `ways` (`what`
/// names it for people).
pub(super) fn refuse_last_way(ways: &[WayIn], removing: WayIn, what: &str) -> Result<(), WireError> {
    if ways.iter().any(|w| *w != removing) {
        return Ok(());
    }
    Err(WireError::new(
        ErrorCode::LAST_SIGN_IN_METHOD,
        format!(
            "{what} is this account's only way to sign in: add a phone number, link Google or GitHub, or set a \
             password (password reset) first"
        ),
    ))
}

/// How long until the fixed window that `now` is in ends (counters are per
/// window, so that is when a refused request succeeds).
fn until_next(window: Duration, now: Millis) -> Duration {
    let w = (window.as_millis() as u64).max(1);
    Duration::from_millis(w - now.0 % w)
}

fn no_email() -> WireError {
    super::invalid("email", "this account has no email address (it was made by a texted code)")
}
