//! Reports of abuse (`spec/messaging.md` MS50–MS56): a local user reports a user, a chat
//! or a message to this server's admins, attaching the decrypted messages they choose;
//! admins read them through the admin API and act with the existing tools (deactivate a
//! local account, deny a remote server). v1 has no message franking: a report is the
//! reporter's claim, and says so (MS53).

use parley_client_api::UserId;
use parley_client_api::http::reports::{
    MAX_MESSAGES, MAX_REASON_CHARS, MAX_TEXT_CHARS, ReportTarget, ReportedMessage, create,
};

use super::ServiceError;
use crate::clock::now_ms;
use crate::store::AnyStore;
use crate::store::reports::{NewReport, ReportRow, ReportStore};

/// What every report shown to an admin says about its attached messages.
pub const CLAIM_NOTICE: &str = "The attached messages are the reporter's claim, as their \
    device decrypted them. Parley v1 has no message franking: nothing proves that the \
    reported user wrote them.";

/// A stored report, decoded for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub id: i64,
    pub reporter: UserId,
    pub target: ReportTarget,
    pub reason: String,
    pub messages: Vec<ReportedMessage>,
    pub created_at: i64,
}

#[derive(Clone)]
pub struct Reports {
    store: AnyStore,
}

impl Reports {
    pub fn new(store: AnyStore) -> Self {
        Self { store }
    }

    /// Files `me`'s report; returns its id and time.
    pub async fn file(
        &self,
        me: &UserId,
        req: create::Request,
    ) -> Result<create::Response, ServiceError> {
        check(&req)?;
        let (kind, user, chat, seq) = match &req.target {
            ReportTarget::User { user_id } => ("user", Some(user_id.to_string()), None, None),
            ReportTarget::Chat { chat_id } => ("chat", None, Some(chat_id.to_string()), None),
            ReportTarget::Message {
                chat_id,
                seq,
                sender,
            } => (
                "message",
                Some(sender.to_string()),
                Some(chat_id.to_string()),
                Some(*seq),
            ),
        };
        let created_at = now_ms();
        let messages = serde_json::to_string(&req.messages)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let report_id = self
            .store
            .insert_report(&NewReport {
                reporter: me.clone(),
                target_kind: kind,
                target_user: user,
                target_chat: chat,
                target_seq: seq,
                reason: req.reason,
                messages,
                created_at,
            })
            .await?;
        tracing::info!(report_id, reporter = %me, kind, "report filed");
        Ok(create::Response {
            report_id,
            created_at,
        })
    }

    /// The newest reports first, at most `limit`.
    pub async fn list(&self, limit: i64) -> Result<Vec<Report>, ServiceError> {
        self.store
            .list_reports(limit.clamp(1, 1000))
            .await?
            .into_iter()
            .map(decode)
            .collect()
    }

    pub async fn get(&self, id: i64) -> Result<Report, ServiceError> {
        match self.store.report(id).await? {
            Some(r) => decode(r),
            None => Err(ServiceError::NotFound(format!("report {id}"))),
        }
    }
}

/// A report must say something (MS51): a reason or a message; and stay within bounds.
pub fn check(req: &create::Request) -> Result<(), ServiceError> {
    if req.reason.trim().is_empty() && req.messages.is_empty() {
        return Err(ServiceError::EmptyReport);
    }
    if req.reason.chars().count() > MAX_REASON_CHARS {
        return Err(ServiceError::InvalidParam(format!(
            "reason: at most {MAX_REASON_CHARS} characters"
        )));
    }
    if req.messages.len() > MAX_MESSAGES {
        return Err(ServiceError::InvalidParam(format!(
            "messages: at most {MAX_MESSAGES}"
        )));
    }
    if req
        .messages
        .iter()
        .any(|m| m.text.chars().count() > MAX_TEXT_CHARS || m.kind.len() > 64)
    {
        return Err(ServiceError::InvalidParam(format!(
            "messages: a text has at most {MAX_TEXT_CHARS} characters"
        )));
    }
    if let ReportTarget::Message { seq, .. } = req.target
        && seq < 1
    {
        return Err(ServiceError::InvalidParam(
            "target.seq: must be >= 1".into(),
        ));
    }
    Ok(())
}

fn decode(r: ReportRow) -> Result<Report, ServiceError> {
    let corrupt = |what: &str| ServiceError::Internal(format!("report {}: {what}", r.id));
    let parse = |v: &Option<String>| -> Result<String, ServiceError> {
        v.clone().ok_or_else(|| corrupt("missing target"))
    };
    let target = match r.target_kind.as_str() {
        "user" => ReportTarget::User {
            user_id: UserId::try_from(parse(&r.target_user)?).map_err(|_| corrupt("user"))?,
        },
        "chat" => ReportTarget::Chat {
            chat_id: parse(&r.target_chat)?
                .try_into()
                .map_err(|_| corrupt("chat"))?,
        },
        "message" => ReportTarget::Message {
            chat_id: parse(&r.target_chat)?
                .try_into()
                .map_err(|_| corrupt("chat"))?,
            seq: r.target_seq.unwrap_or_default(),
            sender: UserId::try_from(parse(&r.target_user)?).map_err(|_| corrupt("sender"))?,
        },
        _ => return Err(corrupt("kind")),
    };
    let messages = serde_json::from_str(&r.messages).map_err(|_| corrupt("messages"))?;
    Ok(Report {
        id: r.id,
        reporter: r.reporter,
        target,
        reason: r.reason,
        messages,
        created_at: r.created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(reason: &str, n: usize) -> create::Request {
        let chat: parley_client_api::ChatId = "!c:x.org".try_into().unwrap();
        create::Request {
            target: ReportTarget::User {
                user_id: "@m:x.org".try_into().unwrap(),
            },
            reason: reason.into(),
            messages: (0..n)
                .map(|i| ReportedMessage {
                    chat_id: chat.clone(),
                    seq: Some(i as i64 + 1),
                    sender: "@m:x.org".try_into().unwrap(),
                    ts: 1,
                    kind: "text".into(),
                    text: "x".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_report_needs_content_within_bounds() {
        assert!(matches!(check(&req("", 0)), Err(ServiceError::EmptyReport)));
        assert!(matches!(
            check(&req("  ", 0)),
            Err(ServiceError::EmptyReport)
        ));
        assert!(check(&req("spam", 0)).is_ok());
        assert!(check(&req("", 1)).is_ok());
        assert!(matches!(
            check(&req("", MAX_MESSAGES + 1)),
            Err(ServiceError::InvalidParam(_))
        ));
        assert!(matches!(
            check(&req(&"x".repeat(MAX_REASON_CHARS + 1), 0)),
            Err(ServiceError::InvalidParam(_))
        ));
    }
}
