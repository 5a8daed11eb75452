//! Retention of recordings (`[recording]`): files older than the age limit
//! are deleted, then the oldest until the rest fit the size limit. The plan
//! ([`plan`]) is sans-IO and tested in simulated time; [`sweep`] lists the
//! recordings directory and deletes what the plan says (blocking: run it
//! on the blocking pool). The relay sweeps at start and every
//! [`SWEEP_EVERY`].

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Time between two sweeps.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The retention limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Recordings older than this are deleted.
    pub max_age: Duration,
    /// The recordings together are kept under this many bytes.
    pub max_total_bytes: u64,
}

/// One recording file as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Its path.
    pub path: PathBuf,
    /// Last written.
    pub modified: SystemTime,
    /// Size in bytes.
    pub bytes: u64,
}

/// The files to delete at `now`: every one older than the age limit, then
/// the oldest of the rest until what is left fits the size limit.
pub fn plan(mut files: Vec<FileInfo>, now: SystemTime, r: Retention) -> Vec<PathBuf> {
    files.sort_by_key(|f| f.modified);
    let mut total: u64 = files.iter().map(|f| f.bytes).sum();
    let mut out = Vec::new();
    for f in files {
        let age = now.duration_since(f.modified).unwrap_or_default();
        if age > r.max_age || total > r.max_total_bytes {
            total -= f.bytes;
            out.push(f.path);
        }
    }
    out
}

/// What a sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Files deleted.
    pub deleted: u64,
    /// Bytes freed.
    pub bytes: u64,
    /// Bytes kept.
    pub kept: u64,
}

/// Every recording under `dir` (`DEVICE/FILE`).
pub fn list(dir: &Path) -> std::io::Result<Vec<FileInfo>> {
    let mut files = Vec::new();
    for dev in std::fs::read_dir(dir)?.flatten() {
        if !dev.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(dev.path()) else {
            continue;
        };
        for f in entries.flatten() {
            let Ok(meta) = f.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            files.push(FileInfo {
                path: f.path(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                bytes: meta.len(),
            });
        }
    }
    Ok(files)
}

/// List `dir` (`DEVICE/FILE.ogg`), delete what [`plan`] says.
pub fn sweep(dir: &Path, r: Retention) -> std::io::Result<Swept> {
    let files = list(dir)?;
    let total: u64 = files.iter().map(|f| f.bytes).sum();
    let sizes: std::collections::HashMap<PathBuf, u64> =
        files.iter().map(|f| (f.path.clone(), f.bytes)).collect();
    let mut s = Swept {
        kept: total,
        ..Swept::default()
    };
    for p in plan(files, SystemTime::now(), r) {
        if std::fs::remove_file(&p).is_ok() {
            let b = sizes.get(&p).copied().unwrap_or(0);
            s.deleted += 1;
            s.bytes += b;
            s.kept -= b;
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn file(name: &str, days_old: u64, bytes: u64, now: SystemTime) -> FileInfo {
        FileInfo {
            path: PathBuf::from(name),
            modified: now - DAY * days_old as u32,
            bytes,
        }
    }

    #[test]
    fn old_files_go_then_the_oldest_until_the_rest_fit() {
        let now = SystemTime::UNIX_EPOCH + DAY * 20_000;
        let r = Retention {
            max_age: DAY * 30,
            max_total_bytes: 1000,
        };
        let files = vec![
            file("new", 0, 400, now),
            file("old", 31, 10, now),
            file("mid", 10, 400, now),
            file("older", 20, 400, now),
        ];
        // 1210 bytes: "old" goes for its age, "older" for the size.
        assert_eq!(
            plan(files, now, r),
            vec![PathBuf::from("old"), "older".into()]
        );
    }

    #[test]
    fn within_the_limits_nothing_goes() {
        let now = SystemTime::UNIX_EPOCH + DAY * 20_000;
        let r = Retention {
            max_age: DAY * 30,
            max_total_bytes: 10 << 30,
        };
        let files = (0..30)
            .map(|d| file(&format!("f{d}"), d, 1 << 20, now))
            .collect();
        assert!(plan(files, now, r).is_empty());
    }

    #[test]
    fn sweep_deletes_on_disk() {
        let dir = std::env::temp_dir().join(format!("voxgate-retention-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("gw")).unwrap();
        for i in 0..5 {
            std::fs::write(dir.join("gw").join(format!("{i}.ogg")), vec![0u8; 100]).unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        let s = sweep(
            &dir,
            Retention {
                max_age: DAY,
                max_total_bytes: 250,
            },
        )
        .unwrap();
        assert_eq!((s.deleted, s.bytes, s.kept), (3, 300, 200));
        assert!(dir.join("gw/4.ogg").exists() && !dir.join("gw/0.ogg").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
