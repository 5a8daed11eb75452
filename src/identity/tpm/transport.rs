//! Moving command and response bytes to and from a TPM, with a time limit
//! on every exchange and a bound on every response.
//!
//! - `Simulator`: the TCP protocol of the TCG reference simulator, which
//!   swtpm speaks: `u32 8` (TPM_SEND_COMMAND), `u8` locality, `u32` length,
//!   command; the reply is `u32` length, response, `u32 0`. Socket timeouts
//!   bound every read and write by one deadline per exchange.
//! - `Device`: `/dev/tpmrm0` (or `/dev/tpm0`): one `write()` with the whole
//!   command, one `read()` for the response. A character device has no
//!   read timeout, so the IO runs on a worker thread and the caller waits
//!   for at most the time limit; a worker stuck in the kernel is abandoned
//!   (it exits when its call returns) and the next exchange opens the
//!   device again.

use super::error::TpmError;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Largest response accepted (TPM2's MAX_RESPONSE_SIZE on common TPMs).
pub const MAX_RESPONSE: usize = 4096;
/// Simulator command: send a TPM command.
pub const TPM_SEND_COMMAND: u32 = 8;
/// Simulator command: end the session (the server closes the connection).
pub const TPM_SESSION_END: u32 = 20;

/// A connection to a TPM.
pub(crate) trait Transport: Send + std::fmt::Debug {
    /// Send one command and return its response, within `timeout`.
    fn transact(
        &mut self,
        command: &'static str,
        cmd: &[u8],
        timeout: Duration,
    ) -> Result<Zeroizing<Vec<u8>>, TpmError>;

    /// True when closing the connection flushes what it loaded (the
    /// kernel resource manager does; swtpm and `/dev/tpm0` do not).
    fn flushes_on_close(&self) -> bool;
}

/// True for the kernel resource manager's devices (`/dev/tpmrm0`).
pub fn is_resource_manager(path: &std::path::Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("tpmrm"))
}

/// Frame a command for the simulator's TCP port.
pub fn sim_frame(cmd: &[u8], locality: u8) -> Result<Zeroizing<Vec<u8>>, usize> {
    let len = u32::try_from(cmd.len()).map_err(|_| cmd.len())?;
    let mut out = Zeroizing::new(Vec::with_capacity(cmd.len() + 9));
    out.extend_from_slice(&TPM_SEND_COMMAND.to_be_bytes());
    out.push(locality);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(cmd);
    Ok(out)
}

/// Read one simulator reply: length, response (at most `max` bytes), and
/// the trailing `u32 0`. Refuses an oversize length from the prefix alone.
pub fn read_sim_reply(
    r: &mut impl Read,
    command: &'static str,
    max: usize,
) -> Result<Zeroizing<Vec<u8>>, TpmError> {
    let io = |source: io::Error| io_error(command, "read", source);
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(io)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(TpmError::ResponseTooLarge { command, len, max });
    }
    let mut resp = Zeroizing::new(vec![0u8; len]);
    r.read_exact(&mut resp).map_err(io)?;
    let mut ack = [0u8; 4];
    r.read_exact(&mut ack).map_err(io)?;
    if ack != [0; 4] {
        return Err(TpmError::Malformed {
            command,
            what: format!("simulator trailer is {ack:02x?}, expected 0"),
        });
    }
    Ok(resp)
}

fn io_error(command: &'static str, op: &'static str, source: io::Error) -> TpmError {
    TpmError::Io {
        command,
        op,
        source,
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A swtpm (or TCG simulator) TCP connection.
#[derive(Debug)]
pub(crate) struct Simulator {
    stream: TcpStream,
}

impl Simulator {
    pub(crate) fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        Ok(Simulator { stream })
    }
}

/// Reads with the socket timeout set to what is left until `deadline`.
struct DeadlineReader<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut s = self.stream;
        s.read(buf)
    }
}

impl Transport for Simulator {
    fn transact(
        &mut self,
        command: &'static str,
        cmd: &[u8],
        timeout: Duration,
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let deadline = Instant::now() + timeout;
        let frame = sim_frame(cmd, 0).map_err(|len| TpmError::Malformed {
            command,
            what: format!("command of {len} bytes"),
        })?;
        let write = |e: io::Error| {
            if timed_out(&e) {
                TpmError::Timeout {
                    command,
                    op: "accept the command",
                    after: timeout,
                }
            } else {
                io_error(command, "write", e)
            }
        };
        self.stream
            .set_write_timeout(Some(timeout))
            .map_err(write)?;
        (&self.stream).write_all(&frame).map_err(write)?;
        let mut r = DeadlineReader {
            stream: &self.stream,
            deadline,
        };
        read_sim_reply(&mut r, command, MAX_RESPONSE).map_err(|e| match e {
            TpmError::Io { source, .. } if timed_out(&source) => TpmError::Timeout {
                command,
                op: "answer",
                after: timeout,
            },
            e => e,
        })
    }

    fn flushes_on_close(&self) -> bool {
        false
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        // Polite close; the server also copes with a plain disconnect.
        let _ = self
            .stream
            .set_write_timeout(Some(Duration::from_millis(100)));
        let _ = (&self.stream).write_all(&TPM_SESSION_END.to_be_bytes());
    }
}

type Reply = io::Result<Zeroizing<Vec<u8>>>;

/// A TPM character device served by a worker thread.
#[derive(Debug)]
pub(crate) struct Device {
    resource_manager: bool,
    /// The opened device, until the first exchange starts its worker.
    pending: Option<std::fs::File>,
    worker: Option<Worker>,
}

#[derive(Debug)]
struct Worker {
    to_worker: mpsc::SyncSender<Zeroizing<Vec<u8>>>,
    from_worker: mpsc::Receiver<Reply>,
}

impl Device {
    pub(crate) fn open(path: &std::path::Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        // The worker thread starts at the first exchange, not here: the
        // daemon opens the TPM before its privilege drop, and a thread
        // created then would escape the per-thread Landlock and seccomp
        // rules applied afterwards.
        Ok(Device {
            resource_manager: is_resource_manager(path),
            pending: Some(file),
            worker: None,
        })
    }

    /// Serve `io` (the device, or a test double) from a worker thread.
    #[cfg(test)]
    pub(crate) fn spawn<T: Read + Write + Send + 'static>(
        io: T,
        resource_manager: bool,
    ) -> io::Result<Self> {
        Ok(Device {
            resource_manager,
            pending: None,
            worker: Some(Worker::spawn(io)?),
        })
    }
}

impl Worker {
    fn spawn<T: Read + Write + Send + 'static>(mut io: T) -> io::Result<Self> {
        let (to_worker, commands) = mpsc::sync_channel::<Zeroizing<Vec<u8>>>(1);
        let (replies, from_worker) = mpsc::sync_channel::<Reply>(1);
        std::thread::Builder::new()
            .name("tpm-io".into())
            .spawn(move || {
                for cmd in commands {
                    if replies.send(exchange(&mut io, &cmd)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Worker {
            to_worker,
            from_worker,
        })
    }
}

/// One write with the whole command, one read for the whole response.
fn exchange(io: &mut (impl Read + Write), cmd: &[u8]) -> Reply {
    let n = io.write(cmd)?;
    if n != cmd.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("the TPM took {n} of {} command bytes", cmd.len()),
        ));
    }
    // One byte more than the limit, to tell "exactly the limit" from "more".
    let mut buf = Zeroizing::new(vec![0u8; MAX_RESPONSE + 1]);
    let n = io.read(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

impl Transport for Device {
    fn transact(
        &mut self,
        command: &'static str,
        cmd: &[u8],
        timeout: Duration,
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let gone = || {
            io_error(
                command,
                "write",
                io::Error::new(io::ErrorKind::BrokenPipe, "TPM worker gone"),
            )
        };
        if self.worker.is_none() {
            let file = self.pending.take().ok_or_else(gone)?;
            self.worker =
                Some(Worker::spawn(file).map_err(|e| io_error(command, "start worker", e))?);
        }
        let Some(w) = &self.worker else {
            return Err(gone());
        };
        w.to_worker
            .try_send(Zeroizing::new(cmd.to_vec()))
            .map_err(|_| gone())?;
        let reply = match w.from_worker.recv_timeout(timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(TpmError::Timeout {
                    command,
                    op: "answer",
                    after: timeout,
                });
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(gone()),
        };
        let resp = reply.map_err(|e| io_error(command, "exchange", e))?;
        if resp.len() > MAX_RESPONSE {
            return Err(TpmError::ResponseTooLarge {
                command,
                len: resp.len(),
                max: MAX_RESPONSE,
            });
        }
        Ok(resp)
    }

    fn flushes_on_close(&self) -> bool {
        self.resource_manager
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    // TPM2_GetRandom(8): tag 8001, size 12, cc 0000017B, bytesRequested 8.
    const GET_RANDOM: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7B, 0, 8];

    #[test]
    fn command_frame_fixture() {
        let f = sim_frame(&GET_RANDOM, 0).unwrap();
        let mut want = vec![0, 0, 0, 8, 0, 0, 0, 0, 12];
        want.extend_from_slice(&GET_RANDOM);
        assert_eq!(&f[..], &want[..]);
        assert_eq!(sim_frame(&GET_RANDOM, 3).unwrap()[4], 3);
    }

    #[test]
    fn reply_fixture() {
        // A TPM_RC_SUCCESS header-only response framed with its trailer.
        let resp = [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0];
        let mut wire = vec![0, 0, 0, 10];
        wire.extend_from_slice(&resp);
        wire.extend_from_slice(&[0, 0, 0, 0]);
        let got = read_sim_reply(&mut Cursor::new(&wire), "t", MAX_RESPONSE).unwrap();
        assert_eq!(&got[..], &resp);
    }

    #[test]
    fn bad_replies() {
        // Oversize length refused before anything else is read.
        let wire = [0, 0, 0x10, 0x01];
        let e = read_sim_reply(&mut Cursor::new(&wire), "t", MAX_RESPONSE).unwrap_err();
        assert!(
            matches!(e, TpmError::ResponseTooLarge { len: 4097, .. }),
            "{e}"
        );
        let wire = [0xFF, 0xFF, 0xFF, 0xFF];
        assert!(read_sim_reply(&mut Cursor::new(&wire), "t", MAX_RESPONSE).is_err());
        // Truncated body.
        let wire = [0, 0, 0, 10, 0x80, 0x01];
        let e = read_sim_reply(&mut Cursor::new(&wire), "t", MAX_RESPONSE).unwrap_err();
        assert!(matches!(e, TpmError::Io { .. }), "{e}");
        // Missing trailer.
        let wire = [0, 0, 0, 1, 0xAA];
        assert!(read_sim_reply(&mut Cursor::new(&wire), "t", MAX_RESPONSE).is_err());
        // Non-zero trailer.
        let wire = [0, 0, 0, 1, 0xAA, 0, 0, 0, 1];
        let e = read_sim_reply(&mut Cursor::new(&wire), "t", MAX_RESPONSE).unwrap_err();
        assert!(matches!(e, TpmError::Malformed { .. }), "{e}");
    }

    #[test]
    fn device_worker_exchanges_and_times_out() {
        use std::os::unix::net::UnixStream;
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let mut dev = Device::spawn(ours, true).unwrap();
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let n = peer.read(&mut buf).unwrap();
            peer.write_all(&buf[..n]).unwrap();
            // Then never answer again.
            let _ = peer.read(&mut buf);
            std::thread::sleep(Duration::from_secs(2));
        });
        let got = dev
            .transact("t", &GET_RANDOM, Duration::from_secs(5))
            .unwrap();
        assert_eq!(&got[..], &GET_RANDOM);
        let t = Instant::now();
        let e = dev
            .transact("t", &GET_RANDOM, Duration::from_millis(200))
            .unwrap_err();
        assert!(matches!(e, TpmError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(1));
        echo.join().unwrap();
    }
}
