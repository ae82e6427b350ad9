//! Checkpoints: the policy in Hugging Face layout, optimiser moments, data cursor, step and the
//! resolved config. A checkpoint is written complete into a temporary directory, flushed, and
//! only then swapped in by a short sequence of renames and deletes ([`swap_plan`]) in which no
//! complete checkpoint is deleted before its replacement is in place: a crash between any two
//! of them leaves `latest` resolvable ([`resolve_latest`]) to a complete checkpoint.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use icpo_policy::sync_dir;

use crate::data::Cursor;
use crate::error::{io_err, write_atomic, Result, TrainError};
use crate::resume_check::{check_config, ConfigChange};
use crate::rundir::{RunDir, StartMode};
use crate::trainer::{Metrics, Trainer};

/// What `trainer_state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerState {
    /// Steps completed.
    pub step: u64,
    /// Data position.
    pub cursor: Cursor,
    /// Non-finite updates in a row so far.
    pub nonfinite_streak: u32,
    /// The resolved config of the run; a resume compares its own against it.
    pub config: serde_json::Value,
}

/// Written last into a checkpoint: its presence marks the checkpoint complete.
const STATE_FILE: &str = "trainer_state.json";

const TOKENIZER_FILES: [&str; 4] =
    ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"];

/// Appends one JSON line to `path`.
pub fn append_jsonl(path: &Path, m: &Metrics) -> Result<()> {
    use std::io::Write;
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io_err(path))?;
    let line = serde_json::to_string(m)
        .map_err(|e| TrainError::Aborted(format!("metrics not serialisable: {e}")))?;
    writeln!(f, "{line}").map_err(io_err(path))
}

/// One file operation of swapping a written checkpoint into place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FsOp {
    /// Point `latest` at this directory name (an atomic write).
    Latest(String),
    /// Delete this directory.
    Remove(PathBuf),
    /// Rename a directory.
    Rename(PathBuf, PathBuf),
}

/// The operations that put the complete checkpoint `tmp` in place as `name` under `out`. When
/// a checkpoint `name` already exists, `latest` first moves to `tmp`, so the old one is deleted
/// only once a complete replacement is what `latest` names.
pub(crate) fn swap_plan(out: &Path, name: &str, tmp_name: &str) -> Vec<FsOp> {
    let (final_dir, tmp) = (out.join(name), out.join(tmp_name));
    let mut ops = Vec::new();
    if final_dir.exists() {
        ops.push(FsOp::Latest(tmp_name.to_string()));
        ops.push(FsOp::Remove(final_dir.clone()));
    }
    ops.push(FsOp::Rename(tmp, final_dir));
    ops.push(FsOp::Latest(name.to_string()));
    ops
}

/// Runs `ops` in order; with `crash_after = Some(k)` stops after the first `k`, as a crash there
/// would (tests inject it between every pair of operations).
pub(crate) fn run_plan(out: &Path, ops: &[FsOp], crash_after: Option<usize>) -> Result<()> {
    for (i, op) in ops.iter().enumerate() {
        if crash_after == Some(i) {
            return Ok(());
        }
        match op {
            FsOp::Latest(name) => write_atomic(&out.join("latest"), name.as_bytes())?,
            FsOp::Remove(p) => std::fs::remove_dir_all(p).map_err(io_err(p))?,
            FsOp::Rename(a, b) => {
                std::fs::rename(a, b).map_err(io_err(b))?;
                sync_dir(out);
            }
        }
    }
    Ok(())
}

fn complete(dir: &Path) -> bool {
    dir.join(STATE_FILE).is_file()
}

/// The complete checkpoint `out/latest` stands for, repairing what a crash mid-swap left: when
/// `latest` names `step_N.tmp` (complete), it is renamed to `step_N` (deleting the `step_N` it
/// replaces) and `latest` updated; when it names a `step_N.tmp` already renamed, `latest` is
/// updated. An error names what is missing or incomplete.
pub fn resolve_latest(out: &Path) -> Result<PathBuf> {
    let latest = out.join("latest");
    let name = std::fs::read_to_string(&latest).map_err(io_err(&latest))?;
    let name = name.trim();
    let named = out.join(name);
    if let Some(base) = name.strip_suffix(".tmp") {
        if complete(&named) {
            // The rest of the interrupted swap (it deletes a `step_N` it replaces).
            run_plan(out, &swap_plan(out, base, name), None)?;
            return Ok(out.join(base));
        }
        // The rename was done, `latest` not yet updated.
        let final_dir = out.join(base);
        if !named.exists() && complete(&final_dir) {
            write_atomic(&latest, base.as_bytes())?;
            return Ok(final_dir);
        }
    }
    if complete(&named) {
        return Ok(named);
    }
    Err(TrainError::Data {
        path: latest,
        line: 1,
        message: format!("names `{name}`, which is missing or incomplete (no {STATE_FILE})"),
    })
}

impl Trainer {
    /// Writes `out/step_NNNNNN/` (policy/, the optimiser state — `optimizer.safetensors`, or
    /// `optimizer/` with one file per rank and an index when sharded —, trainer_state.json) and
    /// points `out/latest` at it. `tokenizer_dir` files are copied into policy/ when given via
    /// `ModelSection.path`. Data parallel: every rank calls it (rank 0 writes all but the
    /// other ranks' optimiser shards) and it returns once the checkpoint is in place.
    pub fn save_checkpoint(&self, out: &Path) -> Result<PathBuf> {
        let name = self.checkpoint_name();
        let tmp_name = format!("{name}.tmp");
        let tmp = out.join(&tmp_name);
        let main = self.is_main();
        if main {
            self.write_policy(&tmp)?;
        }
        let params = self.policy.named_weights().into_iter().collect();
        // Sharded state: each rank writes its file once rank 0 has made the folder.
        self.optim.save(&tmp, &params, self.group.as_ref())?;
        if main {
            let state = TrainerState {
                step: self.step,
                cursor: self.cursor,
                nonfinite_streak: self.nonfinite_streak,
                config: serde_json::to_value(&self.cfg)
                    .map_err(|e| TrainError::Aborted(format!("config not serialisable: {e}")))?,
            };
            let text = serde_json::to_string_pretty(&state)
                .map_err(|e| TrainError::Aborted(e.to_string()))?;
            write_atomic(&tmp.join(STATE_FILE), text.as_bytes())?;
            sync_dir(&tmp);
            run_plan(out, &swap_plan(out, &name, &tmp_name), None)?;
        }
        if self.group.world_size() > 1 {
            self.group.barrier("checkpoint written")?;
        }
        Ok(out.join(name))
    }

    /// A fresh `tmp` with the policy (and its tokenizer files) in `tmp/policy`.
    fn write_policy(&self, tmp: &Path) -> Result<()> {
        if tmp.exists() {
            // A leftover of a crash; never the target of `latest` here (resolve_latest renames
            // a complete one away before a run goes on).
            std::fs::remove_dir_all(tmp).map_err(io_err(tmp))?;
        }
        std::fs::create_dir_all(tmp).map_err(io_err(tmp))?;
        let policy_dir = tmp.join("policy");
        self.policy.save_pretrained(&policy_dir)?;
        let src = Path::new(&self.cfg.model.path);
        for f in TOKENIZER_FILES {
            if src.join(f).exists() {
                let bytes = std::fs::read(src.join(f)).map_err(io_err(src.join(f)))?;
                write_atomic(&policy_dir.join(f), &bytes)?;
            }
        }
        sync_dir(&policy_dir);
        Ok(())
    }

    /// [`Trainer::resume_with`] accepting no change of the run's meaning.
    pub fn resume(&mut self, dir: &Path) -> Result<Vec<ConfigChange>> {
        self.resume_with(dir, &[])
    }

    /// Continues from a checkpoint directory (`out/step_NNNNNN`, or `out` to use `latest`):
    /// weights, optimiser state (validated against the policy), data cursor and step.
    ///
    /// The config in force is compared with the one saved in the checkpoint: a difference in
    /// anything that changes the run's meaning (lr, group size, seed, data, IEF, schedule,
    /// model, ...) is refused unless its key is in `explicit` (the `--set` overrides the user
    /// passed); differences that do not (total steps, output and evaluation settings, device,
    /// decoding streams) are accepted. Every accepted difference is returned, for the log.
    ///
    /// The output directory is claimed (locked) first. Its `metrics.jsonl` keeps the lines of
    /// the steps the checkpoint covers; later lines (from a run that went on past it) are
    /// dropped so the resumed run appends in order.
    pub fn resume_with(&mut self, dir: &Path, explicit: &[String]) -> Result<Vec<ConfigChange>> {
        let out = self.output_dir();
        if self.is_main() && self.run_dir.is_none() {
            self.run_dir = Some(RunDir::claim(&out, StartMode::Resume)?);
        }
        let resolve = |d: &Path| {
            if d.join("latest").exists() {
                resolve_latest(d)
            } else {
                Ok(d.to_path_buf())
            }
        };
        // Data parallel: rank 0 resolves (and may repair) `latest` first, the others after it.
        let dir = if self.group.world_size() == 1 {
            resolve(dir)?
        } else if self.is_main() {
            let resolved = resolve(dir);
            self.group.barrier("resolving the checkpoint")?;
            resolved?
        } else {
            self.group.barrier("resolving the checkpoint")?;
            resolve(dir)?
        };
        let state_path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&state_path).map_err(io_err(&state_path))?;
        let state: TrainerState = serde_json::from_str(&text).map_err(|e| TrainError::Data {
            path: state_path.clone(),
            line: e.line(),
            message: e.to_string(),
        })?;
        let now = serde_json::to_value(&self.cfg)
            .map_err(|e| TrainError::Aborted(format!("config not serialisable: {e}")))?;
        let changes = check_config(&state.config, &now, explicit, &state_path)?;
        icpo_policy::load_safetensors(&dir.join("policy"), &self.policy.named_weights())?;
        // Either layout, written at any world size, into this run's own.
        self.optim.load(&dir, &self.policy.named_weights(), self.group.as_ref())?;
        self.step = state.step;
        self.cursor = state.cursor;
        self.nonfinite_streak = state.nonfinite_streak;
        self.resumed = true;
        let metrics = out.join("metrics.jsonl");
        if self.is_main() && metrics.exists() {
            let text = std::fs::read_to_string(&metrics).map_err(io_err(&metrics))?;
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_f64())
                        .is_some_and(|s| (s as u64) < state.step)
                })
                .collect();
            let mut body = kept.join("\n");
            if !body.is_empty() {
                body.push('\n');
            }
            write_atomic(&metrics, body.as_bytes())?;
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("icpo-ckpt-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// A stand-in checkpoint: complete, tagged with its version.
    fn write_ckpt(dir: &Path, tag: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("weights"), tag).unwrap();
        std::fs::write(dir.join(STATE_FILE), tag).unwrap();
    }

    fn tag_of(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("weights")).unwrap()
    }

    /// A crash after any prefix of the swap (re-saving an existing checkpoint, or saving a new
    /// one over an older `latest`) leaves `latest` resolving to a complete checkpoint, old or
    /// new; a later save then completes.
    #[test]
    fn a_crash_between_any_two_operations_leaves_a_resumable_run() {
        for existing in [true, false] {
            let plan_len = swap_plan(&tmp("len"), "step_000002", "step_000002.tmp").len()
                + usize::from(existing) * 2;
            for crash_after in 0..=plan_len {
                let out = tmp(&format!("crash-{existing}-{crash_after}"));
                write_ckpt(&out.join("step_000001"), "one");
                if existing {
                    write_ckpt(&out.join("step_000002"), "two-old");
                    std::fs::write(out.join("latest"), "step_000002").unwrap();
                } else {
                    std::fs::write(out.join("latest"), "step_000001").unwrap();
                }
                write_ckpt(&out.join("step_000002.tmp"), "two-new");
                let ops = swap_plan(&out, "step_000002", "step_000002.tmp");
                run_plan(&out, &ops, Some(crash_after)).unwrap();
                let resolved = resolve_latest(&out).unwrap();
                let tag = tag_of(&resolved);
                let want: &[&str] = match (existing, crash_after >= ops.len()) {
                    (_, true) => &["two-new"],
                    (true, false) => &["two-old", "two-new"],
                    (false, false) => &["one", "two-new"],
                };
                assert!(
                    want.contains(&tag.as_str()),
                    "existing {existing}, crash after {crash_after}: {tag}"
                );
                // Resolving again is stable, and names a directory without `.tmp`.
                assert_eq!(resolve_latest(&out).unwrap(), resolved);
                assert!(!resolved.to_string_lossy().ends_with(".tmp"));
                std::fs::remove_dir_all(&out).unwrap();
            }
        }
    }

    #[test]
    fn a_missing_or_incomplete_latest_is_named() {
        let out = tmp("incomplete");
        std::fs::create_dir_all(out.join("step_000003")).unwrap();
        std::fs::write(out.join("latest"), "step_000003").unwrap();
        let e = resolve_latest(&out).unwrap_err().to_string();
        assert!(e.contains("step_000003") && e.contains("incomplete"), "{e}");
        std::fs::remove_dir_all(&out).unwrap();
    }
}
