//! Identifier newtypes. Parsing validates; a value of these types is well-formed.

use std::fmt;

use uuid::Uuid;

use super::Rejection;
use natter_proto::limits::{MAX_CLIENT_MSG_ID_BYTES, MAX_EMAIL_BYTES};

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Uuid);

        impl $name {
            /// Parses the canonical hyphenated form.
            ///
            /// # Errors
            /// `InvalidArgument` when `s` is not a UUID.
            pub fn parse(s: &str) -> Result<Self, Rejection> {
                Uuid::try_parse(s)
                    .map($name)
                    .map_err(|_| Rejection::InvalidArgument { field: $field, reason: "not a valid id" })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }
    };
}

uuid_id!(
    /// A user account.
    UserId,
    "user_id"
);
uuid_id!(
    /// One device of a user; a session belongs to one device.
    DeviceId,
    "device_id"
);
uuid_id!(
    /// A conversation (direct or group).
    ConversationId,
    "conversation_id"
);
uuid_id!(
    /// An uploaded file.
    MediaId,
    "media_id"
);

/// Namespace for ids derived by hashing (direct conversations, message event ids).
const NATTER_NAMESPACE: Uuid = Uuid::from_u128(0x6e61_7474_6572_4000_8000_6e61_7474_6572);

impl ConversationId {
    /// The one direct conversation between two users, the same whichever of them
    /// asks: derived from the ordered pair, so opening it twice finds the same stream.
    pub fn direct(a: UserId, b: UserId) -> Self {
        Self::of_pair(b"direct:", a, b)
    }

    /// The end-to-end encrypted direct conversation of two users: another id
    /// than their plaintext one, the same whoever opens it.
    pub fn direct_e2ee(a: UserId, b: UserId) -> Self {
        Self::of_pair(b"direct-e2ee:", a, b)
    }

    /// A name-based id of two users, the same in either order.
    fn of_pair(prefix: &[u8], a: UserId, b: UserId) -> Self {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let mut name = Vec::with_capacity(prefix.len() + 32);
        name.extend_from_slice(prefix);
        name.extend_from_slice(lo.0.as_bytes());
        name.extend_from_slice(hi.0.as_bytes());
        ConversationId(Uuid::new_v5(&NATTER_NAMESPACE, &name))
    }
}

/// Sequence number of an event in a conversation: its position in the
/// conversation's stream, starting at 1, gap-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

/// A client-chosen message id that makes sends idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientMsgId(String);

impl ClientMsgId {
    /// # Errors
    /// `InvalidArgument` when empty, too long, or containing control characters.
    pub fn parse(s: &str) -> Result<Self, Rejection> {
        const FIELD: &str = "client_msg_id";
        if s.is_empty() {
            return Err(Rejection::InvalidArgument { field: FIELD, reason: "must not be empty" });
        }
        if s.len() > MAX_CLIENT_MSG_ID_BYTES {
            return Err(Rejection::InvalidArgument { field: FIELD, reason: "longer than 64 bytes" });
        }
        if s.chars().any(char::is_control) {
            return Err(Rejection::InvalidArgument { field: FIELD, reason: "contains control characters" });
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of the log event recording this message: the same (conversation,
    /// sender, client id) always maps to the same event id, which the log uses to
    /// make the append idempotent.
    pub fn event_id(&self, conversation: ConversationId, sender: UserId) -> Uuid {
        let mut name = Vec::with_capacity(40 + self.0.len());
        name.extend_from_slice(b"msg:");
        name.extend_from_slice(conversation.0.as_bytes());
        name.extend_from_slice(sender.0.as_bytes());
        name.extend_from_slice(self.0.as_bytes());
        Uuid::new_v5(&NATTER_NAMESPACE, &name)
    }
}

/// A phone number in E.164 form (`+4915123456789`), parsed and checked
/// against libphonenumber's metadata for its country.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Phone(String);

impl Phone {
    /// Normalizes an international number (spaces, dashes and brackets are
    /// fine; the country code with its `+` is required).
    ///
    /// # Errors
    /// `InvalidPhone` with the reason.
    pub fn parse(raw: &str) -> Result<Self, Rejection> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(Rejection::InvalidPhone("empty"));
        }
        if raw.len() > 32 {
            return Err(Rejection::InvalidPhone("longer than 32 bytes"));
        }
        if !raw.starts_with('+') {
            return Err(Rejection::InvalidPhone("give the number with its country code, starting with +"));
        }
        let number = phonenumber::parse(None, raw).map_err(|_| Rejection::InvalidPhone("not a phone number"))?;
        if !phonenumber::is_valid(&number) {
            return Err(Rejection::InvalidPhone("not a valid number for its country"));
        }
        Ok(Self(number.format().mode(phonenumber::Mode::E164).to_string()))
    }

    /// Wraps a number read back from our own log, where it was stored normalized.
    pub fn from_normalized(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A normalized email address (trimmed, lower-cased).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Normalizes and validates an address: one `@`, a non-empty local part, a
    /// domain with a dot and no empty labels, no whitespace or control characters.
    ///
    /// # Errors
    /// `InvalidEmail` with the reason.
    pub fn parse(raw: &str) -> Result<Self, Rejection> {
        let s = raw.trim().to_lowercase();
        if s.is_empty() {
            return Err(Rejection::InvalidEmail("empty"));
        }
        if s.len() > MAX_EMAIL_BYTES {
            return Err(Rejection::InvalidEmail("longer than 254 bytes"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Rejection::InvalidEmail("contains whitespace"));
        }
        let Some((local, domain)) = s.split_once('@') else {
            return Err(Rejection::InvalidEmail("missing @"));
        };
        if local.is_empty() || local.len() > 64 {
            return Err(Rejection::InvalidEmail("bad local part"));
        }
        if domain.contains('@') {
            return Err(Rejection::InvalidEmail("more than one @"));
        }
        if !domain.contains('.') || domain.split('.').any(str::is_empty) {
            return Err(Rejection::InvalidEmail("bad domain"));
        }
        Ok(Self(s))
    }

    /// Wraps an address read back from our own log, where it was stored normalized.
    pub fn from_normalized(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// SHA-256 of a session token. The token itself is never stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_normalized() {
        assert_eq!(Email::parse("  Alice@Example.COM ").unwrap().as_str(), "alice@example.com");
    }

    #[test]
    fn bad_emails_are_rejected() {
        for bad in ["", "alice", "@example.com", "alice@", "alice@example", "a@b@c.com", "al ice@x.com", "a@x..com"] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Email::parse(&format!("{}@x.com", "a".repeat(300))).is_err());
    }

    #[test]
    fn direct_id_is_symmetric_and_distinct() {
        let a = UserId(Uuid::from_u128(1));
        let b = UserId(Uuid::from_u128(2));
        let c = UserId(Uuid::from_u128(3));
        assert_eq!(ConversationId::direct(a, b), ConversationId::direct(b, a));
        assert_ne!(ConversationId::direct(a, b), ConversationId::direct(a, c));
    }

    #[test]
    fn message_event_id_depends_on_every_part() {
        let conv = ConversationId(Uuid::from_u128(9));
        let other = ConversationId(Uuid::from_u128(10));
        let u = UserId(Uuid::from_u128(1));
        let v = UserId(Uuid::from_u128(2));
        let m = ClientMsgId::parse("m1").unwrap();
        let n = ClientMsgId::parse("m2").unwrap();
        let base = m.event_id(conv, u);
        assert_eq!(base, m.event_id(conv, u));
        assert_ne!(base, m.event_id(other, u));
        assert_ne!(base, m.event_id(conv, v));
        assert_ne!(base, n.event_id(conv, u));
    }

    #[test]
    fn client_msg_id_validation() {
        assert!(ClientMsgId::parse("").is_err());
        assert!(ClientMsgId::parse(&"x".repeat(65)).is_err());
        assert!(ClientMsgId::parse("a\nb").is_err());
        assert!(ClientMsgId::parse("0b8f6c1e-retry-safe").is_ok());
    }
}
