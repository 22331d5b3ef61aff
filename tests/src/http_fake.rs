//! The small HTTP/1.1 server under the harness's HTTP fakes (Twilio, GitHub):
//! reads requests off a kept-alive connection (one at a time, bounded lines,
//! headers and bodies, `Content-Length` only) and writes each answer in one
//! write. What to answer is the fake's business; this module knows no routes.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;

/// Longest request line or header line, CRLF included.
const MAX_LINE: usize = 8 * 1024;
const MAX_HEADERS: usize = 100;
/// Largest request body read.
const MAX_BODY: usize = 64 * 1024;

/// One parsed request.
pub(crate) struct HttpRequest {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// HTTP/1.0, or `Connection: close`.
    pub close: bool,
}

impl HttpRequest {
    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target.as_str(), |(path, _)| path)
    }

    /// The query's fields, decoded.
    pub fn query(&self) -> Vec<(String, String)> {
        let query = self.target.split_once('?').map_or("", |(_, query)| query);
        form_urlencoded::parse(query.as_bytes()).into_owned().collect()
    }
}

/// An answer: status, extra headers, a body of `content_type`.
pub(crate) struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub content_type: &'static str,
    pub body: String,
}

/// The form fields of a request; none unless it is
/// `application/x-www-form-urlencoded`.
pub(crate) struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn of(request: &HttpRequest) -> Self {
        let is_form = request.header("Content-Type").is_some_and(|v| {
            v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
        });
        if !is_form {
            return Self(Vec::new());
        }
        Self(form_urlencoded::parse(&request.body).into_owned().collect())
    }

    /// The first value of `name`, `None` when missing or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }
}

/// Serves one connection: each request gets `answer`'s response; one the
/// fake cannot read gets `unreadable(status)`, and the connection is closed.
pub(crate) async fn serve(
    stream: TcpStream,
    mut answer: impl FnMut(&HttpRequest) -> HttpResponse,
    unreadable: impl Fn(u16) -> HttpResponse,
) -> std::io::Result<()> {
    serve_async(stream, move |request| std::future::ready(answer(&request)), unreadable).await
}

/// [`serve`] with an answer that may take its time (a fake that hangs).
pub(crate) async fn serve_async<Fut: std::future::Future<Output = HttpResponse>>(
    stream: TcpStream,
    mut answer: impl FnMut(HttpRequest) -> Fut,
    unreadable: impl Fn(u16) -> HttpResponse,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, mut writer) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let (response, close) = match read_request(&mut reader).await? {
            None => return Ok(()),
            Some(Err(Unreadable(status))) => (unreadable(status), true),
            Some(Ok(request)) => {
                let close = request.close;
                (answer(request).await, close)
            }
        };
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            response.status,
            reason(response.status),
            response.content_type,
            response.body.len()
        );
        for (name, value) in &response.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        head.push_str(&response.body);
        // One write per answer: two small segments would wait on a delayed ACK.
        writer.write_all(head.as_bytes()).await?;
        writer.flush().await?;
        if close {
            return Ok(());
        }
    }
}

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Failing",
    }
}

/// A request the fake cannot read: answered with this status, then the
/// connection is closed.
struct Unreadable(u16);

/// The next request on the connection: `None` at a clean end of stream.
async fn read_request(
    reader: &mut BufReader<OwnedReadHalf>,
) -> std::io::Result<Option<Result<HttpRequest, Unreadable>>> {
    let mut line = Vec::new();
    let Some(request_line) = read_line(reader, &mut line).await? else {
        return Ok(None);
    };
    let Ok(request_line) = request_line else { return Ok(Some(Err(Unreadable(431)))) };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ok(Some(Err(Unreadable(400))));
    };
    let (method, target) = (method.to_owned(), target.to_owned());
    let close = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Ok(Some(Err(Unreadable(505)))),
    };
    let mut headers = Vec::new();
    loop {
        let Some(header) = read_line(reader, &mut line).await? else {
            return Ok(None); // Cut short: nothing to answer.
        };
        let Ok(header) = header else { return Ok(Some(Err(Unreadable(431)))) };
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else { return Ok(Some(Err(Unreadable(400)))) };
        if name.is_empty() || name.contains([' ', '\t']) || headers.len() == MAX_HEADERS {
            return Ok(Some(Err(Unreadable(400))));
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let mut request = HttpRequest { method, target, headers, body: Vec::new(), close };
    if request.header("Host").is_none() {
        return Ok(Some(Err(Unreadable(400))));
    }
    if request.header("Transfer-Encoding").is_some() {
        // The clients of the faked services send a length; so does reqwest for a form.
        return Ok(Some(Err(Unreadable(411))));
    }
    let length = match request.header("Content-Length").map(|v| v.parse::<usize>()) {
        None => 0,
        Some(Ok(length)) if length <= MAX_BODY => length,
        Some(Ok(_)) => return Ok(Some(Err(Unreadable(413)))),
        Some(Err(_)) => return Ok(Some(Err(Unreadable(400)))),
    };
    request.body = vec![0; length];
    reader.read_exact(&mut request.body).await?;
    if request.header("Connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
        request.close = true;
    }
    Ok(Some(Ok(request)))
}

/// A line without its CRLF: `None` at end of stream, `Err(())` when too long
/// or not UTF-8.
async fn read_line(
    reader: &mut BufReader<OwnedReadHalf>,
    line: &mut Vec<u8>,
) -> std::io::Result<Option<Result<String, ()>>> {
    line.clear();
    let n = reader.take(MAX_LINE as u64).read_until(b'\n', line).await?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with(b"\n") {
        return Ok(Some(Err(())));
    }
    let text = std::str::from_utf8(line).map_err(|_| ()).map(|l| l.trim_end_matches(['\r', '\n']).to_owned());
    Ok(Some(text))
}
