//! Next-token sampling: greedy, temperature, top-k, top-p and min-p, with seeded per-sequence
//! random draws and the log-probs the trainer needs.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Result, RolloutError};

/// How the next token is chosen. Filters apply in this order, each to the distribution the
/// previous one left (renormalised): temperature, top-k, top-p, min-p.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax). Default 1.0.
    pub temperature: f64,
    /// Keep the `k` most likely tokens (ties with the k-th kept); 0 disables. Default 0.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`
    /// (a token is kept when the mass strictly before it is < `top_p`); 1.0 disables. Default 1.0.
    pub top_p: f64,
    /// Keep tokens with probability ≥ `min_p` × the largest probability; 0 disables. Default 0.
    pub min_p: f64,
    /// Most tokens generated per sample. Default 1024.
    pub max_new_tokens: usize,
    /// Generation stops after any of these ids (besides the tokenizer's EOS ids). Default none.
    pub stop_token_ids: Vec<i64>,
    /// Generation stops once the decoded response contains one of these. Default none.
    pub stop_strings: Vec<String>,
    /// Stop on EOS ids (false: only `max_new_tokens` and stop strings end a sample, as for
    /// benchmarks). Default true.
    pub stop_on_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            max_new_tokens: 1024,
            stop_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            stop_on_eos: true,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy(max_new_tokens: usize) -> Self {
        SamplingParams { temperature: 0.0, max_new_tokens, ..Default::default() }
    }

    /// Checks every field; the error names it.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |field, value: String, message| Err(RolloutError::Setting { field, value, message });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", self.temperature.to_string(), "must be finite and ≥ 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p.to_string(), "must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p.to_string(), "must be in [0, 1]");
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens", "0".into(), "must be ≥ 1");
        }
        Ok(())
    }
}

/// Log-probabilities `(batch, vocab)` (f32) of the distribution the params sample from; filtered
/// tokens get −∞. Not used for greedy decoding.
pub fn sampling_logprobs(logits: &Tensor, params: &SamplingParams) -> Result<Tensor> {
    let neg_inf = f64::NEG_INFINITY;
    let mut scores = logits.f_to_kind(Kind::Float)?.f_div_scalar(params.temperature.max(1e-8))?;
    let vocab = scores.size()[1];
    if params.top_k > 0 && (params.top_k as i64) < vocab {
        let (kth, _) = scores.f_topk(params.top_k as i64, -1, true, true)?;
        let threshold = kth.f_narrow(1, params.top_k as i64 - 1, 1)?;
        scores = scores.f_masked_fill(&scores.f_lt_tensor(&threshold)?, neg_inf)?;
    }
    if params.top_p < 1.0 {
        let probs = scores.f_softmax(-1, Kind::Float)?;
        let (sorted, idx) = probs.f_sort(-1, true)?;
        // Mass strictly before each sorted token.
        let before = sorted.f_cumsum(-1, Kind::Float)?.f_sub(&sorted)?;
        let remove_sorted = before.f_ge(params.top_p)?;
        let remove = remove_sorted.f_zeros_like()?.f_scatter(-1, &idx, &remove_sorted)?;
        scores = scores.f_masked_fill(&remove, neg_inf)?;
    }
    if params.min_p > 0.0 {
        let probs = scores.f_softmax(-1, Kind::Float)?;
        let (pmax, _) = probs.f_max_dim(-1, true)?;
        scores = scores
            .f_masked_fill(&probs.f_lt_tensor(&pmax.f_mul_scalar(params.min_p)?)?, neg_inf)?;
    }
    Ok(scores.f_log_softmax(-1, Kind::Float)?)
}

/// One chosen token per row.
#[derive(Debug, Clone, PartialEq)]
pub struct Draw {
    /// The token.
    pub token: i64,
    /// Its log-prob under the sampling distribution (0 for greedy).
    pub sampling_logprob: f32,
    /// Its log-prob under the unmodified policy (temperature 1, no truncation).
    pub policy_logprob: f32,
}

/// Chooses one token for each row of `logits (batch, vocab)`, drawing row `i`'s uniform number
/// from `rngs[i]` (inverse-CDF sampling), so that a sequence's draws depend only on its own
/// generator whatever else is in the batch.
pub fn sample(
    logits: &Tensor,
    params: &SamplingParams,
    rngs: &mut [ChaCha8Rng],
) -> Result<Vec<Draw>> {
    let size = logits.size();
    if size.len() != 2 || size[0] as usize != rngs.len() {
        return Err(RolloutError::Input(format!(
            "sample: logits must be (batch, vocab) with batch = {} generators, got {size:?}",
            rngs.len()
        )));
    }
    let u = if params.temperature == 0.0 {
        None
    } else {
        let u: Vec<f32> = rngs.iter_mut().map(|r| r.gen::<f32>()).collect();
        Some(Tensor::from_slice(&u).f_to_device(logits.device())?)
    };
    sample_with(logits, params, u.as_ref())
}

/// [`sample`] with row `i`'s uniform number `u[i]` given as a tensor on the logits' device
/// (from [`crate::counter_uniforms`]: no random numbers cross from the host), reading the
/// tokens and both log-probs back in one device→host copy. `u` is unused when greedy.
///
/// # Shapes
/// `logits`: `(batch, vocab)`; `u`: `(batch,)`.
pub fn sample_with(
    logits: &Tensor,
    params: &SamplingParams,
    u: Option<&Tensor>,
) -> Result<Vec<Draw>> {
    let size = logits.size();
    if size.len() != 2 {
        return Err(RolloutError::Input(format!(
            "sample: logits must be (batch, vocab), got {size:?}"
        )));
    }
    let policy_lp = logits.f_to_kind(Kind::Float)?.f_log_softmax(-1, Kind::Float)?;
    let (tokens, sampling_lp) = match u {
        _ if params.temperature == 0.0 => {
            let t = policy_lp.f_argmax(-1, false)?;
            let zeros = Tensor::f_zeros([size[0]], (Kind::Float, logits.device()))?;
            (t, zeros)
        }
        None => {
            return Err(RolloutError::Input("sample: temperature > 0 needs uniform draws".into()))
        }
        Some(u) => {
            if u.size() != [size[0]] {
                return Err(RolloutError::Input(format!(
                    "sample: {:?} uniform draws for logits of {size:?}",
                    u.size()
                )));
            }
            let lp = sampling_logprobs(logits, params)?;
            let cdf = lp.f_exp()?.f_cumsum(-1, Kind::Float)?;
            // Scale by the total so rounding in the cumsum never pushes u past the end.
            let total = cdf.f_narrow(1, size[1] - 1, 1)?;
            let u = u.f_to_kind(Kind::Float)?.f_unsqueeze(1)?.f_mul(&total)?;
            let t = u
                .f_searchsorted(&cdf, false, true, "right", None::<Tensor>)?
                .f_squeeze_dim(1)?
                .f_clamp_max(size[1] - 1)?;
            let chosen = lp.f_gather(1, &t.f_unsqueeze(1)?, false)?.f_squeeze_dim(1)?;
            (t, chosen)
        }
    };
    let policy = policy_lp.f_gather(1, &tokens.f_unsqueeze(1)?, false)?.f_squeeze_dim(1)?;
    // One read: token ids (exact in f64 below 2^53) beside both log-probs.
    let packed = Tensor::f_stack(
        &[
            tokens.f_to_kind(Kind::Double)?,
            sampling_lp.f_to_kind(Kind::Double)?,
            policy.f_to_kind(Kind::Double)?,
        ],
        1,
    )?;
    let values = Vec::<f64>::try_from(&packed.f_to_device(tch::Device::Cpu)?.f_reshape([-1])?)?;
    Ok(values
        .chunks_exact(3)
        .map(|r| Draw {
            token: r[0] as i64,
            sampling_logprob: r[1] as f32,
            policy_logprob: r[2] as f32,
        })
        .collect())
}
