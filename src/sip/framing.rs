//! Message framing on stream transports (TCP, TLS; RFC 3261 18.3).
//!
//! Guarantees: a frame is returned only when the whole message (head and
//! `Content-Length` body) is in the buffer; a message without Content-Length
//! is an error (the stream cannot be resynchronised, so the caller closes the
//! connection on any `Err`); CRLF keep-alives (RFC 5626 3.5.1) are reported
//! separately so the shell can answer a double CRLF ping with a single CRLF
//! pong; the bytes held waiting for a frame are bounded by [`Limits::STREAM`].

use super::message::{Limits, Message, ParseError, parse_with};

/// What the front of a stream buffer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Not enough bytes yet; read more and call again with the longer buffer.
    Incomplete,
    /// `used` bytes of CRLF keep-alive; `ping` when a full `\r\n\r\n` was seen
    /// (answer it with `\r\n`).
    KeepAlive {
        /// Bytes to drop from the buffer.
        used: usize,
        /// The peer sent a double-CRLF ping.
        ping: bool,
    },
    /// One message that used `used` bytes of the buffer.
    Message {
        /// The message.
        msg: Box<Message>,
        /// Bytes to drop from the buffer.
        used: usize,
    },
}

/// Looks at the front of `buf` (bytes read from one connection).
pub fn next_frame(buf: &[u8]) -> Result<Frame, ParseError> {
    let crlf = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    if crlf > 0 {
        return Ok(Frame::KeepAlive {
            used: crlf,
            ping: buf[..crlf].windows(4).any(|w| w == b"\r\n\r\n"),
        });
    }
    match parse_with(buf, &Limits::STREAM, true) {
        Ok((msg, used)) => Ok(Frame::Message {
            msg: Box::new(msg),
            used,
        }),
        Err(ParseError::Incomplete) => Ok(Frame::Incomplete),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: &[u8] = b"OPTIONS sip:box SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.2;branch=z9hG4bKa\r\nFrom: <sip:a@box>;tag=1\r\nTo: <sip:box>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 4\r\n\r\nbody";

    #[test]
    fn splits_a_stream_at_every_byte() {
        let mut stream = b"\r\n\r\n".to_vec();
        stream.extend_from_slice(OPTS);
        stream.extend_from_slice(OPTS);
        for cut in 0..stream.len() {
            // Whatever arrived so far, nothing is returned past the data.
            match next_frame(&stream[..cut]).unwrap() {
                Frame::Incomplete => {}
                Frame::KeepAlive { used, .. } => assert!(used <= cut),
                Frame::Message { used, .. } => assert!(used <= cut),
            }
        }
        let mut rest = &stream[..];
        let mut msgs = 0;
        let mut pings = 0;
        loop {
            match next_frame(rest).unwrap() {
                Frame::Incomplete => break,
                Frame::KeepAlive { used, ping } => {
                    pings += usize::from(ping);
                    rest = &rest[used..];
                }
                Frame::Message { msg, used } => {
                    assert_eq!(msg.body, b"body");
                    msgs += 1;
                    rest = &rest[used..];
                }
            }
        }
        assert_eq!((msgs, pings, rest.len()), (2, 1, 0));
    }

    #[test]
    fn stream_requires_content_length_and_bounds() {
        let no_cl = b"OPTIONS sip:box SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bKa\r\nFrom: <sip:a@box>;tag=1\r\nTo: <sip:box>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n\r\n";
        assert_eq!(next_frame(no_cl), Err(ParseError::MissingContentLength));
        let endless = vec![b'a'; Limits::STREAM.max_head + 1];
        assert!(matches!(
            next_frame(&endless),
            Err(ParseError::HeadTooLarge(_))
        ));
        let big =
            String::from_utf8_lossy(OPTS).replace("Content-Length: 4", "Content-Length: 999999");
        assert!(matches!(
            next_frame(big.as_bytes()),
            Err(ParseError::BodyTooLarge(_))
        ));
    }
}
