//! Control frames over a QUIC stream: the IO shell around [`crate::proto::control`].

use crate::proto::control::{self, ControlError, MAX_MESSAGE, Message, PREFIX};
use quinn::{RecvStream, SendStream};
use thiserror::Error;

/// Why the control stream failed.
#[derive(Debug, Error)]
pub enum StreamError {
    /// The peer sent an invalid frame.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The stream failed.
    #[error("control stream read: {0}")]
    Read(#[from] quinn::ReadError),
    /// The stream failed.
    #[error("control stream write: {0}")]
    Write(#[from] quinn::WriteError),
    /// The peer closed the stream.
    #[error("control stream closed by peer")]
    Closed,
}

/// Reads frames from a receive stream into a buffer of bounded size.
#[derive(Debug)]
pub struct FrameReader {
    recv: RecvStream,
    buf: Vec<u8>,
    start: usize,
}

impl FrameReader {
    /// Wrap a stream.
    pub fn new(recv: RecvStream) -> Self {
        FrameReader {
            recv,
            buf: Vec::with_capacity(PREFIX + MAX_MESSAGE),
            start: 0,
        }
    }

    /// Read the next frame and hand the decoded message to `f`.
    pub async fn next<R>(&mut self, f: impl FnOnce(Message<'_>) -> R) -> Result<R, StreamError> {
        loop {
            if let Some((msg, used)) = control::decode_frame(&self.buf[self.start..])? {
                self.start += used;
                return Ok(f(msg));
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let mut chunk = [0u8; 1024];
            let room = (PREFIX + MAX_MESSAGE).saturating_sub(self.buf.len()).max(1);
            let want = room.min(chunk.len());
            match self.recv.read(&mut chunk[..want]).await? {
                Some(n) => self.buf.extend_from_slice(&chunk[..n]),
                None => return Err(StreamError::Closed),
            }
        }
    }
}

/// Encode and write one message.
pub async fn send(stream: &mut SendStream, msg: &Message<'_>) -> Result<(), StreamError> {
    let mut buf = [0u8; PREFIX + MAX_MESSAGE];
    let n = control::encode(msg, &mut buf)?;
    stream.write_all(&buf[..n]).await?;
    Ok(())
}
