//! One decoder layer's weights and projections, in checkpoint form or packed for decoding.

use std::convert::Infallible;

use tch::{Kind, Tensor};

use crate::attention::attend;
use crate::error::Result;
use crate::fused::{self, rms_norm};
use crate::onednn::Proj;

/// A layer's weights, as the checkpoint stores them (`(out, in)` matrices).
pub(crate) struct Layer {
    pub(crate) input_norm: Tensor,
    pub(crate) post_norm: Tensor,
    pub(crate) q: Tensor,
    pub(crate) q_bias: Option<Tensor>,
    pub(crate) k: Tensor,
    pub(crate) k_bias: Option<Tensor>,
    pub(crate) v: Tensor,
    pub(crate) v_bias: Option<Tensor>,
    pub(crate) o: Tensor,
    pub(crate) o_bias: Option<Tensor>,
    pub(crate) q_norm: Option<Tensor>,
    pub(crate) k_norm: Option<Tensor>,
    pub(crate) gate: Tensor,
    pub(crate) gate_bias: Option<Tensor>,
    pub(crate) up: Tensor,
    pub(crate) up_bias: Option<Tensor>,
    pub(crate) down: Tensor,
    pub(crate) down_bias: Option<Tensor>,
    /// The same projections packed for decoding, when built.
    pub(crate) packed: Option<Packed>,
}

/// A layer's projections laid out for decoding ([`Proj`]: oneDNN's packed form on a CPU, else
/// transposed) and fused (q/k/v into one matrix, gate/up into another), so that one wide product
/// replaces two or three narrow ones. A detached copy: it does not follow later updates of the
/// weights.
pub(crate) struct Packed {
    qkv: Proj,
    qkv_bias: Option<Tensor>,
    o: Proj,
    gate_up: Proj,
    gate_up_bias: Option<Tensor>,
    down: Proj,
    /// Qwen3's q and k norm weights side by side, `(heads + kv_heads, head_dim)`, so that one
    /// normalisation and one rotation serve the queries and keys of a decoding step.
    qk_norm: Option<Tensor>,
}

/// Attention head counts and size.
#[derive(Clone, Copy)]
pub(crate) struct Heads {
    pub(crate) q: i64,
    pub(crate) kv: i64,
    pub(crate) dim: i64,
}

/// What every layer of one pass shares besides its input: sizes, the rotary tables of the
/// pass's positions and its bool attention mask `(batch, 1, new, keys)`.
pub(crate) struct PassInputs {
    pub(crate) heads: Heads,
    pub(crate) eps: f64,
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
    pub(crate) mask: Tensor,
    /// Attention in f32 (see [`crate::attention::upcast_attention`]).
    pub(crate) upcast_attention: bool,
}

impl PassInputs {
    /// A handle on the same tensors (for a closure that outlives the pass's borrow).
    pub(crate) fn shallow_clone(&self) -> PassInputs {
        PassInputs {
            heads: self.heads,
            eps: self.eps,
            cos: self.cos.shallow_clone(),
            sin: self.sin.shallow_clone(),
            mask: self.mask.shallow_clone(),
            upcast_attention: self.upcast_attention,
        }
    }
}

fn linear(x: &Tensor, w: &Tensor, b: &Option<Tensor>) -> Result<Tensor> {
    Ok(x.f_linear(w, b.as_ref())?)
}

/// Concatenated biases when any exists (zeros standing in for the missing ones); differentiable
/// unless `detach`.
fn fused_bias(parts: &[(&Option<Tensor>, &Tensor)], detach: bool) -> Result<Option<Tensor>> {
    if parts.iter().all(|(b, _)| b.is_none()) {
        return Ok(None);
    }
    let mut all = Vec::with_capacity(parts.len());
    for (b, w) in parts {
        all.push(match b {
            Some(b) if detach => b.f_detach()?,
            Some(b) => b.shallow_clone(),
            None => Tensor::f_zeros([w.size()[0]], (w.kind(), w.device()))?,
        });
    }
    Ok(Some(Tensor::f_cat(&all, 0)?))
}

/// `(out, in)` matrices stacked along `out` into one `(Σ out, in)`, laid out for decoding
/// (detached there).
fn fused_proj(ws: &[&Tensor]) -> Result<Proj> {
    Proj::new(&Tensor::f_cat(ws, 0)?)
}

impl Layer {
    /// The same layer with `f` applied to every weight and bias (no packed form).
    fn map<E>(
        &self,
        f: impl Fn(&Tensor) -> std::result::Result<Tensor, E>,
    ) -> std::result::Result<Layer, E> {
        let o = |t: &Option<Tensor>| t.as_ref().map(&f).transpose();
        Ok(Layer {
            input_norm: f(&self.input_norm)?,
            post_norm: f(&self.post_norm)?,
            q: f(&self.q)?,
            q_bias: o(&self.q_bias)?,
            k: f(&self.k)?,
            k_bias: o(&self.k_bias)?,
            v: f(&self.v)?,
            v_bias: o(&self.v_bias)?,
            o: f(&self.o)?,
            o_bias: o(&self.o_bias)?,
            q_norm: o(&self.q_norm)?,
            k_norm: o(&self.k_norm)?,
            gate: f(&self.gate)?,
            gate_bias: o(&self.gate_bias)?,
            up: f(&self.up)?,
            up_bias: o(&self.up_bias)?,
            down: f(&self.down)?,
            down_bias: o(&self.down_bias)?,
            packed: None,
        })
    }

    /// A handle on the same weights and packed projections (nothing copied).
    pub(crate) fn shallow_clone(&self) -> Layer {
        let Ok(mut layer) = self.map(|t| Ok::<_, Infallible>(t.shallow_clone()));
        layer.packed = self.packed.as_ref().map(|p| {
            let t = Proj::shallow_clone;
            let o = |t: &Option<Tensor>| t.as_ref().map(Tensor::shallow_clone);
            Packed {
                qkv: t(&p.qkv),
                qkv_bias: o(&p.qkv_bias),
                o: t(&p.o),
                gate_up: t(&p.gate_up),
                gate_up_bias: o(&p.gate_up_bias),
                down: t(&p.down),
                qk_norm: o(&p.qk_norm),
            }
        });
        layer
    }

    /// The weights cast to `kind` (differentiable casts; no packed form).
    pub(crate) fn cast(&self, kind: Kind) -> Result<Layer> {
        Ok(self.map(|t| t.f_to_kind(kind))?)
    }

    /// Builds the packed projections (a copy of the weights' current values).
    pub(crate) fn pack(&mut self) -> Result<()> {
        self.packed = Some(Packed {
            qkv: fused_proj(&[&self.q, &self.k, &self.v])?,
            qkv_bias: fused_bias(
                &[(&self.q_bias, &self.q), (&self.k_bias, &self.k), (&self.v_bias, &self.v)],
                true,
            )?,
            o: fused_proj(&[&self.o])?,
            gate_up: fused_proj(&[&self.gate, &self.up])?,
            gate_up_bias: fused_bias(
                &[(&self.gate_bias, &self.gate), (&self.up_bias, &self.up)],
                true,
            )?,
            down: fused_proj(&[&self.down])?,
            qk_norm: match (&self.q_norm, &self.k_norm) {
                (Some(qn), Some(kn)) => {
                    let heads = self.q.size()[0] / qn.size()[0];
                    let kv_heads = self.k.size()[0] / kn.size()[0];
                    let rows = [
                        qn.f_detach()?.f_unsqueeze(0)?.f_expand([heads, -1], false)?,
                        kn.f_detach()?.f_unsqueeze(0)?.f_expand([kv_heads, -1], false)?,
                    ];
                    Some(Tensor::f_cat(&rows, 0)?)
                }
                _ => None,
            },
        });
        Ok(())
    }

    /// Queries `(batch, heads, t, head_dim)`, keys and values `(batch, kv_heads, t, head_dim)`
    /// of `h (batch, t, hidden)`: projected, q/k-normed (Qwen3) and rotated by `cos`/`sin`.
    pub(crate) fn attention_inputs(
        &self,
        h: &Tensor,
        heads: Heads,
        eps: f64,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let size = h.size();
        let (b, t) = (size[0], size[1]);
        let Heads { q: nh, kv: nkv, dim: hd } = heads;
        if let Some(p) = &self.packed {
            // Decoding: queries and keys are normed and rotated together, one op each.
            let y = p.qkv.apply(h, p.qkv_bias.as_ref())?;
            let qk = y.f_narrow(-1, 0, (nh + nkv) * hd)?.f_view([b, t, nh + nkv, hd])?;
            let qk = match &p.qk_norm {
                Some(w) => fused::rms_norm(&qk, None, eps)?.f_mul(w)?,
                None => qk,
            };
            let qk = fused::rope(&qk, cos, sin)?.f_transpose(1, 2)?;
            let v = y.f_narrow(-1, (nh + nkv) * hd, nkv * hd)?.f_view([b, t, nkv, hd])?;
            return Ok((qk.f_narrow(1, 0, nh)?, qk.f_narrow(1, nh, nkv)?, v.f_transpose(1, 2)?));
        }
        let mut q = linear(h, &self.q, &self.q_bias)?.f_view([b, t, nh, hd])?;
        let mut k = linear(h, &self.k, &self.k_bias)?.f_view([b, t, nkv, hd])?;
        let v = linear(h, &self.v, &self.v_bias)?.f_view([b, t, nkv, hd])?.f_transpose(1, 2)?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = fused::rms_norm(&q, Some(qn), eps)?;
            k = fused::rms_norm(&k, Some(kn), eps)?;
        }
        let q = fused::rope(&q, cos, sin)?.f_transpose(1, 2)?;
        let k = fused::rope(&k, cos, sin)?.f_transpose(1, 2)?;
        Ok((q, k, v))
    }

    /// The layer applied to `x (batch, t, hidden)` attending among its own tokens, after a
    /// prefix's keys and values when given (see [`crate::model::Past::Prefix`]): the layer's
    /// output and its own new keys and values (after RoPE).
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        pass: &PassInputs,
        prefix: Option<(&Tensor, &Tensor)>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let h = rms_norm(x, Some(&self.input_norm), pass.eps)?;
        let (q, k, v) = self.attention_inputs(&h, pass.heads, pass.eps, &pass.cos, &pass.sin)?;
        let y = match prefix {
            Some((pk, pv)) => {
                let (k, v) = (Tensor::f_cat(&[pk, &k], 2)?, Tensor::f_cat(&[pv, &v], 2)?);
                self.attend_and_mlp(x, &q, &k, &v, pass, None)?
            }
            None => self.attend_and_mlp(x, &q, &k, &v, pass, None)?,
        };
        Ok((y, k, v))
    }

    /// The rest of the layer once its queries, and all the keys and values they attend to, are
    /// known: attention, output projection and residual, then the MLP block. `single_query` as
    /// in [`crate::attention::attend`].
    pub(crate) fn attend_and_mlp(
        &self,
        x: &Tensor,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        pass: &PassInputs,
        single_query: Option<&Tensor>,
    ) -> Result<Tensor> {
        let size = x.size();
        let (b, t) = (size[0], size[1]);
        let width = pass.heads.q * pass.heads.dim;
        let attn = attend(q, k, v, &pass.mask, single_query, pass.upcast_attention)?;
        let attn = attn.f_transpose(1, 2)?.f_reshape([b, t, width])?;
        let x = x.f_add(&self.out_proj(&attn)?)?;
        let h = rms_norm(&x, Some(&self.post_norm), pass.eps)?;
        Ok(x.f_add(&self.mlp(&h)?)?)
    }

    /// The attention output projection.
    pub(crate) fn out_proj(&self, attn: &Tensor) -> Result<Tensor> {
        match &self.packed {
            Some(p) => p.o.apply(attn, self.o_bias.as_ref()),
            None => linear(attn, &self.o, &self.o_bias),
        }
    }

    /// The gated MLP: `down(silu(gate(h)) · up(h))`, gate and up as one product.
    pub(crate) fn mlp(&self, h: &Tensor) -> Result<Tensor> {
        match &self.packed {
            Some(p) => {
                let act = fused::swiglu(&p.gate_up.apply(h, p.gate_up_bias.as_ref())?)?;
                p.down.apply(&act, self.down_bias.as_ref())
            }
            None => {
                let w = Tensor::f_cat(&[&self.gate, &self.up], 0)?;
                let b =
                    fused_bias(&[(&self.gate_bias, &self.gate), (&self.up_bias, &self.up)], false)?;
                let act = fused::swiglu(&linear(h, &w, &b)?)?;
                linear(&act, &self.down, &self.down_bias)
            }
        }
    }
}
