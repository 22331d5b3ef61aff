//! A small real SMTP server for the tests, on `127.0.0.1:0`: it speaks what
//! lettre sends (EHLO, AUTH PLAIN and LOGIN, MAIL, RCPT, DATA, RSET, NOOP,
//! QUIT), keeps every accepted mail, and can be told to fail the next
//! transaction. No TLS: a plain connection to a loopback relay is exactly the
//! one natterd allows without TLS. Stops on drop.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Most connections served at once; further ones wait to be accepted.
const MAX_CONNECTIONS: usize = 32;
/// Longest command or data line, CRLF included (RFC 4954 allows 12288 for AUTH).
const MAX_LINE: usize = 16 * 1024;
/// Largest message accepted (advertised as `SIZE`).
const MAX_MESSAGE: usize = 10 * 1024 * 1024;
const NAME: &str = "natter-sink.localhost";

#[derive(Debug, Clone, Default)]
pub struct SinkConfig {
    /// `(username, password)` the client must AUTH with before MAIL FROM
    /// (530 otherwise, 535 for other credentials). `None`: AUTH is optional and
    /// any credentials are accepted.
    pub require_auth: Option<(String, String)>,
}

/// One mail the sink accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The envelope sender (`MAIL FROM:<…>`), without the angle brackets.
    pub mail_from: String,
    /// The envelope recipients, in order.
    pub rcpt_to: Vec<String>,
    /// The message as sent (dot-unstuffed), CRLF line ends, without the final `.` line.
    pub data: String,
    /// Who the connection authenticated as, if it did.
    pub authenticated_as: Option<String>,
}

impl ReceivedMail {
    /// The first header `name` (case-insensitive), unfolded, as sent (no
    /// RFC 2047 decoding).
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or_default();
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            match &mut value {
                Some(v) if line.starts_with([' ', '\t']) => v.push_str(line),
                Some(_) => break,
                None => {
                    if let Some((n, v)) = line.split_once(':') {
                        if n.eq_ignore_ascii_case(name) {
                            value = Some(v.trim_start().to_owned());
                        }
                    }
                }
            }
        }
        value
    }

    /// Everything after the header block.
    pub fn body(&self) -> &str {
        self.data.split_once("\r\n\r\n").map_or("", |(_, body)| body)
    }
}

/// The step at which a transaction is told to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailAt {
    MailFrom,
    RcptTo,
    /// After the data was read: the final reply.
    Data,
}

struct Shared {
    config: SinkConfig,
    messages: Mutex<Vec<ReceivedMail>>,
    received: Notify,
    fail_next: Mutex<Option<(FailAt, u16)>>,
}

impl Shared {
    /// The code to answer at `step` instead of success, once.
    fn take_failure(&self, step: FailAt) -> Option<u16> {
        let mut fail = self.fail_next.lock().expect("sink lock");
        match *fail {
            Some((at, code)) if at == step => {
                *fail = None;
                Some(code)
            }
            _ => None,
        }
    }
}

/// The SMTP server; stops (with every connection) when dropped.
pub struct SmtpSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl SmtpSink {
    /// Listens on `127.0.0.1:0`.
    pub async fn start(config: SinkConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the SMTP sink");
        let addr = listener.local_addr().expect("sink address");
        let shared = Arc::new(Shared {
            config,
            messages: Mutex::new(Vec::new()),
            received: Notify::new(),
            fail_next: Mutex::new(None),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Self { addr, shared, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A `[mail]` table that delivers to this sink (plain SMTP, which natterd
    /// allows only to a loopback relay), from `natter@example.org`.
    pub fn mail_config(&self) -> natter_server::auth::mail::MailConfig {
        use natter_server::auth::mail::{MailConfig, MailProvider, SmtpTls};
        MailConfig {
            provider: MailProvider::Smtp,
            smtp_host: Some(self.addr.ip().to_string()),
            smtp_port: Some(self.addr.port()),
            smtp_tls: SmtpTls::None,
            from: "natter <natter@example.org>".into(),
            ..MailConfig::default()
        }
    }

    /// Every mail accepted so far, in order.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.shared.messages.lock().expect("sink lock").clone()
    }

    /// The next MAIL FROM is answered with `code` (e.g. 451, 550) instead of 250.
    pub fn set_fail_next(&self, code: u16) {
        self.set_fail_next_at(FailAt::MailFrom, code);
    }

    /// The next transaction reaching `step` is answered with `code` there.
    pub fn set_fail_next_at(&self, step: FailAt, code: u16) {
        assert!((400..600).contains(&code), "a failure code is 4xx or 5xx, not {code}");
        *self.shared.fail_next.lock().expect("sink lock") = Some((step, code));
    }

    /// The first accepted mail matching `pred`, waiting for it (woken by each
    /// arrival) until `timeout`, then panicking with what did arrive.
    pub async fn wait_for(&self, pred: impl Fn(&ReceivedMail) -> bool, timeout: Duration) -> ReceivedMail {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before looking, so an arrival in between still wakes us.
            let arrived = self.shared.received.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let messages = self.messages();
            if let Some(found) = messages.iter().find(|m| pred(m)) {
                return found.clone();
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!("SMTP sink: no matching mail in {timeout:?}; received {messages:#?}");
            }
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    crate::accept_loop(listener, MAX_CONNECTIONS, move |stream| {
        let shared = shared.clone();
        async move {
            let _ = serve(stream, &shared).await;
        }
    })
    .await;
}

/// One SMTP session's state.
#[derive(Default)]
struct Session {
    greeted: bool,
    authenticated_as: Option<String>,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
}

impl Session {
    fn reset(&mut self) {
        self.mail_from = None;
        self.rcpt_to.clear();
    }
}

struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    line: Vec<u8>,
}

impl Conn {
    async fn reply(&mut self, text: &str) -> std::io::Result<()> {
        // One write per reply: two small segments would wait on a delayed ACK.
        self.writer.write_all(format!("{text}\r\n").as_bytes()).await?;
        self.writer.flush().await
    }

    /// The next line with its line end, `None` at end of stream; a line over
    /// `MAX_LINE` is an error (the session ends).
    async fn read_line(&mut self) -> std::io::Result<Option<&[u8]>> {
        self.line.clear();
        let n = (&mut self.reader).take(MAX_LINE as u64).read_until(b'\n', &mut self.line).await?;
        if n == 0 {
            return Ok(None);
        }
        if !self.line.ends_with(b"\n") {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "line too long or cut short"));
        }
        Ok(Some(&self.line))
    }

    /// A line without its line end, as text.
    async fn read_text_line(&mut self) -> std::io::Result<Option<String>> {
        Ok(self.read_line().await?.map(|l| String::from_utf8_lossy(l).trim_end_matches(['\r', '\n']).to_owned()))
    }
}

async fn serve(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, writer) = stream.into_split();
    let mut conn = Conn { reader: BufReader::new(read), writer, line: Vec::new() };
    let mut session = Session::default();
    conn.reply(&format!("220 {NAME} ESMTP natter test sink")).await?;
    while let Some(line) = conn.read_text_line().await? {
        let (verb, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => {
                session.reset();
                session.greeted = true;
                conn.reply(&format!("250-{NAME}\r\n250-AUTH PLAIN LOGIN\r\n250-8BITMIME\r\n250 SIZE {MAX_MESSAGE}"))
                    .await?;
            }
            "HELO" => {
                session.reset();
                session.greeted = true;
                conn.reply(&format!("250 {NAME}")).await?;
            }
            "AUTH" => auth(&mut conn, &mut session, shared, arg).await?,
            "MAIL" => {
                let reply = mail_from(&mut session, shared, arg);
                conn.reply(&reply).await?;
            }
            "RCPT" => {
                let reply = rcpt_to(&mut session, shared, arg);
                conn.reply(&reply).await?;
            }
            "DATA" => data(&mut conn, &mut session, shared).await?,
            "RSET" => {
                session.reset();
                conn.reply("250 2.0.0 Ok").await?;
            }
            "NOOP" => conn.reply("250 2.0.0 Ok").await?,
            "QUIT" => {
                conn.reply("221 2.0.0 Bye").await?;
                return Ok(());
            }
            _ => conn.reply("502 5.5.2 Command not recognized").await?,
        }
    }
    Ok(())
}

async fn auth(conn: &mut Conn, session: &mut Session, shared: &Shared, arg: &str) -> std::io::Result<()> {
    if !session.greeted {
        return conn.reply("503 5.5.1 EHLO first").await;
    }
    if session.authenticated_as.is_some() {
        return conn.reply("503 5.5.1 Already authenticated").await;
    }
    let (mechanism, initial) = arg.split_once(' ').unwrap_or((arg, ""));
    let credentials = match mechanism.to_ascii_uppercase().as_str() {
        "PLAIN" => {
            let response = match initial {
                "" => {
                    conn.reply("334 ").await?;
                    conn.read_text_line().await?.unwrap_or_default()
                }
                given => given.to_owned(),
            };
            decode(&response).and_then(|plain| {
                // authzid NUL authcid NUL password
                let mut parts = plain.splitn(3, '\0');
                let (_authzid, user, password) = (parts.next()?, parts.next()?, parts.next()?);
                Some((user.to_owned(), password.to_owned()))
            })
        }
        "LOGIN" => {
            let user = match initial {
                "" => {
                    conn.reply("334 VXNlcm5hbWU6").await?; // "Username:"
                    conn.read_text_line().await?.unwrap_or_default()
                }
                given => given.to_owned(),
            };
            conn.reply("334 UGFzc3dvcmQ6").await?; // "Password:"
            let password = conn.read_text_line().await?.unwrap_or_default();
            decode(&user).zip(decode(&password))
        }
        _ => return conn.reply("504 5.5.4 Unrecognized authentication type").await,
    };
    let Some((user, password)) = credentials else {
        return conn.reply("501 5.5.2 Cannot decode the AUTH response").await;
    };
    let accepted = match &shared.config.require_auth {
        Some((want_user, want_password)) => &user == want_user && &password == want_password,
        None => true,
    };
    if accepted {
        session.authenticated_as = Some(user);
        conn.reply("235 2.7.0 Authentication successful").await
    } else {
        conn.reply("535 5.7.8 Authentication credentials invalid").await
    }
}

/// Base64 text, `None` for a cancelled exchange (`*`) or bad encoding.
fn decode(b64: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    String::from_utf8(bytes).ok()
}

/// The `<address>` after `FROM:` / `TO:` (parameters after it ignored).
fn path_arg(arg: &str, keyword: &str) -> Option<String> {
    let rest = arg.get(..keyword.len()).filter(|k| k.eq_ignore_ascii_case(keyword)).map(|_| &arg[keyword.len()..])?;
    let rest = rest.trim_start().strip_prefix('<')?;
    let (address, _params) = rest.split_once('>')?;
    Some(address.to_owned())
}

fn failure(code: u16) -> String {
    let class = code / 100;
    format!("{code} {class}.0.0 Failing as the test asked")
}

fn mail_from(session: &mut Session, shared: &Shared, arg: &str) -> String {
    if !session.greeted {
        return "503 5.5.1 EHLO first".into();
    }
    if shared.config.require_auth.is_some() && session.authenticated_as.is_none() {
        return "530 5.7.0 Authentication required".into();
    }
    if session.mail_from.is_some() {
        return "503 5.5.1 Nested MAIL command".into();
    }
    let Some(from) = path_arg(arg, "FROM:") else {
        return "501 5.5.4 Syntax: MAIL FROM:<address>".into();
    };
    if let Some(code) = shared.take_failure(FailAt::MailFrom) {
        return failure(code);
    }
    session.mail_from = Some(from);
    "250 2.1.0 Ok".into()
}

fn rcpt_to(session: &mut Session, shared: &Shared, arg: &str) -> String {
    if session.mail_from.is_none() {
        return "503 5.5.1 MAIL first".into();
    }
    let Some(to) = path_arg(arg, "TO:") else {
        return "501 5.5.4 Syntax: RCPT TO:<address>".into();
    };
    if let Some(code) = shared.take_failure(FailAt::RcptTo) {
        return failure(code);
    }
    session.rcpt_to.push(to);
    "250 2.1.5 Ok".into()
}

async fn data(conn: &mut Conn, session: &mut Session, shared: &Shared) -> std::io::Result<()> {
    let Some(mail_from) = session.mail_from.clone().filter(|_| !session.rcpt_to.is_empty()) else {
        return conn.reply("503 5.5.1 RCPT first").await;
    };
    conn.reply("354 End data with <CR><LF>.<CR><LF>").await?;
    let mut data = Vec::new();
    let mut too_big = false;
    loop {
        let Some(line) = conn.read_line().await? else {
            return Ok(()); // The client went away mid-message: nothing was accepted.
        };
        if line == b".\r\n" || line == b".\n" {
            break;
        }
        let line = line.strip_prefix(b".").unwrap_or(line);
        if data.len() + line.len() > MAX_MESSAGE {
            too_big = true;
        } else {
            data.extend_from_slice(line);
        }
    }
    let rcpt_to = std::mem::take(&mut session.rcpt_to);
    session.reset();
    if too_big {
        return conn.reply("552 5.3.4 Message too big").await;
    }
    if let Some(code) = shared.take_failure(FailAt::Data) {
        return conn.reply(&failure(code)).await;
    }
    let mail = ReceivedMail {
        mail_from,
        rcpt_to,
        data: String::from_utf8_lossy(&data).into_owned(),
        authenticated_as: session.authenticated_as.clone(),
    };
    shared.messages.lock().expect("sink lock").push(mail);
    shared.received.notify_waiters();
    conn.reply("250 2.0.0 Ok: queued").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_headers() {
        assert_eq!(path_arg("FROM:<a@example.org> BODY=8BITMIME", "FROM:").as_deref(), Some("a@example.org"));
        assert_eq!(path_arg("from: <>", "FROM:").as_deref(), Some(""));
        assert_eq!(path_arg("TO:a@example.org", "TO:"), None);
        let m = ReceivedMail {
            mail_from: String::new(),
            rcpt_to: Vec::new(),
            data: "Subject: a\r\n b\r\nTo: x@example.org\r\n\r\nbody\r\n".into(),
            authenticated_as: None,
        };
        assert_eq!(m.header("subject").as_deref(), Some("a b"));
        assert_eq!(m.header("To").as_deref(), Some("x@example.org"));
        assert_eq!(m.header("From"), None);
        assert_eq!(m.body(), "body\r\n");
    }

    /// Sends `line` (when given) and returns the reply's last line.
    async fn say(conn: &mut BufReader<TcpStream>, line: Option<&str>) -> String {
        if let Some(line) = line {
            conn.get_mut().write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
        }
        loop {
            let mut reply = String::new();
            conn.read_line(&mut reply).await.unwrap();
            if reply.as_bytes().get(3) != Some(&b'-') {
                return reply.trim_end().to_owned();
            }
        }
    }

    #[tokio::test]
    async fn speaks_auth_login_and_unstuffs_dots() {
        let sink = SmtpSink::start(SinkConfig { require_auth: Some(("u".into(), "p w".into())) }).await;
        let mut c = BufReader::new(TcpStream::connect(sink.addr()).await.unwrap());
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert!(say(&mut c, None).await.starts_with("220 "));
        assert!(say(&mut c, Some("MAIL FROM:<a@example.org>")).await.starts_with("503 "), "EHLO first");
        assert!(say(&mut c, Some("EHLO client.example")).await.starts_with("250 SIZE "));
        assert!(say(&mut c, Some("MAIL FROM:<a@example.org>")).await.starts_with("530 "));
        assert!(say(&mut c, Some("STARTTLS")).await.starts_with("502 "));
        assert_eq!(say(&mut c, Some("AUTH LOGIN")).await, "334 VXNlcm5hbWU6");
        assert_eq!(say(&mut c, Some(&b64("u"))).await, "334 UGFzc3dvcmQ6");
        assert!(say(&mut c, Some(&b64("wrong"))).await.starts_with("535 "));
        assert_eq!(say(&mut c, Some("AUTH LOGIN")).await, "334 VXNlcm5hbWU6");
        assert_eq!(say(&mut c, Some(&b64("u"))).await, "334 UGFzc3dvcmQ6");
        assert!(say(&mut c, Some(&b64("p w"))).await.starts_with("235 "));
        assert!(say(&mut c, Some("MAIL FROM:<a@example.org>")).await.starts_with("250 "));
        assert!(say(&mut c, Some("RSET")).await.starts_with("250 "));
        assert!(say(&mut c, Some("DATA")).await.starts_with("503 "), "RSET forgot the sender");
        assert!(say(&mut c, Some("NOOP")).await.starts_with("250 "));
        assert!(say(&mut c, Some("MAIL FROM:<a@example.org>")).await.starts_with("250 "));
        assert!(say(&mut c, Some("RCPT TO:<b@example.org>")).await.starts_with("250 "));
        assert!(say(&mut c, Some("DATA")).await.starts_with("354 "));
        assert!(say(&mut c, Some("Subject: s\r\n\r\n..leading dot\r\n.")).await.starts_with("250 "));
        assert!(say(&mut c, Some("QUIT")).await.starts_with("221 "));
        let got = sink.wait_for(|_| true, Duration::from_secs(5)).await;
        assert_eq!(got.authenticated_as.as_deref(), Some("u"));
        assert_eq!(
            (got.mail_from.as_str(), got.rcpt_to.as_slice()),
            ("a@example.org", &["b@example.org".to_owned()][..])
        );
        assert_eq!(got.body(), ".leading dot\r\n");
    }
}
