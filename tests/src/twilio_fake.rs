//! A small real HTTP/1.1 server for the tests, on `127.0.0.1:0`, that answers
//! as Twilio does for the two APIs natterd uses, and checks what Twilio
//! checks:
//!
//! - Programmable Messaging: `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`
//!   with `To`, `From` or `MessagingServiceSid`, `Body` → 201 and a message
//!   resource. Errors 21604 (no `To`), 21603 (no sender), 21602 (no `Body`),
//!   21617 (`Body` over 1600 characters), 21211 (`To` not a phone number),
//!   21212 (`From` not a phone number), 21606 (`From` not the account's),
//!   21701 (unknown Messaging Service), 21266 (`To` = `From`); and Twilio's
//!   magic test numbers as `To` (+15005550001: 21211, …0002: 21612, …0003:
//!   21408, …0004: 21610, …0009: 21614), always on here.
//! - Verify v2: `POST /v2/Services/{ServiceSid}/Verifications` (`To`,
//!   `Channel=sms`) → 201 `pending`; the fake makes a 6-digit code per number
//!   (the same one again while it is pending, as Twilio does), "texts" it
//!   (see [`TwilioFake::verify_code`]), and refuses a sixth send with 429
//!   60203. `POST /v2/Services/{ServiceSid}/VerificationCheck` (`To` or
//!   `VerificationSid`, `Code`) → 200 `approved` once (the verification is
//!   then gone), 200 `pending` for a wrong code; after five wrong codes, or
//!   ten minutes, it is gone too, and a check is 404 20404. Only the `sms`
//!   channel is implemented (others are 400 60200).
//!
//! Every request needs HTTP Basic auth with the configured account SID and
//! auth token (401 20003 otherwise) and an `application/x-www-form-urlencoded`
//! body (a body of another type is not read, as Twilio does not read it: its
//! fields are missing). Errors are Twilio's JSON: `{"code", "message",
//! "more_info", "status"}`. No TLS: plain HTTP to a loopback address is the one
//! thing natterd allows without TLS (with `sms.allow_http_loopback`). Keeps
//! connections alive like Twilio; stops, with every connection, on drop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use natter_server::auth::sms::{SmsConfig, SmsProviderKind};
use rand::Rng;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::http_fake::{self, reason, Form, HttpRequest, HttpResponse};

/// The fake's account, unless configured otherwise.
pub const ACCOUNT_SID: &str = "ACf4ce0000000000000000000000000001";
pub const AUTH_TOKEN: &str = "fake-twilio-auth-token-0123456789";
/// The account's number (Twilio's magic valid `From` for test credentials).
pub const FROM: &str = "+15005550006";
pub const MESSAGING_SERVICE_SID: &str = "MGf4ce0000000000000000000000000001";
pub const VERIFY_SERVICE_SID: &str = "VAf4ce0000000000000000000000000001";
/// What a 429 from [`TwilioFake::fail_next`] carries as `Retry-After`, in seconds.
pub const RETRY_AFTER_SECS: u64 = 7;
/// Wrong codes a verification survives (Twilio: 5).
pub const MAX_CHECK_ATTEMPTS: u32 = 5;
/// Texts one pending verification may send (Twilio: 5 in 10 minutes).
pub const MAX_SEND_ATTEMPTS: u32 = 5;
/// How long a verification stays pending (Twilio's default: 10 minutes).
pub const VERIFICATION_TTL: Duration = Duration::from_secs(600);

/// Most connections served at once; further ones wait to be accepted.
const MAX_CONNECTIONS: usize = 32;
/// Twilio's limit on `Body`.
const MAX_BODY_CHARS: usize = 1_600;

/// What the fake accepts.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    pub account_sid: String,
    pub auth_token: String,
    /// The account's numbers: a `From` must be one of them (21606 otherwise).
    pub senders: Vec<String>,
    pub messaging_service_sid: String,
    pub verify_service_sid: String,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            account_sid: ACCOUNT_SID.into(),
            auth_token: AUTH_TOKEN.into(),
            senders: vec![FROM.into()],
            messaging_service_sid: MESSAGING_SERVICE_SID.into(),
            verify_service_sid: VERIFY_SERVICE_SID.into(),
        }
    }
}

/// One message the fake accepted (Programmable Messaging).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentSms {
    /// The message SID it answered (`SM…`).
    pub sid: String,
    pub to: String,
    /// `From` as sent; `None` when sent through a Messaging Service.
    pub from: Option<String>,
    pub messaging_service_sid: Option<String>,
    pub body: String,
}

/// One verification text the fake "sent" (Verify): a start, or a resend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentVerification {
    /// The verification SID (`VE…`), the same for a resend.
    pub sid: String,
    pub to: String,
    pub channel: String,
    /// The code in the text.
    pub code: String,
}

/// One request the fake answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// What the fake answered.
    pub status: u16,
}

/// A verification that is still pending.
struct Pending {
    sid: String,
    code: String,
    sends: u32,
    wrong: u32,
    started: Instant,
}

#[derive(Default)]
struct State {
    sent: Vec<SentSms>,
    verifications: Vec<SentVerification>,
    /// By `To`.
    pending: HashMap<String, Pending>,
    requests: Vec<Request>,
    fail_next: Option<(u16, u32)>,
}

impl State {
    /// The pending verification for `to`, forgetting it if it expired.
    fn pending(&mut self, to: &str) -> Option<&mut Pending> {
        if self.pending.get(to).is_some_and(|p| p.started.elapsed() >= VERIFICATION_TTL) {
            self.pending.remove(to);
        }
        self.pending.get_mut(to)
    }
}

struct Shared {
    config: FakeConfig,
    state: Mutex<State>,
    changed: Notify,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("twilio fake lock")
    }
}

/// The fake Twilio; stops (with every connection) when dropped.
pub struct TwilioFake {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl TwilioFake {
    /// Listens on `127.0.0.1:0` with [`FakeConfig::default`].
    pub async fn start() -> Self {
        Self::start_with(FakeConfig::default()).await
    }

    pub async fn start_with(config: FakeConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the Twilio fake");
        let addr = listener.local_addr().expect("fake address");
        let shared = Arc::new(Shared { config, state: Mutex::new(State::default()), changed: Notify::new() });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Self { addr, shared, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `sms.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An `[sms]` table for Programmable Messaging from the fake's number.
    pub fn messaging_config(&self) -> SmsConfig {
        let config = &self.shared.config;
        SmsConfig {
            provider: SmsProviderKind::Twilio,
            base_url: Some(self.base_url()),
            allow_http_loopback: true,
            account_sid: Some(config.account_sid.clone()),
            auth_token: Some(config.auth_token.clone()),
            from: config.senders.first().cloned(),
            ..SmsConfig::default()
        }
    }

    /// An `[sms]` table for Verify with the fake's service.
    pub fn verify_config(&self) -> SmsConfig {
        let config = &self.shared.config;
        SmsConfig {
            provider: SmsProviderKind::TwilioVerify,
            base_url: Some(self.base_url()),
            allow_http_loopback: true,
            account_sid: Some(config.account_sid.clone()),
            auth_token: Some(config.auth_token.clone()),
            verify_service_sid: Some(config.verify_service_sid.clone()),
            ..SmsConfig::default()
        }
    }

    /// Every message accepted so far, in order.
    pub fn sent(&self) -> Vec<SentSms> {
        self.shared.state().sent.clone()
    }

    /// Every verification text "sent" so far, in order.
    pub fn verifications(&self) -> Vec<SentVerification> {
        self.shared.state().verifications.clone()
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.state().requests.clone()
    }

    /// The code of the verification pending for `to` (what its text said), if
    /// one is pending.
    pub fn verify_code(&self, to: &str) -> Option<String> {
        self.shared.state().pending(to).map(|p| p.code.clone())
    }

    /// The next request (whatever it is) is answered with HTTP `status` and
    /// Twilio error `code` instead; a 429 carries `Retry-After:
    /// RETRY_AFTER_SECS`.
    pub fn fail_next(&self, status: u16, code: u32) {
        assert!((400..600).contains(&status), "a failure is 4xx or 5xx, not {status}");
        self.shared.state().fail_next = Some((status, code));
    }

    /// The first accepted message matching `pred`, waiting for it (woken by
    /// each arrival) until `timeout`, then panicking with what did arrive.
    pub async fn wait_for(&self, pred: impl Fn(&SentSms) -> bool, timeout: Duration) -> SentSms {
        self.wait(|s| s.sent.iter().find(|m| pred(m)).cloned(), timeout, |s| format!("{:#?}", s.sent)).await
    }

    /// The first verification text matching `pred`, waiting as [`Self::wait_for`].
    pub async fn wait_for_verification(
        &self,
        pred: impl Fn(&SentVerification) -> bool,
        timeout: Duration,
    ) -> SentVerification {
        self.wait(|s| s.verifications.iter().find(|v| pred(v)).cloned(), timeout, |s| format!("{:#?}", s.verifications))
            .await
    }

    async fn wait<T>(
        &self,
        look: impl Fn(&State) -> Option<T>,
        timeout: Duration,
        seen: impl Fn(&State) -> String,
    ) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before looking, so an arrival in between still wakes us.
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (found, seen) = {
                let state = self.shared.state();
                (look(&state), seen(&state))
            };
            if let Some(found) = found {
                return found;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!("Twilio fake: nothing matching in {timeout:?}; it has {seen}");
            }
        }
    }
}

impl Drop for TwilioFake {
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

/// An answer: status, extra headers, JSON.
struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Value,
}

impl Response {
    fn json(status: u16, body: Value) -> Self {
        Self { status, headers: Vec::new(), body }
    }

    /// Twilio's error body.
    fn error(status: u16, code: u32, message: impl Into<String>) -> Self {
        Self::json(
            status,
            json!({
                "code": code,
                "message": message.into(),
                "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
                "status": status,
            }),
        )
    }
}

impl From<Response> for HttpResponse {
    fn from(response: Response) -> Self {
        HttpResponse {
            status: response.status,
            headers: response.headers,
            content_type: "application/json; charset=utf-8",
            body: response.body.to_string(),
        }
    }
}

/// Twilio's error body as the answer to a request the fake cannot read.
fn unreadable(status: u16) -> HttpResponse {
    Response::error(status, 0, reason(status)).into()
}

async fn serve(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let respond = |request: &HttpRequest| -> HttpResponse {
        let response = answer(shared, request);
        let mut state = shared.state();
        state.requests.push(Request {
            method: request.method.clone(),
            path: request.path().to_owned(),
            status: response.status,
        });
        drop(state);
        shared.changed.notify_waiters();
        response.into()
    };
    http_fake::serve(stream, respond, unreadable).await
}

/// What Twilio answers to `request`.
fn answer(shared: &Shared, request: &HttpRequest) -> Response {
    if let Some((status, code)) = shared.state().fail_next.take() {
        let mut response = Response::error(status, code, failure_message(code));
        if status == 429 {
            response.headers.push(("Retry-After", RETRY_AFTER_SECS.to_string()));
        }
        return response;
    }
    let config = &shared.config;
    if !authenticated(config, request) {
        let mut response = Response::error(401, 20003, "Authenticate");
        response.body["detail"] = "Your AccountSid or AuthToken was incorrect.".into();
        response.headers.push(("WWW-Authenticate", "Basic realm=\"Twilio API\"".into()));
        return response;
    }
    let path = request.path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let route = match segments.as_slice() {
        ["2010-04-01", "Accounts", account, "Messages.json"] if *account == config.account_sid => Route::Messages,
        ["v2", "Services", service, "Verifications"] if *service == config.verify_service_sid => Route::Verifications,
        ["v2", "Services", service, "VerificationCheck"] if *service == config.verify_service_sid => {
            Route::VerificationCheck
        }
        _ => return not_found(&path),
    };
    if request.method != "POST" {
        return Response::error(405, 20004, "Method not allowed");
    }
    let form = Form::of(request);
    let mut state = shared.state();
    let response = match route {
        Route::Messages => messages(config, &mut state, &form),
        Route::Verifications => verifications(config, &mut state, &form),
        Route::VerificationCheck => verification_check(config, &mut state, &form, &path),
    };
    drop(state);
    shared.changed.notify_waiters();
    response
}

enum Route {
    Messages,
    Verifications,
    VerificationCheck,
}

fn not_found(path: &str) -> Response {
    let resource = path.strip_prefix("/v2").unwrap_or(path);
    Response::error(404, 20404, format!("The requested resource {resource} was not found"))
}

fn failure_message(code: u32) -> &'static str {
    match code {
        20429 => "Too Many Requests",
        20500 => "An internal server error has occurred",
        20503 => "Service unavailable",
        60203 => "Max send attempts reached",
        _ => "Failing as the test asked",
    }
}

/// HTTP Basic with the account SID and its auth token.
fn authenticated(config: &FakeConfig, request: &HttpRequest) -> bool {
    let Some((scheme, credentials)) = request.header("Authorization").and_then(|v| v.split_once(' ')) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("Basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(credentials.trim()) else { return false };
    let Ok(decoded) = String::from_utf8(decoded) else { return false };
    decoded.split_once(':').is_some_and(|(user, password)| user == config.account_sid && password == config.auth_token)
}

/// Twilio's own view of a phone number: `+`, then 7 to 15 digits, the first
/// not 0. (Twilio knows the numbering plans; this is what a fake can check.)
fn is_phone_number(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|digits| {
        (7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
    })
}

/// Twilio's magic `To` numbers (test credentials) and the errors they make.
fn magic_to(to: &str) -> Option<(u32, &'static str)> {
    match to {
        "+15005550001" => Some((21211, "This phone number is invalid.")),
        "+15005550002" => Some((21612, "Twilio cannot route to this number.")),
        "+15005550003" => {
            Some((21408, "Your account doesn't have the international permissions necessary to SMS this number."))
        }
        "+15005550004" => Some((21610, "This number is blocked for your account.")),
        "+15005550009" => Some((21614, "This number is incapable of receiving SMS messages.")),
        _ => None,
    }
}

/// A SID: `prefix` and 32 random hexadecimal digits.
fn new_sid(prefix: &str) -> String {
    let bytes: [u8; 16] = rand::rng().random();
    format!("{prefix}{}", hex::encode(bytes))
}

fn messages(config: &FakeConfig, state: &mut State, form: &Form) -> Response {
    let Some(to) = form.get("To") else {
        return Response::error(400, 21604, "A 'To' phone number is required.");
    };
    let from = form.get("From");
    let service = form.get("MessagingServiceSid");
    if from.is_none() && service.is_none() {
        return Response::error(400, 21603, "A 'From' phone number is required.");
    }
    let Some(body) = form.get("Body") else {
        return Response::error(400, 21602, "Message body is required.");
    };
    if body.chars().count() > MAX_BODY_CHARS {
        return Response::error(400, 21617, "The concatenated message body exceeds the 1600 character limit.");
    }
    if !is_phone_number(to) {
        return Response::error(400, 21211, format!("The 'To' number {to} is not a valid phone number."));
    }
    if let Some((code, message)) = magic_to(to) {
        return Response::error(400, code, message);
    }
    if let Some(service) = service {
        if service != config.messaging_service_sid {
            return Response::error(400, 21701, format!("The Messaging Service Sid {service} is invalid."));
        }
    }
    if let Some(from) = from {
        if !is_phone_number(from) {
            return Response::error(
                400,
                21212,
                format!("The 'From' number {from} is not a valid phone number, shortcode, or alphanumeric sender ID."),
            );
        }
        if !config.senders.iter().any(|s| s == from) {
            return Response::error(
                400,
                21606,
                format!(
                    "The From phone number {from} is not a valid, SMS-capable inbound phone number or short code \
                     for your account."
                ),
            );
        }
        if from == to {
            return Response::error(400, 21266, format!("'To' and 'From' number cannot be the same: {to}"));
        }
    }
    let sent = SentSms {
        sid: new_sid("SM"),
        to: to.to_owned(),
        from: from.map(str::to_owned),
        messaging_service_sid: service.map(str::to_owned),
        body: body.to_owned(),
    };
    let response = Response::json(
        201,
        json!({
            "account_sid": config.account_sid,
            "api_version": "2010-04-01",
            "body": sent.body,
            "direction": "outbound-api",
            "error_code": null,
            "error_message": null,
            "from": sent.from,
            "messaging_service_sid": sent.messaging_service_sid,
            "num_media": "0",
            "num_segments": "1",
            "price": null,
            "sid": sent.sid,
            "status": if service.is_some() { "accepted" } else { "queued" },
            "to": sent.to,
            "uri": format!("/2010-04-01/Accounts/{}/Messages/{}.json", config.account_sid, sent.sid),
        }),
    );
    state.sent.push(sent);
    response
}

/// A verification resource as Twilio shows it.
fn verification_json(config: &FakeConfig, sid: &str, to: &str, status: &str) -> Value {
    json!({
        "sid": sid,
        "service_sid": config.verify_service_sid,
        "account_sid": config.account_sid,
        "to": to,
        "channel": "sms",
        "status": status,
        "valid": status == "approved",
        "amount": null,
        "payee": null,
        "url": format!("https://verify.twilio.com/v2/Services/{}/Verifications/{sid}", config.verify_service_sid),
    })
}

fn verifications(config: &FakeConfig, state: &mut State, form: &Form) -> Response {
    let Some(to) = form.get("To") else {
        return Response::error(400, 60200, "Invalid parameter `To`: ");
    };
    if !is_phone_number(to) {
        return Response::error(400, 60200, format!("Invalid parameter `To`: {to}"));
    }
    match form.get("Channel") {
        Some("sms") => {}
        Some(other) => return Response::error(400, 60200, format!("Invalid parameter `Channel`: {other}")),
        None => return Response::error(400, 60200, "Invalid parameter `Channel`: "),
    }
    let (sid, code) = match state.pending(to) {
        Some(pending) if pending.sends >= MAX_SEND_ATTEMPTS => {
            return Response::error(429, 60203, "Max send attempts reached");
        }
        Some(pending) => {
            pending.sends += 1;
            (pending.sid.clone(), pending.code.clone())
        }
        None => {
            let code = format!("{:06}", rand::rng().random_range(0..1_000_000));
            let sid = new_sid("VE");
            let pending = Pending { sid: sid.clone(), code: code.clone(), sends: 1, wrong: 0, started: Instant::now() };
            state.pending.insert(to.to_owned(), pending);
            (sid, code)
        }
    };
    state.verifications.push(SentVerification { sid: sid.clone(), to: to.to_owned(), channel: "sms".into(), code });
    Response::json(201, verification_json(config, &sid, to, "pending"))
}

fn verification_check(config: &FakeConfig, state: &mut State, form: &Form, path: &str) -> Response {
    let to = match (form.get("To"), form.get("VerificationSid")) {
        (Some(to), _) => to.to_owned(),
        (None, Some(sid)) => match state.pending.iter().find(|(_, p)| p.sid == sid) {
            Some((to, _)) => to.clone(),
            None => return not_found(path),
        },
        (None, None) => return Response::error(400, 60200, "Invalid parameter: To or VerificationSid is required"),
    };
    let Some(code) = form.get("Code") else {
        return Response::error(400, 60200, "Invalid parameter `Code`: ");
    };
    let Some(pending) = state.pending(&to) else {
        return not_found(path);
    };
    let sid = pending.sid.clone();
    if pending.code == code {
        state.pending.remove(&to);
        return Response::json(200, verification_json(config, &sid, &to, "approved"));
    }
    pending.wrong += 1;
    if pending.wrong >= MAX_CHECK_ATTEMPTS {
        state.pending.remove(&to);
        return Response::json(200, verification_json(config, &sid, &to, "max_attempts_reached"));
    }
    Response::json(200, verification_json(config, &sid, &to, "pending"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    /// Sends `request` as is and reads one answer: status, headers, JSON body.
    async fn exchange(conn: &mut BufReader<TcpStream>, request: &str) -> (u16, Vec<(String, String)>, Value) {
        conn.get_mut().write_all(request.as_bytes()).await.unwrap();
        let mut line = String::new();
        conn.read_line(&mut line).await.unwrap();
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            conn.read_line(&mut line).await.unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(": ").unwrap();
            headers.push((name.to_ascii_lowercase(), value.to_owned()));
        }
        let length: usize = headers.iter().find(|(n, _)| n == "content-length").unwrap().1.parse().unwrap();
        let mut body = vec![0; length];
        conn.read_exact(&mut body).await.unwrap();
        (status, headers, serde_json::from_slice(&body).unwrap())
    }

    fn post(path: &str, auth: Option<(&str, &str)>, content_type: &str, body: &str) -> String {
        let auth = auth
            .map(|(u, p)| {
                format!(
                    "Authorization: Basic {}\r\n",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                )
            })
            .unwrap_or_default();
        format!(
            "POST {path} HTTP/1.1\r\nHost: api.twilio.com\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    const FORM: &str = "application/x-www-form-urlencoded";

    #[tokio::test]
    async fn answers_like_twilio_on_one_kept_alive_connection() {
        let fake = TwilioFake::start().await;
        let mut c = BufReader::new(TcpStream::connect(fake.addr()).await.unwrap());
        let messages = format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json");
        let good = Some((ACCOUNT_SID, AUTH_TOKEN));

        let (status, headers, body) = exchange(&mut c, &post(&messages, None, FORM, "To=%2B14155550100")).await;
        assert_eq!((status, body["code"].as_u64(), body["message"].as_str()), (401, Some(20003), Some("Authenticate")));
        assert!(headers.iter().any(|(n, _)| n == "www-authenticate"), "{headers:?}");
        let wrong = Some((ACCOUNT_SID, "not the token"));
        let (status, _, body) = exchange(&mut c, &post(&messages, wrong, FORM, "To=%2B14155550100")).await;
        assert_eq!((status, body["code"].as_u64()), (401, Some(20003)));

        // Fields of a body that is not a form are not read.
        let json = r#"{"To":"+14155550100","From":"+15005550006","Body":"hi"}"#;
        let (status, _, body) = exchange(&mut c, &post(&messages, good, "application/json", json)).await;
        assert_eq!((status, body["code"].as_u64()), (400, Some(21604)));
        for (form, code) in [
            ("From=%2B15005550006&Body=hi", 21604),
            ("To=%2B14155550100&Body=hi", 21603),
            ("To=%2B14155550100&From=%2B15005550006", 21602),
            ("To=%2B14155550100&From=%2B15005550006&Body=", 21602),
            ("To=4155550100&From=%2B15005550006&Body=hi", 21211),
            ("To=%2B15005550009&From=%2B15005550006&Body=hi", 21614),
            ("To=%2B14155550100&From=natter&Body=hi", 21212),
            ("To=%2B14155550100&From=%2B14155550199&Body=hi", 21606),
            ("To=%2B15005550006&From=%2B15005550006&Body=hi", 21266),
            ("To=%2B14155550100&MessagingServiceSid=MG00&Body=hi", 21701),
        ] {
            let (status, _, body) = exchange(&mut c, &post(&messages, good, FORM, form)).await;
            assert_eq!((status, body["code"].as_u64()), (400, Some(code)), "{form}: {body}");
            assert_eq!(body["status"].as_u64(), Some(400));
        }
        let long = format!("To=%2B14155550100&From=%2B15005550006&Body={}", "x".repeat(1601));
        let (_, _, body) = exchange(&mut c, &post(&messages, good, FORM, &long)).await;
        assert_eq!(body["code"].as_u64(), Some(21617));
        assert!(fake.sent().is_empty());

        let (status, _, body) =
            exchange(&mut c, &post(&messages, good, FORM, "To=%2B14155550100&From=%2B15005550006&Body=a+b%26c")).await;
        assert_eq!((status, body["status"].as_str(), body["body"].as_str()), (201, Some("queued"), Some("a b&c")));
        let sent = fake.wait_for(|_| true, Duration::from_secs(5)).await;
        assert_eq!(sent.sid, body["sid"].as_str().unwrap());
        assert!(sent.sid.starts_with("SM") && sent.sid.len() == 34, "{}", sent.sid);

        let other = format!("/2010-04-01/Accounts/AC{}/Messages.json", "0".repeat(32));
        let (status, _, body) = exchange(&mut c, &post(&other, good, FORM, "")).await;
        assert_eq!((status, body["code"].as_u64()), (404, Some(20404)));
        let get = format!("GET {messages} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\n\r\n", {
            base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT_SID}:{AUTH_TOKEN}"))
        });
        let (status, _, body) = exchange(&mut c, &get).await;
        assert_eq!((status, body["code"].as_u64()), (405, Some(20004)));

        fake.fail_next(429, 20429);
        let (status, headers, body) = exchange(&mut c, &post(&messages, good, FORM, "")).await;
        assert_eq!((status, body["code"].as_u64()), (429, Some(20429)));
        assert!(headers.contains(&("retry-after".into(), RETRY_AFTER_SECS.to_string())), "{headers:?}");
        assert_eq!(fake.requests().len(), 18);
    }

    #[tokio::test]
    async fn verify_codes_work_once_and_die_after_five_wrong_tries() {
        let fake = TwilioFake::start().await;
        let mut c = BufReader::new(TcpStream::connect(fake.addr()).await.unwrap());
        let good = Some((ACCOUNT_SID, AUTH_TOKEN));
        let start = format!("/v2/Services/{VERIFY_SERVICE_SID}/Verifications");
        let check = format!("/v2/Services/{VERIFY_SERVICE_SID}/VerificationCheck");
        let to = "To=%2B14155550100";

        let (status, _, body) = exchange(&mut c, &post(&start, good, FORM, to)).await;
        assert_eq!((status, body["code"].as_u64()), (400, Some(60200)), "no channel");
        let (status, _, body) = exchange(&mut c, &post(&start, good, FORM, &format!("{to}&Channel=sms"))).await;
        assert_eq!((status, body["status"].as_str()), (201, Some("pending")));
        let code = fake.verify_code("+14155550100").expect("a code");
        assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()), "{code}");
        // A resend texts the same code, up to five texts.
        for _ in 1..MAX_SEND_ATTEMPTS {
            let (status, _, _) = exchange(&mut c, &post(&start, good, FORM, &format!("{to}&Channel=sms"))).await;
            assert_eq!(status, 201);
        }
        let (status, _, body) = exchange(&mut c, &post(&start, good, FORM, &format!("{to}&Channel=sms"))).await;
        assert_eq!((status, body["code"].as_u64()), (429, Some(60203)));
        let texts = fake.verifications();
        assert_eq!(texts.len(), MAX_SEND_ATTEMPTS as usize);
        assert!(texts.iter().all(|t| t.code == code && t.sid == texts[0].sid && t.channel == "sms"));

        let wrong = if code == "000000" { "111111" } else { "000000" };
        for _ in 1..MAX_CHECK_ATTEMPTS {
            let (status, _, body) = exchange(&mut c, &post(&check, good, FORM, &format!("{to}&Code={wrong}"))).await;
            assert_eq!((status, body["status"].as_str(), body["valid"].as_bool()), (200, Some("pending"), Some(false)));
        }
        let (status, _, body) = exchange(&mut c, &post(&check, good, FORM, &format!("{to}&Code={code}"))).await;
        assert_eq!((status, body["status"].as_str(), body["valid"].as_bool()), (200, Some("approved"), Some(true)));
        let (status, _, body) = exchange(&mut c, &post(&check, good, FORM, &format!("{to}&Code={code}"))).await;
        assert_eq!((status, body["code"].as_u64()), (404, Some(20404)), "approved once");

        exchange(&mut c, &post(&start, good, FORM, &format!("{to}&Channel=sms"))).await;
        let code = fake.verify_code("+14155550100").unwrap();
        let wrong = if code == "000000" { "111111" } else { "000000" };
        for _ in 0..MAX_CHECK_ATTEMPTS {
            exchange(&mut c, &post(&check, good, FORM, &format!("{to}&Code={wrong}"))).await;
        }
        assert_eq!(fake.verify_code("+14155550100"), None);
        let (status, _, _) = exchange(&mut c, &post(&check, good, FORM, &format!("{to}&Code={code}"))).await;
        assert_eq!(status, 404, "gone after five wrong codes");

        let other = format!("/v2/Services/VA{}/Verifications", "0".repeat(32));
        let (status, _, body) = exchange(&mut c, &post(&other, good, FORM, &format!("{to}&Channel=sms"))).await;
        assert_eq!((status, body["code"].as_u64()), (404, Some(20404)));
    }

    #[tokio::test]
    async fn unreadable_requests_are_refused_and_the_connection_closed() {
        let fake = TwilioFake::start().await;
        for request in ["BREW /pot HTTP/1.1\r\n\r\n", "POST / HTTP/2.0\r\nHost: x\r\n\r\n", "POST /\r\n\r\n"] {
            let mut c = BufReader::new(TcpStream::connect(fake.addr()).await.unwrap());
            let (status, headers, _) = exchange(&mut c, request).await;
            assert!(status == 400 || status == 505, "{request:?}: {status}");
            assert!(headers.contains(&("connection".into(), "close".into())), "{headers:?}");
        }
        let mut c = BufReader::new(TcpStream::connect(fake.addr()).await.unwrap());
        let chunked = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(exchange(&mut c, chunked).await.0, 411);
    }
}
