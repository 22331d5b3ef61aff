//! The spec's test vectors (spec/vectors/frames.txt): each encoded frame must
//! decode to the message built here and re-encode to the same bytes.
//!
//! To regenerate the file after an intentional change:
//! `NATTER_WRITE_VECTORS=1 cargo test -p natter-proto vectors`.

use prost::Message as ProstMessage;

use crate::codec::{encode_frame, FrameDecoder};
use crate::wire::*;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/vectors/frames.txt");

enum Frame {
    Client(ClientFrame),
    Server(ServerFrame),
    Feed(FeedFrame),
    TransferRequest(TransferRequest),
    TransferReply(TransferReply),
}

impl Frame {
    fn type_name(&self) -> &'static str {
        match self {
            Frame::Client(_) => "ClientFrame",
            Frame::Server(_) => "ServerFrame",
            Frame::Feed(_) => "FeedFrame",
            Frame::TransferRequest(_) => "TransferRequest",
            Frame::TransferReply(_) => "TransferReply",
        }
    }
    fn encode(&self) -> Vec<u8> {
        let max = crate::limits::DEFAULT_MAX_FRAME_BYTES;
        match self {
            Frame::Client(m) => encode_frame(m, max),
            Frame::Server(m) => encode_frame(m, max),
            Frame::Feed(m) => encode_frame(m, max),
            Frame::TransferRequest(m) => encode_frame(m, max),
            Frame::TransferReply(m) => encode_frame(m, max),
        }
        .expect("vectors are small")
        .to_vec()
    }
}

fn req(id: u64, body: request::Body) -> Frame {
    Frame::Client(ClientFrame { kind: Some(client_frame::Kind::Request(Request { id, body: Some(body) })) })
}

fn resp(id: u64, result: response::Result) -> Frame {
    Frame::Server(ServerFrame { kind: Some(server_frame::Kind::Response(Response { id, result: Some(result) })) })
}

fn admin_user() -> AdminUser {
    AdminUser {
        user_id: BOB.into(),
        email: "bob@example.org".into(),
        display_name: "Bob".into(),
        phone: String::new(),
        created_at_ms: 1_767_225_600_000,
        email_verified: true,
        totp: false,
        admin: false,
        disabled: true,
        sessions: 1,
    }
}

fn admin_group() -> AdminGroup {
    AdminGroup {
        conversation_id: CONV.into(),
        name: "Book club".into(),
        e2ee: false,
        created_at_ms: 1_767_225_600_000,
        last_activity_ms: 1_767_229_200_000,
        last_seq: 42,
        members: 2,
    }
}

fn text(body: &str) -> Option<Content> {
    Some(Content { body: Some(content::Body::Text(Text { body: body.into() })) })
}

const CONV: &str = "0f5e2a64-3c1d-5b8e-9a47-2d6c1e8b4f90";
const ALICE: &str = "6a1f0c2e-8d4b-4e7a-9c3f-1b2d3e4f5a6b";
const BOB: &str = "7b2e1d3f-9e5c-4f8b-8d40-2c3e4f5a6b7c";
const DEVICE: &str = "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f";
const MEDIA: &str = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a";

fn media() -> Media {
    Media {
        media_id: MEDIA.into(),
        file_name: "beach.png".into(),
        mime_type: "image/png".into(),
        size: 1234,
        sha256: vec![0xab; 32],
        width: 640,
        height: 480,
        ..Media::default()
    }
}

fn message() -> Message {
    Message {
        conversation_id: CONV.into(),
        seq: 2,
        sender_user_id: ALICE.into(),
        sender_device_id: DEVICE.into(),
        client_msg_id: "c-0001".into(),
        content: text("hello bob"),
        sent_at_ms: 1_795_000_000_000,
        sender_email: "alice@example.org".into(),
        sender_name: String::new(),
    }
}

/// (name, meaning, frame) for every vector.
fn vectors() -> Vec<(&'static str, &'static str, Frame)> {
    vec![
        (
            "hello_anonymous",
            "Hello for versions 1..=1 from natter-cli/0.1.0, not signed in",
            Frame::Client(ClientFrame {
                kind: Some(client_frame::Kind::Hello(Hello {
                    min_version: 1,
                    max_version: 1,
                    client_name: "natter-cli/0.1.0".into(),
                    session_token: String::new(),
                })),
            }),
        ),
        (
            "hello_resume",
            "Hello resuming a session token",
            Frame::Client(ClientFrame {
                kind: Some(client_frame::Kind::Hello(Hello {
                    min_version: 1,
                    max_version: 1,
                    client_name: "natter-cli/0.1.0".into(),
                    session_token: "q0QmS2a8o5m3m6hE0a9m3Q4lYV7aQ1b2c3d4e5f6g7h".into(),
                })),
            }),
        ),
        (
            "request_signup",
            "Request 1: Signup alice@example.org with display name Alice",
            req(
                1,
                request::Body::Signup(Signup {
                    email: "alice@example.org".into(),
                    password: "correct horse battery staple".into(),
                    display_name: "Alice".into(),
                }),
            ),
        ),
        (
            "request_login",
            "Request 2: Login from device \"laptop\"",
            req(
                2,
                request::Body::Login(Login {
                    email: "alice@example.org".into(),
                    password: "correct horse battery staple".into(),
                    device_name: "laptop".into(),
                }),
            ),
        ),
        ("request_logout", "Request 9: Logout (an empty message)", req(9, request::Body::Logout(Logout {}))),
        (
            "request_open_direct",
            "Request 3: OpenDirect with bob@example.org",
            req(3, request::Body::OpenDirect(OpenDirect { peer_email: "bob@example.org".into(), e2ee: false })),
        ),
        (
            "request_send_text",
            "Request 4: SendMessage \"hello bob\" with client_msg_id c-0001",
            req(
                4,
                request::Body::SendMessage(SendMessage {
                    conversation_id: CONV.into(),
                    client_msg_id: "c-0001".into(),
                    content: text("hello bob"),
                }),
            ),
        ),
        (
            "request_history_before",
            "Request 5: GetHistory, 20 messages before seq 100",
            req(
                5,
                request::Body::GetHistory(GetHistory {
                    conversation_id: CONV.into(),
                    before_seq: 100,
                    after_seq: 0,
                    limit: 20,
                }),
            ),
        ),
        (
            "request_sync_since",
            "Request 6: Sync since cursor 42",
            req(6, request::Body::Sync(Sync { since: Some(42) })),
        ),
        (
            "request_sync_since_zero",
            "Request 7: Sync since cursor 0 (everything); an explicit zero is on the wire",
            req(7, request::Body::Sync(Sync { since: Some(0) })),
        ),
        (
            "request_sync_now",
            "Request 8: Sync from now on (since absent)",
            req(8, request::Body::Sync(Sync { since: None })),
        ),
        (
            "welcome_signed_in",
            "Welcome: version 1, 1 MiB frames, resumed as alice",
            Frame::Server(ServerFrame {
                kind: Some(server_frame::Kind::Welcome(Welcome {
                    version: 1,
                    server_name: "natterd".into(),
                    max_frame_bytes: 1_048_576,
                    identity: Some(Identity {
                        user_id: ALICE.into(),
                        device_id: DEVICE.into(),
                        email: "alice@example.org".into(),
                        display_name: "Alice".into(),
                    }),
                })),
            }),
        ),
        (
            "response_sent",
            "Response 4: Sent, seq 2, not a duplicate",
            resp(4, response::Result::Sent(Sent { seq: 2, sent_at_ms: 1_795_000_000_000, duplicate: false })),
        ),
        (
            "response_sent_duplicate",
            "Response 4: Sent for a retried client_msg_id: the original seq 2",
            resp(4, response::Result::Sent(Sent { seq: 2, sent_at_ms: 1_795_000_000_000, duplicate: true })),
        ),
        (
            "response_error_not_a_member",
            "Response 4: Error NOT_A_MEMBER (401)",
            resp(
                4,
                response::Result::Error(Error {
                    code: 401,
                    message: "not a member of this conversation".into(),
                    retry_after_ms: 0,
                    mfa_challenge: String::new(),
                }),
            ),
        ),
        (
            "connection_error_malformed",
            "Connection-level Error MALFORMED_FRAME (100), not tied to a request",
            Frame::Server(ServerFrame {
                kind: Some(server_frame::Kind::Error(Error {
                    code: 100,
                    message: "malformed frame".into(),
                    retry_after_ms: 0,
                    mfa_challenge: String::new(),
                })),
            }),
        ),
        (
            "feed_conversation_started",
            "Feed: cursor 41, direct conversation between alice and bob started",
            Frame::Feed(FeedFrame {
                kind: Some(feed_frame::Kind::Event(FeedEvent {
                    cursor: 41,
                    kind: Some(feed_event::Kind::ConversationStarted(Conversation {
                        conversation_id: CONV.into(),
                        kind: ConversationKind::Direct as i32,
                        members: vec![
                            Member {
                                user_id: ALICE.into(),
                                email: "alice@example.org".into(),
                                display_name: "Alice".into(),
                                ..Default::default()
                            },
                            Member {
                                user_id: BOB.into(),
                                email: "bob@example.org".into(),
                                display_name: "bob".into(),
                                ..Default::default()
                            },
                        ],
                        last_message: None,
                        created_at_ms: 1_794_999_999_000,
                        ..Default::default()
                    })),
                })),
            }),
        ),
        (
            "feed_message",
            "Feed: cursor 43, alice's message seq 2 \"hello bob\"",
            Frame::Feed(FeedFrame {
                kind: Some(feed_frame::Kind::Event(FeedEvent {
                    cursor: 43,
                    kind: Some(feed_event::Kind::Message(message())),
                })),
            }),
        ),
        (
            "request_create_group",
            "Request 10: CreateGroup \"team\" with bob and carol",
            req(
                10,
                request::Body::CreateGroup(CreateGroup {
                    name: "team".into(),
                    member_emails: vec!["bob@example.org".into(), "carol@example.org".into()],
                    e2ee: false,
                }),
            ),
        ),
        (
            "request_mark_read",
            "Request 11: MarkRead up to seq 7",
            req(11, request::Body::MarkRead(MarkRead { conversation_id: CONV.into(), seq: 7 })),
        ),
        (
            "request_ack_feed",
            "Request 12: AckFeed up to cursor 43",
            req(12, request::Body::AckFeed(AckFeed { cursor: 43 })),
        ),
        (
            "feed_group_member_added",
            "Feed: cursor 50, seq 3 of the group: alice added bob as a member",
            Frame::Feed(FeedFrame {
                kind: Some(feed_frame::Kind::Event(FeedEvent {
                    cursor: 50,
                    kind: Some(feed_event::Kind::Group(GroupEvent {
                        conversation_id: CONV.into(),
                        seq: 3,
                        actor_user_id: ALICE.into(),
                        at_ms: 1_795_000_000_500,
                        change: Some(group_event::Change::MembersAdded(MembersAdded {
                            members: vec![Member {
                                user_id: BOB.into(),
                                email: "bob@example.org".into(),
                                display_name: "bob".into(),
                                role: Role::Member as i32,
                            }],
                        })),
                    })),
                })),
            }),
        ),
        (
            "feed_receipt_read",
            "Feed: cursor 51, bob read the conversation up to seq 2",
            Frame::Feed(FeedFrame {
                kind: Some(feed_frame::Kind::Event(FeedEvent {
                    cursor: 51,
                    kind: Some(feed_event::Kind::Receipt(Receipt {
                        conversation_id: CONV.into(),
                        user_id: BOB.into(),
                        delivered_up_to: 0,
                        read_up_to: 2,
                    })),
                })),
            }),
        ),
        (
            "feed_caught_up",
            "Feed: backlog delivered up to cursor 43",
            Frame::Feed(FeedFrame { kind: Some(feed_frame::Kind::CaughtUp(CaughtUp { cursor: 43 })) }),
        ),
        (
            "response_mfa_required",
            "Response 2: Login needs the second factor; the challenge to pass to VerifyMfa",
            resp(
                2,
                response::Result::Error(Error {
                    code: 207,
                    message: "enter the code from your authenticator app (or a recovery code) with VerifyMfa".into(),
                    retry_after_ms: 0,
                    mfa_challenge: "Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eHF1dXg".into(),
                }),
            ),
        ),
        (
            "request_verify_mfa",
            "Request 3: VerifyMfa with TOTP code 287082",
            req(
                3,
                request::Body::VerifyMfa(VerifyMfa {
                    challenge: "Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eHF1dXg".into(),
                    factor: Some(verify_mfa::Factor::Code("287082".into())),
                }),
            ),
        ),
        (
            "request_verify_mfa_recovery",
            "Request 4: VerifyMfa with a recovery code",
            req(
                4,
                request::Body::VerifyMfa(VerifyMfa {
                    challenge: "Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eHF1dXg".into(),
                    factor: Some(verify_mfa::Factor::RecoveryCode("abcde-fghij".into())),
                }),
            ),
        ),
        (
            "response_totp_setup",
            "Response 5: EnableTotp's fresh secret and otpauth URI",
            resp(
                5,
                response::Result::TotpSetup(TotpSetup {
                    secret_base32: "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ".into(),
                    otpauth_uri: "otpauth://totp/natter:alice%40example.org?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
                                  &issuer=natter&algorithm=SHA1&digits=6&period=30"
                        .into(),
                }),
            ),
        ),
        (
            "request_list_sessions",
            "Request 6: ListSessions (an empty message)",
            req(6, request::Body::ListSessions(ListSessions {})),
        ),
        (
            "response_session_list",
            "Response 6: one session, this connection's, signed in with a password",
            resp(
                6,
                response::Result::Sessions(SessionList {
                    sessions: vec![SessionInfo {
                        session_id: DEVICE.into(),
                        device_name: "laptop".into(),
                        method: "password".into(),
                        created_at_ms: 1_795_000_000_000,
                        last_used_at_ms: 1_795_000_360_000,
                        last_address: "192.0.2.7".into(),
                        current: true,
                    }],
                }),
            ),
        ),
        (
            "request_reset_password",
            "Request 7: ResetPassword with the mailed code 123456",
            req(
                7,
                request::Body::ResetPassword(ResetPassword {
                    email: "alice@example.org".into(),
                    code: "123456".into(),
                    new_password: "a new long passphrase".into(),
                }),
            ),
        ),
        (
            "request_start_phone",
            "Request 8: StartPhone for +49 151 23456789 (any spacing; the server normalizes to E.164)",
            req(8, request::Body::StartPhone(StartPhone { phone: "+49 151 23456789".into() })),
        ),
        (
            "request_verify_phone",
            "Request 9: VerifyPhone with the texted code, signing in from device \"phone\"",
            req(
                9,
                request::Body::VerifyPhone(VerifyPhone {
                    phone: "+4915123456789".into(),
                    code: "482913".into(),
                    device_name: "phone".into(),
                    display_name: String::new(),
                }),
            ),
        ),
        (
            "request_verify_phone_new_account",
            "Request 10: VerifyPhone for a number no account has: the account is made, named \"Zoe\"",
            req(
                10,
                request::Body::VerifyPhone(VerifyPhone {
                    phone: "+33612345678".into(),
                    code: "205117".into(),
                    device_name: "phone".into(),
                    display_name: "Zoe".into(),
                }),
            ),
        ),
        (
            "response_phone_added",
            "Response 10: the number is on the account, in E.164",
            resp(10, response::Result::PhoneAdded(PhoneAddedOk { phone: "+4915123456789".into() })),
        ),
        (
            "request_change_password",
            "Request 11: ChangePassword (every other session is signed out)",
            req(
                11,
                request::Body::ChangePassword(ChangePassword {
                    old_password: "correct horse battery staple".into(),
                    new_password: "a new long passphrase".into(),
                }),
            ),
        ),
        (
            "response_password",
            "Response 11: the password changed and 2 other sessions were signed out",
            resp(11, response::Result::Password(PasswordOk { revoked_sessions: 2 })),
        ),
        (
            "request_revoke_session",
            "Request 12: RevokeSession of one of the caller's devices",
            req(12, request::Body::RevokeSession(RevokeSession { session_id: DEVICE.into() })),
        ),
        (
            "request_revoke_other_sessions",
            "Request 13: RevokeOtherSessions (an empty message): sign out everywhere else",
            req(13, request::Body::RevokeOtherSessions(RevokeOtherSessions {})),
        ),
        (
            "response_revoked",
            "Response 13: 3 sessions revoked",
            resp(13, response::Result::Revoked(RevokeOk { revoked: 3 })),
        ),
        (
            "request_start_email_verification",
            "Request 14: StartEmailVerification (an empty message)",
            req(14, request::Body::StartEmailVerification(StartEmailVerification {})),
        ),
        (
            "response_code_sent",
            "Response 14: a code was sent, valid 300000 ms",
            resp(14, response::Result::CodeSent(CodeSent { expires_in_ms: 300_000 })),
        ),
        (
            "request_verify_email",
            "Request 15: VerifyEmail with the mailed code 031842",
            req(15, request::Body::VerifyEmail(VerifyEmail { code: "031842".into() })),
        ),
        (
            "response_email_verified",
            "Response 15: the address is verified",
            resp(15, response::Result::EmailVerified(EmailVerifiedOk { email: "alice@example.org".into() })),
        ),
        (
            "request_confirm_totp",
            "Request 16: ConfirmTotp with a current code from the app",
            req(16, request::Body::ConfirmTotp(ConfirmTotp { code: "287082".into() })),
        ),
        (
            "response_recovery_codes",
            "Response 16: two recovery codes (a real answer has 10)",
            resp(
                16,
                response::Result::RecoveryCodes(RecoveryCodes {
                    codes: vec!["k3f9-w2mx-8qtd".into(), "p7vh-c4ne-r6ja".into()],
                }),
            ),
        ),
        (
            "request_disable_totp",
            "Request 17: DisableTotp with a current code",
            req(17, request::Body::DisableTotp(DisableTotp { code: "359152".into() })),
        ),
        (
            "request_new_recovery_codes",
            "Request 18: NewRecoveryCodes with a current code",
            req(18, request::Body::NewRecoveryCodes(NewRecoveryCodes { code: "969429".into() })),
        ),
        (
            "request_get_oauth_config",
            "Request 19: GetOAuthConfig for Google",
            req(19, request::Body::GetOauthConfig(GetOAuthConfig { provider: OAuthProvider::Google as i32 })),
        ),
        (
            "response_oauth_config",
            "Response 19: Google's authorization endpoint, the client id, the scopes; a nonce is used",
            resp(
                19,
                response::Result::OauthConfig(OAuthConfig {
                    provider: OAuthProvider::Google as i32,
                    authorization_endpoint: "https://accounts.google.com/o/oauth2/v2/auth".into(),
                    client_id: "1234.apps.googleusercontent.com".into(),
                    scopes: vec!["openid".into(), "email".into(), "profile".into()],
                    uses_nonce: true,
                }),
            ),
        ),
        (
            "request_oauth_login",
            "Request 20: OAuthLogin with Google's code, the PKCE verifier of RFC 7636 appendix B, the loopback redirect and the nonce",
            req(
                20,
                request::Body::OauthLogin(OAuthLogin {
                    provider: OAuthProvider::Google as i32,
                    code: "4/0AbCdEf".into(),
                    code_verifier: "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into(),
                    redirect_uri: "http://127.0.0.1:49152/".into(),
                    nonce: "n-0S6_WzA2Mj".into(),
                    device_name: "laptop".into(),
                }),
            ),
        ),
        (
            "request_link_identity",
            "Request 21: LinkIdentity with GitHub's code (GitHub takes no nonce)",
            req(
                21,
                request::Body::LinkIdentity(LinkIdentity {
                    provider: OAuthProvider::Github as i32,
                    code: "d2f1c0ffee".into(),
                    code_verifier: "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into(),
                    redirect_uri: "http://127.0.0.1:49153/".into(),
                    nonce: String::new(),
                }),
            ),
        ),
        (
            "response_identity_linked",
            "Response 21: GitHub is linked, with the provider's verified email",
            resp(
                21,
                response::Result::IdentityLinked(LinkedIdentity {
                    provider: OAuthProvider::Github as i32,
                    email: "alice@example.org".into(),
                    linked_at_ms: 1_795_000_000_000,
                }),
            ),
        ),
        (
            "request_unlink_identity",
            "Request 22: UnlinkIdentity of GitHub",
            req(22, request::Body::UnlinkIdentity(UnlinkIdentity { provider: OAuthProvider::Github as i32 })),
        ),
        (
            "request_list_identities",
            "Request 23: ListIdentities (an empty message)",
            req(23, request::Body::ListIdentities(ListIdentities {})),
        ),
        (
            "response_identities",
            "Response 23: one identity remains linked (Google)",
            resp(
                23,
                response::Result::Identities(IdentityList {
                    identities: vec![LinkedIdentity {
                        provider: OAuthProvider::Google as i32,
                        email: "alice@example.org".into(),
                        linked_at_ms: 1_795_000_000_000,
                    }],
                }),
            ),
        ),
        (
            "request_remove_phone",
            "Request 25: RemovePhone (an empty message)",
            req(25, request::Body::RemovePhone(RemovePhone {})),
        ),
        (
            "response_phone_removed",
            "Response 25: the number is off the account",
            resp(25, response::Result::PhoneRemoved(PhoneRemovedOk { phone: "+4915123456789".into() })),
        ),
        (
            "transfer_upload_start",
            "Transfer stream, client: upload a 1234-byte photo for a conversation (SHA-256 of 32 bytes 0xab)",
            Frame::TransferRequest(TransferRequest {
                kind: Some(transfer_request::Kind::Upload(UploadStart {
                    conversation_id: CONV.into(),
                    size: 1234,
                    sha256: vec![0xab; 32],
                    file_name: "beach.png".into(),
                    upload_id: String::new(),
                })),
            }),
        ),
        (
            "transfer_upload_ready",
            "Transfer stream, server: send from offset 0 (a resumed upload gets the offset natterd holds)",
            Frame::TransferReply(TransferReply {
                kind: Some(transfer_reply::Kind::Ready(UploadReady {
                    upload_id: "4be0643f1d98573b97cdca98a65347dd".into(),
                    offset: 0,
                })),
            }),
        ),
        (
            "transfer_upload_done",
            "Transfer stream, server: stored; the type was read from the bytes, the size from the header",
            Frame::TransferReply(TransferReply { kind: Some(transfer_reply::Kind::Done(media())) }),
        ),
        (
            "transfer_download_start",
            "Transfer stream, client: download 500 bytes from offset 1000",
            Frame::TransferRequest(TransferRequest {
                kind: Some(transfer_request::Kind::Download(DownloadStart {
                    media_id: MEDIA.into(),
                    offset: 1000,
                    length: 500,
                })),
            }),
        ),
        (
            "transfer_download_header",
            "Transfer stream, server: the media and the range; exactly 500 raw bytes follow",
            Frame::TransferReply(TransferReply {
                kind: Some(transfer_reply::Kind::Header(DownloadHeader {
                    media: Some(media()),
                    offset: 1000,
                    length: 500,
                })),
            }),
        ),
        (
            "transfer_error_type_refused",
            "Transfer stream, server: MEDIA_TYPE_REFUSED (305), then the stream is finished",
            Frame::TransferReply(TransferReply {
                kind: Some(transfer_reply::Kind::Error(Error {
                    code: 305,
                    message: "the file's bytes are application/x-executable, which this server does not accept".into(),
                    retry_after_ms: 0,
                    mfa_challenge: String::new(),
                })),
            }),
        ),
        (
            "request_send_media",
            "Request 26: SendMessage of an uploaded photo with a caption (natterd fills in the rest)",
            req(
                26,
                request::Body::SendMessage(SendMessage {
                    conversation_id: CONV.into(),
                    client_msg_id: "m-photo-1".into(),
                    content: Some(Content {
                        body: Some(content::Body::Media(Media {
                            media_id: MEDIA.into(),
                            caption: "the beach".into(),
                            ..Media::default()
                        })),
                    }),
                }),
            ),
        ),
        (
            "request_get_media_url",
            "Request 27: GetMediaUrl for a media (S3 store: a presigned URL)",
            req(27, request::Body::GetMediaUrl(GetMediaUrl { media_id: MEDIA.into() })),
        ),
        (
            "response_media_url",
            "Response 27: the URL and when it stops working",
            resp(
                27,
                response::Result::MediaUrl(MediaUrl {
                    url: "https://s3.example.org/natter-media/blobs/abab?X-Amz-Expires=300&X-Amz-Signature=0f1e".into(),
                    expires_at_ms: 1_795_000_300_000,
                }),
            ),
        ),
        (
            "request_search",
            "Request 28: Search for a phrase and a word being typed, in one conversation, 10 hits a page",
            req(
                28,
                request::Body::Search(Search {
                    query: "\"harbour trip\" fri".into(),
                    conversation_id: CONV.into(),
                    limit: 10,
                    ..Search::default()
                }),
            ),
        ),
        (
            "response_search",
            "Response 28: one conversation's hit, its snippet with three highlights, and the next page's cursor",
            resp(
                28,
                response::Result::Search(SearchResults {
                    groups: vec![SearchGroup {
                        conversation_id: CONV.into(),
                        name: String::new(),
                        hits: vec![SearchHit {
                            seq: 42,
                            at_ms: 1_795_000_000_000,
                            sender_user_id: ALICE.into(),
                            snippet: "the harbour trip is on Friday".into(),
                            highlights: vec![
                                Highlight { start: 4, end: 11 },
                                Highlight { start: 12, end: 16 },
                                Highlight { start: 23, end: 29 },
                            ],
                            sender_email: "alice@example.org".into(),
                            sender_name: "Alice".into(),
                        }],
                    }],
                    next_cursor: "o10".into(),
                }),
            ),
        ),
        (
            "request_search_directory",
            "Request 29: SearchDirectory, people and groups starting with \"bo\"",
            req(29, request::Body::SearchDirectory(SearchDirectory { prefix: "bo".into(), limit: 0 })),
        ),
        (
            "response_directory",
            "Response 29: one group and one person",
            resp(
                29,
                response::Result::Directory(DirectoryResults {
                    conversations: vec![DirectoryConversation {
                        conversation_id: CONV.into(),
                        name: "Book club".into(),
                        active: true,
                    }],
                    people: vec![DirectoryPerson {
                        user_id: BOB.into(),
                        email: "bob@example.org".into(),
                        display_name: "Bob".into(),
                    }],
                }),
            ),
        ),
        (
            "request_get_push_config",
            "Request 30: GetPushConfig (an empty message)",
            req(30, request::Body::GetPushConfig(GetPushConfig {})),
        ),
        (
            "response_push_config",
            "Response 30: the VAPID key (65 bytes), this device registered, previews on, one conversation muted for ever",
            resp(
                30,
                response::Result::PushConfig(PushConfig {
                    application_server_key: [vec![4u8], vec![0x11; 32], vec![0x22; 32]].concat(),
                    registered: true,
                    endpoint: "https://push.example.net/wpush/v2/abc".into(),
                    show_text: true,
                    muted: vec![MutedConversation { conversation_id: CONV.into(), until_ms: 0 }],
                }),
            ),
        ),
        (
            "request_register_push",
            "Request 31: RegisterPush, a browser's subscription (p256dh 65 bytes, auth 16)",
            req(
                31,
                request::Body::RegisterPush(RegisterPush {
                    endpoint: "https://push.example.net/wpush/v2/abc".into(),
                    p256dh: [vec![4u8], vec![0x33; 32], vec![0x44; 32]].concat(),
                    auth: vec![0x55; 16],
                }),
            ),
        ),
        ("response_push_ok", "Response 31: PushOk (an empty message)", resp(31, response::Result::Push(PushOk {}))),
        (
            "request_mute_conversation",
            "Request 32: MuteConversation until 2026-12-01T08:00:00Z",
            req(
                32,
                request::Body::MuteConversation(MuteConversation {
                    conversation_id: CONV.into(),
                    until_ms: 1_796_112_000_000,
                }),
            ),
        ),
        (
            "request_unmute_conversation",
            "Request 33: UnmuteConversation",
            req(33, request::Body::UnmuteConversation(UnmuteConversation { conversation_id: CONV.into() })),
        ),
        (
            "request_set_push_previews",
            "Request 34: SetPushPreviews off: notifications carry no text",
            req(34, request::Body::SetPushPreviews(SetPushPreviews { show_text: false })),
        ),
        (
            "request_unregister_push",
            "Request 35: UnregisterPush (an empty message)",
            req(35, request::Body::UnregisterPush(UnregisterPush {})),
        ),
        (
            "request_register_device_key",
            "Request 36: RegisterDeviceKey, an Ed25519 public key (32 bytes) and its proof (64 bytes)",
            req(
                36,
                request::Body::RegisterDeviceKey(RegisterDeviceKey {
                    signature_key: vec![0x61; 32],
                    proof: vec![0x62; 64],
                }),
            ),
        ),
        (
            "response_device_key",
            "Response 36: DeviceKeyOk, the device's record changed",
            resp(36, response::Result::DeviceKey(DeviceKeyOk { changed: true })),
        ),
        (
            "request_claim_key_packages",
            "Request 37: ClaimKeyPackages of Bob's devices",
            req(37, request::Body::ClaimKeyPackages(ClaimKeyPackages { user_id: BOB.into() })),
        ),
        (
            "response_claimed_key_packages",
            "Response 37: one KeyPackage (bytes shortened here) for one device, another device exhausted",
            resp(
                37,
                response::Result::ClaimedKeyPackages(ClaimedKeyPackages {
                    user_id: BOB.into(),
                    packages: vec![ClaimedKeyPackage {
                        device_id: DEVICE.into(),
                        key_package: vec![0x00, 0x01, 0x00, 0x01, 0x20],
                        last_resort: false,
                    }],
                    exhausted_device_ids: vec!["4d5e6f7a-8b9c-4d0e-9f1a-2b3c4d5e6f7a".into()],
                }),
            ),
        ),
        (
            "feed_key_package_stock",
            "FeedFrame: a Signal telling a device its KeyPackage stock is under its low-water mark",
            Frame::Feed(FeedFrame {
                kind: Some(feed_frame::Kind::Signal(Signal {
                    kind: Some(signal::Kind::KeyPackageStock(KeyPackageStock {
                        remaining: 19,
                        has_last_resort: true,
                        low_water: 20,
                        capacity: 200,
                        device_id: DEVICE.into(),
                    })),
                })),
            }),
        ),
        (
            "request_open_direct_e2ee",
            "Request 39: OpenDirect, the end-to-end encrypted conversation with bob@example.org",
            req(39, request::Body::OpenDirect(OpenDirect { peer_email: "bob@example.org".into(), e2ee: true })),
        ),
        (
            "request_send_mls_commit",
            "Request 40: SendMessage with an MLS commit, Welcome and GroupInfo (bytes shortened here)",
            req(
                40,
                request::Body::SendMessage(SendMessage {
                    conversation_id: CONV.into(),
                    client_msg_id: "c-1".into(),
                    content: Some(Content {
                        body: Some(content::Body::MlsCommit(MlsCommit {
                            commit: vec![0x00, 0x01, 0x00, 0x01],
                            welcome: vec![0x00, 0x01, 0x00, 0x03],
                            group_info: vec![0x00, 0x01, 0x00, 0x04],
                            epoch: 0,
                        })),
                    }),
                }),
            ),
        ),
        (
            "request_send_mls",
            "Request 41: SendMessage with an MLS application message (a PrivateMessage, shortened here)",
            req(
                41,
                request::Body::SendMessage(SendMessage {
                    conversation_id: CONV.into(),
                    client_msg_id: "m-9".into(),
                    content: Some(Content {
                        body: Some(content::Body::Mls(MlsMessage { message: vec![0x00, 0x01, 0x00, 0x02], media_id: String::new() })),
                    }),
                }),
            ),
        ),
        (
            "error_stale_epoch",
            "Response 40: STALE_EPOCH (406): another commit closed epoch 0 first",
            resp(
                40,
                response::Result::Error(Error {
                    code: 406,
                    message: "the commit is for epoch 0; the conversation's group is at epoch 1: process the commits \
                              since and retry"
                        .into(),
                    retry_after_ms: 0,
                    mfa_challenge: String::new(),
                }),
            ),
        ),
        (
            "error_removal_pending",
            "Response 41: REMOVAL_PENDING (407): a member left and no commit has removed their devices yet",
            resp(
                41,
                response::Result::Error(Error {
                    code: 407,
                    message: "the group (epoch 3) still holds devices of user 0190a4c2-7b1e-7cc3-9a2f-5d0e8c1b4a77, \
                              who is no longer a member: commit their removal, then send again"
                        .into(),
                    retry_after_ms: 0,
                    mfa_challenge: String::new(),
                }),
            ),
        ),
        (
            "error_key_package_invalid",
            "Response 38: KEY_PACKAGE_INVALID (308): a package signed with another key",
            resp(
                38,
                response::Result::Error(Error {
                    code: 308,
                    message: "key_packages[3] is not signed with the device's registered signature key".into(),
                    retry_after_ms: 0,
                    mfa_challenge: String::new(),
                }),
            ),
        ),
        (
            "request_list_device_keys",
            "Request 42: ListDeviceKeys of Bob",
            req(42, request::Body::ListDeviceKeys(ListDeviceKeys { user_id: BOB.into() })),
        ),
        (
            "request_publish_key_packages",
            "Request 43: PublishKeyPackages, two KeyPackages and a last-resort one (bytes shortened here)",
            req(
                43,
                request::Body::PublishKeyPackages(PublishKeyPackages {
                    key_packages: vec![vec![0x00, 0x01, 0x00, 0x01, 0x20], vec![0x00, 0x01, 0x00, 0x01, 0x21]],
                    last_resort: vec![0x00, 0x01, 0x00, 0x01, 0x22],
                }),
            ),
        ),
        (
            "request_get_key_package_stock",
            "Request 44: GetKeyPackageStock (an empty message)",
            req(44, request::Body::GetKeyPackageStock(GetKeyPackageStock {})),
        ),
        (
            "request_get_group_info",
            "Request 45: GetGroupInfo of an encrypted conversation",
            req(45, request::Body::GetGroupInfo(GetGroupInfo { conversation_id: CONV.into() })),
        ),
        (
            "response_group_info",
            "Response 45: GroupInfo of epoch 3 (bytes shortened here)",
            resp(
                45,
                response::Result::GroupInfo(GroupInfo {
                    conversation_id: CONV.into(),
                    epoch: 3,
                    group_info: vec![0x00, 0x01, 0x00, 0x04],
                }),
            ),
        ),
        (
            "request_admin_set_disabled",
            "Request 46: AdminSetDisabled of an account named by email, with a reason",
            req(
                46,
                request::Body::AdminSetDisabled(AdminSetDisabled {
                    user: "bob@example.org".into(),
                    disabled: true,
                    reason: "spam".into(),
                }),
            ),
        ),
        (
            "response_admin_done",
            "Response 46: AdminDone, one change made",
            resp(46, response::Result::AdminDone(AdminDone { changed: 1 })),
        ),
        (
            "request_admin_audit",
            "Request 47: AdminAudit after entry 10, one admin's, at most 50",
            req(
                47,
                request::Body::AdminAudit(AdminAudit {
                    after: 10,
                    actor: "ops@example.org".into(),
                    since_ms: 0,
                    limit: 50,
                }),
            ),
        ),
        (
            "response_audit",
            "Response 47: AuditPage with one entry",
            resp(
                47,
                response::Result::Audit(AuditPage {
                    entries: vec![AuditEntry {
                        seq: 11,
                        at_ms: 1_767_225_600_000,
                        actor_user_id: ALICE.into(),
                        actor_email: "ops@example.org".into(),
                        action: "disable".into(),
                        target_user_id: BOB.into(),
                        target_email: "bob@example.org".into(),
                        detail: "spam".into(),
                        from: "192.0.2.7".into(),
                    }],
                    next: 11,
                }),
            ),
        ),
        (
            "error_account_disabled",
            "Response 48: ACCOUNT_DISABLED (218): the credentials were right, the account is disabled",
            resp(
                48,
                response::Result::Error(Error {
                    code: 218,
                    message: "an admin disabled this account; ask them to enable it".into(),
                    retry_after_ms: 0,
                    mfa_challenge: String::new(),
                }),
            ),
        ),
        (
            "request_admin_list_users",
            "Request 49: AdminListUsers by prefix, after a page's next, at most 2",
            req(
                49,
                request::Body::AdminListUsers(AdminListUsers {
                    prefix: "bo".into(),
                    after: format!("1767225600000.{ALICE}"),
                    limit: 2,
                }),
            ),
        ),
        (
            "response_admin_users",
            "Response 49: AdminUsers, one account and no next page",
            resp(49, response::Result::AdminUsers(AdminUsers { users: vec![admin_user()], next: String::new() })),
        ),
        (
            "request_admin_get_user",
            "Request 50: AdminGetUser by user id",
            req(50, request::Body::AdminGetUser(AdminGetUser { user: BOB.into() })),
        ),
        (
            "response_admin_user",
            "Response 50: AdminUserDetail with one session and a linked identity",
            resp(
                50,
                response::Result::AdminUser(AdminUserDetail {
                    user: Some(admin_user()),
                    sessions: vec![SessionInfo {
                        session_id: DEVICE.into(),
                        device_name: "phone".into(),
                        method: "password".into(),
                        created_at_ms: 1_767_225_600_000,
                        last_used_at_ms: 1_767_229_200_000,
                        last_address: "192.0.2.9".into(),
                        current: false,
                    }],
                    identities: vec!["github".into()],
                }),
            ),
        ),
        (
            "request_admin_revoke_sessions",
            "Request 51: AdminRevokeSessions, one session of the account",
            req(
                51,
                request::Body::AdminRevokeSessions(AdminRevokeSessions {
                    user: "bob@example.org".into(),
                    session_id: DEVICE.into(),
                }),
            ),
        ),
        (
            "request_admin_reset_mfa",
            "Request 52: AdminResetMfa",
            req(52, request::Body::AdminResetMfa(AdminResetMfa { user: "bob@example.org".into() })),
        ),
        (
            "request_admin_set_admin",
            "Request 53: AdminSetAdmin granting the role",
            req(53, request::Body::AdminSetAdmin(AdminSetAdmin { user: "bob@example.org".into(), admin: true })),
        ),
        (
            "request_admin_status",
            "Request 54: AdminStatus (an empty message)",
            req(54, request::Body::AdminStatus(AdminStatus {})),
        ),
        (
            "response_status",
            "Response 54: ServerStatus of a PostgreSQL node, two nodes live",
            resp(
                54,
                response::Result::Status(ServerStatus {
                    node_id: "node-a".into(),
                    uptime_secs: 86_400,
                    connections: 120,
                    sessions: 118,
                    head: 5_000,
                    users: 40,
                    conversations: 25,
                    messages: 4_800,
                    search_position: 4_990,
                    store: "postgres".into(),
                    nodes: vec![
                        NodeStatus { node_id: "node-a".into(), heartbeat_age_secs: 1, online_users: 30 },
                        NodeStatus { node_id: "node-b".into(), heartbeat_age_secs: 2, online_users: 10 },
                    ],
                }),
            ),
        ),
        (
            "request_admin_list_groups",
            "Request 55: AdminListGroups, from the start",
            req(
                55,
                request::Body::AdminListGroups(AdminListGroups {
                    prefix: "book".into(),
                    after: String::new(),
                    limit: 0,
                }),
            ),
        ),
        (
            "response_admin_groups",
            "Response 55: AdminGroups, one group and a next page",
            resp(
                55,
                response::Result::AdminGroups(AdminGroups {
                    groups: vec![admin_group()],
                    next: format!("1767225600000.{CONV}"),
                }),
            ),
        ),
        (
            "request_admin_get_group",
            "Request 56: AdminGetGroup",
            req(56, request::Body::AdminGetGroup(AdminGetGroup { conversation_id: CONV.into() })),
        ),
        (
            "response_admin_group",
            "Response 56: AdminGroupDetail with its owner and a member",
            resp(
                56,
                response::Result::AdminGroup(AdminGroupDetail {
                    group: Some(admin_group()),
                    members: vec![
                        Member {
                            user_id: ALICE.into(),
                            email: "alice@example.org".into(),
                            display_name: "Alice".into(),
                            role: Role::Owner as i32,
                        },
                        Member {
                            user_id: BOB.into(),
                            email: "bob@example.org".into(),
                            display_name: "Bob".into(),
                            role: Role::Member as i32,
                        },
                    ],
                }),
            ),
        ),
        (
            "request_delete_account",
            "Request 57: DeleteAccount with the password (no second factor on)",
            req(57, request::Body::DeleteAccount(DeleteAccount { password: "correct horse battery".into(), code: String::new() })),
        ),
        (
            "request_admin_delete_user",
            "Request 58: AdminDeleteUser alice@example.org",
            req(58, request::Body::AdminDeleteUser(AdminDeleteUser { user: "alice@example.org".into() })),
        ),
        (
            "response_account_deleted",
            "Response 58: AccountDeleted, 12 messages erased and 2 uploads deleted",
            resp(58, response::Result::AccountDeleted(AccountDeleted { messages: 12, media: 2 })),
        ),
        (
            "feed_account_erased",
            "Feed: cursor 60, alice's account was deleted",
            Frame::Feed(FeedFrame {
                kind: Some(feed_frame::Kind::Event(FeedEvent {
                    cursor: 60,
                    kind: Some(feed_event::Kind::AccountErased(AccountErased { user_id: ALICE.into() })),
                })),
            }),
        ),
        (
            "feed_message_erased",
            "Feed: cursor 61, the message seq 2 of a deleted account: Erased content, no email, the tombstone's name",
            Frame::Feed(FeedFrame {
                kind: Some(feed_frame::Kind::Event(FeedEvent {
                    cursor: 61,
                    kind: Some(feed_event::Kind::Message(Message {
                        sender_email: String::new(),
                        sender_name: "Deleted account".into(),
                        content: Some(Content { body: Some(content::Body::Erased(Erased {})) }),
                        ..message()
                    })),
                })),
            }),
        ),
        (
            "request_set_retention",
            "Request 59: SetRetention, 30 days",
            req(59, request::Body::SetRetention(SetRetention { conversation_id: CONV.into(), max_age_secs: 2_592_000 })),
        ),
        (
            "response_retention",
            "Response 59: Retention, its own 30 days within the deployment's 365",
            resp(
                59,
                response::Result::Retention(Retention {
                    conversation_id: CONV.into(),
                    max_age_secs: 2_592_000,
                    deployment_max_age_secs: 31_536_000,
                    effective_max_age_secs: 2_592_000,
                }),
            ),
        ),
        (
            "feed_retention_changed",
            "Feed: cursor 62, bob set the conversation's retention to 30 days",
            Frame::Feed(FeedFrame {
                kind: Some(feed_frame::Kind::Event(FeedEvent {
                    cursor: 62,
                    kind: Some(feed_event::Kind::RetentionChanged(RetentionChanged {
                        conversation_id: CONV.into(),
                        actor_user_id: BOB.into(),
                        max_age_secs: 2_592_000,
                    })),
                })),
            }),
        ),
        (
            "feed_messages_expired",
            "Feed: cursor 63, the conversation's messages sent before 1795000000000 expired",
            Frame::Feed(FeedFrame {
                kind: Some(feed_frame::Kind::Event(FeedEvent {
                    cursor: 63,
                    kind: Some(feed_event::Kind::MessagesExpired(MessagesExpired {
                        conversation_id: CONV.into(),
                        before_ms: 1_795_000_000_000,
                    })),
                })),
            }),
        ),
        (
            "request_admin_delete_group",
            "Request 60: AdminDeleteGroup",
            req(60, request::Body::AdminDeleteGroup(AdminDeleteGroup { conversation_id: CONV.into() })),
        ),
        (
            "feed_group_deleted",
            "Feed: cursor 64, the group's seq 9: an admin (bob here) deleted it",
            Frame::Feed(FeedFrame {
                kind: Some(feed_frame::Kind::Event(FeedEvent {
                    cursor: 64,
                    kind: Some(feed_event::Kind::Group(GroupEvent {
                        conversation_id: CONV.into(),
                        seq: 9,
                        actor_user_id: BOB.into(),
                        at_ms: 1_795_000_000_000,
                        change: Some(group_event::Change::Deleted(GroupDeleted {})),
                    })),
                })),
            }),
        ),
        (
            "error_identity_not_linked",
            "Response 24: IDENTITY_NOT_LINKED (214): an account already uses the provider's email",
            resp(
                24,
                response::Result::Error(Error {
                    code: 214,
                    message: "an account already uses alice@example.org: sign in to it another way and link Google to it"
                        .into(),
                    retry_after_ms: 0,
                    mfa_challenge: String::new(),
                }),
            ),
        ),
    ]
}

fn render() -> String {
    let mut out = String::from(
        "# natter protocol test vectors: whole frames (varint length prefix + protobuf body).\n\
         # Each must decode to the described message and re-encode to the same bytes.\n\
         # Format: spec/protocol.md, \"Test vectors\". Generated by proto/src/vectors.rs.\n",
    );
    for (name, meaning, frame) in vectors() {
        out.push_str(&format!(
            "\nname: {name}\ntype: {}\nmeaning: {meaning}\nhex: {}\n",
            frame.type_name(),
            hex::encode(frame.encode())
        ));
    }
    out
}

struct Block {
    name: String,
    ty: String,
    hex: String,
}

fn parse(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut cur: Option<Block> = None;
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        if line.is_empty() {
            blocks.extend(cur.take());
            continue;
        }
        let (key, value) = line.split_once(": ").unwrap_or_else(|| panic!("bad vector line {line:?}"));
        let b = cur.get_or_insert_with(|| Block { name: String::new(), ty: String::new(), hex: String::new() });
        match key {
            "name" => b.name = value.to_owned(),
            "type" => b.ty = value.to_owned(),
            "hex" => b.hex = value.to_owned(),
            "meaning" => {}
            other => panic!("unknown vector key {other:?}"),
        }
    }
    blocks.extend(cur);
    blocks
}

fn decode_as<M: ProstMessage + Default + PartialEq + std::fmt::Debug>(bytes: &[u8], expected: &M) {
    let mut d = FrameDecoder::new(crate::limits::DEFAULT_MAX_FRAME_BYTES);
    d.extend(bytes);
    let got: M = d.next_message().expect("decodes").expect("one whole frame");
    assert_eq!(d.buffered(), 0, "exactly one frame");
    assert_eq!(&got, expected);
    let mut again = Vec::new();
    prost::encoding::encode_varint(got.encoded_len() as u64, &mut again);
    got.encode(&mut again).unwrap();
    assert_eq!(again, bytes, "re-encodes byte for byte");
}

#[test]
fn spec_vectors_decode_and_reencode_byte_for_byte() {
    if std::env::var_os("NATTER_WRITE_VECTORS").is_some() {
        std::fs::write(PATH, render()).expect("write vectors");
    }
    let text = std::fs::read_to_string(PATH).expect("spec/vectors/frames.txt");
    let blocks = parse(&text);
    let expected = vectors();
    assert!(blocks.len() >= 12, "the spec promises at least 12 vectors");
    assert_eq!(
        blocks.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
        expected.iter().map(|v| v.0).collect::<Vec<_>>(),
        "file and code list the same vectors"
    );
    for (block, (name, _, frame)) in blocks.iter().zip(&expected) {
        let bytes = hex::decode(&block.hex).unwrap_or_else(|e| panic!("{name}: bad hex: {e}"));
        assert_eq!(block.ty, frame.type_name(), "{name}");
        match frame {
            Frame::Client(m) => decode_as(&bytes, m),
            Frame::Server(m) => decode_as(&bytes, m),
            Frame::Feed(m) => decode_as(&bytes, m),
            Frame::TransferRequest(m) => decode_as(&bytes, m),
            Frame::TransferReply(m) => decode_as(&bytes, m),
        }
    }
}

#[test]
fn vectors_split_anywhere_still_decode() {
    // Partial frames are not errors: feed every vector in two pieces at every cut.
    for (name, _, frame) in vectors() {
        let bytes = frame.encode();
        for cut in 0..bytes.len() {
            let mut d = FrameDecoder::new(1 << 20);
            d.extend(&bytes[..cut]);
            assert_eq!(d.next_frame().unwrap(), None, "{name} cut at {cut}");
            d.extend(&bytes[cut..]);
            assert!(d.next_frame().unwrap().is_some(), "{name}");
        }
    }
}
