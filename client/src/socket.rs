//! The WebSocket task: connects, replays the inbox, processes live frames, sends the
//! outbox and read markers, and reconnects with backoff when the connection drops.
//!
//! One task owns the socket. Inbox items are acknowledged only after the store
//! transaction that processed them committed; an item seen again after a reconnect is
//! recognised by `(chat_id, seq)` and only acknowledged again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parley_client_api::http::chats::{MlsKind, MlsMeta};
use parley_client_api::ws::{ClientFrame, MAX_ACK_IDS, ServerFrame};
use parley_client_api::{ChatId, Payload};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::client::{ConnectionState, Event, Inner};
use crate::error::Error;
use crate::store;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Application-level keep-alive interval.
const PING_EVERY: Duration = Duration::from_secs(20);
/// A connection silent for this long is considered dead.
const SILENCE_LIMIT: Duration = Duration::from_secs(65);
/// Acks are sent once this many are pending (and at the end of the replay, and after
/// each live frame).
const ACK_BATCH: usize = 256;
/// How long to wait before resending a send the server refused as transient.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Why a connection ended.
enum End {
    Shutdown,
    LoggedOut,
    Lost(String),
}

/// The task: connect, run, reconnect, until shutdown or logout.
pub(crate) async fn run(inner: Arc<Inner>, mut flush_rx: mpsc::Receiver<()>) {
    // Disappearing messages go on schedule whether or not the socket is up.
    let expiry = tokio::spawn(crate::disappearing::expiry_loop(inner.clone()));
    run_socket(inner, &mut flush_rx).await;
    expiry.abort();
}

async fn run_socket(inner: Arc<Inner>, flush_rx: &mut mpsc::Receiver<()>) {
    let mut shutdown = inner.shutdown.clone();
    let mut backoff = inner.config.reconnect_min;
    loop {
        if *shutdown.borrow() {
            break;
        }
        match connect(&inner).await {
            Ok(ws) => {
                backoff = inner.config.reconnect_min;
                inner.set_state(ConnectionState::Connected);
                let mut conn = Conn {
                    inner: inner.clone(),
                    ws,
                    in_flight: HashSet::new(),
                    acks: Vec::new(),
                    synced: false,
                    retry_at: None,
                    beat_sent: false,
                };
                let end = conn.run(flush_rx, &mut shutdown).await;
                match end {
                    End::Shutdown => {
                        let _ = conn.ws.close(None).await;
                        break;
                    }
                    End::LoggedOut => {
                        inner.set_state(ConnectionState::LoggedOut);
                        return;
                    }
                    End::Lost(why) => {
                        tracing::info!(reason = %why, "connection lost; reconnecting");
                    }
                }
            }
            Err(Connect::Unauthorized) => {
                inner.set_state(ConnectionState::LoggedOut);
                return;
            }
            Err(Connect::Failed(why)) => {
                tracing::debug!(reason = %why, "connecting failed");
            }
        }
        inner.set_state(ConnectionState::Offline);
        let jitter = Duration::from_millis(
            u64::from(rand_u8()) * backoff.as_millis().min(1000) as u64 / 1024,
        );
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = shutdown.changed() => {}
        }
        backoff = (backoff * 2).min(inner.config.reconnect_max);
    }
    inner.set_state(ConnectionState::Offline);
}

/// A little jitter without a random number generator dependency.
fn rand_u8() -> u8 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos >> 10) as u8
}

enum Connect {
    Unauthorized,
    Failed(String),
}

async fn connect(inner: &Inner) -> Result<Ws, Connect> {
    let Some(token) = inner.api.token() else {
        return Err(Connect::Unauthorized);
    };
    let mut req = inner
        .api
        .ws_url()
        .into_client_request()
        .map_err(|e| Connect::Failed(e.to_string()))?;
    let auth = format!("Bearer {token}")
        .parse()
        .map_err(|_| Connect::Unauthorized)?;
    req.headers_mut().insert("authorization", auth);
    match tokio::time::timeout(
        Duration::from_secs(15),
        tokio_tungstenite::connect_async(req),
    )
    .await
    {
        Err(_) => Err(Connect::Failed("timed out".into())),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(resp))) if resp.status().as_u16() == 401 => {
            Err(Connect::Unauthorized)
        }
        Ok(Err(e)) => Err(Connect::Failed(e.to_string())),
    }
}

struct Conn {
    inner: Arc<Inner>,
    ws: Ws,
    /// Sends written on this connection and not acknowledged yet.
    in_flight: HashSet<String>,
    /// Inbox ids processed and not acknowledged yet.
    acks: Vec<i64>,
    synced: bool,
    /// When to resend sends the server refused as transient.
    retry_at: Option<Instant>,
    /// A heartbeat went out on this connection since the device became present.
    beat_sent: bool,
}

impl Conn {
    async fn run(
        &mut self,
        flush_rx: &mut mpsc::Receiver<()>,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> End {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut housekeeping = tokio::time::interval(self.inner.config.housekeeping_interval);
        housekeeping.tick().await;
        let mut last_rx = Instant::now();
        let mut heartbeat = tokio::time::interval(self.inner.config.heartbeat_interval);
        heartbeat.tick().await;
        let frames = self.inner.clone();
        let mut frames = frames.frames_rx.lock().await;
        // Typing queued while disconnected is stale.
        while frames.try_recv().is_ok() {}
        loop {
            let retry = async {
                match self.retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let result: Result<Option<End>, Error> = tokio::select! {
                _ = shutdown.changed() => {
                    // Typing the app asked for just before stopping still goes out.
                    while let Ok(frame) = frames.try_recv() {
                        if !self.synced || self.send(&frame).await.is_err() {
                            break;
                        }
                    }
                    Ok(Some(End::Shutdown))
                }
                msg = self.ws.next() => {
                    last_rx = Instant::now();
                    match msg {
                        None => Ok(Some(End::Lost("closed".into()))),
                        Some(Err(e)) => Ok(Some(End::Lost(e.to_string()))),
                        Some(Ok(WsMessage::Text(text))) => self.on_text(text.as_str()).await,
                        Some(Ok(WsMessage::Close(frame))) => {
                            let removed = frame.as_ref().is_some_and(|f| {
                                f.code == CloseCode::Library(4003)
                            });
                            Ok(Some(if removed {
                                End::LoggedOut
                            } else {
                                End::Lost(format!("closed by server: {frame:?}"))
                            }))
                        }
                        Some(Ok(_)) => Ok(None),
                    }
                }
                Some(()) = flush_rx.recv() => {
                    match self.beat(false).await {
                        Err(e) => Err(e),
                        Ok(()) if self.synced => self.flush().await.map(|()| None),
                        Ok(()) => Ok(None),
                    }
                }
                Some(frame) = frames.recv() => {
                    if self.synced { self.send(&frame).await.map(|()| None) } else { Ok(None) }
                }
                _ = heartbeat.tick() => self.beat(true).await.map(|()| None),
                () = retry => {
                    self.retry_at = None;
                    self.flush().await.map(|()| None)
                }
                _ = ping.tick() => {
                    if last_rx.elapsed() > SILENCE_LIMIT {
                        Ok(Some(End::Lost("no traffic from the server".into())))
                    } else {
                        self.send(&ClientFrame::Ping).await.map(|()| None)
                    }
                }
                _ = housekeeping.tick() => {
                    if self.synced { self.housekeeping(false).await; }
                    Ok(None)
                }
            };
            match result {
                Ok(Some(end)) => return end,
                Ok(None) => {}
                Err(e) => return End::Lost(e.to_string()),
            }
            if self.inner.take_device_sync() {
                if let Err(e) = self.inner.sync_devices(true).await {
                    tracing::warn!(error = %e, "device sync failed");
                }
                if let Err(e) = self.flush().await {
                    return End::Lost(e.to_string());
                }
            }
        }
    }

    async fn send(&mut self, frame: &ClientFrame) -> Result<(), Error> {
        let text = serde_json::to_string(frame).map_err(|e| Error::Protocol(e.to_string()))?;
        self.ws
            .send(WsMessage::Text(text.into()))
            .await
            .map_err(|e| Error::Unreachable {
                url: self.inner.api.base().to_owned(),
                reason: e.to_string(),
            })
    }

    /// Sends a heartbeat while the device is present: on every tick (`periodic`), else
    /// once when it became present.
    async fn beat(&mut self, periodic: bool) -> Result<(), Error> {
        if !self
            .inner
            .present
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.beat_sent = false;
            return Ok(());
        }
        if periodic || !self.beat_sent {
            self.beat_sent = true;
            self.send(&ClientFrame::Heartbeat).await?;
        }
        Ok(())
    }

    async fn send_acks(&mut self) -> Result<(), Error> {
        while !self.acks.is_empty() {
            let n = self.acks.len().min(MAX_ACK_IDS);
            let ids: Vec<i64> = self.acks.drain(..n).collect();
            self.send(&ClientFrame::Ack { ids }).await?;
        }
        Ok(())
    }

    async fn on_text(&mut self, text: &str) -> Result<Option<End>, Error> {
        let frame: ServerFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "unknown frame from the server; ignored");
                return Ok(None);
            }
        };
        match frame {
            ServerFrame::Event { id, event } => {
                self.inner.ingest(event.into()).await?;
                self.acks.push(id);
            }
            ServerFrame::Receipt {
                id,
                chat_id,
                receipt,
            } => {
                self.inner.on_receipt(chat_id, receipt).await?;
                self.acks.push(id);
            }
            ServerFrame::Synced => {
                self.send_acks().await?;
                self.beat(false).await?;
                self.synced = true;
                self.inner.set_state(ConnectionState::Synced);
                self.housekeeping(true).await;
                self.flush().await?;
            }
            ServerFrame::Sent { ack } if ack.pending => {
                // Stored by our server, which waits for the chat's hub (another server):
                // not resent on this connection; `sent_late` or `send_failed` concludes it.
                tracing::info!(chat = %ack.chat_id, id = %ack.client_msg_id, "send pending at the hub");
                self.flush().await?;
            }
            ServerFrame::Sent { ack } => {
                self.in_flight.remove(&ack.client_msg_id);
                self.inner.on_sent(ack).await?;
                self.flush().await?;
            }
            ServerFrame::SentLate { id, ack } => {
                self.in_flight.remove(&ack.client_msg_id);
                self.inner.on_sent(ack).await?;
                self.acks.push(id);
                self.flush().await?;
            }
            ServerFrame::SendFailed {
                id,
                client_msg_id,
                code,
                message,
                current_epoch,
                ..
            } => {
                tracing::info!(id = %client_msg_id, code = code.as_str(), %message, "the chat's hub refused a pending send");
                self.in_flight.remove(&client_msg_id);
                if self
                    .inner
                    .on_send_error(&client_msg_id, code, current_epoch)
                    .await?
                {
                    self.retry_at = Some(Instant::now() + RETRY_AFTER);
                }
                self.acks.push(id);
            }
            ServerFrame::Error {
                code,
                message,
                client_msg_id,
                current_epoch,
                ..
            } => match client_msg_id {
                Some(id) => {
                    self.in_flight.remove(&id);
                    if self.inner.on_send_error(&id, code, current_epoch).await? {
                        self.retry_at = Some(Instant::now() + RETRY_AFTER);
                    }
                }
                None => {
                    tracing::warn!(code = code.as_str(), %message, "the server refused a frame")
                }
            },
            ServerFrame::Pong => {}
            ServerFrame::DevicesChanged => {
                // The leader of each chat among the remaining devices commits the removal.
                if let Err(e) = self.inner.sync_devices(false).await {
                    tracing::warn!(error = %e, "device sync failed");
                }
                self.flush().await?;
            }
            ServerFrame::Presence { presence } => {
                let _ = self.inner.events.send(Event::Presence(presence));
            }
            ServerFrame::Typing {
                chat_id,
                user_id,
                device_id,
                typing,
            } => {
                let _ = self.inner.events.send(Event::Typing {
                    chat_id,
                    user_id,
                    device_id,
                    typing,
                });
            }
        }
        if self.synced || self.acks.len() >= ACK_BATCH {
            self.send_acks().await?;
        }
        Ok(None)
    }

    /// After (re)connecting, and now and then: KeyPackages, own devices.
    async fn housekeeping(&mut self, after_sync: bool) {
        if let Err(e) = self.inner.top_up_key_packages().await {
            tracing::warn!(error = %e, "key package top-up failed");
        }
        if let Err(e) = self.inner.sync_devices(false).await {
            tracing::warn!(error = %e, after_sync, "device sync failed");
        }
    }

    /// Sends unsent read markers and the outbox, in order per chat: a chat's messages
    /// wait behind its in-flight Commit (they are encrypted in the epoch it creates).
    async fn flush(&mut self) -> Result<(), Error> {
        if !self.synced {
            return Ok(());
        }
        let (reads, rows) = {
            let mut conn = self.inner.db.writer.lock().await;
            (
                store::unsent_reads(&mut conn).await?,
                store::outbox_all(&mut conn).await?,
            )
        };
        for (chat, seq) in reads {
            self.send(&ClientFrame::Read {
                chat_id: chat.clone(),
                seq,
            })
            .await?;
            let mut conn = self.inner.db.writer.lock().await;
            store::set_read_sent(&mut conn, &chat, seq).await?;
        }
        let mut blocked: HashSet<String> = HashSet::new();
        // Chats whose first message waits for a commit of ours: later messages wait
        // too, but a commit queued after them (the one they wait for) goes.
        let mut waiting: HashSet<String> = HashSet::new();
        for row in rows {
            let is_commit = row.kind == store::OUTBOX_COMMIT;
            if blocked.contains(&row.chat_id) || (!is_commit && waiting.contains(&row.chat_id)) {
                continue;
            }
            if row.upload.is_some() {
                // A file message whose upload is not complete: it (and the messages
                // after it in its chat) waits; the upload resumes in the background.
                crate::media::resume_upload(&self.inner, &row);
                waiting.insert(row.chat_id.clone());
                continue;
            }
            if self.inner.is_direct(&row.client_msg_id) {
                // An SDK call is sending this commit itself; what follows waits.
                blocked.insert(row.chat_id.clone());
                continue;
            }
            if self.in_flight.contains(&row.client_msg_id) {
                if is_commit {
                    blocked.insert(row.chat_id.clone());
                }
                continue;
            }
            let (payload, epoch) = match (&row.payload, row.epoch) {
                (Some(p), Some(e)) => (p.clone(), u64::try_from(e).unwrap_or(0)),
                _ => match self.inner.encrypt_queued(&row).await? {
                    Some(p) => p,
                    None => {
                        waiting.insert(row.chat_id.clone());
                        continue;
                    }
                },
            };
            let chat_id = ChatId::try_from(row.chat_id.as_str()).map_err(Error::store)?;
            let kind = if is_commit {
                MlsKind::Commit
            } else {
                MlsKind::Application
            };
            let membership: Option<serde_json::Value> = row
                .membership
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok());
            let blobs: serde_json::Value = row
                .blobs
                .as_deref()
                .and_then(|b| serde_json::from_str(b).ok())
                .unwrap_or_else(|| serde_json::json!([]));
            // What the servers must see in the clear (MS31, MS44): the message's timer,
            // and the read-receipt policy a `read_receipts` event sets.
            let envelope = row
                .plaintext
                .as_deref()
                .filter(|_| !is_commit)
                .and_then(|p| parley_crypto::Envelope::from_bytes(p).ok());
            let expires_in = envelope.as_ref().and_then(|e| e.expires_in);
            let read_receipts = match envelope.as_ref().map(|e| &e.content) {
                Some(parley_crypto::Content::ReadReceipts { allowed }) => Some(*allowed),
                _ => None,
            };
            let frame = crate::api::wire(serde_json::json!({
                "type": "send",
                "chat_id": chat_id,
                "client_msg_id": row.client_msg_id,
                "payload": Payload(payload),
                "mls": MlsMeta { kind, epoch },
                "membership": membership,
                "blobs": blobs,
                "expires_in": expires_in,
                "read_receipts": read_receipts,
                "group_info": row.group_info.clone().filter(|_| is_commit).map(Payload),
            }))?;
            self.send(&frame).await?;
            self.in_flight.insert(row.client_msg_id.clone());
            if is_commit {
                blocked.insert(row.chat_id.clone());
            }
        }
        Ok(())
    }
}
