//! The generic store suite: the same checks against every `Store` implementation.

use std::collections::BTreeSet;

use anyhow::{Result, ensure};
use parley_client_api::http::chats::ChatKind;
use parley_client_api::{BlobHash, ChatId, DeviceId, UserId};
use parley_homeserver::store::fed::FedStore;
use parley_homeserver::store::pg::PgStore;
use parley_homeserver::store::sqlite::SqliteStore;
use parley_homeserver::store::{
    AckRequest, InboxItem, NewChat, NewDevice, NewUser, SendOutcome, SendRequest, Store, StoreError,
};

fn u(s: &str) -> UserId {
    UserId::try_from(format!("@{s}:x.test")).unwrap()
}
fn d(s: &str) -> DeviceId {
    DeviceId::try_from(s).unwrap()
}

pub async fn on_sqlite(f: impl AsyncFnOnce(SqliteStore) -> Result<()>) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store =
        SqliteStore::connect(&format!("sqlite://{}", dir.path().join("s.db").display())).await?;
    f(store).await
}

pub async fn on_postgres(f: impl AsyncFnOnce(PgStore) -> Result<()>) -> Result<()> {
    let db = parley_testkit::postgres().await?;
    let store = PgStore::connect(db.url(), 8).await?;
    f(store).await
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite_store { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::on_sqlite(super::$name).await.unwrap() } )* }
        mod postgres_store { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::on_postgres(super::$name).await.unwrap() } )* }
    };
}

suite!(
    users_and_devices,
    sends_are_sequenced_deduplicated_and_fanned_out,
    concurrent_batches_stay_gap_free,
    acks_raise_receipts_once_and_notify_senders,
    retention_purges_old_rows,
    a_resend_among_new_sends_keeps_seqs_gap_free,
    one_ack_batch_of_several_devices_deletes_only_their_own_items,
    blobs_know_their_senders_and_the_servers_they_reach,
);

async fn setup<S: Store>(s: &S, users: &[(&str, &[&str])]) -> Result<()> {
    for (name, devices) in users {
        s.create_user(&NewUser {
            user_id: u(name),
            localpart: (*name).into(),
            password_hash: "h".into(),
            created_at: 1,
        })
        .await?;
        for (i, dev) in devices.iter().enumerate() {
            let mut hash = [0u8; 32];
            hash[..dev.len()].copy_from_slice(dev.as_bytes());
            hash[31] = i as u8;
            s.create_device(&NewDevice {
                device_id: d(dev),
                user_id: u(name),
                display_name: None,
                token_hash: hash,
                created_at: 1,
            })
            .await?;
        }
    }
    Ok(())
}

async fn chat<S: Store>(s: &S, id: &str, members: &[&str]) -> Result<ChatId> {
    let chat_id = ChatId::try_from(format!("!{id}:x.test"))?;
    let (got, created) = s
        .create_chat(&NewChat {
            followers: vec![],
            chat_id: chat_id.clone(),
            kind: if members.len() == 2 {
                ChatKind::Direct
            } else {
                ChatKind::Group
            },
            direct_key: (members.len() == 2).then(|| format!("{id}-key")),
            created_by: u(members[0]),
            members: members.iter().map(|m| u(m)).collect(),
            name: None,
            created_at: 5,
        })
        .await?;
    ensure!(got == chat_id && created);
    Ok(chat_id)
}

fn send(chat: &ChatId, user: &str, dev: &str, id: &str) -> SendRequest {
    SendRequest {
        chat_id: chat.clone(),
        sender: u(user),
        sender_device: d(dev),
        client_msg_id: id.into(),
        payload: id.as_bytes().to_vec(),
        ts: 100,
        mls: None,
        membership: None,
        blobs: Vec::new(),
        expires_in: None,
        read_receipts: None,
        group_info: None,
    }
}

async fn users_and_devices<S: Store>(s: S) -> Result<()> {
    setup(&s, &[("alice", &["A1", "A2"])]).await?;
    let dup = s
        .create_user(&NewUser {
            user_id: u("alice"),
            localpart: "alice".into(),
            password_hash: "x".into(),
            created_at: 2,
        })
        .await;
    ensure!(matches!(dup, Err(StoreError::Conflict(_))));
    ensure!(s.user_exists(&u("alice")).await? && !s.user_exists(&u("bob")).await?);
    ensure!(s.user_password("alice").await? == Some((u("alice"), "h".into())));
    let mut hash = [0u8; 32];
    hash[..2].copy_from_slice(b"A2");
    hash[31] = 1;
    ensure!(s.device_by_token(&hash).await? == Some((u("alice"), d("A2"))));
    ensure!(s.list_devices(&u("alice")).await?.len() == 2);
    ensure!(s.delete_device(&u("alice"), &d("A2")).await?);
    ensure!(!s.delete_device(&u("alice"), &d("A2")).await?);
    ensure!(s.device_by_token(&hash).await?.is_none());
    Ok(())
}

async fn sends_are_sequenced_deduplicated_and_fanned_out<S: Store>(s: S) -> Result<()> {
    setup(
        &s,
        &[("alice", &["A1", "A2"]), ("bob", &["B1"]), ("eve", &["E1"])],
    )
    .await?;
    let c = chat(&s, "c1", &["alice", "bob"]).await?;
    // The same pair's direct chat is found again, not created twice.
    let (again, created) = s
        .create_chat(&NewChat {
            followers: vec![],
            chat_id: ChatId::try_from("!other:x.test")?,
            kind: ChatKind::Direct,
            direct_key: Some("c1-key".into()),
            created_by: u("bob"),
            members: vec![u("bob"), u("alice")],
            name: None,
            created_at: 6,
        })
        .await?;
    ensure!(again == c && !created);

    let batch = [
        send(&c, "alice", "A1", "m1"),
        send(&c, "bob", "B1", "m2"),
        send(&c, "alice", "A1", "m1"),
        send(&c, "eve", "E1", "m3"),
    ];
    let out = s.commit_sends(&batch, 1024).await?;
    let SendOutcome::Committed {
        seq: 1, recipients, ..
    } = &out[0]
    else {
        anyhow::bail!("{out:?}")
    };
    let to: BTreeSet<&str> = recipients.iter().map(|(dv, _)| dv.as_str()).collect();
    ensure!(to == BTreeSet::from(["A2", "B1"]), "{to:?}");
    ensure!(matches!(out[1], SendOutcome::Committed { seq: 2, .. }));
    ensure!(matches!(out[2], SendOutcome::Duplicate { seq: 1, .. }));
    ensure!(out[3] == SendOutcome::NotMember);
    let out = s
        .commit_sends(&[send(&c, "alice", "A1", "m1")], 1024)
        .await?;
    ensure!(matches!(out[0], SendOutcome::Duplicate { seq: 1, ts: 100 }));

    let inbox = s.inbox_page(&d("B1"), 0, 10).await?;
    ensure!(
        inbox.len() == 1
            && matches!(&inbox[0], InboxItem::Event { event, .. } if event.seq == 1 && event.payload.0 == b"m1")
    );
    let a2: Vec<i64> = s
        .inbox_page(&d("A2"), 0, 10)
        .await?
        .iter()
        .map(|i| match i {
            InboxItem::Event { event, .. } => event.seq,
            _ => -1,
        })
        .collect();
    ensure!(a2 == vec![1, 2]);
    let chats = s.list_chats(&u("alice")).await?;
    ensure!(chats.len() == 1 && chats[0].last_seq == 2 && chats[0].unread_count == 1);
    ensure!(
        s.history(&c, 1, 10)
            .await?
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>()
            == vec![2]
    );
    Ok(())
}

async fn concurrent_batches_stay_gap_free<S: Store + Clone>(s: S) -> Result<()> {
    setup(&s, &[("alice", &["A1"]), ("bob", &["B1"])]).await?;
    let c = chat(&s, "c1", &["alice", "bob"]).await?;
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (s, c) = (s.clone(), c.clone());
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for b in 0..10 {
                let batch: Vec<_> = (0..5)
                    .map(|i| send(&c, "alice", "A1", &format!("t{t}b{b}i{i}")))
                    .collect();
                for o in s.commit_sends(&batch, 1024).await? {
                    if let SendOutcome::Committed { seq, .. } = o {
                        seqs.push(seq);
                    }
                }
            }
            anyhow::Ok(seqs)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_unstable();
    ensure!(all == (1..=200).collect::<Vec<_>>(), "gap or duplicate");
    ensure!(s.inbox_page(&d("B1"), 0, 500).await?.len() == 200);
    Ok(())
}

async fn acks_raise_receipts_once_and_notify_senders<S: Store + FedStore>(s: S) -> Result<()> {
    setup(&s, &[("alice", &["A1", "A2"]), ("bob", &["B1"])]).await?;
    let c = chat(&s, "c1", &["alice", "bob"]).await?;
    s.commit_sends(
        &[send(&c, "alice", "A1", "m1"), send(&c, "alice", "A1", "m2")],
        1024,
    )
    .await?;
    let ids = inbox_ids(&s, "B1").await?;
    let notices = s
        .commit_acks(
            &[AckRequest {
                user_id: u("bob"),
                device_id: d("B1"),
                ids: ids.clone(),
            }],
            200,
            true,
        )
        .await?;
    let to: BTreeSet<&str> = notices.iter().map(|n| n.device_id.as_str()).collect();
    ensure!(
        to == BTreeSet::from(["A1", "A2"])
            && notices
                .iter()
                .all(|n| n.receipt.delivered_seq == 2 && n.receipt.user_id == u("bob"))
    );
    ensure!(s.inbox_page(&d("B1"), 0, 10).await?.is_empty());
    // The raise is recorded for other servers, in the same commit.
    let recorded = s.receipt_fanout(100).await?;
    ensure!(
        recorded.iter().map(|(_, c, u)| (c, u)).collect::<Vec<_>>() == vec![(&c, &u("bob"))],
        "{recorded:?}"
    );
    // Acking again changes nothing, and records nothing.
    ensure!(
        s.commit_acks(
            &[AckRequest {
                user_id: u("bob"),
                device_id: d("B1"),
                ids
            }],
            201,
            true,
        )
        .await?
        .is_empty()
    );
    ensure!(s.receipt_fanout(100).await? == recorded);
    // Read: receipts for alice's devices replace the unacked delivered one (new id).
    let before = s.inbox_page(&d("A1"), 0, 10).await?;
    let read = s
        .mark_read(&c, &u("bob"), &d("B1"), 99, 300)
        .await?
        .unwrap_or_default();
    ensure!(
        read.iter().all(|n| n.receipt.read_seq == 2),
        "read is capped at last_seq"
    );
    let after = s.inbox_page(&d("A1"), 0, 10).await?;
    ensure!(after.len() == 1 && before.len() == 1 && after[0].id() > before[0].id());
    ensure!(
        s.mark_read(&c, &u("bob"), &d("B1"), 1, 301)
            .await?
            .unwrap_or_default()
            .is_empty(),
        "never goes back"
    );
    let (last, receipts) = s.receipts(&c).await?.unwrap_or_default();
    ensure!(last == 2);
    let bob = receipts.iter().find(|r| r.user_id == u("bob"));
    ensure!(bob.is_some_and(|r| r.delivered_seq == 2 && r.read_seq == 2));
    ensure!(
        s.mark_read(&c, &u("eve"), &d("B1"), 1, 302)
            .await?
            .is_none()
    );
    // A raise recorded after the records were read survives their removal.
    s.commit_sends(&[send(&c, "alice", "A1", "m3")], 1024)
        .await?;
    let ids = inbox_ids(&s, "B1").await?;
    s.commit_acks(
        &[AckRequest {
            user_id: u("bob"),
            device_id: d("B1"),
            ids,
        }],
        202,
        true,
    )
    .await?;
    s.receipt_fanout_done(&recorded.iter().map(|r| r.0).collect::<Vec<_>>())
        .await?;
    let left = s.receipt_fanout(100).await?;
    ensure!(
        left.len() == 1 && left[0].1 == c && left[0].2 == u("bob") && left[0].0 > recorded[0].0,
        "{left:?}"
    );
    s.receipt_fanout_done(&[left[0].0]).await?;
    ensure!(s.receipt_fanout(100).await?.is_empty());
    Ok(())
}

async fn retention_purges_old_rows<S: Store>(s: S) -> Result<()> {
    setup(&s, &[("alice", &["A1"]), ("bob", &["B1"])]).await?;
    let c = chat(&s, "c1", &["alice", "bob"]).await?;
    s.commit_sends(&[send(&c, "alice", "A1", "old")], 1024)
        .await?;
    let mut newer = send(&c, "alice", "A1", "new");
    newer.ts = 10_000;
    s.commit_sends(&[newer], 1024).await?;
    let purged = s.purge_expired(5_000).await?;
    ensure!(purged.events == 1 && purged.inbox_rows == 1, "{purged:?}");
    ensure!(s.inbox_page(&d("B1"), 0, 10).await?.len() == 1);
    Ok(())
}

/// The ids of the first items of a device's inbox.
async fn inbox_ids<S: Store>(s: &S, device: &str) -> Result<Vec<i64>> {
    Ok(s.inbox_page(&d(device), 0, 10)
        .await?
        .iter()
        .map(InboxItem::id)
        .collect())
}

fn event_seqs(items: &[InboxItem]) -> Vec<i64> {
    items
        .iter()
        .filter_map(|i| match i {
            InboxItem::Event { event, .. } => Some(event.seq),
            InboxItem::Receipt { .. } | InboxItem::SendResult { .. } => None,
        })
        .collect()
}

async fn a_resend_among_new_sends_keeps_seqs_gap_free<S: Store>(s: S) -> Result<()> {
    setup(&s, &[("alice", &["A1"]), ("bob", &["B1"])]).await?;
    let c = chat(&s, "c1", &["alice", "bob"]).await?;
    s.commit_sends(
        &[send(&c, "alice", "A1", "m1"), send(&c, "alice", "A1", "m2")],
        1024,
    )
    .await?;
    // A stored send (m1) between new ones, and a new one twice.
    let out = s
        .commit_sends(
            &[
                send(&c, "alice", "A1", "m3"),
                send(&c, "alice", "A1", "m1"),
                send(&c, "bob", "B1", "m4"),
                send(&c, "alice", "A1", "m3"),
            ],
            1024,
        )
        .await?;
    ensure!(
        matches!(out[0], SendOutcome::Committed { seq: 3, .. })
            && out[1] == SendOutcome::Duplicate { seq: 1, ts: 100 }
            && matches!(out[2], SendOutcome::Committed { seq: 4, .. })
            && out[3] == SendOutcome::Duplicate { seq: 3, ts: 100 },
        "{out:?}"
    );
    ensure!(event_seqs(&s.inbox_page(&d("B1"), 0, 10).await?) == vec![1, 2, 3]);
    ensure!(event_seqs(&s.inbox_page(&d("A1"), 0, 10).await?) == vec![4]);
    let seqs: Vec<i64> = s.history(&c, 0, 10).await?.iter().map(|e| e.seq).collect();
    ensure!(seqs == vec![1, 2, 3, 4], "{seqs:?}");
    Ok(())
}

async fn one_ack_batch_of_several_devices_deletes_only_their_own_items<S: Store>(
    s: S,
) -> Result<()> {
    setup(
        &s,
        &[("alice", &["A1"]), ("bob", &["B1"]), ("carol", &["C1"])],
    )
    .await?;
    let to_bob = chat(&s, "c1", &["alice", "bob"]).await?;
    let to_carol = chat(&s, "c2", &["alice", "carol"]).await?;
    s.commit_sends(
        &[
            send(&to_bob, "alice", "A1", "b1"),
            send(&to_carol, "alice", "A1", "c1"),
        ],
        1024,
    )
    .await?;
    let bobs = s.inbox_page(&d("B1"), 0, 10).await?[0].id();
    let carols = s.inbox_page(&d("C1"), 0, 10).await?[0].id();
    let ack = |user: &str, dev: &str, ids: Vec<i64>| AckRequest {
        user_id: u(user),
        device_id: d(dev),
        ids,
    };
    // Bob's device naming Carol's item, beside Carol's device in the same batch, removes
    // nothing of Carol's.
    let notices = s
        .commit_acks(
            &[
                ack("bob", "B1", vec![carols]),
                ack("carol", "C1", vec![bobs]),
            ],
            200,
            false,
        )
        .await?;
    ensure!(notices.is_empty(), "{notices:?}");
    ensure!(s.inbox_page(&d("B1"), 0, 10).await?.len() == 1);
    ensure!(s.inbox_page(&d("C1"), 0, 10).await?.len() == 1);

    let notices = s
        .commit_acks(
            &[
                ack("bob", "B1", vec![bobs]),
                ack("carol", "C1", vec![carols]),
            ],
            201,
            false,
        )
        .await?;
    let raised: BTreeSet<(String, String, i64)> = notices
        .iter()
        .map(|n| {
            (
                n.device_id.to_string(),
                n.receipt.user_id.to_string(),
                n.receipt.delivered_seq,
            )
        })
        .collect();
    ensure!(
        raised
            == BTreeSet::from([
                ("A1".into(), u("bob").to_string(), 1),
                ("A1".into(), u("carol").to_string(), 1),
            ]),
        "{raised:?}"
    );
    ensure!(s.inbox_page(&d("B1"), 0, 10).await?.is_empty());
    ensure!(s.inbox_page(&d("C1"), 0, 10).await?.is_empty());
    Ok(())
}

/// Where a blob is fetched from (the senders of events referring to it, in the asker's
/// chats) and which servers may fetch it (those with members in such a chat).
async fn blobs_know_their_senders_and_the_servers_they_reach<S: Store>(s: S) -> Result<()> {
    setup(&s, &[("alice", &["A1"]), ("eve", &["E1"])]).await?;
    let bob = UserId::try_from("@bob:y.test")?;
    let c = ChatId::try_from("!media:x.test")?;
    s.create_chat(&NewChat {
        followers: vec![],
        chat_id: c.clone(),
        kind: ChatKind::Direct,
        direct_key: Some("media-key".into()),
        created_by: u("alice"),
        members: vec![u("alice"), bob.clone()],
        name: None,
        created_at: 5,
    })
    .await?;
    let h = BlobHash::try_from("ab".repeat(32).as_str())?;
    s.finish_upload(&h, &u("alice"), 10, 1).await?;
    let mut m = send(&c, "alice", "A1", "m1");
    m.blobs = vec![h.clone(), h.clone()];
    let out = s.commit_sends(&[m], 1024).await?;
    ensure!(
        matches!(out[0], SendOutcome::Committed { seq: 1, .. }),
        "{out:?}"
    );

    ensure!(s.blob_senders(&h, &u("alice"), 4).await? == vec![u("alice")]);
    ensure!(s.blob_senders(&h, &bob, 4).await? == vec![u("alice")]);
    ensure!(s.blob_senders(&h, &u("eve"), 4).await?.is_empty());
    ensure!(s.blob_shared_with(&h, "y.test").await?);
    ensure!(s.blob_shared_with(&h, "x.test").await?);
    // Only whole server names match.
    ensure!(!s.blob_shared_with(&h, "test").await?);
    ensure!(!s.blob_shared_with(&h, ".test").await?);
    ensure!(!s.blob_shared_with(&h, "z.test").await?);

    // A blob fetched from another server: its origin is named, once.
    let h2 = BlobHash::try_from("cd".repeat(32).as_str())?;
    s.insert_fetched_blob(&h2, 7, "y.test", 2).await?;
    s.insert_fetched_blob(&h2, 7, "z.test", 3).await?;
    let row = s
        .blob(&h2)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no blob"))?;
    ensure!(row.size == 7 && row.uploader == "y.test", "{row:?}");
    ensure!(!s.can_download(&h2, &u("alice")).await?);
    Ok(())
}
