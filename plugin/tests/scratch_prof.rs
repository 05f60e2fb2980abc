use candle_core::{DType, Device, Module, Tensor};
use std::time::Instant;
fn t<F: FnMut() -> candle_core::Result<Tensor>>(name: &str, flops: f64, mut f: F) -> candle_core::Result<()> {
    let _ = f()?;
    let s = Instant::now();
    let n = 3;
    for _ in 0..n { let _ = f()?; }
    let dt = s.elapsed().as_secs_f64() / n as f64;
    println!("{name}: {:.1} ms, {:.1} GFLOP/s", dt * 1e3, flops / dt / 1e9);
    Ok(())
}
#[test]
fn prof() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (4, 320, 32, 32), &dev)?;
    let w = Tensor::randn(0f32, 0.02, (320, 320, 3, 3), &dev)?;
    let c = candle_nn::Conv2d::new(w.clone(), None, candle_nn::Conv2dConfig { padding: 1, ..Default::default() });
    t("conv3x3 320 [4,320,32,32]", 2. * 4. * 1024. * 320. * 320. * 9., || c.forward(&x))?;
    let q = Tensor::randn(0f32, 1., (8, 4096, 40), &dev)?;
    t("attn 8x4096x40", 4. * 4096. * 4096. * 320., || make_your_anchor::engine::networks::attention::attention(&q, &q, &q, 0.15))?;
    let a = Tensor::randn(0f32, 1., (4096, 320), &dev)?;
    let b = Tensor::randn(0f32, 1., (320, 2560), &dev)?;
    t("matmul 4096x320x2560", 2. * 4096. * 320. * 2560., || a.matmul(&b))?;
    let bt = b.t()?;
    t("matmul 4096x320x2560 via t()", 2. * 4096. * 320. * 2560., || a.matmul(&bt.t()?))?;
    let vb = candle_nn::VarBuilder::zeros(DType::F32, &dev);
    let gn = make_your_anchor::engine::networks::group_norm::GroupNorm::new(32, 320, 1e-5, vb)?;
    t("groupnorm window [4,320,32,32]", 0., || gn.forward_frames(&x, 4))?;
    t("silu [4,320,32,32]", 0., || x.silu())?;
    let s = Tensor::randn(0f32, 1., (8, 1024, 4096), &dev)?;
    t("softmax 8x1024x4096", 0., || candle_nn::ops::softmax_last_dim(&s))?;
    t("exp 8x1024x4096", 0., || s.exp())?;
    Ok(())
}
