//! Checkpoints: the policy in Hugging Face layout, optimiser moments, data cursor and step,
//! written to a temporary directory and renamed into place, so a crash mid-write never leaves
//! a checkpoint that looks complete.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::Cursor;
use crate::error::{io_err, write_atomic, Result, TrainError};
use crate::optim::AdamW;
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
    /// The config in force (for the record; resuming uses the caller's).
    pub config: serde_json::Value,
}

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

impl Trainer {
    /// Writes `out/step_NNNNNN/` (policy/, optimizer.safetensors, trainer_state.json) and
    /// points `out/latest` at it. `tokenizer_dir` files are copied into policy/ when given via
    /// `ModelSection.path`.
    pub fn save_checkpoint(&self, out: &Path) -> Result<PathBuf> {
        let final_dir = out.join(self.checkpoint_name());
        let tmp = out.join(format!("{}.tmp", self.checkpoint_name()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let policy_dir = tmp.join("policy");
        self.policy.save_pretrained(&policy_dir)?;
        let src = Path::new(&self.cfg.model.path);
        for f in TOKENIZER_FILES {
            if src.join(f).exists() {
                std::fs::copy(src.join(f), policy_dir.join(f))
                    .map_err(io_err(policy_dir.join(f)))?;
            }
        }
        self.optim.save(&tmp.join("optimizer.safetensors"))?;
        let state = TrainerState {
            step: self.step,
            cursor: self.cursor,
            nonfinite_streak: self.nonfinite_streak,
            config: serde_json::to_value(&self.cfg).unwrap_or(serde_json::Value::Null),
        };
        let text =
            serde_json::to_string_pretty(&state).map_err(|e| TrainError::Aborted(e.to_string()))?;
        write_atomic(&tmp.join("trainer_state.json"), text.as_bytes())?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(io_err(&final_dir))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(io_err(&final_dir))?;
        write_atomic(&out.join("latest"), self.checkpoint_name().as_bytes())?;
        Ok(final_dir)
    }

    /// Continues from a checkpoint directory (`out/step_NNNNNN`, or `out` to use `latest`):
    /// weights, optimiser state, data cursor and step. `metrics.jsonl` beside it keeps the lines
    /// of the steps the checkpoint covers; later lines (from a run that went on past it) are
    /// dropped so the resumed run appends in order.
    pub fn resume(&mut self, dir: &Path) -> Result<()> {
        let dir = if dir.join("latest").exists() {
            let name =
                std::fs::read_to_string(dir.join("latest")).map_err(io_err(dir.join("latest")))?;
            dir.join(name.trim())
        } else {
            dir.to_path_buf()
        };
        let state_path = dir.join("trainer_state.json");
        let text = std::fs::read_to_string(&state_path).map_err(io_err(&state_path))?;
        let state: TrainerState = serde_json::from_str(&text).map_err(|e| TrainError::Data {
            path: state_path.clone(),
            line: e.line(),
            message: e.to_string(),
        })?;
        icpo_policy::load_safetensors(&dir.join("policy"), &self.policy.named_weights())?;
        self.optim = AdamW::load(&dir.join("optimizer.safetensors"), self.policy.device())?;
        self.step = state.step;
        self.cursor = state.cursor;
        self.nonfinite_streak = state.nonfinite_streak;
        if let Some(out) = dir.parent() {
            let metrics = out.join("metrics.jsonl");
            if metrics.exists() {
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
        }
        Ok(())
    }
}
