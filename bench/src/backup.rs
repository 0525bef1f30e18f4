//! `parley-bench backup`: an encrypted history backup and its restore for a large
//! history (`--messages`, default 100,000), against a real homeserver on loopback.
//!
//! Alice and Bob set up a real chat; then Alice's store is filled with `--messages`
//! messages of `--body` bytes (written straight into the SQLite store while her client is
//! closed: the bench measures backups, not sending). Measured, each with the peak RSS of
//! this process (the SDK runs in it), sampled every 20 ms:
//! - **backup**: `Client::enable_backup` (export and seal the archive to a file, upload
//!   it through the media upload, `PUT /v1/backup`);
//! - **restore**: on a fresh device of Alice, `Client::restore` with the recovery key
//!   (download, open and import in one transaction, then rejoin the chat by MLS
//!   external commit).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use parley_client::{BackupSecret, Client, ClientConfig};

use crate::media::{measured, wait};
use crate::procfs;
use crate::server::Server;

#[derive(Debug, clap::Args)]
pub(crate) struct BackupArgs {
    /// Messages in the history.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 100)]
    body: usize,
    /// Spawn this homeserver binary [default: parley-homeserver next to this executable].
    #[arg(long)]
    spawn: Option<std::path::PathBuf>,
    /// Database of the spawned server [default: SQLite in a temporary directory].
    #[arg(long)]
    database_url: Option<String>,
}

const MAX_MESSAGES: u64 = 10_000_000;

pub(crate) async fn run(args: BackupArgs) -> Result<()> {
    ensure!(
        (1..=MAX_MESSAGES).contains(&args.messages) && (1..=60_000).contains(&args.body),
        "--messages 1..=10,000,000, --body 1..=60,000"
    );
    let binary = match &args.spawn {
        Some(p) => p.clone(),
        None => crate::server::default_binary()?,
    };
    let server = Server::spawn(&binary, args.database_url.as_deref(), None).await?;
    let result = bench(&server, &args).await;
    server.stop().await?;
    result
}

async fn bench(server: &Server, args: &BackupArgs) -> Result<()> {
    let work = tempfile::tempdir()?;
    let url = server.url.as_str().trim_end_matches('/').to_owned();
    let tag = format!("{:08x}", rand::random::<u32>());
    let profile = |n: &str| {
        let mut c = ClientConfig::new(work.path().join(n));
        c.key_package_target = 4;
        c
    };
    let (alice_name, bob_name) = (format!("b{tag}a"), format!("b{tag}b"));
    let alice = Client::register(profile("alice"), &url, &alice_name, "bench-pass-1").await?;
    let bob = Client::register(profile("bob"), &url, &bob_name, "bench-pass-1").await?;
    alice.connect();
    bob.connect();
    alice.wait_synced(Duration::from_secs(30)).await?;
    bob.wait_synced(Duration::from_secs(30)).await?;
    let chat = alice.create_chat(bob.user_id()).await?;
    wait(Duration::from_secs(30), || async {
        Ok(bob.store().chat(&chat).await?.is_some_and(|c| c.joined))
    })
    .await
    .context("bob did not join the chat")?;
    let bob_id = bob.user_id().clone();
    bob.shutdown().await;
    alice.shutdown().await;

    eprintln!("writing {} messages into alice's store", args.messages);
    seed(
        &work
            .path()
            .join("alice")
            .join(parley_client::store::DB_FILE),
        chat.as_str(),
        bob_id.as_str(),
        args.messages,
        args.body,
    )
    .await?;
    let alice = Client::open(profile("alice")).await?;
    let me = Some(std::process::id());
    let base = procfs::memory(std::process::id()).map_or(0, |m| m.rss_kib);
    let (enabled, backup_time, backup_rss) = measured(me, async {
        Ok(alice.enable_backup(BackupSecret::RecoveryKey).await?)
    })
    .await?;
    ensure!(enabled.backup.export.messages == args.messages);
    let key = enabled.recovery_key.context("a recovery key")?;
    alice.shutdown().await;

    let fresh = Client::login(profile("alice-new"), &url, &alice_name, "bench-pass-1").await?;
    let base2 = procfs::memory(std::process::id()).map_or(0, |m| m.rss_kib);
    let (restored, restore_time, restore_rss) =
        measured(me, async { Ok(fresh.restore(&key).await?) }).await?;
    ensure!(restored.import.messages_added == args.messages);
    let rejoined = restored.rejoin.as_ref().map_or(0, |r| r.rejoined.len());
    ensure!(
        rejoined == 1,
        "the restored device did not rejoin the chat: {:?}",
        restored.rejoin
    );
    fresh.shutdown().await;

    let size = enabled.backup.backup.size as f64 / 1e6;
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "{:>9}  {:>9}  {:>10} {:>10}  {:>12} {:>12}",
        "messages", "backup MB", "backup s", "restore s", "RSS backup", "RSS restore"
    );
    println!(
        "{:>9}  {:>9.1}  {:>10.2} {:>10.2}  {:>5.1} → {:>4.1} {:>5.1} → {:>4.1}",
        args.messages,
        size,
        backup_time.as_secs_f64(),
        restore_time.as_secs_f64(),
        mib(base),
        mib(backup_rss),
        mib(base2),
        mib(restore_rss),
    );
    println!(
        "backup = export + seal + upload + PUT /v1/backup; restore = download + open + import (one transaction) + rejoin by external commit; RSS = this process (the SDK) before → peak during the phase, MiB, sampled every 20 ms"
    );
    Ok(())
}

/// Writes `n` messages of `body` bytes into the chat of a closed profile's store, in one
/// transaction, alternating senders.
async fn seed(db: &std::path::Path, chat: &str, bob: &str, n: u64, body: usize) -> Result<()> {
    use sqlx::Connection as _;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await?;
    let alice: String = sqlx::query_scalar("SELECT value FROM parley_state WHERE key = 'user_id'")
        .fetch_one(&mut conn)
        .await?;
    let device: String =
        sqlx::query_scalar("SELECT value FROM parley_state WHERE key = 'device_id'")
            .fetch_one(&mut conn)
            .await?;
    let text = "x".repeat(body);
    let mut tx = conn.begin().await?;
    let start = 1_000_000i64;
    for i in 0..n {
        let seq = start + i as i64;
        let (sender, sender_device, outgoing, state) = if i % 2 == 0 {
            (alice.as_str(), device.as_str(), true, "read")
        } else {
            (bob, "BENCHBOB", false, "received")
        };
        sqlx::query(
            "INSERT INTO parley_messages (chat_id, msg_id, seq, sender, sender_device, outgoing,
               kind, body, sent_at, server_ts, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'text', ?7, ?8, ?8, ?9)",
        )
        .bind(chat)
        .bind(format!("bench{i:012}"))
        .bind(seq)
        .bind(sender)
        .bind(sender_device)
        .bind(outgoing)
        .bind(&text)
        .bind(1_700_000_000_000i64 + seq)
        .bind(state)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    conn.close().await?;
    Ok(())
}
