//! A run's output directory: checked writable and locked before the first step, and refused
//! when it already holds another run, so that no run silently clobbers or interleaves with
//! another's checkpoints and metrics.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{io_err, Result, TrainError};

/// The lock file inside an output directory; it names the run holding it.
pub const LOCK_FILE: &str = ".icpo-lock";

/// How a run starts in its output directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartMode {
    /// A new run: the directory must hold no run yet.
    Fresh,
    /// A new run that deletes the checkpoints and metrics of the one already there.
    Overwrite,
    /// Continuing the run already there.
    Resume,
}

/// An output directory claimed for a run: exclusive (an OS file lock, released when this is
/// dropped or the process dies, even by `kill -9`) and known to be writable.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _lock: File,
}

fn dir_err(path: &Path, message: String) -> TrainError {
    TrainError::Config { key: format!("trainer.output_dir ({})", path.display()), message }
}

/// What of a run `dir` holds: `latest`, `metrics.jsonl`, checkpoint directories, `eval/`.
pub fn run_outputs(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name == "latest"
            || name == "metrics.jsonl"
            || name == "eval"
            || name.starts_with("step_")
        {
            found.push(name);
        }
    }
    found.sort();
    found
}

impl RunDir {
    /// Claims `path` for a run started as `mode`: creates it, checks that it is writable, takes
    /// the lock (failing at once, naming the holder, when another run has it), then refuses a
    /// [`StartMode::Fresh`] start over an existing run, or clears one for
    /// [`StartMode::Overwrite`].
    pub fn claim(path: &Path, mode: StartMode) -> Result<RunDir> {
        std::fs::create_dir_all(path).map_err(io_err(path))?;
        let probe = path.join(".icpo-write-probe");
        let written = File::create(&probe).and_then(|mut f| f.write_all(b"ok"));
        let _ = std::fs::remove_file(&probe);
        if let Err(e) = written {
            return Err(dir_err(path, format!("not writable: {e}")));
        }
        let lock_path = path.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() { "another process" } else { holder };
                return Err(dir_err(
                    path,
                    format!("in use by another run ({holder}); wait for it to end or choose another output directory"),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| std::env::var("HOSTNAME").unwrap_or_default());
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let holder = format!("pid {} on {host}, since unix time {since}", std::process::id());
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| lock.write_all(holder.as_bytes()))
            .map_err(io_err(&lock_path))?;
        let existing = run_outputs(path);
        match mode {
            StartMode::Fresh if !existing.is_empty() => {
                return Err(dir_err(
                    path,
                    format!(
                        "already holds a run ({}); pass --resume {} to continue it, or --overwrite (trainer.overwrite = true) to delete it and start again",
                        existing.join(", "),
                        path.display()
                    ),
                ));
            }
            StartMode::Overwrite => {
                for name in existing {
                    let p = path.join(&name);
                    if p.is_dir() {
                        std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
                    } else {
                        std::fs::remove_file(&p).map_err(io_err(&p))?;
                    }
                }
            }
            _ => {}
        }
        Ok(RunDir { path: path.to_path_buf(), _lock: lock })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("icpo-rundir-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn a_used_directory_is_refused_and_left_unchanged() {
        let dir = tmp("used");
        std::fs::create_dir_all(dir.join("step_000002")).unwrap();
        std::fs::write(dir.join("metrics.jsonl"), "{\"step\":0}\n").unwrap();
        std::fs::write(dir.join("latest"), "step_000002").unwrap();
        let e = RunDir::claim(&dir, StartMode::Fresh).unwrap_err().to_string();
        assert!(e.contains("--resume") && e.contains("--overwrite"), "{e}");
        assert_eq!(std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap(), "{\"step\":0}\n");
        assert_eq!(std::fs::read_to_string(dir.join("latest")).unwrap(), "step_000002");
        assert!(dir.join("step_000002").is_dir());
        let resumed = RunDir::claim(&dir, StartMode::Resume).unwrap();
        drop(resumed);
        let _over = RunDir::claim(&dir, StartMode::Overwrite).unwrap();
        assert!(run_outputs(&dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_claim_fails_at_once_naming_the_holder() {
        let dir = tmp("locked");
        let first = RunDir::claim(&dir, StartMode::Fresh).unwrap();
        let t = std::time::Instant::now();
        let e = RunDir::claim(&dir, StartMode::Resume).unwrap_err().to_string();
        assert!(t.elapsed().as_secs_f64() < 1.0);
        assert!(e.contains("in use by another run"), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(first);
        RunDir::claim(&dir, StartMode::Fresh).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_directory_is_found_at_start() {
        let e = RunDir::claim(Path::new("/proc/icpo-not-here"), StartMode::Fresh).unwrap_err();
        assert!(e.to_string().contains("/proc/icpo-not-here"), "{e}");
    }
}
