//! Protocol limits shared by natterd and clients. The spec's limit table
//! (spec/protocol.md, "Limits") mirrors these constants.

/// The newest protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// Default maximum frame size (length prefix excluded), in bytes.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;
/// A varint length prefix is at most this long (64-bit varint).
pub const MAX_VARINT_BYTES: usize = 10;

/// Maximum size of a text message body, in UTF-8 bytes.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// Maximum size of an email address, in bytes (RFC 5321 path limit).
pub const MAX_EMAIL_BYTES: usize = 254;
/// Maximum size of a display name or device name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Minimum password length, in characters.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Maximum password length, in bytes (bounds the hashing cost of a request).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Maximum size of a client-chosen message id, in bytes.
pub const MAX_CLIENT_MSG_ID_BYTES: usize = 64;
/// Maximum size of any other identifier in a request, in bytes.
pub const MAX_ID_BYTES: usize = 64;

/// Default member limit of a group (natterd's `max_group_members`).
pub const DEFAULT_MAX_GROUP_MEMBERS: usize = 1000;
/// Maximum size of a group name, in bytes.
pub const MAX_GROUP_NAME_BYTES: usize = 128;
/// Most emails in one CreateGroup or AddMembers request.
pub const MAX_EMAILS_PER_REQUEST: usize = 256;

/// History page size when the request asks for 0.
pub const DEFAULT_HISTORY_LIMIT: u32 = 50;
/// Largest history page.
pub const MAX_HISTORY_LIMIT: u32 = 500;
/// Largest conversation-list page.
pub const MAX_CONVERSATION_LIST_LIMIT: u32 = 500;

/// Requests a connection may have in flight before the server stops reading
/// its control stream (backpressure, not an error).
pub const MAX_IN_FLIGHT_REQUESTS: usize = 64;
