//! Group commit for the registry: registry writes from many connections at
//! once share one transaction, and so one journal sync.
//!
//! Each write is a closure run inside its own savepoint
//! ([`Registry::atomically`] nests): a failing write rolls back alone, the
//! others of its batch still commit. A caller learns its result only after
//! the batch's COMMIT: `Ok` means durable. If the COMMIT fails, every write
//! of the batch gets that error and none of them happened.
//!
//! How batches form (leader/follower, no extra thread): a caller queues its
//! write, then takes the registry lock. Whoever holds the lock runs every
//! write queued by then, commits once, and hands out the results; a caller
//! whose write was already run by another finds its result waiting. While
//! one batch syncs, the next queues up. Blocking: call it from
//! `spawn_blocking`, never on an async worker.

use super::registry::{Registry, RegistryError};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// Delivers a write's result once its batch committed (or failed to).
type Deliver = Box<dyn FnOnce(Result<(), &RegistryError>) + Send>;
/// A queued write: runs in its savepoint, returns its delivery.
type Write = Box<dyn FnOnce(&Registry) -> Deliver + Send>;

/// Most writes in one transaction.
pub const MAX_BATCH: usize = 256;

/// The registry with group commit.
pub struct GroupCommit {
    registry: Arc<Mutex<Registry>>,
    queue: Mutex<Vec<Write>>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Group the writes to `registry`.
    pub fn new(registry: Arc<Mutex<Registry>>) -> Self {
        GroupCommit {
            registry,
            queue: Mutex::new(Vec::new()),
        }
    }

    /// Run `f` in a savepoint of a shared transaction and return its result
    /// once committed. Blocks (the journal sync).
    pub fn run<T, E>(
        &self,
        f: impl FnOnce(&Registry) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<RegistryError> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel::<Result<T, E>>(1);
        let write: Write = Box::new(move |reg: &Registry| {
            let result = reg.atomically(f);
            Box::new(move |commit: Result<(), &RegistryError>| {
                let _ = tx.send(match (commit, result) {
                    (Ok(()), r) => r,
                    (Err(e), _) => Err(RegistryError::Commit(e.to_string()).into()),
                });
            })
        });
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(write);
        loop {
            {
                let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    let batch: Vec<Write> = {
                        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                        let n = q.len().min(MAX_BATCH);
                        q.drain(..n).collect()
                    };
                    if batch.is_empty() {
                        break;
                    }
                    run_batch(&registry, batch);
                    // Ours may still be queued behind a full batch.
                    if let Ok(r) = rx.try_recv() {
                        return r;
                    }
                }
            }
            // Run by another holder of the lock: its result was delivered
            // before that lock was released.
            match rx.try_recv() {
                Ok(r) => return r,
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(RegistryError::Commit("the write was lost".into()).into());
                }
                Err(mpsc::TryRecvError::Empty) => {}
            }
        }
    }
}

fn run_batch(registry: &Registry, batch: Vec<Write>) {
    let mut deliveries = Vec::with_capacity(batch.len());
    let outcome = registry.atomically(|tx| {
        for w in batch {
            deliveries.push(w(tx));
        }
        Ok::<(), RegistryError>(())
    });
    let commit = outcome.as_ref().map(|_| ());
    for d in deliveries {
        d(commit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn concurrent_writes_commit_together_and_fail_alone() {
        let registry = Arc::new(Mutex::new(Registry::in_memory().unwrap()));
        let tokens: Vec<String> = {
            let r = registry.lock().unwrap();
            (0..40)
                .map(|i| {
                    r.create_token(&format!("gw-{i}"), false, Duration::from_secs(60), "")
                        .unwrap()
                        .secret
                        .expose()
                        .clone()
                })
                .collect()
        };
        let g = Arc::new(GroupCommit::new(registry.clone()));
        let handles: Vec<_> = tokens
            .clone()
            .into_iter()
            .enumerate()
            .map(|(i, tok)| {
                let g = g.clone();
                std::thread::spawn(move || {
                    g.run(move |r| {
                        let dev = format!("gw-{i}");
                        r.redeem(&tok, &dev, super::super::registry::now())?
                            .map_err(|_| RegistryError::UnknownDevice(dev.clone()))?;
                        let rec = crate::relay::registry::CertRecord {
                            serial: &format!("{i:02x}"),
                            spki: &[i as u8; 32],
                            not_before: 0,
                            not_after: 1,
                            issuer: None,
                        };
                        r.record_certificate(&dev, rec, crate::relay::registry::Replace::Grace)?;
                        if i % 4 == 0 {
                            // Fails after writing: this one alone rolls back.
                            return Err(RegistryError::UnknownDevice(dev));
                        }
                        Ok(i)
                    })
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 30);
        let r = registry.lock().unwrap();
        assert_eq!(r.devices().unwrap().len(), 30);
        // The failed ones' tokens were not spent; the others were.
        let now = super::super::registry::now();
        for (i, tok) in tokens.iter().enumerate() {
            let dev = format!("gw-{i}");
            assert_eq!(r.redeem(tok, &dev, now).unwrap().is_ok(), i % 4 == 0);
        }
    }
}
