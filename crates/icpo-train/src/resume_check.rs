//! What a resume may change: the config in force against the one saved in the checkpoint.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::error::{Result, TrainError};

/// Keys that change how a run executes or what it records, not what it computes (memory
/// knobs such as the micro-batch size change float summation order only). They may differ on
/// resume; every difference is still reported.
pub const OPERATIONAL_KEYS: [&str; 16] = [
    "trainer.total_steps",
    "trainer.save_every",
    "trainer.eval_every",
    "trainer.output_dir",
    "trainer.overwrite",
    "trainer.max_nonfinite_in_a_row",
    "data.eval_paths",
    "model.device",
    "model.gradient_checkpointing",
    "rollout.decode_streams",
    "rollout.max_tokens_in_flight",
    "optim.micro_batch_size",
    "trainer.async_scoring",
    "trainer.scoring_batch",
    "trainer.dist_timeout_s",
    "optim.zero_stage",
];

/// A config value that differs between the checkpoint and the resumed run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigChange {
    /// Dotted key, e.g. `optim.lr`.
    pub key: String,
    /// The value saved with the checkpoint (null: absent).
    pub saved: serde_json::Value,
    /// The value in force now (null: absent).
    pub now: serde_json::Value,
}

impl std::fmt::Display for ConfigChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} in the checkpoint, {} now", self.key, self.saved, self.now)
    }
}

fn flatten(v: &serde_json::Value, prefix: &str, out: &mut BTreeMap<String, serde_json::Value>) {
    match v.as_object() {
        Some(map) => {
            for (k, x) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(x, &key, out);
            }
        }
        None => {
            out.insert(prefix.to_string(), v.clone());
        }
    }
}

/// Whether `key` is `k` or inside section `k`.
fn covered(key: &str, k: &str) -> bool {
    key == k || key.strip_prefix(k).is_some_and(|rest| rest.starts_with('.'))
}

/// Compares `saved` (from `state_path`) with `now`: differences in operational keys or in keys
/// the user set `explicit`ly (`section.key=value`, or the key alone) are returned; any other
/// difference is an error naming every such key with both values.
pub fn check_config(
    saved: &serde_json::Value,
    now: &serde_json::Value,
    explicit: &[String],
    state_path: &Path,
) -> Result<Vec<ConfigChange>> {
    if saved.is_null() {
        return Ok(Vec::new());
    }
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten(saved, "", &mut a);
    flatten(now, "", &mut b);
    let explicit: Vec<&str> =
        explicit.iter().map(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k).trim()).collect();
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let null = serde_json::Value::Null;
    for key in keys {
        let (s, n) = (a.get(key).unwrap_or(&null), b.get(key).unwrap_or(&null));
        if s == n {
            continue;
        }
        let change = ConfigChange { key: key.clone(), saved: s.clone(), now: n.clone() };
        let ok = OPERATIONAL_KEYS.iter().any(|k| covered(key, k))
            || explicit.iter().any(|k| covered(key, k));
        if ok {
            accepted.push(change);
        } else {
            refused.push(change);
        }
    }
    if let Some(first) = refused.first() {
        let list: Vec<String> = refused.iter().map(ToString::to_string).collect();
        return Err(TrainError::Config {
            key: first.key.clone(),
            message: format!(
                "the resumed config differs from the checkpoint's ({}) in what the run means: {}. Resume with the checkpoint's values, or pass each change explicitly (--set {}=...) to accept it",
                state_path.display(),
                list.join("; "),
                first.key
            ),
        });
    }
    Ok(accepted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn meaning_changes_need_an_explicit_override() {
        let saved =
            json!({"optim": {"lr": 1e-6, "micro_batch_size": 4}, "trainer": {"total_steps": 10}});
        let lr =
            json!({"optim": {"lr": 2e-6, "micro_batch_size": 4}, "trainer": {"total_steps": 10}});
        let p = Path::new("run/step_000002/trainer_state.json");
        let e = check_config(&saved, &lr, &[], p).unwrap_err().to_string();
        assert!(
            e.contains("optim.lr") && e.contains("1e-6") && e.contains("--set optim.lr"),
            "{e}"
        );
        assert!(e.contains("trainer_state.json"), "{e}");
        let ok = check_config(&saved, &lr, &["optim.lr=2e-6".into()], p).unwrap();
        assert_eq!(
            ok,
            vec![ConfigChange { key: "optim.lr".into(), saved: json!(1e-6), now: json!(2e-6) }]
        );
        // A whole section named explicitly covers its keys; a prefix of a name does not.
        assert!(check_config(&saved, &lr, &["optim".into()], p).is_ok());
        assert!(check_config(&saved, &lr, &["optim.l".into()], p).is_err());
    }

    #[test]
    fn operational_changes_are_accepted_and_reported() {
        let saved =
            json!({"trainer": {"total_steps": 10, "seed": 1}, "optim": {"micro_batch_size": 4}});
        let now =
            json!({"trainer": {"total_steps": 20, "seed": 1}, "optim": {"micro_batch_size": 2}});
        let changes = check_config(&saved, &now, &[], Path::new("s.json")).unwrap();
        let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["optim.micro_batch_size", "trainer.total_steps"]);
        let seed =
            json!({"trainer": {"total_steps": 10, "seed": 2}, "optim": {"micro_batch_size": 4}});
        assert!(check_config(&saved, &seed, &[], Path::new("s.json")).is_err());
        assert!(check_config(&serde_json::Value::Null, &seed, &[], Path::new("s.json"))
            .unwrap()
            .is_empty());
    }
}
