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
use crate::{oauth, Client, ClientConfig, ClientError, ConnectError, FeedItem, Identity, Trust};

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

/// The shells `natter completions` writes for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Shell {
    /// GNU Bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
    /// Elvish.
    Elvish,
    /// PowerShell.
    Powershell,
}

impl From<Shell> for clap_complete::Shell {
    fn from(s: Shell) -> Self {
        match s {
            Shell::Bash => Self::Bash,
            Shell::Zsh => Self::Zsh,
            Shell::Fish => Self::Fish,
            Shell::Elvish => Self::Elvish,
            Shell::Powershell => Self::PowerShell,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a completion script for your shell (e.g. `natter completions
    /// bash > /etc/bash_completion.d/natter`).
    Completions {
        /// The shell the script is for.
        shell: Shell,
    },
    /// Print natter's manual page (roff: `natter man | man -l -`).
    Man,
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
    /// Sign in on this device: with your password, a texted code (--phone),
    /// or your Google or GitHub account in the browser (--google, --github).
    #[command(group(clap::ArgGroup::new("provider").args(["google", "github"])))]
    Login {
        /// Your account's email. Default: the email this profile last signed in with.
        #[arg(long, conflicts_with_all = ["phone", "provider"])]
        email: Option<String>,
        /// Sign in with a code texted to this number instead of a password
        /// (international form: +4915123456789): the number of your account
        /// (`natter add-phone`), or a number no account has yet, which creates one.
        #[arg(long, value_name = "+NUMBER", conflicts_with = "provider")]
        phone: Option<String>,
        /// With --phone: the name others see, if the number creates a new account.
        #[arg(long, requires = "phone")]
        name: Option<String>,
        /// Sign in with your Google account, in the browser. The first time,
        /// this creates a natter account for it (unless an account has its
        /// email: then sign in to that one and `natter link --google`).
        #[arg(long)]
        google: bool,
        /// Sign in with your GitHub account, in the browser (as --google).
        #[arg(long)]
        github: bool,
        /// With --google or --github: how long to wait for the browser to come
        /// back, in seconds. Default 300
        #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, requires = "provider")]
        timeout: Option<Duration>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// For an account with two-factor sign-in: read the code from the
        /// authenticator app (or a recovery code) from the next line of standard
        /// input, after the password's. Without it, natter asks on the terminal.
        #[arg(long)]
        code_stdin: bool,
        /// A name for this device. Default: the host name.
        #[arg(long)]
        device: Option<String>,
    },
    /// Sign out (revokes this device's session).
    Logout,
    /// Link your Google or GitHub account to your natter account, so that
    /// `natter login --google` (or --github) signs in to it.
    Link {
        #[command(flatten)]
        provider: ProviderChoice,
        /// How long to wait for the browser to come back, in seconds. Default 300
        #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
        timeout: Option<Duration>,
    },
    /// Unlink your Google or GitHub account (another way of signing in must remain).
    Unlink {
        #[command(flatten)]
        provider: ProviderChoice,
    },
    /// List the Google and GitHub accounts linked to yours.
    Identities,
    /// Add a phone number to your account (a texted code proves it is yours);
    /// then `natter login --phone` signs in with it.
    AddPhone {
        /// The number, in international form: +4915123456789.
        #[arg(value_name = "+NUMBER")]
        phone: String,
        /// Read the texted code from the first line of standard input.
        #[arg(long)]
        code_stdin: bool,
    },
    /// Take your phone number off your account (it no longer signs in); allowed
    /// while another way of signing in remains.
    RemovePhone,
    /// Prove your email address with the code natterd mailed to it at signup.
    VerifyEmail {
        /// Mail a new code first (the previous one stops working).
        #[arg(long)]
        resend: bool,
        /// Read the code from the first line of standard input. Without it,
        /// natter asks on the terminal.
        #[arg(long)]
        code_stdin: bool,
    },
    /// Change your password, or reset a forgotten one with a mailed code.
    #[command(subcommand)]
    Password(PasswordCommand),
    /// Two-factor sign-in with an authenticator app (TOTP codes).
    #[command(subcommand)]
    Mfa(MfaCommand),
    /// Your account's data.
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// List the devices signed in to your account (`*` marks this one), or
    /// sign them out.
    #[command(args_conflicts_with_subcommands = true)]
    Sessions {
        /// Sign out every device but this one.
        #[arg(long)]
        others: bool,
        #[command(subcommand)]
        command: Option<SessionsCommand>,
    },
    /// End-to-end encryption: set up this device's MLS identity (its key
    /// registered, KeyPackages published) and list your devices' keys.
    Devices,
    /// Show the safety number you and EMAIL compare (read it aloud, or side
    /// by side) to know natterd shows each of you the other's real keys, and
    /// warn if their keys changed since you last looked.
    Verify {
        /// The person's email (you share a conversation).
        email: String,
        /// You compared the numbers and they match: remember these keys as verified.
        #[arg(long)]
        confirmed: bool,
    },
    /// Open (or find) the direct conversation with a person.
    Dm {
        /// Their email.
        email: String,
        /// The end-to-end encrypted conversation with them (another one than
        /// the plaintext one): natterd relays what it cannot read.
        #[arg(long)]
        e2ee: bool,
    },
    /// Send a message: to a person (their email) or a group (its name or id).
    Send {
        /// With an email: the end-to-end encrypted conversation with them.
        /// (A group or id that is encrypted is encrypted to anyway.)
        #[arg(long)]
        e2ee: bool,
        /// An email (direct message), a group name or a conversation id.
        to: String,
        /// The message text (quote it when it has spaces).
        text: String,
    },
    /// Send a file (a photo, a video, a PDF, …) into a conversation. An upload
    /// cut off goes on where natterd has it when you run the same command again.
    SendFile {
        /// An email (direct message), a group name or a conversation id.
        to: String,
        /// The file to send.
        path: PathBuf,
        /// Text shown with the file.
        #[arg(long, default_value = "")]
        caption: String,
    },
    /// Save the file of a media message (its number, as `history` shows it).
    /// A download cut off goes on from what is already saved.
    Download {
        /// An email (direct message), a group name or a conversation id.
        conversation: String,
        /// The message's number (#N in `history`).
        seq: u64,
        /// Where to save it (default: the file's name, in this directory).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Show the history of a conversation (email, group name or id). Groups
    /// you left or were removed from show their messages up to then.
    History {
        /// A person's email, a group name or a conversation id.
        conversation: String,
        /// How many of the newest messages to show.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// With an email: the end-to-end encrypted conversation with them.
        #[arg(long)]
        e2ee: bool,
    },
    /// Search the messages you may read: words, "quoted phrases", and the
    /// last word as a prefix. Results are grouped by conversation, the
    /// matches in [brackets].
    Search {
        /// What to look for.
        text: String,
        /// Only in this conversation (a person's email, a group name or an id).
        #[arg(long = "in")]
        conversation: Option<String>,
        /// Only messages from this person (their email).
        #[arg(long)]
        from: Option<String>,
        /// At most this many hits.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Find people and groups by the start of a name or email: your groups,
    /// people you share a conversation with, anyone else by their exact email.
    Find {
        /// The start of a name or an email address.
        prefix: String,
    },
    /// List your conversations, most recent first, with unread counts.
    Conversations,
    /// How long a conversation keeps its messages: shows it, or sets it
    /// (`--keep 30d`; `--keep server` for the server's limit). Older messages
    /// lose their text and files for everyone.
    Retention {
        /// A person's email, a group name or a conversation id.
        conversation: String,
        /// A span (`90s`, `90m`, `24h`, `30d`), or `server`.
        #[arg(long, value_name = "SPAN")]
        keep: Option<String>,
    },
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
    /// Web Push notifications for this device (a browser's or a UnifiedPush
    /// distributor's subscription), and whether they show message text.
    #[command(subcommand)]
    Push(PushCommand),
    /// No notifications from a conversation: until `natter unmute`, or for a while.
    Mute {
        /// A person's email, a group name or a conversation id.
        conversation: String,
        /// For this long only: 90s, 30m, 8h, 2d.
        #[arg(long = "for", value_parser = parse_span)]
        span: Option<Duration>,
    },
    /// Notifications from a conversation again.
    Unmute {
        /// A person's email, a group name or a conversation id.
        conversation: String,
    },
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
enum PushCommand {
    /// Hand a Web Push subscription to natter for this device (what
    /// `PushManager.subscribe()` or a UnifiedPush distributor gives; subscribe
    /// with the key `natter push status` shows). Replaces an earlier one.
    Register {
        /// The push resource (https).
        #[arg(long)]
        endpoint: String,
        /// The subscription's P-256 key, base64url (`keys.p256dh`).
        // base64url has `-` in its alphabet: a key may start with one.
        #[arg(long, allow_hyphen_values = true)]
        p256dh: String,
        /// Its authentication secret, base64url (`keys.auth`).
        #[arg(long, allow_hyphen_values = true)]
        auth: String,
    },
    /// Stop notifications to this device.
    Unregister,
    /// The server's application server key (VAPID), this device's
    /// subscription, your preview setting and muted conversations.
    Status,
    /// Whether notifications show message text.
    Previews {
        /// on: the sender's name and the text; off: only who wrote, and how many messages.
        #[arg(value_enum)]
        state: OnOff,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    /// Show message text.
    On,
    /// Never show message text.
    Off,
}

/// `90s`, `30m`, `8h`, `2d` (a number and a unit).
fn parse_span(text: &str) -> Result<Duration, String> {
    let unit_at = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(unit_at);
    let n: u64 = number.parse().map_err(|_| format!("{text:?}: a number and a unit (s, m, h, d), e.g. 8h"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    match n.checked_mul(secs) {
        Some(total) if total > 0 => Ok(Duration::from_secs(total)),
        _ => Err(format!("{text:?}: must be more than zero and not absurdly long")),
    }
}

/// A base64url key as browsers write them (padding and the standard
/// alphabet accepted too).
fn base64url(field: &str, text: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    let clean: String = text.trim().trim_end_matches('=').replace('+', "-").replace('/', "_");
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(clean)
        .with_context(|| format!("--{field} is not base64url"))
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Create a group with you as its owner.
    Create {
        /// The group's name (others in it see it too).
        name: String,
        /// Emails of the people to add (you are its owner).
        emails: Vec<String>,
        /// End-to-end encrypted: natterd relays what it cannot read.
        #[arg(long)]
        e2ee: bool,
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

#[derive(Debug, Subcommand)]
enum PasswordCommand {
    /// Choose a new password; every other device is signed out.
    Change {
        /// Read the current password from the first line of standard input and
        /// the new one from the second. Without it, natter asks on the terminal
        /// (the new one twice).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Forgot it? natterd mails a code to your address; with it you choose a
    /// new password, and every device is signed out.
    Reset {
        /// Your account's email. Default: the email this profile last signed in with.
        #[arg(long)]
        email: Option<String>,
        /// Read the mailed code from the first line of standard input and the
        /// new password from the second. Without it, natter asks on the
        /// terminal (the password twice).
        #[arg(long)]
        code_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
enum MfaCommand {
    /// Turn two-factor sign-in on: scan the QR code with an authenticator app,
    /// type the code it shows, and store the recovery codes.
    Enable {
        /// Print the secret and its otpauth URI as one JSON object instead of
        /// the QR code, and the recovery codes as a second one (for scripts).
        #[arg(long)]
        json: bool,
        /// Read the code from the app from the first line of standard input.
        /// Without it, natter asks on the terminal.
        #[arg(long)]
        code_stdin: bool,
    },
    /// Turn two-factor sign-in off (needs a code from the app or a recovery code).
    Disable {
        /// Read the code from the first line of standard input. Without it,
        /// natter asks on the terminal.
        #[arg(long)]
        code_stdin: bool,
    },
    /// Replace your recovery codes with a new set (needs a code from the app or
    /// a recovery code); the old ones stop working.
    RecoveryCodes {
        /// Read the code from the first line of standard input. Without it,
        /// natter asks on the terminal.
        #[arg(long)]
        code_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AccountCommand {
    /// Write your data to a new directory: your profile, your conversations,
    /// the messages you sent (JSON) and the files they carry.
    Export {
        /// A new (or empty) directory for the files.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Delete your account for good: your profile, sign-in methods, sessions,
    /// uploads and the text of every message you sent are erased from the
    /// server (others see "Deleted account" in their place). Asks for your
    /// password, and a code when two-factor sign-in is on.
    Delete {
        /// Do not ask to confirm (scripts).
        #[arg(long)]
        yes: bool,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Read the code from the next line of standard input.
        #[arg(long)]
        code_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    /// Sign one device out; its connections close at once.
    Revoke {
        /// The device's id from `natter sessions`, or a unique start of it (8
        /// characters or more).
        id: String,
    },
}

/// `--google` or `--github`: exactly one.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct ProviderChoice {
    /// Your Google account.
    #[arg(long)]
    google: bool,
    /// Your GitHub account.
    #[arg(long)]
    github: bool,
}

impl ProviderChoice {
    fn provider(&self) -> proto::OAuthProvider {
        chosen_provider(self.google, self.github).unwrap_or(proto::OAuthProvider::Google)
    }
}

fn chosen_provider(google: bool, github: bool) -> Option<proto::OAuthProvider> {
    match (google, github) {
        (true, _) => Some(proto::OAuthProvider::Google),
        (false, true) => Some(proto::OAuthProvider::Github),
        (false, false) => None,
    }
}

/// How long `login --google` and `link` wait for the browser by default.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(300);

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
    match args.command {
        Command::Completions { shell } => {
            let shell = clap_complete::Shell::from(shell);
            clap_complete::generate(
                shell,
                &mut <Args as clap::CommandFactory>::command(),
                "natter",
                &mut std::io::stdout(),
            );
            return Ok(());
        }
        Command::Man => {
            return Ok(clap_mangen::Man::new(<Args as clap::CommandFactory>::command()).render(&mut std::io::stdout())?)
        }
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = runtime.block_on(run(args));
    if result.is_err() {
        // A command that failed dropped its connection, which queues QUIC's
        // CONNECTION_CLOSE: a moment for it to go out, or natterd would count
        // this device as connected (no push notifications) until its idle timeout.
        runtime.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
    }
    result
}

/// Where a command line connects and keeps its session: the profile
/// directory, and what its flags say over the profile. `natter` and
/// `natter-admin --server` share it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The program, for what it tells people to run (`natter`, `natter-admin`).
    pub program: &'static str,
    pub profile: PathBuf,
    pub server: Option<String>,
    pub pin: Option<String>,
    pub ca: Option<PathBuf>,
    pub connect_timeout: Option<Duration>,
}

impl Endpoint {
    /// The profile directory: `--profile`, else `$<env>`, else `~/<home_dir>`.
    ///
    /// # Errors
    /// None of them is set.
    pub fn profile_dir(flag: Option<PathBuf>, env: &str, home_dir: &str) -> anyhow::Result<PathBuf> {
        flag.or_else(|| std::env::var_os(env).map(PathBuf::from))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(home_dir)))
            .context("no profile directory: pass --profile DIR")
    }
}

impl Cli {
    /// The profile, with the endpoint's flags applied (not saved yet).
    fn open(endpoint: Endpoint) -> anyhow::Result<Self> {
        let mut profile = Profile::load(&endpoint.profile)?;
        if let Some(s) = &endpoint.server {
            profile.server = Some(s.clone());
        }
        if let Some(p) = &endpoint.pin {
            Trust::pin(p)?;
            profile.pin = Some(p.clone());
            profile.ca = None;
        }
        if let Some(ca) = &endpoint.ca {
            profile.ca = Some(std::fs::canonicalize(ca).with_context(|| format!("{}", ca.display()))?);
            profile.pin = None;
        }
        Ok(Cli { program: endpoint.program, dir: endpoint.profile, profile, connect_timeout: endpoint.connect_timeout })
    }
}

/// Signs in with email and password (and a second factor when the account
/// has one), keeping the session in the endpoint's profile: `natter login`.
///
/// # Errors
/// Whatever stopped it, for the program to print.
pub async fn login(
    endpoint: Endpoint,
    email: Option<String>,
    password_stdin: bool,
    code_stdin: bool,
    device: Option<String>,
) -> anyhow::Result<()> {
    let mut cli = Cli::open(endpoint)?;
    cli.login(email, FromStdin { password: password_stdin, code: code_stdin }, device).await
}

/// Signs the profile's session out: `natter logout`.
///
/// # Errors
/// Whatever stopped it.
pub async fn logout(endpoint: Endpoint) -> anyhow::Result<()> {
    Cli::open(endpoint)?.logout().await
}

/// A connection signed in with the profile's session.
///
/// # Errors
/// Not signed in, the session ended, or natterd cannot be reached.
pub async fn connect_signed_in(endpoint: Endpoint) -> anyhow::Result<Client> {
    Cli::open(endpoint)?.connect_signed_in().await
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut cli = Cli::open(Endpoint {
        program: "natter",
        profile: Endpoint::profile_dir(args.profile.clone(), "NATTER_PROFILE", ".natter")?,
        server: args.server.clone(),
        pin: args.pin.clone(),
        ca: args.ca.clone(),
        connect_timeout: args.connect_timeout,
    })?;
    match args.command {
        Command::Completions { .. } | Command::Man => unreachable!("answered before connecting"),
        Command::Signup { email, name, password_stdin } => {
            cli.signup(&email, name.as_deref().unwrap_or_default(), password_stdin).await
        }
        Command::Login { email, phone, name, google, github, timeout, password_stdin, code_stdin, device } => {
            let stdin = FromStdin { password: password_stdin, code: code_stdin };
            match (chosen_provider(google, github), phone) {
                (Some(provider), _) => {
                    cli.login_in_browser(provider, stdin, device, timeout.unwrap_or(BROWSER_TIMEOUT)).await
                }
                (None, Some(phone)) => cli.login_by_phone(&phone, &name.unwrap_or_default(), stdin, device).await,
                (None, None) => cli.login(email, stdin, device).await,
            }
        }
        Command::Link { provider, timeout } => cli.link(provider.provider(), timeout.unwrap_or(BROWSER_TIMEOUT)).await,
        Command::Unlink { provider } => cli.unlink(provider.provider()).await,
        Command::Identities => cli.identities().await,
        Command::AddPhone { phone, code_stdin } => cli.add_phone(&phone, code_stdin).await,
        Command::RemovePhone => cli.remove_phone().await,
        Command::Logout => cli.logout().await,
        Command::VerifyEmail { resend, code_stdin } => cli.verify_email(resend, code_stdin).await,
        Command::Password(PasswordCommand::Change { password_stdin }) => cli.change_password(password_stdin).await,
        Command::Password(PasswordCommand::Reset { email, code_stdin }) => cli.reset_password(email, code_stdin).await,
        Command::Mfa(MfaCommand::Enable { json, code_stdin }) => cli.enable_mfa(json, code_stdin).await,
        Command::Mfa(MfaCommand::Disable { code_stdin }) => cli.disable_mfa(code_stdin).await,
        Command::Mfa(MfaCommand::RecoveryCodes { code_stdin }) => cli.new_recovery_codes(code_stdin).await,
        Command::Sessions { others: true, .. } => cli.revoke_other_sessions().await,
        Command::Sessions { command: Some(SessionsCommand::Revoke { id }), .. } => cli.revoke_session(&id).await,
        Command::Sessions { command: None, .. } => cli.sessions().await,
        Command::Devices => cli.devices().await,
        Command::Account { command: AccountCommand::Export { out } } => cli.export(&out).await,
        Command::Account { command: AccountCommand::Delete { yes, password_stdin, code_stdin } } => {
            cli.delete_account(yes, FromStdin { password: password_stdin, code: code_stdin }).await
        }
        Command::Verify { email, confirmed } => cli.verify(&email, confirmed).await,
        Command::Dm { email, e2ee } => cli.dm(&email, e2ee).await,
        Command::Send { to, text, e2ee } => cli.send(&to, &text, e2ee).await,
        Command::SendFile { to, path, caption } => cli.send_file(&to, &path, &caption).await,
        Command::Download { conversation, seq, output } => cli.download(&conversation, seq, output).await,
        Command::History { conversation, limit, e2ee } => cli.history(&conversation, limit, e2ee).await,
        Command::Search { text, conversation, from, limit } => {
            cli.search(&text, conversation.as_deref(), from.as_deref(), limit).await
        }
        Command::Find { prefix } => cli.find(&prefix).await,
        Command::Conversations => cli.conversations().await,
        Command::Read { conversation } => cli.read(&conversation).await,
        Command::Retention { conversation, keep } => cli.retention(&conversation, keep.as_deref()).await,
        Command::Receipts { conversation, seq } => cli.receipts(&conversation, seq).await,
        Command::Typing { conversation } => cli.typing(&conversation).await,
        Command::Group(g) => cli.group(g).await,
        Command::Push(p) => cli.push(p).await,
        Command::Mute { conversation, span } => cli.mute(&conversation, span).await,
        Command::Unmute { conversation } => cli.unmute(&conversation).await,
        Command::Listen { json, count } => cli.listen(json, count).await,
    }
}

struct Cli {
    program: &'static str,
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
                Some(_) => bail!("not signed in: run `{} login` (or `natter signup`) first", self.program),
                None => bail!("not signed in: run `{} login --email …` (or `natter signup`) first", self.program),
            }
        }
        match Client::connect(&self.config(true)?).await {
            Ok(c) => Ok(c),
            Err(e) if e.code() == Some(natter_proto::ErrorCode::SESSION_INVALID) => {
                self.profile.token = None;
                self.profile.save(&self.dir)?;
                bail!("your session has ended (signed out elsewhere?): run `{} login` again", self.program)
            }
            Err(e) if e.code() == Some(natter_proto::ErrorCode::ACCOUNT_DISABLED) => {
                self.profile.token = None;
                self.profile.save(&self.dir)?;
                bail!("an admin disabled this account and ended its sessions; ask them to enable it")
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn signup(&mut self, email: &str, name: &str, password_stdin: bool) -> anyhow::Result<()> {
        let config = self.config(false)?;
        let mut answers = Answers::new(FromStdin { password: password_stdin, code: false });
        let password = answers.new_password("choose a password (10+ characters): ")?;
        let client = Client::connect(&config).await?;
        client.signup(email, &password, name).await?;
        let (token, who) = client.login(email, &password, &device_name(None)).await?;
        self.signed_in(token, &who.email)?;
        println!("signed up and signed in as {} ({})", who.email, who.display_name);
        println!("a code to verify {} was mailed to it: `natter verify-email` asks for it", who.email);
        client.close().await;
        Ok(())
    }

    async fn login(&mut self, email: Option<String>, stdin: FromStdin, device: Option<String>) -> anyhow::Result<()> {
        let email = self.account(email)?;
        let config = self.config(false)?;
        let mut answers = Answers::new(stdin);
        let password = answers.password(&format!("password for {email}: "))?;
        let client = Client::connect(&config).await?;
        let first = client.login(&email, &password, &device_name(device)).await.map_err(Into::into);
        self.finish_sign_in(client, &mut answers, first).await
    }

    async fn login_by_phone(
        &mut self,
        phone: &str,
        name: &str,
        stdin: FromStdin,
        device: Option<String>,
    ) -> anyhow::Result<()> {
        let config = self.config(false)?;
        let mut answers = Answers::new(stdin);
        let client = Client::connect(&config).await?;
        let valid = client.start_phone(phone).await?;
        eprintln!("a code was texted to {phone}, valid {}", how_long(valid));
        let device = device_name(device);
        let first = {
            let (client, device) = (&client, device.as_str());
            with_code(&mut answers, "texted code: ", |code| async move {
                client.sign_in_with_phone(phone, &code, device, name).await
            })
            .await
        };
        self.finish_sign_in(client, &mut answers, first).await
    }

    /// `login --google`, `login --github`: the provider's page in the browser,
    /// then natterd redeems what it sends back.
    async fn login_in_browser(
        &mut self,
        provider: proto::OAuthProvider,
        stdin: FromStdin,
        device: Option<String>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let config = self.config(false)?;
        let oauth = {
            let client = Client::connect(&config).await?;
            let oauth = oauth_config(&client, provider).await?;
            client.close().await;
            oauth
        };
        let grant = browser_grant(&oauth, timeout, IdentityAction::Login).await?;
        // A new connection: the first may not have lived through minutes in the browser.
        let client = Client::connect(&config).await?;
        let mut answers = Answers::new(stdin);
        let first = client
            .oauth_login(&grant, &device_name(device))
            .await
            .map_err(|e| identity_error(e, provider, IdentityAction::Login));
        self.finish_sign_in(client, &mut answers, first).await
    }

    /// The end of every way of signing in: the second factor when the account
    /// has it on (the first factor answered `MFA_REQUIRED`), then the session
    /// saved in the profile.
    async fn finish_sign_in(
        &mut self,
        client: Client,
        answers: &mut Answers,
        first: anyhow::Result<(String, Identity)>,
    ) -> anyhow::Result<()> {
        let challenge = match first.map_err(anyhow::Error::downcast::<ClientError>) {
            Ok((token, who)) => return self.save_sign_in(client, token, &who).await,
            Err(Ok(ClientError::MfaRequired { challenge, .. })) => challenge,
            Err(Ok(e)) => return Err(e.into()),
            Err(Err(e)) => return Err(e),
        };
        let (token, who) = {
            let (client, challenge) = (&client, challenge.as_str());
            with_code(answers, SECOND_FACTOR_PROMPT, |code| async move {
                client.verify_mfa(challenge, &code, !is_totp_code(&code)).await
            })
            .await?
        };
        self.save_sign_in(client, token, &who).await
    }

    async fn save_sign_in(&mut self, client: Client, token: String, who: &Identity) -> anyhow::Result<()> {
        self.signed_in(token, &who.email)?;
        // An account made by phone has no email.
        let name = [&who.email, &who.display_name, &who.user_id].into_iter().find(|n| !n.is_empty());
        println!("signed in as {}", name.map_or("", String::as_str));
        client.close().await;
        Ok(())
    }

    async fn link(&mut self, provider: proto::OAuthProvider, timeout: Duration) -> anyhow::Result<()> {
        let oauth = {
            let client = self.connect_signed_in().await?;
            let oauth = oauth_config(&client, provider).await?;
            client.close().await;
            oauth
        };
        let grant = browser_grant(&oauth, timeout, IdentityAction::Link).await?;
        let client = self.connect_signed_in().await?;
        let linked =
            client.link_identity(&grant).await.map_err(|e| identity_error(e, provider, IdentityAction::Link))?;
        client.close().await;
        let (name, flag) = (oauth::provider_name(provider), provider_flag(provider));
        let which = if linked.email.is_empty() { String::new() } else { format!(" {}", linked.email) };
        println!("linked your {name} account{which}: `natter login {flag}` signs in to this account");
        Ok(())
    }

    async fn unlink(&mut self, provider: proto::OAuthProvider) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let remaining =
            client.unlink_identity(provider).await.map_err(|e| identity_error(e, provider, IdentityAction::Unlink))?;
        client.close().await;
        println!("your {} account is no longer linked", oauth::provider_name(provider));
        if !remaining.is_empty() {
            print!("still linked:\n{}", identities_table(&remaining));
        }
        Ok(())
    }

    async fn remove_phone(&mut self) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let removed = client.remove_phone().await.map_err(|e| match e.code() {
            Some(natter_proto::ErrorCode::LAST_SIGN_IN_METHOD) => anyhow::anyhow!(
                "the number is this account's only way to sign in: link Google or GitHub (`natter link`) first"
            ),
            Some(natter_proto::ErrorCode::NOT_FOUND) => anyhow::anyhow!("this account has no phone number"),
            _ => e.into(),
        })?;
        client.close().await;
        println!("{removed} is no longer on your account");
        Ok(())
    }

    async fn identities(&mut self) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let identities = client.identities().await?;
        client.close().await;
        if identities.is_empty() {
            println!("(no Google or GitHub account is linked: `natter link --google` or `--github` links one)");
        } else {
            print!("{}", identities_table(&identities));
        }
        Ok(())
    }

    async fn add_phone(&mut self, phone: &str, code_stdin: bool) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let valid = client.start_phone(phone).await?;
        eprintln!("a code was texted to {phone}, valid {}", how_long(valid));
        let mut answers = Answers::new(FromStdin { password: false, code: code_stdin });
        let added = {
            let client = &client;
            with_code(&mut answers, "texted code: ", |code| async move { client.add_phone(phone, &code).await }).await?
        };
        println!("{added} is on your account: `natter login --phone {added}` signs in with it");
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

    async fn export(&mut self, out: &Path) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let report = crate::export::export(&mut crate::export::ClientSource { client: &client }, out).await;
        client.close().await;
        let r = report?;
        println!(
            "exported {} conversations, {} messages you sent and {} files ({} bytes) to {}",
            r.conversations,
            r.messages,
            r.files,
            r.file_bytes,
            out.display()
        );
        Ok(())
    }

    async fn delete_account(&mut self, yes: bool, stdin: FromStdin) -> anyhow::Result<()> {
        let mut answers = Answers::new(stdin);
        if !yes {
            if !answers.terminal {
                bail!("deleting an account cannot be undone: pass --yes to confirm without a terminal");
            }
            eprint!("This erases your account and the text of every message you sent. Type \"delete\" to go on: ");
            std::io::stderr().flush()?;
            if answers.line("confirmation")?.trim() != "delete" {
                bail!("not deleted");
            }
        }
        let client = self.connect_signed_in().await?;
        let password = answers.password("password (empty if your account has none): ").unwrap_or_default();
        let c = &client;
        let first = client.delete_account(&password, "").await;
        let (messages, media) =
            match first {
                Err(ClientError::Server { code: natter_proto::ErrorCode::MFA_REQUIRED, .. }) => {
                    let password = &password;
                    with_code(&mut answers, SECOND_FACTOR_PROMPT, |code| async move {
                        c.delete_account(password, &code).await
                    })
                    .await?
                }
                other => other?,
            };
        client.close().await;
        self.profile.token = None;
        self.profile.save(&self.dir)?;
        println!("account deleted: {messages} messages erased, {media} uploads deleted; this profile is signed out");
        Ok(())
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

    /// The account a command is about: `--email`, else the profile's.
    fn account(&self, email: Option<String>) -> anyhow::Result<String> {
        match email.or_else(|| self.profile.email.clone()) {
            Some(email) => Ok(email),
            None => bail!("which account? pass --email (this profile has not signed in before)"),
        }
    }

    async fn verify_email(&mut self, resend: bool, code_stdin: bool) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let email = client.identity().map(|i| i.email).unwrap_or_else(|| self.me());
        if resend {
            match client.start_email_verification().await? {
                Some(valid) => println!("a new code was mailed to {email}, valid {}", how_long(valid)),
                None => {
                    println!("{email} is already verified");
                    client.close().await;
                    return Ok(());
                }
            }
        }
        let mut answers = Answers::new(FromStdin { password: false, code: code_stdin });
        let c = &client;
        let verified = with_code(&mut answers, &format!("code from the mail to {email}: "), |code| async move {
            c.verify_email(&code).await
        })
        .await?;
        println!("{verified} is verified");
        client.close().await;
        Ok(())
    }

    async fn change_password(&mut self, password_stdin: bool) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let mut answers = Answers::new(FromStdin { password: password_stdin, code: false });
        let old = answers.password("current password: ")?;
        let new = answers.new_password("choose a new password (10+ characters): ")?;
        let revoked = client.change_password(&old, &new).await?;
        println!("password changed; {} signed out", devices(revoked, "other device"));
        client.close().await;
        Ok(())
    }

    async fn reset_password(&mut self, email: Option<String>, code_stdin: bool) -> anyhow::Result<()> {
        let email = self.account(email)?;
        let client = Client::connect(&self.config(false)?).await?;
        let valid = client.start_password_reset(&email).await?;
        // natterd answers the same whether or not the address has an account.
        println!("if {email} has an account, a code was mailed to it, valid {}", how_long(valid));
        let mut answers = Answers::new(FromStdin { password: code_stdin, code: code_stdin });
        let mut code = answers.code("code from the mail: ")?;
        let new = answers.new_password("choose a new password (10+ characters): ")?;
        let mut tries = 1;
        let revoked = loop {
            match client.reset_password(&email, &code, &new).await {
                Err(e) if answers.asks_again(&e, tries) => {
                    eprintln!("natter: {e}");
                    tries += 1;
                    code = answers.code("code from the mail: ")?;
                }
                result => break result?,
            }
        };
        client.close().await;
        if self.profile.email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(email.trim())) {
            self.profile.token = None;
            self.profile.save(&self.dir)?;
        }
        println!(
            "password reset; every device was signed out ({}): run `natter login` again",
            devices(revoked, "device")
        );
        Ok(())
    }

    async fn enable_mfa(&mut self, json: bool, code_stdin: bool) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let setup = client.enable_totp().await?;
        let mut out = std::io::stdout();
        if json {
            let setup = serde_json::json!({ "secret": setup.secret_base32, "uri": setup.otpauth_uri });
            writeln!(out, "{setup}")?;
        } else {
            writeln!(out, "scan this QR code with your authenticator app:")?;
            writeln!(out, "{}", qr_code(&setup.otpauth_uri, out.is_terminal())?)?;
            writeln!(out, "or type this key into it: {}", grouped(&setup.secret_base32))?;
        }
        out.flush()?;
        // On this connection: natterd keeps the new secret with it until it is confirmed.
        let mut answers = Answers::new(FromStdin { password: false, code: code_stdin });
        let c = &client;
        let codes =
            with_code(&mut answers, "code from the app: ", |code| async move { c.confirm_totp(&code).await }).await?;
        client.close().await;
        if json {
            println!("{}", serde_json::json!({ "recovery_codes": codes }));
            eprintln!("natter: two-factor sign-in is on; {RECOVERY_CODES_NOTE}");
        } else {
            println!("two-factor sign-in is on: signing in now needs a code from the app.");
            print_recovery_codes(&codes);
        }
        Ok(())
    }

    async fn disable_mfa(&mut self, code_stdin: bool) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let mut answers = Answers::new(FromStdin { password: false, code: code_stdin });
        let c = &client;
        with_code(&mut answers, SECOND_FACTOR_PROMPT, |code| async move { c.disable_totp(&code).await }).await?;
        println!("two-factor sign-in is off: signing in needs only your password");
        client.close().await;
        Ok(())
    }

    async fn new_recovery_codes(&mut self, code_stdin: bool) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let mut answers = Answers::new(FromStdin { password: false, code: code_stdin });
        let c = &client;
        let codes =
            with_code(&mut answers, SECOND_FACTOR_PROMPT, |code| async move { c.new_recovery_codes(&code).await })
                .await?;
        client.close().await;
        println!("new recovery codes; the previous ones no longer work.");
        print_recovery_codes(&codes);
        Ok(())
    }

    async fn sessions(&mut self) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let sessions = client.sessions().await?;
        client.close().await;
        print!("{}", sessions_table(&sessions));
        Ok(())
    }

    /// This device's MLS state (`<profile>/mls/<device id>.db`), its key
    /// registered and its KeyPackage stock topped up.
    async fn mls_device(&self, client: &Client) -> anyhow::Result<crate::e2ee::MlsDevice> {
        let id = client.identity().context("not signed in")?;
        let device = crate::e2ee::MlsDevice::open(&self.dir.join("mls"), &id.user_id, &id.device_id)?;
        device.register(client).await?;
        device.top_up(client).await?;
        Ok(device)
    }

    async fn devices(&mut self) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let device = self.mls_device(&client).await?;
        let me = client.identity().context("not signed in")?;
        let keys = crate::e2ee::device_keys(&client, &me.user_id).await?;
        let stock = crate::e2ee::key_package_stock(&client).await?;
        client.close().await;
        for k in &keys.devices {
            let this = if k.device_id == device.device_id() { "* " } else { "  " };
            println!("{this}{}  key {}", k.device_id, key_text(&k.signature_key));
        }
        let last = if stock.has_last_resort { " and a last-resort one" } else { "" };
        println!("this device has {} KeyPackages waiting on the server{last}", stock.remaining);
        Ok(())
    }

    async fn verify(&mut self, email: &str, confirmed: bool) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        self.mls_device(&client).await?;
        let me = client.identity().context("not signed in")?;
        let found = client.search_directory(email.trim(), 20).await?;
        let Some(them) = found.people.iter().find(|p| p.email.eq_ignore_ascii_case(email.trim())) else {
            bail!("no one with the email {email} shares a conversation with you");
        };
        let pairs = |list: &crate::proto::DeviceKeyList| -> Vec<(String, Vec<u8>)> {
            list.devices.iter().map(|d| (d.device_id.clone(), d.signature_key.clone())).collect()
        };
        let mine = pairs(&crate::e2ee::device_keys(&client, &me.user_id).await?);
        let theirs = pairs(&crate::e2ee::device_keys(&client, &them.user_id).await?);
        client.close().await;
        if theirs.is_empty() {
            bail!("{email} has no device set up for end-to-end encryption yet");
        }
        let mut known = crate::e2ee::KnownKeys::load(&self.dir.join("known-keys.toml"))?;
        match known.check(&them.user_id, email, &theirs)? {
            crate::e2ee::KeyCheck::FirstSeen => println!("first time you see {email}'s keys: remembered"),
            crate::e2ee::KeyCheck::Same { verified: true } => println!("{email}'s keys are the ones you verified"),
            crate::e2ee::KeyCheck::Same { verified: false } => println!("{email}'s keys are as before (not verified)"),
            crate::e2ee::KeyCheck::Changed { added, removed, rekeyed, was_verified } => {
                eprintln!("WARNING: {email}'s keys CHANGED since you last saw them.");
                for (what, list) in [("new device", added), ("device gone", removed), ("new key", rekeyed)] {
                    for d in list {
                        eprintln!("WARNING:   {what}: {d}");
                    }
                }
                if was_verified {
                    eprintln!("WARNING: your earlier verification no longer holds: compare the safety number again.");
                }
            }
        }
        let number = crate::e2ee::safety_number((&me.user_id, &mine), (&them.user_id, &theirs))?;
        println!("safety number with {email}:");
        for line in number.split(' ').collect::<Vec<_>>().chunks(4) {
            println!("  {}", line.join(" "));
        }
        if confirmed {
            known.mark_verified(&them.user_id)?;
            println!("marked {email}'s keys as verified");
        }
        Ok(())
    }

    async fn revoke_session(&mut self, id: &str) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let sessions = client.sessions().await?;
        let session = find_session(&sessions, id)?;
        if session.current {
            bail!("{} is this device: `natter logout` signs it out", session.session_id);
        }
        client.revoke_sessions(Some(&session.session_id)).await?;
        println!("signed out {} ({})", device_label(session), session.session_id);
        client.close().await;
        Ok(())
    }

    async fn revoke_other_sessions(&mut self) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let revoked = client.revoke_sessions(None).await?;
        println!("signed out {}; this one stays signed in", devices(revoked, "other device"));
        client.close().await;
        Ok(())
    }

    async fn dm(&mut self, email: &str, e2ee: bool) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let conv = client.open_direct_with(email, e2ee).await?;
        if e2ee {
            let device = self.mls_device(&client).await?;
            device.enter(&client, &conv).await?;
            println!("end-to-end encrypted conversation with {email}: {}", conv.conversation_id);
        } else {
            println!("conversation with {email}: {}", conv.conversation_id);
        }
        client.close().await;
        Ok(())
    }

    async fn send(&mut self, to: &str, text: &str, e2ee: bool) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let conv = if e2ee && to.contains('@') {
            client.open_direct_with(to, true).await?
        } else {
            resolve(&client, to, Reach::Member, &self.me()).await?
        };
        let seq = if conv.e2ee {
            let device = self.mls_device(&client).await?;
            device.enter(&client, &conv).await?;
            device.send_text(&client, &conv.conversation_id, text).await?
        } else {
            client.send_text(&conv.conversation_id, &uuid::Uuid::new_v4().to_string(), text).await?.seq
        };
        let lock = if conv.e2ee { " (end-to-end encrypted)" } else { "" };
        println!("sent #{seq} to {}{lock}", title(&conv, &self.me()));
        client.close().await;
        Ok(())
    }

    /// Where an unfinished upload of the file with this SHA-256 is noted, to
    /// resume it: `<profile>/uploads/<sha256>`.
    fn upload_note(&self, sha256: &[u8; 32]) -> PathBuf {
        let hex: String = sha256.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join("uploads").join(hex)
    }

    async fn send_file(&mut self, to: &str, path: &Path, caption: &str) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let conv = resolve(&client, to, Reach::Member, &self.me()).await?;
        if conv.e2ee {
            // Encrypted on this device; natterd stores opaque bytes.
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let file_name =
                path.file_name().and_then(|n| n.to_str()).context("the file's name is not UTF-8: rename it")?;
            let mime = infer_type(&bytes);
            let device = self.mls_device(&client).await?;
            device.enter(&client, &conv).await?;
            let seq = device.send_file(&client, &conv.conversation_id, &bytes, file_name, mime, caption).await?;
            println!(
                "sent #{seq} to {} (end-to-end encrypted): [file {file_name}, {mime}, {}]",
                title(&conv, &self.me()),
                human_size(bytes.len() as u64)
            );
            client.close().await;
            return Ok(());
        }
        let mut file = tokio::fs::File::open(path).await.with_context(|| format!("cannot open {}", path.display()))?;
        let (sha256, size) = crate::transfer::digest(&mut file).await?;
        let file_name =
            path.file_name().and_then(|n| n.to_str()).context("the file's name is not UTF-8: rename it")?.to_owned();
        let note = self.upload_note(&sha256);
        // An earlier try of this file for this conversation: go on with it.
        let upload_id = std::fs::read_to_string(&note)
            .ok()
            .and_then(|t| t.split_once(' ').map(|(c, id)| (c.to_owned(), id.trim().to_owned())))
            .filter(|(c, _)| *c == conv.conversation_id)
            .map(|(_, id)| id);
        let spec = crate::transfer::UploadSpec {
            conversation_id: conv.conversation_id.clone(),
            file_name,
            size,
            sha256,
            upload_id,
        };
        let bar = progress_bar(size, "sending");
        let uploaded = client.upload(&spec, &mut file, |n| bar.set_position(n)).await;
        bar.finish();
        let media = match uploaded {
            Ok(media) => media,
            Err(e) => {
                if let Some(id) = &e.upload_id {
                    std::fs::create_dir_all(note.parent().expect("a parent"))?;
                    std::fs::write(&note, format!("{} {id}\n", conv.conversation_id))?;
                    if !matches!(e.error, ClientError::Server { .. }) {
                        anyhow::bail!("{}: run the same command again to go on where it stopped", e.error);
                    }
                }
                let _ = std::fs::remove_file(&note);
                return Err(e.error.into());
            }
        };
        let _ = std::fs::remove_file(&note);
        let id = uuid::Uuid::new_v4().to_string();
        let sent = client.send_media(&conv.conversation_id, &id, &media.media_id, caption).await?;
        println!("sent #{} to {}: {}", sent.seq, title(&conv, &self.me()), media_line(&media));
        client.close().await;
        Ok(())
    }

    async fn download(&mut self, target: &str, seq: u64, output: Option<PathBuf>) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let conv = resolve(&client, target, Reach::Former, &self.me()).await?;
        let page = client
            .history(GetHistory {
                conversation_id: conv.conversation_id.clone(),
                after_seq: seq.saturating_sub(1),
                limit: 1,
                ..Default::default()
            })
            .await?;
        if conv.e2ee {
            let Some(message) = page.messages.first().filter(|m| m.seq == seq) else {
                anyhow::bail!("{} has no message #{seq} (see `natter history`)", title(&conv, &self.me()));
            };
            let device = self.mls_device(&client).await?;
            device.catch_up(&client, &conv.conversation_id).await?;
            let crate::e2ee::Opened::File { file, .. } = device.open_message(message)? else {
                anyhow::bail!("#{seq} in {} is not a file", title(&conv, &self.me()));
            };
            let bytes = device.fetch_file(&client, &file).await?;
            let output = match output {
                Some(path) => path,
                None => PathBuf::from(
                    Path::new(&file.file_name).file_name().context("the file has no usable name: use -o")?,
                ),
            };
            std::fs::write(&output, &bytes).with_context(|| format!("cannot write {}", output.display()))?;
            println!("saved {} ({}, decrypted and checked)", output.display(), human_size(bytes.len() as u64));
            client.close().await;
            return Ok(());
        }
        let media = match page.messages.first().filter(|m| m.seq == seq).and_then(|m| m.content.clone()?.body) {
            Some(proto::content::Body::Media(m)) => m,
            Some(_) => anyhow::bail!("#{seq} in {} is not a file", title(&conv, &self.me())),
            None => anyhow::bail!("{} has no message #{seq} (see `natter history`)", title(&conv, &self.me())),
        };
        let output = match output {
            Some(path) => path,
            // Only the name's last part, whatever the sender called it.
            None => {
                PathBuf::from(Path::new(&media.file_name).file_name().context("the file has no usable name: use -o")?)
            }
        };
        let partial = PathBuf::from(format!("{}.part", output.display()));
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&partial)
            .await
            .with_context(|| format!("cannot write {}", partial.display()))?;
        let have = file.metadata().await?.len().min(media.size);
        let bar = progress_bar(media.size, "receiving");
        bar.set_position(have);
        if have < media.size {
            client.download(&media.media_id, have, 0, &mut file, |n| bar.set_position(have + n)).await?;
        }
        bar.finish();
        file.sync_all().await?;
        drop(file);
        let (sha256, size) = crate::transfer::digest(&mut tokio::fs::File::open(&partial).await?).await?;
        if sha256.as_slice() != media.sha256.as_slice() || size != media.size {
            let _ = std::fs::remove_file(&partial);
            anyhow::bail!("the saved bytes are not the file's (SHA-256 differs): removed; run the command again");
        }
        std::fs::rename(&partial, &output)?;
        println!("saved {} ({})", output.display(), media_line(&media));
        client.close().await;
        Ok(())
    }

    fn me(&self) -> String {
        self.profile.email.clone().unwrap_or_default()
    }

    async fn history(&mut self, target: &str, limit: u32, e2ee: bool) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let conv = if e2ee && target.contains('@') {
            client.open_direct_with(target, true).await?
        } else {
            resolve(&client, target, Reach::Former, &self.me()).await?
        };
        let device = if conv.e2ee {
            let device = self.mls_device(&client).await?;
            device.catch_up(&client, &conv.conversation_id).await?;
            Some(device)
        } else {
            None
        };
        let page = client
            .history(GetHistory { conversation_id: conv.conversation_id.clone(), limit, ..Default::default() })
            .await?;
        for m in &page.messages {
            match &device {
                Some(device) => {
                    if let Some(m) = decrypted(device, m) {
                        println!("{}", format_message(&m));
                    }
                }
                None => println!("{}", format_message(m)),
            }
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

    async fn search(&mut self, text: &str, within: Option<&str>, from: Option<&str>, limit: u32) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let me = self.me();
        let conversation_id = match within {
            Some(target) => resolve(&client, target, Reach::Former, &me).await?.conversation_id,
            None => String::new(),
        };
        let listed = client.conversations(100).await?;
        let titles: HashMap<String, String> =
            listed.iter().map(|c| (c.conversation_id.clone(), title(c, &me))).collect();
        let mut cursor = String::new();
        let mut shown = 0;
        let mut retries = 0;
        while shown < limit {
            let req = proto::Search {
                query: text.into(),
                conversation_id: conversation_id.clone(),
                from_email: from.unwrap_or_default().into(),
                limit: (limit - shown).min(50),
                cursor: cursor.clone(),
                ..Default::default()
            };
            let page = match client.search(req).await {
                // The server is still building its index: wait as it asks, a few times.
                Err(ClientError::Server { code: natter_proto::ErrorCode::UNAVAILABLE, retry_after_ms, .. })
                    if retry_after_ms > 0 && retries < 5 =>
                {
                    retries += 1;
                    eprintln!("(the server is still indexing; retrying in {retry_after_ms} ms)");
                    tokio::time::sleep(std::time::Duration::from_millis(retry_after_ms.into())).await;
                    continue;
                }
                other => other?,
            };
            for g in &page.groups {
                let name = match (titles.get(&g.conversation_id), g.name.as_str()) {
                    (_, name) if !name.is_empty() => format!("'{name}'"),
                    (Some(t), _) => t.clone(),
                    (None, _) => g.conversation_id.clone(),
                };
                println!("{name}");
                for h in &g.hits {
                    let who = if h.sender_email.is_empty() { &h.sender_name } else { &h.sender_email };
                    println!("  [{}] #{} {who}: {}", clock(h.at_ms), h.seq, marked(&h.snippet, &h.highlights));
                    shown += 1;
                }
            }
            if page.next_cursor.is_empty() {
                break;
            }
            cursor = page.next_cursor;
        }
        // Encrypted conversations: this device's own index of what it decrypted.
        let encrypted: HashMap<String, String> =
            listed.iter().filter(|c| c.e2ee).map(|c| (c.conversation_id.clone(), title(c, &me))).collect();
        // Senders by user id, for the device's hits (which know only ids).
        let mut people: HashMap<&str, &str> = HashMap::new();
        for m in listed.iter().flat_map(|c| c.members.iter()) {
            people.insert(&m.user_id, if m.email.is_empty() { &m.display_name } else { &m.email });
        }
        if !encrypted.is_empty() && shown < limit {
            let device = self.mls_device(&client).await?;
            for id in encrypted.keys() {
                device.catch_up(&client, id).await?;
            }
            let within = (!conversation_id.is_empty()).then_some(conversation_id.as_str());
            let mut by_conversation: Vec<(String, Vec<crate::e2ee::LocalHit>)> = Vec::new();
            for hit in device.search_local(text, within, limit - shown)? {
                match by_conversation.iter_mut().find(|(c, _)| *c == hit.conversation_id) {
                    Some((_, hits)) => hits.push(hit),
                    None => by_conversation.push((hit.conversation_id.clone(), vec![hit])),
                }
            }
            for (conv, hits) in by_conversation {
                println!("{} (end-to-end encrypted; found on this device)", encrypted.get(&conv).unwrap_or(&conv));
                for h in hits {
                    let who = people.get(h.sender_user_id.as_str()).copied().unwrap_or(&h.sender_user_id);
                    println!("  #{} {who}: {}", h.seq, h.snippet);
                    shown += 1;
                }
            }
        }
        if shown == 0 {
            println!("(nothing found for {text:?})");
        }
        client.close().await;
        Ok(())
    }

    async fn find(&mut self, prefix: &str) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let found = client.search_directory(prefix, 20).await?;
        for c in &found.conversations {
            let gone = if c.active { "" } else { " (left)" };
            println!("group '{}'{gone}  {}", c.name, c.conversation_id);
        }
        for p in &found.people {
            let email = if p.email.is_empty() { "(no email)" } else { &p.email };
            println!("{} <{email}>", p.display_name);
        }
        if found.conversations.is_empty() && found.people.is_empty() {
            println!("(nobody and no group found for {prefix:?})");
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

    async fn push(&mut self, command: PushCommand) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        match command {
            PushCommand::Register { endpoint, p256dh, auth } => {
                let (p256dh, auth) = (base64url("p256dh", &p256dh)?, base64url("auth", &auth)?);
                client.register_push(&endpoint, &p256dh, &auth).await?;
                println!("notifications for this device go to {endpoint}");
            }
            PushCommand::Unregister => {
                client.unregister_push().await?;
                println!("no notifications for this device");
            }
            PushCommand::Status => {
                use base64::Engine as _;
                let c = client.push_config().await?;
                let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&c.application_server_key);
                println!("application server key: {key}");
                if c.registered {
                    println!("this device: {}", c.endpoint);
                } else {
                    println!("this device: no subscription (`natter push register`)");
                }
                println!("message text in notifications: {}", if c.show_text { "on" } else { "off" });
                for m in &c.muted {
                    let until = if m.until_ms == 0 {
                        "until unmuted".to_owned()
                    } else {
                        format!("until {}", date_time(m.until_ms))
                    };
                    println!("muted {}: {until}", m.conversation_id);
                }
            }
            PushCommand::Previews { state } => {
                client.set_push_previews(state == OnOff::On).await?;
                println!("message text in notifications: {}", if state == OnOff::On { "on" } else { "off" });
            }
        }
        client.close().await;
        Ok(())
    }

    async fn mute(&mut self, target: &str, span: Option<Duration>) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let conv = resolve(&client, target, Reach::Former, &self.me()).await?;
        let until = match span {
            None => 0,
            Some(span) => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
                (now + span).as_millis() as u64
            }
        };
        client.mute(&conv.conversation_id, until).await?;
        match span {
            None => println!("{} muted until `natter unmute`", title(&conv, &self.me())),
            Some(_) => println!("{} muted until {}", title(&conv, &self.me()), date_time(until)),
        }
        client.close().await;
        Ok(())
    }

    async fn unmute(&mut self, target: &str) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let conv = resolve(&client, target, Reach::Former, &self.me()).await?;
        client.unmute(&conv.conversation_id).await?;
        println!("{} unmuted", title(&conv, &self.me()));
        client.close().await;
        Ok(())
    }

    async fn retention(&mut self, target: &str, keep: Option<&str>) -> anyhow::Result<()> {
        let client = self.connect_signed_in().await?;
        let conv = resolve(&client, target, Reach::Member, &self.me()).await?;
        let r = match keep {
            Some("server") => client.set_retention(&conv.conversation_id, 0).await?,
            Some(keep) => {
                let keep = parse_span(keep).map_err(|e| anyhow::anyhow!("--keep {e}, or `server`"))?;
                client.set_retention(&conv.conversation_id, keep.as_secs()).await?
            }
            None => client.retention(&conv.conversation_id).await?,
        };
        let shown = |secs: u64| if secs == 0 { "for ever".to_owned() } else { span(secs) };
        println!(
            "{} keeps messages {} (its own limit: {}; the server's: {})",
            title(&conv, &self.me()),
            shown(r.effective_max_age_secs),
            if r.max_age_secs == 0 { "none".to_owned() } else { span(r.max_age_secs) },
            if r.deployment_max_age_secs == 0 { "none".to_owned() } else { span(r.deployment_max_age_secs) },
        );
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
            GroupCommand::Create { name, emails, e2ee } => {
                let emails: Vec<&str> = emails.iter().map(String::as_str).collect();
                let group = client.create_group_with(&name, &emails, e2ee).await?;
                if e2ee {
                    self.mls_device(&client).await?.enter(&client, &group).await?;
                }
                Some(group)
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
            // This device's MLS identity: registered, its KeyPackages topped up.
            let device = self.mls_device(&client).await?;
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
                let item = match item {
                    FeedItem::KeyPackageStock(s) if s.device_id == device.device_id() => {
                        device.top_up(&client).await?;
                        continue;
                    }
                    FeedItem::Message { cursor, message } if is_mls(&message) => match decrypted(&device, &message) {
                        Some(message) => FeedItem::Message { cursor, message },
                        None => {
                            self.profile.cursor = Some(cursor);
                            self.profile.save(&self.dir)?;
                            continue;
                        }
                    },
                    other => other,
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

/// What the user was doing with a Google or GitHub account, for what to tell
/// them when it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdentityAction {
    Login,
    Link,
    Unlink,
}

impl IdentityAction {
    fn command(self) -> &'static str {
        match self {
            IdentityAction::Login => "login",
            IdentityAction::Link => "link",
            IdentityAction::Unlink => "unlink",
        }
    }
}

/// `--google`, `--github`.
fn provider_flag(provider: proto::OAuthProvider) -> &'static str {
    match provider {
        proto::OAuthProvider::Github => "--github",
        _ => "--google",
    }
}

/// natterd's `OAuthConfig` for `provider`; natterd without it configured is
/// told as such.
async fn oauth_config(client: &Client, provider: proto::OAuthProvider) -> anyhow::Result<proto::OAuthConfig> {
    match client.oauth_config(provider).await {
        Ok(config) => Ok(config),
        Err(e) if e.code() == Some(natter_proto::ErrorCode::NOT_FOUND) => {
            let name = oauth::provider_name(provider);
            bail!("natterd has no {name} sign-in configured: see README, Configuring {name}")
        }
        Err(e) => Err(e.into()),
    }
}

/// Sends the person to the provider's page and waits for the browser to
/// come back with the grant. The page's URL goes to standard error on a line
/// of its own (`open this page to sign in with Google: URL`), for when no
/// browser opens.
async fn browser_grant(
    config: &proto::OAuthConfig,
    timeout: Duration,
    action: IdentityAction,
) -> anyhow::Result<oauth::Grant> {
    let provider = config.provider();
    let (name, again) =
        (oauth::provider_name(provider), format!("natter {} {}", action.command(), provider_flag(provider)));
    let pending = oauth::begin(config).await.with_context(|| format!("starting the {name} sign-in"))?;
    {
        let mut err = std::io::stderr().lock();
        writeln!(err, "{}", sign_in_line(name, pending.url()))?;
        err.flush()?;
    }
    oauth::open_in_browser(pending.url());
    pending.wait(timeout).await.map_err(|e| match e {
        oauth::OAuthError::TimedOut => anyhow::anyhow!(
            "the browser did not come back from {name} within {}: run `{again}` again (--timeout SECONDS waits longer)",
            how_long(timeout)
        ),
        oauth::OAuthError::Denied { error, description } => {
            let why = if description.is_empty() { error } else { format!("{error}: {description}") };
            anyhow::anyhow!("{name} did not sign you in ({why}); nothing changed")
        }
        oauth::OAuthError::StateMismatch => anyhow::anyhow!(
            "the browser came back from another sign-in than this one, so it was ignored: run `{again}` again and \
             finish it in the page it opens"
        ),
        oauth::OAuthError::NoCode => {
            anyhow::anyhow!("{name} sent the browser back without an authorization code: run `{again}` again")
        }
    })
}

/// The line that tells where to sign in.
fn sign_in_line(provider_name: &str, url: &str) -> String {
    format!("open this page to sign in with {provider_name}: {url}")
}

/// A clear next step for what can go wrong signing in with, linking or
/// unlinking a Google or GitHub account; other errors pass unchanged (a
/// `MFA_REQUIRED` stays a [`ClientError`]).
fn identity_error(e: ClientError, provider: proto::OAuthProvider, action: IdentityAction) -> anyhow::Error {
    use natter_proto::ErrorCode;
    let (name, flag) = (oauth::provider_name(provider), provider_flag(provider));
    let other = match provider {
        proto::OAuthProvider::Github => "--google",
        _ => "--github",
    };
    let message = match (e.code(), action) {
        (Some(ErrorCode::IDENTITY_NOT_LINKED), IdentityAction::Unlink) => {
            format!("no {name} account is linked to yours (`natter identities` lists them)")
        }
        (Some(ErrorCode::IDENTITY_NOT_LINKED), _) => {
            let email = email_in(&e).unwrap_or_else(|| format!("the email of your {name} account"));
            format!(
                "an account already uses {email}: sign in to it (`natter login`) and run `natter link {flag}`; from \
                 then on `natter login {flag}` signs in to it"
            )
        }
        (Some(ErrorCode::IDENTITY_TAKEN), _) => format!(
            "this {name} account is linked to another natter account: `natter login {flag}` signs in to that one, \
             and `natter unlink {flag}` there frees it"
        ),
        (Some(ErrorCode::LAST_SIGN_IN_METHOD), _) => format!(
            "{name} is the only way of signing in to this account, so it stays linked: first set a password \
             (`natter password reset`), add a phone number (`natter add-phone`) or link another account \
             (`natter link {other}`)"
        ),
        (Some(ErrorCode::OAUTH_REJECTED), _) => format!(
            "{name} did not confirm the sign-in (its code had expired or was used already, or its answer did not \
             check out): run `natter {} {flag}` again",
            action.command()
        ),
        _ => return e.into(),
    };
    anyhow::anyhow!(message)
}

/// An email address in natterd's error message, if it names one.
fn email_in(e: &ClientError) -> Option<String> {
    let ClientError::Server { message, .. } = e else { return None };
    message
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !(c.is_alphanumeric() || c == '@')))
        .find(|w| w.contains('@') && !w.starts_with('@') && !w.ends_with('@'))
        .map(str::to_owned)
}

/// `natter identities`: one linked account a line.
fn identities_table(identities: &[proto::LinkedIdentity]) -> String {
    let mut rows = vec![["PROVIDER", "EMAIL", "LINKED (UTC)"].map(str::to_owned).to_vec()];
    for i in identities {
        let provider = match i.provider() {
            proto::OAuthProvider::Google => "google".to_owned(),
            proto::OAuthProvider::Github => "github".to_owned(),
            proto::OAuthProvider::OauthProviderUnspecified => format!("provider {}", i.provider),
        };
        rows.push(vec![
            provider,
            if i.email.is_empty() { "-".into() } else { i.email.clone() },
            if i.linked_at_ms == 0 { "-".into() } else { utc_minute(i.linked_at_ms) },
        ]);
    }
    table(&rows)
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

/// Which answers a command reads from lines of standard input rather than
/// asking on the terminal (all of them when standard input is not a terminal).
#[derive(Debug, Clone, Copy, Default)]
struct FromStdin {
    /// Passwords, old and new.
    password: bool,
    /// Codes: mailed, from the authenticator app, or recovery codes.
    code: bool,
}

/// Where a command's answers come from: prompts on the terminal (passwords
/// hidden), or the lines of standard input in the order they are asked for. All
/// lines are read through one buffered reader, so none read ahead is lost.
struct Answers {
    stdin: std::io::StdinLock<'static>,
    terminal: bool,
    from_stdin: FromStdin,
}

impl Answers {
    fn new(from_stdin: FromStdin) -> Self {
        let stdin = std::io::stdin();
        let terminal = stdin.is_terminal();
        Self { stdin: stdin.lock(), terminal, from_stdin }
    }

    /// The next line of standard input, without its line end.
    fn line(&mut self, what: &str) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdin.read_line(&mut line)? == 0 {
            bail!("standard input ended before the {what}");
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    fn passwords_asked(&self) -> bool {
        self.terminal && !self.from_stdin.password
    }

    fn codes_asked(&self) -> bool {
        self.terminal && !self.from_stdin.code
    }

    /// A password, hidden as it is typed.
    fn password(&mut self, prompt: &str) -> anyhow::Result<String> {
        let password =
            if self.passwords_asked() { rpassword::prompt_password(prompt)? } else { self.line("password")? };
        non_empty(password)
    }

    /// A new password: asked twice on the terminal, one line of standard input otherwise.
    fn new_password(&mut self, prompt: &str) -> anyhow::Result<String> {
        if self.passwords_asked() {
            choose_password(prompt, |prompt| rpassword::prompt_password(prompt))
        } else {
            non_empty(self.line("new password")?)
        }
    }

    /// A code, shown as it is typed (the prompt goes to standard error, so that
    /// standard output stays the command's result).
    fn code(&mut self, prompt: &str) -> anyhow::Result<String> {
        let code = if self.codes_asked() {
            eprint!("{prompt}");
            std::io::stderr().flush()?;
            self.line("code")?
        } else {
            self.line("code")?
        };
        let code = code.trim();
        if code.is_empty() {
            bail!("no code given");
        }
        Ok(code.to_owned())
    }

    /// Whether a code that failed with `e` on try number `tries` is asked for
    /// again: on the terminal, when it was wrong or mistyped, up to [`CODE_TRIES`].
    fn asks_again(&self, e: &ClientError, tries: u32) -> bool {
        use natter_proto::ErrorCode;
        self.codes_asked()
            && tries < CODE_TRIES
            && e.code().is_some_and(|c| c == ErrorCode::CODE_INVALID || c == ErrorCode::INVALID_ARGUMENT)
    }
}

/// How often a command asks for a code on the terminal before it gives up
/// (natterd limits the tries itself too).
const CODE_TRIES: u32 = 3;

const SECOND_FACTOR_PROMPT: &str = "code from your authenticator app (or a recovery code): ";

const RECOVERY_CODES_NOTE: &str = "store these recovery codes now (a password manager, or on paper): they are \
                                   shown once. Each signs you in once without the app.";

/// Asks for a code and tries it with `attempt`; a wrong one is asked again on the terminal.
async fn with_code<T, F>(answers: &mut Answers, prompt: &str, mut attempt: impl FnMut(String) -> F) -> anyhow::Result<T>
where
    F: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut tries = 1;
    loop {
        let code = answers.code(prompt)?;
        match attempt(code).await {
            Err(e) if answers.asks_again(&e, tries) => {
                eprintln!("natter: {e}");
                tries += 1;
            }
            result => return Ok(result?),
        }
    }
}

/// Six digits (spaces aside) are a code from the app; anything else is taken
/// for a recovery code (`xxxxx-xxxxx`).
fn is_totp_code(code: &str) -> bool {
    let digits: Vec<char> = code.chars().filter(|c| !c.is_whitespace()).collect();
    digits.len() == 6 && digits.iter().all(char::is_ascii_digit)
}

fn print_recovery_codes(codes: &[String]) {
    println!("{RECOVERY_CODES_NOTE}");
    for code in codes {
        println!("  {code}");
    }
}

/// `data` as a QR code for a terminal: Unicode half blocks, two modules per
/// character, with the quiet zone scanners need. Dark modules are the blocks;
/// with `ansi` they are drawn black on white whatever the terminal's colours
/// (light-on-dark themes would show the code inverted, which some scanners
/// cannot read).
fn qr_code(data: &str, ansi: bool) -> anyhow::Result<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(data.as_bytes()).context("making the QR code")?;
    let image =
        code.render::<Dense1x2>().dark_color(Dense1x2::Dark).light_color(Dense1x2::Light).quiet_zone(true).build();
    if !ansi {
        return Ok(image);
    }
    let lines: Vec<String> = image.lines().map(|line| format!("\x1b[30;107m{line}\x1b[0m")).collect();
    Ok(lines.join("\n"))
}

/// A base32 secret in groups of four, for typing into an app.
fn grouped(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    chars.chunks(4).map(|group| group.iter().collect::<String>()).collect::<Vec<_>>().join(" ")
}

/// "5 minutes", "90 seconds".
fn how_long(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        60 => "1 minute".into(),
        s if s % 60 == 0 => format!("{} minutes", s / 60),
        1 => "1 second".into(),
        s => format!("{s} seconds"),
    }
}

/// "1 other device", "3 other devices".
fn devices(n: u32, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn device_label(s: &proto::SessionInfo) -> String {
    if s.device_name.is_empty() {
        "(unnamed device)".into()
    } else {
        format!("'{}'", s.device_name)
    }
}

/// The shortest start of an id `natter sessions revoke` takes.
const MIN_ID_PREFIX: usize = 8;

/// The session `id` names: the whole id, or a start of it of at least
/// [`MIN_ID_PREFIX`] characters that only one session's id has.
fn find_session<'a>(sessions: &'a [proto::SessionInfo], id: &str) -> anyhow::Result<&'a proto::SessionInfo> {
    let id = id.trim().to_ascii_lowercase();
    if let Some(exact) = sessions.iter().find(|s| s.session_id.eq_ignore_ascii_case(&id)) {
        return Ok(exact);
    }
    if id.chars().count() < MIN_ID_PREFIX {
        bail!("give at least {MIN_ID_PREFIX} characters of the device's id (`natter sessions` lists them)");
    }
    let found: Vec<&proto::SessionInfo> =
        sessions.iter().filter(|s| s.session_id.to_ascii_lowercase().starts_with(&id)).collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => bail!("none of your devices has the id {id:?} (`natter sessions` lists them)"),
        several => {
            let ids: Vec<&str> = several.iter().map(|s| s.session_id.as_str()).collect();
            bail!("several of your devices have an id starting {id:?}: {}", ids.join(", "))
        }
    }
}

/// `natter sessions`: one device a line, `*` marking this one.
fn sessions_table(sessions: &[proto::SessionInfo]) -> String {
    let when = |ms: u64| if ms == 0 { "-".to_owned() } else { utc_minute(ms) };
    let mut rows = vec![["", "ID", "DEVICE", "METHOD", "SIGNED IN (UTC)", "LAST USED (UTC)", "LAST ADDRESS"]
        .map(str::to_owned)
        .to_vec()];
    for s in sessions {
        rows.push(vec![
            if s.current { "*".into() } else { String::new() },
            s.session_id.clone(),
            if s.device_name.is_empty() { "-".into() } else { s.device_name.clone() },
            if s.method.is_empty() { "password".into() } else { s.method.clone() },
            when(s.created_at_ms),
            when(s.last_used_at_ms),
            if s.last_address.is_empty() { "-".into() } else { s.last_address.clone() },
        ]);
    }
    let mut out = table(&rows);
    if sessions.iter().any(|s| s.current) {
        out.push_str("* this device\n");
    }
    out
}

/// Rows as columns padded to their widest cell, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, &w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `YYYY-MM-DD HH:MM` UTC of a Unix time in milliseconds.
fn utc_minute(ms: u64) -> String {
    let secs = ms / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}", s / 3600, (s / 60) % 60)
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn non_empty(password: String) -> anyhow::Result<String> {
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(password)
}

/// A new password, asked twice (`ask` prompts on the terminal): a typo would
/// otherwise lock the user out of their account.
fn choose_password(prompt: &str, mut ask: impl FnMut(&str) -> std::io::Result<String>) -> anyhow::Result<String> {
    let first = non_empty(ask(prompt)?)?;
    let again = ask("the same password again: ")?;
    if first != again {
        bail!("the two passwords differ; nothing was changed, please try again");
    }
    Ok(first)
}

fn device_name(explicit: Option<String>) -> String {
    explicit
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "natter-cli".into())
}

/// A file's type from its bytes (the name does not count), as natterd
/// would see it: what the recipients are told inside the MLS message.
fn infer_type(bytes: &[u8]) -> &'static str {
    infer::get(bytes).map_or("application/octet-stream", |t| t.mime_type())
}

fn is_mls(m: &proto::Message) -> bool {
    matches!(
        m.content.as_ref().and_then(|c| c.body.as_ref()),
        Some(proto::content::Body::Mls(_) | proto::content::Body::MlsCommit(_))
    )
}

/// An encrypted conversation's message as people see it: its text decrypted
/// (or what it is when it has none); `None` for a commit (group bookkeeping).
fn decrypted(device: &crate::e2ee::MlsDevice, m: &proto::Message) -> Option<proto::Message> {
    if !is_mls(m) {
        return Some(m.clone());
    }
    let text = match device.open_message(m) {
        Ok(crate::e2ee::Opened::Text { text, .. }) => format!("[e2ee] {text}"),
        Ok(crate::e2ee::Opened::File { file, .. }) => {
            let line = format!("[file {}, {}, {}]", file.file_name, file.mime_type, human_size(file.size));
            if file.caption.is_empty() {
                format!("[e2ee] {line}")
            } else {
                format!("[e2ee] {line} {}", file.caption)
            }
        }
        Ok(crate::e2ee::Opened::NotForMe)
            if matches!(m.content.as_ref().and_then(|c| c.body.as_ref()), Some(proto::content::Body::Mls(_))) =>
        {
            "[e2ee] (sent before this device joined: it has no keys for it)".into()
        }
        Ok(_) => return None,
        Err(e) => format!("[e2ee] (could not be decrypted: {e})"),
    };
    let mut m = m.clone();
    m.content = Some(proto::Content { body: Some(proto::content::Body::Text(proto::Text { body: text })) });
    Some(m)
}

fn text_of(m: &proto::Message) -> std::borrow::Cow<'_, str> {
    match m.content.as_ref().and_then(|c| c.body.as_ref()) {
        Some(proto::content::Body::Text(t)) => t.body.as_str().into(),
        Some(proto::content::Body::Media(media)) => media_line(media).into(),
        Some(proto::content::Body::Mls(_)) => "(end-to-end encrypted)".into(),
        Some(proto::content::Body::MlsCommit(_)) => "(encryption keys changed)".into(),
        Some(proto::content::Body::Erased(_)) => "(erased: the account was deleted)".into(),
        None => "(unsupported content)".into(),
    }
}

/// A media message for people: `[file cat.png, image/png, 1.2 MiB, 640×480] caption`,
/// `[file clip.mp4, video/mp4, 31.0 MiB, 1:33]`.
fn media_line(m: &proto::Media) -> String {
    let mut out = format!("[file {}, {}, {}", m.file_name, m.mime_type, human_size(m.size));
    if m.width > 0 && m.height > 0 {
        out.push_str(&format!(", {}×{}", m.width, m.height));
    }
    if m.duration_ms > 0 {
        let s = m.duration_ms / 1000;
        out.push_str(&format!(", {}:{:02}", s / 60, s % 60));
    }
    out.push(']');
    if !m.caption.is_empty() {
        out.push(' ');
        out.push_str(&m.caption);
    }
    out
}

/// A progress bar on a terminal; plain lines (one per 10 %) otherwise.
enum Progress {
    Bar(indicatif::ProgressBar),
    Lines { what: &'static str, len: u64, next_tenth: std::sync::atomic::AtomicU64 },
}

impl Progress {
    fn set_position(&self, n: u64) {
        match self {
            Progress::Bar(bar) => bar.set_position(n),
            Progress::Lines { what, len, next_tenth } => {
                let tenth = if *len == 0 { 10 } else { n.saturating_mul(10) / len };
                if tenth >= next_tenth.load(std::sync::atomic::Ordering::Relaxed) {
                    next_tenth.store(tenth + 1, std::sync::atomic::Ordering::Relaxed);
                    eprintln!("{what}: {}% ({} of {})", tenth * 10, human_size(n), human_size(*len));
                }
            }
        }
    }

    fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

fn progress_bar(len: u64, what: &'static str) -> Progress {
    if !std::io::stderr().is_terminal() {
        return Progress::Lines { what, len, next_tenth: std::sync::atomic::AtomicU64::new(0) };
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what);
    Progress::Bar(bar)
}

/// 1023 B, 1.5 KiB, 12.0 MiB, …
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `YYYY-MM-DD HH:MM UTC` of a Unix time in milliseconds (days to the civil
/// date as in Howard Hinnant's `civil_from_days`).
fn date_time(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let s = (ms / 1000) % 86_400;
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", s / 3600, (s / 60) % 60)
}

/// `HH:MM:SS` UTC of a Unix time in milliseconds.
fn clock(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// A snippet with its matches in brackets.
fn marked(snippet: &str, highlights: &[proto::Highlight]) -> String {
    let mut out = String::with_capacity(snippet.len() + 2 * highlights.len());
    let mut at = 0;
    for h in highlights {
        let (start, end) = (h.start as usize, h.end as usize);
        match (snippet.get(at..start), snippet.get(start..end)) {
            (Some(before), Some(word)) => {
                out.push_str(before);
                out.push('[');
                out.push_str(word);
                out.push(']');
                at = end;
            }
            // A range that is not in the snippet (a misbehaving server): ignored.
            _ => continue,
        }
    }
    out.push_str(snippet.get(at..).unwrap_or_default());
    out
}

fn format_message(m: &proto::Message) -> String {
    format!("[{}] #{} {}: {}", clock(m.sent_at_ms), m.seq, sender(m), text_of(m))
}

/// Who sent a message, for people: the email, or the name of a sender
/// without one (an account made by phone).
fn sender(m: &proto::Message) -> &str {
    match (m.sender_email.as_str(), m.sender_name.as_str()) {
        ("", "") => "(someone)",
        ("", name) => name,
        (email, _) => email,
    }
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
        if user_id.is_empty() || (email.is_empty() && display_name.is_empty()) {
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
                self.person(&message.sender_user_id, &message.sender_email, &message.sender_name);
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
                    Some(Change::Renamed(_) | Change::Deleted(_)) | None => {}
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
            FeedItem::KeyPackageStock(_) => return,
            FeedItem::CaughtUp { .. } => return,
            FeedItem::AccountErased { .. } => return,
            FeedItem::RetentionChanged { change, .. } => &change.conversation_id,
            FeedItem::MessagesExpired { expired, .. } => &expired.conversation_id,
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
            Some(Change::Deleted(_)) => {
                c.members.clear();
                c.active = false;
            }
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

/// A key as people compare it: hex in groups of four.
fn key_text(key: &[u8]) -> String {
    hex::encode(key).as_bytes().chunks(8).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(" ")
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
            Some(format!("[{}] {place}#{} {}: {}", clock(m.sent_at_ms), m.seq, sender(m), text_of(m)))
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
                Change::Deleted(_) => format!("the group was deleted{by}; its messages are erased"),
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
        FeedItem::AccountErased { user_id, .. } => {
            Some(format!("* {} deleted their account; their messages are erased", names.who(user_id)))
        }
        FeedItem::RetentionChanged { change: c, .. } => Some(format!(
            "* {} set {} to keep messages {}",
            names.who(&c.actor_user_id),
            names.title(&c.conversation_id),
            if c.max_age_secs == 0 { "as the server does".to_owned() } else { format!("for {}", span(c.max_age_secs)) }
        )),
        FeedItem::MessagesExpired { expired: e, .. } => Some(format!(
            "* messages in {} sent before {} expired",
            names.title(&e.conversation_id),
            clock(e.before_ms)
        )),
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
        // `listen` tops the stock up itself; nothing to show.
        FeedItem::CaughtUp { .. } | FeedItem::KeyPackageStock(_) => None,
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
            "sender_name": message.sender_name,
            "sender_user_id": message.sender_user_id,
            "client_msg_id": message.client_msg_id,
            "text": text_of(message).strip_prefix("[e2ee] ").map_or_else(|| text_of(message).into_owned(), str::to_owned),
            "e2ee": names.known(&message.conversation_id).is_some_and(|c| c.e2ee),
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
                Change::Deleted(_) => ("deleted", serde_json::Value::Null),
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
        FeedItem::RetentionChanged { cursor, change } => serde_json::json!({
            "type": "retention_changed", "cursor": cursor, "conversation_id": change.conversation_id,
            "actor_user_id": change.actor_user_id, "max_age_secs": change.max_age_secs,
        }),
        FeedItem::MessagesExpired { cursor, expired } => serde_json::json!({
            "type": "messages_expired", "cursor": cursor, "conversation_id": expired.conversation_id,
            "before_ms": expired.before_ms,
        }),
        FeedItem::AccountErased { cursor, user_id } => serde_json::json!({
            "type": "account_erased", "cursor": cursor, "user_id": user_id, "email": names.email(user_id),
        }),
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
        FeedItem::KeyPackageStock(s) => serde_json::json!({
            "type": "key_package_stock", "device_id": s.device_id, "remaining": s.remaining,
            "has_last_resort": s.has_last_resort, "low_water": s.low_water,
        }),
    };
    Some(value.to_string())
}

/// A span for people: `30d`, `36h`, `90m`, `45s`.
fn span(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn spans_dates_and_keys_read_as_people_write_them() {
        assert_eq!(parse_span("8h"), Ok(Duration::from_secs(8 * 3600)));
        assert_eq!(parse_span("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_span("2d"), Ok(Duration::from_secs(2 * 86_400)));
        for bad in ["", "8", "h", "0m", "8w", "-1h", "99999999999999999999d"] {
            assert!(parse_span(bad).is_err(), "{bad:?}");
        }
        assert_eq!(date_time(0), "1970-01-01 00:00 UTC");
        assert_eq!(date_time(1_796_112_000_000), "2026-12-01 08:00 UTC");
        assert_eq!(date_time(951_782_400_000), "2000-02-29 00:00 UTC");
        assert_eq!(base64url("auth", "AAECAwQFBgcICQoLDA0ODw==").unwrap(), (0u8..16).collect::<Vec<_>>());
        assert_eq!(base64url("auth", " AAECAwQFBgcICQoLDA0ODw ").unwrap().len(), 16);
        assert!(base64url("auth", "not base64!").is_err());
    }

    #[test]
    fn a_media_line_says_what_is_known_of_the_file() {
        let clip = proto::Media {
            file_name: "clip.mp4".into(),
            mime_type: "video/mp4".into(),
            size: 31 * 1024 * 1024,
            duration_ms: 93_500,
            caption: "the goal".into(),
            ..proto::Media::default()
        };
        assert_eq!(media_line(&clip), "[file clip.mp4, video/mp4, 31.0 MiB, 1:33] the goal");
        let photo = proto::Media {
            file_name: "cat.png".into(),
            mime_type: "image/png".into(),
            size: 2048,
            width: 640,
            height: 480,
            ..proto::Media::default()
        };
        assert_eq!(media_line(&photo), "[file cat.png, image/png, 2.0 KiB, 640×480]");
    }

    /// Every subcommand and argument (`natter help …`) says what it is for.
    #[test]
    fn push_keys_may_start_with_a_hyphen_as_base64url_allows() {
        let args = Args::try_parse_from([
            "natter",
            "push",
            "register",
            "--endpoint",
            "https://push.example.net/x",
            "--p256dh",
            "-BNcRdreALRFXTkOO",
            "--auth",
            "-LItJI5svbpez7KI4CCXg",
        ])
        .unwrap();
        let Command::Push(PushCommand::Register { p256dh, auth, .. }) = args.command else {
            panic!("{:?}", args.command)
        };
        assert_eq!((p256dh.as_str(), auth.as_str()), ("-BNcRdreALRFXTkOO", "-LItJI5svbpez7KI4CCXg"));
    }

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
    fn sign_in_methods_exclude_each_other() {
        let parse = |args: &[&str]| Args::try_parse_from([&["natter"], args].concat());
        let Command::Login { google, github, timeout, .. } =
            parse(&["login", "--google", "--timeout", "60"]).unwrap().command
        else {
            panic!("login")
        };
        assert!(google && !github && timeout == Some(Duration::from_secs(60)));
        for refused in [
            &["login", "--google", "--phone", "+4915123456789"][..],
            &["login", "--github", "--email", "a@example.org"],
            &["login", "--google", "--github"],
            &["login", "--timeout", "60"],
            &["login", "--name", "Alice"],
            &["link"],
            &["link", "--google", "--github"],
            &["unlink"],
        ] {
            assert!(parse(refused).is_err(), "{refused:?} should be refused");
        }
        let Command::Login { phone, name, .. } =
            parse(&["login", "--phone", "+4915123456789", "--name", "Alice"]).unwrap().command
        else {
            panic!("login")
        };
        assert_eq!((phone.as_deref(), name.as_deref()), (Some("+4915123456789"), Some("Alice")));
        let Command::Unlink { provider } = parse(&["unlink", "--github"]).unwrap().command else { panic!("unlink") };
        assert_eq!(provider.provider(), proto::OAuthProvider::Github);
    }

    #[test]
    fn the_sign_in_line_is_the_url_alone_after_its_prefix() {
        let line = sign_in_line("Google", "https://accounts.example.com/auth?a=1&b=2");
        assert_eq!(line, "open this page to sign in with Google: https://accounts.example.com/auth?a=1&b=2");
    }

    #[test]
    fn identity_errors_say_what_to_do() {
        use natter_proto::ErrorCode;
        let server = |code, message: &str| ClientError::Server { code, message: message.into(), retry_after_ms: 0 };
        let google = proto::OAuthProvider::Google;
        let e = identity_error(
            server(ErrorCode::IDENTITY_NOT_LINKED, "an account already uses alice@example.com; sign in and link"),
            google,
            IdentityAction::Login,
        );
        assert_eq!(
            e.to_string(),
            "an account already uses alice@example.com: sign in to it (`natter login`) and run `natter link --google`; \
             from then on `natter login --google` signs in to it"
        );
        let e = identity_error(server(ErrorCode::IDENTITY_NOT_LINKED, "no"), google, IdentityAction::Login);
        assert!(e.to_string().starts_with("an account already uses the email of your Google account: "), "{e}");
        let e = identity_error(
            server(ErrorCode::IDENTITY_TAKEN, "taken"),
            proto::OAuthProvider::Github,
            IdentityAction::Link,
        );
        assert!(
            e.to_string().contains("GitHub account is linked to another") && e.to_string().contains("--github"),
            "{e}"
        );
        let e = identity_error(server(ErrorCode::LAST_SIGN_IN_METHOD, "last"), google, IdentityAction::Unlink);
        assert!(e.to_string().contains("natter link --github") && e.to_string().contains("add-phone"), "{e}");
        let e = identity_error(server(ErrorCode::OAUTH_REJECTED, "bad"), google, IdentityAction::Link);
        assert!(e.to_string().ends_with("run `natter link --google` again"), "{e}");
        let mfa = ClientError::MfaRequired { challenge: "c".into(), message: "m".into() };
        let e = identity_error(mfa, google, IdentityAction::Login);
        assert!(matches!(e.downcast_ref::<ClientError>(), Some(ClientError::MfaRequired { .. })), "MFA passes through");
    }

    #[test]
    fn the_identities_table_names_provider_email_and_date() {
        let table = identities_table(&[
            proto::LinkedIdentity {
                provider: proto::OAuthProvider::Google as i32,
                email: "alice@example.com".into(),
                linked_at_ms: 1_700_000_000_000,
            },
            proto::LinkedIdentity {
                provider: proto::OAuthProvider::Github as i32,
                email: String::new(),
                linked_at_ms: 0,
            },
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "PROVIDER  EMAIL              LINKED (UTC)");
        assert_eq!(lines[1], "google    alice@example.com  2023-11-14 22:13");
        assert_eq!(lines[2], "github    -                  -");
    }

    #[test]
    fn a_new_password_is_asked_twice_and_must_match() {
        let answers = |a: &'static [&'static str]| {
            let mut it = a.iter();
            move |_: &str| Ok(it.next().expect("asked too often").to_string())
        };
        let choose = |a| choose_password("choose a password: ", answers(a));
        assert_eq!(choose(&["a fine password", "a fine password"]).unwrap(), "a fine password");
        let e = choose(&["a fine password", "a fine passwort"]).unwrap_err();
        assert!(e.to_string().contains("differ"), "{e}");
        assert!(choose(&[""]).is_err(), "empty");
    }

    #[test]
    fn the_qr_code_is_dark_modules_on_light_with_a_quiet_zone() {
        let uri = "otpauth://totp/natter:alice%40example.org?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=natter";
        let code = qrcode::QrCode::new(uri.as_bytes()).unwrap();
        let modules = code.width();
        let image = qr_code(uri, false).unwrap();
        // Back from half blocks to modules: the top and bottom half of each character.
        let mut rows: Vec<Vec<bool>> = Vec::new();
        for line in image.lines() {
            let (top, bottom): (Vec<bool>, Vec<bool>) = line
                .chars()
                .map(|c| match c {
                    ' ' => (false, false),
                    '\u{2580}' => (true, false),
                    '\u{2584}' => (false, true),
                    '\u{2588}' => (true, true),
                    other => panic!("not a half block: {other:?}"),
                })
                .unzip();
            rows.push(top);
            rows.push(bottom);
        }
        let quiet = 4;
        let side = modules + 2 * quiet;
        assert!(rows.iter().all(|r| r.len() == side), "every line is as wide as the code and its quiet zone");
        assert!(rows.len() == side || rows.len() == side + 1, "{} rows for {side}", rows.len());
        let colors = code.to_colors();
        for (y, row) in rows.iter().take(side).enumerate() {
            for (x, &dark) in row.iter().enumerate() {
                let inside = (quiet..quiet + modules).contains(&x) && (quiet..quiet + modules).contains(&y);
                let want = inside && colors[(y - quiet) * modules + x - quiet] == qrcode::Color::Dark;
                assert_eq!(dark, want, "module ({x}, {y})");
            }
        }
        // On a terminal: the same blocks, black on white.
        let shown = qr_code(uri, true).unwrap();
        assert!(shown.lines().all(|l| l.starts_with("\x1b[30;107m") && l.ends_with("\x1b[0m")), "{shown}");
        assert_eq!(shown.lines().count(), image.lines().count());
    }

    #[test]
    fn the_secret_is_shown_in_groups_of_four() {
        assert_eq!(grouped("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"), "JBSW Y3DP EHPK 3PXP JBSW Y3DP EHPK 3PXP");
        assert_eq!(grouped("ABCDEF"), "ABCD EF");
    }

    #[test]
    fn six_digits_are_an_app_code_and_anything_else_a_recovery_code() {
        assert!(is_totp_code("123456") && is_totp_code("123 456"));
        assert!(!is_totp_code("abcde-fghij") && !is_totp_code("12345") && !is_totp_code("1234567"));
        assert!(!is_totp_code("23456-72345"), "a recovery code of digits only is still ten characters");
    }

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(utc_minute(0), "1970-01-01 00:00");
        assert_eq!(utc_minute(951_782_400_000), "2000-02-29 00:00");
        assert_eq!(utc_minute(1_700_000_000_000), "2023-11-14 22:13");
        assert_eq!(utc_minute(1_709_251_199_000), "2024-02-29 23:59");
        assert_eq!(utc_minute(4_102_444_800_000), "2100-01-01 00:00");
        assert_eq!(how_long(Duration::from_secs(300)), "5 minutes");
        assert_eq!(how_long(Duration::from_secs(90)), "90 seconds");
    }

    fn session(id: &str, device: &str, current: bool) -> proto::SessionInfo {
        proto::SessionInfo {
            session_id: id.into(),
            device_name: device.into(),
            method: "password".into(),
            created_at_ms: 1_700_000_000_000,
            last_used_at_ms: 0,
            last_address: "127.0.0.1".into(),
            current,
        }
    }

    #[test]
    fn a_session_is_named_by_its_id_or_a_unique_start_of_it() {
        let sessions = [
            session("0b5f3c1e-1111-4c1a-9a57-000000000001", "laptop", true),
            session("0b5f3c1e-2222-4c1a-9a57-000000000002", "phone", false),
            session("7d0e9a44-3333-4c1a-9a57-000000000003", "tablet", false),
        ];
        assert_eq!(find_session(&sessions, "7d0e9a44").unwrap().device_name, "tablet");
        assert_eq!(find_session(&sessions, "0B5F3C1E-2222").unwrap().device_name, "phone");
        assert_eq!(find_session(&sessions, "0b5f3c1e-1111-4c1a-9a57-000000000001").unwrap().device_name, "laptop");
        let e = find_session(&sessions, "0b5f3c1e").unwrap_err().to_string();
        assert!(e.contains("several") && e.contains("0b5f3c1e-2222"), "{e}");
        let e = find_session(&sessions, "7d0e").unwrap_err().to_string();
        assert!(e.contains("at least 8 characters"), "{e}");
        let e = find_session(&sessions, "ffffffff").unwrap_err().to_string();
        assert!(e.contains("none of your devices"), "{e}");
    }

    #[test]
    fn the_sessions_table_marks_this_device() {
        let table = sessions_table(&[
            session("0b5f3c1e-1111-4c1a-9a57-000000000001", "laptop", true),
            session("7d0e9a44-3333-4c1a-9a57-000000000003", "a phone", false),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("   ID") && lines[0].contains("DEVICE"), "{table}");
        assert!(lines[1].starts_with("*  0b5f3c1e-1111") && lines[1].contains("laptop"), "{table}");
        assert!(lines[2].starts_with("   7d0e9a44") && lines[2].contains("a phone"), "{table}");
        assert!(lines[1].contains("2023-11-14 22:13") && lines[1].contains("127.0.0.1"), "{table}");
        let column = |line: &str, what: &str| line.find(what).unwrap();
        assert_eq!(column(lines[0], "METHOD"), column(lines[2], "password"), "aligned: {table}");
        assert_eq!(lines[3], "* this device");
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
