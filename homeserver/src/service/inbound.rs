//! Receiving a federation transaction (`PUT /_parley/fed/v1/send/{txn_id}`) from a
//! verified origin: as the hub of a chat (its users' forwarded sends), as a follower (the
//! hub's chat states and events, written into local inboxes in `seq` order).
//!
//! Every part is idempotent (sends on `(sender_device, client_msg_id)`, events on
//! `(chat_id, seq)`), and the whole answer is kept per `(origin, txn_id)`: a transaction
//! received twice is applied once and answered the same. The answer leaves only after
//! everything it reports is committed.

use std::collections::HashSet;
use std::sync::Arc;

use parley_client_api::http::chats::{ChatEvent, ChatKind, Receipt};
use parley_client_api::{BlobHash, ChatId, UserId};
use parley_federation::api::send::{self, EntryError, EventResult, SendResult};
use parley_federation::api::{ChatSnapshot, HubSend};
use parley_federation::{FedErrorCode, ServerName};

use super::relay::convert;
use super::{ServiceError, Services};
use crate::clock::now_ms;
use crate::gateway::Outbound;
use crate::store::fed::{ChatSnapshotRow, FedStore, FollowerOp, Received, order_follower_ops};
use crate::store::{SendOutcome, SendRequest};

fn reject(error: FedErrorCode, message: impl Into<String>) -> EntryError {
    EntryError {
        error,
        message: message.into(),
        current_epoch: None,
    }
}

/// Received transactions older than this (ms) are forgotten: the janitor's cutoff for a
/// dedup window of `window_days` (never under `config::MIN_DEDUP_WINDOW_DAYS`). Pure.
pub fn received_cutoff(now_ms: i64, window_days: u32) -> i64 {
    let days = i64::from(window_days.max(crate::config::MIN_DEDUP_WINDOW_DAYS));
    now_ms.saturating_sub(days * 24 * 3600 * 1000)
}

/// Applies one transaction from `origin` and returns the answer.
pub async fn receive(
    services: &Services,
    origin: &ServerName,
    txn_id: &str,
    mut request: send::Request,
) -> Result<send::Response, ServiceError> {
    if request.origin != *origin {
        return Err(ServiceError::InvalidParam(format!(
            "origin: the transaction says {} but was signed by {origin}",
            request.origin
        )));
    }
    if request.entries() > send::MAX_ENTRIES || request.ephemeral.len() > send::MAX_EPHEMERAL {
        return Err(ServiceError::InvalidParam(format!(
            "at most {} entries and {} ephemeral events per transaction",
            send::MAX_ENTRIES,
            send::MAX_EPHEMERAL
        )));
    }
    // Ephemeral events (typing, presence) are best effort: applied at once, never
    // stored, and a transaction carrying only them needs no deduplication.
    for e in std::mem::take(&mut request.ephemeral) {
        services.presence.receive_ephemeral(origin, e).await;
    }
    if request.entries() == 0 {
        return Ok(send::Response::default());
    }
    if let Some(first) = services.store.received_txn(origin.as_str(), txn_id).await? {
        return serde_json::from_str(&first).map_err(|e| ServiceError::Internal(e.to_string()));
    }
    // Sends and leaves commit on their own (each is idempotent: a resend of this
    // transaction finds them done); receipts are passed on to the other followers before
    // anything is recorded. The rest — the hub's chat states and events, receipts, and
    // the record of this answer — commits in one store transaction.
    let started = std::time::Instant::now();
    let sends = hub_sends(services, origin, request.sends).await;
    leaves(services, origin, request.leaves).await?;
    let receipts = accepted_receipts(services, origin, request.receipts);
    pass_on_receipts(services, origin, &receipts).await?;
    let response = follower_apply(
        services,
        origin,
        txn_id,
        sends,
        request.chats,
        request.events,
        receipts,
    )
    .await;
    tracing::debug!(%origin, ms = started.elapsed().as_secs_f64() * 1e3, "transaction applied");
    response
}

/// As the hub: sequences the origin's users' sends. A chat's sends go one after the
/// other (in the order sent); different chats go side by side.
async fn hub_sends(
    services: &Services,
    origin: &ServerName,
    sends: Vec<HubSend>,
) -> Vec<SendResult> {
    let local = services.config.server_name.as_str();
    let mut by_chat: std::collections::BTreeMap<String, Vec<(usize, HubSend)>> =
        std::collections::BTreeMap::new();
    let n = sends.len();
    for (i, send) in sends.into_iter().enumerate() {
        by_chat
            .entry(send.chat_id.to_string())
            .or_default()
            .push((i, send));
    }
    let lanes = by_chat.into_values().map(|lane| async move {
        let mut out = Vec::with_capacity(lane.len());
        for (i, send) in lane {
            let result = match to_send_request(&send, origin, local, services) {
                Err(e) => SendResult::Rejected(e),
                Ok(req) => match services.chats.submit(req).await {
                    Ok(outcome) => outcome_to_result(outcome),
                    Err(e) => SendResult::Rejected(reject(FedErrorCode::Internal, e.to_string())),
                },
            };
            out.push((i, result));
        }
        out
    });
    let mut results: Vec<Option<SendResult>> = (0..n).map(|_| None).collect();
    for lane in futures_util::future::join_all(lanes).await {
        for (i, r) in lane {
            results[i] = Some(r);
        }
    }
    results.into_iter().flatten().collect()
}

/// Checks a forwarded send and turns it into the sequencer's request.
fn to_send_request(
    send: &HubSend,
    origin: &ServerName,
    local: &str,
    services: &Services,
) -> Result<SendRequest, EntryError> {
    let bad = |e: String| reject(FedErrorCode::InvalidParam, e);
    let chat_id: ChatId = convert(&send.chat_id).map_err(bad)?;
    if chat_id.hub() != local {
        return Err(reject(
            FedErrorCode::UnknownChat,
            format!("{chat_id} is not hosted here"),
        ));
    }
    let sender: UserId = convert(&send.sender).map_err(bad)?;
    if sender.server_name() != origin.as_str() {
        return Err(reject(
            FedErrorCode::Forbidden,
            format!("{origin} cannot send for {sender}"),
        ));
    }
    let mls: Option<parley_client_api::http::chats::MlsMeta> =
        send.mls.map(|m| convert(&m)).transpose().map_err(bad)?;
    let limit = super::chats::payload_limit(mls, &services.config.limits);
    if send.payload.0.is_empty() || send.payload.0.len() > limit {
        return Err(reject(
            FedErrorCode::TooLarge,
            format!("payload: 1 to {limit} bytes"),
        ));
    }
    if !parley_client_api::http::chats::valid_client_msg_id(&send.client_msg_id) {
        return Err(bad(
            "client_msg_id: 1 to 128 printable ASCII characters".into()
        ));
    }
    let blobs = send
        .blobs
        .iter()
        .map(|b| BlobHash::try_from(b.as_str()).map_err(|e| bad(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    super::chats::check_timer(send.expires_in, mls).map_err(bad)?;
    let group_info = send.group_info.as_ref().map(|p| p.0.clone());
    super::chats::check_group_info(
        group_info.as_deref(),
        mls,
        services.config.limits.max_commit_bytes,
    )
    .map_err(bad)?;
    Ok(SendRequest {
        chat_id,
        sender,
        sender_device: convert(&send.sender_device).map_err(bad)?,
        client_msg_id: send.client_msg_id.clone(),
        payload: send.payload.0.clone(),
        ts: now_ms(),
        mls,
        membership: send
            .membership
            .as_ref()
            .map(convert)
            .transpose()
            .map_err(bad)?,
        blobs,
        expires_in: send.expires_in,
        read_receipts: send.read_receipts,
        group_info,
    })
}

/// The federation answer for a sequencer outcome.
pub fn outcome_to_result(outcome: SendOutcome) -> SendResult {
    match outcome {
        SendOutcome::Committed { seq, ts, .. } => SendResult::Accepted {
            seq,
            ts,
            duplicate: false,
        },
        SendOutcome::Duplicate { seq, ts } => SendResult::Accepted {
            seq,
            ts,
            duplicate: true,
        },
        SendOutcome::UnknownChat => {
            SendResult::Rejected(reject(FedErrorCode::UnknownChat, "no such chat"))
        }
        SendOutcome::NotMember => SendResult::Rejected(reject(
            FedErrorCode::NotMember,
            "the sender is not a member of this chat",
        )),
        SendOutcome::WrongEpoch { current } => SendResult::Rejected(EntryError {
            error: FedErrorCode::WrongEpoch,
            message: format!("the chat is at MLS epoch {current}"),
            current_epoch: Some(current),
        }),
        SendOutcome::UnknownUser(u) => SendResult::Rejected(reject(
            FedErrorCode::UnknownUser,
            format!("no such user: {u}"),
        )),
        SendOutcome::UnknownBlob(b) => SendResult::Rejected(reject(
            FedErrorCode::NotFound,
            format!("no such media blob: {b}"),
        )),
        SendOutcome::Refused(why) => SendResult::Rejected(reject(FedErrorCode::Forbidden, why)),
        SendOutcome::TooLargeToFederate { size } => SendResult::Rejected(reject(
            FedErrorCode::TooLarge,
            super::ServiceError::TooLargeToFederate {
                size,
                limit: parley_federation::api::send::MAX_BATCH_BYTES,
            }
            .to_string(),
        )),
    }
}

/// As a follower: checks that `origin` hosts each chat and that we have members in it,
/// then applies states, events and receipts in order, records the answer, and pushes the
/// new inbox rows live.
async fn follower_apply(
    services: &Services,
    origin: &ServerName,
    txn_id: &str,
    sends: Vec<SendResult>,
    chats: Vec<ChatSnapshot>,
    events: Vec<parley_federation::api::FedEvent>,
    receipts: Vec<(ChatId, Receipt)>,
) -> Result<send::Response, ServiceError> {
    let local = services.config.server_name.as_str();
    let mut snapshots = Vec::new();
    for s in chats {
        match snapshot_row(&s, origin, local) {
            Ok(row) => snapshots.push((row, s.seq)),
            Err(e) => {
                tracing::warn!(%origin, chat = %s.chat_id, error = %e.message, "chat state refused")
            }
        }
    }
    // Chats we will know after this transaction: those we have, plus accepted states.
    let mut ids: Vec<ChatId> = snapshots.iter().map(|(s, _)| s.chat_id.clone()).collect();
    let mut results: Vec<EventResult> = Vec::with_capacity(events.len());
    let mut accepted: Vec<ChatEvent> = Vec::new();
    let mut parsed = Vec::with_capacity(events.len());
    for e in &events {
        let event: Result<ChatEvent, EntryError> =
            convert(e).map_err(|m| reject(FedErrorCode::InvalidParam, m));
        if let Ok(ev) = &event {
            ids.push(ev.chat_id.clone());
        }
        parsed.push(event);
    }
    let existing: HashSet<ChatId> = if ids.is_empty() {
        HashSet::new()
    } else {
        services
            .store
            .known_chats(&ids)
            .await?
            .into_iter()
            .collect()
    };
    let with_state: HashSet<ChatId> = snapshots.iter().map(|(s, _)| s.chat_id.clone()).collect();
    for event in parsed {
        results.push(match event {
            Err(e) => EventResult::Rejected(e),
            Ok(ev) if ev.chat_id.hub() != origin.as_str() => EventResult::Rejected(reject(
                FedErrorCode::Forbidden,
                format!("{origin} does not host {}", ev.chat_id),
            )),
            Ok(ev) if !existing.contains(&ev.chat_id) && !with_state.contains(&ev.chat_id) => {
                EventResult::Rejected(reject(
                    FedErrorCode::NotMember,
                    format!("{} has no members here", ev.chat_id),
                ))
            }
            Ok(ev) => {
                let stored = EventResult::Stored { seq: ev.seq };
                accepted.push(ev);
                stored
            }
        });
    }
    let known = |c: &ChatId| existing.contains(c);
    let ops = order_follower_ops(snapshots, accepted, &known);
    let response = send::Response {
        sends,
        events: results,
    };
    let json =
        serde_json::to_string(&response).map_err(|e| ServiceError::Internal(e.to_string()))?;
    let applied = services
        .store
        .receive_transaction(
            &Received {
                origin: origin.as_str(),
                txn_id,
                response: &json,
                ops: &ops,
                receipts: &receipts,
            },
            now_ms(),
        )
        .await?;
    // Push what landed in local inboxes.
    let mut deliveries = Vec::new();
    let mut json: std::collections::HashMap<usize, Arc<str>> = std::collections::HashMap::new();
    for (device, inbox_id, op) in applied.inbox {
        let Some(FollowerOp::Event(ev)) = ops.get(op) else {
            continue;
        };
        let event_json = match json.get(&op) {
            Some(j) => j.clone(),
            None => {
                let Ok(j) = serde_json::to_string(ev) else {
                    continue;
                };
                let j: Arc<str> = j.into();
                json.insert(op, j.clone());
                j
            }
        };
        deliveries.push((
            device,
            Outbound::Event {
                id: inbox_id,
                event_json,
            },
        ));
    }
    services.gateway.deliver(deliveries).await;
    super::inbox::push_receipts(&services.gateway, applied.notices).await;
    Ok(response)
}

/// Members' receipts `origin` may report: its own users' (for chats we host), or any
/// member's when `origin` is the chat's hub.
fn accepted_receipts(
    services: &Services,
    origin: &ServerName,
    receipts: Vec<parley_federation::api::FedReceipt>,
) -> Vec<(ChatId, Receipt)> {
    let local = services.config.server_name.as_str();
    let mut accepted = Vec::new();
    for r in receipts {
        let (Ok(chat), Ok(user)) = (
            convert::<_, ChatId>(&r.chat_id),
            convert::<_, UserId>(&r.user_id),
        ) else {
            continue;
        };
        let from_hub = chat.hub() == origin.as_str();
        let own_user = user.server_name() == origin.as_str() && chat.hub() == local;
        if !(from_hub || own_user) || r.delivered_seq < 0 || r.read_seq < 0 {
            tracing::warn!(%origin, %chat, %user, "receipt refused: not the hub's or the origin's user");
            continue;
        }
        accepted.push((
            chat,
            Receipt {
                user_id: user,
                delivered_seq: r.delivered_seq,
                read_seq: r.read_seq,
            },
        ));
    }
    accepted
}

/// For chats we host: queues the origin's users' receipts for the other followers (as
/// received; a follower keeps the highest it hears). Done before the transaction is
/// recorded, so a crash in between resends it rather than loses them.
async fn pass_on_receipts(
    services: &Services,
    origin: &ServerName,
    receipts: &[(ChatId, Receipt)],
) -> Result<(), ServiceError> {
    let Some(relay) = &services.relay else {
        return Ok(());
    };
    let local = services.config.server_name.as_str();
    let hosted: Vec<(ChatId, Receipt)> = receipts
        .iter()
        .filter(|(c, _)| c.hub() == local)
        .cloned()
        .collect();
    super::relay::queue_receipts(
        &services.store,
        relay,
        local,
        crate::store::plan::fold_receipts(&hosted),
        Some(origin.as_str()),
    )
    .await?;
    Ok(())
}

/// As the hub: the origin's users leaving chats we host.
async fn leaves(
    services: &Services,
    origin: &ServerName,
    leaves: Vec<parley_federation::api::HubLeave>,
) -> Result<(), ServiceError> {
    let local = services.config.server_name.as_str();
    for l in leaves {
        let (Ok(chat), Ok(user)) = (
            convert::<_, ChatId>(&l.chat_id),
            convert::<_, UserId>(&l.user_id),
        ) else {
            continue;
        };
        if chat.hub() != local || user.server_name() != origin.as_str() {
            tracing::warn!(%origin, %chat, %user, "leave refused: not a chat of ours or not the origin's user");
            continue;
        }
        services.chats.leave_as_hub(&chat, &user).await?;
    }
    Ok(())
}

/// A hub's chat state, checked: the origin hosts it and we have a member in it.
fn snapshot_row(
    s: &ChatSnapshot,
    origin: &ServerName,
    local: &str,
) -> Result<ChatSnapshotRow, EntryError> {
    let bad = |e: String| reject(FedErrorCode::InvalidParam, e);
    let chat_id: ChatId = convert(&s.chat_id).map_err(bad)?;
    if chat_id.hub() != origin.as_str() {
        return Err(reject(
            FedErrorCode::Forbidden,
            format!("{origin} does not host {chat_id}"),
        ));
    }
    let members = s
        .members
        .iter()
        .map(|m| Ok((convert::<_, UserId>(&m.user_id).map_err(bad)?, m.admin)))
        .collect::<Result<Vec<_>, EntryError>>()?;
    if !members.iter().any(|(u, _)| u.server_name() == local) {
        return Err(reject(
            FedErrorCode::NotMember,
            format!("{chat_id} has no members here"),
        ));
    }
    Ok(ChatSnapshotRow {
        chat_id,
        kind: match s.kind {
            parley_federation::api::ChatKind::Direct => ChatKind::Direct,
            parley_federation::api::ChatKind::Group => ChatKind::Group,
        },
        name: s.name.clone(),
        mls_epoch: s.mls_epoch,
        created_by: convert(&s.created_by).map_err(bad)?,
        created_at: s.created_at,
        members,
        read_receipts: s.read_receipts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dedup_window_is_at_least_seven_days() {
        let day = 24 * 3600 * 1000;
        assert_eq!(received_cutoff(30 * day, 10), 20 * day);
        assert_eq!(received_cutoff(30 * day, 7), 23 * day);
        // A shorter configured window is raised to the minimum.
        assert_eq!(received_cutoff(30 * day, 1), 23 * day);
        assert_eq!(received_cutoff(30 * day, 0), 23 * day);
        assert_eq!(received_cutoff(i64::MIN, 7), i64::MIN);
    }
}
