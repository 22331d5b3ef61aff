//! The store conformance suite: the same test functions run against the
//! embedded store (SQLite) and PostgreSQL (a fresh database per test). Appends,
//! conflicts, reads, subscriptions, every read-model query the server makes,
//! import and rebuild; plus the concurrency stress test for gap-free
//! subscriptions (several writers on several nodes, several subscribers).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use natter_server::domain::conversation::ConversationKind;
use natter_server::domain::{
    AccountOpened, ClientMsgId, Content, ConversationId, DeviceId, Email, Event, ExternalIdentity, IdentityProvider,
    MessageSent, Millis, Phone, PushSubscription, Role, Seq, SessionStarted, SignInMethod, TokenHash, Unsubscribed,
    UserId, UserRegistered,
};
use natter_server::domain::{MediaId, MediaRef, MediaUploaded};
use natter_server::store::auth_state::{AuthState, CodeCheck, CodePurpose, PendingChallenge};
use natter_server::store::postgres::{PostgresConfig, PostgresStore};
use natter_server::store::sqlite::{SqliteConfig, SqliteStore};
use natter_server::store::{
    AppendError, AppendOutcome, ExpectedVersion, HistoryPage, Membership, NewEvent, Precondition, PushSettings,
    PushSubscriptionRecord, PushTarget, RecordedEvent, Store, StreamAppend, StreamName,
};
use natter_tests::PgDatabase;
use uuid::Uuid;

/// A store under test and what keeps its database alive.
pub struct Backend {
    pub store: Arc<dyn Store>,
    kind: Kind,
}

enum Kind {
    Sqlite(tempfile::TempDir),
    Postgres(PgDatabase),
}

impl Backend {
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&SqliteConfig::in_dir(dir.path())).unwrap();
        Self { store: Arc::new(store), kind: Kind::Sqlite(dir) }
    }

    /// `None` when PostgreSQL is not reachable and not required (the harness says so).
    pub async fn postgres() -> Option<Self> {
        let db = PgDatabase::create().await?;
        let store = PostgresStore::open(&pg_config(db.url())).await.unwrap();
        Some(Self { store: Arc::new(store), kind: Kind::Postgres(db) })
    }

    /// Another node on the same database (PostgreSQL only).
    async fn another_node(&self) -> Option<Arc<dyn Store>> {
        match &self.kind {
            Kind::Sqlite(_) => None,
            Kind::Postgres(db) => Some(Arc::new(PostgresStore::open(&pg_config(db.url())).await.unwrap())),
        }
    }

    /// Deletes rows from read models behind the store's back (to prove a rebuild rebuilds).
    async fn damage_read_models(&self) {
        const DAMAGE: &str = "DELETE FROM messages; DELETE FROM members; DELETE FROM receipts; DELETE FROM feed;";
        match &self.kind {
            Kind::Sqlite(dir) => {
                let conn = rusqlite::Connection::open(SqliteConfig::in_dir(dir.path()).path).unwrap();
                conn.busy_timeout(Duration::from_secs(5)).unwrap();
                conn.execute_batch(DAMAGE).unwrap();
            }
            Kind::Postgres(db) => {
                let (client, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await.unwrap();
                let driver = tokio::spawn(conn);
                client.batch_execute(DAMAGE).await.unwrap();
                drop(client);
                let _ = driver.await;
            }
        }
    }

    /// The backend's short-lived auth state (PostgreSQL: a fresh handle, as
    /// another node would have).
    fn auth_state(&self) -> Arc<dyn AuthState> {
        match &self.kind {
            Kind::Sqlite(dir) => {
                Arc::new(natter_server::store::auth_state::sqlite::SqliteAuthState::open(dir.path()).unwrap())
            }
            Kind::Postgres(db) => {
                Arc::new(natter_server::store::auth_state::postgres::PostgresAuthState::new(db.url()).unwrap())
            }
        }
    }

    async fn close(self) {
        self.store.shutdown().await;
    }
}

fn pg_config(url: &str) -> PostgresConfig {
    let mut config = PostgresConfig::new(url);
    config.readers = 4;
    // Tests see other nodes' commits through NOTIFY; the poll is only the safety net.
    config.poll = Duration::from_millis(200);
    config
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let backend = super::Backend::sqlite().await;
                    super::$test(&backend).await;
                    backend.close().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let Some(backend) = super::Backend::postgres().await else { return };
                    super::$test(&backend).await;
                    backend.close().await;
                }
            )*
        }
    };
}

/// Schema version 4 adds each conversation's last change of shape; on a
/// database that had version 3 it is filled in from the log.
#[tokio::test]
async fn sqlite_migration_4_fills_in_each_groups_last_change_from_the_log() {
    let backend = Backend::sqlite().await;
    let w = populate(&backend.store).await;
    let Kind::Sqlite(dir) = &backend.kind else { unreachable!() };
    let path = SqliteConfig::in_dir(dir.path()).path;
    backend.store.shutdown().await;
    // Back to version 3, as an older natterd left it (undoing 12, 10, 9, 8 and 7, 6, 5,
    // then 4; 6 rebuilds the users table, which undoes 11 and 12's column).
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP INDEX messages_by_age; ALTER TABLE conversations DROP COLUMN retention_secs;
         DROP TABLE device_keys; ALTER TABLE conversations DROP COLUMN e2ee;
         DROP TABLE push_subscriptions; DROP TABLE push_mutes; DROP TABLE followers;
         ALTER TABLE users DROP COLUMN push_show_text;
         DROP TABLE media; ALTER TABLE messages DROP COLUMN content_pb;
         DROP TABLE identities;
         DROP TABLE recovery_codes; DROP INDEX users_by_phone;
         ALTER TABLE users DROP COLUMN phone; ALTER TABLE users DROP COLUMN email_verified_at_ms;
         ALTER TABLE users DROP COLUMN totp_sealed_secret; ALTER TABLE users DROP COLUMN totp_enabled_at_ms;
         ALTER TABLE sessions DROP COLUMN method;
         ALTER TABLE conversations DROP COLUMN changed_seq;
         DELETE FROM schema_migrations WHERE version >= 4",
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(&SqliteConfig::in_dir(dir.path())).unwrap();
    let group = store.conversation(w.group).await.unwrap().unwrap();
    assert_eq!((group.version, group.changed), (Seq(8), Seq(7)));
    let dm = store.conversation(w.dm).await.unwrap().unwrap();
    assert_eq!(dm.changed, Seq(1), "a direct conversation's only change is its start");
    // Migration 5 ran too: sessions from before it signed in with a password.
    let sessions = store.sessions_of(w.alice).await.unwrap();
    assert_eq!(sessions.iter().map(|s| s.method).collect::<Vec<_>>(), [SignInMethod::Password]);
    // And 6: the users were copied into the table where email and password may be missing.
    let alice = store.user_by_id(w.alice).await.unwrap().unwrap();
    assert_eq!(alice.email.as_ref().map(Email::as_str), Some("alice@example.org"));
    assert_eq!(alice.password_hash.as_deref(), Some("$argon2id$changed"));
    assert!(store.identities_of(w.alice).await.unwrap().is_empty());
    store.shutdown().await;
}

conformance!(
    appends_have_positions_versions_and_are_idempotent,
    conflicts_are_typed_and_write_nothing,
    concurrent_appends_in_one_batch_fail_alone,
    an_event_appended_twice_at_once_is_stored_once,
    a_send_racing_its_senders_removal_is_before_it_or_refused,
    subscribers_get_commits_with_their_audience,
    each_message_of_a_batch_reaches_the_members_at_its_own_position,
    read_models_answer_every_query,
    preconditions_are_checked_atomically,
    group_changes_are_decided_on_the_groups_shape_not_its_messages,
    presence_state_is_kept,
    rebuild_restores_every_answer,
    import_reproduces_every_answer,
    subscribers_see_every_event_once_in_order_under_concurrent_writers,
    nodes_racing_for_one_stream_version_get_one_winner_and_typed_refusals,
    account_security_read_models_answer,
    accounts_without_a_password_and_identities_answer,
    media_and_media_messages_answer,
    auth_state_is_shared_by_nodes_and_atomic,
    push_read_models_answer,
    the_follower_lease_has_one_holder_and_its_position_only_moves_forward,
    admin_read_models_answer,
);

fn stream(name: &str) -> StreamName {
    StreamName::from_stored(name.to_owned())
}

fn uid(n: u128) -> UserId {
    UserId(Uuid::from_u128(n))
}

fn claim(user: u128) -> NewEvent {
    NewEvent::fresh(Event::EmailClaimed { user_id: uid(user), at: Millis(1) })
}

fn positions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

fn appended(outcome: AppendOutcome) -> Vec<RecordedEvent> {
    match outcome {
        AppendOutcome::Appended(recs) => recs,
        other => panic!("expected Appended, got {other:?}"),
    }
}

async fn appends_have_positions_versions_and_are_idempotent(b: &Backend) {
    let s = &b.store;
    assert_eq!(s.head().await.unwrap(), 0);
    let recs = appended(
        s.append(vec![StreamAppend::new(stream("s:a"), ExpectedVersion::NoStream, vec![claim(1), claim(2), claim(3)])])
            .await
            .unwrap(),
    );
    assert_eq!(positions(&recs), [1, 2, 3]);
    assert_eq!(recs.iter().map(|r| r.version).collect::<Vec<_>>(), [1, 2, 3]);
    let more = appended(
        s.append(vec![
            StreamAppend::new(stream("s:a"), ExpectedVersion::Exact(3), vec![claim(4)]),
            StreamAppend::new(stream("s:b"), ExpectedVersion::Any, vec![claim(5)]),
        ])
        .await
        .unwrap(),
    );
    assert_eq!(positions(&more), [4, 5]);
    assert_eq!((more[0].version, more[1].version), (4, 1));
    assert_eq!(s.head().await.unwrap(), 5);

    // Reads: the whole log, one stream, pages.
    let all = s.read_all(0, 100).await.unwrap();
    assert_eq!(positions(&all), [1, 2, 3, 4, 5]);
    assert_eq!(all[..3], recs[..]);
    assert_eq!(positions(&s.read_all(2, 2).await.unwrap()), [3, 4]);
    let a = s.read_stream(&stream("s:a"), 1, 2).await.unwrap();
    assert_eq!(a.iter().map(|r| r.version).collect::<Vec<_>>(), [2, 3]);
    assert!(s.read_stream(&stream("s:none"), 0, 10).await.unwrap().is_empty());

    // The same event ids again: nothing new, the originals back.
    let again = s
        .append(vec![StreamAppend::new(
            stream("s:a"),
            ExpectedVersion::Any,
            recs.iter().map(|r| NewEvent { id: r.id, event: r.event.clone() }).collect(),
        )])
        .await
        .unwrap();
    assert_eq!(again, AppendOutcome::AlreadyStored(recs));
    assert_eq!(s.head().await.unwrap(), 5);
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.events, stats.head), (5, 5));
    s.health().await.unwrap();
}

async fn conflicts_are_typed_and_write_nothing(b: &Backend) {
    let s = &b.store;
    s.append(vec![StreamAppend::new(stream("s:a"), ExpectedVersion::NoStream, vec![claim(1)])]).await.unwrap();
    let e = s.append(vec![StreamAppend::new(stream("s:a"), ExpectedVersion::NoStream, vec![claim(2)])]).await;
    assert!(matches!(e, Err(AppendError::WrongExpectedVersion { actual: 1, .. })), "{e:?}");
    let e = s.append(vec![StreamAppend::new(stream("s:a"), ExpectedVersion::Exact(7), vec![claim(2)])]).await;
    assert!(matches!(e, Err(AppendError::WrongExpectedVersion { expected: ExpectedVersion::Exact(7), .. })), "{e:?}");
    // Across streams: all or nothing.
    let e = s
        .append(vec![
            StreamAppend::new(stream("s:b"), ExpectedVersion::NoStream, vec![claim(3)]),
            StreamAppend::new(stream("s:a"), ExpectedVersion::Exact(5), vec![claim(4)]),
        ])
        .await;
    assert!(matches!(e, Err(AppendError::WrongExpectedVersion { .. })), "{e:?}");
    assert!(s.read_stream(&stream("s:b"), 0, 10).await.unwrap().is_empty(), "all or nothing");
    let e = s
        .append(vec![
            StreamAppend::new(stream("s:c"), ExpectedVersion::Any, vec![claim(5)]),
            StreamAppend::new(stream("s:c"), ExpectedVersion::Any, vec![claim(6)]),
        ])
        .await;
    assert!(matches!(e, Err(AppendError::Store(_))), "one stream twice in an append is refused: {e:?}");
    assert_eq!(s.head().await.unwrap(), 1);
    // The store still works after every refusal.
    s.append(vec![StreamAppend::new(stream("s:a"), ExpectedVersion::Exact(1), vec![claim(7)])]).await.unwrap();
    assert_eq!(s.head().await.unwrap(), 2);
}

async fn concurrent_appends_in_one_batch_fail_alone(b: &Backend) {
    let store = b.store.clone();
    // Many appends racing for "no stream" on one stream plus independent ones:
    // exactly one claim wins, every independent append lands.
    let tasks: Vec<_> = (0..32u128)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let contested =
                    store.append(vec![StreamAppend::new(stream("s:x"), ExpectedVersion::NoStream, vec![claim(i)])]);
                let own = store.append(vec![StreamAppend::new(
                    stream(&format!("s:own{i}")),
                    ExpectedVersion::NoStream,
                    vec![claim(i)],
                )]);
                let (c, o) = tokio::join!(contested, own);
                (c.is_ok(), o.is_ok())
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        let (c, o) = t.await.unwrap();
        won += usize::from(c);
        assert!(o, "independent appends are unaffected by a neighbour's conflict");
    }
    assert_eq!(won, 1);
    assert_eq!(store.stats().await.unwrap().events, 33);
}

async fn an_event_appended_twice_at_once_is_stored_once(b: &Backend) {
    let s = &b.store;
    for round in 0..20u128 {
        let event = claim(round);
        let append =
            || StreamAppend::new(stream(&format!("s:twice{round}")), ExpectedVersion::Any, vec![event.clone()]);
        let (x, y) = tokio::join!(s.append(vec![append()]), s.append(vec![append()]));
        let outcomes = [x.unwrap(), y.unwrap()];
        let stored = outcomes.iter().filter(|o| matches!(o, AppendOutcome::Appended(_))).count();
        assert_eq!(stored, 1, "{outcomes:?}");
        let originals: Vec<_> = outcomes
            .iter()
            .map(|o| match o {
                AppendOutcome::Appended(r) | AppendOutcome::AlreadyStored(r) => r.clone(),
            })
            .collect();
        assert_eq!(originals[0], originals[1], "both callers are told of the one stored event");
    }
    assert_eq!(s.head().await.unwrap(), 20);
}

async fn a_send_racing_its_senders_removal_is_before_it_or_refused(b: &Backend) {
    let s = &b.store;
    let (alice, bob) = (uid(0xa), uid(0xb));
    for round in 0..20u128 {
        let group = ConversationId(Uuid::from_u128(0x7000 + round));
        let gs = StreamName::conversation(group);
        let created = Event::GroupCreated {
            conversation_id: group,
            name: "race".into(),
            creator: alice,
            members: vec![(alice, Role::Owner), (bob, Role::Member)],
            at: Millis(1),
        };
        append_one(s, gs.clone(), NewEvent::fresh(created)).await;
        let removal = StreamAppend::new(
            gs.clone(),
            ExpectedVersion::Any,
            vec![NewEvent::fresh(Event::MemberRemoved {
                conversation_id: group,
                actor: alice,
                user: bob,
                at: Millis(2),
            })],
        );
        let send = StreamAppend::new(gs.clone(), ExpectedVersion::Any, vec![message(group, bob, 1, 3)])
            .with_precondition(Precondition::ActiveMember { conversation: group, user: bob });
        // Removal first in the queue, then the send: both usually share a batch.
        let (removed, sent) = tokio::join!(s.append(vec![removal]), s.append(vec![send]));
        let removed = appended(removed.unwrap()).remove(0);
        match sent {
            Ok(outcome) => assert!(appended(outcome)[0].position < removed.position, "a send after a removal"),
            Err(AppendError::PreconditionFailed(_)) => {}
            Err(e) => panic!("{e:?}"),
        }
        let (msgs, _) = s.messages(group, HistoryPage::Latest { limit: 10 }, None).await.unwrap();
        assert!(msgs.iter().all(|m| m.seq < removed_seq(&removed)), "{msgs:?}");
    }
}

fn removed_seq(rec: &RecordedEvent) -> Seq {
    Seq(rec.version)
}

/// Alice, Bob and Carol; a direct conversation (Alice–Bob) and a group.
struct World {
    alice: UserId,
    bob: UserId,
    carol: UserId,
    dm: ConversationId,
    group: ConversationId,
    alice_token: TokenHash,
    bob_token: TokenHash,
}

fn register(user: UserId, email: &str, at: u64) -> StreamAppend {
    StreamAppend::new(
        StreamName::user(user),
        ExpectedVersion::NoStream,
        vec![NewEvent::fresh(Event::UserRegistered(UserRegistered {
            user_id: user,
            email: Email::parse(email).unwrap(),
            display_name: email.split('@').next().unwrap().to_owned(),
            password_hash: "$argon2id$fake".into(),
            at: Millis(at),
        }))],
    )
}

fn session(user: UserId, token: u8, at: u64) -> StreamAppend {
    StreamAppend::new(
        StreamName::user(user),
        ExpectedVersion::Any,
        vec![NewEvent::fresh(Event::SessionStarted(SessionStarted {
            user_id: user,
            device_id: DeviceId(Uuid::from_u128(u128::from(token) + 1000)),
            device_name: format!("device {token}"),
            token_hash: TokenHash([token; 32]),
            method: SignInMethod::Password,
            at: Millis(at),
        }))],
    )
}

fn message(conv: ConversationId, from: UserId, n: u32, at: u64) -> NewEvent {
    NewEvent::fresh(Event::MessageSent(MessageSent {
        conversation_id: conv,
        sender_user_id: from,
        sender_device_id: DeviceId(Uuid::from_u128(7)),
        client_msg_id: ClientMsgId::parse(&format!("m{n}")).unwrap(),
        content: Content::Text(format!("text {n}")),
        at: Millis(at),
    }))
}

async fn append_one(s: &Arc<dyn Store>, stream_name: StreamName, event: NewEvent) -> RecordedEvent {
    appended(s.append(vec![StreamAppend::new(stream_name, ExpectedVersion::Any, vec![event])]).await.unwrap()).remove(0)
}

/// Builds the world through the log, as the server would.
async fn populate(s: &Arc<dyn Store>) -> World {
    let (alice, bob, carol) = (uid(0xa), uid(0xb), uid(0xc));
    for (u, email) in [(alice, "alice@example.org"), (bob, "bob@example.org"), (carol, "carol@example.org")] {
        s.append(vec![register(u, email, 10)]).await.unwrap();
    }
    s.append(vec![session(alice, 1, 11)]).await.unwrap();
    s.append(vec![session(bob, 2, 11)]).await.unwrap();
    s.append(vec![session(bob, 3, 12)]).await.unwrap();
    append_one(
        s,
        StreamName::user(bob),
        NewEvent::fresh(Event::SessionRevoked { user_id: bob, token_hash: TokenHash([3; 32]), at: Millis(13) }),
    )
    .await;

    let dm = ConversationId::direct(alice, bob);
    let dm_stream = StreamName::conversation(dm);
    let started = Event::DirectConversationStarted { conversation_id: dm, members: [alice, bob], at: Millis(20) };
    s.append(vec![StreamAppend::new(dm_stream.clone(), ExpectedVersion::NoStream, vec![NewEvent::fresh(started)])])
        .await
        .unwrap();
    for n in 0..7 {
        let from = if n % 2 == 0 { alice } else { bob };
        s.append(vec![StreamAppend::new(
            dm_stream.clone(),
            ExpectedVersion::Exact(1 + u64::from(n)),
            vec![message(dm, from, n, 21 + u64::from(n))],
        )])
        .await
        .unwrap();
    }

    let group = ConversationId(Uuid::from_u128(0x6001));
    let gs = StreamName::conversation(group);
    let created = Event::GroupCreated {
        conversation_id: group,
        name: "hikers".into(),
        creator: alice,
        members: vec![(alice, Role::Owner), (bob, Role::Member)],
        at: Millis(30),
    };
    append_one(s, gs.clone(), NewEvent::fresh(created)).await;
    append_one(s, gs.clone(), message(group, alice, 100, 31)).await;
    append_one(
        s,
        gs.clone(),
        NewEvent::fresh(Event::MembersAdded {
            conversation_id: group,
            actor: alice,
            members: vec![(carol, Role::Member)],
            at: Millis(32),
        }),
    )
    .await;
    append_one(s, gs.clone(), message(group, carol, 101, 33)).await;
    append_one(
        s,
        gs.clone(),
        NewEvent::fresh(Event::RoleChanged {
            conversation_id: group,
            actor: Some(alice),
            user: carol,
            role: Role::Admin,
            at: Millis(34),
        }),
    )
    .await;
    append_one(
        s,
        gs.clone(),
        NewEvent::fresh(Event::GroupRenamed {
            conversation_id: group,
            actor: alice,
            name: "summit".into(),
            at: Millis(35),
        }),
    )
    .await;
    // Bob is removed at seq 7; a message after it is not his to see.
    append_one(
        s,
        gs.clone(),
        NewEvent::fresh(Event::MemberRemoved { conversation_id: group, actor: alice, user: bob, at: Millis(36) }),
    )
    .await;
    append_one(s, gs.clone(), message(group, alice, 102, 37)).await;

    let receipts = StreamName::receipts(dm);
    append_one(
        s,
        receipts.clone(),
        NewEvent::fresh(Event::DeliveredUpTo {
            conversation_id: dm,
            user: bob,
            device: DeviceId(Uuid::from_u128(1002)),
            seq: Seq(6),
            at: Millis(40),
        }),
    )
    .await;
    append_one(
        s,
        receipts.clone(),
        NewEvent::fresh(Event::ReadUpTo { conversation_id: dm, user: bob, seq: Seq(4), at: Millis(41) }),
    )
    .await;
    // Watermarks only move forward.
    append_one(
        s,
        receipts,
        NewEvent::fresh(Event::ReadUpTo { conversation_id: dm, user: bob, seq: Seq(2), at: Millis(42) }),
    )
    .await;
    append_one(
        s,
        StreamName::user(carol),
        NewEvent::fresh(Event::PrivacyChanged { user_id: carol, hide_last_seen: true, at: Millis(43) }),
    )
    .await;
    // Account security: a new password, a verified address, TOTP with one
    // recovery code spent, a session signed in through Google.
    for event in [
        Event::PasswordChanged { user_id: alice, password_hash: "$argon2id$changed".into(), at: Millis(44) },
        Event::EmailVerified { user_id: bob, email: Email::parse("bob@example.org").unwrap(), at: Millis(45) },
        Event::TotpEnabled {
            user_id: carol,
            sealed_secret: vec![9; 48],
            recovery_codes: vec![[0xc1; 32], [0xc2; 32]],
            at: Millis(46),
        },
        Event::RecoveryCodeUsed { user_id: carol, code_hash: [0xc1; 32], at: Millis(47) },
    ] {
        let user = match &event {
            Event::PasswordChanged { user_id, .. }
            | Event::EmailVerified { user_id, .. }
            | Event::TotpEnabled { user_id, .. }
            | Event::RecoveryCodeUsed { user_id, .. } => *user_id,
            _ => unreachable!(),
        };
        append_one(s, StreamName::user(user), NewEvent::fresh(event)).await;
    }
    let mut google = session(carol, 4, 48);
    if let Event::SessionStarted(started) = &mut google.events[0].event {
        started.method = SignInMethod::Google;
    }
    s.append(vec![google]).await.unwrap();
    s.set_last_seen(alice, Millis(500)).await.unwrap();
    s.set_last_seen(carol, Millis(600)).await.unwrap();
    World { alice, bob, carol, dm, group, alice_token: TokenHash([1; 32]), bob_token: TokenHash([2; 32]) }
}

const A1: &str = "https://push.example.net/a1";
const B1: &str = "https://push.example.net/b1";
const B2: &str = "https://push.example.net/b2";
const C1: &str = "https://push.example.net/c1";
const A5: &str = "https://push.example.net/a5";

fn dev(n: u128) -> DeviceId {
    DeviceId(Uuid::from_u128(n))
}

fn subscribed(user: UserId, device: DeviceId, endpoint: &str) -> Event {
    Event::PushSubscribed(PushSubscription {
        user_id: user,
        device_id: device,
        endpoint: endpoint.into(),
        p256dh: vec![4; 65],
        auth: vec![device.0.as_u128() as u8; 16],
        at: Millis(70),
    })
}

fn device_key(user: UserId, device: DeviceId, key: u8) -> Event {
    Event::DeviceKeyRegistered { user_id: user, device_id: device, signature_key: vec![key; 32], at: Millis(80) }
}

/// Push subscriptions and settings on top of [`populate`]'s world: alice's
/// device 1001 and bob's 1002 (resubscribed: B2 replaced B1, and a late
/// "gone" for B1 changes nothing), carol's 1004 with previews off and the
/// group muted, alice's dm muted until 999, and alice's device 1005 signed
/// out (its subscription with it).
async fn populate_push(s: &Arc<dyn Store>, w: &World) {
    s.append(vec![session(w.alice, 5, 70)]).await.unwrap();
    for (user, event) in [
        (w.alice, subscribed(w.alice, dev(1001), A1)),
        (w.bob, subscribed(w.bob, dev(1002), B1)),
        (w.bob, subscribed(w.bob, dev(1002), B2)),
        (
            w.bob,
            Event::PushUnsubscribed {
                user_id: w.bob,
                device_id: dev(1002),
                endpoint: B1.into(),
                reason: Unsubscribed::Gone,
                at: Millis(71),
            },
        ),
        (w.carol, subscribed(w.carol, dev(1004), C1)),
        (w.alice, device_key(w.alice, dev(1001), 1)),
        (w.alice, device_key(w.alice, dev(1005), 2)),
        (w.bob, device_key(w.bob, dev(1002), 3)),
        (w.bob, device_key(w.bob, dev(1002), 4)),
        (w.carol, Event::PushPreviewsSet { user_id: w.carol, show_text: false, at: Millis(72) }),
        (w.carol, Event::ConversationMuted { user_id: w.carol, conversation_id: w.group, until: None, at: Millis(73) }),
        (w.alice, Event::ConversationMuted { user_id: w.alice, conversation_id: w.group, until: None, at: Millis(73) }),
        (w.alice, Event::ConversationUnmuted { user_id: w.alice, conversation_id: w.group, at: Millis(74) }),
        (
            w.alice,
            Event::ConversationMuted {
                user_id: w.alice,
                conversation_id: w.dm,
                until: Some(Millis(999)),
                at: Millis(75),
            },
        ),
        (w.alice, subscribed(w.alice, dev(1005), A5)),
        (w.alice, Event::SessionRevoked { user_id: w.alice, token_hash: TokenHash([5; 32]), at: Millis(76) }),
    ] {
        append_one(s, StreamName::user(user), NewEvent::fresh(event)).await;
    }
}

async fn push_read_models_answer(b: &Backend) {
    let s = &b.store;
    let w = populate(s).await;
    populate_push(s, &w).await;
    let record = |user, device, endpoint: &str| PushSubscriptionRecord {
        user,
        device,
        endpoint: endpoint.into(),
        p256dh: vec![4; 65],
        auth: vec![device.0.as_u128() as u8; 16],
    };
    let targets = s.push_targets(w.dm, &[w.bob, w.alice, w.bob]).await.unwrap();
    assert_eq!(
        targets,
        [
            PushTarget {
                subscription: record(w.alice, dev(1001), A1),
                show_text: true,
                muted_until: Some(Some(Millis(999)))
            },
            PushTarget { subscription: record(w.bob, dev(1002), B2), show_text: true, muted_until: None },
        ],
        "by user, one per device, the newest subscription, the late 'gone' of the old one ignored"
    );
    let targets = s.push_targets(w.group, &[w.carol, w.alice]).await.unwrap();
    assert_eq!(
        targets,
        [
            PushTarget { subscription: record(w.alice, dev(1001), A1), show_text: true, muted_until: None },
            PushTarget { subscription: record(w.carol, dev(1004), C1), show_text: false, muted_until: Some(None) },
        ]
    );
    assert!(s.push_targets(w.dm, &[uid(0xdead)]).await.unwrap().is_empty());

    let carol = s.push_settings(w.carol, dev(1004)).await.unwrap();
    assert_eq!(
        carol,
        PushSettings {
            show_text: false,
            muted: vec![(w.group, None)],
            subscription: Some(record(w.carol, dev(1004), C1))
        }
    );
    let alice = s.push_settings(w.alice, dev(1005)).await.unwrap();
    assert_eq!(alice, PushSettings { show_text: true, muted: vec![(w.dm, Some(Millis(999)))], subscription: None });
    // Another user's device is not yours.
    assert_eq!(s.push_settings(w.alice, dev(1002)).await.unwrap().subscription, None);

    // Device keys: the newest per device; the signed-out device's is gone.
    let alice_keys = s.device_keys(w.alice).await.unwrap();
    assert_eq!(
        alice_keys.iter().map(|k| (k.device_id, k.signature_key.clone())).collect::<Vec<_>>(),
        [(dev(1001), vec![1; 32])]
    );
    let bob_keys = s.device_keys(w.bob).await.unwrap();
    assert_eq!(
        bob_keys.iter().map(|k| (k.device_id, k.signature_key.clone())).collect::<Vec<_>>(),
        [(dev(1002), vec![4; 32])]
    );
    assert!(s.device_keys(uid(0xdead)).await.unwrap().is_empty());
    assert!(s.share_conversation(w.alice, w.bob).await.unwrap());
    assert!(!s.share_conversation(w.alice, uid(0xdead)).await.unwrap());
}

async fn the_follower_lease_has_one_holder_and_its_position_only_moves_forward(b: &Backend) {
    let s = &b.store;
    let ttl = Duration::from_millis(1000);
    assert_eq!(s.follower_lease("push", "node-a", Millis(10_000), ttl, None).await.unwrap(), Some(0));
    assert_eq!(s.follower_lease("push", "node-b", Millis(10_500), ttl, Some(7)).await.unwrap(), None, "held by a");
    assert_eq!(s.follower_lease("push", "node-a", Millis(10_600), ttl, Some(40)).await.unwrap(), Some(40));
    assert_eq!(
        s.follower_lease("push", "node-a", Millis(10_700), ttl, Some(30)).await.unwrap(),
        Some(40),
        "forward only"
    );
    assert_eq!(s.follower_lease("push", "node-b", Millis(11_500), ttl, None).await.unwrap(), None, "renewed at 10 700");
    // a stopped renewing: b takes over where a was.
    assert_eq!(s.follower_lease("push", "node-b", Millis(11_800), ttl, None).await.unwrap(), Some(40));
    assert_eq!(s.follower_lease("push", "node-a", Millis(11_900), ttl, Some(50)).await.unwrap(), None);
    // Another follower's lease is its own.
    assert_eq!(s.follower_lease("other", "node-a", Millis(11_900), ttl, None).await.unwrap(), Some(0));
    // Nodes racing for a free lease: exactly one wins.
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.follower_lease("race", &format!("n{i}"), Millis(1), ttl, None).await.unwrap() })
        })
        .collect();
    let mut winners = 0;
    for r in racers {
        winners += usize::from(r.await.unwrap().is_some());
    }
    assert_eq!(winners, 1);
}

async fn subscribers_get_commits_with_their_audience(b: &Backend) {
    let s = &b.store;
    let mut rx = s.subscribe();
    let w = populate(s).await;
    let head = s.head().await.unwrap();
    let mut seen = Vec::new();
    while seen.last().map_or(0, |c: &natter_server::store::CommittedEvent| c.event.position) < head {
        let batch = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a batch").unwrap();
        seen.extend(batch.iter().cloned());
    }
    assert_eq!(seen.iter().map(|c| c.event.position).collect::<Vec<_>>(), (1..=head).collect::<Vec<_>>());
    let audience = |pred: &dyn Fn(&Event) -> bool| -> BTreeSet<UserId> {
        seen.iter().find(|c| pred(&c.event.event)).unwrap().audience.iter().copied().collect()
    };
    assert!(audience(&|e| matches!(e, Event::UserRegistered(_))).is_empty(), "no conversation, no audience");
    assert_eq!(audience(&|e| matches!(e, Event::DirectConversationStarted { .. })), BTreeSet::from([w.alice, w.bob]));
    // The removed member learns of the removal; the next message is not theirs.
    assert_eq!(audience(&|e| matches!(e, Event::MemberRemoved { .. })), BTreeSet::from([w.alice, w.bob, w.carol]));
    let last_message = seen.iter().rev().find(|c| matches!(c.event.event, Event::MessageSent(_))).unwrap();
    assert_eq!(last_message.audience.iter().copied().collect::<BTreeSet<_>>(), BTreeSet::from([w.alice, w.carol]));
}

async fn each_message_of_a_batch_reaches_the_members_at_its_own_position(b: &Backend) {
    let s = &b.store;
    let w = populate(s).await;
    let mut rx = s.subscribe();
    let (gs, ds) = (StreamName::conversation(w.group), StreamName::conversation(w.dm));
    // Bob is back in the group (he was removed in `populate`), then: messages
    // to the group and the direct conversation, Carol's removal, more messages;
    // queued together, so they usually share one group commit.
    let add = Event::MembersAdded {
        conversation_id: w.group,
        actor: w.alice,
        members: vec![(w.bob, Role::Member)],
        at: Millis(80),
    };
    append_one(s, gs.clone(), NewEvent::fresh(add)).await;
    let send = |stream: &StreamName, conv, n| {
        s.append(vec![StreamAppend::new(stream.clone(), ExpectedVersion::Any, vec![message(conv, w.alice, n, 81)])])
    };
    let removal = StreamAppend::new(
        gs.clone(),
        ExpectedVersion::Any,
        vec![NewEvent::fresh(Event::MemberRemoved {
            conversation_id: w.group,
            actor: w.alice,
            user: w.carol,
            at: Millis(82),
        })],
    );
    let (g1, d1, g2, removed, g3, d2) = tokio::join!(
        send(&gs, w.group, 400),
        send(&ds, w.dm, 401),
        send(&gs, w.group, 402),
        s.append(vec![removal]),
        send(&gs, w.group, 403),
        send(&ds, w.dm, 404),
    );
    let position = |o: Result<AppendOutcome, AppendError>| appended(o.unwrap())[0].position;
    let (g1, d1, g2, removed, g3, d2) =
        (position(g1), position(d1), position(g2), position(removed), position(g3), position(d2));
    let head = s.head().await.unwrap();
    let mut seen = Vec::new();
    while seen.last().map_or(0, |c: &natter_server::store::CommittedEvent| c.event.position) < head {
        let batch = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a batch").unwrap();
        seen.extend(batch.iter().cloned());
    }
    let audience = |p: u64| -> BTreeSet<UserId> {
        seen.iter().find(|c| c.event.position == p).unwrap().audience.iter().copied().collect()
    };
    let (everyone, after) = (BTreeSet::from([w.alice, w.bob, w.carol]), BTreeSet::from([w.alice, w.bob]));
    assert_eq!(audience(g1), everyone);
    assert_eq!(audience(g2), everyone);
    assert_eq!(audience(removed), everyone, "the removed member learns of it");
    assert_eq!(audience(g3), after, "not Carol's after her removal");
    let dm_members = BTreeSet::from([w.alice, w.bob]);
    assert_eq!(audience(d1), dm_members);
    assert_eq!(audience(d2), dm_members);
    // The feeds agree with the audiences.
    let carol_feed = s.feed(w.carol, 0, 1000).await.unwrap();
    let carol_positions: BTreeSet<_> = carol_feed.iter().map(|e| e.position).collect();
    assert!([g1, g2, removed].iter().all(|p| carol_positions.contains(p)) && !carol_positions.contains(&g3));
    let (msgs, _) = s.messages(w.group, HistoryPage::Latest { limit: 3 }, None).await.unwrap();
    assert_eq!(msgs.iter().map(|m| m.position).collect::<Vec<_>>(), [g1, g2, g3]);
}

async fn read_models_answer_every_query(b: &Backend) {
    let s = &b.store;
    let w = populate(s).await;

    let alice = s.user_by_email(&Email::parse("Alice@Example.org").unwrap()).await.unwrap().unwrap();
    assert_eq!((alice.user_id, alice.display_name.as_str(), alice.created_at), (w.alice, "alice", Millis(10)));
    assert_eq!(s.user_by_id(w.bob).await.unwrap().unwrap().email.unwrap().as_str(), "bob@example.org");
    assert_eq!(s.user_by_id(uid(0xdead)).await.unwrap(), None);
    assert_eq!(s.user_by_email(&Email::parse("nobody@example.org").unwrap()).await.unwrap(), None);

    let session = s.session_by_token(w.alice_token).await.unwrap().unwrap();
    assert_eq!(
        (session.user_id, session.device_name.as_str(), session.revoked, session.created_at),
        (w.alice, "device 1", false, Millis(11))
    );
    assert!(!s.session_by_token(w.bob_token).await.unwrap().unwrap().revoked);
    assert!(s.session_by_token(TokenHash([3; 32])).await.unwrap().unwrap().revoked);
    assert_eq!(s.session_by_token(TokenHash([9; 32])).await.unwrap(), None);

    let dm = s.conversation(w.dm).await.unwrap().unwrap();
    assert_eq!((dm.kind, dm.version, dm.name.clone()), (ConversationKind::Direct, Seq(8), None));
    assert_eq!(dm.member_ids().collect::<Vec<_>>(), [w.alice, w.bob]);
    let group = s.conversation(w.group).await.unwrap().unwrap();
    assert_eq!((group.name.as_deref(), group.version), (Some("summit"), Seq(8)));
    let roles: Vec<_> = group.members.iter().map(|m| (m.user, m.role)).collect();
    assert_eq!(roles, [(w.alice, Role::Owner), (w.carol, Role::Admin)]);
    assert_eq!(s.conversation(ConversationId(Uuid::from_u128(1))).await.unwrap(), None);

    assert_eq!(s.membership(w.group, w.carol).await.unwrap(), Some(Membership::Active(Role::Admin)));
    assert_eq!(s.membership(w.group, w.bob).await.unwrap(), Some(Membership::Former { left_at: Seq(7) }));
    assert_eq!(s.membership(w.dm, w.carol).await.unwrap(), None);

    // Bob's list: the group (where he is a former member) had the latest
    // activity, but its entry stops at his removal; unread counts others'
    // messages after his read mark.
    let list = s.conversations_for_user(w.bob, None, 10).await.unwrap();
    assert_eq!(list.iter().map(|c| c.state.id).collect::<Vec<_>>(), [w.group, w.dm], "most recent activity first");
    let (group_entry, dm_entry) = (&list[0], &list[1]);
    assert_eq!((dm_entry.read_up_to, dm_entry.unread, dm_entry.left_at), (Seq(4), 2, None));
    assert_eq!(dm_entry.last_message.as_ref().unwrap().seq, Seq(8));
    assert_eq!(group_entry.left_at, Some(Seq(7)));
    assert_eq!(group_entry.last_message.as_ref().unwrap().seq, Seq(4), "nothing after his removal");
    let page = s.conversations_for_user(w.bob, Some(group_entry.activity), 10).await.unwrap();
    assert_eq!(page.iter().map(|c| c.state.id).collect::<Vec<_>>(), [w.dm]);
    assert_eq!(s.conversations_for_user(w.bob, None, 1).await.unwrap().len(), 1);
    assert_eq!(s.conversation_summary(w.bob, w.dm).await.unwrap().as_ref(), Some(dm_entry));
    assert_eq!(s.conversation_summary(w.carol, w.dm).await.unwrap(), None);
    let carol_group = s.conversation_summary(w.carol, w.group).await.unwrap().unwrap();
    assert_eq!((carol_group.unread, carol_group.last_message.unwrap().seq), (2, Seq(8)));

    // What each may search: every conversation they are or were in, the
    // group's name, and where a former member's reading stops.
    let readable = |user| async move {
        let mut r = s.readable_conversations(user).await.unwrap();
        r.sort_by_key(|c| c.conversation.0);
        r.into_iter().map(|c| (c.conversation, c.name, c.left_at)).collect::<Vec<_>>()
    };
    let mut bobs = vec![(w.dm, None, None), (w.group, Some("summit".to_owned()), Some(Seq(7)))];
    bobs.sort_by_key(|c| c.0 .0);
    assert_eq!(readable(w.bob).await, bobs);
    assert_eq!(readable(w.carol).await, [(w.group, Some("summit".to_owned()), None)]);
    assert_eq!(readable(uid(0xdead)).await, []);

    // History pages.
    let (latest, more) = s.messages(w.dm, HistoryPage::Latest { limit: 3 }, None).await.unwrap();
    assert_eq!(latest.iter().map(|m| m.seq.0).collect::<Vec<_>>(), [6, 7, 8]);
    assert!(more);
    let (before, more) = s.messages(w.dm, HistoryPage::Before { seq: Seq(6), limit: 10 }, None).await.unwrap();
    assert_eq!(before.iter().map(|m| m.seq.0).collect::<Vec<_>>(), [2, 3, 4, 5]);
    assert!(!more);
    let (after, more) = s.messages(w.dm, HistoryPage::After { seq: Seq(2), limit: 2 }, None).await.unwrap();
    assert_eq!(after.iter().map(|m| m.seq.0).collect::<Vec<_>>(), [3, 4]);
    assert!(more);
    let (visible, more) = s.messages(w.group, HistoryPage::Latest { limit: 10 }, Some(Seq(7))).await.unwrap();
    assert_eq!(visible.iter().map(|m| m.seq.0).collect::<Vec<_>>(), [2, 4]);
    assert!(!more);
    let m = s.message(w.dm, Seq(3)).await.unwrap().unwrap();
    assert_eq!(
        (m.sender_user_id, m.client_msg_id.as_str(), m.content.clone()),
        (w.bob, "m1", Content::Text("text 1".into()))
    );
    assert_eq!(m.at, Millis(22));
    assert_eq!(s.message(w.dm, Seq(99)).await.unwrap(), None);

    // Receipts: watermarks only move forward.
    let r = s.receipt(w.dm, w.bob).await.unwrap();
    assert_eq!((r.delivered, r.read), (Seq(6), Seq(4)));
    let none = s.receipt(w.dm, w.alice).await.unwrap();
    assert_eq!((none.delivered, none.read), (Seq(0), Seq(0)));
    let all = s.receipts(w.dm).await.unwrap();
    assert_eq!(all.iter().map(|r| r.user).collect::<Vec<_>>(), [w.bob]);

    // Feeds: Bob's has the group up to (and with) his removal, and the DM.
    let feed = s.feed(w.bob, 0, 1000).await.unwrap();
    let removal = feed.iter().position(|e| matches!(e.event, Event::MemberRemoved { .. })).expect("told of removal");
    assert!(feed[removal + 1..].iter().all(|e| e.event.conversation_id() != Some(w.group)));
    assert!(feed.windows(2).all(|p| p[0].position < p[1].position));
    let page = s.feed(w.bob, feed[2].position, 2).await.unwrap();
    assert_eq!(page, feed[3..5].to_vec());
    assert!(s.feed(w.carol, 0, 1000).await.unwrap().iter().all(|e| e.event.conversation_id() == Some(w.group)));

    let mut contacts = s.contacts(w.alice).await.unwrap();
    contacts.sort();
    assert_eq!(contacts, [w.bob, w.carol]);
    assert_eq!(s.contacts(w.bob).await.unwrap(), [w.alice], "not Carol: they share no current conversation");

    let stats = s.stats().await.unwrap();
    assert_eq!((stats.users, stats.conversations, stats.messages), (3, 2, 10));
    assert_eq!(stats.head, s.head().await.unwrap());
}

async fn preconditions_are_checked_atomically(b: &Backend) {
    let s = &b.store;
    let w = populate(s).await;
    let gs = StreamName::conversation(w.group);
    let append = |user: UserId, n: u32| {
        StreamAppend::new(gs.clone(), ExpectedVersion::Any, vec![message(w.group, user, n, 50)])
            .with_precondition(Precondition::ActiveMember { conversation: w.group, user })
    };
    let e = s.append(vec![append(w.bob, 200)]).await;
    assert!(matches!(e, Err(AppendError::PreconditionFailed(Precondition::ActiveMember { .. }))), "{e:?}");
    s.append(vec![append(w.carol, 201)]).await.unwrap();
    assert_eq!(s.conversation(w.group).await.unwrap().unwrap().version, Seq(9));
}

async fn group_changes_are_decided_on_the_groups_shape_not_its_messages(b: &Backend) {
    let s = &b.store;
    let w = populate(s).await;
    let gs = StreamName::conversation(w.group);
    let state = s.conversation(w.group).await.unwrap().unwrap();
    assert_eq!((state.version, state.changed), (Seq(8), Seq(7)), "the removal at 7 was its last change of shape");
    let rename = |name: &str, since: u64| {
        StreamAppend::new(
            gs.clone(),
            ExpectedVersion::Any,
            vec![NewEvent::fresh(Event::GroupRenamed {
                conversation_id: w.group,
                actor: w.alice,
                name: name.into(),
                at: Millis(70),
            })],
        )
        .with_precondition(Precondition::GroupUnchanged { conversation: w.group, since: Seq(since) })
    };
    // Messages move the version, not the shape: a change decided at 7 still applies.
    append_one(s, gs.clone(), message(w.group, w.alice, 210, 60)).await;
    let renamed = appended(s.append(vec![rename("one", 7)]).await.unwrap()).remove(0);
    assert_eq!(renamed.version, 10);
    let state = s.conversation(w.group).await.unwrap().unwrap();
    assert_eq!((state.version, state.changed, state.name.as_deref()), (Seq(10), Seq(10), Some("one")));
    // A change decided on the old shape is refused and writes nothing.
    let e = s.append(vec![rename("stale", 7)]).await;
    assert!(matches!(e, Err(AppendError::PreconditionFailed(Precondition::GroupUnchanged { .. }))), "{e:?}");
    // Two changes decided on the same shape at once: exactly one wins, while a
    // message in the same batch is unaffected.
    let (x, y, m) = tokio::join!(
        s.append(vec![rename("two", 10)]),
        s.append(vec![rename("three", 10)]),
        s.append(vec![StreamAppend::new(gs.clone(), ExpectedVersion::Any, vec![message(w.group, w.carol, 211, 61)])]),
    );
    m.unwrap();
    let (won, lost): (Vec<_>, Vec<_>) = [x, y].into_iter().partition(Result::is_ok);
    assert_eq!(won.len(), 1, "{lost:?}");
    assert!(matches!(lost[0], Err(AppendError::PreconditionFailed(Precondition::GroupUnchanged { .. }))), "{lost:?}");
    let won: Vec<_> = won.into_iter().map(Result::unwrap).collect();
    let state = s.conversation(w.group).await.unwrap().unwrap();
    assert_eq!(state.version, Seq(12));
    assert_eq!(state.changed, Seq(appended(won.into_iter().next().unwrap())[0].version));
    // The precondition names a group that does not exist: refused.
    let missing = StreamAppend::new(stream("s:missing"), ExpectedVersion::Any, vec![claim(77)]).with_precondition(
        Precondition::GroupUnchanged { conversation: ConversationId(Uuid::from_u128(0xdead)), since: Seq(0) },
    );
    assert!(matches!(s.append(vec![missing]).await, Err(AppendError::PreconditionFailed(_))));
}

async fn presence_state_is_kept(b: &Backend) {
    let s = &b.store;
    let w = populate(s).await;
    // Last seen only moves forward.
    s.set_last_seen(w.alice, Millis(400)).await.unwrap();
    let info = s.presence_info(vec![w.alice, w.bob, w.carol, uid(0xdead)]).await.unwrap();
    let got: Vec<_> = info.iter().map(|p| (p.user, p.last_seen, p.hide_last_seen)).collect();
    assert_eq!(got, [(w.alice, Some(Millis(500)), false), (w.bob, None, false), (w.carol, Some(Millis(600)), true)]);
    assert_eq!(s.last_seen_all().await.unwrap(), [(w.alice, Millis(500)), (w.carol, Millis(600))]);
}

async fn account_security_read_models_answer(b: &Backend) {
    let s = &b.store;
    let w = populate(s).await;
    let alice = s.user_by_id(w.alice).await.unwrap().unwrap();
    assert_eq!(alice.password_hash.as_deref(), Some("$argon2id$changed"), "PasswordChanged replaces the hash");
    assert!(!alice.email_verified && alice.totp_sealed_secret.is_none());
    let bob = s.user_by_email(&Email::parse("bob@example.org").unwrap()).await.unwrap().unwrap();
    assert!(bob.email_verified);
    let carol = s.user_by_id(w.carol).await.unwrap().unwrap();
    assert_eq!(carol.totp_sealed_secret, Some(vec![9; 48]));
    assert!(!s.recovery_code_unused(w.carol, [0xc1; 32]).await.unwrap(), "spent");
    assert!(s.recovery_code_unused(w.carol, [0xc2; 32]).await.unwrap());
    assert!(!s.recovery_code_unused(w.alice, [0xc2; 32]).await.unwrap(), "someone else's code");

    // Live sessions only, oldest first, with how they signed in.
    let bobs = s.sessions_of(w.bob).await.unwrap();
    assert_eq!(bobs.iter().map(|d| d.token_hash).collect::<Vec<_>>(), [w.bob_token], "the revoked one is gone");
    let carols = s.sessions_of(w.carol).await.unwrap();
    assert_eq!(carols.len(), 1);
    assert_eq!(
        (carols[0].method, carols[0].device_name.as_str(), carols[0].created_at),
        (SignInMethod::Google, "device 4", Millis(48))
    );

    // Turned off: the secret and every recovery code go; a new set replaces an old one.
    let off = Event::TotpDisabled { user_id: w.carol, at: Millis(70) };
    append_one(s, StreamName::user(w.carol), NewEvent::fresh(off)).await;
    assert_eq!(s.user_by_id(w.carol).await.unwrap().unwrap().totp_sealed_secret, None);
    assert!(!s.recovery_code_unused(w.carol, [0xc2; 32]).await.unwrap());
    let issued = Event::RecoveryCodesIssued { user_id: w.alice, recovery_codes: vec![[0xa1; 32]], at: Millis(71) };
    append_one(s, StreamName::user(w.alice), NewEvent::fresh(issued)).await;
    let again = Event::RecoveryCodesIssued { user_id: w.alice, recovery_codes: vec![[0xa2; 32]], at: Millis(72) };
    append_one(s, StreamName::user(w.alice), NewEvent::fresh(again)).await;
    assert!(!s.recovery_code_unused(w.alice, [0xa1; 32]).await.unwrap());
    assert!(s.recovery_code_unused(w.alice, [0xa2; 32]).await.unwrap());
}

/// Accounts made by a texted code (no email, no password) or by Google or
/// GitHub, and the identities an account may sign in with.
async fn accounts_without_a_password_and_identities_answer(b: &Backend) {
    let s = &b.store;
    let (zoe, yan) = (uid(0x20), uid(0x21));
    let phone = Phone::parse("+33612345678").unwrap();
    let opened = |user_id, email: Option<&str>| {
        NewEvent::fresh(Event::AccountOpened(AccountOpened {
            user_id,
            display_name: format!("user {user_id}"),
            email: email.map(|e| Email::parse(e).unwrap()),
            email_verified: email.is_some(),
            at: Millis(5),
        }))
    };
    let added = NewEvent::fresh(Event::PhoneAdded { user_id: zoe, phone: phone.clone(), at: Millis(6) });
    s.append(vec![StreamAppend::new(StreamName::user(zoe), ExpectedVersion::NoStream, vec![opened(zoe, None), added])])
        .await
        .unwrap();
    let google = ExternalIdentity {
        provider: IdentityProvider::Google,
        subject: "10769150350006150715113082367".into(),
        email: Some(Email::parse("yan@example.org").unwrap()),
    };
    let linked = |identity: &ExternalIdentity, at| {
        NewEvent::fresh(Event::IdentityLinked { user_id: yan, identity: identity.clone(), at: Millis(at) })
    };
    s.append(vec![StreamAppend::new(
        StreamName::user(yan),
        ExpectedVersion::NoStream,
        vec![opened(yan, Some("yan@example.org")), linked(&google, 7)],
    )])
    .await
    .unwrap();
    // Two accounts without an email, one without a password: both fine.
    s.append(vec![StreamAppend::new(
        StreamName::user(uid(0x22)),
        ExpectedVersion::NoStream,
        vec![opened(uid(0x22), None)],
    )])
    .await
    .unwrap();

    let z = s.user_by_phone(&phone).await.unwrap().unwrap();
    assert_eq!((z.user_id, z.email.clone(), z.password_hash.clone(), z.email_verified), (zoe, None, None, false));
    let y = s.user_by_email(&Email::parse("yan@example.org").unwrap()).await.unwrap().unwrap();
    assert_eq!((y.user_id, y.password_hash.clone(), y.email_verified), (yan, None, true), "the provider verified it");
    let owner = s.user_by_identity(IdentityProvider::Google, &google.subject).await.unwrap().map(|u| u.user_id);
    assert_eq!(owner, Some(yan));
    assert!(s.user_by_identity(IdentityProvider::GitHub, &google.subject).await.unwrap().is_none(), "per provider");
    let github = ExternalIdentity { provider: IdentityProvider::GitHub, subject: "583231".into(), email: None };
    append_one(s, StreamName::user(yan), linked(&github, 8)).await;
    let mine = s.identities_of(yan).await.unwrap();
    let listed: Vec<_> = mine.iter().map(|r| (r.provider, r.subject.as_str(), r.email.clone(), r.linked_at)).collect();
    assert_eq!(
        listed,
        [
            (IdentityProvider::GitHub, "583231", None, Millis(8)),
            (IdentityProvider::Google, google.subject.as_str(), google.email.clone(), Millis(7)),
        ],
        "by provider name"
    );
    assert!(s.identities_of(zoe).await.unwrap().is_empty(), "someone else's");
    let unlinked = Event::IdentityUnlinked {
        user_id: yan,
        provider: IdentityProvider::Google,
        subject: google.subject.clone(),
        at: Millis(9),
    };
    append_one(s, StreamName::user(yan), NewEvent::fresh(unlinked)).await;
    assert!(s.user_by_identity(IdentityProvider::Google, &google.subject).await.unwrap().is_none());
    assert_eq!(s.identities_of(yan).await.unwrap().len(), 1);
    // The read models come back the same from the log.
    s.rebuild().await.unwrap();
    assert_eq!(s.identities_of(yan).await.unwrap().len(), 1);
    assert_eq!(s.user_by_phone(&phone).await.unwrap().unwrap().email, None);
}

/// Appends a first `MediaUploaded` of its bytes, as an upload does.
async fn record_upload(s: &dyn Store, up: MediaUploaded) {
    let stream = StreamName::blob(&up.sha256);
    s.append(vec![StreamAppend::new(
        stream,
        ExpectedVersion::NoStream,
        vec![NewEvent::fresh(Event::MediaUploaded(up))],
    )])
    .await
    .unwrap();
}

/// Uploads (`MediaUploaded`), media messages (their content kept whole, the
/// first seq that sent each upload), and a user's bytes, through a rebuild.
async fn media_and_media_messages_answer(b: &Backend) {
    let s = &b.store;
    let w = populate(s).await;
    let upload = |id: u128, size: u64| MediaUploaded {
        media_id: MediaId(Uuid::from_u128(id)),
        uploader: w.alice,
        conversation_id: w.dm,
        sha256: [id as u8; 32],
        size,
        mime_type: "image/png".into(),
        file_name: format!("{id}.png"),
        width: 64,
        height: 48,
        at: Millis(90),
        preview_of: None,
        preview: None,
        duration_ms: 0,
    };
    for (id, size) in [(0x51, 1_000), (0x52, 2_500)] {
        record_upload(s.as_ref(), upload(id, size)).await;
    }
    assert_eq!(s.media_bytes_of(w.alice).await.unwrap(), 3_500);
    assert_eq!(s.media_refs([0x51; 32]).await.unwrap(), 1);
    assert_eq!(s.media_refs([0x50; 32]).await.unwrap(), 0);
    // What a backup copies: each blob once, in order, paged.
    let blobs = s.media_blobs(None, 10).await.unwrap();
    assert_eq!(blobs, [([0x51; 32], 1_000), ([0x52; 32], 2_500)]);
    assert_eq!(s.media_blobs(Some([0x51; 32]), 10).await.unwrap(), [([0x52; 32], 2_500)]);
    assert_eq!(s.media_blobs(None, 1).await.unwrap().len(), 1);
    let last = s.last_in_stream(&StreamName::blob(&[0x52; 32])).await.unwrap().unwrap();
    assert_eq!(last.version, 1);
    assert!(matches!(last.event, Event::MediaUploaded(ref m) if m.size == 2_500));
    assert!(s.last_in_stream(&StreamName::blob(&[0x50; 32])).await.unwrap().is_none());
    assert_eq!(s.media_bytes_of(w.bob).await.unwrap(), 0);
    let first = s.media(MediaId(Uuid::from_u128(0x51))).await.unwrap().unwrap();
    assert_eq!((first.size, first.first_seq, first.conversation_id), (1_000, None, w.dm), "not sent yet");
    let media = Content::Media(MediaRef {
        media_id: first.media_id,
        file_name: first.file_name.clone(),
        mime_type: first.mime_type.clone(),
        size: first.size,
        sha256: first.sha256,
        width: 64,
        height: 48,
        duration_ms: 0,
        caption: "a caption".into(),
        preview: None,
    });
    let send = |n: u32| {
        NewEvent::fresh(Event::MessageSent(MessageSent {
            conversation_id: w.dm,
            sender_user_id: w.alice,
            sender_device_id: DeviceId(Uuid::from_u128(7)),
            client_msg_id: ClientMsgId::parse(&format!("media-{n}")).unwrap(),
            content: media.clone(),
            at: Millis(91),
        }))
    };
    // Sent twice in one batch: the first seq counts.
    let sent = appended(
        s.append(vec![StreamAppend::new(StreamName::conversation(w.dm), ExpectedVersion::Any, vec![send(1), send(2)])])
            .await
            .unwrap(),
    );
    let seq = Seq(sent[0].version);
    let check = || async {
        let m = s.media(MediaId(Uuid::from_u128(0x51))).await.unwrap().unwrap();
        assert_eq!(m.first_seq, Some(seq));
        assert_eq!(s.media(MediaId(Uuid::from_u128(0x52))).await.unwrap().unwrap().first_seq, None);
        assert_eq!(s.message(w.dm, seq).await.unwrap().unwrap().content, media, "the content comes back whole");
        assert!(s.media(MediaId(Uuid::from_u128(0x53))).await.unwrap().is_none());
    };
    check().await;
    s.rebuild().await.unwrap();
    check().await;
    assert_eq!(s.media_bytes_of(w.alice).await.unwrap(), 3_500);
    // Unsent before a time: only the upload no message sent.
    let unsent = |before: u64| async move {
        s.media_unsent(Millis(before), 10)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.media_id.0.as_u128())
            .collect::<Vec<_>>()
    };
    assert_eq!(unsent(91).await, vec![0x52]);
    assert_eq!(unsent(90).await, Vec::<u128>::new(), "made at 90, not before");
    // A preview pair: the preview is never unsent on its own, and names its media.
    let mut main = upload(0x54, 4_000);
    main.preview = Some(MediaId(Uuid::from_u128(0x55)));
    let mut small = upload(0x55, 300);
    small.preview_of = Some(main.media_id);
    small.mime_type = "image/jpeg".into();
    for up in [main, small] {
        record_upload(s.as_ref(), up).await;
    }
    assert_eq!(unsent(91).await, vec![0x52, 0x54]);
    let pair = s.media(MediaId(Uuid::from_u128(0x54))).await.unwrap().unwrap();
    assert_eq!(pair.preview, Some(MediaId(Uuid::from_u128(0x55))));
    let preview = s.media(MediaId(Uuid::from_u128(0x55))).await.unwrap().unwrap();
    assert_eq!((preview.preview_of, preview.preview), (Some(pair.media_id), None));
    // Discarding removes the record (and its bytes' reference); a rebuild agrees.
    for (id, sha) in [(0x52u128, 0x52u8), (0x55, 0x55)] {
        let discarded =
            Event::MediaDiscarded { media_id: MediaId(Uuid::from_u128(id)), sha256: [sha; 32], at: Millis(95) };
        s.append(vec![StreamAppend::new(
            StreamName::blob(&[sha; 32]),
            ExpectedVersion::Exact(1),
            vec![NewEvent::fresh(discarded)],
        )])
        .await
        .unwrap();
    }
    let gone = || async {
        assert!(s.media(MediaId(Uuid::from_u128(0x52))).await.unwrap().is_none());
        assert!(s.media(MediaId(Uuid::from_u128(0x55))).await.unwrap().is_none());
        assert_eq!(s.media_refs([0x52; 32]).await.unwrap(), 0);
        assert_eq!(s.media_bytes_of(w.alice).await.unwrap(), 5_000);
        assert_eq!(unsent(91).await, vec![0x54]);
    };
    gone().await;
    s.rebuild().await.unwrap();
    gone().await;
    // The collector's events are in the blob's stream only.
    let collected = Event::BlobCollected { sha256: [0x52; 32], at: Millis(96) };
    let erased = Event::BlobErased { sha256: [0x52; 32], at: Millis(97) };
    s.append(vec![StreamAppend::new(
        StreamName::blob(&[0x52; 32]),
        ExpectedVersion::Exact(2),
        vec![NewEvent::fresh(collected), NewEvent::fresh(erased)],
    )])
    .await
    .unwrap();
    let last = s.last_in_stream(&StreamName::blob(&[0x52; 32])).await.unwrap().unwrap();
    assert_eq!(last.version, 4);
    assert!(matches!(last.event, Event::BlobErased { .. }));
    // A video's length comes back as it went in.
    let mut clip = upload(0x56, 9_000);
    clip.mime_type = "video/mp4".into();
    clip.duration_ms = 93_500;
    record_upload(s.as_ref(), clip).await;
    assert_eq!(s.media(MediaId(Uuid::from_u128(0x56))).await.unwrap().unwrap().duration_ms, 93_500);
    s.rebuild().await.unwrap();
    assert_eq!(s.media(MediaId(Uuid::from_u128(0x56))).await.unwrap().unwrap().duration_ms, 93_500);
}

async fn auth_state_is_shared_by_nodes_and_atomic(b: &Backend) {
    let (one, two) = (b.auth_state(), b.auth_state());
    let purpose = CodePurpose::ResetPassword;
    let now = Millis(1_000_000);
    one.put_code(purpose, "a@example.org", [1; 32], Millis(now.0 + 300_000), 3).await.unwrap();
    // A wrong code spends a try, seen by the other node.
    assert_eq!(
        two.check_code(purpose, "a@example.org", [2; 32], now).await.unwrap(),
        CodeCheck::Wrong { attempts_left: 2 }
    );
    assert_eq!(one.check_code(purpose, "b@example.org", [1; 32], now).await.unwrap(), CodeCheck::Missing);
    assert_eq!(
        one.check_code(CodePurpose::VerifyEmail, "a@example.org", [1; 32], now).await.unwrap(),
        CodeCheck::Missing
    );
    // The right one, from both nodes at once: accepted exactly once.
    let (x, y) = futures::join!(
        one.check_code(purpose, "a@example.org", [1; 32], now),
        two.check_code(purpose, "a@example.org", [1; 32], now)
    );
    let mut answers = [x.unwrap(), y.unwrap()];
    answers.sort_by_key(|a| matches!(a, CodeCheck::Accepted));
    assert_eq!(answers, [CodeCheck::Missing, CodeCheck::Accepted]);
    // Expired; out of tries; replaced.
    one.put_code(purpose, "a@example.org", [1; 32], Millis(now.0 + 10), 3).await.unwrap();
    assert_eq!(
        one.check_code(purpose, "a@example.org", [1; 32], Millis(now.0 + 10)).await.unwrap(),
        CodeCheck::Missing
    );
    one.put_code(purpose, "a@example.org", [1; 32], Millis(now.0 + 300_000), 1).await.unwrap();
    assert_eq!(
        one.check_code(purpose, "a@example.org", [7; 32], now).await.unwrap(),
        CodeCheck::Wrong { attempts_left: 0 }
    );
    assert_eq!(one.check_code(purpose, "a@example.org", [1; 32], now).await.unwrap(), CodeCheck::Missing);
    one.put_code(purpose, "a@example.org", [1; 32], Millis(now.0 + 300_000), 3).await.unwrap();
    one.put_code(purpose, "a@example.org", [5; 32], Millis(now.0 + 300_000), 3).await.unwrap();
    assert!(matches!(two.check_code(purpose, "a@example.org", [1; 32], now).await.unwrap(), CodeCheck::Wrong { .. }));
    assert_eq!(two.check_code(purpose, "a@example.org", [5; 32], now).await.unwrap(), CodeCheck::Accepted);

    // Counters: one fixed window, shared.
    let window = Duration::from_secs(600);
    assert_eq!(one.hit("k", window, now).await.unwrap(), 1);
    assert_eq!(two.hit("k", window, Millis(now.0 + 1)).await.unwrap(), 2);
    assert_eq!(one.hit("other", window, now).await.unwrap(), 1);
    assert_eq!(one.hit("k", window, Millis(now.0 + 600_000)).await.unwrap(), 1, "a new window");

    // TOTP steps: each accepted once, and never an older one after a newer.
    let user = uid(0xa);
    assert!(one.use_totp_step(user, 100).await.unwrap());
    assert!(!two.use_totp_step(user, 100).await.unwrap(), "replayed on another node");
    assert!(!one.use_totp_step(user, 99).await.unwrap());
    assert!(two.use_totp_step(user, 101).await.unwrap());
    assert!(one.use_totp_step(uid(0xb), 100).await.unwrap(), "per user");

    // Challenges: looked at, failed, taken once.
    let pending = PendingChallenge { user_id: user, device_name: "phone".into(), method: SignInMethod::Password };
    one.put_challenge([3; 32], &pending, Millis(now.0 + 300_000), 2).await.unwrap();
    assert_eq!(two.challenge([3; 32], now).await.unwrap(), Some(pending.clone()));
    assert_eq!(two.challenge([3; 32], Millis(now.0 + 300_000)).await.unwrap(), None, "expired");
    assert_eq!(two.challenge_failed([3; 32]).await.unwrap(), 1);
    let (x, y) = futures::join!(one.take_challenge([3; 32]), two.take_challenge([3; 32]));
    assert!(x.unwrap() ^ y.unwrap(), "taken exactly once");
    assert_eq!(one.challenge([3; 32], now).await.unwrap(), None);
    one.put_challenge([4; 32], &pending, Millis(now.0 + 300_000), 1).await.unwrap();
    assert_eq!(one.challenge_failed([4; 32]).await.unwrap(), 0);
    assert_eq!(one.challenge([4; 32], now).await.unwrap(), None, "out of tries");

    // Session activity, and the server key's id.
    one.touch_session(TokenHash([8; 32]), Millis(5), "192.0.2.1").await.unwrap();
    two.touch_session(TokenHash([8; 32]), Millis(6), "192.0.2.2").await.unwrap();
    let seen = one.session_activity(&[TokenHash([8; 32]), TokenHash([9; 32])]).await.unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[&TokenHash([8; 32])].last_address, "192.0.2.2");
    assert_eq!(seen[&TokenHash([8; 32])].last_used, Millis(6));
    assert!(one.check_key_id("key-1").await.unwrap());
    assert!(two.check_key_id("key-1").await.unwrap());
    assert!(!two.check_key_id("key-2").await.unwrap(), "another key is refused");

    // A sweep drops what can no longer matter, and nothing else.
    let later = Millis(now.0 + 3 * 86_400_000);
    one.put_code(purpose, "old@example.org", [1; 32], Millis(later.0 - 1), 3).await.unwrap();
    one.put_code(purpose, "new@example.org", [1; 32], Millis(later.0 + 300_000), 3).await.unwrap();
    one.put_challenge([5; 32], &pending, Millis(later.0 - 1), 3).await.unwrap();
    one.put_challenge([6; 32], &pending, Millis(later.0 + 300_000), 3).await.unwrap();
    one.hit("recent", window, Millis(later.0 - 60_000)).await.unwrap();
    let swept = two.sweep(later).await.unwrap();
    assert_eq!(swept, 4, "the old code, the old challenge, the two counters of the first day");
    assert_eq!(one.check_code(purpose, "new@example.org", [1; 32], later).await.unwrap(), CodeCheck::Accepted);
    assert_eq!(one.challenge([6; 32], later).await.unwrap(), Some(pending.clone()));
    assert_eq!(one.hits("recent", window, Millis(later.0 - 60_000)).await.unwrap(), 1, "a recent counter stays");
    assert_eq!(one.hits("k", window, Millis(now.0 + 600_000)).await.unwrap(), 0, "an old one went");
    assert_eq!(two.sweep(later).await.unwrap(), 0, "nothing left to sweep");
    assert!(one.check_key_id("key-1").await.unwrap(), "the key's id is never swept");
}

async fn rebuild_restores_every_answer(b: &Backend) {
    let w = populate(&b.store).await;
    populate_push(&b.store, &w).await;
    let before = natter_admin::snapshot(b.store.as_ref()).await.unwrap();
    b.damage_read_models().await;
    assert_eq!(b.store.conversation(w.group).await.unwrap().unwrap().members, [], "damaged");
    b.store.rebuild().await.unwrap();
    let after = natter_admin::snapshot(b.store.as_ref()).await.unwrap();
    assert_eq!(before.first_difference(&after), None);
    assert!(before.answers.len() > 40, "{} answers", before.answers.len());
    // And the admin command's own check passes on a healthy store.
    natter_admin::rebuild_store(b.store.as_ref()).await.unwrap();
    // Appends continue after a rebuild.
    append_one(&b.store, StreamName::conversation(w.dm), message(w.dm, w.alice, 300, 60)).await;
}

async fn import_reproduces_every_answer(b: &Backend) {
    let source = Backend::sqlite().await;
    let w = populate(&source.store).await;
    populate_push(&source.store, &w).await;
    let report = natter_admin::copy_between(source.store.as_ref(), b.store.as_ref(), &mut |_, _| {}).await.unwrap();
    assert_eq!(report.head, source.store.head().await.unwrap());
    assert_eq!(report.copied, report.head);
    // Copying again is a resumed copy with nothing left to do.
    let again = natter_admin::copy_between(source.store.as_ref(), b.store.as_ref(), &mut |_, _| {}).await.unwrap();
    assert_eq!(again.copied, 0);
    // Positions continue after the imported ones.
    let next = append_one(&b.store, stream("s:after"), claim(1)).await;
    assert_eq!(next.position, report.head + 1);
    // A different log is refused.
    let other = Backend::sqlite().await;
    other.store.append(vec![StreamAppend::new(stream("s:z"), ExpectedVersion::Any, vec![claim(9)])]).await.unwrap();
    let e = natter_admin::copy_between(other.store.as_ref(), b.store.as_ref(), &mut |_, _| {}).await.unwrap_err();
    assert!(format!("{e:#}").contains("different log"), "{e:#}");
    source.close().await;
    other.close().await;
}

/// Writers per node, appends per writer, subscribers per node.
const WRITERS: usize = 6;
const APPENDS_PER_WRITER: usize = 60;
const SUBSCRIBERS: usize = 2;

/// Every third append carries two events, so batches and transactions differ in size.
fn events_in_append(i: usize) -> usize {
    if i.is_multiple_of(3) {
        2
    } else {
        1
    }
}

/// Every node's checks (expected version, event id, membership) read what the
/// others committed: racing for one version gives one winner and typed
/// refusals, never a storage error, and one event sent through two nodes at
/// once is stored once.
async fn nodes_racing_for_one_stream_version_get_one_winner_and_typed_refusals(b: &Backend) {
    // SQLite is one node (its appends still race in its one writer).
    let mut nodes = vec![b.store.clone()];
    for _ in 0..3 {
        nodes.push(b.another_node().await.unwrap_or_else(|| b.store.clone()));
    }
    for round in 0..40u128 {
        let name = stream(&format!("s:race{round}"));
        let appends = nodes.iter().enumerate().map(|(n, node)| {
            let append =
                StreamAppend::new(name.clone(), ExpectedVersion::NoStream, vec![claim(round * 10 + n as u128)]);
            async move { node.append(vec![append]).await }
        });
        let outcomes = futures::future::join_all(appends).await;
        let won = outcomes.iter().filter(|o| matches!(o, Ok(AppendOutcome::Appended(_)))).count();
        assert_eq!(won, 1, "{outcomes:?}");
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Ok(AppendOutcome::Appended(_)) | Err(AppendError::WrongExpectedVersion { .. }))),
            "{outcomes:?}"
        );
        // One event, sent through every node at once (a client retrying
        // through another node): stored once, every caller told of it.
        let event = claim(1_000_000 + round);
        let twice = stream(&format!("s:same{round}"));
        let sends = nodes.iter().map(|node| {
            let append = StreamAppend::new(twice.clone(), ExpectedVersion::Any, vec![event.clone()]);
            async move { node.append(vec![append]).await }
        });
        let outcomes: Vec<_> = futures::future::join_all(sends).await.into_iter().map(Result::unwrap).collect();
        let stored = outcomes.iter().filter(|o| matches!(o, AppendOutcome::Appended(_))).count();
        assert_eq!(stored, 1, "{outcomes:?}");
    }
    for node in nodes.iter().skip(1) {
        if !Arc::ptr_eq(node, &b.store) {
            node.shutdown().await;
        }
    }
}

async fn subscribers_see_every_event_once_in_order_under_concurrent_writers(b: &Backend) {
    // SQLite is one node; PostgreSQL gets three nodes on one database.
    let mut nodes = vec![b.store.clone()];
    for _ in 0..2 {
        if let Some(node) = b.another_node().await {
            nodes.push(node);
        }
    }
    let per_writer: usize = (0..APPENDS_PER_WRITER).map(events_in_append).sum();
    let total = nodes.len() * WRITERS * per_writer;
    // Subscribers: each node's committed-batch stream (what routers follow),
    // plus a reader that polls the log by position (what a projection does).
    let mut watchers = Vec::new();
    for node in &nodes {
        for _ in 0..SUBSCRIBERS {
            let mut rx = node.subscribe();
            let node = node.clone();
            watchers.push(tokio::spawn(async move {
                let mut seen: Vec<u64> = Vec::with_capacity(total);
                // After a lag, batches still queued may repeat what the re-read gave.
                let mut reread_upto = 0;
                while seen.len() < total {
                    match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.expect("events keep coming") {
                        Ok(batch) => {
                            seen.extend(batch.iter().map(|c| c.event.position).filter(|p| *p > reread_upto));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            // Fell behind: re-read from the log, as the router's sessions do.
                            let after = seen.last().copied().unwrap_or(0);
                            seen.extend(positions(&node.read_all(after, 100_000).await.unwrap()));
                            reread_upto = seen.last().copied().unwrap_or(0);
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                seen
            }));
        }
        let node = node.clone();
        watchers.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(total);
            while seen.len() < total {
                let after = seen.last().copied().unwrap_or(0);
                let got = node.read_all(after, 50).await.unwrap();
                if got.is_empty() {
                    tokio::task::yield_now().await;
                }
                seen.extend(positions(&got));
            }
            seen
        }));
    }
    let mut writers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for w in 0..WRITERS {
            let node = node.clone();
            writers.push(tokio::spawn(async move {
                let name = stream(&format!("stress:{n}:{w}"));
                let mut version = 0;
                for i in 0..APPENDS_PER_WRITER {
                    let events = (0..events_in_append(i)).map(|_| claim(i as u128)).collect::<Vec<_>>();
                    let k = events.len() as u64;
                    node.append(vec![StreamAppend::new(name.clone(), ExpectedVersion::Exact(version), events)])
                        .await
                        .unwrap();
                    version += k;
                }
            }));
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    let all = positions(&b.store.read_all(0, 100_000).await.unwrap());
    assert_eq!(all.len(), total);
    for watcher in watchers {
        let seen = tokio::time::timeout(Duration::from_secs(60), watcher).await.expect("subscriber finishes").unwrap();
        assert_eq!(seen, all, "every event exactly once, in position order");
    }
    for node in nodes.iter().skip(1) {
        node.shutdown().await;
    }
}

/// Reads and writes whose pooled connection the database dropped run again on
/// a fresh one: the caller never sees the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reads_and_writes_survive_connections_dropped_under_them() {
    let Some(db) = PgDatabase::create().await else { return };
    let proxy = natter_tests::PgRelay::start(&db).await;
    let through = proxy.url().to_owned();
    let mut config = pg_config(&through);
    config.readers = 1;
    let store: Arc<dyn Store> = Arc::new(PostgresStore::open(&config).await.unwrap());
    let w = populate(&store).await;
    assert_eq!(store.user_by_id(w.bob).await.unwrap().unwrap().user_id, w.bob);
    for round in 0..3 {
        proxy.cut();
        let user = store.user_by_id(w.alice).await.unwrap().unwrap();
        assert_eq!(user.user_id, w.alice, "round {round}");
        proxy.cut();
        let head = store.head().await.unwrap();
        proxy.cut();
        let next = append_one(&store, stream(&format!("s:after-cut{round}")), claim(500 + round)).await;
        assert_eq!(next.position, head + 1);
    }
    store.shutdown().await;
}

/// The admin role, disabled accounts, and the admin's list of accounts.
async fn admin_read_models_answer(b: &Backend) {
    let s = &b.store;
    let w = populate(s).await;
    let mut expected = Vec::new();
    for u in [w.alice, w.bob, w.carol] {
        let user = s.user_by_id(u).await.unwrap().unwrap();
        assert!(!user.admin && !user.disabled);
        let sessions = s.sessions_of(u).await.unwrap().len() as u32;
        expected.push((user.created_at, u.to_string(), sessions));
    }
    expected.sort();
    let page = s.users_page(None, None, 100).await.unwrap();
    let got: Vec<_> = page.iter().map(|e| (e.user.created_at, e.user.user_id.to_string(), e.sessions)).collect();
    assert_eq!(got, expected, "in the order made, with their live sessions");
    // Paged by (created, id): each page starts after the last one.
    let first = s.users_page(None, None, 1).await.unwrap();
    let after = (first[0].user.created_at, first[0].user.user_id);
    let second = s.users_page(None, Some(after), 1).await.unwrap();
    assert_eq!(second[0].user.user_id.to_string(), expected[1].1);
    let last = (page[2].user.created_at, page[2].user.user_id);
    assert!(s.users_page(None, Some(last), 10).await.unwrap().is_empty());
    // By the start of the email or of the lower-cased name.
    let carol = s.users_page(Some("car".into()), None, 10).await.unwrap();
    assert_eq!(carol.iter().map(|e| e.user.user_id).collect::<Vec<_>>(), [w.carol]);
    assert!(s.users_page(Some("zz".into()), None, 10).await.unwrap().is_empty());
    assert!(s.users_page(Some("%".into()), None, 10).await.unwrap().is_empty(), "no wildcards");

    // The groups, with their current members; by the start of the name.
    let groups = s.groups_page(None, None, 10).await.unwrap();
    let hikers = groups.iter().find(|g| g.conversation_id == w.group).expect("the group is listed (renamed summit)");
    let state = s.conversation(w.group).await.unwrap().unwrap();
    assert_eq!(
        (hikers.name.as_str(), hikers.members as usize, hikers.created_at, hikers.last_seq, hikers.e2ee),
        (state.name.as_deref().unwrap(), state.members.len(), Millis(30), state.version, false)
    );
    assert!(groups.iter().all(|g| g.conversation_id != w.dm), "no direct conversations");
    assert_eq!(s.groups_page(Some("SUM".to_lowercase()), None, 10).await.unwrap().len(), 1);
    assert!(s.groups_page(Some("zz".into()), None, 10).await.unwrap().is_empty());
    let after = (hikers.created_at, hikers.conversation_id);
    assert!(s.groups_page(Some("sum".into()), Some(after), 10).await.unwrap().is_empty(), "paged past it");

    let events = [
        (w.bob, Event::AdminGranted { user_id: w.bob, by: None, at: Millis(80) }),
        (w.carol, Event::AccountDisabled { user_id: w.carol, by: Some(w.bob), at: Millis(81) }),
        (w.alice, Event::AdminGranted { user_id: w.alice, by: Some(w.bob), at: Millis(82) }),
        (w.alice, Event::AdminRevoked { user_id: w.alice, by: Some(w.bob), at: Millis(83) }),
    ];
    for (user, event) in events {
        append_one(s, StreamName::user(user), NewEvent::fresh(event)).await;
    }
    let audit = Event::AdminActed(natter_server::domain::AdminAction {
        actor: Some(w.bob),
        action: "disable".into(),
        target: w.carol,
        detail: "why".into(),
        from: "192.0.2.1".into(),
        at: Millis(81),
    });
    append_one(s, StreamName::audit(), NewEvent::fresh(audit.clone())).await;
    let flags = |u: &natter_server::store::UserRecord| (u.admin, u.disabled);
    assert_eq!(flags(&s.user_by_id(w.bob).await.unwrap().unwrap()), (true, false));
    assert_eq!(flags(&s.user_by_id(w.carol).await.unwrap().unwrap()), (false, true));
    assert_eq!(flags(&s.user_by_id(w.alice).await.unwrap().unwrap()), (false, false), "granted, then withdrawn");
    let listed = s.users_page(Some("carol".into()), None, 10).await.unwrap();
    assert!(listed[0].user.disabled);
    let trail = s.read_stream(&StreamName::audit(), 0, 10).await.unwrap();
    assert_eq!(trail.iter().map(|r| &r.event).collect::<Vec<_>>(), [&audit]);
    let enabled = Event::AccountEnabled { user_id: w.carol, by: None, at: Millis(84) };
    append_one(s, StreamName::user(w.carol), NewEvent::fresh(enabled)).await;
    assert_eq!(flags(&s.user_by_id(w.carol).await.unwrap().unwrap()), (false, false));
}
