//! The stable error-code table. Codes never change meaning and are never reused;
//! spec/protocol.md ("Error codes") mirrors this table and a test keeps them equal.

use std::fmt;

/// A wire error code (`natter.v1.Error.code`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(pub u32);

macro_rules! codes {
    ($($name:ident = $value:expr, $desc:expr;)*) => {
        impl ErrorCode {
            $(#[doc = $desc] pub const $name: ErrorCode = ErrorCode($value);)*

            /// Every known code with its name and description, ascending.
            pub const ALL: &'static [(ErrorCode, &'static str, &'static str)] = &[
                $((ErrorCode($value), stringify!($name), $desc),)*
            ];
        }
    };
}

codes! {
    // 1xx: framing and protocol
    MALFORMED_FRAME = 100, "The frame is not a valid protobuf message of the expected type.";
    FRAME_TOO_LARGE = 101, "The frame's length prefix exceeds the maximum frame size; the connection is closed.";
    UNSUPPORTED_VERSION = 102, "No protocol version is supported by both sides; the connection is closed.";
    PROTOCOL_VIOLATION = 103, "A frame arrived that is not allowed at this point (e.g. a request before Hello).";
    TOO_MANY_CONNECTIONS = 104, "The server is at its connection cap; retry later.";
    // 2xx: authentication
    UNAUTHENTICATED = 200, "The request needs a signed-in session.";
    INVALID_CREDENTIALS = 201, "Unknown email or wrong password (deliberately indistinguishable).";
    SESSION_INVALID = 202, "The session token is unknown or has been revoked.";
    EMAIL_TAKEN = 203, "An account with this email already exists.";
    WEAK_PASSWORD = 204, "The password does not meet the password policy.";
    INVALID_EMAIL = 205, "The email address is not valid.";
    ALREADY_AUTHENTICATED = 206, "The connection is already signed in.";
    MFA_REQUIRED = 207, "The first factor was right; finish signing in with VerifyMfa and Error.mfa_challenge.";
    CODE_INVALID = 208, "The code (emailed, TOTP or recovery) is wrong or was already used; tries are limited.";
    CODE_EXPIRED = 209, "No such code or challenge is pending (expired, used, or out of tries); ask for a new one.";
    MFA_NOT_ENABLED = 210, "The second factor is not turned on for this account.";
    MFA_ALREADY_ENABLED = 211, "The second factor is already on; turn it off first to set up a new one.";
    INVALID_PHONE = 212, "The phone number is not valid (give it in international form, with + and the country code).";
    PHONE_TAKEN = 213, "Another account has this phone number.";
    IDENTITY_NOT_LINKED = 214, "An account already uses the provider's email; sign in to it and link the identity (LinkIdentity).";
    IDENTITY_TAKEN = 215, "The Google or GitHub identity belongs to another account.";
    LAST_SIGN_IN_METHOD = 216, "This is the account's last way of signing in; add another before removing it.";
    OAUTH_REJECTED = 217, "The provider refused the authorization code, or its answer did not check out; sign in again.";
    ACCOUNT_DISABLED = 218, "An admin disabled this account: it cannot sign in, and its sessions were ended.";
    // 3xx: request content
    INVALID_ARGUMENT = 300, "A field is missing, malformed or out of range.";
    TEXT_TOO_LONG = 301, "The message text exceeds the maximum text size.";
    EMPTY_MESSAGE = 302, "The message has no content.";
    MEDIA_TOO_LARGE = 303, "The file is larger than the server accepts.";
    QUOTA_EXCEEDED = 304, "The file would take the uploader over their storage quota.";
    MEDIA_TYPE_REFUSED = 305, "The file's bytes are of a type the server does not accept (the name does not count).";
    MEDIA_MISMATCH = 306, "The bytes received are not the declared size or SHA-256; nothing was stored.";
    DIRECT_URL_UNSUPPORTED = 307, "The server's file store has no direct URLs; download over a transfer stream.";
    KEY_PACKAGE_INVALID = 308, "A KeyPackage does not validate (encoding, signatures, ciphersuite, credential, the device's signature key, lifetime or last-resort marking); nothing was stored.";
    KEY_PACKAGES_FULL = 309, "The device's KeyPackage stock would exceed its capacity; publish fewer.";
    ENCRYPTION_MISMATCH = 310, "End-to-end encrypted conversations take only MLS content, and other conversations none.";
    MLS_MESSAGE_INVALID = 311, "The MLS content does not decode, or is not for this conversation's group.";
    // 4xx: resources and permissions
    NOT_FOUND = 400, "The user or conversation does not exist (or is not visible to you).";
    NOT_A_MEMBER = 401, "You are not a member of this conversation.";
    CONFLICT = 402, "A concurrent change won; retry the request.";
    FORBIDDEN = 403, "Your role in this conversation does not allow this, or the request is for admins only.";
    GROUP_FULL = 404, "The group has reached its member limit.";
    NO_DEVICE_KEY = 405, "The calling device has registered no MLS signature key (RegisterDeviceKey first).";
    STALE_EPOCH = 406, "The MLS message is for an epoch that is not the conversation's current one (another commit won); fetch what you missed, process it and retry.";
    REMOVAL_PENDING = 407, "The encrypted group still holds devices of people who are no longer members: no message goes in it until a commit removes them (commit, then send again).";
    // 5xx: server side
    RATE_LIMITED = 500, "Too many requests; retry after retry_after_ms.";
    OVERLOADED = 501, "The server is overloaded; retry after retry_after_ms.";
    SHUTTING_DOWN = 502, "The server is shutting down; reconnect (possibly to another node).";
    INTERNAL = 503, "An internal error; it has been logged. Retrying may help.";
    UNAVAILABLE = 504, "A service the server depends on (its database, file store, mail or SMS provider, an OpenID provider) cannot be reached for the moment, its storage is full, or the uploaded bytes are being deleted; retry after retry_after_ms (a retried write is not duplicated).";
}

impl ErrorCode {
    /// The constant's name, e.g. `"NOT_FOUND"`, or `None` for a code this build
    /// does not know (a newer server may send new codes).
    pub fn name(self) -> Option<&'static str> {
        Self::ALL.iter().find(|(c, _, _)| *c == self).map(|(_, n, _)| *n)
    }

    /// A one-sentence description for people.
    pub fn description(self) -> Option<&'static str> {
        Self::ALL.iter().find(|(c, _, _)| *c == self).map(|(_, _, d)| *d)
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}({})", self.0),
            None => write!(f, "ErrorCode({})", self.0),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_ascending() {
        for pair in ErrorCode::ALL.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{:?} !< {:?}", pair[0].0, pair[1].0);
        }
    }

    #[test]
    fn spec_table_matches_code_table() {
        let spec = include_str!("../../spec/protocol.md");
        for (code, name, _) in ErrorCode::ALL {
            let row = format!("| {} | `{}` |", code.0, name);
            assert!(spec.contains(&row), "spec/protocol.md lacks the row {row:?}");
        }
        let rows = spec
            .lines()
            .filter(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                cells.len() > 3 && cells[1].parse::<u32>().is_ok() && cells[2].starts_with('`')
            })
            .count();
        assert_eq!(rows, ErrorCode::ALL.len(), "spec/protocol.md has extra error rows");
    }

    #[test]
    fn unknown_code_has_no_name() {
        assert_eq!(ErrorCode(9999).name(), None);
        assert_eq!(format!("{:?}", ErrorCode::NOT_FOUND), "NOT_FOUND(400)");
    }
}
