//! Account rules: sign-up validation, the password policy, sessions.

use super::{
    DeviceId, Email, Event, Millis, Rejection, SessionStarted, SignInMethod, TokenHash, UserId, UserRegistered,
};
use natter_proto::limits::{MAX_NAME_BYTES, MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS};

/// A validated sign-up request, before the password is hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signup {
    pub email: Email,
    pub display_name: String,
}

/// Validates a sign-up: email syntax, the password policy, the display name.
/// The password is only checked here; `auth` hashes it afterwards.
///
/// # Errors
/// `InvalidEmail`, `WeakPassword` or `InvalidArgument`.
pub fn validate_signup(email: &str, password: &str, display_name: &str) -> Result<Signup, Rejection> {
    let email = Email::parse(email)?;
    check_password(password, &email)?;
    let display_name = display_name.trim();
    let display_name = if display_name.is_empty() {
        email.as_str().split('@').next().unwrap_or_default().to_owned()
    } else {
        display_name.to_owned()
    };
    check_name("display_name", &display_name)?;
    Ok(Signup { email, display_name })
}

/// The password policy: at least `MIN_PASSWORD_CHARS` characters, at most
/// `MAX_PASSWORD_BYTES` bytes, not the email address (or its local part), and not
/// a single repeated character.
///
/// # Errors
/// `WeakPassword` with the reason.
pub fn check_password(password: &str, email: &Email) -> Result<(), Rejection> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Rejection::WeakPassword("shorter than 10 characters"));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Rejection::WeakPassword("longer than 1024 bytes"));
    }
    let lower = password.trim().to_lowercase();
    let local = email.as_str().split('@').next().unwrap_or_default();
    if lower == email.as_str() || lower == local {
        return Err(Rejection::WeakPassword("must not be the email address"));
    }
    let mut chars = password.chars();
    let first = chars.next();
    if chars.all(|c| Some(c) == first) {
        return Err(Rejection::WeakPassword("must not be one repeated character"));
    }
    Ok(())
}

/// Checks a human-chosen name (display name, device name).
///
/// # Errors
/// `InvalidArgument` when too long or containing control characters.
pub fn check_name(field: &'static str, name: &str) -> Result<(), Rejection> {
    if name.len() > MAX_NAME_BYTES {
        return Err(Rejection::InvalidArgument { field, reason: "longer than 64 bytes" });
    }
    if name.chars().any(char::is_control) {
        return Err(Rejection::InvalidArgument { field, reason: "contains control characters" });
    }
    Ok(())
}

/// The events of a new account: the email claim (its own stream, appended with
/// "no stream expected" so an address is claimed once) and the registration.
pub fn register(signup: Signup, user_id: UserId, password_hash: String, at: Millis) -> (Event, Event) {
    let claim = Event::EmailClaimed { user_id, at };
    let registered = Event::UserRegistered(UserRegistered {
        user_id,
        email: signup.email,
        display_name: signup.display_name,
        password_hash,
        at,
    });
    (claim, registered)
}

/// A sign-in on a new device, as decided: who, which device, how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession<'a> {
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub device_name: &'a str,
    pub token_hash: TokenHash,
    pub method: SignInMethod,
}

/// The event of a successful login on a new device.
///
/// # Errors
/// `InvalidArgument` when the device name is unacceptable.
pub fn start_session(session: NewSession<'_>, at: Millis) -> Result<Event, Rejection> {
    let NewSession { user_id, device_id, device_name, token_hash, method } = session;
    let device_name = device_name.trim();
    check_name("device_name", device_name)?;
    let device_name = if device_name.is_empty() { "unnamed device" } else { device_name };
    Ok(Event::SessionStarted(SessionStarted {
        user_id,
        device_id,
        device_name: device_name.to_owned(),
        token_hash,
        method,
        at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn signup_normalizes_and_defaults_the_name() {
        let s = validate_signup(" Bob@Example.org", "correct horse battery", "").unwrap();
        assert_eq!(s.email.as_str(), "bob@example.org");
        assert_eq!(s.display_name, "bob");
    }

    #[test]
    fn password_policy() {
        let email = Email::parse("carol@example.org").unwrap();
        assert_eq!(check_password("short", &email), Err(Rejection::WeakPassword("shorter than 10 characters")));
        assert_eq!(
            check_password("Carol@Example.org", &email),
            Err(Rejection::WeakPassword("must not be the email address"))
        );
        assert_eq!(
            check_password("aaaaaaaaaaaa", &email),
            Err(Rejection::WeakPassword("must not be one repeated character"))
        );
        assert!(check_password(&"x".repeat(2000), &email).is_err());
        assert!(check_password("ten chars!", &email).is_ok());
        // Characters, not bytes: ten multi-byte characters are enough.
        assert!(check_password("ééééééééé1", &email).is_ok());
    }

    #[test]
    fn given_a_valid_signup_when_registering_then_claim_and_registration() {
        let s = validate_signup("d@example.org", "a fine passphrase", "Dee").unwrap();
        let uid = UserId(Uuid::from_u128(7));
        let (claim, reg) = register(s, uid, "$argon2id$…".into(), Millis(5));
        assert_eq!(claim, Event::EmailClaimed { user_id: uid, at: Millis(5) });
        match reg {
            Event::UserRegistered(r) => {
                assert_eq!(r.email.as_str(), "d@example.org");
                assert_eq!(r.display_name, "Dee");
                assert_eq!(r.at, Millis(5));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn device_names_are_checked() {
        let uid = UserId(Uuid::from_u128(1));
        let dev = DeviceId(Uuid::from_u128(2));
        let session = |name| NewSession {
            user_id: uid,
            device_id: dev,
            device_name: name,
            token_hash: TokenHash([0; 32]),
            method: SignInMethod::Password,
        };
        assert!(start_session(session("bad\u{7}name"), Millis(0)).is_err());
        match start_session(session("  "), Millis(0)).unwrap() {
            Event::SessionStarted(s) => assert_eq!(s.device_name, "unnamed device"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
