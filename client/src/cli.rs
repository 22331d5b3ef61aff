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
    /// Send a direct message.
    Send {
        /// The recipient's email.
        email: String,
        /// The message text.
        text: String,
    },
    /// Show the history of the direct conversation with EMAIL.
    History {
        email: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// List your conversations, most recent first.
    Conversations,
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
        Command::Send { email, text } => cli.send(&email, &text).await,
        Command::History { email, limit } => cli.history(&email, limit).await,
        Command::Conversations => cli.conversations().await,
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

    async fn send(&mut self, email: &str, text: &str) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let conv = client.open_direct(email).await?;
        let id = uuid::Uuid::new_v4().to_string();
        let sent = client.send_text(&conv.conversation_id, &id, text).await?;
        self.profile.save(&self.dir)?;
        println!("sent #{} to {email}", sent.seq);
        client.close().await;
        Ok(())
    }

    async fn history(&mut self, email: &str, limit: u32) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let conv = client.open_direct(email).await?;
        let page =
            client.history(GetHistory { conversation_id: conv.conversation_id, limit, ..Default::default() }).await?;
        for m in &page.messages {
            println!("{}", format_message(m));
        }
        if page.messages.is_empty() {
            println!("(no messages with {email} yet)");
        }
        client.close().await;
        Ok(())
    }

    async fn conversations(&mut self) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let me = client.identity().map(|i| i.email).unwrap_or_default();
        let list = client.conversations(100).await?;
        if list.is_empty() {
            println!("(no conversations yet: `natter send EMAIL TEXT` starts one)");
        }
        for c in &list {
            let peers: Vec<&str> = c.members.iter().map(|m| m.email.as_str()).filter(|e| *e != me).collect();
            let last = c.last_message.as_ref().map(format_message).unwrap_or_else(|| "(no messages)".into());
            println!("{}  {}", peers.join(", "), last);
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
                if !matches!(item, FeedItem::CaughtUp { .. }) {
                    self.profile.cursor = Some(item.cursor());
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

fn human_line(item: &FeedItem, me: &str) -> Option<String> {
    match item {
        FeedItem::Message { message, .. } => Some(format_message(message)),
        FeedItem::ConversationStarted { conversation, .. } => {
            let peers: Vec<&str> = conversation.members.iter().map(|m| m.email.as_str()).filter(|e| *e != me).collect();
            Some(format!("* new conversation with {}", peers.join(", ")))
        }
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
        FeedItem::CaughtUp { cursor } => serde_json::json!({ "type": "caught_up", "cursor": cursor }),
    };
    Some(value.to_string())
}
