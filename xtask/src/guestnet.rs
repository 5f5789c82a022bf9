//! Talking to guests over the network from this machine, and moving Keel's console focus between capsules: what the
//! network test scenario and the network benchmark share.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::console::Console;

/// A free TCP port on this machine's loopback. Another program could take it before QEMU binds it; QEMU then
/// fails with its own message about the port, and that run is recorded as failed.
pub fn free_loopback_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot find a free TCP port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// GETs `path` with HTTP/1.0 from 127.0.0.1:`port` (a QEMU port forward), naming `host` in the request, and returns
/// the body of a complete answer with status 200.
pub fn http_get(port: u16, path: &str, host: Ipv4Addr, timeout: Duration) -> Result<Vec<u8>> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .with_context(|| format!("cannot connect to QEMU's port forward at 127.0.0.1:{port}"))?;
    stream.set_read_timeout(Some(timeout))?;
    // One write, so the request leaves in one segment rather than one per formatted piece.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .with_context(|| format!("cannot send GET {path} through 127.0.0.1:{port}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("reading the answer to GET {path} through 127.0.0.1:{port}"))?;
    let body = http_body(&response).with_context(|| format!("the answer to GET {path}"))?;
    Ok(body.to_vec())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("the answer has no blank line ending its headers ({received} bytes received)")]
    NoHeaderEnd { received: usize },
    #[error("the status line is `{0}`, expected HTTP/1.x 200")]
    Status(String),
    #[error("the Content-Length header `{0}` is not a byte count")]
    ContentLength(String),
    #[error("the body has {received} bytes, the Content-Length header promised {declared}")]
    BodyLength { declared: u64, received: u64 },
}

/// The body of a complete HTTP/1.x answer with status 200, checked against its Content-Length if it has one.
pub fn http_body(response: &[u8]) -> Result<&[u8], HttpError> {
    let split = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or(HttpError::NoHeaderEnd { received: response.len() })?;
    let head = String::from_utf8_lossy(&response[..split]);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut words = status.split_whitespace();
    let (Some(version), Some("200")) = (words.next(), words.next()) else {
        return Err(HttpError::Status(status.to_string()));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Status(status.to_string()));
    }
    let body = &response[split + 4..];
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("content-length") {
            let declared: u64 = value
                .trim()
                .parse()
                .map_err(|_| HttpError::ContentLength(value.trim().to_string()))?;
            if declared != body.len() as u64 {
                return Err(HttpError::BodyLength { declared, received: body.len() as u64 });
            }
        }
    }
    Ok(body)
}

/// The checksum in a `sha256sum` output line for `path` (lower case), if the line is one.
pub fn sha256sum_for(text: &str, path: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    let (sum, name, None) = (words.next()?, words.next()?, words.next()) else {
        return None;
    };
    (name == path && sum.len() == 64 && sum.bytes().all(|byte| byte.is_ascii_hexdigit()))
        .then(|| sum.to_ascii_lowercase())
}

/// Moves console input to capsule `name` with Keel's escape `keys` and waits for Keel to say so.
pub fn move_focus(console: &mut Console, keys: &[u8], name: &str, timeout: Duration) -> Result<()> {
    console.send_bytes(keys)?;
    console
        .expect_line(&format!("Keel's focus line naming '{name}'"), timeout, |line| {
            line.contains("console input now goes to capsule") && line.contains(&format!("'{name}'"))
        })
        .with_context(|| format!("console focus moves to {name}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_taken_from_sha256sum_lines_for_the_file() {
        let sum = "a38e9f78de1ef69cf955df77f15298509aaa4d527699c92e8c636a766e52f008";
        assert_eq!(sha256sum_for(&format!("{sum}  /tmp/www/blob"), "/tmp/www/blob").as_deref(), Some(sum));
        assert_eq!(sha256sum_for(&format!("{}  /tmp/www/blob", sum.to_uppercase()), "/tmp/www/blob").as_deref(), Some(sum));
        assert_eq!(sha256sum_for(&format!("{sum}  /tmp/other"), "/tmp/www/blob"), None);
        assert_eq!(sha256sum_for(&format!("{}  /tmp/www/blob", &sum[..63]), "/tmp/www/blob"), None);
        assert_eq!(sha256sum_for(&format!("{}g  /tmp/www/blob", &sum[..63]), "/tmp/www/blob"), None);
        assert_eq!(sha256sum_for(&format!("{sum}  /tmp/www/blob extra"), "/tmp/www/blob"), None);
        assert_eq!(sha256sum_for("", "/tmp/www/blob"), None);
    }

    #[test]
    fn http_answers_give_their_body_or_say_what_is_wrong() {
        let good = b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(http_body(good), Ok(&b"hello"[..]));
        let lower = b"HTTP/1.1 200 OK\r\ncontent-length:  3 \r\n\r\nabc";
        assert_eq!(http_body(lower), Ok(&b"abc"[..]));
        // Without Content-Length the body is whatever came before the connection closed.
        assert_eq!(http_body(b"HTTP/1.0 200 OK\r\n\r\nxyz"), Ok(&b"xyz"[..]));
        assert_eq!(
            http_body(b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nshort"),
            Err(HttpError::BodyLength { declared: 10, received: 5 })
        );
        assert_eq!(
            http_body(b"HTTP/1.0 404 Not Found\r\n\r\n"),
            Err(HttpError::Status("HTTP/1.0 404 Not Found".into()))
        );
        assert_eq!(http_body(b"SSH-2.0 200 x\r\n\r\n"), Err(HttpError::Status("SSH-2.0 200 x".into())));
        assert_eq!(
            http_body(b"HTTP/1.0 200 OK\r\nContent-Length: many\r\n\r\n"),
            Err(HttpError::ContentLength("many".into()))
        );
        assert_eq!(http_body(b"HTTP/1.0 200 OK\r\n"), Err(HttpError::NoHeaderEnd { received: 17 }));
        assert_eq!(http_body(b""), Err(HttpError::NoHeaderEnd { received: 0 }));
        assert_eq!(
            HttpError::BodyLength { declared: 10, received: 5 }.to_string(),
            "the body has 5 bytes, the Content-Length header promised 10"
        );
    }
}
