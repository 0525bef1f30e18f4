//! The conformance suite: black-box checks of a homeserver, one per numbered spec rule.
//!
//! [`run`] talks to the server(s) at [`Config::servers`] through the public client API
//! (HTTP + WebSocket, `parley-client-api` types) and the federation API, acting as a
//! signing peer (`parley-federation`'s signer) whose key directory it serves itself on a
//! loopback listener. Each check either passes, fails with what it saw, or is skipped
//! with a reason (e.g. federation is off). Every other numbered rule of the spec is
//! listed in [`NOT_CHECKED`] with the reason the suite has no check for it, and reported
//! as such: the report has one line per rule of the spec ([`crate::docs::spec_rules`]).

mod accounts;
mod chats;
mod federation;
mod keys;
mod media;
mod messaging;
mod net;
mod p2p;
mod peer;
mod presence;
mod push;
mod socket;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;

use net::Ctx;

/// What to test.
#[derive(Debug, Clone)]
pub struct Config {
    /// Base URLs (`http://host:port`) of one or two homeservers under test.
    pub servers: Vec<String>,
    /// Loopback address the suite's federation peer listens on (port chosen by the
    /// system); the server under test must allow it (test mode).
    pub peer_ip: String,
    /// Loopback address of a second peer the server must refuse (its policy does not
    /// allow it), for the allow/deny rules.
    pub denied_peer_ip: String,
    /// Run only the rules whose id starts with one of these (all when empty).
    pub only: Vec<String>,
    /// Longest time one check may take.
    pub check_timeout: Duration,
}

impl Config {
    pub fn new(servers: Vec<String>) -> Self {
        Self {
            servers,
            peer_ip: "127.0.0.5".to_owned(),
            denied_peer_ip: "127.0.0.9".to_owned(),
            only: Vec::new(),
            check_timeout: Duration::from_secs(60),
        }
    }
}

/// A numbered spec rule the suite checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub id: &'static str,
    pub title: &'static str,
}

/// How one rule fared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail(String),
    /// The rule has a check, which could not run against this server (the reason).
    Skip(String),
    /// The suite has no check for the rule ([`NOT_CHECKED`]; the reason).
    NotChecked(String),
}

/// A check's way of saying the rule cannot be tested against this server.
#[derive(Debug)]
pub struct Skip(pub String);

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skip {}

/// `Err(Skip(reason))` as an `anyhow` error.
pub fn skip<T>(reason: impl Into<String>) -> anyhow::Result<T> {
    Err(Skip(reason.into()).into())
}

type CheckFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;
type CheckFn = for<'a> fn(&'a Ctx) -> CheckFuture<'a>;

macro_rules! check {
    ($id:literal, $title:literal, $f:path) => {{
        fn f(c: &Ctx) -> CheckFuture<'_> {
            Box::pin($f(c))
        }
        (
            Rule {
                id: $id,
                title: $title,
            },
            f as CheckFn,
        )
    }};
}

/// Every check, in the order they run.
fn checks() -> Vec<(Rule, CheckFn)> {
    vec![
        check!(
            "ACC1",
            "register creates an account and its first device",
            accounts::register
        ),
        check!("ACC2", "a taken username is refused", accounts::taken),
        check!(
            "ACC3",
            "login creates a new device; a wrong password is refused",
            accounts::login
        ),
        check!(
            "ACC4",
            "devices are listed with the caller marked current",
            accounts::devices
        ),
        check!(
            "ACC5",
            "logout and device removal revoke the token",
            accounts::revoke
        ),
        check!(
            "ERR1",
            "a request without a token is refused",
            accounts::missing_token
        ),
        check!(
            "ERR2",
            "a body that is not valid JSON for the endpoint is refused",
            accounts::bad_json
        ),
        check!(
            "ERR3",
            "an invalid identifier is refused",
            accounts::invalid_param
        ),
        check!(
            "ERR4",
            "unknown endpoints and methods are refused with their codes",
            accounts::not_found
        ),
        check!(
            "API1",
            "every endpoint of the client API exists",
            accounts::endpoints_exist
        ),
        check!(
            "KP1",
            "KeyPackages are uploaded, counted and validated",
            keys::upload_count
        ),
        check!(
            "KP2",
            "a claim hands each one-time KeyPackage out once, then the last resort; \
             remote users are claimed from their server",
            keys::claim_once
        ),
        check!(
            "KP3",
            "a user's devices are listed, remote users' by their server",
            keys::device_list
        ),
        check!(
            "CH1",
            "a 1:1 chat is created once per pair",
            chats::create_direct
        ),
        check!(
            "CH2",
            "sends get consecutive sequence numbers from 1",
            chats::consecutive
        ),
        check!(
            "CH3",
            "a resent client_msg_id returns the first result",
            chats::idempotent
        ),
        check!(
            "CH4",
            "non-members cannot send; unknown chats are unknown",
            chats::non_member
        ),
        check!(
            "CH5",
            "history returns the events in order, payload intact",
            chats::history
        ),
        check!(
            "CH6",
            "malformed sends are refused and store nothing",
            chats::bad_send
        ),
        check!("GR1", "a group's creator is its admin", chats::group_admin),
        check!(
            "GR2",
            "exactly one commit per epoch",
            chats::one_commit_per_epoch
        ),
        check!(
            "GR3",
            "application messages from another epoch are refused",
            chats::past_epochs
        ),
        check!("GR4", "only admins change membership", chats::admin_only),
        check!(
            "BK19",
            "a chat's GroupInfo is served to its member users' devices only",
            chats::group_info
        ),
        check!(
            "BK21",
            "a member user's new device commits by external commit; a non-member cannot",
            chats::external_commit
        ),
        check!(
            "WS1",
            "an offline device's inbox is replayed in order, then synced",
            chats::inbox_replay
        ),
        check!(
            "WS2",
            "unacknowledged items come again; acknowledged ones do not",
            chats::redelivery
        ),
        check!(
            "WS3",
            "a send frame is answered sent only once stored",
            chats::ws_send
        ),
        check!("WS4", "a connected device gets live events", chats::live),
        check!(
            "WS5",
            "ping is answered pong; a bad frame gets an error frame",
            chats::ws_errors
        ),
        check!(
            "WS6",
            "a device's new socket closes its older one with 4001",
            chats::one_socket
        ),
        check!(
            "RC1",
            "a device's ack becomes a delivered receipt for the sender",
            chats::delivered
        ),
        check!(
            "RC2",
            "a read marker covers every earlier event and never goes back",
            chats::read
        ),
        check!(
            "MD1",
            "an upload whose bytes match the address is stored",
            media::upload
        ),
        check!(
            "MD2",
            "an upload whose bytes do not match the address is refused",
            media::hash_mismatch
        ),
        check!(
            "MD3",
            "a stored blob is stored once; uploading it again is complete at once",
            media::dedup
        ),
        check!(
            "MD4",
            "only the uploader and members of a chat that refers to a blob download it",
            media::access
        ),
        check!(
            "MD5",
            "an upload chunk at the wrong offset is refused",
            media::offset
        ),
        check!(
            "MD6",
            "a blob from another server is fetched signed, checked against its hash, kept once",
            media::federated
        ),
        check!(
            "PR3",
            "a heartbeating device gets presence changes",
            presence::presence_frames
        ),
        check!(
            "PR5",
            "privacy settings are stored and reciprocal",
            presence::privacy
        ),
        check!(
            "T2",
            "typing reaches the other members, not the typer",
            presence::typing
        ),
        check!(
            "MS32",
            "a disappearing timer out of bounds or on a commit is refused",
            messaging::bad_timer
        ),
        check!(
            "MS34",
            "an expired event leaves the history and the undelivered inboxes",
            messaging::timer_purge
        ),
        check!(
            "MS21",
            "a blocked user's 1:1 messages do not reach the blocker",
            messaging::blocking
        ),
        check!(
            "MS41",
            "a user without read receipts sends none and sees none",
            messaging::receipts_off
        ),
        check!(
            "MS44",
            "a chat that forbids read receipts relays none",
            messaging::chat_policy
        ),
        check!("MS51", "a report needs content", messaging::reports),
        check!(
            "T3",
            "typing ends with typing false 5 s after the last refresh",
            presence::typing_expiry
        ),
        check!(
            "P1",
            "a device's pusher is set, replaced, listed and removed",
            push::pusher_crud
        ),
        check!(
            "P2",
            "invalid gateway URLs and tokens are refused",
            push::pusher_validation
        ),
        check!(
            "N1",
            "only devices without a socket are notified, not for their own messages",
            push::notify_offline
        ),
        check!(
            "N2",
            "notifications are coalesced; the next names the newest chat",
            push::coalescing
        ),
        check!(
            "R1",
            "counts are unread over all chats and in the chat; reading resets them",
            push::counts
        ),
        check!(
            "R2",
            "a notification carries no content, sender, user or device",
            push::no_content
        ),
        check!(
            "S1",
            "a failed notification is retried with the newest counts, one at a time",
            push::retry
        ),
        check!(
            "S3",
            "a gone or rejected token removes the pusher",
            push::gone
        ),
        check!(
            "FK1",
            "the key directory is served, self-signed, with thumbprint key ids",
            federation::directory
        ),
        check!(
            "FK2",
            "the server advertises its federation versions",
            federation::version
        ),
        check!(
            "FK3",
            "a peer's directory is cached; retired and expired keys verify nothing",
            federation::key_cache
        ),
        check!(
            "FS1",
            "a validly signed request is accepted",
            federation::valid
        ),
        check!(
            "FS2",
            "an unsigned request is refused with Accept-Signature",
            federation::unsigned
        ),
        check!("FS3", "a forged signature is refused", federation::forged),
        check!("FS4", "a replayed nonce is refused", federation::replayed),
        check!("FS5", "a stale signature is refused", federation::stale),
        check!(
            "FS6",
            "a body that does not match its Content-Digest is refused",
            federation::digest
        ),
        check!(
            "FP1",
            "a denied origin is refused before any key fetch",
            federation::denied
        ),
        check!(
            "FT1",
            "a transaction is answered the same when resent",
            federation::txn_idempotent
        ),
        check!(
            "FO1",
            "a refused batch is retried under its txn id until acknowledged, in order, once",
            federation::outbox_same_txn
        ),
        check!(
            "FO2",
            "429 and 5xx are retried after 1 s, then 2 s",
            federation::outbox_backoff
        ),
        check!(
            "FX1",
            "a message crosses to a member on another server with the hub's seq",
            federation::cross_server
        ),
        check!(
            "FL1",
            "a signed request over libp2p (tcp, noise, yamux, identify, ping, /http/1.1) is handled",
            p2p::accepted
        ),
        check!(
            "FL2",
            "over libp2p, a request signed by another key than the PeerId is refused",
            p2p::peer_mismatch
        ),
        // Last: it waits until a minute has passed since FK3's directory fetch.
        check!(
            "FK4",
            "a peer's key rotation is followed: the next key accepted, the old one refused",
            federation::key_rotation
        ),
    ]
}

/// Time a check gets beyond [`Config::check_timeout`]: FK4 may wait a minute for the
/// server's next directory fetch (FK3).
fn extra_time(id: &str) -> Duration {
    match id {
        "FK4" => Duration::from_secs(62),
        _ => Duration::ZERO,
    }
}

/// The rules the suite checks, in order.
pub fn rules() -> Vec<Rule> {
    checks().into_iter().map(|(r, _)| r).collect()
}

/// The spec's rules the suite has no check for, grouped by why: `(reason, ids)`. Every
/// rule of the spec is either checked ([`rules`]) or here (a test holds both ways).
pub const NOT_CHECKED: &[(&str, &[&str])] = &[
    (
        "client-side rule (what devices encrypt, decrypt and show): a server cannot show it",
        &[
            "E1", "E2", "E3", "E4", "E5", "E6", "E7", "E8", "E9", "E10", "E11", "MS1", "MS2",
            "MS3", "MS4", "MS5", "MS6", "MS7", "MS8", "MS9", "MS10", "MS11", "MS30", "MS33", "DL1",
            "DL6", "DL7", "DL9", "DV1", "DV2", "DV3", "DV4", "BK1", "BK2", "BK3", "BK4", "BK5",
            "BK6", "BK7", "BK8", "BK9", "BK10", "BK17", "BK22", "BK23",
        ],
    ),
    (
        "the SDK's and the CLI's API, not a server's behaviour",
        &["MS12", "MS26", "MS36", "MS46", "MS55"],
    ),
    (
        "client-side for the envelope; the server's part (it stores expires_in) is exercised by MS34",
        &["MS31"],
    ),
    (
        "what a server never learns or interprets: not observable from outside",
        &["DL8", "BK15", "BK16"],
    ),
    (
        "needs several homeserver nodes of one domain (shared database and bus) under the \
         operator's control",
        &["PR11", "N4"],
    ),
    (
        "needs the server's admin API (its address and token), which the suite is not given",
        &["MS52", "MS53"],
    ),
    (
        "needs a hub that stops answering: the suite's peer would have to host the chat",
        &["CH7", "FO3"],
    ),
    ("needs restarting the server under test", &["S2"]),
    (
        "a server failure or overload cannot be provoked from outside",
        &["ERR5"],
    ),
    (
        "allows a spurious notification; nothing a server must show",
        &["N3"],
    ),
    (
        "timing rule: waits out the server's heartbeat timeout (60 s by default) and its \
         last-seen write interval",
        &["PR1", "PR2"],
    ),
    (
        "timing rule: needs the periodic collection of unreferenced blobs to run",
        &["BK14"],
    ),
    (
        "timing rule (debounce, gateway timeout); no check written yet",
        &["T4", "R3"],
    ),
    (
        "exercised by FX1, FO1 and MD6, not checked rule by rule",
        &["FT2", "FT3"],
    ),
    (
        "exercised by BK19 and BK21 (a commit publishing its GroupInfo), not checked rule by \
         rule",
        &["BK18"],
    ),
    (
        "no check written yet (federation with the suite's peer: ephemeral events, a denied \
         server's user in a chat, federated receipts, reports, a follower's user's GroupInfo)",
        &["PR9", "PR10", "FP2", "MS43", "MS45", "MS54", "BK20"],
    ),
    (
        "no check written yet (checkable through the client API)",
        &[
            "PR4", "PR6", "C1", "C2", "C3", "T1", "CH8", "RC3", "MS20", "MS22", "MS23", "MS24",
            "MS25", "MS35", "MS40", "MS42", "MS50", "DL2", "DL3", "DL4", "DL5", "DR1", "DR2",
            "BK11", "BK12", "BK13",
        ],
    ),
];

/// Why the suite does not check `id`, if it is listed in [`NOT_CHECKED`].
pub fn not_checked_reason(id: &str) -> Option<&'static str> {
    NOT_CHECKED
        .iter()
        .find(|(_, ids)| ids.contains(&id))
        .map(|(why, _)| *why)
}

/// The spec's rules the suite does not check, in document order, titled from the
/// documents, each with its reason.
pub fn not_checked() -> Vec<(Rule, &'static str)> {
    crate::docs::spec_rules()
        .iter()
        .filter_map(|r| {
            not_checked_reason(&r.id).map(|why| {
                (
                    Rule {
                        id: r.id.as_str(),
                        title: r.title.as_str(),
                    },
                    why,
                )
            })
        })
        .collect()
}

/// One rule's result.
#[derive(Debug, Clone, Serialize)]
pub struct RuleResult {
    #[serde(flatten)]
    pub rule: Rule,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub servers: Vec<String>,
    pub results: Vec<RuleResult>,
    pub passed: usize,
    pub failed: usize,
    /// Checked rules whose check could not run here.
    pub skipped: usize,
    /// Rules the suite has no check for ([`NOT_CHECKED`]).
    pub not_checked: usize,
}

impl Report {
    /// Ids of the rules that failed.
    pub fn failed_ids(&self) -> Vec<&'static str> {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
            .map(|r| r.rule.id)
            .collect()
    }

    /// `PASS|FAIL|SKIP <id> <title> [reason]` per rule, then the summary line.
    /// A rule the suite does not check is `SKIP <id> <title> [not checked by this suite:
    /// <reason>]`.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self.results.iter().map(line).collect();
        out.push(self.summary());
        out
    }

    pub fn summary(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped, {} not checked",
            self.passed, self.failed, self.skipped, self.not_checked
        )
    }
}

/// One result as a report line.
pub fn line(r: &RuleResult) -> String {
    match &r.outcome {
        Outcome::Pass => format!("PASS {} {}", r.rule.id, r.rule.title),
        Outcome::Fail(why) => format!("FAIL {} {} [{}]", r.rule.id, r.rule.title, one_line(why)),
        Outcome::Skip(why) => format!("SKIP {} {} [{}]", r.rule.id, r.rule.title, one_line(why)),
        Outcome::NotChecked(why) => format!(
            "SKIP {} {} [not checked by this suite: {}]",
            r.rule.id,
            r.rule.title,
            one_line(why)
        ),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs every selected check against the configured server(s); `progress` sees each
/// result as it comes.
pub async fn run(config: &Config, mut progress: impl FnMut(&RuleResult)) -> anyhow::Result<Report> {
    anyhow::ensure!(
        (1..=2).contains(&config.servers.len()),
        "give the base URL of one or two homeservers"
    );
    let ctx = Ctx::new(config).await?;
    let mut report = Report {
        servers: config.servers.clone(),
        ..Report::default()
    };
    let selected =
        |id: &str| config.only.is_empty() || config.only.iter().any(|p| id.starts_with(p.as_str()));
    for (rule, f) in checks() {
        if !selected(rule.id) {
            continue;
        }
        let limit = config.check_timeout + extra_time(rule.id);
        let outcome = match tokio::time::timeout(limit, f(&ctx)).await {
            Err(_) => Outcome::Fail(format!("no result within {limit:?}")),
            Ok(Ok(())) => Outcome::Pass,
            Ok(Err(e)) => match e.downcast_ref::<Skip>() {
                Some(Skip(why)) => Outcome::Skip(why.clone()),
                None => Outcome::Fail(format!("{e:#}")),
            },
        };
        match outcome {
            Outcome::Pass => report.passed += 1,
            Outcome::Fail(_) => report.failed += 1,
            Outcome::Skip(_) => report.skipped += 1,
            Outcome::NotChecked(_) => report.not_checked += 1,
        }
        let result = RuleResult { rule, outcome };
        progress(&result);
        report.results.push(result);
    }
    ctx.shutdown().await;
    for (rule, why) in not_checked() {
        if !selected(rule.id) {
            continue;
        }
        report.not_checked += 1;
        let result = RuleResult {
            rule,
            outcome: Outcome::NotChecked(why.to_owned()),
        };
        progress(&result);
        report.results.push(result);
    }
    Ok(report)
}
