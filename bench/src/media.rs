//! `parley-bench media`: upload and download throughput and the server's RSS for large
//! files, against a real homeserver on loopback.
//!
//! Per size, two measurements:
//! - **server path**: `PUT /v1/media/{blob}/upload` in 8 MiB segments (offset, total) of
//!   random bytes standing for a ciphertext, then `GET /v1/media/{blob}` streamed and
//!   discarded: what the server sustains, hashing and storing included;
//! - **SDK end to end**: `Client::send_file` (encrypt to a temporary file, upload, queue
//!   the message) and `Client::download` (fetch, check the hash, decrypt to a file).
//!
//! The server's RSS is sampled every 20 ms during each phase; the peak is reported beside
//! the RSS before the first transfer, so a growth with file size would show.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use parley_client::{Client, ClientConfig, FileOptions};
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::procfs;
use crate::server::Server;

/// Ciphertext bytes per upload request (as the SDK sends them).
const SEGMENT: usize = 8 * 1024 * 1024;
const MIB: f64 = 1024.0 * 1024.0;
/// The largest size the bench accepts (the server's default blob limit is 103 MiB).
const MAX_SIZE: u64 = 100 * 1024 * 1024;

#[derive(Debug, clap::Args)]
pub(crate) struct MediaArgs {
    /// File sizes, e.g. `10MiB,100MiB` (suffixes KiB, MiB; at most 100 MiB).
    #[arg(long, value_delimiter = ',', default_value = "10MiB,100MiB")]
    size: Vec<String>,
    /// Spawn this homeserver binary [default: parley-homeserver next to this executable].
    #[arg(long)]
    spawn: Option<std::path::PathBuf>,
    /// Database of the spawned server [default: SQLite in a temporary directory].
    #[arg(long)]
    database_url: Option<String>,
    /// After the phases, PUT this many more fresh blobs of the size to the same server
    /// and print its peak RSS during each: flat peaks mean nothing is kept per upload.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=20))]
    repeat: u32,
}

fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("MiB") {
        (n, 1024 * 1024)
    } else if let Some(n) = s.strip_suffix("KiB") {
        (n, 1024)
    } else {
        (s, 1)
    };
    let n: u64 = num
        .trim()
        .parse()
        .with_context(|| format!("--size {s:?}: a number with KiB or MiB"))?;
    let size = n.saturating_mul(mult);
    if size == 0 || size > MAX_SIZE {
        bail!("--size {s}: 1 byte to 100 MiB");
    }
    Ok(size)
}

/// Samples a process's RSS until told to stop; returns the peak in KiB.
fn sample_rss(pid: Option<u32>) -> (watch::Sender<bool>, tokio::task::JoinHandle<u64>) {
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut peak = 0;
        loop {
            if let Some(m) = pid.and_then(procfs::memory) {
                peak = peak.max(m.rss_kib);
            }
            tokio::select! {
                _ = stopped.changed() => return peak,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    });
    (stop, task)
}

pub(crate) async fn measured<T>(
    pid: Option<u32>,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<(T, Duration, u64)> {
    let (stop, sampler) = sample_rss(pid);
    let started = Instant::now();
    let out = f.await;
    let elapsed = started.elapsed();
    let _ = stop.send(true);
    let peak = sampler.await.unwrap_or(0);
    Ok((out?, elapsed, peak))
}

/// One size's figures, each from a fresh server (so a size's peak RSS owes nothing to
/// what an earlier, other-sized transfer left in the allocator).
struct Row {
    size: u64,
    /// Peak RSS (KiB) during each repeated PUT (`--repeat`).
    repeats: Vec<u64>,
    /// The server's RSS before the transfer (KiB).
    idle: u64,
    put: Duration,
    get: Duration,
    send: Duration,
    download: Duration,
    rss_put: u64,
    rss_get: u64,
    rss_send: u64,
    rss_download: u64,
}

pub(crate) async fn run(args: MediaArgs) -> Result<()> {
    let sizes: Vec<u64> = args
        .size
        .iter()
        .map(|s| parse_size(s))
        .collect::<Result<_>>()?;
    let binary = match &args.spawn {
        Some(p) => p.clone(),
        None => crate::server::default_binary()?,
    };
    let mut rows = Vec::new();
    for &size in &sizes {
        // Room in the user's quota for every upload of the run (the default is 1 GiB).
        let quota = size.saturating_mul(u64::from(args.repeat) + 3);
        let config = format!("[limits]\nuser_quota_bytes = {}\n", quota.max(1 << 30));
        let server = Server::spawn(&binary, args.database_url.as_deref(), Some(&config)).await?;
        let row = bench(&server, size, args.repeat).await;
        server.stop().await?;
        let row = row?;
        eprintln!("{}", line(&row));
        rows.push(row);
    }
    println!(
        "{:>8}  {:>10} {:>10}  {:>10} {:>10}  {:>9} {:>9} {:>9} {:>9} {:>9}",
        "size",
        "PUT MB/s",
        "GET MB/s",
        "send MB/s",
        "dl MB/s",
        "RSS idle",
        "RSS PUT",
        "RSS GET",
        "RSS send",
        "RSS dl"
    );
    for r in &rows {
        println!("{}", line(r));
    }
    for r in rows.iter().filter(|r| !r.repeats.is_empty()) {
        let peaks: Vec<String> = r
            .repeats
            .iter()
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .collect();
        println!(
            "{:>5.0} MiB  PUT peak RSS (MiB) over {} more uploads to the same server: {}",
            r.size as f64 / MIB,
            peaks.len(),
            peaks.join(" ")
        );
    }
    println!(
        "MB/s = 10^6 bytes/s of plaintext (server path: of blob bytes); RSS = peak in MiB of a fresh server (one per size) during the phase (sampled every 20 ms); PUT/GET: raw HTTP in 8 MiB segments; send/dl: SDK end to end (encrypt+upload, fetch+verify+decrypt)"
    );
    Ok(())
}

/// One size on `server`: raw PUT and GET, then an SDK send and download.
async fn bench(server: &Server, size: u64, repeat: u32) -> Result<Row> {
    let work = tempfile::tempdir()?;
    let url = server.url.as_str().trim_end_matches('/').to_owned();
    let tag = format!("{:08x}", rand::random::<u32>());
    let profile = |n: &str| {
        let mut c = ClientConfig::new(work.path().join(n));
        c.key_package_target = 4;
        c
    };
    let alice =
        Client::register(profile("alice"), &url, &format!("m{tag}a"), "bench-pass-1").await?;
    let bob = Client::register(profile("bob"), &url, &format!("m{tag}b"), "bench-pass-1").await?;
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
    let token = alice_token(work.path().join("alice").as_path()).await?;
    let http = reqwest::Client::new();
    let idle = server.pid.and_then(procfs::memory).map_or(0, |m| m.rss_kib);
    eprintln!(
        "server RSS before any transfer: {:.1} MiB",
        idle as f64 / 1024.0
    );

    eprintln!("{:.0} MiB: writing the file", size as f64 / MIB);
    let raw = work.path().join("raw.bin");
    let blob = random_file(&raw, size)?;
    let (_, put, rss_put) =
        measured(server.pid, put_blob(&http, &url, &token, &raw, &blob, size)).await?;
    let (got, get, rss_get) = measured(server.pid, get_blob(&http, &url, &token, &blob)).await?;
    ensure!(got == size, "downloaded {got} of {size} bytes");

    let file = work.path().join("file.bin");
    random_file(&file, size)?;
    let (sent, send, rss_send) = measured(server.pid, async {
        Ok(alice
            .send_file(&chat, &file, FileOptions::default())
            .await?)
    })
    .await?;
    ensure!(sent.upload_complete, "the upload did not complete");
    let id = sent.message.id.clone();
    wait(Duration::from_secs(60), || async {
        Ok(bob.attachment(&chat, &id).await?.is_some())
    })
    .await
    .context("bob did not receive the file message")?;
    let out = work.path().join("out.bin");
    let (done, download, rss_download) = measured(server.pid, async {
        Ok(bob.download(&chat, &id, &out).await?)
    })
    .await?;
    ensure!(done.size == size, "decrypted {} of {size} bytes", done.size);
    let mut repeats = Vec::new();
    for _ in 0..repeat {
        let blob = random_file(&raw, size)?;
        let (_, _, peak) =
            measured(server.pid, put_blob(&http, &url, &token, &raw, &blob, size)).await?;
        repeats.push(peak);
    }
    for p in [&raw, &file, &out] {
        let _ = std::fs::remove_file(p);
    }
    let row = Row {
        size,
        repeats,
        idle,
        put,
        get,
        send,
        download,
        rss_put,
        rss_get,
        rss_send,
        rss_download,
    };
    alice.shutdown().await;
    bob.shutdown().await;
    Ok(row)
}

fn line(r: &Row) -> String {
    let mbps = |d: Duration| r.size as f64 / 1e6 / d.as_secs_f64().max(1e-9);
    let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
    format!(
        "{:>5.0} MiB  {:>10.1} {:>10.1}  {:>10.1} {:>10.1}  {:>9} {:>9} {:>9} {:>9} {:>9}",
        r.size as f64 / MIB,
        mbps(r.put),
        mbps(r.get),
        mbps(r.send),
        mbps(r.download),
        mib(r.idle),
        mib(r.rss_put),
        mib(r.rss_get),
        mib(r.rss_send),
        mib(r.rss_download),
    )
}

pub(crate) async fn wait<F, Fut>(timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    while !check().await? {
        if Instant::now() > deadline {
            bail!("timed out");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The access token in a profile's store (the bench's raw requests act as that user).
async fn alice_token(profile: &Path) -> Result<String> {
    let reader = parley_client::Reader::open(profile).await?;
    reader
        .access_token()
        .await?
        .context("the profile holds no access token")
}

/// Writes `size` random bytes to `path` in 1 MiB pieces; returns their SHA-256 (hex).
fn random_file(path: &Path, size: u64) -> Result<String> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut left = size;
    let mut rng = rand::rng();
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn put_blob(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    path: &Path,
    blob: &str,
    size: u64,
) -> Result<()> {
    use std::io::{Read as _, Seek as _};
    let mut file = std::fs::File::open(path)?;
    let mut offset = 0u64;
    while offset < size {
        let n = (size - offset).min(SEGMENT as u64) as usize;
        let mut buf = vec![0u8; n];
        file.seek(std::io::SeekFrom::Start(offset))?;
        file.read_exact(&mut buf)?;
        let resp = http
            .put(format!(
                "{url}/v1/media/{blob}/upload?offset={offset}&total={size}"
            ))
            .bearer_auth(token)
            .body(buf)
            .send()
            .await?;
        ensure!(
            resp.status().is_success(),
            "upload at {offset}: {}",
            resp.status()
        );
        offset += n as u64;
    }
    Ok(())
}

async fn get_blob(http: &reqwest::Client, url: &str, token: &str, blob: &str) -> Result<u64> {
    let mut resp = http
        .get(format!("{url}/v1/media/{blob}"))
        .bearer_auth(token)
        .send()
        .await?;
    ensure!(resp.status().is_success(), "download: {}", resp.status());
    let mut n = 0u64;
    while let Some(chunk) = resp.chunk().await? {
        n += chunk.len() as u64;
    }
    Ok(n)
}
