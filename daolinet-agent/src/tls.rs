//! OpenFlow over TLS to a controller (`--controller ssl:IP:PORT`): a
//! [`Transport`] over a non-blocking socket and a rustls client session,
//! for the event loop (rustls is itself sans-IO: bytes in, bytes out).
//!
//! - `read` hands out plaintext, pulling TLS records from the socket until
//!   the buffer is full or the socket has nothing more (so a short read
//!   means "drained", as the engine and edge-triggered epoll expect);
//! - `write` takes plaintext only when earlier TLS records went out, and
//!   pushes the new records to the socket; `flush` pushes what the socket
//!   did not take yet (the engine calls it when the socket is writable
//!   again);
//! - a certificate the CA did not sign, or a handshake the controller
//!   refuses, is a read or write error: the connection closes with it and
//!   is tried again after the usual backoff.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use daolinet_tls::rustls::{ClientConfig, ClientConnection};

use crate::engine::Transport;

/// A TLS client session over `S`.
pub struct TlsIo<S> {
    sock: S,
    tls: ClientConnection,
}

impl<S: Read + Write> TlsIo<S> {
    /// Starts the handshake (its first flight goes out with the first
    /// write or flush).
    pub fn new(sock: S, cfg: Arc<ClientConfig>) -> io::Result<Self> {
        let tls =
            ClientConnection::new(cfg, daolinet_tls::server_name()).map_err(io::Error::other)?;
        Ok(TlsIo { sock, tls })
    }

    /// Pushes pending TLS records; `WouldBlock` when the socket is full.
    fn push(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.sock)?;
        }
        Ok(())
    }
}

impl<S: Read + Write> Read for TlsIo<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        loop {
            match self.tls.reader().read(buf.get_mut(n..).unwrap_or_default()) {
                Ok(0) if n == 0 && !buf.is_empty() => {
                    // close_notify: the end of the stream.
                    if self.tls.is_handshaking() {
                        return Err(io::Error::other("TLS session closed during the handshake"));
                    }
                    return Ok(0);
                }
                Ok(k) => {
                    n += k;
                    if n == buf.len() || k == 0 {
                        return Ok(n);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // No plaintext waiting: more records from the socket.
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => {
                    return if n > 0 {
                        Ok(n)
                    } else if self.tls.is_handshaking() {
                        Err(io::Error::other(
                            "connection closed during the TLS handshake",
                        ))
                    } else {
                        Ok(0)
                    }
                }
                Ok(_) => {
                    let state = self.tls.process_new_packets();
                    // Alerts and handshake answers go out even on error.
                    let pushed = self.push();
                    state.map_err(|e| io::Error::other(format!("TLS: {e}")))?;
                    match pushed {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && n > 0 => return Ok(n),
                Err(e) => return Err(e),
            }
        }
    }
}

impl<S: Read + Write> Write for TlsIo<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Earlier records first: no more plaintext while the socket is full.
        self.push()?;
        let n = self.tls.writer().write(buf)?;
        match self.push() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push()
    }
}

impl<S: Read + Write + AsRawFd + Send> Transport for TlsIo<S> {
    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.sock.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte pipe that says WouldBlock when empty or full.
    #[derive(Default)]
    struct Pipe {
        input: Vec<u8>,
        output: Vec<u8>,
        limit: usize,
    }

    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.input.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.input.len());
            buf[..n].copy_from_slice(&self.input[..n]);
            self.input.drain(..n);
            Ok(n)
        }
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let room = self.limit.saturating_sub(self.output.len());
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(room);
            self.output.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_blocked_socket_holds_plaintext_back_and_reads_say_would_block() {
        let cfg = ClientConfig::builder_with_provider(daolinet_tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(daolinet_tls::rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut t = TlsIo::new(
            Pipe {
                limit: 10,
                ..Pipe::default()
            },
            Arc::new(cfg),
        )
        .unwrap();
        // The ClientHello does not fit: nothing is taken.
        assert_eq!(
            t.write(b"hello").unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert_eq!(t.sock.output.len(), 10);
        // Nothing to read yet.
        assert_eq!(
            t.read(&mut [0; 16]).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        // Room again: the rest of the ClientHello goes with the next flush.
        t.sock.limit = 1 << 20;
        t.flush().unwrap();
        assert!(t.sock.output.len() > 10);
        // The peer closing before the handshake is an error, not EOF.
        t.sock.input.clear();
    }
}
