//! `natter`, the terminal client, built on the SDK. Kept in the library so the
//! integration tests can run the very same entry point as a child process.
//!
//! The profile directory keeps the server address, how to trust it, the session
//! token and the feed cursor (`profile.toml`, mode 0600).

use std::io::{BufRead, IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::proto::{self, GetHistory};
use crate::{Client, ClientConfig, ClientError, FeedItem, Trust};

/// natter: chat from a terminal.
#[derive(Debug, Parser)]
#[command(name = "natter", version, about)]
pub struct Args {
    /// natterd address (HOST:PORT). Saved in the profile. Default 127.0.0.1:7443
    #[arg(long, global = true, value_name = "HOST:PORT")]
    server: Option<String>,
    /// Trust natterd's certificate by this fingerprint (printed by natterd).
    #[arg(long, global = true, value_name = "sha256:HEX", conflicts_with = "ca")]
    pin: Option<String>,
    /// Trust certificates issued by this CA (e.g. natterd's DATA_DIR/tls/ca.pem).
    #[arg(long, global = true, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// Profile directory (token, server, cursor). Default $NATTER_PROFILE or ~/.natter
    #[arg(long, global = true, value_name = "DIR")]
    profile: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an account and sign in on this device.
    Signup {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "")]
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Sign in on this device.
    Login {
        #[arg(long)]
        email: String,
        #[arg(long)]
        password_stdin: bool,
        /// A name for this device. Default: the host name.
        #[arg(long)]
        device: Option<String>,
    },
    /// Sign out (revokes this device's session).
    Logout,
    /// Send a message: to a person (their email) or a group (its name or id).
    Send {
        /// An email (direct message), a group name or a conversation id.
        to: String,
        /// The message text.
        text: String,
    },
    /// Show the history of a conversation (email, group name or id).
    History {
        conversation: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// List your conversations, most recent first, with unread counts.
    Conversations,
    /// Mark a conversation read up to its newest message.
    Read { conversation: String },
    /// Who received and read message SEQ of a conversation.
    Receipts { conversation: String, seq: u64 },
    /// Manage groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Print events as they arrive; resumes from the saved cursor after a
    /// reconnect, so nothing is missed or shown twice.
    Listen {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Exit after printing this many messages (for scripts).
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Create a group with you as its owner.
    Create {
        name: String,
        /// Members' emails.
        emails: Vec<String>,
    },
    /// Add members (owners and admins).
    Add { group: String, emails: Vec<String> },
    /// Remove a member (whose role is below yours).
    Remove { group: String, email: String },
    /// Leave a group.
    Leave { group: String },
    /// Rename a group (owners and admins).
    Rename { group: String, name: String },
    /// Change a member's role: member, admin or owner.
    Role { group: String, email: String, role: String },
    /// Show a group's members and roles.
    Show { group: String },
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Profile {
    server: Option<String>,
    pin: Option<String>,
    ca: Option<PathBuf>,
    token: Option<String>,
    email: Option<String>,
    cursor: Option<u64>,
}

impl Profile {
    fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("profile.toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Atomically replaces the profile (it holds a token: mode 0600).
    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join("profile.toml.tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(toml::to_string(self)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join("profile.toml"))?;
        Ok(())
    }
}

/// Runs the `natter` command line.
///
/// # Errors
/// Whatever went wrong, for `main` to print.
pub fn main_entry() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = args
        .profile
        .clone()
        .or_else(|| std::env::var_os("NATTER_PROFILE").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".natter")))
        .context("no profile directory: pass --profile DIR")?;
    let mut profile = Profile::load(&dir)?;
    if let Some(s) = &args.server {
        profile.server = Some(s.clone());
    }
    if let Some(p) = &args.pin {
        Trust::pin(p)?;
        profile.pin = Some(p.clone());
        profile.ca = None;
    }
    if let Some(ca) = &args.ca {
        profile.ca = Some(std::fs::canonicalize(ca).with_context(|| format!("{}", ca.display()))?);
        profile.pin = None;
    }
    let mut cli = Cli { dir, profile };
    match args.command {
        Command::Signup { email, name, password_stdin } => cli.signup(&email, &name, password_stdin).await,
        Command::Login { email, password_stdin, device } => cli.login(&email, password_stdin, device).await,
        Command::Logout => cli.logout().await,
        Command::Send { to, text } => cli.send(&to, &text).await,
        Command::History { conversation, limit } => cli.history(&conversation, limit).await,
        Command::Conversations => cli.conversations().await,
        Command::Read { conversation } => cli.read(&conversation).await,
        Command::Receipts { conversation, seq } => cli.receipts(&conversation, seq).await,
        Command::Group(g) => cli.group(g).await,
        Command::Listen { json, count } => cli.listen(json, count).await,
    }
}

struct Cli {
    dir: PathBuf,
    profile: Profile,
}

impl Cli {
    fn config(&self, with_token: bool) -> anyhow::Result<ClientConfig> {
        let server = self.profile.server.clone().unwrap_or_else(|| format!("127.0.0.1:{}", natter_proto::DEFAULT_PORT));
        let (host, _) = server.rsplit_once(':').context("--server must be HOST:PORT")?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let addr: SocketAddr = server
            .to_socket_addrs()
            .with_context(|| format!("resolving {server}"))?
            .next()
            .with_context(|| format!("{server} resolves to no address"))?;
        let trust = match (&self.profile.pin, &self.profile.ca) {
            (Some(pin), _) => Trust::pin(pin)?,
            (None, Some(ca)) => Trust::ca_file(ca)?,
            (None, None) => bail!(
                "natter does not know how to trust the server yet: pass --pin sha256:… (natterd prints it when it \
                 starts) or --ca DATA_DIR/tls/ca.pem"
            ),
        };
        let mut config = ClientConfig::new(addr, trust);
        config.server_name = host;
        config.client_name = format!("natter-cli/{}", env!("CARGO_PKG_VERSION"));
        if with_token {
            config.session_token = self.profile.token.clone();
        }
        Ok(config)
    }

    async fn connect_signed_in(&mut self) -> anyhow::Result<Client> {
        if self.profile.token.is_none() {
            bail!("not signed in: run `natter login --email …` (or `natter signup`) first");
        }
        match Client::connect(&self.config(true)?).await {
            Ok(c) => Ok(c),
            Err(e) if e.code() == Some(natter_proto::ErrorCode::SESSION_INVALID) => {
                self.profile.token = None;
                self.profile.save(&self.dir)?;
                bail!("your session has ended (signed out elsewhere?): run `natter login` again")
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn signup(&mut self, email: &str, name: &str, password_stdin: bool) -> anyhow::Result<()> {
        let config = self.config(false)?;
        let password = read_password(password_stdin, "choose a password (10+ characters): ")?;
        let client = Client::connect(&config).await?;
        client.signup(email, &password, name).await?;
        let (token, who) = client.login(email, &password, &device_name(None)).await?;
        self.signed_in(token, &who.email)?;
        println!("signed up and signed in as {} ({})", who.email, who.display_name);
        client.close().await;
        Ok(())
    }

    async fn login(&mut self, email: &str, password_stdin: bool, device: Option<String>) -> anyhow::Result<()> {
        let config = self.config(false)?;
        let password = read_password(password_stdin, "password: ")?;
        let client = Client::connect(&config).await?;
        let (token, who) = client.login(email, &password, &device_name(device)).await?;
        self.signed_in(token, &who.email)?;
        println!("signed in as {}", who.email);
        client.close().await;
        Ok(())
    }

    fn signed_in(&mut self, token: String, email: &str) -> anyhow::Result<()> {
        if self.profile.email.as_deref() != Some(email) {
            // Another account: its feed starts from scratch.
            self.profile.cursor = None;
        }
        self.profile.token = Some(token);
        self.profile.email = Some(email.to_owned());
        self.profile.save(&self.dir)
    }

    async fn logout(&mut self) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        client.logout().await?;
        self.profile.token = None;
        self.profile.save(&self.dir)?;
        println!("signed out");
        client.close().await;
        Ok(())
    }

    async fn send(&mut self, to: &str, text: &str) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let conv = resolve(&client, to).await?;
        let id = uuid::Uuid::new_v4().to_string();
        let sent = client.send_text(&conv.conversation_id, &id, text).await?;
        println!("sent #{} to {}", sent.seq, title(&conv, &self.me()));
        client.close().await;
        Ok(())
    }

    fn me(&self) -> String {
        self.profile.email.clone().unwrap_or_default()
    }

    async fn history(&mut self, target: &str, limit: u32) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let conv = resolve(&client, target).await?;
        let page = client
            .history(GetHistory { conversation_id: conv.conversation_id.clone(), limit, ..Default::default() })
            .await?;
        for m in &page.messages {
            println!("{}", format_message(m));
        }
        if page.messages.is_empty() {
            println!("(no messages in {} yet)", title(&conv, &self.me()));
        }
        client.close().await;
        Ok(())
    }

    async fn conversations(&mut self) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let me = self.me();
        let list = client.conversations(100).await?;
        if list.is_empty() {
            println!("(no conversations yet: `natter send EMAIL TEXT` starts one)");
        }
        for c in &list {
            let last = c.last_message.as_ref().map(format_message).unwrap_or_else(|| "(no messages)".into());
            let unread = if c.unread > 0 { format!(" ({} unread)", c.unread) } else { String::new() };
            let gone = if c.active { "" } else { " (left)" };
            println!("{}{unread}{gone}  {last}", title(c, &me));
        }
        client.close().await;
        Ok(())
    }

    async fn read(&mut self, target: &str) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let conv = resolve(&client, target).await?;
        let upto = client.mark_read(&conv.conversation_id, conv.last_seq).await?;
        println!("{} read up to #{upto}", title(&conv, &self.me()));
        client.close().await;
        Ok(())
    }

    async fn receipts(&mut self, target: &str, seq: u64) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let conv = resolve(&client, target).await?;
        let r = client.receipts(&conv.conversation_id, seq).await?;
        let status = match proto::ReceiptStatus::try_from(r.status) {
            Ok(proto::ReceiptStatus::Read) => "read",
            Ok(proto::ReceiptStatus::Delivered) => "delivered",
            _ => "sent",
        };
        println!(
            "#{seq}: {status}; delivered to {} of {}; read by {} of {}",
            r.delivered_count,
            r.member_count,
            r.read_by.len(),
            r.member_count
        );
        for m in &r.read_by {
            println!("  read by {}", m.email);
        }
        client.close().await;
        Ok(())
    }

    async fn group(&mut self, cmd: GroupCommand) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let me = self.me();
        let shown = match cmd {
            GroupCommand::Create { name, emails } => {
                let emails: Vec<&str> = emails.iter().map(String::as_str).collect();
                Some(client.create_group(&name, &emails).await?)
            }
            GroupCommand::Add { group, emails } => {
                let conv = resolve(&client, &group).await?;
                let emails: Vec<&str> = emails.iter().map(String::as_str).collect();
                Some(client.add_members(&conv.conversation_id, &emails).await?)
            }
            GroupCommand::Remove { group, email } => {
                let conv = resolve(&client, &group).await?;
                let user = member_id(&conv, &email)?;
                Some(client.remove_member(&conv.conversation_id, &user).await?)
            }
            GroupCommand::Leave { group } => {
                let conv = resolve(&client, &group).await?;
                client.leave(&conv.conversation_id).await?;
                println!("left {}", title(&conv, &me));
                None
            }
            GroupCommand::Rename { group, name } => {
                let conv = resolve(&client, &group).await?;
                Some(client.rename_group(&conv.conversation_id, &name).await?)
            }
            GroupCommand::Role { group, email, role } => {
                let conv = resolve(&client, &group).await?;
                let user = member_id(&conv, &email)?;
                let role = match role.to_ascii_lowercase().as_str() {
                    "member" => proto::Role::Member,
                    "admin" => proto::Role::Admin,
                    "owner" => proto::Role::Owner,
                    other => bail!("unknown role {other:?}: use member, admin or owner"),
                };
                Some(client.set_role(&conv.conversation_id, &user, role).await?)
            }
            GroupCommand::Show { group } => Some(resolve(&client, &group).await?),
        };
        if let Some(conv) = shown {
            println!("{} [{}]", title(&conv, &me), conv.conversation_id);
            for m in &conv.members {
                println!("  {} ({})", m.email, role_name(m.role));
            }
        }
        client.close().await;
        Ok(())
    }

    async fn listen(&mut self, json: bool, count: Option<u64>) -> anyhow::Result<()> {
        let mut printed = 0u64;
        let mut backoff = Duration::from_millis(250);
        loop {
            let client = match self.connect_signed_in().await {
                Ok(c) => c,
                Err(e) => match e.downcast_ref::<ClientError>() {
                    // The server is away: retry; anything else is final.
                    Some(ClientError::Connect(_)) | Some(ClientError::Closed { .. }) => {
                        eprintln!("natter: {e}; retrying in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                    _ => return Err(e),
                },
            };
            let (mut feed, _) = client.sync(Some(self.profile.cursor.unwrap_or(0))).await?;
            backoff = Duration::from_millis(250);
            let me = client.identity().map(|i| i.email).unwrap_or_default();
            let mut out = std::io::stdout().lock();
            while let Some(item) = feed.next().await {
                let item = match item {
                    Ok(i) => i,
                    Err(e) => {
                        eprintln!("natter: connection lost ({e}); reconnecting");
                        break;
                    }
                };
                let line = if json { json_line(&item) } else { human_line(&item, &me) };
                if let Some(line) = line {
                    writeln!(out, "{line}")?;
                    out.flush()?;
                }
                if let Some(cursor) = item.cursor().filter(|_| !matches!(item, FeedItem::CaughtUp { .. })) {
                    self.profile.cursor = Some(cursor);
                    self.profile.save(&self.dir)?;
                }
                if matches!(item, FeedItem::Message { .. }) {
                    printed += 1;
                    if count.is_some_and(|c| printed >= c) {
                        drop(out);
                        client.close().await;
                        return Ok(());
                    }
                }
            }
        }
    }
}

fn read_password(from_stdin: bool, prompt: &str) -> anyhow::Result<String> {
    let password = if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        rpassword::prompt_password(prompt)?
    };
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(password)
}

fn device_name(explicit: Option<String>) -> String {
    explicit
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "natter-cli".into())
}

fn text_of(m: &proto::Message) -> &str {
    match m.content.as_ref().and_then(|c| c.body.as_ref()) {
        Some(proto::content::Body::Text(t)) => &t.body,
        None => "(unsupported content)",
    }
}

/// `HH:MM:SS` UTC of a Unix time in milliseconds.
fn clock(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

fn format_message(m: &proto::Message) -> String {
    format!("[{}] #{} {}: {}", clock(m.sent_at_ms), m.seq, m.sender_email, text_of(m))
}

/// Finds a conversation by the peer's email (direct), a group name, or an id.
async fn resolve(client: &Client, target: &str) -> anyhow::Result<proto::Conversation> {
    if target.contains('@') {
        return Ok(client.open_direct(target).await?);
    }
    if uuid::Uuid::try_parse(target).is_ok() {
        return Ok(client.get_conversation(target).await?);
    }
    let mut found = Vec::new();
    let mut before = 0;
    loop {
        let page = client.conversation_page(500, before).await?;
        found.extend(page.conversations.iter().filter(|c| c.active && c.name.eq_ignore_ascii_case(target)).cloned());
        match page.conversations.last() {
            Some(last) if page.has_more => before = last.activity,
            _ => break,
        }
    }
    match found.len() {
        0 => bail!("no group named {target:?} (use an email for a direct conversation)"),
        1 => Ok(client.get_conversation(&found[0].conversation_id).await?),
        _ => {
            let ids: Vec<&str> = found.iter().map(|c| c.conversation_id.as_str()).collect();
            bail!("several groups are named {target:?}; use one of their ids: {}", ids.join(", "))
        }
    }
}

fn member_id(conv: &proto::Conversation, email: &str) -> anyhow::Result<String> {
    let email = email.trim().to_lowercase();
    conv.members
        .iter()
        .find(|m| m.email == email)
        .map(|m| m.user_id.clone())
        .with_context(|| format!("{email} is not a member of {}", conv.name))
}

fn role_name(role: i32) -> &'static str {
    match proto::Role::try_from(role) {
        Ok(proto::Role::Owner) => "owner",
        Ok(proto::Role::Admin) => "admin",
        _ => "member",
    }
}

/// A group's name, or the other members' emails.
fn title(c: &proto::Conversation, me: &str) -> String {
    if c.kind == proto::ConversationKind::Group as i32 {
        format!("'{}'", c.name)
    } else {
        let peers: Vec<&str> = c.members.iter().map(|m| m.email.as_str()).filter(|e| *e != me).collect();
        peers.join(", ")
    }
}

fn human_line(item: &FeedItem, me: &str) -> Option<String> {
    use proto::group_event::Change;
    match item {
        FeedItem::Message { message, .. } => Some(format_message(message)),
        FeedItem::ConversationStarted { conversation, .. } => {
            Some(format!("* new conversation with {}", title(conversation, me)))
        }
        FeedItem::Group { event, .. } => {
            let what = match event.change.as_ref()? {
                Change::Created(c) => format!("group {} created with {} members", title(c, me), c.members.len()),
                Change::MembersAdded(a) => {
                    let who: Vec<&str> = a.members.iter().map(|m| m.email.as_str()).collect();
                    format!("{} added", who.join(", "))
                }
                Change::MemberRemoved(m) => format!("{} removed", m.email),
                Change::MemberLeft(m) => format!("{} left", m.email),
                Change::RoleChanged(m) => format!("{} is now {}", m.email, role_name(m.role)),
                Change::Renamed(name) => format!("renamed to '{name}'"),
            };
            Some(format!("* #{} {what} [{}]", event.seq, event.conversation_id))
        }
        FeedItem::Receipt { receipt, .. } => {
            let (what, seq) = if receipt.read_up_to > 0 {
                ("read", receipt.read_up_to)
            } else {
                ("received", receipt.delivered_up_to)
            };
            Some(format!("* {} {what} up to #{seq} [{}]", receipt.user_id, receipt.conversation_id))
        }
        FeedItem::Typing { email, conversation_id, .. } => Some(format!("* {email} is typing… [{conversation_id}]")),
        FeedItem::TypingStopped { user_id, conversation_id } => {
            Some(format!("* {user_id} stopped typing [{conversation_id}]"))
        }
        FeedItem::Presence(p) => Some(if p.online {
            format!("* {} is online", p.email)
        } else if p.last_seen_ms > 0 {
            format!("* {} is offline (last seen {} UTC)", p.email, clock(p.last_seen_ms))
        } else {
            format!("* {} is offline", p.email)
        }),
        FeedItem::CaughtUp { .. } => None,
    }
}

fn json_line(item: &FeedItem) -> Option<String> {
    let value = match item {
        FeedItem::Message { cursor, message } => serde_json::json!({
            "type": "message",
            "cursor": cursor,
            "conversation_id": message.conversation_id,
            "seq": message.seq,
            "sender": message.sender_email,
            "sender_user_id": message.sender_user_id,
            "client_msg_id": message.client_msg_id,
            "text": text_of(message),
            "sent_at_ms": message.sent_at_ms,
        }),
        FeedItem::ConversationStarted { cursor, conversation } => serde_json::json!({
            "type": "conversation_started",
            "cursor": cursor,
            "conversation_id": conversation.conversation_id,
            "members": conversation.members.iter().map(|m| m.email.clone()).collect::<Vec<_>>(),
        }),
        FeedItem::Group { cursor, event } => {
            use proto::group_event::Change;
            let (change, detail) = match event.change.as_ref()? {
                Change::Created(c) => (
                    "created",
                    serde_json::json!({"name": c.name, "members": c.members.iter().map(|m| m.email.clone()).collect::<Vec<_>>()}),
                ),
                Change::MembersAdded(a) => {
                    ("members_added", serde_json::json!(a.members.iter().map(|m| m.email.clone()).collect::<Vec<_>>()))
                }
                Change::MemberRemoved(m) => ("member_removed", serde_json::json!(m.email)),
                Change::MemberLeft(m) => ("member_left", serde_json::json!(m.email)),
                Change::RoleChanged(m) => {
                    ("role_changed", serde_json::json!({"member": m.email, "role": role_name(m.role)}))
                }
                Change::Renamed(name) => ("renamed", serde_json::json!(name)),
            };
            serde_json::json!({
                "type": "group", "cursor": cursor, "conversation_id": event.conversation_id, "seq": event.seq,
                "actor_user_id": event.actor_user_id, "change": change, "detail": detail,
            })
        }
        FeedItem::Receipt { cursor, receipt } => serde_json::json!({
            "type": "receipt", "cursor": cursor, "conversation_id": receipt.conversation_id,
            "user_id": receipt.user_id, "delivered_up_to": receipt.delivered_up_to, "read_up_to": receipt.read_up_to,
        }),
        FeedItem::CaughtUp { cursor } => serde_json::json!({ "type": "caught_up", "cursor": cursor }),
        FeedItem::Typing { conversation_id, user_id, email, expires_in_ms } => serde_json::json!({
            "type": "typing", "conversation_id": conversation_id, "user_id": user_id, "email": email,
            "expires_in_ms": expires_in_ms,
        }),
        FeedItem::TypingStopped { conversation_id, user_id } => serde_json::json!({
            "type": "typing_stopped", "conversation_id": conversation_id, "user_id": user_id,
        }),
        FeedItem::Presence(p) => serde_json::json!({
            "type": "presence", "user_id": p.user_id, "email": p.email, "online": p.online,
            "last_seen_ms": p.last_seen_ms,
        }),
    };
    Some(value.to_string())
}
