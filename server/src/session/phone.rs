//! Phone numbers: signing in with a texted code, and adding a number to an
//! account (the code proves the number is yours). Texts cost money, so sends
//! are limited per number (3 in 10 minutes, 10 a day) and per client address,
//! and wrong codes per number, all counted in the shared store (every node).
//!
//! With the `twilio-verify` provider Twilio owns the code; otherwise natter
//! does (`auth::codes`, the same rules as mailed codes).

use std::time::Duration;

use natter_proto::wire::{self, response::Result as Reply};
use natter_proto::ErrorCode;

use super::account_security::WayIn;
use super::{Identity, Service, WireError};
use crate::auth::codes;
use crate::auth::sms::SmsError;
use crate::domain::{account, AccountOpened, Event, Millis, Phone, SignInMethod, UserId};
use crate::store::auth_state::CodePurpose;
use crate::store::{AppendError, ExpectedVersion, NewEvent, StreamAppend, StreamName, UserRecord};
use uuid::Uuid;

/// The display name of an account made by a number with none given.
const NO_NAME: &str = "natter user";

const TEXTS_PER_NUMBER_PER_10_MIN: u32 = 3;
const TEXTS_PER_NUMBER_PER_DAY: u32 = 10;
const TEXTS_PER_ADDRESS_PER_10_MIN: u32 = 20;
/// Wrong codes per number in an hour, over all codes (a code allows 5).
const WRONG_CODES_PER_NUMBER_PER_HOUR: u32 = 10;

/// What a right code did.
pub(super) enum Verified {
    /// Signed in (token, identity).
    SignedIn(String, Identity),
    /// Added to the signed-in account.
    Added(Box<Reply>),
}

/// What the code is for, and whose it is.
fn purpose(me: Option<&Identity>, phone: &Phone) -> (CodePurpose, String) {
    match me {
        None => (CodePurpose::PhoneSignIn, phone.to_string()),
        Some(me) => (CodePurpose::AddPhone, format!("{} {phone}", me.user_id)),
    }
}

fn sms_error(e: SmsError) -> WireError {
    match e {
        SmsError::Unavailable { retry_after, reason } => {
            tracing::warn!(reason = %reason, "text not sent: provider unavailable");
            let mut e = WireError::new(ErrorCode::UNAVAILABLE, "texts cannot be sent at the moment; retry");
            e.retry_after_ms = retry_after.as_millis().clamp(1, u128::from(u32::MAX)) as u32;
            e
        }
        SmsError::Rejected(why) => {
            tracing::info!(reason = %why, "the sms provider refused a number");
            WireError::new(ErrorCode::INVALID_PHONE, "texts cannot be sent to this number")
        }
        SmsError::Unsupported => {
            tracing::error!("the sms provider does not support what natter asked");
            WireError::new(ErrorCode::INTERNAL, "internal error")
        }
    }
}

impl Service {
    pub(super) async fn start_phone(
        &self,
        me: Option<&Identity>,
        req: wire::StartPhone,
        remote: std::net::IpAddr,
    ) -> Result<Reply, WireError> {
        let phone = Phone::parse(&req.phone)?;
        if let Some(me) = me {
            self.check_can_add(me, &phone).await?;
        }
        let ten_min = Duration::from_secs(600);
        let day = Duration::from_secs(86_400);
        let too_many = "too many codes texted to this number";
        self.limit(format!("sms:{phone}:10m"), ten_min, TEXTS_PER_NUMBER_PER_10_MIN, too_many).await?;
        self.limit(format!("sms:{phone}:1d"), day, TEXTS_PER_NUMBER_PER_DAY, too_many).await?;
        self.limit(format!("sms-from:{remote}"), ten_min, TEXTS_PER_ADDRESS_PER_10_MIN, "too many codes requested")
            .await?;
        let sms = &self.security.sms;
        if sms.owns_code() {
            let (purpose, subject) = purpose(me, &phone);
            let code = codes::new_code();
            let hash = codes::code_hash(&self.security.server_key, purpose, &subject, &code);
            let expires = Millis(self.now().0 + codes::CODE_TTL.as_millis() as u64);
            self.security.auth_state.put_code(purpose, &subject, hash, expires, codes::CODE_ATTEMPTS).await?;
            let text = format!("Your natter code is {code}. It is valid for 5 minutes; do not share it.");
            sms.send(phone.as_str(), &text).await.map_err(sms_error)?;
        } else {
            sms.start_verification(phone.as_str()).await.map_err(sms_error)?;
        }
        Ok(Reply::CodeSent(wire::CodeSent { expires_in_ms: codes::CODE_TTL.as_millis() as u32 }))
    }

    /// The account a number makes on its first sign-in (no email, no
    /// password): or the one a sign-in racing this one made.
    async fn open_phone_account(&self, phone: &Phone, display_name: &str) -> Result<UserRecord, WireError> {
        let display_name = display_name.trim();
        account::check_name("display_name", display_name)?;
        let display_name = if display_name.is_empty() { NO_NAME } else { display_name };
        let user_id = UserId(Uuid::new_v4());
        let at = self.now();
        let opened =
            AccountOpened { user_id, display_name: display_name.to_owned(), email: None, email_verified: false, at };
        let claim = match self.claim_of(&StreamName::phone(phone)).await? {
            Ok(claim) => claim,
            // Held by an account the read model did not show a moment ago:
            // the append fails and the sign-in finds it.
            Err(_) => ExpectedVersion::NoStream,
        };
        let appends = vec![
            StreamAppend::new(
                StreamName::phone(phone),
                claim,
                vec![NewEvent::fresh(Event::PhoneClaimed { user_id, at })],
            ),
            StreamAppend::new(
                StreamName::user(user_id),
                ExpectedVersion::NoStream,
                vec![
                    NewEvent::fresh(Event::AccountOpened(opened)),
                    NewEvent::fresh(Event::PhoneAdded { user_id, phone: phone.clone(), at }),
                ],
            ),
        ];
        match self.store.append(appends).await {
            Ok(_) => {
                tracing::info!(%user_id, "account opened by a texted code");
                self.user(user_id).await
            }
            Err(AppendError::WrongExpectedVersion { .. }) => self
                .store
                .user_by_phone(phone)
                .await?
                .ok_or_else(|| WireError::new(ErrorCode::CONFLICT, "the number was being claimed; try again")),
            Err(e) => Err(e.into()),
        }
    }

    /// A number may be added by an account without one, if no one else has it.
    async fn check_can_add(&self, me: &Identity, phone: &Phone) -> Result<(), WireError> {
        if let Some(owner) = self.store.user_by_phone(phone).await? {
            return Err(if owner.user_id == me.user_id {
                super::invalid("phone", "this number is already yours")
            } else {
                WireError::new(ErrorCode::PHONE_TAKEN, "another account has this number")
            });
        }
        let user = self
            .store
            .user_by_id(me.user_id)
            .await?
            .ok_or_else(|| WireError::new(ErrorCode::INTERNAL, "internal error"))?;
        if user.phone.is_some() {
            return Err(super::invalid("phone", "this account has a number already"));
        }
        Ok(())
    }

    pub(super) async fn verify_phone(
        &self,
        me: Option<&Identity>,
        req: wire::VerifyPhone,
        remote: std::net::IpAddr,
    ) -> Result<Verified, WireError> {
        let phone = Phone::parse(&req.phone)?;
        if me.is_none() {
            // Checked before the code, so a bad name does not spend it.
            account::check_name("device_name", req.device_name.trim())?;
            account::check_name("display_name", req.display_name.trim())?;
        }
        let wrong_key = format!("sms-wrong:{phone}");
        let hour = Duration::from_secs(3600);
        let what = "too many wrong codes for this number";
        self.refuse_while_over(&wrong_key, hour, WRONG_CODES_PER_NUMBER_PER_HOUR, what).await?;
        let now = self.now();
        let checked = if self.security.sms.owns_code() {
            let (purpose, subject) = purpose(me, &phone);
            self.check_code(purpose, &subject, &req.code).await
        } else {
            let code = codes::normalize(&req.code).ok_or_else(|| super::invalid("code", "a code is 6 digits"))?;
            match self.security.sms.check_verification(phone.as_str(), &code).await.map_err(sms_error)? {
                true => Ok(()),
                false => Err(WireError::new(ErrorCode::CODE_INVALID, "wrong or expired code")),
            }
        };
        if let Err(e) = checked {
            if e.code == ErrorCode::CODE_INVALID {
                self.security.auth_state.hit(&wrong_key, hour, now).await?;
            }
            return Err(e);
        }
        match me {
            None => {
                let user = match self.store.user_by_phone(&phone).await? {
                    Some(user) => user,
                    None => self.open_phone_account(&phone, &req.display_name).await?,
                };
                let (token, identity) =
                    self.first_factor_passed(&user, &req.device_name, SignInMethod::Phone, remote).await?;
                Ok(Verified::SignedIn(token, identity))
            }
            Some(me) => {
                self.check_can_add(me, &phone).await?;
                let expected = match self.claim_of(&StreamName::phone(&phone)).await? {
                    Ok(expected) => expected,
                    Err(_) => return Err(WireError::new(ErrorCode::PHONE_TAKEN, "another account has this number")),
                };
                let claim = StreamAppend::new(
                    StreamName::phone(&phone),
                    expected,
                    vec![NewEvent::fresh(Event::PhoneClaimed { user_id: me.user_id, at: now })],
                );
                let added = StreamAppend::new(
                    StreamName::user(me.user_id),
                    ExpectedVersion::Any,
                    vec![NewEvent::fresh(Event::PhoneAdded { user_id: me.user_id, phone: phone.clone(), at: now })],
                );
                match self.store.append(vec![claim, added]).await {
                    Ok(_) => Ok(Verified::Added(Box::new(Reply::PhoneAdded(wire::PhoneAddedOk {
                        phone: phone.to_string(),
                    })))),
                    Err(AppendError::WrongExpectedVersion { .. }) => {
                        Err(WireError::new(ErrorCode::PHONE_TAKEN, "another account has this number"))
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Takes the number off the caller's account, while another way in remains.
    pub(super) async fn remove_phone(&self, me: &Identity) -> Result<Reply, WireError> {
        let (version, ways) = self.ways_in(me.user_id).await?;
        let phone = self
            .user(me.user_id)
            .await?
            .phone
            .ok_or_else(|| WireError::new(ErrorCode::NOT_FOUND, "this account has no phone number"))?;
        super::account_security::refuse_last_way(&ways, WayIn::Phone, "the phone number")?;
        let phone_stream = StreamName::phone(&phone);
        let held = self.last_event(&phone_stream).await?.map_or(0, |(v, _)| v);
        let at = self.now();
        let appends = vec![
            StreamAppend::new(
                phone_stream,
                ExpectedVersion::Exact(held),
                vec![NewEvent::fresh(Event::PhoneReleased { user_id: me.user_id, at })],
            ),
            StreamAppend::new(
                StreamName::user(me.user_id),
                ExpectedVersion::Exact(version),
                vec![NewEvent::fresh(Event::PhoneRemoved { user_id: me.user_id, phone: phone.clone(), at })],
            ),
        ];
        match self.store.append(appends).await {
            Ok(_) => Ok(Reply::PhoneRemoved(wire::PhoneRemovedOk { phone: phone.to_string() })),
            Err(AppendError::WrongExpectedVersion { .. }) => {
                Err(WireError::new(ErrorCode::CONFLICT, "the account changed meanwhile; try again"))
            }
            Err(e) => Err(e.into()),
        }
    }
}
