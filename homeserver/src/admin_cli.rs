//! `parley-homeserver admin …`: the admin API from a terminal.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::http::admin::api;

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The admin listener's URL.
    #[arg(
        long,
        env = "PARLEY_ADMIN_URL",
        default_value = "http://127.0.0.1:8009"
    )]
    pub url: String,
    /// The admin token.
    #[arg(long, env = "PARLEY_ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
    #[command(subcommand)]
    pub action: AdminAction,
}

#[derive(Debug, Subcommand)]
pub enum AdminAction {
    /// Create a user.
    CreateUser {
        username: String,
        #[arg(long)]
        password: String,
    },
    /// Deactivate a user: no more logins, every device removed.
    Deactivate { user_id: String },
    /// Set a user's password.
    ResetPassword {
        user_id: String,
        #[arg(long)]
        password: String,
        /// Also remove every device of the user.
        #[arg(long)]
        logout_devices: bool,
    },
    /// Show a user's devices.
    Devices { user_id: String },
    /// Remove one device of a user.
    RevokeDevice { user_id: String, device_id: String },
    /// Server statistics.
    Stats,
    /// Reports filed by local users (act on one with `deactivate` for a local account
    /// or `federation deny` for a remote server).
    #[command(subcommand)]
    Reports(ReportsAction),
    /// The federation allow/deny policy.
    #[command(subcommand)]
    Federation(FederationAction),
}

#[derive(Debug, Subcommand)]
pub enum ReportsAction {
    /// The newest reports, one line each.
    List {
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// One report in full, with the messages the reporter attached.
    Show { id: i64 },
}

#[derive(Debug, Subcommand)]
pub enum FederationAction {
    /// Show the mode and the rules.
    List,
    /// Allow servers matching a pattern (`*`, `name`, `*.name`, optional `:port`).
    Allow {
        pattern: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny servers matching a pattern (wins over any allow rule).
    Deny {
        pattern: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Remove the rule with this pattern.
    Remove { pattern: String },
    /// `open` (anyone not denied) or `allowlist` (only allowed servers).
    Mode { mode: String },
    /// Show the signing key ids (current, next during a rotation, retired).
    Keys,
    /// Start a key rotation: the new key is published now and signs from `--grace-secs`
    /// on (default: the server's `key_rotation_grace_ms`, 70 s).
    RotateKey {
        #[arg(long)]
        grace_secs: Option<u64>,
    },
}

/// Runs one admin command and prints its result.
pub async fn run(args: AdminArgs) -> Result<()> {
    let http = reqwest::Client::new();
    let base = format!("{}{}", args.url.trim_end_matches('/'), api::PREFIX);
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let mut req = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(&args.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req
    };
    match args.action {
        AdminAction::CreateUser { username, password } => {
            let created: api::UserCreated = send(call(
                reqwest::Method::POST,
                "/users".into(),
                Some(serde_json::json!({"username": username, "password": password})),
            ))
            .await?;
            println!("created {}", created.user_id);
        }
        AdminAction::Deactivate { user_id } => {
            let done: api::Deactivated = send(call(
                reqwest::Method::POST,
                format!("/users/{}/deactivate", enc(&user_id)),
                None,
            ))
            .await?;
            println!(
                "deactivated {} ({} devices removed)",
                done.user_id,
                done.devices_removed.len()
            );
        }
        AdminAction::ResetPassword {
            user_id,
            password,
            logout_devices,
        } => {
            send_empty(call(
                reqwest::Method::POST,
                format!("/users/{}/password", enc(&user_id)),
                Some(serde_json::json!({"password": password, "logout_devices": logout_devices})),
            ))
            .await?;
            println!("password of {user_id} reset");
        }
        AdminAction::Devices { user_id } => {
            let list: api::Devices = send(call(
                reqwest::Method::GET,
                format!("/users/{}/devices", enc(&user_id)),
                None,
            ))
            .await?;
            for d in list.devices {
                println!(
                    "{}\t{}\t{}",
                    d.device_id,
                    d.display_name.unwrap_or_default(),
                    d.created_at
                );
            }
        }
        AdminAction::RevokeDevice { user_id, device_id } => {
            send_empty(call(
                reqwest::Method::DELETE,
                format!("/users/{}/devices/{}", enc(&user_id), enc(&device_id)),
                None,
            ))
            .await?;
            println!("revoked {device_id} of {user_id}");
        }
        AdminAction::Federation(FederationAction::Keys) => {
            let keys: Value =
                send(call(reqwest::Method::GET, "/federation/keys".into(), None)).await?;
            print_keys(&keys);
        }
        AdminAction::Federation(FederationAction::RotateKey { grace_secs }) => {
            let body = serde_json::json!({ "grace_secs": grace_secs });
            let keys: Value = send(call(
                reqwest::Method::POST,
                "/federation/keys/rotate".into(),
                Some(body),
            ))
            .await?;
            print_keys(&keys);
        }
        AdminAction::Federation(action) => {
            let path = "/federation/rules".to_owned();
            let policy: Value = match action {
                FederationAction::List => send(call(reqwest::Method::GET, path, None)).await?,
                FederationAction::Allow { pattern, reason } => {
                    let rule = serde_json::json!({"pattern": pattern, "action": "allow", "reason": reason});
                    send(call(reqwest::Method::POST, path, Some(rule))).await?
                }
                FederationAction::Deny { pattern, reason } => {
                    let rule =
                        serde_json::json!({"pattern": pattern, "action": "deny", "reason": reason});
                    send(call(reqwest::Method::POST, path, Some(rule))).await?
                }
                FederationAction::Remove { pattern } => {
                    let body = serde_json::json!({ "pattern": pattern });
                    send(call(reqwest::Method::DELETE, path, Some(body))).await?
                }
                FederationAction::Mode { mode } => {
                    let body = serde_json::json!({ "mode": mode });
                    send(call(
                        reqwest::Method::POST,
                        "/federation/mode".into(),
                        Some(body),
                    ))
                    .await?
                }
                FederationAction::Keys | FederationAction::RotateKey { .. } => {
                    unreachable!("handled above")
                }
            };
            print_policy(&policy);
        }
        AdminAction::Reports(ReportsAction::List { limit }) => {
            let list: api::Reports = send(call(
                reqwest::Method::GET,
                format!("/reports?limit={limit}"),
                None,
            ))
            .await?;
            if list.reports.is_empty() {
                println!("no reports");
            }
            for r in list.reports {
                println!(
                    "{}	{}	by {}	{}	{} messages	{}",
                    r.id,
                    r.created_at,
                    r.reporter,
                    target_line(&r.target),
                    r.messages.len(),
                    r.reason.lines().next().unwrap_or_default()
                );
            }
        }
        AdminAction::Reports(ReportsAction::Show { id }) => {
            let r: api::Report =
                send(call(reqwest::Method::GET, format!("/reports/{id}"), None)).await?;
            println!("report {}", r.id);
            println!("filed at {} by {}", r.created_at, r.reporter);
            println!("about {}", target_line(&r.target));
            println!("reason: {}", r.reason);
            for m in &r.messages {
                println!(
                    "  [{}] {} seq {} at {} ({}): {}",
                    m.chat_id,
                    m.sender,
                    m.seq.map_or("-".to_owned(), |s| s.to_string()),
                    m.ts,
                    m.kind,
                    m.text
                );
            }
            println!("note: {}", r.notice);
        }
        AdminAction::Stats => {
            let s: api::Stats = send(call(reqwest::Method::GET, "/stats".into(), None)).await?;
            println!(
                "users {}\ndevices {}\nchats {}\ninbox_rows {}\nconnected_sockets {}",
                s.users, s.devices, s.chats, s.inbox_rows, s.connected_sockets
            );
        }
    }
    Ok(())
}

fn target_line(t: &parley_client_api::http::reports::ReportTarget) -> String {
    use parley_client_api::http::reports::ReportTarget;
    match t {
        ReportTarget::User { user_id } => format!("user {user_id}"),
        ReportTarget::Chat { chat_id } => format!("chat {chat_id}"),
        ReportTarget::Message {
            chat_id,
            seq,
            sender,
        } => format!("message {chat_id} seq {seq} from {sender}"),
    }
}

/// `current <kid>`, `next <kid> at <ms>` during a rotation, `retired <kid>` each.
fn print_keys(keys: &Value) {
    println!("current {}", keys["current"].as_str().unwrap_or("?"));
    if let Some(next) = keys["next"].as_str() {
        println!("next {next} at {}", keys["switch_at"]);
    }
    for kid in keys["retired"].as_array().into_iter().flatten() {
        println!("retired {}", kid.as_str().unwrap_or("?"));
    }
}

/// `mode <mode>` then one line per rule: `allow|deny <pattern> [reason]`.
fn print_policy(policy: &Value) {
    println!("mode {}", policy["mode"].as_str().unwrap_or("?"));
    for rule in policy["rules"].as_array().into_iter().flatten() {
        println!(
            "{} {}{}",
            rule["action"].as_str().unwrap_or("?"),
            rule["pattern"].as_str().unwrap_or("?"),
            rule["reason"]
                .as_str()
                .map(|r| format!(" {r}"))
                .unwrap_or_default()
        );
    }
}

fn enc(segment: &str) -> String {
    parley_client_api::http::fill("{x}", &[("x", segment)])
}

async fn response(req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
    let resp = req
        .send()
        .await
        .context("cannot reach the admin API (is --admin-listen set, and --url right?)")?;
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or_default();
    bail!(
        "{} ({status}): {}",
        body["error"].as_str().unwrap_or("error"),
        body["message"].as_str().unwrap_or("")
    )
}

async fn send<T: DeserializeOwned>(req: reqwest::RequestBuilder) -> Result<T> {
    Ok(response(req).await?.json().await?)
}

async fn send_empty(req: reqwest::RequestBuilder) -> Result<()> {
    response(req).await.map(|_| ())
}
