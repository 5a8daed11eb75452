//! One locked connection to the TPM for the length of an operation:
//! encode, exchange, and flush what was loaded whatever happened.

use super::blob::Object;
use super::commands;
use super::error::TpmError;
use super::transport::Transport;
use std::time::Duration;
use tpm2_protocol::basic::{TpmBuffer, TpmHandle};
use tpm2_protocol::data::Tpm2bPublic;
use tpm2_protocol::frame as f;
use zeroize::Zeroizing;

/// One locked connection, for the length of an operation.
pub(crate) struct Conn<'a> {
    pub(crate) t: &'a mut dyn Transport,
    pub(crate) timeout: Duration,
    /// Handles not flushed because the connection broke.
    pub(crate) orphans: Vec<u32>,
}

impl Conn<'_> {
    fn call(&mut self, name: &'static str, cmd: &[u8]) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        self.t.transact(name, cmd, self.timeout)
    }

    pub(crate) fn run<C: f::TpmFrame>(
        &mut self,
        name: &'static str,
        cmd: &C,
        auth: usize,
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let bytes = commands::encode(name, cmd, auth)?;
        self.call(name, &bytes)
    }

    pub(crate) fn flush(&mut self, handle: u32) -> Result<(), TpmError> {
        const N: &str = "TPM2_FlushContext";
        let cmd = f::TpmFlushContextCommand {
            handles: [],
            flush_handle: TpmHandle::new(handle),
        };
        let resp = self.run(N, &cmd, 0)?;
        commands::decode::<f::TpmFlushContextResponse>(N, &resp).map(|_| ())
    }

    pub(crate) fn create_primary(&mut self) -> Result<u32, TpmError> {
        let resp = self.run("TPM2_CreatePrimary", &commands::create_primary(), 1)?;
        commands::parse_create_primary(&resp)
    }

    pub(crate) fn load(&mut self, parent: u32, obj: &Object) -> Result<u32, TpmError> {
        const N: &str = "TPM2_Load";
        let cmd = f::TpmLoadCommand {
            handles: [TpmHandle::new(parent)],
            in_private: TpmBuffer::try_from(&obj.private[..]).map_err(|e| TpmError::Encode {
                command: N,
                what: format!("{e:?}"),
            })?,
            in_public: Tpm2bPublic {
                inner: obj.public.clone(),
            },
        };
        commands::parse_load(&self.run(N, &cmd, 1)?)
    }

    /// Run `f` with `handle` loaded, then flush it whatever `f` returned.
    pub(crate) fn scoped<T>(
        &mut self,
        handle: u32,
        f: impl FnOnce(&mut Self, u32) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let r = f(self, handle);
        if matches!(&r, Err(e) if e.breaks_transport()) {
            // Out of step with the TPM: flushing now would only wait for
            // another timeout. Flushed after reconnecting.
            self.orphans.push(handle);
            return r;
        }
        let flushed = self.flush(handle);
        if matches!(&flushed, Err(e) if e.breaks_transport()) {
            self.orphans.push(handle);
        }
        match (r, flushed) {
            (Ok(v), Ok(())) => Ok(v),
            (Ok(_), Err(e)) => Err(e),
            (Err(e), Ok(())) => Err(e),
            (Err(e), Err(fe)) => {
                tracing::warn!(handle, error = %fe, "TPM object not flushed after a failure");
                Err(e)
            }
        }
    }
}
