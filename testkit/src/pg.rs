//! Per-test Postgres databases.

use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor};
use url::Url;

use crate::cluster::throwaway_cluster;

/// How long connecting to the admin database may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long dropping a database may hold up the `Drop` of a [`PgDatabase`].
const DROP_TIMEOUT: Duration = Duration::from_secs(30);
/// SQLSTATE `object_in_use`: e.g. "source database template1 is being accessed by other users".
const OBJECT_IN_USE: &str = "55006";

/// A fresh, empty Postgres database for one test.
///
/// Uses the server at `DATABASE_URL` when that variable is set (its database is the admin
/// database in which `CREATE DATABASE` runs, e.g.
/// `postgres://postgres@127.0.0.1:5432/postgres`); otherwise this process's
/// [`throwaway_cluster`], started on first use.
///
/// The database is dropped when the returned [`PgDatabase`] is dropped.
pub async fn postgres() -> Result<PgDatabase> {
    match std::env::var_os("DATABASE_URL") {
        Some(url) if !url.is_empty() => {
            let url = url
                .into_string()
                .map_err(|_| anyhow::anyhow!("DATABASE_URL is not valid UTF-8"))?;
            PgDatabase::create(&url).await.with_context(|| {
                format!(
                    "creating a test database on DATABASE_URL={}",
                    redacted(&url)
                )
            })
        }
        _ => throwaway_cluster().await?.create_database().await,
    }
}

/// One test's database, `parley_t_<random>`, dropped (`WITH (FORCE)`) on `Drop`.
#[derive(Debug)]
pub struct PgDatabase {
    /// The URL to connect to this database.
    pub url: String,
    name: String,
    admin_url: String,
}

impl PgDatabase {
    /// Creates a new database `parley_t_<random>` on the server of `admin_url`, connecting
    /// to the database named there to run `CREATE DATABASE`.
    pub async fn create(admin_url: &str) -> Result<Self> {
        let name = format!("parley_t_{:016x}", rand::random::<u64>());
        let url = with_database(admin_url, &name)?;
        let mut conn = connect(admin_url).await?;
        let sql = format!(r#"CREATE DATABASE "{name}""#);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match conn.execute(sql.as_str()).await {
                Ok(_) => break,
                // Concurrent CREATE DATABASE can briefly find template1 in use.
                Err(sqlx::Error::Database(e))
                    if e.code().as_deref() == Some(OBJECT_IN_USE) && attempt < 10 =>
                {
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("CREATE DATABASE {name} on {}", redacted(admin_url))
                    });
                }
            }
        }
        // Best effort: the connection is closed anyway when it is dropped.
        let _ = conn.close().await;
        Ok(Self {
            url,
            name,
            admin_url: admin_url.to_owned(),
        })
    }

    /// The URL to connect to this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name, `parley_t_<random>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of the admin database this one was created from (and is dropped through).
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// A small connection pool (at most 5 connections) to this database.
    pub async fn pool(&self) -> Result<PgPool> {
        PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect(&self.url)
            .await
            .with_context(|| format!("connecting to test database {}", redacted(&self.url)))
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop runs outside any async context we could rely on (possibly inside a
        // current-thread runtime, possibly while unwinding), so the DROP DATABASE runs on a
        // thread with its own runtime, and we wait for it (bounded) so that test databases
        // are gone when the test process ends.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let (tx, rx) = mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("parley-testkit-dropdb".into())
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building a runtime")
                    .and_then(|rt| rt.block_on(drop_database(&admin_url, &name)));
                let _ = tx.send(result);
            });
        let outcome = match spawned {
            Err(e) => Err(anyhow::Error::new(e).context("spawning a thread")),
            Ok(_) => match rx.recv_timeout(DROP_TIMEOUT) {
                Ok(result) => result,
                Err(_) => Err(anyhow::anyhow!("no answer within {DROP_TIMEOUT:?}")),
            },
        };
        if let Err(e) = outcome {
            eprintln!(
                "parley-testkit: warning: could not drop test database {}: {e:#}",
                self.name
            );
        }
    }
}

async fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    let mut conn = connect(admin_url).await?;
    conn.execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
        .await
        .with_context(|| format!("DROP DATABASE {name}"))?;
    let _ = conn.close().await;
    Ok(())
}

/// One connection, with a timeout and an error that names the server.
pub(crate) async fn connect(url: &str) -> Result<PgConnection> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => {
            Err(e).with_context(|| format!("connecting to Postgres at {}", redacted(url)))
        }
        Err(_) => bail!(
            "connecting to Postgres at {} timed out after {CONNECT_TIMEOUT:?}",
            redacted(url)
        ),
    }
}

/// `url` with its database (the path) replaced by `database`.
fn with_database(url: &str, database: &str) -> Result<String> {
    let mut parsed =
        Url::parse(url).with_context(|| format!("not a Postgres URL: {}", redacted(url)))?;
    if parsed.cannot_be_a_base() {
        bail!("not a Postgres URL (postgres://…): {}", redacted(url));
    }
    parsed.set_path(&format!("/{database}"));
    Ok(parsed.to_string())
}

/// `url` with any password replaced by `***`, for messages.
pub(crate) fn redacted(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_and_keeps_the_rest() -> Result<()> {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "parley_t_1")?,
            "postgres://postgres@127.0.0.1:5432/parley_t_1"
        );
        assert_eq!(
            with_database("postgresql://u:p@db:5433/admin?sslmode=disable", "x")?,
            "postgresql://u:p@db:5433/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://db", "x")?, "postgres://db/x");
        assert!(with_database("not a url", "x").is_err());
        Ok(())
    }

    #[test]
    fn hides_passwords() {
        assert_eq!(
            redacted("postgres://u:secret@db/admin"),
            "postgres://u:***@db/admin"
        );
        assert_eq!(redacted("postgres://u@db/admin"), "postgres://u@db/admin");
    }
}
