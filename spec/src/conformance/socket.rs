//! A device WebSocket (`GET /v1/ws`) as the suite drives it: JSON frames in and out.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::net::User;

/// How long the suite waits for a frame it expects.
pub(crate) const WAIT: Duration = Duration::from_secs(15);

pub(crate) struct Socket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Socket {
    /// Opens `user`'s device socket.
    pub(crate) async fn connect(user: &User) -> Result<Self> {
        let base = user
            .base
            .strip_prefix("http")
            .with_context(|| format!("{} is not an http(s) URL", user.base))?;
        let url = format!("ws{base}/v1/ws?access_token={}", user.token);
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .context("opening the WebSocket")?;
        Ok(Self { ws })
    }

    /// Opens the socket and reads the inbox replay up to `synced`; returns the frames
    /// before it.
    pub(crate) async fn connect_synced(user: &User) -> Result<(Self, Vec<Value>)> {
        let mut s = Self::connect(user).await?;
        let mut replay = Vec::new();
        loop {
            let f = s.next().await?;
            if f["type"] == "synced" {
                return Ok((s, replay));
            }
            replay.push(f);
        }
    }

    pub(crate) async fn send(&mut self, frame: Value) -> Result<()> {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .context("writing a frame")
    }

    /// The next JSON frame (skipping control messages), within [`WAIT`].
    pub(crate) async fn next(&mut self) -> Result<Value> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .context("no frame within the wait")?;
            match msg {
                None => bail!("the server closed the socket"),
                Some(Err(e)) => bail!("socket error: {e}"),
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(t.as_str())
                        .with_context(|| format!("frame is not JSON: {t}"));
                }
                Some(Ok(Message::Close(c))) => bail!("the server closed the socket: {c:?}"),
                Some(Ok(_)) => {}
            }
        }
    }

    /// Reads frames until one matches `pred`; returns it (others are dropped).
    pub(crate) async fn until(
        &mut self,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        loop {
            let f = self
                .next()
                .await
                .with_context(|| format!("waiting for {what}"))?;
            if pred(&f) {
                return Ok(f);
            }
        }
    }

    /// Acknowledges inbox items.
    pub(crate) async fn ack(&mut self, ids: &[i64]) -> Result<()> {
        self.send(serde_json::json!({"type": "ack", "ids": ids}))
            .await
    }

    /// Reads until the server closes the socket (within [`WAIT`]); the close code, if
    /// the server sent a close frame.
    pub(crate) async fn closed_with(&mut self) -> Result<Option<u16>> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .context("the socket stayed open")?;
            match msg {
                None | Some(Err(_)) => return Ok(None),
                Some(Ok(Message::Close(c))) => return Ok(c.map(|c| u16::from(c.code))),
                Some(Ok(_)) => {}
            }
        }
    }

    pub(crate) async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
