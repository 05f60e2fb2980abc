//! `Conv2d` for the networks: candle's module, plus a faster backward pass on the CPU for training.
//!
//! candle differentiates `conv2d` through `conv_transpose2d`, whose CPU kernel is a per-pixel dot
//! product over the input channels inside 9 thread-synchronised loops per 3×3 kernel; in training
//! it took about half of each step. When the input or the weight needs a gradient on the CPU in
//! f32 ([`super::differentiable::needs_grad`]), the convolution runs as a custom op whose backward
//! pass writes the input gradient as an ordinary `conv2d` (im2col + GEMM): the output gradient,
//! dilated by the stride and zero-padded by `k − 1 − p`, convolved with the weight flipped in space
//! and transposed in channels. The forward pass is candle's `conv2d` either way, so inference (no
//! gradient) is exactly candle's module, and so are other devices.
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use candle_nn::{Module, VarBuilder};

pub use candle_nn::Conv2dConfig;

/// `torch.nn.Conv2d` (keys `weight`, `bias`).
#[derive(Debug, Clone)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
}

/// Loads a convolution like `candle_nn::conv2d`.
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    Ok(Conv2d {
        inner: candle_nn::conv2d(in_channels, out_channels, kernel_size, cfg, vb)?,
    })
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.inner.weight();
        let cfg = self.inner.config();
        let trainable = x.device().is_cpu()
            && x.dtype() == DType::F32
            && w.dtype() == DType::F32
            && cfg.groups == 1
            && cfg.dilation == 1
            && super::differentiable::needs_grad(&[x, w]);
        if !trainable {
            return self.inner.forward(x);
        }
        let op = TrainConv {
            padding: cfg.padding,
            stride: cfg.stride,
        };
        let y = x.contiguous()?.apply_op2(&w.contiguous()?, op)?;
        match self.inner.bias() {
            None => Ok(y),
            Some(b) => y.broadcast_add(&b.reshape((1, b.dims1()?, 1, 1))?),
        }
    }
}

/// A contiguous f32 CPU storage as a (graph-free) tensor.
fn as_tensor(s: &CpuStorage, l: &Layout) -> Result<Tensor> {
    let data = s.as_slice::<f32>()?;
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("train-conv2d: non-contiguous input")
    };
    Tensor::from_slice(&data[start..end], l.shape(), &candle_core::Device::Cpu)
}

/// `conv2d` (no bias, groups 1, dilation 1) with the GEMM-based backward pass.
struct TrainConv {
    padding: usize,
    stride: usize,
}

impl CustomOp2 for TrainConv {
    fn name(&self) -> &'static str {
        "train-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = as_tensor(s1, l1)?.conv2d(&as_tensor(s2, l2)?, self.padding, self.stride, 1, 1)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, grad) = (x.detach(), w.detach(), grad.detach());
        let (_, _, h, wd) = x.dims4()?;
        let (b, cout, ho, wo) = grad.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let (s, p) = (self.stride, self.padding);
        // Input gradient: dilate the output gradient by the stride...
        let mut g = grad.contiguous()?;
        if s > 1 {
            let z = Tensor::zeros((b, cout, ho, s - 1, wo), g.dtype(), g.device())?;
            g = Tensor::cat(&[&g.unsqueeze(3)?, &z], 3)?
                .reshape((b, cout, ho * s, wo))?
                .narrow(2, 0, (ho - 1) * s + 1)?;
            let hd = (ho - 1) * s + 1;
            let z = Tensor::zeros((b, cout, hd, wo, s - 1), g.dtype(), g.device())?;
            g = Tensor::cat(&[&g.unsqueeze(4)?, &z], 4)?
                .reshape((b, cout, hd, wo * s))?
                .narrow(3, 0, (wo - 1) * s + 1)?;
        }
        // ...pad by k − 1 − p (plus what the forward's floor division dropped at the end)...
        let grad_x = if kh > p && kw > p {
            let (top, left) = (kh - 1 - p, kw - 1 - p);
            let (gh, gw) = (g.dim(2)?, g.dim(3)?);
            let bottom = (h + kh - 1).saturating_sub(gh + top);
            let right = (wd + kw - 1).saturating_sub(gw + left);
            let g = g
                .pad_with_zeros(2, top, bottom)?
                .pad_with_zeros(3, left, right)?;
            // ...and convolve with the weight flipped in space, in and out channels swapped.
            let wt = w.flip(&[2, 3])?.transpose(0, 1)?.contiguous()?;
            g.conv2d(&wt, 0, 1, 1, 1)?
                .narrow(2, 0, h)?
                .narrow(3, 0, wd)?
        } else {
            grad.conv_transpose2d(&w, p, h - ((ho - 1) * s + kh - 2 * p), s, 1)?
        };
        // Weight gradient: the input and the output gradient correlated, as candle does.
        let grad_w = x
            .transpose(0, 1)?
            .conv2d(&grad.transpose(0, 1)?, p, 1, s, 1)?
            .transpose(0, 1)?;
        let grad_w = if grad_w.dim(2)? != kh || grad_w.dim(3)? != kw {
            grad_w.narrow(2, 0, kh)?.narrow(3, 0, kw)?
        } else {
            grad_w
        };
        Ok((Some(grad_x), Some(grad_w.contiguous()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The custom backward pass equals candle's for the strides and paddings the networks use
    /// (square inputs: candle's own backward sizes the width like the height).
    #[test]
    fn backward_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        for (k, s, p, size) in [
            (3, 1, 1, 9),
            (3, 2, 1, 9),
            (3, 2, 0, 10),
            (1, 1, 0, 7),
            (3, 2, 1, 8),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, size, size), &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, k, k), &dev)?)?;
            let r = Tensor::randn(
                0f32,
                1.0,
                (2, 4, (size + 2 * p - k) / s + 1, (size + 2 * p - k) / s + 1),
                &dev,
            )?;
            let reference = x.as_tensor().conv2d(w.as_tensor(), p, s, 1, 1)?;
            let ours = x.as_tensor().apply_op2(
                w.as_tensor(),
                TrainConv {
                    padding: p,
                    stride: s,
                },
            )?;
            assert!((&reference - &ours)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
            let g1 = reference.mul(&r)?.sum_all()?.backward()?;
            let g2 = ours.mul(&r)?.sum_all()?.backward()?;
            for v in [&x, &w] {
                let (a, b) = (g1.get(v.as_tensor()), g2.get(v.as_tensor()));
                let (Some(a), Some(b)) = (a, b) else {
                    candle_core::bail!("missing gradient")
                };
                let err = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(err < 1e-4, "k{k} s{s} p{p}: gradient differs by {err}");
            }
        }
        Ok(())
    }
}
