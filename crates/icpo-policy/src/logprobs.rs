//! Per-token log-probabilities of responses after prompts: the op the trainer differentiates.

use tch::{Kind, Tensor};

use crate::attention::attention_mask_4d;
use crate::error::{PolicyError, Result};
use crate::model::{CausalLm, Past};
use crate::shapes::check_ids;

/// Whether and how [`CausalLm::response_logprobs`] computes per-token entropy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Entropy {
    /// No entropy.
    Skip,
    /// Entropy as a metric, without gradient (no extra memory).
    Metric,
    /// Entropy with gradient, for an entropy bonus in the loss (keeps the probabilities of
    /// the response positions for the backward pass).
    Differentiable,
}

/// Output of [`CausalLm::response_logprobs`].
///
/// # Shapes
/// - `logprobs`: `(batch, response_len)` f32, 0 where `response_mask` is 0
/// - `entropy`: `(batch, response_len)` f32 when requested, 0 where `response_mask` is 0
#[derive(Debug)]
pub struct TokenLogprobs {
    /// `log π(o_t | prompt, o_<t)` of each response token; differentiable when grad is enabled.
    pub logprobs: Tensor,
    /// Entropy of the next-token distribution at each response position (see [`Entropy`]).
    pub entropy: Option<Tensor>,
}

/// Elements of a `(chunk, vocab)` block of logits materialised at once (64 Mi f32 = 256 MiB).
const CHUNK_ELEMENTS: i64 = 1 << 25;

impl CausalLm {
    /// Log-probabilities of `response_ids` after `prompt_ids`, for a padded batch.
    ///
    /// Only the positions that predict response tokens go through the output projection, in
    /// chunks of positions. With the lean head (the default where the C++ shim is built, see
    /// [`crate::lean_head_enabled`]) no chunk's logits are kept for the backward, which
    /// recomputes them: head memory is O(chunk × vocab) whatever the response length, entropy
    /// bonus included. Without it autograd keeps every chunk's f32 logits.
    ///
    /// # Shapes
    /// - `prompt_ids`, `prompt_mask`: `(batch, prompt_len)`, left padded; every row needs at
    ///   least one prompt token
    /// - `response_ids`, `response_mask`: `(batch, response_len)`, right padded (an all-zero row
    ///   is an empty response)
    pub fn response_logprobs(
        &self,
        prompt_ids: &Tensor,
        prompt_mask: &Tensor,
        response_ids: &Tensor,
        response_mask: &Tensor,
        entropy: Entropy,
    ) -> Result<TokenLogprobs> {
        let (ps, rs) = (prompt_ids.size(), response_ids.size());
        if ps.len() != 2
            || rs.len() != 2
            || ps[0] != rs[0]
            || prompt_mask.size() != ps
            || response_mask.size() != rs
        {
            return Err(PolicyError::Shape(format!(
                "response_logprobs: prompt ids {ps:?} / mask {:?} and response ids {rs:?} / mask {:?} must be (batch, prompt_len) and (batch, response_len) with one batch",
                prompt_mask.size(),
                response_mask.size()
            )));
        }
        let (batch, plen, rlen) = (ps[0], ps[1], rs[1]);
        let with_entropy = entropy != Entropy::Skip;
        let device = self.device();
        let rmask = response_mask.f_to_device(device)?.f_to_kind(Kind::Float)?;
        if rlen == 0 || batch == 0 {
            let zeros = Tensor::f_zeros([batch, rlen], (Kind::Float, device))?;
            return Ok(TokenLogprobs {
                logprobs: zeros.shallow_clone(),
                entropy: with_entropy.then_some(zeros),
            });
        }
        if plen == 0 {
            return Err(PolicyError::Shape(
                "response_logprobs: prompt_len is 0; every row needs a prompt token".into(),
            ));
        }
        let pmask = prompt_mask.f_to_device(device)?;
        let last_prompt = pmask.f_select(1, plen - 1)?.f_ne(0)?.f_all()?.int64_value(&[]);
        if last_prompt == 0 {
            return Err(PolicyError::Shape(
                "response_logprobs: prompts must be left padded (the last prompt column must be a real token in every row)".into(),
            ));
        }
        let vocab = self.config().vocab_size;
        check_ids(prompt_ids, None, vocab, "response_logprobs (prompt)")?;
        check_ids(response_ids, None, vocab, "response_logprobs (response)")?;
        let prompt_ids = prompt_ids.f_to_device(device)?;
        let response_ids = response_ids.f_to_device(device)?;
        let (p_keys, r_keys) = (pmask.f_ne(0)?, rmask.f_ne(0)?);
        let hidden =
            match self.shared_prompt_hidden(&prompt_ids, &p_keys, &response_ids, &r_keys)? {
                Some(hidden) => hidden,
                None => {
                    let ids = Tensor::f_cat(&[&prompt_ids, &response_ids], 1)?;
                    let keys = Tensor::f_cat(&[&p_keys, &r_keys], 1)?;
                    // Position p predicts token p + 1: the response is predicted from
                    // plen-1 .. plen+rlen-2.
                    self.run_masked(&ids, &keys, None)?.f_narrow(1, plen - 1, rlen)?
                }
            };
        let targets = response_ids;
        // The head's weight in the products' dtype, cast once for the whole pass.
        let lm_head = self.lm_head();
        let weight = if lm_head.kind() == hidden.kind() {
            lm_head.shallow_clone()
        } else {
            lm_head.f_to_kind(hidden.kind())?
        };
        let rows = (CHUNK_ELEMENTS / vocab).max(1);
        if let Some((lp, ent)) =
            crate::fused::chunked_head(&hidden, &weight, &targets, with_entropy, rows)?
        {
            let entropy = match entropy {
                Entropy::Skip => None,
                Entropy::Metric => Some(ent.f_detach()?.f_mul(&rmask)?),
                Entropy::Differentiable => Some(ent.f_mul(&rmask)?),
            };
            return Ok(TokenLogprobs { logprobs: lp.f_mul(&rmask)?, entropy });
        }
        // The plain pass: autograd keeps every chunk's logits for the backward.
        let step = (CHUNK_ELEMENTS / (batch * vocab)).max(1);
        let mut lps = Vec::new();
        let mut ents = Vec::new();
        let mut start = 0;
        while start < rlen {
            let n = step.min(rlen - start);
            let h = hidden.f_narrow(1, start, n)?;
            let logits = h.f_linear::<Tensor>(&weight, None)?.f_to_kind(Kind::Float)?;
            let lse = logits.f_logsumexp(&[-1i64][..], false)?;
            let tgt = targets.f_narrow(1, start, n)?.f_unsqueeze(-1)?;
            let picked = logits.f_gather(-1, &tgt, false)?.f_squeeze_dim(-1)?;
            lps.push(picked.f_sub(&lse)?);
            if with_entropy {
                // H = logsumexp − Σ p·logit.
                let compute = || -> Result<Tensor> {
                    let p = logits.f_sub(&lse.f_unsqueeze(-1)?)?.f_exp()?;
                    Ok(lse.f_sub(&p.f_mul(&logits)?.f_sum_dim_intlist(
                        -1,
                        false,
                        Kind::Float,
                    )?)?)
                };
                let ent = if entropy == Entropy::Differentiable {
                    compute()?
                } else {
                    tch::no_grad(compute)?
                };
                ents.push(ent);
            }
            start += n;
        }
        let logprobs = Tensor::f_cat(&lps, 1)?.f_mul(&rmask)?;
        let entropy =
            if with_entropy { Some(Tensor::f_cat(&ents, 1)?.f_mul(&rmask)?) } else { None };
        Ok(TokenLogprobs { logprobs, entropy })
    }
}

impl CausalLm {
    /// The hidden states that predict each response token, `(batch, response_len, hidden)`,
    /// computing each run of identical consecutive prompt rows once (a GRPO group shares its
    /// prompt, and IEF rollouts are scored after the same plain prompt): the prompt pass runs on
    /// the distinct prompts, and the responses attend to their prompt's keys and values. `None`
    /// when no two consecutive rows share a prompt. Differentiable, exact up to float rounding.
    ///
    /// # Shapes
    /// - `prompt_ids`, `p_keys` (bool): `(batch, prompt_len)`, checked, on the model's device
    /// - `response_ids`, `r_keys` (bool): `(batch, response_len)`, likewise
    fn shared_prompt_hidden(
        &self,
        prompt_ids: &Tensor,
        p_keys: &Tensor,
        response_ids: &Tensor,
        r_keys: &Tensor,
    ) -> Result<Option<Tensor>> {
        let (batch, plen) = (prompt_ids.size()[0], prompt_ids.size()[1]);
        let rlen = response_ids.size()[1];
        let key = Tensor::f_cat(&[&p_keys.f_to_kind(Kind::Int64)?, prompt_ids], 1)?;
        let (distinct, rows, _) = key.f_unique_consecutive(true, false, 0)?;
        if distinct.size()[0] == batch {
            return Ok(None);
        }
        // Prompt pass over the distinct prompts, keeping every layer's keys and values.
        let u_keys = distinct.f_narrow(1, 0, plen)?.f_ne(0)?;
        let u_ids = distinct.f_narrow(1, plen, plen)?;
        let mut kv = Vec::new();
        let prompt_hidden = self.run_masked(&u_ids, &u_keys, Some(&mut kv))?;
        let kv = kv
            .into_iter()
            .map(|(k, v)| Ok((k.f_index_select(0, &rows)?, v.f_index_select(0, &rows)?)))
            .collect::<Result<Vec<_>>>()?;
        // Response pass: positions continue after each row's prompt.
        let start = p_keys.f_sum_dim_intlist(1, true, Kind::Int64)?;
        let positions =
            r_keys.f_cumsum(1, Kind::Int64)?.f_sub_scalar(1)?.f_add(&start)?.f_clamp_min(0)?;
        let key_mask = Tensor::f_cat(&[p_keys, r_keys], 1)?;
        let mask = attention_mask_4d(&key_mask, rlen, plen)?;
        let response_hidden =
            self.run_layers(response_ids, &positions, &mask, Past::Prefix(&kv), None)?;
        // The last prompt position predicts the first response token.
        let last = prompt_hidden.f_select(1, plen - 1)?.f_index_select(0, &rows)?.f_unsqueeze(1)?;
        Ok(Some(Tensor::f_cat(&[last, response_hidden.f_narrow(1, 0, rlen - 1)?], 1)?))
    }
}
