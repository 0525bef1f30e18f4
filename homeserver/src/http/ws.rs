//! The device WebSocket (`GET /v1/ws`): inbox replay, then live delivery; sends, acks
//! and read markers from the device.
//!
//! Invariant: one connection never sends the same inbox item twice. It registers with
//! the gateway *before* reading the inbox, holds live items back until the replay is
//! done, and skips any item it already sent — so a reconnecting device sees its whole
//! inbox in order, then the live stream, with no gap and no duplicate.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use parley_client_api::ErrorCode;
use parley_client_api::http::chats::{SendAck, send};
use parley_client_api::ws::{ClientFrame, FRAME_OVERHEAD, MAX_ACK_IDS, ServerFrame};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::oneshot;

use super::AppState;
use super::error::ApiError;
use super::extract::Auth;
use crate::gateway::{CloseReason, Outbound};
use crate::service::ServiceError;
use crate::service::accounts::Session;
use crate::store::InboxItem;

/// Inbox items read per replay query.
const REPLAY_PAGE: u32 = 500;
/// Keep-alive ping interval; a socket silent for three of them is closed.
const PING_EVERY: Duration = Duration::from_secs(30);
/// Most queued frames written before one flush.
const WRITE_BATCH: usize = 64;
/// A socket's read buffer to start with (it grows for a large frame). tungstenite's
/// default, 128 KiB, is most of what an idle socket costs (F9 in docs/scaling.md).
const READ_BUFFER: usize = 8 * 1024;
/// Bytes buffered before a write reaches the socket. Frames are flushed after each batch
/// (`WRITE_BATCH`), so a small buffer costs no syscalls; tungstenite's default is 128 KiB.
const WRITE_BUFFER: usize = 16 * 1024;

pub async fn upgrade(
    State(st): State<AppState>,
    Auth(me): Auth,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return ApiError::new(
                ErrorCode::InvalidParam,
                format!("expected a WebSocket upgrade: {e}"),
            )
            .into_response();
        }
    };
    let Ok(permit) = st.sockets.clone().try_acquire_owned() else {
        return ApiError::new(
            ErrorCode::RateLimited,
            "too many open connections; retry later",
        )
        .into_response();
    };
    let max = st.services.config.limits.max_event_bytes() / 3 * 4 + FRAME_OVERHEAD;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| connection(st, me, socket, permit))
}

type SendFuture = Pin<Box<dyn Future<Output = (String, Result<SendAck, ServiceError>)> + Send>>;
type PageFuture = Pin<Box<dyn Future<Output = Result<Vec<InboxItem>, ServiceError>> + Send>>;

struct Conn {
    st: AppState,
    me: Session,
    socket: WebSocket,
    /// Items sent on this connection and not acknowledged yet.
    sent: HashSet<i64>,
    /// Acknowledged ids not handed to the ack writer yet (its queue was full). Live
    /// delivery never waits for them; reading from the client pauses while there are
    /// `MAX_ACK_IDS` of them.
    pending_acks: Vec<i64>,
    /// The last acknowledgement handed to the ack writer (FIFO: awaiting it awaits all).
    last_ack: Option<oneshot::Receiver<()>>,
    /// This connection's gateway registration (presence tells connections apart by it).
    conn: u64,
    /// The client has sent a heartbeat: it takes presence frames (spec PR3).
    heartbeats: bool,
}

enum End {
    Client,
    Closed(CloseReason),
    Protocol(&'static str),
}

async fn connection(st: AppState, me: Session, socket: WebSocket, _permit: OwnedSemaphorePermit) {
    let gateway = st.services.gateway.clone();
    let Some(mut reg) = gateway.register(me.device_id.clone()).await else {
        return;
    };
    let metrics = st.services.metrics.clone();
    metrics.sockets.inc();
    tracing::debug!(user = %me.user_id, device = %me.device_id, "socket open");
    let device = me.device_id.clone();
    let presence = st.services.presence.clone();
    presence.connect(&me.user_id, &device, reg.conn);
    let mut conn = Conn {
        st,
        me,
        socket,
        sent: HashSet::new(),
        pending_acks: Vec::new(),
        last_ack: None,
        conn: reg.conn,
        heartbeats: false,
    };
    let end = conn.run(&mut reg.rx).await;
    gateway.unregister(device.clone(), reg.conn).await;
    presence.disconnect(&conn.me.user_id, &device, reg.conn);
    // Acknowledgements received before the close are committed before we finish, so a
    // quick reconnect does not see them again.
    if !conn.pending_acks.is_empty() {
        let inbox = conn.st.services.inbox.clone();
        if let Ok(Ok(permit)) =
            tokio::time::timeout(Duration::from_secs(5), inbox.reserve_ack()).await
        {
            let ids = std::mem::take(&mut conn.pending_acks);
            conn.last_ack = Some(permit.send(conn.me.user_id.clone(), device.clone(), ids));
        }
    }
    if let Some(ack) = conn.last_ack.take() {
        let _ = tokio::time::timeout(Duration::from_secs(5), ack).await;
    }
    let close = match end {
        Ok(End::Client) | Err(_) => None,
        Ok(End::Closed(reason)) => Some(reason.code()),
        Ok(End::Protocol(why)) => Some((1008, why)),
    };
    if let Some((code, reason)) = close {
        let _ = conn
            .socket
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    }
    metrics.sockets.dec();
    tracing::debug!(%device, "socket closed");
}

impl Conn {
    async fn run(
        &mut self,
        rx: &mut tokio::sync::mpsc::Receiver<Outbound>,
    ) -> Result<End, axum::Error> {
        let limits = self.st.services.config.limits.clone();
        let shutdown = self.st.shutdown.clone();
        let inbox = self.st.services.inbox.clone();
        let mut sends: FuturesUnordered<SendFuture> = FuturesUnordered::new();
        let mut replaying = true;
        let mut replay_after = 0i64;
        let mut page: Option<PageFuture> = Some(self.page(0));
        let mut held: Vec<Outbound> = Vec::new();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut silent_ticks = 0u32;

        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(End::Closed(CloseReason::Shutdown)),
                permit = inbox.reserve_ack(), if !self.pending_acks.is_empty() => {
                    let ids = std::mem::take(&mut self.pending_acks);
                    match permit {
                        Ok(permit) => {
                            let (user, device) = (self.me.user_id.clone(), self.me.device_id.clone());
                            self.last_ack = Some(permit.send(user, device, ids));
                        }
                        Err(e) => {
                            let e = ApiError::from(e);
                            self.error(e.code, &e.message, None).await?;
                        }
                    }
                }
                incoming = self.socket.recv(),
                    if sends.len() < limits.max_inflight_sends && self.pending_acks.len() < MAX_ACK_IDS => {
                    silent_ticks = 0;
                    let Some(msg) = incoming else { return Ok(End::Client) };
                    match msg? {
                        Message::Text(text) => {
                            if let Some(fut) = self.on_frame(text.as_str()).await? {
                                sends.push(fut);
                            }
                        }
                        Message::Binary(_) => {
                            self.error(ErrorCode::BadJson, "frames are JSON text messages", None).await?;
                        }
                        Message::Close(_) => return Ok(End::Client),
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                }
                Some((client_msg_id, result)) = sends.next(), if !sends.is_empty() => {
                    match result {
                        Ok(ack) => self.write(&ServerFrame::Sent { ack }).await?,
                        Err(e) => {
                            let e = ApiError::from(e);
                            self.write(&ServerFrame::Error {
                                code: e.code,
                                message: e.message,
                                client_msg_id: Some(client_msg_id),
                                current_epoch: e.current_epoch,
                            })
                            .await?;
                        }
                    }
                }
                items = async { match page.as_mut() { Some(p) => p.await, None => std::future::pending().await } }, if page.is_some() => {
                    page = None;
                    let items = items.map_err(axum::Error::new)?;
                    let full = items.len() as u32 == REPLAY_PAGE;
                    for item in items {
                        replay_after = replay_after.max(item.id());
                        if self.sent.insert(item.id()) {
                            self.write(&inbox_frame(item)).await?;
                        }
                    }
                    if full {
                        if self.sent.len() >= limits.max_unacked {
                            return Ok(End::Protocol("too many unacknowledged items"));
                        }
                        page = Some(self.page(replay_after));
                    } else {
                        replaying = false;
                        self.write(&ServerFrame::Synced).await?;
                        for item in std::mem::take(&mut held) {
                            if let Some(end) = self.outbound(item).await? {
                                return Ok(end);
                            }
                        }
                        self.socket.flush().await?;
                    }
                }
                item = rx.recv() => {
                    let Some(item) = item else { return Ok(End::Closed(CloseReason::Lagged)) };
                    if replaying {
                        if held.len() >= limits.max_unacked {
                            return Ok(End::Closed(CloseReason::Lagged));
                        }
                        held.push(item);
                    } else {
                        // Write what is queued, then flush once.
                        let mut next = Some(item);
                        let mut written = 0;
                        while let Some(item) = next.take() {
                            if let Some(end) = self.outbound(item).await? {
                                return Ok(end);
                            }
                            written += 1;
                            if written < WRITE_BATCH {
                                next = rx.try_recv().ok();
                            }
                        }
                        self.socket.flush().await?;
                    }
                }
                _ = ping.tick() => {
                    silent_ticks += 1;
                    if silent_ticks > 3 {
                        return Ok(End::Protocol("no traffic; timed out"));
                    }
                    self.socket.send(Message::Ping(Default::default())).await?;
                }
            }
        }
    }

    fn page(&self, after: i64) -> PageFuture {
        let inbox = self.st.services.inbox.clone();
        let device = self.me.device_id.clone();
        Box::pin(async move { inbox.page(&device, after, REPLAY_PAGE).await })
    }

    /// Queues a live item for writing (the caller flushes) unless this connection
    /// already sent it.
    async fn outbound(&mut self, item: Outbound) -> Result<Option<End>, axum::Error> {
        match item {
            Outbound::Close(reason) => return Ok(Some(End::Closed(reason))),
            Outbound::Event { id, event_json } => {
                if self.sent.insert(id) {
                    let text = event_frame_text(id, &event_json);
                    self.socket.feed(Message::Text(text.into())).await?;
                }
            }
            Outbound::Frame { id, json } => {
                if self.sent.insert(id) {
                    self.socket.feed(Message::Text(json.into())).await?;
                }
            }
            Outbound::Ephemeral(json) => {
                self.socket
                    .feed(Message::Text(json.as_ref().into()))
                    .await?;
            }
            Outbound::Presence(json) => {
                if self.heartbeats {
                    self.socket
                        .feed(Message::Text(json.as_ref().into()))
                        .await?;
                }
            }
        }
        if self.sent.len() > self.st.services.config.limits.max_unacked {
            return Ok(Some(End::Protocol("too many unacknowledged items")));
        }
        Ok(None)
    }

    async fn on_frame(&mut self, text: &str) -> Result<Option<SendFuture>, axum::Error> {
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                self.error(ErrorCode::BadJson, &format!("invalid frame: {e}"), None)
                    .await?;
                return Ok(None);
            }
        };
        match frame {
            ClientFrame::Send {
                chat_id,
                client_msg_id,
                payload,
                mls,
                membership,
                blobs,
                expires_in,
                read_receipts,
                group_info,
            } => {
                let chats = self.st.services.chats.clone();
                let me = self.me.clone();
                let body = send::Request {
                    client_msg_id: client_msg_id.clone(),
                    payload,
                    mls,
                    membership,
                    blobs,
                    expires_in,
                    read_receipts,
                    group_info,
                };
                return Ok(Some(Box::pin(async move {
                    let r = chats.send(&me, chat_id, body).await;
                    (client_msg_id, r)
                })));
            }
            ClientFrame::Ack { ids } => {
                if ids.is_empty() || ids.len() > MAX_ACK_IDS {
                    let msg = format!("ack: 1 to {MAX_ACK_IDS} ids");
                    self.error(ErrorCode::InvalidParam, &msg, None).await?;
                    return Ok(None);
                }
                for id in &ids {
                    self.sent.remove(id);
                }
                // Handed to the ack writer by `run` as soon as its queue has room.
                self.pending_acks.extend(ids);
            }
            ClientFrame::Read { chat_id, seq } => {
                if let Err(e) = self
                    .st
                    .services
                    .chats
                    .mark_read(&self.me, &chat_id, seq)
                    .await
                {
                    let e = ApiError::from(e);
                    self.error(e.code, &e.message, None).await?;
                }
            }
            ClientFrame::Ping => self.write(&ServerFrame::Pong).await?,
            ClientFrame::Heartbeat => {
                self.heartbeats = true;
                self.st.services.presence.heartbeat(
                    &self.me.user_id,
                    &self.me.device_id,
                    self.conn,
                );
            }
            ClientFrame::Typing { chat_id, typing } => {
                if let Err(e) = self
                    .st
                    .services
                    .presence
                    .typing(&self.me.user_id, &self.me.device_id, &chat_id, typing)
                    .await
                {
                    let e = ApiError::from(e);
                    self.error(e.code, &e.message, None).await?;
                }
            }
        }
        Ok(None)
    }

    async fn write(&mut self, frame: &ServerFrame) -> Result<(), axum::Error> {
        let text = serde_json::to_string(frame).map_err(axum::Error::new)?;
        self.socket.send(Message::Text(text.into())).await
    }

    async fn error(
        &mut self,
        code: ErrorCode,
        message: &str,
        client_msg_id: Option<String>,
    ) -> Result<(), axum::Error> {
        self.write(&ServerFrame::Error {
            code,
            message: message.to_owned(),
            client_msg_id,
            current_epoch: None,
        })
        .await
    }
}

fn inbox_frame(item: InboxItem) -> ServerFrame {
    match item {
        InboxItem::Event { id, event } => ServerFrame::Event { id, event },
        InboxItem::Receipt {
            id,
            chat_id,
            receipt,
        } => ServerFrame::Receipt {
            id,
            chat_id,
            receipt,
        },
        InboxItem::SendResult { frame, .. } => frame,
    }
}

/// `ServerFrame::Event` around an event serialized once for all its recipients.
fn event_frame_text(id: i64, event_json: &str) -> String {
    format!(r#"{{"type":"event","id":{id},"event":{event_json}}}"#)
}

#[cfg(test)]
mod tests {
    use parley_client_api::Payload;
    use parley_client_api::http::chats::ChatEvent;
    use parley_client_api::ws::ServerFrame;

    #[test]
    fn spliced_event_frame_is_a_server_frame() {
        let event = ChatEvent {
            chat_id: "!abc:x.org".try_into().unwrap(),
            seq: 9,
            sender: "@a:x.org".try_into().unwrap(),
            sender_device: "D1".try_into().unwrap(),
            client_msg_id: "m\"1".into(),
            ts: 5,
            payload: Payload(vec![0, 255, 7]),
            mls: Some(parley_client_api::http::chats::MlsMeta {
                kind: parley_client_api::http::chats::MlsKind::Commit,
                epoch: 3,
            }),
            membership: None,
            blobs: vec!["ab".repeat(32).try_into().unwrap()],
            expires_in: Some(60),
            read_receipts: None,
        };
        let text = super::event_frame_text(42, &serde_json::to_string(&event).unwrap());
        let frame: ServerFrame = serde_json::from_str(&text).unwrap();
        assert_eq!(frame, ServerFrame::Event { id: 42, event });
    }
}
