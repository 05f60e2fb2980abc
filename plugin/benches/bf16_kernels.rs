//! Benchmark (not a test): the CPU bf16 kernels (`networks::gemm_bf16`) against the f32 ones on
//! SD1.5's convolution, linear and attention shapes, best of 3 after a warm-up, 2 threads.
//!
//! `cargo bench -p make-your-anchor-engine --bench bf16_kernels`
use anchor_engine::networks::attention::attention;
use anchor_engine::networks::conv::Conv2d;
use anchor_engine::networks::gemm_bf16;
use anchor_engine::networks::linear::Linear;
use candle_core::{Device, Result, Tensor};

fn main() -> Result<()> {
    let Some(kernel) = gemm_bf16::available() else {
        eprintln!("bf16_kernels: skipped: this processor has no bf16 dot-product instructions");
        return Ok(());
    };
    println!("bf16 kernel: {kernel:?}");

    let dev = Device::Cpu;
    let time = |f: &dyn Fn() -> Result<Tensor>| -> Result<f64> {
        f()?;
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = std::time::Instant::now();
            f()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(best)
    };
    let shapes = [
        (4usize, 320usize, 320usize, 64usize, 3usize),
        (4, 640, 640, 32, 3),
        (4, 1280, 1280, 16, 3),
        (4, 2560, 1280, 8, 3),
        (4, 320, 320, 32, 3),
        (4, 640, 640, 16, 3),
        (4, 1280, 1280, 8, 3),
        (4, 1280, 1280, 4, 3),
        (4, 320, 320, 32, 1),
        (4, 1280, 1280, 8, 1),
    ];
    for &(b, c, co, hw, ks) in &shapes {
        let x = Tensor::randn(0f32, 1.0, (b, c, hw, hw), &dev)?;
        let w = Tensor::randn(0f32, 0.02, (co, c, ks, ks), &dev)?;
        let conv = Conv2d::new(
            w,
            None,
            candle_nn::Conv2dConfig {
                padding: ks / 2,
                ..Default::default()
            },
        );
        let f32t = time(&|| candle_nn::Module::forward(&conv, &x))?;
        let _g = gemm_bf16::scope(true);
        let bt = time(&|| candle_nn::Module::forward(&conv, &x))?;
        let gf = 2.0 * (b * co * hw * hw * c * ks * ks) as f64 / 1e9;
        println!("conv {c}->{co} {ks}x{ks} @{hw}² b{b}: f32 {:.1} ms ({:.0} GFLOP/s), bf16 {:.1} ms ({:.0} GFLOP/s)", f32t * 1e3, gf / f32t, bt * 1e3, gf / bt);
    }
    for &(t, i, o) in &[
        (4096usize, 320usize, 320usize),
        (16384, 320, 2560),
        (16384, 1280, 320),
        (1024, 1280, 1280),
    ] {
        let x = Tensor::randn(0f32, 1.0, (1, t, i), &dev)?;
        let lin = Linear::from(candle_nn::Linear::new(
            Tensor::randn(0f32, 0.02, (o, i), &dev)?,
            None,
        ));
        let f32t = time(&|| candle_nn::Module::forward(&lin, &x))?;
        let _g = gemm_bf16::scope(true);
        let bt = time(&|| candle_nn::Module::forward(&lin, &x))?;
        let gf = 2.0 * (t * i * o) as f64 / 1e9;
        println!(
            "linear {t}x{i}->{o}: f32 {:.1} ms ({:.0} GFLOP/s), bf16 {:.1} ms ({:.0} GFLOP/s)",
            f32t * 1e3,
            gf / f32t,
            bt * 1e3,
            gf / bt
        );
    }
    for &(n, l, d) in &[(16usize, 4096usize, 40usize), (2, 16384, 40)] {
        let q = Tensor::randn(0f32, 1.0, (n, l, d), &dev)?;
        let scale = 1.0 / (d as f64).sqrt();
        let f32t = time(&|| attention(&q, &q, &q, scale))?;
        let _g = gemm_bf16::scope(true);
        let bt = time(&|| attention(&q, &q, &q, scale))?;
        let gf = 4.0 * (n * l * l * d) as f64 / 1e9;
        println!(
            "attention {n}x{l}x{d}: f32 {:.1} ms ({:.0} GFLOP/s), bf16 {:.1} ms ({:.0} GFLOP/s)",
            f32t * 1e3,
            gf / f32t,
            bt * 1e3,
            gf / bt
        );
    }
    Ok(())
}
