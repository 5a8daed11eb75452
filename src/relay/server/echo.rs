//! The `echo` control message on the relay: one session's uplink flow sent
//! straight back to it on the downlink flow (`voxgate setup` measures its
//! round trip and loss with it), for that session only, whatever the
//! relay's downlink mode says for the others. An echoed flow is not
//! recorded: it is a measurement, not speech.

use super::media::{Flows, lock};
use super::{Downlink, RelayCtx, SessionError, open_down, refuse};
use crate::proto::control::{Echo, Message};
use crate::transport::framed;
use std::sync::Mutex;

/// A session's `echo` request: one of its uplink flows back on the
/// downlink flow (announced first), answered with the same message; refused
/// while the relay plays a file down (two sources on one flow) or for a
/// flow the device did not open.
pub(super) async fn request(
    send: &mut quinn::SendStream,
    ctx: &RelayCtx,
    flows: &Mutex<Flows>,
    e: Echo,
    down_ssrc: u32,
) -> Result<(), SessionError> {
    if matches!(ctx.downlink, Downlink::Packets(_)) {
        refuse(
            send,
            "echo_unavailable",
            "this relay plays a file on the downlink; no echo",
        )
        .await?;
        return Ok(());
    }
    let (known, down_open) = {
        let fl = lock(flows);
        (fl.up.contains(e.flow), fl.down_open)
    };
    if e.on && !known {
        refuse(
            send,
            "echo_unknown_flow",
            "open the uplink flow before asking for its echo",
        )
        .await?;
        return Ok(());
    }
    if e.on && !down_open {
        open_down(send, down_ssrc, 20).await?;
    }
    {
        let mut fl = lock(flows);
        // An echoed flow is a measurement, not speech: it is not recorded
        // (its file, opened with the flow, is removed).
        if e.on
            && let Some(f) = fl.up.get_mut(e.flow)
            && let Some(rec) = f.recorder.take()
        {
            drop(rec);
            let _ = std::fs::remove_file(&f.path);
        }
        fl.down_open |= e.on;
        fl.echo = e.on.then_some(e.flow);
    }
    framed::send(send, &Message::Echo(e)).await?;
    Ok(())
}
