//! Full-text search through the protocol (the tantivy backend): what is
//! found, how it is ordered, grouped and paged, and — above all — that only
//! messages the searcher may read are ever found.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use natter_client::proto;
use natter_client::{Client, ClientError};
use natter_proto::ErrorCode;
use natter_tests::{ChildServer, TestServer, CHILD_ENV, PASSWORD};

use crate::crash::free_udp_port;

/// New messages become searchable this soon in these tests.
const COMMIT_MS: u64 = 50;

async fn server() -> TestServer {
    TestServer::start_with(|c| c.search.commit_interval_ms = COMMIT_MS).await
}

fn query(text: &str) -> proto::Search {
    proto::Search { query: text.into(), ..Default::default() }
}

/// Searches until `done` holds of the results (the index commits every
/// `COMMIT_MS`; a server still building its index answers UNAVAILABLE).
async fn search_until(
    client: &Client,
    req: proto::Search,
    mut done: impl FnMut(&proto::SearchResults) -> bool,
) -> proto::SearchResults {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let last = match client.search(req.clone()).await {
            Ok(r) if done(&r) => return r,
            Ok(r) => format!("{r:?}"),
            Err(e) if e.code() == Some(ErrorCode::UNAVAILABLE) => e.to_string(),
            Err(e) => panic!("search {:?}: {e}", req.query),
        };
        assert!(Instant::now() < deadline, "search {:?} never got there; last: {last}", req.query);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (conversation, seq) of every hit.
fn hits(r: &proto::SearchResults) -> Vec<(String, u64)> {
    r.groups.iter().flat_map(|g| g.hits.iter().map(|h| (g.conversation_id.clone(), h.seq))).collect()
}

fn snippets(r: &proto::SearchResults) -> Vec<String> {
    r.groups.iter().flat_map(|g| g.hits.iter().map(|h| h.snippet.clone())).collect()
}

/// The marked parts of every snippet.
fn marked(r: &proto::SearchResults) -> Vec<String> {
    r.groups
        .iter()
        .flat_map(|g| g.hits.iter())
        .flat_map(|h| h.highlights.iter().map(|m| h.snippet[m.start as usize..m.end as usize].to_owned()))
        .collect()
}

/// Every page of `req` (`limit` hits each), in order.
async fn all_pages(client: &Client, mut req: proto::Search) -> Vec<proto::SearchResults> {
    let mut pages = Vec::new();
    loop {
        let page = client.search(req.clone()).await.unwrap();
        let next = page.next_cursor.clone();
        pages.push(page);
        if next.is_empty() {
            return pages;
        }
        req.cursor = next;
    }
}

/// Sends `text` and waits until `client` finds it by `marker` (a word only it has).
async fn send_and_index(client: &Client, conversation: &str, id: &str, text: &str, marker: &str) -> u64 {
    let seq = client.send_text(conversation, id, text).await.unwrap().seq;
    search_until(client, query(&format!("{marker} ")), |r| hits(r).iter().any(|h| h.0 == conversation && h.1 == seq))
        .await;
    seq
}

#[tokio::test]
async fn words_phrases_prefixes_accents_and_cjk_are_found_with_their_matches_marked() {
    let server = server().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let texts = [
        "The quick brown fox jumps over the lazy dog",
        "A brown quick fox is not the same",
        "Meet me at the Café Noir on Friday",
        "明天我们在東京都见面",
        "회의는 서울에서 합니다",
        "Lunch at the marketplace?",
    ];
    let mut seqs = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        seqs.push(alice.send_text(&dm, &format!("m{i}"), t).await.unwrap().seq);
    }
    // Bob finds the last message, so every earlier one is indexed too.
    search_until(&bob, query("marketplace "), |r| hits(r).len() == 1).await;

    // Every word must match, in any order, any case.
    let r = bob.search(query("FOX quick ")).await.unwrap();
    assert_eq!(hits(&r).iter().map(|h| h.1).collect::<HashSet<_>>(), HashSet::from([seqs[0], seqs[1]]));
    // A phrase: next to each other, in this order.
    let r = bob.search(query("\"quick brown\"")).await.unwrap();
    assert_eq!(snippets(&r), [texts[0]]);
    assert_eq!(marked(&r), ["quick", "brown"]);
    // The last word as it is being typed.
    let r = bob.search(query("lazy do")).await.unwrap();
    assert_eq!(marked(&r), ["lazy", "dog"]);
    let r = bob.search(query("market")).await.unwrap();
    assert_eq!(marked(&r), ["marketplace"]);
    assert!(hits(&bob.search(query("market ")).await.unwrap()).is_empty(), "a finished word is a whole word");
    // Accents fold both ways.
    let r = bob.search(query("cafe ")).await.unwrap();
    assert_eq!(marked(&r), ["Café"]);
    assert_eq!(hits(&bob.search(query("CAFÉ noir")).await.unwrap()).len(), 1);
    // Chinese, Japanese and Korean words inside unspaced text.
    let r = bob.search(query("東京都")).await.unwrap();
    assert_eq!(marked(&r), ["東京都"]);
    assert_eq!(hits(&bob.search(query("서울")).await.unwrap()).len(), 1);
    assert!(hits(&bob.search(query("京東")).await.unwrap()).is_empty());
    // No word is dropped: one that matches nothing means no hits.
    assert!(hits(&bob.search(query("quick fox zebra ")).await.unwrap()).is_empty());

    // Each hit says who sent it, when and where.
    let r = bob.search(query("friday ")).await.unwrap();
    assert_eq!(r.groups.len(), 1);
    assert_eq!(r.groups[0].conversation_id, dm);
    let hit = &r.groups[0].hits[0];
    assert_eq!((hit.seq, hit.sender_email.as_str()), (seqs[2], "alice@example.org"));
    assert_eq!(hit.sender_user_id, alice.identity().unwrap().user_id);
    assert!(hit.at_ms > 0);
}

#[tokio::test]
async fn bad_requests_get_typed_errors() {
    let server = server().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (carol, _) = server.new_user("carol@example.org").await;
    server.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;

    let code = |r: Result<proto::SearchResults, ClientError>| r.unwrap_err().code();
    let anonymous = server.client().await;
    assert_eq!(code(anonymous.search(query("hello")).await), Some(ErrorCode::UNAUTHENTICATED));
    for bad in ["", "   ", "!!!", "\"unclosed phrase", &"word ".repeat(17), &"x".repeat(513)] {
        assert_eq!(code(alice.search(query(bad)).await), Some(ErrorCode::INVALID_ARGUMENT), "{bad:?}");
    }
    let with = |f: &dyn Fn(&mut proto::Search)| {
        let mut q = query("hello");
        f(&mut q);
        q
    };
    for req in [
        with(&|q| q.limit = 51),
        with(&|q| q.cursor = "garbage".into()),
        with(&|q| q.cursor = "o1000000".into()),
        with(&|q| q.conversation_id = "not-a-uuid".into()),
        with(&|q| {
            q.after_ms = 10;
            q.before_ms = 5;
        }),
    ] {
        assert_eq!(code(alice.search(req.clone()).await), Some(ErrorCode::INVALID_ARGUMENT), "{req:?}");
    }
    let bad_email = with(&|q| q.from_email = "not an email".into());
    assert_eq!(code(alice.search(bad_email).await), Some(ErrorCode::INVALID_EMAIL));
    // Someone else's conversation, and one that does not exist.
    assert_eq!(code(carol.search(with(&|q| q.conversation_id = dm.clone())).await), Some(ErrorCode::NOT_A_MEMBER));
    let nowhere = uuid::Uuid::new_v4().to_string();
    assert_eq!(code(carol.search(with(&|q| q.conversation_id = nowhere.clone())).await), Some(ErrorCode::NOT_FOUND));
    // An unknown sender wrote nothing.
    assert!(alice.search(with(&|q| q.from_email = "nobody@example.org".into())).await.unwrap().groups.is_empty());
}

#[tokio::test]
async fn only_what_the_searcher_may_read_is_found() {
    let server = server().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let (carol, _) = server.new_user("carol@example.org").await;
    let (dave, _) = server.new_user("dave@example.org").await;
    let (eve, _) = server.new_user("eve@example.org").await;
    let user = |c: &Client| c.identity().unwrap().user_id;

    // Many messages bob may never read, ranked like his: they must not
    // crowd his one hit off a page.
    let secret = alice.open_direct("eve@example.org").await.unwrap().conversation_id;
    for i in 0..30 {
        alice.send_text(&secret, &format!("s{i}"), "pineapple secret").await.unwrap();
    }
    let group = alice.create_group("fruit", &["bob@example.org", "carol@example.org"]).await.unwrap().conversation_id;
    let one = alice.send_text(&group, "g1", "pineapple one").await.unwrap().seq;
    alice.remove_member(&group, &user(&bob)).await.unwrap();
    let two = alice.send_text(&group, "g2", "pineapple two").await.unwrap().seq;
    carol.leave(&group).await.unwrap();
    let three = alice.send_text(&group, "g3", "pineapple three").await.unwrap().seq;
    alice.add_members(&group, &["dave@example.org"]).await.unwrap();
    search_until(&eve, proto::Search { limit: 50, ..query("pineapple ") }, |r| hits(r).len() == 30).await;
    search_until(&alice, query("three "), |r| hits(r).len() == 1).await;

    let found = |r: &proto::SearchResults| {
        let mut h: Vec<u64> = hits(r).into_iter().filter(|h| h.0 == group).map(|h| h.1).collect();
        h.sort_unstable();
        h
    };
    let one_page = |limit| proto::Search { query: "pineapple ".into(), limit, ..Default::default() };
    // Removed before "two": finds only what came before; a page of one is his.
    let r = bob.search(one_page(1)).await.unwrap();
    assert_eq!(hits(&r), [(group.clone(), one)]);
    assert!(r.next_cursor.is_empty(), "nothing else is bob's to find");
    // Left after "two".
    assert_eq!(found(&carol.search(one_page(50)).await.unwrap()), [one, two]);
    // A member now reads the group's history, as GetHistory gives it.
    assert_eq!(found(&dave.search(one_page(50)).await.unwrap()), [one, two, three]);
    assert_eq!(found(&alice.search(one_page(50)).await.unwrap()), [one, two, three]);
    // Nobody but alice and eve finds the direct conversation.
    for c in [&bob, &carol, &dave] {
        let r = c.search(one_page(50)).await.unwrap();
        assert!(r.groups.iter().all(|g| g.conversation_id != secret));
    }
    // Narrowing to a conversation keeps the same rule.
    let in_group = proto::Search { conversation_id: group.clone(), ..one_page(50) };
    assert_eq!(found(&bob.search(in_group.clone()).await.unwrap()), [one]);
    assert_eq!(found(&carol.search(in_group).await.unwrap()), [one, two]);
    // By sender.
    let from_eve = proto::Search { from_email: "eve@example.org".into(), ..one_page(50) };
    assert!(alice.search(from_eve).await.unwrap().groups.is_empty());
    let from_alice = proto::Search { from_email: "alice@example.org".into(), ..one_page(50) };
    assert_eq!(hits(&eve.search(from_alice).await.unwrap()).len(), 30);
}

#[tokio::test]
async fn results_are_grouped_and_paged_without_gaps_or_repeats() {
    let server = server().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    server.new_user("bob@example.org").await;
    server.new_user("carol@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let group = alice.create_group("plans", &["bob@example.org", "carol@example.org"]).await.unwrap().conversation_id;
    let mut sent = HashSet::new();
    for i in 0..23 {
        let (conv, text) = if i % 3 == 0 {
            (&group, format!("harbour trip {i}"))
        } else {
            (&dm, format!("the harbour, the harbour, again {i}"))
        };
        sent.insert((conv.clone(), alice.send_text(conv, &format!("h{i}"), &text).await.unwrap().seq));
    }
    search_until(&alice, proto::Search { limit: 50, ..query("harbour ") }, |r| hits(r).len() == 23).await;

    let pages = all_pages(&alice, proto::Search { limit: 5, ..query("harbour ") }).await;
    assert_eq!(pages.len(), 5);
    let mut seen = Vec::new();
    for page in &pages {
        let n: usize = page.groups.iter().map(|g| g.hits.len()).sum();
        assert!(n == 5 || page.next_cursor.is_empty(), "only the last page is short");
        // One group per conversation within a page, named when a group.
        let ids: Vec<&String> = page.groups.iter().map(|g| &g.conversation_id).collect();
        assert_eq!(ids.len(), ids.iter().collect::<HashSet<_>>().len());
        for g in &page.groups {
            assert_eq!(g.name, if g.conversation_id == group { "plans" } else { "" });
        }
        seen.extend(hits(page));
    }
    assert_eq!(seen.len(), 23, "no repeats");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), sent, "no gaps");
    // Relevance first: the messages that say it twice, in short text, rank
    // above the group's; equally relevant ones newest first.
    let first = &pages[0].groups[0];
    assert_eq!(first.conversation_id, dm);
    let seqs: Vec<u64> = first.hits.iter().map(|h| h.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "newest first among equals: {seqs:?}");
    assert_eq!(hits(pages.last().unwrap()).last().unwrap().0, group);

    // Time bounds.
    let every = hits(&alice.search(proto::Search { limit: 50, ..query("harbour ") }).await.unwrap());
    assert_eq!(every.len(), 23);
    let far_future = proto::Search { after_ms: u64::MAX - 1, limit: 50, ..query("harbour ") };
    assert!(alice.search(far_future).await.unwrap().groups.is_empty());
    let before_now = proto::Search { before_ms: u64::MAX - 1, limit: 50, ..query("harbour ") };
    assert_eq!(hits(&alice.search(before_now).await.unwrap()).len(), 23);
}

#[tokio::test]
async fn the_index_resumes_after_a_restart_and_is_rebuilt_when_deleted_or_damaged() {
    let mut server = server().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, bob_token) = server.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let seq = send_and_index(&alice, &dm, "a", "lighthouse keeper", "lighthouse").await;
    drop((alice, bob));

    server.restart().await;
    let bob = server.resume(&bob_token).await;
    let r = search_until(&bob, query("keeper "), |r| !r.groups.is_empty()).await;
    assert_eq!(hits(&r), [(dm.clone(), seq)], "found once after a restart");
    drop(bob);

    server.stop().await;
    std::fs::remove_dir_all(server.data_dir().join("search")).unwrap();
    server.restart().await;
    let bob = server.resume(&bob_token).await;
    let r = search_until(&bob, query("keeper "), |r| !r.groups.is_empty()).await;
    assert_eq!(hits(&r), [(dm.clone(), seq)], "rebuilt from the log");
    drop(bob);

    server.stop().await;
    let meta = server.data_dir().join("search/tantivy-v1/meta.json");
    std::fs::write(&meta, b"{ not json").unwrap();
    server.restart().await;
    let bob = server.resume(&bob_token).await;
    let r = search_until(&bob, query("keeper "), |r| !r.groups.is_empty()).await;
    assert_eq!(hits(&r), [(dm, seq)], "a damaged index is set aside and rebuilt");
    let aside = std::fs::read_dir(server.data_dir().join("search"))
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with("tantivy-v1.unreadable-"));
    assert!(aside, "the damaged index is kept for the operator, not deleted");
}

#[tokio::test]
async fn kill_9_while_indexing_leaves_a_complete_index_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_udp_port();
    let mut env = CHILD_ENV.to_vec();
    // Commits far apart: the kill lands between two.
    env.push(("NATTER_SEARCH_COMMIT_INTERVAL_MS", "400"));
    let mut node = ChildServer::spawn_with_env(&crate::natterd(), dir.path(), addr, &env);
    let alice = Client::connect(&node.client_config()).await.unwrap();
    alice.signup("alice@example.org", PASSWORD, "").await.unwrap();
    alice.login("alice@example.org", PASSWORD, "d").await.unwrap();
    let bob = Client::connect(&node.client_config()).await.unwrap();
    bob.signup("bob@example.org", PASSWORD, "").await.unwrap();
    let (token, _) = bob.login("bob@example.org", PASSWORD, "d").await.unwrap();
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    // Some messages committed to the index, then more that are not yet.
    let mut sent = HashSet::new();
    for i in 0..150 {
        sent.insert(alice.send_text(&dm, &format!("k{i}"), &format!("tidal wave {i}")).await.unwrap().seq);
    }
    search_until(&bob, query("tidal "), |r| !r.groups.is_empty()).await;
    let sends = (150..300).map(|i| {
        let (alice, dm) = (&alice, &dm);
        async move { alice.send_text(dm, &format!("k{i}"), &format!("tidal wave {i}")).await.unwrap().seq }
    });
    sent.extend(futures::future::join_all(sends).await);
    node.kill9();

    let node = ChildServer::spawn_with_env(&crate::natterd(), dir.path(), addr, &env);
    let mut config = node.client_config();
    config.session_token = Some(token);
    let bob = Client::connect(&config).await.unwrap();
    let full = proto::Search { limit: 50, ..query("tidal ") };
    search_until(&bob, proto::Search { cursor: "o299".into(), ..full.clone() }, |r| !r.groups.is_empty()).await;
    let seen: Vec<u64> = all_pages(&bob, full).await.iter().flat_map(|p| hits(p).into_iter().map(|h| h.1)).collect();
    let distinct: HashSet<u64> = seen.iter().copied().collect();
    assert_eq!(seen.len(), 300, "each message once");
    assert_eq!(distinct, sent, "every message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_each_index_the_shared_log_and_answer_alike() {
    let Some(db) = natter_tests::PgDatabase::create().await else { return };
    let tweak = |c: &mut natter_server::config::Config| c.search.commit_interval_ms = COMMIT_MS;
    let node_a = TestServer::start_postgres_with(&db, tweak).await;
    let node_b = TestServer::start_postgres_with(&db, tweak).await;
    let (alice, _) = node_a.new_user("alice@example.org").await;
    let (bob, bob_token) = node_b.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    for i in 0..12 {
        let (who, text) = if i % 2 == 0 { (&alice, "ferry to the island") } else { (&bob, "the island ferry, again") };
        who.send_text(&dm, &format!("n{i}"), &format!("{text} {i}")).await.unwrap();
    }
    let req = proto::Search { limit: 50, ..query("island ferr") };
    let on_b = search_until(&bob, req.clone(), |r| hits(r).len() == 12).await;
    // Bob on node A: the same answer from the other node's own index.
    let bob_on_a = node_a.resume(&bob_token).await;
    let on_a = search_until(&bob_on_a, req, |r| hits(r).len() == 12).await;
    assert_eq!(on_a, on_b);
    // Each node keeps its own index.
    assert!(node_a.data_dir().join("search/tantivy-v1/meta.json").exists());
    assert!(node_b.data_dir().join("search/tantivy-v1/meta.json").exists());
    assert_ne!(node_a.data_dir(), node_b.data_dir());
}

#[tokio::test]
async fn natter_admin_reindex_rebuilds_a_stopped_nodes_index_from_the_log() {
    let mut server = server().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (_, bob_token) = server.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let mut sent = HashSet::new();
    for i in 0..40 {
        sent.insert(alice.send_text(&dm, &format!("r{i}"), &format!("orchard {i}")).await.unwrap().seq);
    }
    search_until(&alice, proto::Search { limit: 50, ..query("orchard ") }, |r| hits(r).len() == 40).await;
    let data_dir = server.data_dir().to_owned();
    let reindex = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_natter-admin-under-test"))
            .arg("reindex")
            .arg("--data-dir")
            .arg(&data_dir)
            .env_remove("NATTER_SEARCH_BACKEND")
            .output()
            .unwrap()
    };
    let busy = reindex();
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("natterd is running on"), "{busy:?}");
    drop(alice);
    server.stop().await;
    // Damage the index: reindex replaces it whatever state it is in.
    std::fs::write(server.data_dir().join("search/tantivy-v1/meta.json"), b"garbage").unwrap();

    let out = reindex();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("search index rebuilt: 40 messages of"), "{said}");

    server.restart().await;
    let bob = server.resume(&bob_token).await;
    // Caught up at once: everything is in the index already.
    let r = bob.search(proto::Search { limit: 50, ..query("orchard ") }).await.unwrap();
    assert_eq!(hits(&r).into_iter().map(|h| h.1).collect::<HashSet<_>>(), sent);
}

#[tokio::test]
async fn the_directory_finds_own_groups_and_contacts_by_prefix_and_strangers_only_by_exact_email() {
    let server = server().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let bob = server.client().await;
    bob.signup("bob@example.org", PASSWORD, "Bob Marlowe").await.unwrap();
    bob.login("bob@example.org", PASSWORD, "d").await.unwrap();
    let stranger = server.client().await;
    stranger.signup("bobby@example.net", PASSWORD, "Bobby Stranger").await.unwrap();
    let (carol, _) = server.new_user("carol@example.org").await;
    let team = alice.create_group("Bob's fan club", &["bob@example.org", "carol@example.org"]).await.unwrap();
    let other = carol.create_group("Robots", &["bob@example.org"]).await.unwrap();

    let found = alice.search_directory("bo", 0).await.unwrap();
    let groups: Vec<&str> = found.conversations.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(groups, ["Bob's fan club"], "her group, never carol's");
    let people: Vec<&str> = found.people.iter().map(|p| p.email.as_str()).collect();
    assert_eq!(people, ["bob@example.org"], "a contact by name prefix; the stranger is not listed");
    assert_eq!(found.people[0].display_name, "Bob Marlowe");
    // A later word, accents folded, an email prefix.
    assert_eq!(alice.search_directory("MARLÖ", 0).await.unwrap().people.len(), 1);
    assert_eq!(alice.search_directory("carol@ex", 0).await.unwrap().people[0].email, "carol@example.org");
    assert_eq!(alice.search_directory("fan", 0).await.unwrap().conversations[0].conversation_id, team.conversation_id);
    // The stranger only by their exact address.
    assert!(alice.search_directory("bobby@example.ne", 0).await.unwrap().people.is_empty());
    let exact = alice.search_directory("Bobby@Example.net", 0).await.unwrap();
    assert_eq!(exact.people.iter().map(|p| p.email.as_str()).collect::<Vec<_>>(), ["bobby@example.net"]);
    // Bob sees both his groups; nobody finds themselves.
    let found = bob.search_directory("ro", 0).await.unwrap();
    assert_eq!(found.conversations.iter().map(|c| &c.conversation_id).collect::<Vec<_>>(), [&other.conversation_id]);
    assert!(bob.search_directory("bob", 0).await.unwrap().people.iter().all(|p| p.email != "bob@example.org"));

    let code = |r: Result<proto::DirectoryResults, ClientError>| r.unwrap_err().code();
    assert_eq!(code(server.client().await.search_directory("bo", 0).await), Some(ErrorCode::UNAUTHENTICATED));
    assert_eq!(code(alice.search_directory("  ", 0).await), Some(ErrorCode::INVALID_ARGUMENT));
    assert_eq!(code(alice.search_directory("bo", 51).await), Some(ErrorCode::INVALID_ARGUMENT));
    assert_eq!(code(alice.search_directory(&"b".repeat(255), 0).await), Some(ErrorCode::INVALID_ARGUMENT));
}
