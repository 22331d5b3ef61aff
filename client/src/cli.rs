//! `natter`, the terminal client, built on the SDK. Kept in the library so the
//! integration tests can run the very same entry point as a child process.
//!
//! The profile directory keeps the server address, how to trust it, the session
//! token and the feed cursor (`profile.toml`, mode 0600).

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::proto::{self, GetHistory};
use crate::{Client, ClientConfig, ClientError, ConnectError, FeedItem, Identity, Trust};

/// What `natter --help` says first.
const ABOUT: &str = "natter: chat from a terminal with the people on a natterd server";

#[derive(Debug, Parser)]
#[command(name = "natter", version, about = ABOUT, long_about = None)]
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
    /// How long to wait for natterd to answer when connecting, in seconds. Default 10
    #[arg(long, global = true, value_name = "SECONDS", value_parser = parse_seconds)]
    connect_timeout: Option<Duration>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an account and sign in on this device.
    Signup {
        /// Your email address: you sign in with it, and others reach you by it.
        #[arg(long)]
        email: String,
        /// The name others see next to your email. Default: the part of your
        /// email before the @.
        #[arg(long)]
        name: Option<String>,
        /// Read the password from the first line of standard input. Without it,
        /// natter asks on the terminal, twice.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Sign in on this device.
    Login {
        /// Your account's email. Default: the email this profile last signed in with.
        #[arg(long)]
        email: Option<String>,
        /// Read the password from the first line of standard input.
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
        /// The message text (quote it when it has spaces).
        text: String,
    },
    /// Show the history of a conversation (email, group name or id). Groups
    /// you left or were removed from show their messages up to then.
    History {
        /// A person's email, a group name or a conversation id.
        conversation: String,
        /// How many of the newest messages to show.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// List your conversations, most recent first, with unread counts.
    Conversations,
    /// Mark a conversation read up to its newest message.
    Read {
        /// A person's email, a group name or a conversation id.
        conversation: String,
    },
    /// Who received and read message SEQ of a conversation.
    Receipts {
        /// A person's email, a group name or a conversation id.
        conversation: String,
        /// The message's number: the #N that `history` and `listen` show.
        seq: u64,
    },
    /// Tell the other members of a conversation that you are typing (their
    /// `natter listen` shows it for a few seconds).
    Typing {
        /// A person's email, a group name or a conversation id.
        conversation: String,
    },
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
        /// The group's name (others in it see it too).
        name: String,
        /// Emails of the people to add (you are its owner).
        emails: Vec<String>,
    },
    /// Add members (owners and admins).
    Add {
        /// The group: its name or conversation id.
        group: String,
        /// Emails of the people to add.
        #[arg(required = true)]
        emails: Vec<String>,
    },
    /// Remove a member (whose role is below yours).
    Remove {
        /// The group: its name or conversation id.
        group: String,
        /// The member's email.
        email: String,
    },
    /// Leave a group.
    Leave {
        /// The group: its name or conversation id.
        group: String,
    },
    /// Rename a group (owners and admins).
    Rename {
        /// The group: its current name or conversation id.
        group: String,
        /// The new name.
        name: String,
    },
    /// Change a member's role (only to someone ranked below you).
    Role {
        /// The group: its name or conversation id.
        group: String,
        /// The member's email.
        email: String,
        /// The new role.
        #[arg(ignore_case = true)]
        role: RoleArg,
    },
    /// Show a group's members and roles.
    Show {
        /// The group: its name or conversation id.
        group: String,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    /// Sends and reads messages.
    Member,
    /// Also adds and removes members, renames the group, makes members admins.
    Admin,
    /// Also removes or demotes admins and makes owners.
    Owner,
}

impl From<RoleArg> for proto::Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Member => proto::Role::Member,
            RoleArg::Admin => proto::Role::Admin,
            RoleArg::Owner => proto::Role::Owner,
        }
    }
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= 3600.0 => Ok(Duration::from_secs_f64(secs)),
        _ => Err("a number of seconds above 0 and at most 3600, e.g. 10 or 0.5".into()),
    }
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
    let mut cli = Cli { dir, profile, connect_timeout: args.connect_timeout };
    match args.command {
        Command::Signup { email, name, password_stdin } => {
            cli.signup(&email, name.as_deref().unwrap_or_default(), password_stdin).await
        }
        Command::Login { email, password_stdin, device } => cli.login(email, password_stdin, device).await,
        Command::Logout => cli.logout().await,
        Command::Send { to, text } => cli.send(&to, &text).await,
        Command::History { conversation, limit } => cli.history(&conversation, limit).await,
        Command::Conversations => cli.conversations().await,
        Command::Read { conversation } => cli.read(&conversation).await,
        Command::Receipts { conversation, seq } => cli.receipts(&conversation, seq).await,
        Command::Typing { conversation } => cli.typing(&conversation).await,
        Command::Group(g) => cli.group(g).await,
        Command::Listen { json, count } => cli.listen(json, count).await,
    }
}

struct Cli {
    dir: PathBuf,
    profile: Profile,
    connect_timeout: Option<Duration>,
}

impl Cli {
    /// The server as the user named it (`--server` or the profile), for messages.
    fn server(&self) -> String {
        self.profile.server.clone().unwrap_or_else(|| format!("127.0.0.1:{}", natter_proto::DEFAULT_PORT))
    }

    fn config(&self, with_token: bool) -> anyhow::Result<ClientConfig> {
        let server = self.server();
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
        if let Some(t) = self.connect_timeout {
            config.connect_timeout = t;
        }
        if with_token {
            config.session_token = self.profile.token.clone();
        }
        Ok(config)
    }

    async fn connect_signed_in(&mut self) -> anyhow::Result<Client> {
        if self.profile.token.is_none() {
            match &self.profile.email {
                Some(_) => bail!("not signed in: run `natter login` (or `natter signup`) first"),
                None => bail!("not signed in: run `natter login --email …` (or `natter signup`) first"),
            }
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
        let password = if password_stdin || !std::io::stdin().is_terminal() {
            read_password_line()?
        } else {
            choose_password(|prompt| rpassword::prompt_password(prompt))?
        };
        let client = Client::connect(&config).await?;
        client.signup(email, &password, name).await?;
        let (token, who) = client.login(email, &password, &device_name(None)).await?;
        self.signed_in(token, &who.email)?;
        println!("signed up and signed in as {} ({})", who.email, who.display_name);
        client.close().await;
        Ok(())
    }

    async fn login(
        &mut self,
        email: Option<String>,
        password_stdin: bool,
        device: Option<String>,
    ) -> anyhow::Result<()> {
        let Some(email) = email.or_else(|| self.profile.email.clone()) else {
            bail!("which account? pass --email (this profile has not signed in before)");
        };
        let config = self.config(false)?;
        let password = if password_stdin || !std::io::stdin().is_terminal() {
            read_password_line()?
        } else {
            non_empty(rpassword::prompt_password(format!("password for {email}: "))?)?
        };
        let client = Client::connect(&config).await?;
        let (token, who) = client.login(&email, &password, &device_name(device)).await?;
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
        let conv = resolve(&client, to, Reach::Member, &self.me()).await?;
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
        let conv = resolve(&client, target, Reach::Former, &self.me()).await?;
        let page = client
            .history(GetHistory { conversation_id: conv.conversation_id.clone(), limit, ..Default::default() })
            .await?;
        for m in &page.messages {
            println!("{}", format_message(m));
        }
        if page.messages.is_empty() {
            println!("(no messages in {} yet)", title(&conv, &self.me()));
        }
        if !conv.active {
            println!("(you are no longer a member of {}: this is its history up to then)", title(&conv, &self.me()));
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
        let conv = resolve(&client, target, Reach::Former, &self.me()).await?;
        let upto = client.mark_read(&conv.conversation_id, conv.last_seq).await?;
        println!("{} read up to #{upto}", title(&conv, &self.me()));
        client.close().await;
        Ok(())
    }

    async fn receipts(&mut self, target: &str, seq: u64) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let conv = resolve(&client, target, Reach::Former, &self.me()).await?;
        if !conv.active {
            bail!(
                "you are no longer a member of {}: receipts name its current members, so only they can see them",
                title(&conv, &self.me())
            );
        }
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

    async fn typing(&mut self, target: &str) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let conv = resolve(&client, target, Reach::Member, &self.me()).await?;
        // A request rather than a datagram: its answer says the signal went out (or why not).
        let typing = proto::Typing { conversation_id: conv.conversation_id.clone() };
        match client.request(proto::request::Body::Typing(typing)).await? {
            proto::response::Result::Typing(_) => {}
            other => bail!("natterd answered the typing signal with {other:?}"),
        }
        println!("told {} that you are typing", title(&conv, &self.me()));
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
                let conv = resolve(&client, &group, Reach::Member, &me).await?;
                let emails: Vec<&str> = emails.iter().map(String::as_str).collect();
                Some(client.add_members(&conv.conversation_id, &emails).await?)
            }
            GroupCommand::Remove { group, email } => {
                let conv = resolve(&client, &group, Reach::Member, &me).await?;
                let user = member_id(&conv, &email)?;
                Some(client.remove_member(&conv.conversation_id, &user).await?)
            }
            GroupCommand::Leave { group } => {
                let conv = resolve(&client, &group, Reach::Member, &me).await?;
                client.leave(&conv.conversation_id).await?;
                println!("left {}", title(&conv, &me));
                None
            }
            GroupCommand::Rename { group, name } => {
                let conv = resolve(&client, &group, Reach::Member, &me).await?;
                Some(client.rename_group(&conv.conversation_id, &name).await?)
            }
            GroupCommand::Role { group, email, role } => {
                let conv = resolve(&client, &group, Reach::Member, &me).await?;
                let user = member_id(&conv, &email)?;
                Some(client.set_role(&conv.conversation_id, &user, role.into()).await?)
            }
            GroupCommand::Show { group } => Some(resolve(&client, &group, Reach::Former, &me).await?),
        };
        if let Some(conv) = shown {
            let gone = if conv.active { "" } else { " (left)" };
            println!("{}{gone} [{}]", title(&conv, &me), conv.conversation_id);
            if !conv.active {
                println!("  (you are no longer a member, so its members are not shown)");
            }
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
        let mut names = Names::default();
        let mut connected_before = false;
        loop {
            let connected = match self.connect_signed_in().await {
                Ok(client) => match client.sync(Some(self.profile.cursor.unwrap_or(0))).await {
                    Ok((feed, _)) => Ok((client, feed)),
                    Err(e) => Err(anyhow::Error::from(e)),
                },
                Err(e) => Err(e),
            };
            let (client, mut feed) = match connected {
                Ok(c) => c,
                // The server is away: retry; anything else is final.
                Err(e) if e.downcast_ref::<ClientError>().is_some_and(worth_retrying) => {
                    eprintln!("natter: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if connected_before {
                eprintln!("natter: reconnected to {}", self.server());
            }
            connected_before = true;
            backoff = Duration::from_millis(250);
            if let Some(me) = client.identity() {
                names.me(&me);
            }
            let mut out = std::io::stdout().lock();
            let mut caught_up = false;
            while let Some(item) = feed.next().await {
                let item = match item {
                    Ok(i) => i,
                    Err(e) => {
                        eprintln!("natter: connection lost ({e}); reconnecting");
                        break;
                    }
                };
                if !caught_up && matches!(item, FeedItem::CaughtUp { .. }) {
                    // On stderr, so stdout stays the events alone (--json).
                    caught_up = true;
                    let who = client.identity().map(|i| i.email).unwrap_or_default();
                    eprintln!("natter: listening as {who} on {} (caught up; Ctrl-C stops)", self.server());
                }
                names.learn(&client, &item).await;
                let line = if json { json_line(&item, &names) } else { human_line(&item, &names) };
                names.apply(&item);
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

/// Whether `listen` should connect again after this error: the server is away
/// or busy. A certificate that does not match the pin is final.
fn worth_retrying(e: &ClientError) -> bool {
    use natter_proto::ErrorCode;
    match e {
        ClientError::Connect(ConnectError::PinMismatch { .. }) => false,
        ClientError::Connect(_) | ClientError::Closed { .. } => true,
        ClientError::Server { code, .. } => {
            [ErrorCode::TOO_MANY_CONNECTIONS, ErrorCode::OVERLOADED, ErrorCode::SHUTTING_DOWN, ErrorCode::UNAVAILABLE]
                .contains(code)
        }
        ClientError::Protocol(_) | ClientError::MfaRequired { .. } => false,
    }
}

/// A password read from the first line of standard input.
fn read_password_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    non_empty(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn non_empty(password: String) -> anyhow::Result<String> {
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(password)
}

/// A new password, asked twice (`ask` prompts on the terminal): a typo would
/// otherwise lock the user out of the account they just made.
fn choose_password(mut ask: impl FnMut(&str) -> std::io::Result<String>) -> anyhow::Result<String> {
    let first = non_empty(ask("choose a password (10+ characters): ")?)?;
    let again = ask("the same password again: ")?;
    if first != again {
        bail!("the two passwords differ; nothing was created, please try again");
    }
    Ok(first)
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

/// Which conversations a command may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Current membership only (sending, typing, changing a group).
    Member,
    /// Also groups the user left or was removed from, readable up to then
    /// (history, read, receipts, show).
    Former,
}

/// Finds a conversation by the peer's email (direct), a group name, or an id.
/// A group the user is in wins over one of the same name they have left.
async fn resolve(client: &Client, target: &str, reach: Reach, me: &str) -> anyhow::Result<proto::Conversation> {
    if target.contains('@') {
        return Ok(client.open_direct(target).await?);
    }
    if uuid::Uuid::try_parse(target).is_ok() {
        return match client.get_conversation(target).await {
            Ok(c) => Ok(c),
            // A former member's group is only in their list.
            Err(e) if e.code() == Some(natter_proto::ErrorCode::NOT_A_MEMBER) => {
                match list_entries(client, |c| c.conversation_id == target).await?.pop() {
                    Some(c) => former(c, reach, me),
                    None => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        };
    }
    let found = list_entries(client, |c| is_group(c) && c.name.eq_ignore_ascii_case(target)).await?;
    let (mut active, mut left): (Vec<_>, Vec<_>) = found.into_iter().partition(|c| c.active);
    let several = |found: &[proto::Conversation], which: &str| {
        let ids: Vec<&str> = found.iter().map(|c| c.conversation_id.as_str()).collect();
        anyhow::anyhow!("several {which}groups are named {target:?}; use one of their ids: {}", ids.join(", "))
    };
    match (active.len(), left.len()) {
        (1, _) => Ok(client.get_conversation(&active.remove(0).conversation_id).await?),
        (0, 0) => bail!("no group named {target:?} (use an email for a direct conversation)"),
        (0, 1) => former(left.remove(0), reach, me),
        (0, _) => Err(several(&left, "former ")),
        _ => Err(several(&active, "")),
    }
}

/// A group the user has left, where the command allows one.
fn former(c: proto::Conversation, reach: Reach, me: &str) -> anyhow::Result<proto::Conversation> {
    match reach {
        Reach::Former => Ok(c),
        Reach::Member => bail!(
            "you are no longer a member of {} (you left or were removed); `natter history` still shows its \
             messages up to then",
            title(&c, me)
        ),
    }
}

/// Every entry of the user's conversation list that `keep` keeps.
async fn list_entries(
    client: &Client,
    keep: impl Fn(&proto::Conversation) -> bool,
) -> anyhow::Result<Vec<proto::Conversation>> {
    let mut found = Vec::new();
    let mut before = 0;
    loop {
        let page = client.conversation_page(500, before).await?;
        found.extend(page.conversations.iter().filter(|c| keep(c)).cloned());
        match page.conversations.last() {
            Some(last) if page.has_more => before = last.activity,
            _ => return Ok(found),
        }
    }
}

fn is_group(c: &proto::Conversation) -> bool {
    c.kind == proto::ConversationKind::Group as i32
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
    if is_group(c) {
        format!("'{}'", c.name)
    } else {
        let peers: Vec<&str> = c.members.iter().map(|m| m.email.as_str()).filter(|e| *e != me).collect();
        peers.join(", ")
    }
}

/// Someone `listen` has heard of.
#[derive(Debug, Clone, Default)]
struct Person {
    email: String,
    display_name: String,
}

/// What `listen` knows of the people and conversations its events name, so
/// that lines show emails and titles rather than ids. Filled from the events
/// themselves and, on a conversation's first sight, from `GetConversation` (or
/// the conversation list, for a group the user has left). Kept for the whole
/// `listen`, across reconnects.
#[derive(Debug, Default)]
struct Names {
    me: Identity,
    people: HashMap<String, Person>,
    /// `None`: asked, and not to be found.
    conversations: HashMap<String, Option<proto::Conversation>>,
}

impl Names {
    fn me(&mut self, me: &Identity) {
        self.me = me.clone();
        self.person(&me.user_id, &me.email, &me.display_name);
    }

    fn person(&mut self, user_id: &str, email: &str, display_name: &str) {
        if user_id.is_empty() || email.is_empty() {
            return;
        }
        let p = self.people.entry(user_id.to_owned()).or_default();
        p.email = email.to_owned();
        if !display_name.is_empty() {
            p.display_name = display_name.to_owned();
        }
    }

    fn members(&mut self, members: &[proto::Member]) {
        for m in members {
            self.person(&m.user_id, &m.email, &m.display_name);
        }
    }

    fn conversation(&mut self, c: proto::Conversation) {
        self.members(&c.members);
        self.conversations.insert(c.conversation_id.clone(), Some(c));
    }

    /// Takes in what the item tells, and fetches its conversation if it is new.
    async fn learn(&mut self, client: &Client, item: &FeedItem) {
        use proto::group_event::Change;
        let id = match item {
            FeedItem::Message { message, .. } => {
                self.person(&message.sender_user_id, &message.sender_email, "");
                &message.conversation_id
            }
            FeedItem::ConversationStarted { conversation, .. } => {
                self.conversation(conversation.clone());
                return;
            }
            FeedItem::Group { event, .. } => {
                match &event.change {
                    // A group's first event: its state then, which later events change.
                    Some(Change::Created(c)) => self.conversation(c.clone()),
                    Some(Change::MembersAdded(a)) => self.members(&a.members),
                    Some(Change::MemberRemoved(m) | Change::MemberLeft(m) | Change::RoleChanged(m)) => {
                        self.members(std::slice::from_ref(m))
                    }
                    Some(Change::Renamed(_)) | None => {}
                }
                &event.conversation_id
            }
            FeedItem::Receipt { receipt, .. } => &receipt.conversation_id,
            FeedItem::Typing { conversation_id, user_id, email, .. } => {
                self.person(user_id, email, "");
                conversation_id
            }
            FeedItem::TypingStopped { conversation_id, .. } => conversation_id,
            FeedItem::Presence(p) => {
                self.person(&p.user_id, &p.email, "");
                return;
            }
            FeedItem::CaughtUp { .. } => return,
        };
        if self.conversations.contains_key(id) {
            return;
        }
        let found = match client.get_conversation(id).await {
            Ok(c) => Some(c),
            Err(ClientError::Server { .. }) => match list_entries(client, |c| c.conversation_id == *id).await {
                Ok(mut found) => found.pop(),
                Err(_) => return,
            },
            // The connection is in trouble: ask again on the next item.
            Err(_) => return,
        };
        match found {
            Some(c) => self.conversation(c),
            None => {
                self.conversations.insert(id.clone(), None);
            }
        }
    }

    /// Follows a group change, after its line is written (a rename's line shows the old name).
    fn apply(&mut self, item: &FeedItem) {
        use proto::group_event::Change;
        let FeedItem::Group { event, .. } = item else { return };
        let Some(Some(c)) = self.conversations.get_mut(&event.conversation_id) else { return };
        match &event.change {
            Some(Change::MembersAdded(a)) => {
                for m in &a.members {
                    if !c.members.iter().any(|old| old.user_id == m.user_id) {
                        c.members.push(m.clone());
                    }
                }
            }
            Some(Change::MemberRemoved(m) | Change::MemberLeft(m)) => {
                c.members.retain(|old| old.user_id != m.user_id);
                if m.user_id == self.me.user_id {
                    c.active = false;
                }
            }
            Some(Change::RoleChanged(m)) => {
                if let Some(old) = c.members.iter_mut().find(|old| old.user_id == m.user_id) {
                    old.role = m.role;
                }
            }
            Some(Change::Renamed(name)) => c.name = name.clone(),
            Some(Change::Created(_)) | None => {}
        }
    }

    fn email(&self, user_id: &str) -> Option<&str> {
        self.people.get(user_id).map(|p| p.email.as_str())
    }

    /// `bob@example.org (Bob Stone)`; the name is left out when it is just the
    /// email's local part (natterd's default). The id when nothing is known.
    fn who(&self, user_id: &str) -> String {
        match self.people.get(user_id) {
            Some(p) => {
                let local = p.email.split('@').next().unwrap_or_default();
                if p.display_name.is_empty() || p.display_name.eq_ignore_ascii_case(local) {
                    p.email.clone()
                } else {
                    format!("{} ({})", p.email, p.display_name)
                }
            }
            None => format!("user {user_id}"),
        }
    }

    /// "by you" or "by bob@example.org" for a change someone made.
    fn by(&self, actor: &str) -> String {
        match actor {
            "" => String::new(),
            a if a == self.me.user_id => " by you".into(),
            a => format!(" by {}", self.who(a)),
        }
    }

    fn known(&self, conversation_id: &str) -> Option<&proto::Conversation> {
        self.conversations.get(conversation_id).and_then(Option::as_ref)
    }

    /// The conversation's title, or its id when it could not be found.
    fn title(&self, conversation_id: &str) -> String {
        match self.known(conversation_id) {
            Some(c) => title(c, &self.me.email),
            None => format!("conversation {conversation_id}"),
        }
    }

    /// ` in 'team'` for a group; nothing for a direct conversation (whose
    /// other member is the one the line is about).
    fn in_group(&self, conversation_id: &str) -> String {
        match self.known(conversation_id) {
            Some(c) if !is_group(c) => String::new(),
            _ => format!(" in {}", self.title(conversation_id)),
        }
    }
}

fn human_line(item: &FeedItem, names: &Names) -> Option<String> {
    use proto::group_event::Change;
    let me = &names.me.user_id;
    match item {
        FeedItem::Message { message: m, .. } => {
            let place = match names.known(&m.conversation_id) {
                Some(c) if is_group(c) => format!("{} ", title(c, &names.me.email)),
                // Sent from another of my devices: to whom.
                Some(c) if m.sender_user_id == *me => format!("(to {}) ", title(c, &names.me.email)),
                Some(_) => String::new(),
                None => format!("({}) ", names.title(&m.conversation_id)),
            };
            Some(format!("[{}] {place}#{} {}: {}", clock(m.sent_at_ms), m.seq, m.sender_email, text_of(m)))
        }
        FeedItem::ConversationStarted { conversation, .. } => {
            Some(format!("* new conversation with {}", title(conversation, &names.me.email)))
        }
        FeedItem::Group { event, .. } => {
            let group = names.title(&event.conversation_id);
            let by = names.by(&event.actor_user_id);
            let what = match event.change.as_ref()? {
                Change::Created(c) => {
                    let group = title(c, &names.me.email);
                    return Some(format!(
                        "* #{} group {group} created with {} members{by}",
                        event.seq,
                        c.members.len()
                    ));
                }
                Change::MembersAdded(a) => {
                    let who: Vec<String> = a.members.iter().map(|m| names.who(&m.user_id)).collect();
                    format!("{} added{by}", who.join(", "))
                }
                Change::MemberRemoved(m) if m.user_id == *me => format!("you were removed{by}"),
                Change::MemberRemoved(m) => format!("{} removed{by}", names.who(&m.user_id)),
                Change::MemberLeft(m) if m.user_id == *me => "you left".into(),
                Change::MemberLeft(m) => format!("{} left", names.who(&m.user_id)),
                Change::RoleChanged(m) => format!("{} is now {}{by}", names.who(&m.user_id), role_name(m.role)),
                Change::Renamed(name) if group == format!("'{name}'") => {
                    return Some(format!("* #{} group renamed to '{name}'{by}", event.seq));
                }
                Change::Renamed(name) => return Some(format!("* #{} {group} renamed to '{name}'{by}", event.seq)),
            };
            Some(format!("* #{} {group}: {what}", event.seq))
        }
        // Your own watermarks are not news to you.
        FeedItem::Receipt { receipt, .. } if receipt.user_id == *me => None,
        FeedItem::Receipt { receipt: r, .. } => {
            let (what, seq) = if r.read_up_to > 0 { ("read", r.read_up_to) } else { ("received", r.delivered_up_to) };
            let place = match names.known(&r.conversation_id) {
                Some(c) if !is_group(c) => " of your conversation".to_owned(),
                _ => format!(" in {}", names.title(&r.conversation_id)),
            };
            Some(format!("* {} {what} up to #{seq}{place}", names.who(&r.user_id)))
        }
        FeedItem::Typing { conversation_id, user_id, .. } => {
            Some(format!("* {} is typing{}…", names.who(user_id), names.in_group(conversation_id)))
        }
        FeedItem::TypingStopped { user_id, conversation_id } => {
            Some(format!("* {} stopped typing{}", names.who(user_id), names.in_group(conversation_id)))
        }
        FeedItem::Presence(p) => {
            let who = if names.people.contains_key(&p.user_id) { names.who(&p.user_id) } else { p.email.clone() };
            Some(if p.online {
                format!("* {who} is online")
            } else if p.last_seen_ms > 0 {
                format!("* {who} is offline (last seen {} UTC)", clock(p.last_seen_ms))
            } else {
                format!("* {who} is offline")
            })
        }
        FeedItem::CaughtUp { .. } => None,
    }
}

/// One JSON object per item. Receipts and `typing_stopped` carry the user's
/// `email` too (null when unknown).
fn json_line(item: &FeedItem, names: &Names) -> Option<String> {
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
            "user_id": receipt.user_id, "email": names.email(&receipt.user_id),
            "delivered_up_to": receipt.delivered_up_to, "read_up_to": receipt.read_up_to,
        }),
        FeedItem::CaughtUp { cursor } => serde_json::json!({ "type": "caught_up", "cursor": cursor }),
        FeedItem::Typing { conversation_id, user_id, email, expires_in_ms } => serde_json::json!({
            "type": "typing", "conversation_id": conversation_id, "user_id": user_id, "email": email,
            "expires_in_ms": expires_in_ms,
        }),
        FeedItem::TypingStopped { conversation_id, user_id } => serde_json::json!({
            "type": "typing_stopped", "conversation_id": conversation_id, "user_id": user_id,
            "email": names.email(user_id),
        }),
        FeedItem::Presence(p) => serde_json::json!({
            "type": "presence", "user_id": p.user_id, "email": p.email, "online": p.online,
            "last_seen_ms": p.last_seen_ms,
        }),
    };
    Some(value.to_string())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every subcommand and argument (`natter help …`) says what it is for.
    #[test]
    fn every_command_and_argument_has_a_description() {
        fn check(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            if cmd.get_about().is_none() {
                missing.push(format!("`{path}` itself"));
            }
            for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
                if arg.get_help().is_none() {
                    missing.push(format!("`{path}` {}", arg.get_id()));
                }
                for value in arg.get_possible_values().iter().filter(|v| !v.is_hide_set()) {
                    if value.get_help().is_none() {
                        missing.push(format!("`{path}` {} value {}", arg.get_id(), value.get_name()));
                    }
                }
            }
            for sub in cmd.get_subcommands() {
                check(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cmd = Args::command();
        cmd.build();
        let mut missing = Vec::new();
        check(&cmd, "natter", &mut missing);
        assert!(missing.is_empty(), "no description: {missing:#?}");
        let subcommands: Vec<&str> = cmd.get_subcommands().map(|s| s.get_name()).collect();
        assert!(subcommands.contains(&"typing") && subcommands.contains(&"listen"), "{subcommands:?}");
    }

    #[test]
    fn help_starts_with_what_natter_is() {
        let help = Args::command().render_help().to_string();
        assert!(help.starts_with("natter: chat from a terminal"), "{help}");
        assert!(!help.contains("SDK"), "{help}");
    }

    #[test]
    fn defaults_in_help_are_what_happens() {
        let mut cmd = Args::command();
        let signup = cmd.find_subcommand_mut("signup").unwrap().render_help().to_string();
        assert!(signup.contains("before the @") && !signup.contains("[default: ]"), "{signup}");
        let login = cmd.find_subcommand_mut("login").unwrap();
        let email = login.get_arguments().find(|a| a.get_id() == "email").unwrap();
        assert!(!email.is_required_set(), "login can use the profile's email");
    }

    #[test]
    fn a_new_password_is_asked_twice_and_must_match() {
        let answers = |a: &'static [&'static str]| {
            let mut it = a.iter();
            move |_: &str| Ok(it.next().expect("asked too often").to_string())
        };
        assert_eq!(choose_password(answers(&["a fine password", "a fine password"])).unwrap(), "a fine password");
        let e = choose_password(answers(&["a fine password", "a fine passwort"])).unwrap_err();
        assert!(e.to_string().contains("differ"), "{e}");
        assert!(choose_password(answers(&[""])).is_err(), "empty");
    }

    #[test]
    fn listen_lines_name_people_and_conversations() {
        let member = |user: &str, email: &str, name: &str| proto::Member {
            user_id: user.into(),
            email: email.into(),
            display_name: name.into(),
            role: proto::Role::Member as i32,
        };
        let mut names = Names::default();
        names.me(&Identity {
            user_id: "u-alice".into(),
            email: "alice@example.org".into(),
            display_name: "alice".into(),
            ..Default::default()
        });
        names.conversation(proto::Conversation {
            conversation_id: "c-team".into(),
            kind: proto::ConversationKind::Group as i32,
            name: "team".into(),
            members: vec![
                member("u-alice", "alice@example.org", "alice"),
                member("u-bob", "bob@example.org", "Bob Stone"),
            ],
            active: true,
            ..Default::default()
        });
        names.conversation(proto::Conversation {
            conversation_id: "c-direct".into(),
            kind: proto::ConversationKind::Direct as i32,
            members: vec![
                member("u-alice", "alice@example.org", "alice"),
                member("u-bob", "bob@example.org", "Bob Stone"),
            ],
            active: true,
            ..Default::default()
        });
        let receipt = |conv: &str, user: &str| FeedItem::Receipt {
            cursor: 9,
            receipt: proto::Receipt {
                conversation_id: conv.into(),
                user_id: user.into(),
                delivered_up_to: 2,
                read_up_to: 2,
            },
        };
        let line = |item: &FeedItem| human_line(item, &names);
        assert_eq!(line(&receipt("c-team", "u-bob")).unwrap(), "* bob@example.org (Bob Stone) read up to #2 in 'team'");
        assert_eq!(
            line(&receipt("c-direct", "u-bob")).unwrap(),
            "* bob@example.org (Bob Stone) read up to #2 of your conversation"
        );
        assert_eq!(line(&receipt("c-team", "u-alice")), None, "my own receipts are not news");
        let stopped = FeedItem::TypingStopped { conversation_id: "c-team".into(), user_id: "u-bob".into() };
        assert_eq!(line(&stopped).unwrap(), "* bob@example.org (Bob Stone) stopped typing in 'team'");
        let renamed = FeedItem::Group {
            cursor: 10,
            event: proto::GroupEvent {
                conversation_id: "c-team".into(),
                seq: 3,
                actor_user_id: "u-bob".into(),
                change: Some(proto::group_event::Change::Renamed("crew".into())),
                ..Default::default()
            },
        };
        assert_eq!(line(&renamed).unwrap(), "* #3 'team' renamed to 'crew' by bob@example.org (Bob Stone)");
        names.apply(&renamed);
        assert_eq!(names.title("c-team"), "'crew'");
        let json: serde_json::Value =
            serde_json::from_str(&json_line(&receipt("c-team", "u-bob"), &names).unwrap()).unwrap();
        assert_eq!(json["email"], "bob@example.org");
        assert_eq!(json["user_id"], "u-bob");
    }
}
