//! What works without a server.

use parley_client::{Client, ClientConfig, Error, Reader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_profile_is_not_logged_in() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Reader::open(dir.path()).await,
        Err(Error::NotLoggedIn(_))
    ));
    assert!(matches!(
        Client::open(ClientConfig::new(dir.path())).await,
        Err(Error::NotLoggedIn(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_is_reported_as_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let port = parley_testkit::free_port("127.0.0.1");
    let err = Client::register(
        ClientConfig::new(dir.path()),
        &format!("http://127.0.0.1:{port}"),
        "alice",
        "correct horse battery",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
}
