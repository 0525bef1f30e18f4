//! `parley`: chat end-to-end encrypted from a terminal.
//!
//! Every command works on one profile directory (`--profile`, default `~/.parley`):
//! the server URL, the session and the device's SQLite store (MLS state, history).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use parley_client::{
    ChatId, Client, ClientConfig, ConnectionState, Error as SdkError, ErrorCode, Event,
    FileOptions, Message, MessageState, Reader, UserId, Visibility, human_size,
};
use tokio::io::AsyncBufReadExt;
use tokio::sync::broadcast::error::RecvError;

/// How long one-shot commands wait for the server.
const WAIT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "parley",
    version,
    about = "Parley: end-to-end encrypted chat from a terminal"
)]
struct Cli {
    /// Profile directory: server URL, session, local store.
    #[arg(long, global = true, env = "PARLEY_PROFILE")]
    profile: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an account and log this profile in as its first device.
    Register(Credentials),
    /// Log this profile in as a new device of an existing account.
    Login(Credentials),
    /// Log this device out (the local history stays).
    Logout,
    /// Show who this profile is.
    Whoami,
    /// Show the safety number with a contact (compare it with theirs), or mark them
    /// verified: a later change of their devices then shows a warning.
    Verify {
        user: String,
        /// Mark the contact verified (after comparing the numbers).
        #[arg(long)]
        mark: bool,
    },
    /// List your devices, remove one, or add missing ones to your chats.
    Devices {
        #[command(subcommand)]
        action: Option<DevicesAction>,
    },
    /// Start a chat or open one interactively.
    Chat {
        #[command(subcommand)]
        action: ChatAction,
    },
    /// Group chats: create one, add and remove members, leave, rename, admins.
    Group {
        #[command(subcommand)]
        action: GroupAction,
    },
    /// List your chats.
    Chats,
    /// Send a message: `parley send @bob:example.org hello there`.
    Send {
        /// A chat id (`!…`), a unique prefix of one, or a user (`@bob:server`).
        chat: String,
        #[arg(required = true, trailing_var_arg = true)]
        text: Vec<String>,
    },
    /// Send a file, end-to-end encrypted: `parley send-file @bob:example.org photo.jpg`.
    /// Interrupted uploads resume from where the server stopped.
    SendFile {
        /// A chat id (`!…`), a unique prefix of one, or a user (`@bob:server`).
        chat: String,
        path: PathBuf,
        /// The MIME type [default: from the file name's extension].
        #[arg(long)]
        mime: Option<String>,
        /// A caption.
        #[arg(long)]
        caption: Option<String>,
    },
    /// Download and decrypt the file of a message (the id `listen` and `history` show).
    Download {
        chat: String,
        /// The message id.
        message: String,
        /// A file, or a directory for the sender's file name [default: .].
        #[arg(long, short = 'o', default_value = ".")]
        out: PathBuf,
    },
    /// Send the file of a message to another chat (nothing is uploaded again).
    Forward {
        /// The chat the message is in.
        from: String,
        /// The message id.
        message: String,
        /// The chat to send it to.
        to: String,
    },
    /// Reply to a message: `parley reply CHAT MESSAGE_ID text…` (message ids:
    /// `parley history --ids`).
    Reply {
        chat: String,
        /// The message replied to.
        message: String,
        #[arg(required = true, trailing_var_arg = true)]
        text: Vec<String>,
    },
    /// React to a message with one emoji (it replaces your earlier reaction);
    /// `--remove` takes it back.
    React {
        chat: String,
        message: String,
        emoji: String,
        #[arg(long)]
        remove: bool,
    },
    /// Change the text of one of your messages (within 24 h of sending it). Every
    /// device keeps the earlier versions (`parley history --edits`).
    Edit {
        chat: String,
        message: String,
        #[arg(required = true, trailing_var_arg = true)]
        text: Vec<String>,
    },
    /// Delete one of your messages for everyone (within 48 h: it shows as deleted on
    /// every device), or with `--for-me` any message from this device only.
    Delete {
        chat: String,
        message: String,
        #[arg(long)]
        for_me: bool,
    },
    /// Block a user: their 1:1 messages, invitations, typing and presence no longer
    /// reach you (your server enforces it; they are not told).
    Block { user: String },
    /// Unblock a user: what they send from now on reaches you again.
    Unblock { user: String },
    /// List the users you block.
    Blocked,
    /// Disappearing messages in a chat: `parley timer CHAT 24h` (off | 24h | 7d | 90d |
    /// a custom value such as 30s, 10m, 12h, 2d). Every member sees the change; what
    /// anyone sends from then on disappears from every device and from the servers.
    /// Without a value, show the chat's timer.
    Timer { chat: String, value: Option<String> },
    /// A chat's read-receipt policy: `parley chat-receipts CHAT off` forbids read
    /// receipts for every member (in a group: admins only); `on` allows them again.
    ChatReceipts { chat: String, value: Option<String> },
    /// Report abuse to your server's admins: `parley report user USER --reason …`,
    /// `report message CHAT MESSAGE_ID --reason …`, `report chat CHAT --reason …`; attach
    /// more messages with `--attach MESSAGE_ID` (their text goes to the admins).
    Report {
        #[command(subcommand)]
        about: ReportAbout,
    },
    /// Show a chat's history (from the local store; works offline).
    History {
        chat: String,
        /// How many messages.
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: u32,
        /// Show each message's id (what `reply`, `react`, `edit` and `delete` take).
        #[arg(long)]
        ids: bool,
        /// Show the earlier versions of edited messages.
        #[arg(long)]
        edits: bool,
    },
    /// Search your history (local; works offline).
    Search {
        text: String,
        #[arg(long)]
        chat: Option<String>,
    },
    /// Print messages, tick changes, typing and presence as they happen (this device
    /// counts as present: its user shows online).
    Listen,
    /// Tell a chat you are typing (`--stop`: you stopped). It shows for 5 s.
    Typing {
        chat: String,
        #[arg(long)]
        stop: bool,
    },
    /// Show whether a user is online, or when they were last seen.
    Presence { user: String },
    /// Privacy settings: `parley privacy last-seen nobody` (everyone | contacts |
    /// nobody); without a value, show it.
    Privacy {
        #[command(subcommand)]
        action: PrivacyAction,
    },
    /// Your contact list: `parley contacts add @bob:example.org`, `remove USER`, `list`.
    /// "contacts" in `parley privacy` means this list.
    Contacts {
        #[command(subcommand)]
        action: ContactsAction,
    },
    /// Push notifications for this device: `parley pusher add URL TOKEN`, `list`,
    /// `remove DEVICE`.
    Pusher {
        #[command(subcommand)]
        action: PusherAction,
    },
    /// Encrypted history backups on your homeserver: `parley backup enable`
    /// (prints a recovery key once; `--passphrase` to use one instead), `now`, `status`.
    Backup {
        #[command(subcommand)]
        action: BackupAction,
    },
    /// Restore your backup into this (freshly logged-in) device: asks for the recovery
    /// key (or the passphrase) unless `PARLEY_RECOVERY_KEY` holds it, then rejoins your
    /// chats (as `parley rejoin` does).
    Restore,
    /// Rejoin, by MLS external commit, every chat of yours this device has no group
    /// state for (after a restore; MLS state is never in a backup).
    Rejoin,
    /// Open a chat interactively (the most recent one if none is named).
    Interactive { chat: Option<String> },
}

#[derive(Subcommand)]
enum BackupAction {
    /// Turn backups on (a new key) and make the first backup.
    Enable {
        /// Derive the key from a passphrase (read from `PARLEY_BACKUP_PASSPHRASE` or
        /// standard input) instead of a random recovery key. Weak passphrases can be
        /// guessed by anyone who obtains the backup.
        #[arg(long)]
        passphrase: bool,
    },
    /// Make a backup now (replacing the previous one).
    Now,
    /// What the server holds.
    Status,
}

#[derive(clap::Args)]
struct Credentials {
    /// The localpart, e.g. `alice`.
    username: String,
    /// The homeserver's URL, e.g. `http://127.0.0.1:8008`.
    #[arg(long, env = "PARLEY_SERVER")]
    server: String,
    /// The password (else `PARLEY_PASSWORD`, else read from standard input).
    #[arg(long, env = "PARLEY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// A name for this device.
    #[arg(long)]
    device_name: Option<String>,
}

#[derive(Subcommand)]
enum PrivacyAction {
    /// Who sees your online state and last seen. Reciprocal: hide yours and you see
    /// no one's.
    LastSeen {
        /// everyone | contacts (the people in your contact list) | nobody
        value: Option<String>,
    },
    /// Whether you send read receipts (on | off). Reciprocal: turn yours off and you
    /// see no one's; ✓✓ delivered still works.
    ReadReceipts { value: Option<String> },
}

#[derive(Subcommand)]
enum ReportAbout {
    /// Report a user (local or of another server).
    User {
        user: String,
        #[arg(long, default_value = "")]
        reason: String,
        /// Attach messages of CHAT by id (with --chat).
        #[arg(long)]
        chat: Option<String>,
        #[arg(long)]
        attach: Vec<String>,
    },
    /// Report one message (it is attached).
    Message {
        chat: String,
        message: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Report a chat.
    Chat {
        chat: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        attach: Vec<String>,
    },
}

fn on_off(v: &str) -> Result<bool> {
    match v {
        "on" | "yes" | "true" | "allow" => Ok(true),
        "off" | "no" | "false" | "forbid" => Ok(false),
        other => bail!("{other:?}: expected on or off"),
    }
}

#[derive(Subcommand)]
enum ContactsAction {
    /// Add a user (of any server) to your contacts.
    Add { user: String },
    /// Remove a user from your contacts.
    Remove { user: String },
    /// List your contacts.
    List,
}

#[derive(Subcommand)]
enum PusherAction {
    /// Register this device's pusher: the push gateway's notify URL and its push token.
    Add { url: String, token: String },
    /// List your pushers.
    List,
    /// Remove the pusher of one of your devices.
    Remove { device_id: String },
}

#[derive(Subcommand)]
enum DevicesAction {
    /// List your devices.
    List,
    /// Remove a device (it is logged out and removed from your chats).
    Remove { device_id: String },
    /// Add your devices that are missing from your chats.
    Sync,
    /// On a new device (after `parley login`): show a link code and wait until one of
    /// your devices approves it.
    Link {
        /// How long to wait for the approval, in seconds.
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
    /// On one of your devices: approve the new device whose link code you typed; it is
    /// added to all your chats and gets your history (encrypted for it alone).
    Approve {
        code: String,
        /// How much history to send: `all`, `none`, or a number of days.
        #[arg(long, default_value = "all")]
        history: String,
    },
}

#[derive(Subcommand)]
enum GroupAction {
    /// Create a group: `parley group new Team @bob:example.org @carol:example.org`.
    New {
        name: String,
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Add members (admins only).
    Add {
        chat: String,
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Remove members (admins only): they read nothing sent afterwards.
    Remove {
        chat: String,
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Leave a group.
    Leave { chat: String },
    /// Rename a group (admins only).
    Rename {
        chat: String,
        #[arg(required = true, trailing_var_arg = true)]
        name: Vec<String>,
    },
    /// Make a member an admin, or with `--revoke` no longer one (admins only).
    Admin {
        chat: String,
        user: String,
        #[arg(long)]
        revoke: bool,
    },
    /// List a group's members and roles.
    Members { chat: String },
}

#[derive(Subcommand)]
enum ChatAction {
    /// Start a 1:1 chat: `parley chat new @bob:example.org`.
    New { user: String },
    /// Open a chat interactively.
    Open { chat: String },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("PARLEY_LOG").unwrap_or_else(|_| "error".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// A person-readable, one-line error.
fn one_line(e: &anyhow::Error) -> String {
    if let Some(sdk) = e.downcast_ref::<SdkError>() {
        return match sdk {
            SdkError::Server {
                code: ErrorCode::InvalidCredentials,
                ..
            } => "wrong username or password".into(),
            SdkError::Server {
                code: ErrorCode::UserExists,
                ..
            } => "that username is taken".into(),
            SdkError::Server {
                code: ErrorCode::UnknownToken | ErrorCode::MissingToken,
                ..
            } => "this device is logged out; log in again with a new profile".into(),
            SdkError::NotAdmin(_) => "only an admin of the group can do that".into(),
            SdkError::Server {
                code: ErrorCode::QuotaExceeded,
                message,
                ..
            } => format!("not sent: your storage quota on the server is full ({message})"),
            SdkError::Server {
                code: ErrorCode::TooLarge,
                message,
                ..
            } => format!("not sent: the file is larger than the server accepts ({message})"),
            SdkError::Unreachable { url, .. } => {
                format!("cannot reach the homeserver at {url}: is it running?")
            }
            other => other.to_string(),
        };
    }
    format!("{e:#}").replace('\n', " ")
}

fn profile_dir(cli: &Option<PathBuf>) -> Result<PathBuf> {
    match cli {
        Some(p) => Ok(p.clone()),
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set; pass --profile")?;
            Ok(PathBuf::from(home).join(".parley"))
        }
    }
}

fn password(c: &Credentials) -> Result<String> {
    if let Some(p) = &c.password {
        return Ok(p.clone());
    }
    eprint!("password: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// A secret from the environment variable `var`, else a line of standard input.
fn secret_input(var: &str, what: &str) -> Result<String> {
    if let Ok(v) = std::env::var(var) {
        return Ok(v);
    }
    eprint!("{what}: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .with_context(|| format!("reading the {what}"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

async fn run(cli: Cli) -> Result<()> {
    let dir = profile_dir(&cli.profile)?;
    let config = || {
        let mut c = ClientConfig::new(dir.clone());
        c.device_name = Some(format!("parley CLI ({})", hostname()));
        c
    };
    match cli.command {
        Command::Register(c) => {
            let pw = password(&c)?;
            let mut cfg = config();
            cfg.device_name = c.device_name.clone().or(cfg.device_name);
            let client = Client::register(cfg, &c.server, &c.username, &pw).await?;
            println!(
                "registered {} (device {}); profile {}",
                client.user_id(),
                client.device_id(),
                dir.display()
            );
            client.shutdown().await;
        }
        Command::Login(c) => {
            let pw = password(&c)?;
            let mut cfg = config();
            cfg.device_name = c.device_name.clone().or(cfg.device_name);
            let client = Client::login(cfg, &c.server, &c.username, &pw).await?;
            println!(
                "logged in as {} (new device {}); profile {}",
                client.user_id(),
                client.device_id(),
                dir.display()
            );
            println!(
                "link it to your account: run `parley devices link` here and approve the code on one of your devices"
            );
            client.shutdown().await;
        }
        Command::Logout => {
            let client = Client::open(config()).await?;
            client.logout().await?;
            println!("logged out {}", client.device_id());
            client.shutdown().await;
        }
        Command::Typing { chat, stop } => {
            let client = Client::open(config()).await?;
            let chat = resolve_chat(&client, &chat, false).await?;
            client.connect();
            client.wait_synced(WAIT).await?;
            client.typing(&chat, !stop);
            // Let the socket write it before closing.
            tokio::time::sleep(Duration::from_millis(300)).await;
            println!(
                "{} {chat}",
                if stop {
                    "stopped typing in"
                } else {
                    "typing in"
                }
            );
            client.shutdown().await;
        }
        Command::Presence { user } => {
            let client = Client::open(config()).await?;
            let p = client.presence(&parse_user(&user)?).await?;
            match (p.online, p.last_seen) {
                (Some(true), _) => println!("{} is online", p.user_id),
                (Some(false), Some(at)) => println!(
                    "{} was last seen {} ({} UTC)",
                    p.user_id,
                    ago(at),
                    clock(at)
                ),
                (Some(false), None) => println!("{} has not been seen", p.user_id),
                (None, _) => println!("{}: not shown to you", p.user_id),
            }
            client.shutdown().await;
        }
        Command::Privacy {
            action: PrivacyAction::LastSeen { value },
        } => {
            let client = Client::open(config()).await?;
            let v = match value {
                Some(v) => {
                    let v: Visibility = v.parse().map_err(|e: String| anyhow!(e))?;
                    client.set_privacy(v).await?
                }
                None => client.privacy().await?,
            };
            println!("last seen: {}", v.as_str());
            client.shutdown().await;
        }
        Command::Privacy {
            action: PrivacyAction::ReadReceipts { value },
        } => {
            let client = Client::open(config()).await?;
            let on = match value {
                Some(v) => client.set_read_receipts(on_off(&v)?).await?,
                None => client.read_receipts().await?,
            };
            println!(
                "read receipts: {}",
                if on {
                    "on"
                } else {
                    "off (you send none and see no one's)"
                }
            );
            client.shutdown().await;
        }
        Command::Timer { chat, value: None } => {
            let reader = Reader::open(&dir).await?;
            let chat = resolve_chat_offline(&reader, &chat).await?;
            match reader.timer(&chat).await? {
                Some(s) => println!(
                    "disappearing messages: {}",
                    parley_client::timer::display(s)
                ),
                None => println!("disappearing messages: off"),
            }
        }
        Command::Timer {
            chat,
            value: Some(value),
        } => {
            let secs = parley_client::timer::parse(&value).map_err(|e| anyhow!(e))?;
            let result = action(config(), &chat, |client, chat| async move {
                client.set_timer(&chat, secs).await?;
                Ok(match secs {
                    Some(s) => format!(
                        "disappearing messages: {}",
                        parley_client::timer::display(s)
                    ),
                    None => "disappearing messages: off".to_owned(),
                })
            })
            .await?;
            println!("{result}");
        }
        Command::ChatReceipts { chat, value: None } => {
            let reader = Reader::open(&dir).await?;
            let chat = resolve_chat_offline(&reader, &chat).await?;
            let on = reader.chat_read_receipts(&chat).await?;
            println!(
                "read receipts in this chat: {}",
                if on { "on" } else { "off" }
            );
        }
        Command::ChatReceipts {
            chat,
            value: Some(value),
        } => {
            let allowed = on_off(&value)?;
            let result = action(config(), &chat, |client, chat| async move {
                client.set_chat_read_receipts(&chat, allowed).await?;
                Ok(format!(
                    "read receipts in this chat: {}",
                    if allowed { "on" } else { "off" }
                ))
            })
            .await?;
            println!("{result}");
        }
        Command::Report { about } => {
            let client = Client::open(config()).await?;
            let done = match about {
                ReportAbout::User {
                    user,
                    reason,
                    chat,
                    attach,
                } => {
                    let user = parse_user(&user)?;
                    let attach = match chat {
                        Some(c) => {
                            let c = resolve_chat(&client, &c, false).await?;
                            attach.into_iter().map(|id| (c.clone(), id)).collect()
                        }
                        None if attach.is_empty() => Vec::new(),
                        None => bail!("--attach needs --chat"),
                    };
                    client.report_user(&user, &reason, &attach).await
                }
                ReportAbout::Message {
                    chat,
                    message,
                    reason,
                } => {
                    let chat = resolve_chat(&client, &chat, false).await?;
                    client.report_message(&chat, &message, &reason).await
                }
                ReportAbout::Chat {
                    chat,
                    reason,
                    attach,
                } => {
                    let chat = resolve_chat(&client, &chat, false).await?;
                    let attach: Vec<_> = attach.into_iter().map(|id| (chat.clone(), id)).collect();
                    client
                        .report(
                            parley_client::ReportTarget::Chat {
                                chat_id: chat.clone(),
                            },
                            &reason,
                            &attach,
                        )
                        .await
                }
            };
            client.shutdown().await;
            let r = done?;
            println!(
                "report {} sent to your server's admins (what you attached is your word: Parley cannot prove who wrote it)",
                r.report_id
            );
        }
        Command::Contacts { action } => {
            let client = Client::open(config()).await?;
            match action {
                ContactsAction::Add { user } => {
                    let user = parse_user(&user)?;
                    client.add_contact(&user).await?;
                    println!("added {user} to your contacts");
                }
                ContactsAction::Remove { user } => {
                    let user = parse_user(&user)?;
                    client.remove_contact(&user).await?;
                    println!("removed {user} from your contacts");
                }
                ContactsAction::List => {
                    for user in client.contacts().await? {
                        println!("{user}");
                    }
                }
            }
            client.shutdown().await;
        }
        Command::Pusher { action } => {
            let client = Client::open(config()).await?;
            match action {
                PusherAction::Add { url, token } => {
                    let p = client.add_pusher(&url, &token).await?;
                    println!("pusher for device {} -> {}", p.device_id, p.url);
                }
                PusherAction::List => {
                    for p in client.pushers().await? {
                        println!("{}  {}", p.device_id, p.url);
                    }
                }
                PusherAction::Remove { device_id } => {
                    let device = parley_client::DeviceId::try_from(device_id.as_str())
                        .map_err(|e| anyhow!("{device_id:?}: {e}"))?;
                    client.remove_pusher(&device).await?;
                    println!("removed the pusher of {device}");
                }
            }
            client.shutdown().await;
        }
        Command::Verify { user, mark } => {
            let client = Client::open(config()).await?;
            let user = parse_user(&user)?;
            let n = if mark {
                client.mark_verified(&user).await?
            } else {
                client.safety_number(&user).await?
            };
            println!("safety number with {user}:");
            println!("{}", n.number);
            println!("QR payload: {}", n.qr_payload);
            println!(
                "covers {} of your devices and {} of theirs",
                n.own_devices, n.their_devices
            );
            match n.verification {
                parley_client::Verification::Verified if mark => {
                    println!("{user} is now marked verified")
                }
                parley_client::Verification::Verified => println!("{user} is verified"),
                parley_client::Verification::Changed => println!(
                    "WARNING: {user}'s devices changed since you verified them: compare the number again, then `parley verify --mark {user}`"
                ),
                parley_client::Verification::Unverified => println!(
                    "not verified: compare this number with {user}'s (in person or by a call you trust), then `parley verify --mark {user}`"
                ),
            }
            client.shutdown().await;
        }
        Command::Whoami => {
            let client = Client::open(config()).await?;
            println!(
                "{} device {} on {}",
                client.user_id(),
                client.device_id(),
                client.server_url()
            );
            println!("identity key {}", hex(&client.identity_key()));
            client.shutdown().await;
        }
        Command::Devices { action } => {
            let client = Client::open(config()).await?;
            match action.unwrap_or(DevicesAction::List) {
                DevicesAction::List => {
                    for d in client.devices().await? {
                        println!(
                            "{}{}  {}",
                            d.device_id,
                            if d.current { " (this device)" } else { "" },
                            d.display_name.unwrap_or_default()
                        );
                    }
                }
                DevicesAction::Remove { device_id } => {
                    let id = parley_client::DeviceId::try_from(device_id.as_str())
                        .map_err(|e| anyhow!("invalid device id: {e}"))?;
                    client.connect();
                    client.wait_synced(WAIT).await?;
                    client.remove_device(&id).await?;
                    wait_outbox_empty(&client).await;
                    println!("removed {id}");
                }
                DevicesAction::Link { wait } => {
                    let link = client.start_link().await?;
                    println!("link code: {}", link.code());
                    println!("QR payload: {}", link.qr_payload());
                    println!(
                        "on one of your devices run: parley devices approve {}",
                        link.code()
                    );
                    let linked = client
                        .wait_for_approval(link, Duration::from_secs(wait))
                        .await?;
                    println!(
                        "linked: approved by {}; your chats arrive as that device adds this one",
                        linked.approved_by
                    );
                    if let Some(h) = linked.history {
                        println!(
                            "imported {} messages of {} chats from it",
                            h.messages, h.chats
                        );
                    }
                    client.connect();
                    client.wait_synced(WAIT).await?;
                }
                DevicesAction::Approve { code, history } => {
                    let range = match history.as_str() {
                        "all" => parley_client::HistoryRange::All,
                        "none" => parley_client::HistoryRange::Nothing,
                        n => parley_client::HistoryRange::Days(n.parse().map_err(|_| {
                            anyhow!("--history takes all, none or a number of days, not {n:?}")
                        })?),
                    };
                    client.connect();
                    client.wait_synced(WAIT).await?;
                    let d = client.approve_link(&code, range).await?;
                    wait_outbox_empty(&client).await;
                    println!("approved {}: it was added to your chats", d.device_id);
                    if let Some(h) = d.history {
                        println!(
                            "sent {} messages of {} chats, encrypted for it alone",
                            h.messages, h.chats
                        );
                    }
                }
                DevicesAction::Sync => {
                    client.connect();
                    client.wait_synced(WAIT).await?;
                    client.refresh_devices().await?;
                    wait_outbox_empty(&client).await;
                    println!("your chats include all your devices");
                }
            }
            client.shutdown().await;
        }
        Command::Chat {
            action: ChatAction::New { user },
        } => {
            let peer = parse_user(&user)?;
            let client = Client::open(config()).await?;
            client.connect();
            let chat = client.create_chat(&peer).await?;
            if client.wait_synced(WAIT).await.is_ok() {
                wait_outbox_empty(&client).await;
            }
            println!("{chat}");
            client.shutdown().await;
        }
        Command::Chat {
            action: ChatAction::Open { chat },
        } => interactive(config(), Some(chat)).await?,
        Command::Group { action } => group(config(), action).await?,
        Command::Interactive { chat } => interactive(config(), chat).await?,
        Command::Chats => {
            let reader = Reader::open(&dir).await?;
            let me = reader.user_id().await?;
            let chats = reader.chats().await?;
            if chats.is_empty() {
                println!("no chats yet; start one with `parley chat new @user:server`");
            }
            for c in chats {
                let others: Vec<String> = c
                    .members
                    .iter()
                    .filter(|m| Some(*m) != me.as_ref())
                    .map(ToString::to_string)
                    .collect();
                let last = c
                    .last_message
                    .map(|m| format!("  {}: {}", who(&m, me.as_ref()), m.body))
                    .unwrap_or_default();
                let who = if others.is_empty() {
                    "(members unknown)".to_owned()
                } else {
                    others.join(", ")
                };
                println!(
                    "{}  {}{}{}{}",
                    c.chat_id,
                    match &c.name {
                        Some(name) if c.is_group => format!("{name} ({who})"),
                        _ => who,
                    },
                    if c.joined { "" } else { " (not joined yet)" },
                    if c.unread > 0 {
                        format!(" [{} unread]", c.unread)
                    } else {
                        String::new()
                    },
                    last
                );
            }
        }
        Command::Send { chat, text } => {
            let text = text.join(" ");
            let client = Client::open(config()).await?;
            let chat = chat_to_send_to(&client, &chat).await?;
            let mut events = client.subscribe();
            let msg = client.send_text(&chat, &text).await?;
            client.connect();
            let state = match client.wait_synced(Duration::from_secs(3)).await {
                Ok(()) => wait_state(&mut events, &msg, WAIT).await,
                Err(_) => MessageState::Pending,
            };
            match state {
                MessageState::Pending => println!(
                    "queued {} (not sent yet: the server is unreachable; it goes out the next time parley connects)",
                    msg.id
                ),
                MessageState::Failed => bail!("the server refused the message"),
                s => println!("{} {}", s.tick(), msg.id),
            }
            client.shutdown().await;
        }
        Command::SendFile {
            chat,
            path,
            mime,
            caption,
        } => {
            let client = Client::open(config()).await?;
            let chat = chat_to_send_to(&client, &chat).await?;
            let mut events = client.subscribe();
            client.connect();
            let options = FileOptions {
                mime,
                caption,
                name: None,
            };
            let sent = client.send_file(&chat, &path, options).await?;
            let id = &sent.message.id;
            let how = if sent.uploaded == 0 && sent.upload_complete {
                "the server had it already".to_owned()
            } else {
                format!("uploaded {}", human_size(sent.uploaded))
            };
            if !sent.upload_complete {
                println!(
                    "queued {id} ({how}; the upload was interrupted: it resumes from there the next time parley connects)"
                );
                client.shutdown().await;
                return Ok(());
            }
            let state = match client.wait_synced(Duration::from_secs(3)).await {
                Ok(()) => wait_state(&mut events, &sent.message, WAIT).await,
                Err(_) => MessageState::Pending,
            };
            match state {
                MessageState::Pending => println!(
                    "queued {id} ({how}; the message goes out the next time parley connects)"
                ),
                MessageState::Failed => bail!("the server refused the message"),
                s => println!("{} {id} {} ({how})", s.tick(), sent.message.body),
            }
            client.shutdown().await;
        }
        Command::Download { chat, message, out } => {
            let client = Client::open(config()).await?;
            let chat = chat_to_send_to(&client, &chat).await?;
            if client.attachment(&chat, &message).await?.is_none() {
                // Perhaps not received yet: read the inbox first.
                client.connect();
                let _ = client.wait_synced(WAIT).await;
            }
            let done = client.download(&chat, &message, &out).await?;
            println!("saved {} ({})", done.path.display(), human_size(done.size));
            client.shutdown().await;
        }
        Command::Forward { from, message, to } => {
            let client = Client::open(config()).await?;
            let from = resolve_chat(&client, &from, false).await?;
            let to = chat_to_send_to(&client, &to).await?;
            let mut events = client.subscribe();
            let msg = client.forward(&from, &message, &to).await?;
            client.connect();
            let state = match client.wait_synced(Duration::from_secs(3)).await {
                Ok(()) => wait_state(&mut events, &msg, WAIT).await,
                Err(_) => MessageState::Pending,
            };
            match state {
                MessageState::Pending => println!("queued {} (not sent yet)", msg.id),
                MessageState::Failed => bail!("the server refused the message"),
                s => println!("{} {} {}", s.tick(), msg.id, msg.body),
            }
            client.shutdown().await;
        }
        Command::History {
            chat,
            limit,
            ids,
            edits,
        } => {
            let reader = Reader::open(&dir).await?;
            let me = reader.user_id().await?;
            let chat = resolve_chat_offline(&reader, &chat).await?;
            let group = reader.chat(&chat).await?.is_some_and(|c| is_group(&c));
            for m in reader.history(&chat, limit).await? {
                let receipts = group_receipts(&reader, &m, group).await?;
                let extra = decorations(&reader, &m, me.as_ref(), ids).await?;
                println!("{}{receipts}{extra}", line(&m, me.as_ref(), false, group));
                if edits && m.edited_at.is_some() {
                    for v in reader.edits(&chat, &m.id).await? {
                        println!("        {}  version: {}", clock(v.at_ms), v.text);
                    }
                }
            }
        }
        Command::Backup { action } => {
            let client = Client::open(config()).await?;
            match action {
                BackupAction::Enable { passphrase } => {
                    let secret = if passphrase {
                        eprintln!(
                            "A passphrase is only as strong as it is hard to guess: anyone who \
                             obtains the backup (the server's operator included) can try \
                             passphrases offline. Weak passphrases can be guessed."
                        );
                        let p = secret_input("PARLEY_BACKUP_PASSPHRASE", "passphrase")?;
                        parley_client::BackupSecret::Passphrase(p.into())
                    } else {
                        parley_client::BackupSecret::RecoveryKey
                    };
                    let enabled = client.enable_backup(secret).await?;
                    if let Some(key) = &enabled.recovery_key {
                        println!("Your recovery key (write it down; it is shown only once):");
                        println!();
                        println!("    {}", key.as_str());
                        println!();
                    }
                    let b = &enabled.backup;
                    println!(
                        "backed up {} messages in {} chats ({})",
                        b.export.messages,
                        b.export.chats,
                        human_size(b.backup.size)
                    );
                }
                BackupAction::Now => {
                    let b = client.backup_now().await?;
                    println!(
                        "backed up {} messages in {} chats ({})",
                        b.export.messages,
                        b.export.chats,
                        human_size(b.backup.size)
                    );
                }
                BackupAction::Status => {
                    let here = if client.backup_enabled().await? {
                        "enabled on this device"
                    } else {
                        "not enabled on this device"
                    };
                    match client.backup_status().await? {
                        Some(b) => println!(
                            "backup of {} from {} UTC ({}); {}",
                            human_size(b.size),
                            clock(b.created_at),
                            match b.key {
                                parley_client::BackupKeyMode::RecoveryKey => "recovery key",
                                parley_client::BackupKeyMode::Passphrase { .. } => "passphrase",
                            },
                            here
                        ),
                        None => println!("no backup on the server; {here}"),
                    }
                }
            }
            client.shutdown().await;
        }
        Command::Restore => {
            let client = Client::open(config()).await?;
            let secret = secret_input("PARLEY_RECOVERY_KEY", "recovery key (or passphrase)")?;
            let restored = client.restore(&secret).await;
            let restored = match restored {
                Ok(r) => r,
                Err(e) => {
                    client.shutdown().await;
                    return Err(e.into());
                }
            };
            println!(
                "restored {} messages in {} chats ({} new messages, {} new chats)",
                restored.import.messages,
                restored.import.chats,
                restored.import.messages_added,
                restored.import.chats_added
            );
            let failed = match &restored.rejoin {
                Ok(r) => print_rejoin(r),
                Err(e) => {
                    println!("could not rejoin the chats now ({e}); run `parley rejoin` later");
                    true
                }
            };
            client.shutdown().await;
            if failed {
                std::process::exit(3);
            }
        }
        Command::Rejoin => {
            let client = Client::open(config()).await?;
            let r = client.rejoin_chats().await;
            client.shutdown().await;
            if print_rejoin(&r?) {
                std::process::exit(3);
            }
        }
        Command::Block { user } => {
            let client = Client::open(config()).await?;
            let user = parse_user(&user)?;
            client.block(&user).await?;
            println!("blocked {user}");
            client.shutdown().await;
        }
        Command::Unblock { user } => {
            let client = Client::open(config()).await?;
            let user = parse_user(&user)?;
            client.unblock(&user).await?;
            println!("unblocked {user}");
            client.shutdown().await;
        }
        Command::Blocked => {
            let client = Client::open(config()).await?;
            let list = client.blocked().await?;
            if list.is_empty() {
                println!("you block no one");
            }
            for b in list {
                println!(
                    "{}  since {} UTC ({})",
                    b.user_id,
                    clock(b.since),
                    ago(b.since)
                );
            }
            client.shutdown().await;
        }
        Command::Reply {
            chat,
            message,
            text,
        } => {
            let client = Client::open(config()).await?;
            let chat = chat_to_send_to(&client, &chat).await?;
            let mut events = client.subscribe();
            client.connect();
            let synced = client.wait_synced(Duration::from_secs(3)).await.is_ok();
            let msg = client.reply(&chat, &message, &text.join(" ")).await?;
            let state = if synced {
                wait_state(&mut events, &msg, WAIT).await
            } else {
                MessageState::Pending
            };
            match state {
                MessageState::Pending => println!(
                    "queued {} (not sent yet: the server is unreachable; it goes out the next time parley connects)",
                    msg.id
                ),
                MessageState::Failed => bail!("the server refused the message"),
                s => println!("{} {}", s.tick(), msg.id),
            }
            client.shutdown().await;
        }
        Command::React {
            chat,
            message,
            emoji,
            remove,
        } => {
            let result = action(config(), &chat, |client, chat| async move {
                if remove {
                    client.unreact(&chat, &message, &emoji).await?;
                    Ok(format!("removed {emoji} from {message}"))
                } else {
                    client.react(&chat, &message, &emoji).await?;
                    Ok(format!("reacted {emoji} to {message}"))
                }
            })
            .await?;
            println!("{result}");
        }
        Command::Edit {
            chat,
            message,
            text,
        } => {
            let text = text.join(" ");
            let result = action(config(), &chat, |client, chat| async move {
                client.edit(&chat, &message, &text).await?;
                Ok(format!("edited {message}"))
            })
            .await?;
            println!("{result}");
        }
        Command::Delete {
            chat,
            message,
            for_me,
        } => {
            if for_me {
                let client = Client::open(config()).await?;
                let chat = resolve_chat(&client, &chat, false).await?;
                client.delete_for_me(&chat, &message).await?;
                println!("deleted {message} from this device");
                client.shutdown().await;
            } else {
                let result = action(config(), &chat, |client, chat| async move {
                    client.delete_for_everyone(&chat, &message).await?;
                    Ok(format!("deleted {message} for everyone"))
                })
                .await?;
                println!("{result}");
            }
        }
        Command::Search { text, chat } => {
            let reader = Reader::open(&dir).await?;
            let me = reader.user_id().await?;
            let chat = match chat {
                Some(c) => Some(resolve_chat_offline(&reader, &c).await?),
                None => None,
            };
            for m in reader.search(&text, chat.as_ref(), 100).await? {
                println!("{}  {}", m.chat_id, line(&m, me.as_ref(), false, false));
            }
        }
        Command::Listen => listen(config()).await?,
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_user(s: &str) -> Result<UserId> {
    UserId::try_from(s).map_err(|e| anyhow!("{s:?} is not a user id like @bob:example.org ({e})"))
}

/// The chat to send to: as [`resolve_chat`], and a group this device was added to while
/// offline (its inbox says so) after connecting.
async fn chat_to_send_to(client: &Client, chat: &str) -> Result<ChatId> {
    match resolve_chat(client, chat, false).await {
        Ok(c) => Ok(c),
        Err(e) if chat.starts_with('!') => {
            client.connect();
            if client.wait_synced(WAIT).await.is_err() {
                return Err(e);
            }
            resolve_chat(client, chat, false).await
        }
        Err(e) => Err(e),
    }
}

/// Finds a chat by id, unique id prefix, or peer user id (creating the 1:1 chat with a
/// user if `create`).
async fn resolve_chat(client: &Client, s: &str, create: bool) -> Result<ChatId> {
    if s.starts_with('@') {
        let peer = parse_user(s)?;
        if let Some(c) = client.direct_chat_with(&peer).await? {
            return Ok(c);
        }
        if create {
            return Ok(client.create_chat(&peer).await?);
        }
        bail!("no chat with {peer} yet; start one with `parley chat new {peer}`");
    }
    resolve_chat_offline(client.store(), s).await
}

async fn resolve_chat_offline(reader: &Reader, s: &str) -> Result<ChatId> {
    let chats = reader.chats().await?;
    if s.starts_with('@') {
        let peer = parse_user(s)?;
        return chats
            .into_iter()
            .find(|c| c.members.len() == 2 && c.members.contains(&peer))
            .map(|c| c.chat_id)
            .ok_or_else(|| anyhow!("no chat with {peer}"));
    }
    let matches: Vec<ChatId> = chats
        .into_iter()
        .map(|c| c.chat_id)
        .filter(|c| c.as_str() == s || c.as_str().starts_with(s))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no chat {s:?}; see `parley chats`"),
        _ => bail!("{s:?} matches several chats; give more of the id"),
    }
}

/// A one-shot action on a message: connects (so what the server holds is processed
/// first), runs `f`, waits until what it queued is sent. Says so when it could not be.
async fn action<F, Fut>(config: ClientConfig, chat: &str, f: F) -> Result<String>
where
    F: FnOnce(Client, ChatId) -> Fut,
    Fut: std::future::Future<Output = Result<String>>,
{
    let client = Client::open(config).await?;
    client.connect();
    let synced = client.wait_synced(Duration::from_secs(3)).await.is_ok();
    let result = async {
        let chat = resolve_chat(&client, chat, false).await?;
        let done = f(client.clone(), chat).await?;
        if !synced {
            return Ok(format!(
                "{done} (queued: the server is unreachable; it goes out the next time parley connects)"
            ));
        }
        wait_outbox_empty(&client).await;
        if client.store().outbox_len().await? > 0 {
            return Ok(format!("{done} (queued: not sent yet)"));
        }
        Ok(done)
    }
    .await;
    client.shutdown().await;
    result
}

/// What a history line shows besides the text: `  [id …]` (with `ids`), `(edited)`,
/// the message a reply quotes, reactions.
async fn decorations(
    reader: &Reader,
    m: &Message,
    me: Option<&UserId>,
    ids: bool,
) -> Result<String> {
    let mut out = String::new();
    if let Some(to) = &m.reply_to {
        let quoted = reader
            .message(&m.chat_id, to)
            .await?
            .map(|q| format!("{}: {}", who(&q, me), snippet(&q.body)))
            .unwrap_or_else(|| "a message not on this device".into());
        out.push_str(&format!("  (reply to {quoted})"));
    }
    if m.edited_at.is_some() {
        out.push_str("  (edited)");
    }
    let reactions = reader.reactions(&m.chat_id, &m.id).await?;
    if !reactions.is_empty() {
        let list: Vec<String> = reactions
            .iter()
            .map(|r| {
                let by = if Some(&r.user_id) == me {
                    "me".to_owned()
                } else {
                    r.user_id.to_string()
                };
                format!("{} {by}", r.emoji)
            })
            .collect();
        out.push_str(&format!("  [{}]", list.join(", ")));
    }
    if ids && m.kind != "media" {
        out.push_str(&format!("  [id {}]", m.id));
    }
    Ok(out)
}

/// The first 40 characters of a text.
fn snippet(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if s.chars().count() > 40 {
        out.push('…');
    }
    out
}

async fn wait_outbox_empty(client: &Client) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if client.store().outbox_len().await.unwrap_or(1) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `msg` leaves the pending state (or `timeout`).
async fn wait_state(
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    msg: &Message,
    timeout: Duration,
) -> MessageState {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) | Ok(Err(RecvError::Closed)) => return MessageState::Pending,
            Ok(Err(RecvError::Lagged(_))) => {}
            Ok(Ok(Event::MessageStateChanged {
                chat_id, id, state, ..
            })) if chat_id == msg.chat_id && id == msg.id && state != MessageState::Pending => {
                return state;
            }
            Ok(Ok(_)) => {}
        }
    }
}

fn who(m: &Message, me: Option<&UserId>) -> String {
    if m.outgoing || Some(&m.sender) == me {
        "me".into()
    } else {
        m.sender.to_string()
    }
}

/// "N s/min/h/days ago".
fn ago(ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let s = (now - ms).max(0) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86400 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86400),
    }
}

fn clock(ms: i64) -> String {
    let minutes = ms.div_euclid(60_000).rem_euclid(24 * 60);
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// A group or a chat of more than two.
fn is_group(c: &parley_client::ChatInfo) -> bool {
    c.is_group || c.members.len() > 2
}

/// `  delivered to N of M · read by N of M` for an own sent message in a group.
async fn group_receipts(reader: &Reader, m: &Message, group: bool) -> Result<String> {
    if !group || !m.outgoing || m.seq.is_none() {
        return Ok(String::new());
    }
    Ok(reader
        .receipt_summary(m)
        .await?
        .map(|s| format!("  {}", s.line()))
        .unwrap_or_default())
}

/// One history line: `12:03  me: hello  ✓✓` (in a group, sent messages show
/// "delivered to N of M" instead of ticks).
fn line(m: &Message, me: Option<&UserId>, color: bool, group: bool) -> String {
    let tick = if m.outgoing && group && m.seq.is_some() && m.state != MessageState::Failed {
        String::new()
    } else if m.outgoing {
        let t = m.state.tick();
        if color && m.state == MessageState::Read {
            format!("  \x1b[34m{t}\x1b[0m")
        } else {
            format!("  {t}")
        }
    } else {
        String::new()
    };
    // A file's id is what `parley download` takes.
    let id = if m.kind == "media" {
        format!("  [id {}]", m.id)
    } else {
        String::new()
    };
    format!(
        "{}  {}: {}{}{}",
        clock(m.server_ts.unwrap_or(m.sent_at_ms)),
        who(m, me),
        m.body,
        id,
        tick
    )
}

async fn listen(config: ClientConfig) -> Result<()> {
    let client = Client::open(config).await?;
    let me = client.user_id().clone();
    let mut events = client.subscribe();
    client.set_present(true);
    client.connect();
    println!(
        "listening as {me} (device {}); Ctrl-C to stop",
        client.device_id()
    );
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = tokio::signal::ctrl_c() => break,
        };
        match event {
            Ok(Event::MessageReceived(m)) if m.kind == "media" => {
                println!(
                    "[{}] {}: {}  (id {}: parley download {} {})",
                    m.chat_id, m.sender, m.body, m.id, m.chat_id, m.id
                );
            }
            Ok(Event::MessageReceived(m)) if m.reply_to.is_some() => {
                println!(
                    "[{}] {} (reply to {}): {}",
                    m.chat_id,
                    m.sender,
                    m.reply_to.as_deref().unwrap_or_default(),
                    m.body
                );
            }
            Ok(Event::MessageReceived(m)) => {
                println!("[{}] {}: {}", m.chat_id, m.sender, m.body);
            }
            Ok(Event::MessageEdited { chat_id, id, text }) => {
                println!("[{chat_id}] message {id} edited: {text}");
            }
            Ok(Event::MessageDeleted { chat_id, id }) => {
                println!("[{chat_id}] message {id} was deleted");
            }
            Ok(Event::MessageExpired { chat_id, id }) => {
                println!("[{chat_id}] message {id} disappeared");
            }
            Ok(Event::ReactionChanged {
                chat_id,
                id,
                user_id,
                emoji,
            }) => match emoji {
                Some(e) => println!("[{chat_id}] {user_id} reacted {e} to {id}"),
                None => println!("[{chat_id}] {user_id} took back a reaction to {id}"),
            },
            Ok(Event::MessageStateChanged {
                chat_id, id, state, ..
            }) => println!("[{chat_id}] your message {id}: {}", state.tick()),
            Ok(Event::ChatJoined { chat_id }) => println!("[{chat_id}] joined"),
            Ok(Event::ChatLeft { chat_id }) => println!("[{chat_id}] left (no longer a member)"),
            Ok(Event::MembersChanged {
                chat_id,
                added,
                removed,
            }) => {
                for (u, d) in added {
                    println!("[{chat_id}] a new device was added for {u} ({d})");
                }
                for (u, d) in removed {
                    println!("[{chat_id}] device {d} of {u} left");
                }
            }
            Ok(Event::Undecryptable {
                chat_id,
                seq,
                reason,
            }) => println!("[{chat_id}] event {seq} could not be read: {reason}"),
            Ok(Event::VerifiedDevicesChanged { chat_id, user_id }) => println!(
                "[{chat_id}] WARNING: {user_id}'s devices changed since you verified them (parley verify {user_id})"
            ),
            Ok(Event::VerificationWarning { chat_id, user_id }) => println!(
                "[{chat_id}] WARNING: the next message is from {user_id}, whose devices changed since you verified them"
            ),
            Ok(Event::Typing {
                chat_id,
                user_id,
                typing,
                ..
            }) => println!(
                "[{chat_id}] {user_id} {}",
                if typing {
                    "is typing…"
                } else {
                    "stopped typing"
                }
            ),
            Ok(Event::Presence(p)) => match (p.online, p.last_seen) {
                (Some(true), _) => println!("{} is online", p.user_id),
                (_, Some(at)) => {
                    println!("{} went offline (last seen {} UTC)", p.user_id, clock(at))
                }
                _ => {}
            },
            Ok(Event::Connection(ConnectionState::Synced)) => println!("(connected)"),
            Ok(Event::Connection(ConnectionState::Offline)) => {
                println!("(offline; reconnecting)");
            }
            Ok(Event::Connection(ConnectionState::LoggedOut)) => {
                bail!("this device was logged out or removed")
            }
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => println!("({n} events skipped)"),
            Err(RecvError::Closed) => break,
        }
        let _ = std::io::stdout().flush();
    }
    client.shutdown().await;
    Ok(())
}

/// `parley group …`: connects (so the inbox is processed first), makes the change,
/// waits until what it queued is sent.
async fn group(config: ClientConfig, action: GroupAction) -> Result<()> {
    let client = Client::open(config).await?;
    client.connect();
    client.wait_synced(WAIT).await?;
    let users = |us: &[String]| us.iter().map(|u| parse_user(u)).collect::<Result<Vec<_>>>();
    let result: Result<()> = async {
        match action {
            GroupAction::New { name, members } => {
                let chat = client.create_group(&name, &users(&members)?).await?;
                println!("{chat}");
            }
            GroupAction::Add { chat, users: us } => {
                let chat = resolve_chat(&client, &chat, false).await?;
                client.add_members(&chat, &users(&us)?).await?;
                println!("added {}", us.join(", "));
            }
            GroupAction::Remove { chat, users: us } => {
                let chat = resolve_chat(&client, &chat, false).await?;
                client.remove_members(&chat, &users(&us)?).await?;
                println!("removed {}", us.join(", "));
            }
            GroupAction::Leave { chat } => {
                let chat = resolve_chat(&client, &chat, false).await?;
                client.leave(&chat).await?;
                println!("left {chat}");
            }
            GroupAction::Rename { chat, name } => {
                let chat = resolve_chat(&client, &chat, false).await?;
                client.rename(&chat, &name.join(" ")).await?;
            }
            GroupAction::Admin { chat, user, revoke } => {
                let chat = resolve_chat(&client, &chat, false).await?;
                client
                    .set_admin(&chat, &parse_user(&user)?, !revoke)
                    .await?;
            }
            GroupAction::Members { chat } => {
                let chat = resolve_chat(&client, &chat, false).await?;
                let _ = client.refresh_chats().await;
                for m in client.members(&chat).await?.members {
                    let devices = if m.devices == 1 { "device" } else { "devices" };
                    println!(
                        "{}{}  ({} {devices})",
                        m.user_id,
                        if m.admin { "  admin" } else { "" },
                        m.devices
                    );
                }
            }
        }
        wait_outbox_empty(&client).await;
        Ok(())
    }
    .await;
    client.shutdown().await;
    result
}

/// The interactive view of one chat: the last messages with live ticks, a prompt; each
/// line typed is sent. `/quit` (or end of input) leaves.
async fn interactive(config: ClientConfig, chat: Option<String>) -> Result<()> {
    let client = Client::open(config).await?;
    let me = client.user_id().clone();
    let mut events = client.subscribe();
    client.connect();
    let chat = match chat {
        Some(c) => {
            if c.starts_with('@') && client.direct_chat_with(&parse_user(&c)?).await?.is_none() {
                // Creating needs the server; give the connection a moment first.
                let _ = client.wait_synced(WAIT).await;
            }
            resolve_chat(&client, &c, true).await?
        }
        None => client
            .chats()
            .await?
            .into_iter()
            .next()
            .map(|c| c.chat_id)
            .ok_or_else(|| {
                anyhow!("no chats yet; start one with `parley chat new @user:server`")
            })?,
    };
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut status = "connecting";
    let mut notice = String::new();
    client.mark_read(&chat).await?;
    render(&client, &chat, &me, status, &notice).await?;
    loop {
        tokio::select! {
            line = stdin.next_line() => {
                let Some(line) = line? else { break };
                let text = line.trim();
                if text == "/quit" {
                    break;
                }
                if let Some(value) = text.strip_prefix("/timer ") {
                    notice = match parley_client::timer::parse(value) {
                        Ok(secs) => match client.set_timer(&chat, secs).await {
                            Ok(_) => String::new(),
                            Err(e) => format!("timer not set: {e}"),
                        },
                        Err(e) => e,
                    };
                } else if !text.is_empty() {
                    notice.clear();
                    if let Err(e) = client.send_text(&chat, text).await {
                        notice = format!("not sent: {e}");
                    }
                }
            }
            event = events.recv() => {
                match event {
                    Ok(Event::Connection(s)) => {
                        status = match s {
                            ConnectionState::Offline => "offline, reconnecting",
                            ConnectionState::Connected => "syncing",
                            ConnectionState::Synced => "online",
                            ConnectionState::LoggedOut => "logged out",
                        };
                    }
                    Ok(Event::MessageReceived(m)) if m.chat_id == chat => {
                        client.mark_read(&chat).await?;
                    }
                    Ok(Event::Undecryptable { chat_id, seq, reason }) if chat_id == chat => {
                        notice = format!("event {seq} could not be read: {reason}");
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                }
            }
        }
        render(&client, &chat, &me, status, &notice).await?;
    }
    client.shutdown().await;
    Ok(())
}

async fn render(
    client: &Client,
    chat: &ChatId,
    me: &UserId,
    status: &str,
    notice: &str,
) -> Result<()> {
    let info = client.store().chat(chat).await?;
    let others: Vec<String> = info
        .as_ref()
        .map(|c| {
            c.members
                .iter()
                .filter(|m| *m != me)
                .map(ToString::to_string)
                .collect()
        })
        .unwrap_or_default();
    let joined = info.as_ref().is_some_and(|c| c.joined);
    let group = info.as_ref().is_some_and(is_group);
    let with = if others.is_empty() {
        chat.to_string()
    } else {
        others.join(", ")
    };
    let title = match info.as_ref().and_then(|c| c.name.clone()) {
        Some(name) if group => format!("{name} ({with})"),
        _ => with,
    };
    let mut out = String::from("\x1b[2J\x1b[H");
    out.push_str(&format!("parley: {me} in {title}  [{status}]\r\n"));
    if !joined {
        out.push_str(
            "(this device has not joined the chat yet: another of your devices adds it)\r\n",
        );
    }
    out.push_str(&"-".repeat(60));
    out.push_str("\r\n");
    for m in client.history(chat, 20).await? {
        out.push_str(&line(&m, Some(me), true, group));
        out.push_str(&group_receipts(client.store(), &m, group).await?);
        out.push_str(&decorations(client.store(), &m, Some(me), false).await?);
        out.push_str("\r\n");
    }
    out.push_str(&"-".repeat(60));
    out.push_str("\r\n");
    if !notice.is_empty() {
        out.push_str(notice);
        out.push_str("\r\n");
    }
    out.push_str("> ");
    let mut stdout = std::io::stdout();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// Prints what a rejoin did; true if a chat failed.
fn print_rejoin(r: &parley_client::RejoinSummary) -> bool {
    for chat in &r.rejoined {
        println!("rejoined {chat}");
    }
    for f in &r.failed {
        println!("could not rejoin {}: {}", f.chat_id, f.error);
    }
    println!(
        "{} chats rejoined, {} joined already, {} failed",
        r.rejoined.len(),
        r.already_joined.len(),
        r.failed.len()
    );
    !r.failed.is_empty()
}
