//! `natter-admin --server ADDR …`: operating a running deployment over the
//! protocol with an admin's session (spec section 5.30). The profile
//! (`--profile`, `$NATTER_ADMIN_PROFILE`, `~/.natter-admin`) keeps the
//! session, as `natter`'s does; sign-in is `natter`'s own code.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use natter_client::cli::Endpoint;
use natter_client::Client;
use natter_proto::wire;
use serde_json::json;

/// Where natterd is and how to trust it (kept in the profile once given).
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// natterd address (HOST:PORT) for the commands that talk to a running
    /// deployment. Saved in the profile. Default 127.0.0.1:7443
    #[arg(long, global = true, value_name = "HOST:PORT")]
    server: Option<String>,
    /// Trust natterd's certificate by this fingerprint (printed by natterd).
    #[arg(long, global = true, value_name = "sha256:HEX", conflicts_with = "ca")]
    pin: Option<String>,
    /// Trust certificates issued by this CA (e.g. natterd's DATA_DIR/tls/ca.pem).
    #[arg(long, global = true, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// Profile directory (the admin's session). Default $NATTER_ADMIN_PROFILE or ~/.natter-admin
    #[arg(long, global = true, value_name = "DIR")]
    profile: Option<PathBuf>,
}

impl Remote {
    fn endpoint(&self) -> anyhow::Result<Endpoint> {
        Ok(Endpoint {
            program: "natter-admin",
            profile: Endpoint::profile_dir(self.profile.clone(), "NATTER_ADMIN_PROFILE", ".natter-admin")?,
            server: self.server.clone(),
            pin: self.pin.clone(),
            ca: self.ca.clone(),
            connect_timeout: None,
        })
    }
}

/// The commands that talk to a running natterd.
#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Sign in as an admin (email and password, then the second factor if on).
    Login {
        /// The admin's email (default: the profile's).
        #[arg(long)]
        email: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Read the second factor's code from standard input.
        #[arg(long)]
        code_stdin: bool,
    },
    /// Sign the admin session out.
    Logout,
    /// Accounts: list, show, disable, enable.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// An account's sessions: list, revoke.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Groups: list, show.
    Groups {
        #[command(subcommand)]
        command: GroupsCommand,
    },
    /// Second factors.
    Mfa {
        #[command(subcommand)]
        command: MfaCommand,
    },
    /// The admin actions taken, oldest first.
    Audit {
        /// Only actions at or after this time: seconds since 1970, or a
        /// span back from now such as 90m, 24h, 7d.
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only this admin's actions (email or user id).
        #[arg(long, value_name = "EMAIL")]
        actor: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The deployment: nodes, connections, messages per second, store and
    /// search lag.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Accounts in the order they were made.
    List {
        /// Only those whose email or name starts with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many (all when 0).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One account with its sessions.
    Show {
        /// Email or user id.
        user: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Close the account's connections on every node and refuse its sign-ins.
    Disable {
        /// Email or user id.
        user: String,
        /// Why (kept in the audit trail).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Delete the account for good: its profile, sign-in methods, sessions,
    /// push subscriptions, keys, uploads and the text of its messages are
    /// erased from the log, the read models, the search index and the blob
    /// store (others see "Deleted account" in their place).
    Delete {
        /// Email or user id.
        user: String,
        /// Confirm (deleting cannot be undone).
        #[arg(long)]
        yes: bool,
    },
    /// Let a disabled account sign in again.
    Enable {
        /// Email or user id.
        user: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Export a person's data: their profile, conversations, the messages
    /// they sent (JSON) and the files those carry, as `natter account export`
    /// writes them. Read from the store (beside a running natterd), not over
    /// the network: give natterd's --config or --data-dir.
    Export {
        /// The account's email.
        email: String,
        /// A new (or empty) directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// natterd's configuration file (its store and blob store); NATTER_*
        /// environment variables override it, as for natterd.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// natterd's data directory. Default: the configuration's (./natter-data)
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Grant the admin role.
    GrantAdmin {
        /// Email or user id.
        user: String,
    },
    /// Withdraw the admin role.
    RevokeAdmin {
        /// Email or user id.
        user: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// Groups in the order they were made.
    List {
        /// Only those whose name starts with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many (all when 0).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One group with its members.
    Show {
        /// The group's conversation id.
        id: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a group: every member is removed and its messages' text and
    /// files are erased (run again, it finishes an erasure cut short).
    Delete {
        /// The group's conversation id.
        id: String,
        /// Confirm (deleting cannot be undone).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// The account's sessions.
    List {
        /// Email or user id.
        user: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Sign one session out (its id, from `sessions list`), or all with --all.
    Revoke {
        /// Email or user id.
        user: String,
        /// The session's id (from `sessions list`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        session: Option<String>,
        /// Every session of the account.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum MfaCommand {
    /// Turn the account's TOTP off (for someone who lost their authenticator).
    Reset {
        /// Email or user id.
        user: String,
    },
}

/// Runs a command against the running deployment.
///
/// # Errors
/// Whatever went wrong, for `main` to print.
pub async fn run(remote: &Remote, command: RemoteCommand) -> anyhow::Result<()> {
    if let RemoteCommand::Users { command: UsersCommand::Export { email, out, config, data_dir } } = command {
        let config = crate::cli::load_config(config, data_dir)?;
        let r = crate::export::export(&config, &email, &out).await?;
        println!(
            "exported {email}: {} conversations, {} messages they sent and {} files ({} bytes) to {}",
            r.conversations,
            r.messages,
            r.files,
            r.file_bytes,
            out.display()
        );
        return Ok(());
    }
    let endpoint = remote.endpoint()?;
    match command {
        RemoteCommand::Login { email, password_stdin, code_stdin } => {
            natter_client::cli::login(endpoint, email, password_stdin, code_stdin, Some("natter-admin".into())).await
        }
        RemoteCommand::Logout => natter_client::cli::logout(endpoint).await,
        command => {
            let client = natter_client::cli::connect_signed_in(endpoint).await?;
            let result = signed_in(&client, command).await;
            client.close().await;
            result.map_err(explain)
        }
    }
}

/// What a refusal means for the person at the terminal.
fn explain(e: anyhow::Error) -> anyhow::Error {
    let code = e.downcast_ref::<natter_client::ClientError>().and_then(natter_client::ClientError::code);
    match code {
        Some(natter_proto::ErrorCode::FORBIDDEN) => {
            e.context("this account is no admin here: `natter-admin grant-admin EMAIL --store …` (natterd stopped), or [admin] bootstrap")
        }
        _ => e,
    }
}

async fn signed_in(client: &Client, command: RemoteCommand) -> anyhow::Result<()> {
    match command {
        RemoteCommand::Login { .. } | RemoteCommand::Logout => unreachable!("needs no session"),
        RemoteCommand::Users { command } => users(client, command).await,
        RemoteCommand::Groups { command } => groups(client, command).await,
        RemoteCommand::Sessions { command: SessionsCommand::List { user, json } } => {
            let detail = client.admin_user(&user).await?;
            print!("{}", sessions_table(&detail.sessions, json));
            Ok(())
        }
        RemoteCommand::Sessions { command: SessionsCommand::Revoke { user, session, all: _ } } => {
            let n = client.admin_revoke_sessions(&user, session.as_deref()).await?;
            println!("{n} session(s) of {user} signed out");
            Ok(())
        }
        RemoteCommand::Mfa { command: MfaCommand::Reset { user } } => {
            if client.admin_reset_mfa(&user).await? {
                println!("the second factor of {user} is off; they sign in with their password alone");
            } else {
                println!("{user} had no second factor on");
            }
            Ok(())
        }
        RemoteCommand::Audit { since, actor, limit, json } => {
            let since_ms = since.as_deref().map(parse_since).transpose()?.unwrap_or(0);
            audit(client, since_ms, actor.as_deref(), limit, json).await
        }
        RemoteCommand::Status { json } => status(client, json).await,
    }
}

async fn users(client: &Client, command: UsersCommand) -> anyhow::Result<()> {
    match command {
        UsersCommand::List { prefix, limit, json } => {
            let mut after = String::new();
            let mut shown = 0;
            if !json {
                println!("{:<36}  {:<30}  {:<20}  {:>8}  flags", "user id", "email", "name", "sessions");
            }
            loop {
                let page = client.admin_users(&prefix, &after, 500).await?;
                for u in &page.users {
                    if limit > 0 && shown == limit {
                        return Ok(());
                    }
                    println!("{}", user_line(u, json));
                    shown += 1;
                }
                if page.next.is_empty() {
                    return Ok(());
                }
                after = page.next;
            }
        }
        UsersCommand::Show { user, json } => {
            let detail = client.admin_user(&user).await?;
            let u = detail.user.context("natterd sent no account")?;
            if json {
                let mut v = user_json(&u);
                v["identities"] = json!(detail.identities);
                v["sessions"] = detail.sessions.iter().map(session_json).collect();
                println!("{v}");
            } else {
                println!("user id        {}", u.user_id);
                println!("email          {}{}", u.email, if u.email_verified { " (verified)" } else { "" });
                println!("name           {}", u.display_name);
                if !u.phone.is_empty() {
                    println!("phone          {}", u.phone);
                }
                println!("created        {}", when(u.created_at_ms));
                println!("flags          {}", flags(&u));
                if !detail.identities.is_empty() {
                    println!("identities     {}", detail.identities.join(", "));
                }
                print!("{}", sessions_table(&detail.sessions, false));
            }
            Ok(())
        }
        UsersCommand::Disable { user, reason } => {
            let changed = client.admin_set_disabled(&user, true, &reason).await?;
            println!(
                "{user} {}",
                if changed {
                    "is disabled: its connections are closed and sign-in refused"
                } else {
                    "was disabled already"
                }
            );
            Ok(())
        }
        UsersCommand::Enable { user, reason } => {
            let changed = client.admin_set_disabled(&user, false, &reason).await?;
            println!("{user} {}", if changed { "may sign in again" } else { "was not disabled" });
            Ok(())
        }
        UsersCommand::Delete { user, yes } => {
            if !yes {
                anyhow::bail!("deleting {user} cannot be undone: run it again with --yes");
            }
            let (messages, media) = client.admin_delete_user(&user).await?;
            println!("{user} is deleted: {messages} messages erased, {media} uploads deleted");
            Ok(())
        }
        UsersCommand::Export { .. } => unreachable!("read from the store, before connecting"),
        UsersCommand::GrantAdmin { user } => {
            let changed = client.admin_set_admin(&user, true).await?;
            println!("{user} {}", if changed { "is an admin" } else { "was an admin already" });
            Ok(())
        }
        UsersCommand::RevokeAdmin { user } => {
            let changed = client.admin_set_admin(&user, false).await?;
            println!("{user} {}", if changed { "is no longer an admin" } else { "held no granted admin role" });
            Ok(())
        }
    }
}

async fn groups(client: &Client, command: GroupsCommand) -> anyhow::Result<()> {
    match command {
        GroupsCommand::List { prefix, limit, json } => {
            let mut after = String::new();
            let mut shown = 0;
            if !json {
                println!(
                    "{:<36}  {:<24}  {:>7}  {:>8}  {:<20}  e2ee",
                    "conversation id", "name", "members", "last seq", "last activity"
                );
            }
            loop {
                let page = client.admin_groups(&prefix, &after, 500).await?;
                for g in &page.groups {
                    if limit > 0 && shown == limit {
                        return Ok(());
                    }
                    if json {
                        println!("{}", group_json(g));
                    } else {
                        let e2ee = if g.e2ee { "yes" } else { "-" };
                        println!(
                            "{:<36}  {:<24}  {:>7}  {:>8}  {:<20}  {e2ee}",
                            g.conversation_id,
                            g.name,
                            g.members,
                            g.last_seq,
                            when(g.last_activity_ms)
                        );
                    }
                    shown += 1;
                }
                if page.next.is_empty() {
                    return Ok(());
                }
                after = page.next;
            }
        }
        GroupsCommand::Show { id, json } => {
            let detail = client.admin_group(&id).await?;
            let g = detail.group.context("natterd sent no group")?;
            let role = |m: &wire::Member| match wire::Role::try_from(m.role) {
                Ok(wire::Role::Owner) => "owner",
                Ok(wire::Role::Admin) => "admin",
                _ => "member",
            };
            if json {
                let mut v = group_json(&g);
                v["members"] = detail
                    .members
                    .iter()
                    .map(|m| json!({"user_id": m.user_id, "email": m.email, "display_name": m.display_name, "role": role(m)}))
                    .collect();
                println!("{v}");
            } else {
                println!("conversation   {}", g.conversation_id);
                println!("name           {}", g.name);
                println!("created        {}", when(g.created_at_ms));
                println!("last activity  {} (seq {})", when(g.last_activity_ms), g.last_seq);
                println!("encrypted      {}", if g.e2ee { "yes (end to end)" } else { "no" });
                println!("members        {}", g.members);
                for m in &detail.members {
                    println!("  {:<6}  {:<30}  {}", role(m), or_id(&m.email, &m.user_id), m.display_name);
                }
            }
            Ok(())
        }
        GroupsCommand::Delete { id, yes } => {
            if !yes {
                anyhow::bail!("deleting group {id} cannot be undone: run it again with --yes");
            }
            let now = client.admin_delete_group(&id).await?;
            println!(
                "group {id} {}",
                if now {
                    "is deleted: no one is a member, its messages are erased"
                } else {
                    "was deleted already; its erasure is complete"
                }
            );
            Ok(())
        }
    }
}

fn group_json(g: &wire::AdminGroup) -> serde_json::Value {
    json!({
        "conversation_id": g.conversation_id, "name": g.name, "e2ee": g.e2ee, "created_at_ms": g.created_at_ms,
        "last_activity_ms": g.last_activity_ms, "last_seq": g.last_seq, "members": g.members,
    })
}

fn flags(u: &wire::AdminUser) -> String {
    let flags: Vec<&str> = [(u.admin, "admin"), (u.disabled, "disabled"), (u.totp, "totp")]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
    if flags.is_empty() {
        "-".into()
    } else {
        flags.join(",")
    }
}

fn user_json(u: &wire::AdminUser) -> serde_json::Value {
    json!({
        "user_id": u.user_id, "email": u.email, "display_name": u.display_name, "phone": u.phone,
        "created_at_ms": u.created_at_ms, "email_verified": u.email_verified, "totp": u.totp,
        "admin": u.admin, "disabled": u.disabled, "sessions": u.sessions,
    })
}

fn user_line(u: &wire::AdminUser, json: bool) -> String {
    if json {
        return user_json(u).to_string();
    }
    let email = if u.email.is_empty() { u.phone.as_str() } else { u.email.as_str() };
    format!("{:<36}  {:<30}  {:<20}  {:>8}  {}", u.user_id, email, u.display_name, u.sessions, flags(u))
}

fn session_json(s: &wire::SessionInfo) -> serde_json::Value {
    json!({
        "session_id": s.session_id, "device_name": s.device_name, "method": s.method,
        "created_at_ms": s.created_at_ms, "last_used_at_ms": s.last_used_at_ms, "last_address": s.last_address,
    })
}

fn sessions_table(sessions: &[wire::SessionInfo], json: bool) -> String {
    if json {
        return sessions.iter().map(|s| format!("{}\n", session_json(s))).collect();
    }
    if sessions.is_empty() {
        return "(no sessions)\n".into();
    }
    let mut out =
        format!("{:<36}  {:<16}  {:<8}  {:<20}  last address\n", "session id", "device", "method", "last used");
    for s in sessions {
        let used = if s.last_used_at_ms == 0 { "-".into() } else { when(s.last_used_at_ms) };
        let addr = if s.last_address.is_empty() { "-" } else { s.last_address.as_str() };
        out.push_str(&format!("{:<36}  {:<16}  {:<8}  {:<20}  {addr}\n", s.session_id, s.device_name, s.method, used));
    }
    out
}

async fn audit(client: &Client, since_ms: u64, actor: Option<&str>, limit: u32, json: bool) -> anyhow::Result<()> {
    let mut after = 0;
    let mut shown = 0;
    if !json {
        println!(
            "{:>5}  {:<20}  {:<28}  {:<16}  {:<28}  {:<15}  detail",
            "#", "when", "admin", "action", "account", "from"
        );
    }
    while shown < limit {
        let page = client.admin_audit(after, actor, since_ms, limit - shown).await?;
        for e in &page.entries {
            shown += 1;
            if json {
                let v = json!({
                    "seq": e.seq, "at_ms": e.at_ms, "actor_user_id": e.actor_user_id, "actor_email": e.actor_email,
                    "action": e.action, "target_user_id": e.target_user_id, "target_email": e.target_email,
                    "detail": e.detail, "from": e.from,
                });
                println!("{v}");
            } else {
                let actor = if e.actor_user_id.is_empty() {
                    "(natter-admin, offline)"
                } else {
                    or_id(&e.actor_email, &e.actor_user_id)
                };
                let target = or_id(&e.target_email, &e.target_user_id);
                println!(
                    "{:>5}  {:<20}  {actor:<28}  {:<16}  {target:<28}  {:<15}  {}",
                    e.seq,
                    when(e.at_ms),
                    e.action,
                    e.from,
                    e.detail
                );
            }
        }
        if page.next == after {
            break;
        }
        after = page.next;
    }
    Ok(())
}

fn or_id<'a>(email: &'a str, id: &'a str) -> &'a str {
    if email.is_empty() {
        id
    } else {
        email
    }
}

async fn status(client: &Client, json: bool) -> anyhow::Result<()> {
    // Two readings a second apart: the rate is their difference.
    let first = client.admin_status().await?;
    let gap = Duration::from_secs(1);
    tokio::time::sleep(gap).await;
    let s = client.admin_status().await?;
    let per_second = s.messages.saturating_sub(first.messages) as f64 / gap.as_secs_f64();
    let search_lag = if s.search_position == 0 { None } else { Some(s.head.saturating_sub(s.search_position)) };
    if json {
        let nodes: Vec<_> = s
            .nodes
            .iter()
            .map(|n| json!({"node_id": n.node_id, "heartbeat_age_secs": n.heartbeat_age_secs, "online_users": n.online_users}))
            .collect();
        let v = json!({
            "node_id": s.node_id, "store": s.store, "uptime_secs": s.uptime_secs, "connections": s.connections,
            "sessions": s.sessions, "head": s.head, "users": s.users, "conversations": s.conversations,
            "messages": s.messages, "messages_per_second": per_second, "search_position": s.search_position,
            "search_lag": search_lag, "nodes": nodes,
        });
        println!("{v}");
        return Ok(());
    }
    println!("node           {} (up {})", s.node_id, span(s.uptime_secs));
    println!("store          {}, log head {}", s.store, s.head);
    println!("connections    {} ({} signed in)", s.connections, s.sessions);
    println!("accounts       {}", s.users);
    println!("conversations  {}", s.conversations);
    println!("messages       {} ({per_second:.0}/s now)", s.messages);
    match search_lag {
        Some(lag) => println!("search         indexed up to {} ({lag} events behind)", s.search_position),
        None => println!("search         off, or nothing indexed yet"),
    }
    if !s.nodes.is_empty() {
        println!("nodes          {:<38}  {:>9}  {:>12}", "id", "heartbeat", "online users");
        for n in &s.nodes {
            println!("               {:<38}  {:>8}s  {:>12}", n.node_id, n.heartbeat_age_secs, n.online_users);
        }
    }
    Ok(())
}

fn span(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

/// A time as `YYYY-MM-DD HH:MM:SS` (UTC).
fn when(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `--since`: seconds since 1970, or a span back from now (`90m`, `24h`, `7d`).
fn parse_since(s: &str) -> anyhow::Result<u64> {
    let bad =
        || anyhow::anyhow!("--since {s:?}: give seconds since 1970, or a span back from now such as 90m, 24h, 7d");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    if let Ok(secs) = s.parse::<u64>() {
        return secs.checked_mul(1000).ok_or_else(bad);
    }
    let (n, unit) = s.split_at(s.len().checked_sub(1).ok_or_else(bad)?);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(bad()),
    };
    Ok(now.saturating_sub(secs.saturating_mul(1000)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_as_utc_dates() {
        assert_eq!(when(0), "1970-01-01 00:00:00");
        assert_eq!(when(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(when(1_796_601_599_000), "2026-12-06 23:59:59");
    }

    #[test]
    fn since_takes_epoch_seconds_or_a_span() {
        assert_eq!(parse_since("1700000000").unwrap(), 1_700_000_000_000);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let day = parse_since("1d").unwrap();
        assert!(now - day >= 86_400_000 && now - day < 86_460_000);
        for bad in ["", "d", "5x", "-1h", "h1"] {
            assert!(parse_since(bad).is_err(), "{bad:?}");
        }
    }
}
