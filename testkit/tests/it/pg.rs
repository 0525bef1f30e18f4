use anyhow::{Context, Result};
use parley_testkit::{PgDatabase, postgres, throwaway_cluster};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

async fn database_exists(admin_url: &str, name: &str) -> Result<bool> {
    let mut admin = PgConnection::connect(admin_url)
        .await
        .context("connecting to the admin database")?;
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut admin)
        .await?;
    Ok(found.is_some())
}

async fn table_names(db: &PgDatabase) -> Result<Vec<String>> {
    let pool = db.pool().await?;
    let names = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    Ok(names)
}

#[tokio::test]
async fn fresh_databases_are_empty_writable_and_isolated() -> Result<()> {
    let a = postgres().await?;
    let b = postgres().await?;
    assert_ne!(a.url(), b.url());
    assert_eq!(table_names(&a).await?, Vec::<String>::new());

    let pool = a.pool().await?;
    sqlx::query("CREATE TABLE notes (id BIGINT PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO notes VALUES (1, 'hello')")
        .execute(&pool)
        .await?;
    let body: String = sqlx::query_scalar("SELECT body FROM notes WHERE id = 1")
        .fetch_one(&pool)
        .await?;
    assert_eq!(body, "hello");

    assert_eq!(table_names(&a).await?, ["notes"]);
    assert_eq!(table_names(&b).await?, Vec::<String>::new());
    Ok(())
}

#[tokio::test]
async fn a_dropped_database_is_gone_even_with_open_connections() -> Result<()> {
    let db = postgres().await?;
    let (admin_url, name) = (db.admin_url().to_owned(), db.name().to_owned());
    let pool = db.pool().await?;
    sqlx::query("SELECT 1").execute(&pool).await?;
    assert!(database_exists(&admin_url, &name).await?);

    drop(db); // WITH (FORCE): the open pool does not stop it
    assert!(!database_exists(&admin_url, &name).await?);
    Ok(())
}

/// The path `postgres()` takes when DATABASE_URL is unset, exercised directly so that it
/// is tested in CI too, where DATABASE_URL usually points at a running server.
#[tokio::test]
async fn the_throwaway_cluster_serves_fresh_databases() -> Result<()> {
    let cluster = throwaway_cluster().await?;
    assert!(cluster.dir().join("data").is_dir());
    assert!(
        cluster
            .admin_url()
            .ends_with(&format!("127.0.0.1:{}/postgres", cluster.port()))
    );
    // Shared by every caller in this process.
    assert!(std::ptr::eq(cluster, throwaway_cluster().await?));

    let db = cluster.create_database().await?;
    let mut conn = PgConnection::connect(db.url()).await?;
    sqlx::query("CREATE TABLE t (x INT)")
        .execute(&mut conn)
        .await?;
    sqlx::query("INSERT INTO t VALUES (42)")
        .execute(&mut conn)
        .await?;
    let x: i32 = sqlx::query_scalar("SELECT x FROM t")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(x, 42);
    conn.close().await?;

    let name = db.name().to_owned();
    drop(db);
    assert!(!database_exists(cluster.admin_url(), &name).await?);
    Ok(())
}

#[test]
fn free_port_is_bindable() -> Result<()> {
    let port = parley_testkit::free_port("127.0.0.1");
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).context("binding the free port")?;
    Ok(())
}
