//! Training problems and the resumable, seeded cursor over them.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, TrainError};

/// A training or evaluation problem.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Identifier (`id`, else the line number).
    pub id: String,
    /// The problem statement.
    pub problem: String,
    /// The reference answer.
    pub answer: String,
    /// Every field of its dataset row as read (a JSONL line's object, a parquet row as JSON),
    /// for rewards that need more than the answer ([`crate::TaskReward`]); null when built in
    /// code.
    #[serde(default)]
    pub fields: serde_json::Value,
}

/// Reads training or evaluation problems: JSONL with `problem` and `answer` (a string or a
/// number) per line, `id` optional; or a `.parquet` file in the verl / LUFFY layout (see
/// [`load_verl_parquet`]). Rows whose answer is null are skipped (MATH train has two); any other
/// malformed row is an error naming the file and line. Returns the problems and how many rows
/// were skipped.
pub fn load_problems(path: impl AsRef<Path>) -> Result<(Vec<Problem>, usize)> {
    let path = path.as_ref();
    if path.extension().is_some_and(|e| e == "parquet") {
        return load_verl_parquet(path);
    }
    let mut out = Vec::new();
    let mut skipped = 0;
    for row in icpo_policy::read_jsonl(path)? {
        let line = row.line;
        let err = |message: String| TrainError::Data { path: path.into(), line, message };
        let v = row.value.map_err(err)?;
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
        let id = match &v["id"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => format!("line {line}"),
        };
        let problem = problem.to_string();
        out.push(Problem { id, problem, answer, fields: v });
    }
    if out.is_empty() {
        return Err(TrainError::Data { path: path.into(), line: 0, message: "no problems".into() });
    }
    Ok((out, skipped))
}

/// Reads the verl / LUFFY parquet layout (OpenR1-Math-46k ships in it): the problem is the
/// content of the last `user` message of the `prompt` list, the answer is
/// `reward_model.ground_truth`, the id `extra_info.index` (else the row number). LUFFY's set
/// carries no instruction in that message: the prompt builder appends `data.instruction` as the
/// authors' data script does (`content + " " + instruction`), and does not add it again to a
/// problem that already ends with it.
pub fn load_verl_parquet(path: &Path) -> Result<(Vec<Problem>, usize)> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let bad = |line: usize, message: String| TrainError::Data { path: path.into(), line, message };
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let reader =
        SerializedFileReader::new(file).map_err(|e| bad(0, format!("not a parquet file: {e}")))?;
    let rows = reader.get_row_iter(None).map_err(|e| bad(0, e.to_string()))?;
    let mut out = Vec::new();
    let mut skipped = 0;
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| bad(i + 1, e.to_string()))?;
        let get =
            |name: &str| row.get_column_iter().find(|(k, _)| k.as_str() == name).map(|(_, v)| v);
        let problem = match get("prompt") {
            Some(Field::ListInternal(list)) => list
                .elements()
                .iter()
                .rev()
                .find_map(|m| match m {
                    Field::Group(msg) => {
                        let f = |k: &str| {
                            msg.get_column_iter().find(|(n, _)| n.as_str() == k).map(|(_, v)| v)
                        };
                        match (f("role"), f("content")) {
                            (Some(Field::Str(r)), Some(Field::Str(c))) if r == "user" => {
                                Some(c.clone())
                            }
                            _ => None,
                        }
                    }
                    _ => None,
                })
                .ok_or_else(|| bad(i + 1, "`prompt` has no user message".into()))?,
            _ => return Err(bad(i + 1, "missing list column `prompt`".into())),
        };
        let answer = match get("reward_model") {
            Some(Field::Group(rm)) => match rm
                .get_column_iter()
                .find(|(k, _)| k.as_str() == "ground_truth")
                .map(|(_, v)| v)
            {
                Some(Field::Str(s)) => s.clone(),
                Some(Field::Null) | None => {
                    skipped += 1;
                    continue;
                }
                Some(other) => other.to_string(),
            },
            _ => return Err(bad(i + 1, "missing struct column `reward_model`".into())),
        };
        let id = match get("extra_info") {
            Some(Field::Group(x)) => x
                .get_column_iter()
                .find(|(k, _)| k.as_str() == "index")
                .map(|(_, v)| v.to_string())
                .unwrap_or_else(|| format!("row {}", i + 1)),
            _ => format!("row {}", i + 1),
        };
        out.push(Problem { id, problem, answer, fields: row.to_json_value() });
    }
    if out.is_empty() {
        return Err(bad(0, "no problems".into()));
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
    fn reads_the_verl_parquet_layout() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/verl_sample.parquet");
        let (p, skipped) = load_problems(&path).unwrap();
        assert_eq!(skipped, 0);
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].problem, "Find $x$ if $2x = 6$.");
        assert_eq!(p[2].answer, "\\frac{3}{4}");
        assert_eq!(p[0].id, "0");
        let e = load_problems(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../testdata/tiny-qwen3/config.json")
                .with_extension("parquet"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("config.parquet"), "{e}");
    }

    /// A parquet row becomes the prompt the authors' recipe builds: the last user message,
    /// a space, the instruction, as one user message (the system turn dropped); a row already
    /// prepared by their script keeps one instruction.
    #[test]
    fn a_parquet_row_becomes_the_authors_prompt() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata");
        let (p, _) = load_problems(dir.join("verl_sample.parquet")).unwrap();
        let tok = icpo_policy::Tokenizer::from_dir(dir.join("tiny-qwen3")).unwrap();
        let b = icpo_rollout::PromptBuilder::new(&tok);
        let authors = "Find $x$ if $2x = 6$. Let's think step by step and output the final answer within \\boxed{}.";
        assert_eq!(b.user_message(&p[1].problem), authors);
        let chat = |content: &str| {
            tok.apply_chat_template(&[icpo_policy::ChatMessage::new("user", content)], true)
                .unwrap()
        };
        assert_eq!(b.plain_text(&p[1].problem).unwrap(), chat(authors));
        assert_eq!(b.user_message(authors), authors, "never appended twice");
    }

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
