//! The run loop: steps until `trainer.total_steps`, each step's metrics to a sink
//! (`metrics.jsonl` by default), checkpoints every `save_every` steps, and a callback after each
//! step that may stop the run cleanly.

use std::path::PathBuf;

use crate::error::{Result, TrainError};
use crate::rundir::{RunDir, StartMode};
use crate::trainer::{Metrics, Trainer};

/// Where a run's per-step metrics go (burn's metric loggers, verl's trackers). The default
/// appends JSON lines to `<output_dir>/metrics.jsonl`; closures `FnMut(&Metrics) -> Result<()>`
/// implement it.
pub trait MetricsSink: Send {
    /// Records one step's metrics (the key `step` holds its index).
    fn record(&mut self, metrics: &Metrics) -> Result<()>;
}

impl<F> MetricsSink for F
where
    F: FnMut(&Metrics) -> Result<()> + Send,
{
    fn record(&mut self, metrics: &Metrics) -> Result<()> {
        self(metrics)
    }
}

/// Appends each step's metrics as one JSON line to a file (crash-safe, see
/// [`crate::append_jsonl`]): the default sink, at `<output_dir>/metrics.jsonl`.
#[derive(Debug, Clone)]
pub struct JsonlSink {
    /// The file.
    pub path: PathBuf,
}

impl MetricsSink for JsonlSink {
    fn record(&mut self, metrics: &Metrics) -> Result<()> {
        crate::checkpoint::append_jsonl(&self.path, metrics)
    }
}

/// What a [`Trainer::fit_until`] callback asks for after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on to the next step.
    Continue,
    /// Stop now: the step just taken is checkpointed (resumable) and `fit_until` returns Ok.
    Stop,
}

impl Trainer {
    /// Sends `fit`'s per-step metrics to `sink` instead of `metrics.jsonl` (None: back to it).
    pub fn set_metrics_sink(&mut self, sink: Option<Box<dyn MetricsSink>>) {
        self.sink = sink;
    }

    /// Runs steps until `trainer.total_steps`, recording each step's metrics (see
    /// [`Trainer::set_metrics_sink`]), evaluating when a [`crate::PeriodicEval`] is set (its
    /// accuracies join the step's metrics), checkpointing every `save_every` steps and at the
    /// end, and calling `on_step` (progress bars, early stopping) after each step.
    ///
    /// Before the first step the output directory is claimed ([`RunDir::claim`]): writable,
    /// locked for the run's lifetime, and, unless [`Trainer::resume`] ran first, holding no
    /// earlier run (or cleared of it with `trainer.overwrite`). A resumed run whose checkpoint
    /// already reached `trainer.total_steps` is an error saying so, not a silent success.
    pub fn fit(&mut self, mut on_step: impl FnMut(&Trainer, &Metrics) -> Result<()>) -> Result<()> {
        self.fit_until(|t, m| on_step(t, m).map(|()| Control::Continue))
    }

    /// [`Trainer::fit`] whose callback may stop the run cleanly ([`Control::Stop`]: early
    /// stopping on an evaluation, a time budget): the last step is checkpointed before it
    /// returns, so `--resume` continues from there.
    pub fn fit_until(
        &mut self,
        mut on_step: impl FnMut(&Trainer, &Metrics) -> Result<Control>,
    ) -> Result<()> {
        let out = self.output_dir();
        // Rank 0 owns the output folder: only it claims, records and checkpoints.
        let main = self.is_main();
        if main && self.run_dir.is_none() {
            let mode = match (self.resumed, self.cfg.trainer.overwrite) {
                (true, _) => StartMode::Resume,
                (false, true) => StartMode::Overwrite,
                (false, false) => StartMode::Fresh,
            };
            self.run_dir = Some(RunDir::claim(&out, mode)?);
        }
        if self.resumed && self.step >= self.cfg.trainer.total_steps {
            return Err(TrainError::Config {
                key: "trainer.total_steps".into(),
                message: format!(
                    "the resumed checkpoint is at step {}, which already reaches total_steps = {}: nothing to do (raise trainer.total_steps to train further)",
                    self.step, self.cfg.trainer.total_steps
                ),
            });
        }
        let mut sink = self.sink.take();
        let result = (|| -> Result<()> {
            let mut jsonl = JsonlSink { path: out.join("metrics.jsonl") };
            while self.step < self.cfg.trainer.total_steps {
                let mut m = self.train_step()?;
                let total = self.cfg.trainer.total_steps;
                if let Some(ev) = self.evaluation.as_ref().filter(|e| e.due(self.step, total)) {
                    m.extend(ev.run(self, main.then_some(out.as_path()))?);
                }
                match sink.as_mut() {
                    Some(s) if main => s.record(&m)?,
                    None if main => jsonl.record(&m)?,
                    _ => {}
                }
                let every = self.cfg.trainer.save_every;
                let saved = (every > 0 && self.step.is_multiple_of(every))
                    || self.step == self.cfg.trainer.total_steps;
                if saved {
                    self.save_checkpoint(&out)?;
                }
                // Every rank must stop at the same step: rank 0's callback decides.
                let mut stop = on_step(self, &m)? == Control::Stop;
                if self.group.world_size() > 1 {
                    let b = self.group.broadcast_bytes("stop?", &[u8::from(stop)], 0)?;
                    stop = b.first() == Some(&1);
                }
                if stop {
                    if !saved {
                        self.save_checkpoint(&out)?;
                    }
                    break;
                }
            }
            Ok(())
        })();
        self.sink = sink;
        result
    }
}
