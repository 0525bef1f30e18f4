//! The federation store (`FedStore`) on both backends: outbox rows, leases.

use anyhow::{Result, ensure};
use parley_homeserver::store::fed::{FedStore, NewOutboxRow, OutboxKind, Received};

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite_store { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { crate::store_suite::on_sqlite(super::$name).await.unwrap() } )* }
        mod postgres_store { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { crate::store_suite::on_postgres(super::$name).await.unwrap() } )* }
    };
}

suite!(
    one_node_at_a_time_drives_a_destination,
    outbox_rows_keep_their_order_and_txn,
    old_received_transactions_are_purged,
    nonces_are_shared_until_their_window_ends,
);

async fn one_node_at_a_time_drives_a_destination<S: FedStore>(s: S) -> Result<()> {
    ensure!(s.take_lease("b.org", "node1", 1_000, 16_000).await?);
    // Another node cannot take it while it lasts; the holder renews it.
    ensure!(!s.take_lease("b.org", "node2", 2_000, 17_000).await?);
    ensure!(s.take_lease("b.org", "node1", 9_000, 24_000).await?);
    ensure!(!s.take_lease("b.org", "node2", 23_000, 38_000).await?);
    // Other destinations are independent.
    ensure!(s.take_lease("c.org", "node2", 2_000, 17_000).await?);
    // The holder died: after expiry the other node takes over, and the first is out.
    ensure!(s.take_lease("b.org", "node2", 24_001, 39_000).await?);
    ensure!(!s.take_lease("b.org", "node1", 25_000, 40_000).await?);
    Ok(())
}

async fn outbox_rows_keep_their_order_and_txn<S: FedStore>(s: S) -> Result<()> {
    let row = |d: &str, body: &str| NewOutboxRow {
        destination: d.into(),
        kind: OutboxKind::Receipt,
        body: body.into(),
    };
    let ids = s
        .enqueue_outbox(
            &[row("b.org", "1"), row("c.org", "2"), row("b.org", "3")],
            5,
        )
        .await?;
    ensure!(
        ids.len() == 3 && ids[0] < ids[1] && ids[1] < ids[2],
        "{ids:?}"
    );
    let b = s.outbox_rows("b.org", 0, &[]).await?;
    let bodies: Vec<&str> = b.iter().map(|r| r.body.as_str()).collect();
    ensure!(bodies == ["1", "3"], "{bodies:?}");
    // After a row the caller holds: the rows committed since (SQLite), or all but the
    // held ones (Postgres, whose ids are not in commit order); either way only "3".
    let b = s.outbox_rows("b.org", ids[0], &ids[..1]).await?;
    let bodies: Vec<&str> = b.iter().map(|r| r.body.as_str()).collect();
    ensure!(bodies == ["3"], "{bodies:?}");
    let mut dests = s.outbox_destinations().await?;
    dests.sort();
    ensure!(dests == ["b.org", "c.org"], "{dests:?}");
    // An acknowledged row goes; the others stay, in order.
    s.outbox_delete(&ids[..1]).await?;
    let b = s.outbox_rows("b.org", 0, &[]).await?;
    ensure!(b.len() == 1 && b[0].body == "3", "{b:?}");
    s.outbox_delete(&[ids[2]]).await?;
    ensure!(s.outbox_rows("b.org", 0, &[]).await?.is_empty());
    ensure!(s.outbox_destinations().await? == ["c.org"]);
    Ok(())
}

async fn old_received_transactions_are_purged<S: FedStore>(s: S) -> Result<()> {
    let day = 24 * 3600 * 1000;
    let record = |txn_id| Received {
        origin: "b.org",
        txn_id,
        response: "{}",
        ops: &[],
        receipts: &[],
    };
    s.receive_transaction(&record("old"), 1_000).await?;
    s.receive_transaction(&record("new"), 9 * day).await?;
    // The janitor's cutoff a little over 8 days later: only the old row goes.
    let cutoff = parley_homeserver::service::inbound::received_cutoff(9 * day, 8);
    ensure!(cutoff == day, "{cutoff}");
    ensure!(s.purge_received(cutoff).await? == 1);
    ensure!(s.received_txn("b.org", "old").await?.is_none());
    ensure!(s.received_txn("b.org", "new").await?.as_deref() == Some("{}"));
    ensure!(s.purge_received(cutoff).await? == 0);
    Ok(())
}

/// The replay store several nodes share: a nonce is refused while its window lasts,
/// whichever node saw it first, and forgotten afterwards.
async fn nonces_are_shared_until_their_window_ends<S: FedStore>(s: S) -> Result<()> {
    ensure!(s.insert_nonce("b.org", "n1", 10_000, 1_000).await?, "fresh");
    ensure!(
        !s.insert_nonce("b.org", "n1", 10_000, 2_000).await?,
        "a replay"
    );
    ensure!(
        !s.insert_nonce("b.org", "n1", 12_000, 9_999).await?,
        "still a replay"
    );
    // The same nonce from another origin is another nonce.
    ensure!(s.insert_nonce("c.org", "n1", 10_000, 2_000).await?);
    // After its window the nonce may be used again (the clock check refuses the old
    // request anyway); the purge drops ended windows only.
    ensure!(s.insert_nonce("b.org", "n1", 40_000, 10_001).await?);
    ensure!(s.insert_nonce("b.org", "n2", 5_000, 1_000).await?);
    ensure!(
        s.purge_nonces(10_001).await? == 2,
        "c.org/n1 and b.org/n2 ended"
    );
    ensure!(!s.insert_nonce("b.org", "n1", 40_000, 10_002).await?);
    Ok(())
}
