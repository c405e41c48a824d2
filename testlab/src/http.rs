//! The one HTTP client of the tests for the controller's REST API: blocking
//! HTTP/1.1 over a fresh connection per call, optionally opened inside a
//! network namespace (a controller running in one).

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

/// How long a call may take before the test fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A REST API endpoint: address, bearer token, namespace to connect from.
#[derive(Debug, Clone)]
pub struct Api {
    addr: String,
    token: Option<String>,
    netns: Option<String>,
}

impl Api {
    /// The API at `base` (`http://HOST:PORT` or `HOST:PORT`) with `token`.
    pub fn new(base: &str, token: Option<&str>) -> Api {
        let addr = base.strip_prefix("http://").unwrap_or(base);
        Api {
            addr: addr.trim_end_matches('/').to_string(),
            token: token.map(str::to_string),
            netns: None,
        }
    }

    /// The same API, reached from inside network namespace `netns`.
    pub fn in_netns(mut self, netns: &str) -> Api {
        self.netns = Some(netns.to_string());
        self
    }

    /// The same API without a token (to check that one is required).
    pub fn without_token(&self) -> Api {
        Api {
            token: None,
            ..self.clone()
        }
    }

    /// `HOST:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://HOST:PORT`, e.g. for `daolictl --api`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bearer token, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `METHOD PATH` with an optional JSON body: (status, body as JSON;
    /// `Null` when empty, a JSON string when it is not JSON, e.g. metrics).
    #[track_caller]
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, text) = self.raw(method, path, body);
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    /// Like [`Api::call`], panicking unless the status is 2xx; the body.
    #[track_caller]
    pub fn ok(&self, method: &str, path: &str, body: Option<&str>) -> Value {
        let (st, v) = self.call(method, path, body);
        assert!(
            (200..300).contains(&st),
            "{method} {path}: status {st}: {v}"
        );
        v
    }

    /// `GET PATH`, which must succeed; the body as text (e.g. `/metrics`).
    #[track_caller]
    pub fn text(&self, path: &str) -> String {
        let (st, text) = self.raw("GET", path, None);
        assert!((200..300).contains(&st), "GET {path}: status {st}: {text}");
        text
    }

    /// `METHOD PATH`: (status, body text). A connection or protocol
    /// failure panics: the API must answer.
    #[track_caller]
    pub fn raw(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        match self.try_raw(method, path, body) {
            Ok(r) => r,
            Err(e) => panic!("{method} {path} on {}: {e}", self.addr),
        }
    }

    /// `METHOD PATH`: (status, body text), or the I/O error.
    pub fn try_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        let mut s = match &self.netns {
            Some(ns) => {
                let addr = self.addr.clone();
                crate::netns::in_netns(ns, move || std::net::TcpStream::connect(addr))?
            }
            None => std::net::TcpStream::connect(&self.addr)?,
        };
        s.set_read_timeout(Some(CALL_TIMEOUT))?;
        s.set_write_timeout(Some(CALL_TIMEOUT))?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(t) = &self.token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ));
        s.write_all(req.as_bytes())?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        parse_response(&resp)
    }
}

fn bad(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Parse a whole HTTP/1.1 response (the connection was closed after it):
/// status and body, de-chunked.
pub fn parse_response(resp: &[u8]) -> std::io::Result<(u16, String)> {
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad(format!("no end of headers in {} bytes", resp.len())))?;
    let head = String::from_utf8_lossy(&resp[..split]);
    let body = &resp[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut b: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("chunk size line not terminated".into()))?;
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| bad(format!("bad chunk size {size_text:?}")))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err(bad("chunk cut short".into()));
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// The string member `name` of the API answer `v`; panics (a failed test)
/// naming the member and showing the answer when it is missing or not a
/// string.
#[track_caller]
pub fn json_str(v: &Value, name: &str) -> String {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in {v}"))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_bodies() {
        let plain = b"HTTP/1.1 201 Created\r\ncontent-length: 7\r\n\r\n{\"a\":1}";
        let (st, body) = parse_response(plain).unwrap_or_default();
        assert_eq!((st, body.as_str()), (201, "{\"a\":1}"));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                        4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        let (st, body) = parse_response(chunked).unwrap_or_default();
        assert_eq!((st, body.as_str()), (200, "{\"a\":1}"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"junk\r\n\r\n").is_err());
    }

    #[test]
    fn base_urls() {
        let api = Api::new("http://127.0.0.1:8080/", Some("t"));
        assert_eq!(api.addr(), "127.0.0.1:8080");
        assert_eq!(api.base(), "http://127.0.0.1:8080");
        assert_eq!(api.without_token().token(), None);
    }
}
