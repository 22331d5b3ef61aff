//! A person's data as files: `natter account export` through their session
//! and `natter-admin users export` on the store write the same messages.

use natter_client::export::{export, ClientSource};
use natter_tests::TestServer;

#[tokio::test]
async fn a_persons_export_holds_what_they_sent_and_nobody_elses_words() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let group = bob.create_group("Walks", &["alice@example.org"]).await.unwrap().conversation_id;
    alice.send_text(&dm, "a1", "ALICE-SAID-ONE").await.unwrap();
    // More than one history page (500) of hers.
    for i in 0..510 {
        alice.send_text(&dm, &format!("bulk-{i}"), &format!("bulk {i}")).await.unwrap();
    }
    bob.send_text(&dm, "b1", "BOB-SAID-THIS").await.unwrap();
    alice.send_text(&group, "a2", "ALICE-SAID-TWO").await.unwrap();
    let file = natter_tests::pdf_with("ALICE-FILE");
    let media = natter_tests::upload_bytes(&alice, &group, "route.pdf", &file).await;
    alice.send_media(&group, "a3", &media.media_id, "the route").await.unwrap();
    alice.leave(&group).await.unwrap();
    bob.send_text(&group, "b2", "AFTER-ALICE-LEFT").await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("mine");
    let report = export(&mut ClientSource { client: &alice }, &mine).await.unwrap();
    assert_eq!((report.conversations, report.messages, report.files), (2, 513, 1));
    let lines = std::fs::read_to_string(mine.join("messages.jsonl")).unwrap();
    for said in ["ALICE-SAID-ONE", "ALICE-SAID-TWO", "the route", "\"bulk 0\"", "\"bulk 509\""] {
        assert!(lines.contains(said), "{said} in {lines}");
    }
    assert!(!lines.contains("BOB-SAID") && !lines.contains("AFTER-ALICE"), "only what she sent: {lines}");
    let with_file: serde_json::Value = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v.get("media").is_some())
        .unwrap();
    let rel = with_file["media"]["file"].as_str().unwrap();
    assert!(rel.starts_with("media/") && !rel.contains(".."), "{rel}");
    assert_eq!(std::fs::read(mine.join(rel)).unwrap(), file);
    let profile: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mine.join("profile.json")).unwrap()).unwrap();
    assert_eq!(profile["email"], "alice@example.org");
    assert_eq!(profile["sessions"].as_array().unwrap().len(), 1);
    let e = export(&mut ClientSource { client: &alice }, &mine).await.unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");

    // The operator's export, from the store beside the running natterd: the
    // same messages and files.
    let theirs = dir.path().join("theirs");
    let admin = natter_admin::export::export(server.config(), "alice@example.org", &theirs).await.unwrap();
    assert_eq!(admin, report);
    assert_eq!(std::fs::read_to_string(theirs.join("messages.jsonl")).unwrap(), lines);
    assert_eq!(std::fs::read(theirs.join(rel)).unwrap(), file);
    let profile: serde_json::Value =
        serde_json::from_slice(&std::fs::read(theirs.join("profile.json")).unwrap()).unwrap();
    assert!(profile["created_at_ms"].as_u64().unwrap() > 0);
    let e =
        natter_admin::export::export(server.config(), "nobody@example.org", &dir.path().join("x")).await.unwrap_err();
    assert!(format!("{e:#}").contains("no account"), "{e:#}");
}
