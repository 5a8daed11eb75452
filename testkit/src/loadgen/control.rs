//! The device's side of the control stream, for the load generator's
//! connections: one message written, the relay's messages read.

use super::Dev;
use quinn_proto::{Connection, StreamId};
use voxgate::proto::control::{self, Message};

pub(super) fn write_msg(
    conn: &mut Connection,
    id: StreamId,
    msg: &Message<'_>,
) -> Result<(), String> {
    let mut buf = [0u8; control::MAX_MESSAGE + control::PREFIX];
    let n = control::encode(msg, &mut buf).map_err(|e| e.to_string())?;
    let w = conn
        .send_stream(id)
        .write(&buf[..n])
        .map_err(|e| e.to_string())?;
    if w != n {
        return Err(format!("control stream took {w} of {n} bytes"));
    }
    Ok(())
}

/// Reads the control stream; true when a welcome arrived. The relay's later
/// messages (stats) are read and dropped, as the gateway does with them.
pub(super) fn read_control(d: &mut Dev, id: StreamId) -> Result<bool, String> {
    let mut welcome = false;
    let mut rs = d.conn.recv_stream(id);
    let mut chunks = rs.read(true).map_err(|e| e.to_string())?;
    loop {
        match chunks.next(usize::MAX) {
            Ok(Some(c)) => d.rx.extend_from_slice(&c.bytes),
            Ok(None) => {
                let _ = chunks.finalize();
                return Err("relay closed the control stream".into());
            }
            Err(quinn_proto::ReadError::Blocked) => break,
            Err(e) => {
                let _ = chunks.finalize();
                return Err(e.to_string());
            }
        }
    }
    let _ = chunks.finalize();
    let mut used = 0;
    while let Some((m, n)) = control::decode_frame(&d.rx[used..]).map_err(|e| e.to_string())? {
        match m {
            Message::Welcome(_) => welcome = true,
            Message::Error(e) => return Err(format!("refused: {}: {}", e.code, e.message)),
            _ => {}
        }
        used += n;
    }
    d.rx.drain(..used);
    Ok(welcome)
}
