//! Persistence over `openmls_sqlx_storage` (SQLite file): reload after a
//! restart, and crash injection at every storage write of an operation.
//!
//! Crash injection: SQLite triggers on every `openmls_*` table abort the
//! statement once a per-transaction write budget is used up. Each operation
//! runs in one transaction (the contract in `parley_crypto::provider`); a
//! failed operation is rolled back and the group reloaded from the file.

use openmls_sqlx_storage::{Codec, SqliteStorageProvider};
use parley_crypto::{DeviceIdentity, Group, Provider, Received, generate_key_packages};
use sqlx::{Connection, SqliteConnection};

use crate::support::{Device, Hub, identity};

#[derive(Default)]
struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;
    fn to_vec<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }
    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

type SqlProvider<'a> = Provider<SqliteStorageProvider<'a, JsonCodec>>;

async fn open(path: &std::path::Path) -> SqliteConnection {
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap();
    SqliteStorageProvider::<JsonCodec>::new(&mut conn)
        .run_migrations()
        .unwrap();
    conn
}

/// Installs the write-budget triggers (budget -1 = no crash).
async fn install_crash_triggers(conn: &mut SqliteConnection) {
    sqlx::query("CREATE TABLE IF NOT EXISTS crash_budget (n INTEGER NOT NULL)")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO crash_budget VALUES (-1)")
        .execute(&mut *conn)
        .await
        .unwrap();
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'openmls%'",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert!(tables.len() >= 5, "{tables:?}");
    for (table,) in tables {
        for op in ["INSERT", "UPDATE", "DELETE"] {
            let sql = format!(
                "CREATE TRIGGER crash_{table}_{op} BEFORE {op} ON {table} \
                 WHEN (SELECT n FROM crash_budget) >= 0 BEGIN \
                   SELECT RAISE(ABORT, 'injected crash') WHERE (SELECT n FROM crash_budget) = 0; \
                   UPDATE crash_budget SET n = n - 1; \
                 END"
            );
            sqlx::query(&sql).execute(&mut *conn).await.unwrap();
        }
    }
}

/// Runs `f` in one transaction that fails at the `budget`-th write (None:
/// never); commits on `Ok`, rolls back on `Err`.
async fn attempt<T, E>(
    conn: &mut SqliteConnection,
    budget: Option<i64>,
    f: impl for<'a> FnOnce(&SqlProvider<'a>) -> Result<T, E>,
) -> Result<T, E> {
    let mut tx = conn.begin().await.unwrap();
    if let Some(b) = budget {
        sqlx::query("UPDATE crash_budget SET n = ?")
            .bind(b)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    let result = {
        let provider = Provider::new(SqliteStorageProvider::<JsonCodec>::new(&mut tx));
        f(&provider)
    };
    match result {
        Ok(v) => {
            if budget.is_some() {
                sqlx::query("UPDATE crash_budget SET n = -1")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            tx.commit().await.unwrap();
            Ok(v)
        }
        Err(e) => {
            tx.rollback().await.unwrap();
            Err(e)
        }
    }
}

async fn load(conn: &mut SqliteConnection, id: &[u8]) -> Option<Group> {
    attempt(conn, None, |p| Group::load(p, id)).await.unwrap()
}

const GID: &[u8] = b"!persist:chat.example.org";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_mid_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bob.db");
    let mut hub = Hub::default();
    let mut alice = Device::new("alice");
    alice.create_group(&hub, GID);

    let bob_id = identity("bob", "BOBDEV");
    let bob_public = bob_id.public().clone();
    let mut conn = open(&path).await;
    let batch = attempt(&mut conn, None, |p| {
        bob_id.save(p.storage())?;
        generate_key_packages(p, &bob_id, 1)
            .map_err(|e| parley_crypto::IdentityError::Storage(e.to_string()))
    })
    .await
    .unwrap();
    let kp = parley_crypto::validate_key_package(&alice.provider, &batch.one_time[0]).unwrap();
    let pc = {
        let (p, id) = (&alice.provider, &alice.identity);
        alice
            .group
            .as_mut()
            .unwrap()
            .commit_add(p, id, &[kp])
            .unwrap()
    };
    let welcome = pc.welcome.clone().unwrap();
    alice.commit(&mut hub, pc).unwrap();
    let mut bob = attempt(&mut conn, None, |p| Group::join(p, &welcome))
        .await
        .unwrap();

    // Alice sends two; bob reads only the second before "crashing".
    let m1 = {
        let (p, id) = (&alice.provider, &alice.identity);
        alice
            .group
            .as_mut()
            .unwrap()
            .encrypt(p, id, b"one")
            .unwrap()
    };
    let m2 = {
        let (p, id) = (&alice.provider, &alice.identity);
        alice
            .group
            .as_mut()
            .unwrap()
            .encrypt(p, id, b"two")
            .unwrap()
    };
    let r = attempt(&mut conn, None, |p| bob.process(p, &m2))
        .await
        .unwrap();
    assert!(matches!(r, Received::Application { plaintext, .. } if plaintext == b"two"));
    drop(bob);
    drop(bob_id);
    conn.close().await.unwrap();

    // Restart: everything comes back from the file.
    let mut conn = open(&path).await;
    let bob_id = attempt(&mut conn, None, |p| {
        DeviceIdentity::load(p.storage(), &bob_public)
    })
    .await
    .unwrap()
    .expect("identity stored");
    let mut bob = load(&mut conn, GID).await.expect("group stored");
    assert_eq!(bob.epoch(), 1);
    let r = attempt(&mut conn, None, |p| bob.process(p, &m1))
        .await
        .unwrap();
    assert!(matches!(r, Received::Application { plaintext, .. } if plaintext == b"one"));
    let reply = attempt(&mut conn, None, |p| bob.encrypt(p, &bob_id, b"back again"))
        .await
        .unwrap();
    let (p, g) = (&alice.provider, alice.group.as_mut().unwrap());
    assert!(matches!(g.process(p, &reply).unwrap(),
        Received::Application { plaintext, .. } if plaintext == b"back again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_write_leaves_the_last_consistent_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bob.db");
    let mut conn = open(&path).await;
    install_crash_triggers(&mut conn).await;

    let mut hub = Hub::default();
    let mut alice = Device::new("alice");
    alice.create_group(&hub, GID);
    let bob_id = identity("bob", "BOBDEV");
    let batch = attempt(&mut conn, None, |p| generate_key_packages(p, &bob_id, 1))
        .await
        .unwrap();
    let kp = parley_crypto::validate_key_package(&alice.provider, &batch.one_time[0]).unwrap();
    let pc = {
        let (p, id) = (&alice.provider, &alice.identity);
        alice
            .group
            .as_mut()
            .unwrap()
            .commit_add(p, id, &[kp])
            .unwrap()
    };
    let welcome = pc.welcome.clone().unwrap();
    alice.commit(&mut hub, pc).unwrap();

    // 1. Joining from the Welcome.
    let mut crashes = 0;
    for k in 0.. {
        assert!(k < 1000, "join never succeeded");
        match attempt(&mut conn, Some(k), |p| Group::join(p, &welcome)).await {
            Ok(_) => break,
            Err(e) => {
                crashes += 1;
                assert!(matches!(e, parley_crypto::JoinError::Storage(_)), "{e:?}");
                assert!(
                    load(&mut conn, GID).await.is_none(),
                    "half-joined group at {k}"
                );
            }
        }
    }
    assert!(crashes > 0);
    assert_eq!(load(&mut conn, GID).await.unwrap().epoch(), 1);

    // 2. Decrypting an application message.
    let msg = {
        let (p, id) = (&alice.provider, &alice.identity);
        alice
            .group
            .as_mut()
            .unwrap()
            .encrypt(p, id, b"survive")
            .unwrap()
    };
    crashes = 0;
    for k in 0.. {
        assert!(k < 1000);
        let mut bob = load(&mut conn, GID).await.unwrap();
        match attempt(&mut conn, Some(k), |p| bob.process(p, &msg)).await {
            Ok(Received::Application { plaintext, .. }) => {
                assert_eq!(plaintext, b"survive");
                break;
            }
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                crashes += 1;
                assert!(
                    matches!(e, parley_crypto::ProcessError::Storage(_)),
                    "{e:?}"
                );
            }
        }
    }
    assert!(crashes > 0);

    // 3. Merging another member's Commit.
    let pc = {
        let (p, id) = (&alice.provider, &alice.identity);
        alice.group.as_mut().unwrap().commit_update(p, id).unwrap()
    };
    let commit = pc.commit.clone();
    alice.commit(&mut hub, pc).unwrap();
    crashes = 0;
    for k in 0.. {
        assert!(k < 1000);
        let mut bob = load(&mut conn, GID).await.unwrap();
        assert_eq!(bob.epoch(), 1, "partial merge visible at {k}");
        match attempt(&mut conn, Some(k), |p| bob.process(p, &commit)).await {
            Ok(Received::Commit(s)) => {
                assert_eq!(s.epoch, 2);
                break;
            }
            Ok(other) => panic!("{other:?}"),
            Err(_) => crashes += 1,
        }
    }
    assert!(crashes > 0);
    let mut bob = load(&mut conn, GID).await.unwrap();
    assert_eq!(bob.epoch(), 2);
    let msg = {
        let (p, id) = (&alice.provider, &alice.identity);
        alice
            .group
            .as_mut()
            .unwrap()
            .encrypt(p, id, b"epoch two")
            .unwrap()
    };
    assert!(matches!(
        attempt(&mut conn, None, |p| bob.process(p, &msg))
            .await
            .unwrap(),
        Received::Application { epoch: 2, .. }
    ));

    // 4. Creating our own Commit; the pending Commit survives a restart.
    crashes = 0;
    let pending = loop {
        let mut bob = load(&mut conn, GID).await.unwrap();
        assert!(!bob.has_pending_commit());
        match attempt(&mut conn, Some(crashes), |p| bob.commit_update(p, &bob_id)).await {
            Ok(pc) => break pc,
            Err(_) => crashes += 1,
        }
        assert!(crashes < 1000);
    };
    assert!(crashes > 0);
    conn.close().await.unwrap();
    let mut conn = open(&path).await;
    let mut bob = load(&mut conn, GID).await.unwrap();
    assert!(bob.has_pending_commit());
    assert_eq!(bob.epoch(), 2);
    hub.submit_commit("bob", &pending).unwrap();
    // Confirming, with crashes too.
    crashes = 0;
    for k in 0.. {
        assert!(k < 1000);
        bob = load(&mut conn, GID).await.unwrap();
        match attempt(&mut conn, Some(k), |p| bob.confirm_pending_commit(p)).await {
            Ok(()) => break,
            Err(_) => {
                crashes += 1;
                let again = load(&mut conn, GID).await.unwrap();
                assert!(again.has_pending_commit() && again.epoch() == 2);
            }
        }
    }
    assert!(crashes > 0);
    let bob = load(&mut conn, GID).await.unwrap();
    assert_eq!(bob.epoch(), 3);
    alice.catch_up(&hub);
    assert_eq!(alice.group().epoch(), 3);
    let mut bob = bob;
    let hello = attempt(&mut conn, None, |p| {
        bob.encrypt(p, &bob_id, b"after all that")
    })
    .await
    .unwrap();
    let (p, g) = (&alice.provider, alice.group.as_mut().unwrap());
    assert!(matches!(g.process(p, &hello).unwrap(),
        Received::Application { plaintext, .. } if plaintext == b"after all that"));
}
