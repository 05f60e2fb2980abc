//! AdamW with the exact update order of `torch.optim.AdamW` (decoupled weight decay, bias
//! corrections, `eps` added after the square root), whose moments can be saved and restored for a
//! bit-exact resume (candle's own `AdamW` keeps them private), and `clip_grad_norm_`.
//!
//! The reference's training settings: lr 1e-5, betas (0.9, 0.999), weight decay 1e-2, eps 1e-8, constant schedule; the
//! gradient norm is clipped to 1.0 on the ControlNet parameters only.
use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::{Result, TrainError};

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    /// Learning rate.
    pub lr: f64,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Denominator epsilon.
    pub eps: f64,
}

impl Default for AdamWParams {
    /// The reference's values.
    fn default() -> Self {
        Self {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.999,
            weight_decay: 1e-2,
            eps: 1e-8,
        }
    }
}

/// One optimised parameter and its moments.
#[derive(Debug)]
struct Slot {
    name: String,
    var: Var,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// AdamW over a fixed, ordered list of named parameters.
#[derive(Debug)]
pub struct AdamW {
    params: AdamWParams,
    slots: Vec<Slot>,
    /// Completed optimizer steps (torch's per-parameter `step`, shared here).
    pub step: u64,
}

impl AdamW {
    /// An optimizer with zero moments over `vars` (names must be unique).
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let z = var.as_tensor().zeros_like()?;
                Ok(Slot {
                    name,
                    var,
                    exp_avg: z.clone(),
                    exp_avg_sq: z,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            params,
            slots,
            step: 0,
        })
    }

    /// The hyper-parameters.
    pub fn params(&self) -> AdamWParams {
        self.params
    }

    /// One update from `grads`; a parameter without a gradient is left alone (torch skips
    /// parameters whose `.grad` is `None`). `scale` multiplies every gradient first (clipping).
    pub fn step(&mut self, grads: &GradStore, scale: &HashMap<String, f64>) -> Result<()> {
        self.step += 1;
        let p = self.params;
        let bc1 = 1.0 - p.beta1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - p.beta2.powi(self.step as i32)).sqrt();
        let step_size = p.lr / bc1;
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            // Gradients computed from activations record ops that reach back into the whole
            // forward graph; detached, the moments do not keep every step's graph alive.
            let g = g.detach();
            let g = match scale.get(&s.name) {
                Some(&c) if c != 1.0 => (g * c)?,
                _ => g,
            };
            let theta = s.var.as_tensor().detach();
            // param.mul_(1 - lr·wd)
            let theta = (theta * (1.0 - p.lr * p.weight_decay))?;
            // exp_avg.lerp_(grad, 1 - β₁);  exp_avg_sq.mul_(β₂).addcmul_(grad, grad, 1 - β₂)
            s.exp_avg = (&s.exp_avg + ((&g - &s.exp_avg)? * (1.0 - p.beta1))?)?.detach();
            s.exp_avg_sq = ((&s.exp_avg_sq * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?.detach();
            // denom = sqrt(v) / sqrt(bc2) + eps;  param.addcdiv_(m, denom, -lr/bc1)
            let denom = ((s.exp_avg_sq.sqrt()? / bc2_sqrt)? + p.eps)?;
            let update = (s.exp_avg.div(&denom)? * step_size)?;
            s.var.set(&(theta - update)?)?;
        }
        Ok(())
    }

    /// The moments, keyed `exp_avg.<name>` and `exp_avg_sq.<name>`.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut m = HashMap::new();
        for s in &self.slots {
            m.insert(format!("exp_avg.{}", s.name), s.exp_avg.clone());
            m.insert(format!("exp_avg_sq.{}", s.name), s.exp_avg_sq.clone());
        }
        m
    }

    /// Restores the moments written by [`AdamW::state`] and the step count.
    pub fn restore(&mut self, state: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for s in &mut self.slots {
            let get = |k: String| -> Result<Tensor> {
                let t = state
                    .get(&k)
                    .ok_or_else(|| TrainError::Data(format!("optimizer state has no '{k}'")))?;
                if t.dims() != s.var.dims() {
                    return Err(TrainError::Data(format!(
                        "optimizer state '{k}' has shape {:?}, the parameter {:?}",
                        t.dims(),
                        s.var.dims()
                    )));
                }
                Ok(t.to_dtype(s.var.dtype())?.to_device(s.var.device())?)
            };
            s.exp_avg = get(format!("exp_avg.{}", s.name))?;
            s.exp_avg_sq = get(format!("exp_avg_sq.{}", s.name))?;
        }
        self.step = step;
        Ok(())
    }
}

/// The global L2 norm of the gradients of `vars` (those without a gradient count as zero).
pub fn grad_norm<'a>(grads: &GradStore, vars: impl Iterator<Item = &'a Var>) -> Result<f64> {
    let mut sum = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            let s = g
                .to_dtype(candle_core::DType::F32)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()?;
            sum += f64::from(s);
        }
    }
    Ok(sum.sqrt())
}

/// torch `clip_grad_norm_`'s factor: `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two steps on f(θ) = Σ θ², checked against the update written out by hand.
    #[test]
    fn matches_torch_update() -> Result<()> {
        let theta = Var::from_slice(&[1.0f32, -2.0], 2, &Device::Cpu)?;
        let p = AdamWParams {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            weight_decay: 0.01,
            eps: 1e-8,
        };
        let mut opt = AdamW::new(vec![("t".into(), theta.clone())], p)?;
        let mut expect = [1.0f64, -2.0];
        let (mut m, mut v) = ([0f64; 2], [0f64; 2]);
        for step in 1..=2 {
            let grads = theta.as_tensor().sqr()?.sum_all()?.backward()?;
            opt.step(&grads, &HashMap::new())?;
            for i in 0..2 {
                let g = 2.0 * expect[i];
                expect[i] *= 1.0 - p.lr * p.weight_decay;
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let bc1 = 1.0 - 0.9f64.powi(step);
                let bc2 = 1.0 - 0.999f64.powi(step);
                expect[i] -= p.lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + p.eps);
            }
        }
        let got = theta.as_tensor().to_vec1::<f32>()?;
        for i in 0..2 {
            assert!(
                (f64::from(got[i]) - expect[i]).abs() < 1e-6,
                "{got:?} vs {expect:?}"
            );
        }
        assert_eq!(clip_factor(4.0, 1.0), 1.0 / (4.0 + 1e-6));
        assert_eq!(clip_factor(0.5, 1.0), 1.0);
        Ok(())
    }
}
