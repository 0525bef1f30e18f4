use std::time::Duration;

use anyhow::Result;
use parley_testkit::ServerProcess;
use tokio::process::Command;

fn sh(script: &str) -> Command {
    let mut command = Command::new("sh");
    command.args(["-c", script]);
    command
}

#[tokio::test]
async fn detects_readiness_and_captures_both_streams() -> Result<()> {
    let mut server = ServerProcess::spawn(
        "sh",
        [
            "-c",
            r#"echo "booting $GREETING"; echo "warming up" >&2
               echo "x listening on 127.0.0.1:1"
               sleep 0.2; echo "late line" >&2; sleep 30"#,
        ],
        [("GREETING", "hi")],
    )
    .await?;
    assert_eq!(server.addr(), "127.0.0.1:1");
    assert!(server.pid().is_some());

    server
        .wait_for_log("late line", Duration::from_secs(10))
        .await?;
    let logs = server.logs();
    for line in [
        "booting hi",
        "warming up",
        "x listening on 127.0.0.1:1",
        "late line",
    ] {
        assert!(logs.contains(line), "missing {line:?} in:\n{logs}");
    }

    let status = server.kill_hard().await?;
    assert!(!status.success());
    assert!(server.pid().is_none());
    Ok(())
}

#[tokio::test]
async fn waiting_for_a_line_that_never_comes_fails_with_the_output() -> Result<()> {
    let server = ServerProcess::start(sh("echo 'listening on 127.0.0.1:2'; sleep 30")).await?;
    let err = server
        .wait_for_log("never printed", Duration::from_millis(300))
        .await
        .expect_err("the line was never printed");
    let message = format!("{err:#}");
    assert!(message.contains("never printed"), "{message}");
    assert!(message.contains("listening on 127.0.0.1:2"), "{message}");
    Ok(())
}

#[tokio::test]
async fn an_early_exit_is_reported_with_its_output() -> Result<()> {
    let err = ServerProcess::start(sh("echo 'config error: no such file' >&2; exit 3"))
        .await
        .expect_err("the process exits before it is ready");
    let message = format!("{err:#}");
    assert!(message.contains("config error: no such file"), "{message}");
    assert!(message.contains('3'), "exit status missing: {message}");
    Ok(())
}

#[tokio::test]
async fn a_server_that_never_gets_ready_times_out_with_its_output() -> Result<()> {
    let err = ServerProcess::start_with_timeout(
        sh("echo 'still booting'; sleep 30"),
        Duration::from_millis(500),
    )
    .await
    .expect_err("the process never prints the line");
    let message = format!("{err:#}");
    assert!(message.contains("did not print"), "{message}");
    assert!(message.contains("still booting"), "{message}");
    Ok(())
}

#[tokio::test]
async fn terminate_asks_for_a_graceful_exit() -> Result<()> {
    let mut server = ServerProcess::start(sh(
        "trap 'echo bye; exit 0' TERM; echo 'listening on 127.0.0.1:3'; while :; do sleep 0.1; done",
    ))
    .await?;
    server.terminate().await?;
    let status = tokio::time::timeout(Duration::from_secs(10), server.wait()).await??;
    assert!(status.success(), "{status}");
    assert!(server.logs().contains("bye"));
    Ok(())
}
