//! The server learns no plaintext: messages carry unique canary strings, and no canary
//! appears in the server's database (every table, every column), its logs, or the bytes
//! it sent and received (WebSocket frames unmasked, base64 payloads decoded). A backup
//! stores only ciphertext: no canary in the server's files, and the recovery key and the
//! backup key appear nowhere on the server or the wire.

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use parley_client::{BackupSecret, MessageState};
use sqlx::{Connection, Row};

use crate::harness::{Backend, Recorded, Server};

crate::on_both_backends!(the_server_never_sees_plaintext);

async fn the_server_never_sees_plaintext(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let alice2 = server.link("alice", &alice).await?;
    for d in [&alice, &bob, &alice2] {
        d.online().await?;
    }
    let chat = alice.client.create_chat(bob.user()).await?;
    for d in [&alice, &bob, &alice2] {
        d.joined(&chat).await?;
    }

    let tag = hex::encode(rand_bytes());
    let canaries: Vec<String> = (0..4).map(|i| format!("CANARY{i}x{tag}")).collect();
    let m = alice.client.send_text(&chat, &canaries[0]).await?;
    bob.client.send_text(&chat, &canaries[1]).await?;
    alice2.client.send_text(&chat, &canaries[2]).await?;
    // One more through the outbox, queued while offline.
    server.proxy.set_offline(true);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let queued = bob.client.send_text(&chat, &canaries[3]).await?;
    server.proxy.set_offline(false);
    for text in &canaries {
        for d in [&alice, &bob, &alice2] {
            d.received(&chat, text).await?;
        }
    }
    alice.state(&chat, &m.id, MessageState::Delivered).await?;
    bob.state(&chat, &queued.id, MessageState::Delivered)
        .await?;
    bob.client.mark_read(&chat).await?;
    alice.state(&chat, &m.id, MessageState::Read).await?;

    // History to a newly linked device travels as an archive through the server's
    // media storage (devices.md DL9): the device reads every canary, the server none.
    let alice3 = server.login("alice").await?;
    let link = alice3.client.start_link().await?;
    alice
        .client
        .approve_link(&link.code(), parley_client::HistoryRange::All)
        .await?;
    let linked = alice3
        .client
        .wait_for_approval(link, crate::harness::WAIT)
        .await?;
    ensure!(linked.history.is_some_and(|h| h.messages >= 4));
    let moved = alice3.history(&chat).await?;
    for text in &canaries {
        ensure!(
            moved.iter().any(|m| &m.body == text),
            "{text} not in the linked history"
        );
    }

    // A backup (spec/backup.md BK16): the archive is a blob on the server; neither the
    // recovery key nor the backup key ever leaves the device.
    let enabled = alice
        .client
        .enable_backup(BackupSecret::RecoveryKey)
        .await?;
    let recovery = enabled
        .recovery_key
        .context("a recovery key")?
        .replace(' ', "");
    let backup_key = local_state(&alice, "backup_key").await?;
    ensure!(backup_key.len() == 64);
    let secrets = [recovery, backup_key];
    let files = files_under(server.data_dir.path())?;
    ensure!(
        files.len() as u64 >= enabled.backup.backup.size,
        "the server's files ({} bytes) hold the backup ({:?})",
        files.len(),
        enabled.backup
    );

    // The database, every table and column.
    let dump = match backend {
        Backend::Sqlite => dump_sqlite(&server.data_dir.path().join("parley.db")).await?,
        Backend::Postgres => dump_postgres(&server.database_url).await?,
    };
    ensure!(
        dump.len() > 1000 && contains(&dump, alice.user().as_str().as_bytes()),
        "the dump looks empty"
    );
    // The same dump of a client's store finds the canaries: the check can see them.
    let local = dump_sqlite(&alice.dir.path().join(parley_client::store::DB_FILE)).await?;
    ensure!(contains(&local, canaries[0].as_bytes()));

    // The wire, both ways.
    let recorded = server.proxy.recorded();
    ensure!(
        recorded.len() >= 6,
        "{} connections recorded",
        recorded.len()
    );
    let (plain, decoded) = wire_bytes(&recorded);
    // Key packages travel base64-encoded and carry the user id in their credential:
    // the decoding works.
    ensure!(contains(&decoded, b"@bob:parley.test"));
    ensure!(contains(&plain, b"\"type\":\"event\""));

    let logs = server.logs();
    ensure!(logs.contains("listening on"));

    for secret in &secrets {
        let s = secret.as_bytes();
        for (what, bytes) in [
            ("database", &dump),
            ("wire", &plain),
            ("wire (decoded)", &decoded),
            ("server's files", &files),
        ] {
            ensure!(!contains(bytes, s), "a backup secret found in the {what}");
        }
        ensure!(
            !logs.contains(secret.as_str()),
            "a backup secret in the logs"
        );
    }
    for canary in &canaries {
        let c = canary.as_bytes();
        ensure!(
            !contains(&files, c),
            "{canary} found in the server's files (media, backups)"
        );
        let h = hex::encode(c);
        for (what, bytes) in [
            ("database", &dump),
            ("wire", &plain),
            ("wire (decoded)", &decoded),
        ] {
            ensure!(!contains(bytes, c), "{canary} found in the {what}");
            ensure!(
                !contains(bytes, h.as_bytes()),
                "{canary} found hex-encoded in the {what}"
            );
        }
        let decoded_dump = decode_base64_runs(&dump);
        ensure!(
            !contains(&decoded_dump, c),
            "{canary} found base64-encoded in the database"
        );
        ensure!(
            !logs.contains(canary.as_str()),
            "{canary} found in the server's logs"
        );
    }
    Ok(())
}

/// Every file under `dir` (the server's database, media blobs, uploads), concatenated.
fn files_under(dir: &std::path::Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.extend(std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    Ok(out)
}

/// A value of a device's `parley_state` table.
async fn local_state(d: &crate::harness::Device, key: &str) -> Result<String> {
    let url = format!(
        "sqlite://{}?mode=ro",
        d.dir.path().join(parley_client::store::DB_FILE).display()
    );
    let mut conn = sqlx::SqliteConnection::connect(&url).await?;
    Ok(
        sqlx::query_scalar("SELECT value FROM parley_state WHERE key = ?1")
            .bind(key)
            .fetch_one(&mut conn)
            .await?,
    )
}

fn rand_bytes() -> [u8; 8] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (nanos as u64 ^ u64::from(std::process::id()).rotate_left(32)).to_be_bytes()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every value of every column of every table, as bytes.
async fn dump_sqlite(path: &std::path::Path) -> Result<Vec<u8>> {
    let url = format!("sqlite://{}?mode=ro", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .with_context(|| format!("opening {url}"))?;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut conn)
            .await?;
    ensure!(!tables.is_empty(), "no tables in {}", path.display());
    let mut out = Vec::new();
    for table in tables {
        let columns: Vec<String> = sqlx::query(&format!("PRAGMA table_info(\"{table}\")"))
            .fetch_all(&mut conn)
            .await?
            .iter()
            .map(|r| r.get::<String, _>("name"))
            .collect();
        for column in columns {
            let values: Vec<Option<Vec<u8>>> = sqlx::query_scalar(&format!(
                "SELECT CAST(\"{column}\" AS BLOB) FROM \"{table}\""
            ))
            .fetch_all(&mut conn)
            .await?;
            for v in values.into_iter().flatten() {
                out.extend_from_slice(&v);
                out.push(b'\n');
            }
        }
    }
    Ok(out)
}

/// Every row of every table in the public schema, as text (`bytea` shows as hex).
async fn dump_postgres(url: &str) -> Result<Vec<u8>> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'")
            .fetch_all(&mut conn)
            .await?;
    ensure!(!tables.is_empty(), "no tables");
    let mut out = Vec::new();
    for table in tables {
        let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM \"{table}\" t"))
            .fetch_all(&mut conn)
            .await?;
        for r in rows {
            out.extend_from_slice(r.as_bytes());
            out.push(b'\n');
        }
    }
    Ok(out)
}

/// The recorded traffic as `(plain, decoded)`: HTTP as is, WebSocket frames unmasked;
/// and every base64 run of those decoded.
fn wire_bytes(recorded: &[Recorded]) -> (Vec<u8>, Vec<u8>) {
    let mut plain = Vec::new();
    for r in recorded {
        for (bytes, upgrade_marker) in
            [(&r.up, &b"GET /v1/ws"[..]), (&r.down, &b"HTTP/1.1 101"[..])]
        {
            if bytes.starts_with(upgrade_marker)
                && let Some(end) = find(bytes, b"\r\n\r\n")
            {
                plain.extend_from_slice(&bytes[..end + 4]);
                plain.extend_from_slice(&ws_payloads(&bytes[end + 4..]));
            } else {
                plain.extend_from_slice(bytes);
            }
            plain.push(b'\n');
        }
    }
    let decoded = decode_base64_runs(&plain);
    (plain, decoded)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The payloads of a stream of WebSocket frames, unmasked.
fn ws_payloads(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while b.len() >= 2 {
        let masked = b[1] & 0x80 != 0;
        let mut len = u64::from(b[1] & 0x7f);
        let mut i = 2;
        if len == 126 {
            if b.len() < 4 {
                break;
            }
            len = u64::from(u16::from_be_bytes([b[2], b[3]]));
            i = 4;
        } else if len == 127 {
            if b.len() < 10 {
                break;
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            len = u64::from_be_bytes(n);
            i = 10;
        }
        let key = if masked {
            if b.len() < i + 4 {
                break;
            }
            let k = [b[i], b[i + 1], b[i + 2], b[i + 3]];
            i += 4;
            Some(k)
        } else {
            None
        };
        let Ok(len) = usize::try_from(len) else { break };
        let end = (i + len).min(b.len());
        let payload = &b[i..end];
        match key {
            Some(k) => out.extend(payload.iter().enumerate().map(|(j, x)| x ^ k[j % 4])),
            None => out.extend_from_slice(payload),
        }
        out.push(b'\n');
        b = &b[end..];
    }
    out
}

/// Decodes every run of at least 16 base64 characters (standard alphabet).
fn decode_base64_runs(bytes: &[u8]) -> Vec<u8> {
    let is_b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'=';
    let mut out = Vec::new();
    for run in bytes.split(|c| !is_b64(*c)).filter(|r| r.len() >= 16) {
        let trimmed = &run[..run.len() / 4 * 4];
        for engine in [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
        ] {
            if let Ok(d) = engine.decode(trimmed) {
                out.extend_from_slice(&d);
                out.push(b'\n');
                break;
            }
        }
    }
    out
}

#[test]
fn the_helpers_find_what_they_should() {
    let frame = {
        let payload = b"hello canary";
        let key = [1u8, 2, 3, 4];
        let mut f = vec![0x81, 0x80 | payload.len() as u8];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    };
    assert!(contains(&ws_payloads(&frame), b"hello canary"));
    let b64 = base64::engine::general_purpose::STANDARD.encode(b"xx secret canary xx");
    let decoded = decode_base64_runs(format!("{{\"payload\":\"{b64}\"}}").as_bytes());
    assert!(contains(&decoded, b"secret canary"));
}
