//! Training problems and the resumable, seeded cursor over them.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, TrainError};

/// A training or evaluation problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Identifier (`id`, else the line number).
    pub id: String,
    /// The problem statement.
    pub problem: String,
    /// The reference answer.
    pub answer: String,
}

/// Reads JSONL with `problem` and `answer` (a string or a number) per line; `id` optional.
/// Rows whose answer is null are skipped (MATH train has two); any other malformed line is an
/// error naming the file and line. Returns the problems and how many rows were skipped.
pub fn load_problems(path: impl AsRef<Path>) -> Result<(Vec<Problem>, usize)> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut out = Vec::new();
    let mut skipped = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| TrainError::Data { path: path.into(), line: i + 1, message };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| err(format!("malformed JSON: {e}")))?;
        let problem =
            v["problem"].as_str().ok_or_else(|| err("missing string field `problem`".into()))?;
        let answer = match &v["answer"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Null => {
                skipped += 1;
                continue;
            }
            other => return Err(err(format!("field `answer` must be a string, got {other}"))),
        };
        let id = v["id"].as_str().map_or_else(|| format!("line {}", i + 1), str::to_owned);
        out.push(Problem { id, problem: problem.to_string(), answer });
    }
    if out.is_empty() {
        return Err(TrainError::Data { path: path.into(), line: 0, message: "no problems".into() });
    }
    Ok((out, skipped))
}

/// Position in the training data: epoch and index into that epoch's (seeded) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Completed epochs.
    pub epoch: u64,
    /// Next index in the epoch's order.
    pub index: usize,
}

impl Cursor {
    /// The start of the data.
    pub fn start() -> Self {
        Cursor { epoch: 0, index: 0 }
    }

    fn order(epoch: u64, len: usize, seed: u64, shuffle: bool) -> Vec<usize> {
        let mut order: Vec<usize> = (0..len).collect();
        if shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(epoch);
            order.shuffle(&mut rng);
        }
        order
    }

    /// The next `n` problem indices, wrapping into new epochs (each with its own order).
    pub fn take(&mut self, n: usize, len: usize, seed: u64, shuffle: bool) -> Vec<usize> {
        let mut out = Vec::with_capacity(n);
        let mut order = Self::order(self.epoch, len, seed, shuffle);
        while out.len() < n {
            if self.index >= len {
                self.epoch += 1;
                self.index = 0;
                order = Self::order(self.epoch, len, seed, shuffle);
            }
            out.push(order[self.index]);
            self.index += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_is_resumable_and_covers_each_epoch() {
        let mut a = Cursor::start();
        let first = a.take(7, 5, 1, true);
        let mut sorted = first[..5].to_vec();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2, 3, 4], "one epoch is a permutation");
        let saved = a;
        let next = a.take(4, 5, 1, true);
        let mut b = saved;
        assert_eq!(b.take(4, 5, 1, true), next);
        assert_eq!(a.epoch, 2);
    }
}
