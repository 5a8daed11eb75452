//! What happens to calls, as the switch reports it: one [`CallEvent`] per
//! ringing leg, answer, fallback and end, in the order they happen. The
//! shell hands them on (a broadcast that the webhooks and the API read);
//! the switch neither waits for nor depends on anyone reading them.

use super::CallId;
use crate::proto::signal::EndReason;
use serde::Serialize;

/// One thing that happened to call `call`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallEvent {
    /// The call, as the API addresses it.
    pub call: CallId,
    /// The calling extension (a phone's, or the one an application rang first).
    pub from: String,
    /// The number dialled or asked for (an extension, `900`, `901`).
    pub to: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The kinds of [`CallEvent`], named as the webhooks name them
/// ([`EventKind::name`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// Extension `ext` is ringing (once per leg).
    Ringing {
        /// The ringing extension.
        ext: String,
    },
    /// `ext` answered: a phone, or the service (`900`, `901`) a call reached.
    Answered {
        /// The extension or service that answered.
        ext: String,
    },
    /// The callee `callee` was replaced by the configured fallback.
    Fallback {
        /// The extension that did not take the call.
        callee: String,
        /// The fallback: an extension, or `message` (a recorded message).
        target: String,
        /// Why the callee did not take it (`timeout`, `busy`, `declined`,
        /// `unavailable`, `not_found`).
        reason: EndReason,
    },
    /// An answered call ended.
    Ended {
        /// Why (`normal`: a hang-up).
        reason: EndReason,
    },
    /// A call ended before it was ever answered.
    Failed {
        /// Why (`normal`: the caller gave up, or an application hung up).
        reason: EndReason,
    },
}

impl EventKind {
    /// The event's name in webhooks: `call.ringing`, `call.answered`,
    /// `call.fallback`, `call.ended`, `call.failed`.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Ringing { .. } => "call.ringing",
            EventKind::Answered { .. } => "call.answered",
            EventKind::Fallback { .. } => "call.fallback",
            EventKind::Ended { .. } => "call.ended",
            EventKind::Failed { .. } => "call.failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_flat_with_their_kind() {
        let e = CallEvent {
            call: 7,
            from: "201".into(),
            to: "301".into(),
            kind: EventKind::Fallback {
                callee: "301".into(),
                target: "message".into(),
                reason: EndReason::Timeout,
            },
        };
        assert_eq!(e.kind.name(), "call.fallback");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"call":7,"from":"201","to":"301","event":"fallback","callee":"301","target":"message","reason":"timeout"}"#
        );
    }
}
