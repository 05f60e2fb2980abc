//! Contract tests of the temporal engine on a small stand-in network (exact equality).
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use candle_core::{Device, Tensor};

use super::*;
use crate::{EngineError, Result};

mod farm;

/// A cheap network with cross-frame coupling (the window mean), so windowing matters.
struct ToyNets;
impl WindowNetworks for ToyNets {
    fn predict(&self, x: &Tensor, t: usize, ctrl: &Tensor, scale: f64) -> Result<(Tensor, Tensor)> {
        let m = x.mean_keepdim(0)?;
        let c = ctrl.mean_keepdim(1)?; // [F,1,h,w]
        let base = x.broadcast_add(&m.affine(0.3, 0.0)?)?;
        let u = base.affine(0.4, t as f64 / 1000.0)?.tanh()?;
        let cond = (base
            .affine(0.5, t as f64 / 1000.0)?
            .broadcast_add(&c.affine(0.2 * scale, 0.0)?)?)
        .tanh()?;
        Ok((u, cond))
    }
    fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::sigmoid(&latent.narrow(0, 0, 3)?)?)
    }
    fn identity(&self) -> Key {
        7
    }
}

struct ToySched(Vec<usize>);
impl StepScheduler for ToySched {
    fn timesteps(&self) -> Vec<usize> {
        self.0.clone()
    }
    fn step(&self, eps: &Tensor, t: usize, x: &Tensor) -> Result<Tensor> {
        let a = 0.9 - t as f64 / 10_000.0;
        Ok((x.affine(a, 0.0)? - eps.affine(0.1, 0.0)?)?)
    }
}

/// Control frames computed from the frame index (and an optional edited frame).
struct ToyControl {
    len: usize,
    edited: Option<usize>,
    fetches: AtomicUsize,
}
impl ToyControl {
    fn new(len: usize) -> Self {
        Self {
            len,
            edited: None,
            fetches: AtomicUsize::new(0),
        }
    }
    fn data(&self, f: usize) -> Vec<f32> {
        let bump = if self.edited == Some(f) { 0.5 } else { 0.0 };
        (0..3 * 4 * 4)
            .map(|i| ((f * 31 + i * 7) % 17) as f32 / 17.0 + bump)
            .collect()
    }
}
impl ControlFrames for ToyControl {
    fn len(&self) -> usize {
        self.len
    }
    fn key(&self, f: usize) -> Result<Key> {
        Ok(KeyHasher::tagged("ctrl").f32s(&self.data(f)).finish())
    }
    fn frame(&self, f: usize) -> Result<Tensor> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        Ok(Tensor::from_vec(self.data(f), (3, 4, 4), &Device::Cpu)?)
    }
}

fn noise() -> Tensor {
    noise::initial_noise(42, 4, 4, 4).unwrap()
}

const PARAMS: SamplingParams = SamplingParams {
    guidance: 7.5,
    control_scale: 2.0,
};

fn sched(steps: usize) -> ToySched {
    ToySched((0..steps).rev().map(|i| i * 50 + 1).collect())
}

struct Setup {
    nets: ToyNets,
    sched: ToySched,
    ctrl: ToyControl,
    cache: Cache,
    counters: Counters,
}

impl Setup {
    fn new(len: usize, steps: usize) -> Self {
        Self {
            nets: ToyNets,
            sched: sched(steps),
            ctrl: ToyControl::new(len),
            cache: Cache::new(1 << 30),
            counters: Counters::default(),
        }
    }
    fn denoiser(
        &self,
        window: usize,
        overlap: usize,
        tail: Tail,
        fusion: Fusion,
    ) -> TemporalDenoiser<'_> {
        let plan = WindowPlan::new(self.ctrl.len, window, overlap, tail, fusion).unwrap();
        TemporalDenoiser::new(
            &self.nets,
            &self.sched,
            &self.ctrl,
            &self.cache,
            &self.counters,
            plan,
            PARAMS,
            noise(),
            1,
        )
        .unwrap()
    }
    fn calls(&self) -> u64 {
        self.counters.network_calls.load(Ordering::Relaxed)
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// The reference's joint denoising of the whole clip (the original's pseudocode), written naively.
fn joint_reference(s: &Setup, window: usize, overlap: usize) -> Vec<Tensor> {
    let plan = WindowPlan::new(s.ctrl.len, window, overlap, Tail::Paper, Fusion::Flat).unwrap();
    let l = s.ctrl.len;
    let mut x = Tensor::stack(&vec![noise(); l], 0).unwrap();
    let ctrl = Tensor::stack(
        &(0..l).map(|f| s.ctrl.frame(f).unwrap()).collect::<Vec<_>>(),
        0,
    )
    .unwrap();
    for t in s.sched.timesteps() {
        let mut c_acc = x.zeros_like().unwrap();
        let mut u_acc = x.zeros_like().unwrap();
        let mut n = vec![0f32; l];
        for w in plan.windows() {
            let xw = x.narrow(0, w.start, w.len()).unwrap();
            let cw = ctrl.narrow(0, w.start, w.len()).unwrap();
            let (u, c) = s.nets.predict(&xw, t, &cw, PARAMS.control_scale).unwrap();
            let pad = |e: &Tensor| {
                Tensor::cat(
                    &[
                        Tensor::zeros((w.start, 4, 4, 4), e.dtype(), e.device()).unwrap(),
                        e.clone(),
                        Tensor::zeros((l - w.end, 4, 4, 4), e.dtype(), e.device()).unwrap(),
                    ],
                    0,
                )
                .unwrap()
            };
            u_acc = (u_acc + pad(&u)).unwrap();
            c_acc = (c_acc + pad(&c)).unwrap();
            for f in w.clone() {
                n[f] += 1.0;
            }
        }
        let n = Tensor::from_vec(n, (l, 1, 1, 1), &Device::Cpu).unwrap();
        let u = u_acc.broadcast_div(&n).unwrap();
        let c = c_acc.broadcast_div(&n).unwrap();
        let eps = (&u + ((c - &u).unwrap() * PARAMS.guidance).unwrap()).unwrap();
        x = s.sched.step(&eps, t, &x).unwrap();
    }
    (0..l).map(|f| x.get(f).unwrap()).collect()
}

#[test]
fn equals_joint_denoising_of_the_whole_clip() {
    // 11 frames, window 4, overlap 1: tail windows included.
    let s = Setup::new(11, 5);
    let d = s.denoiser(4, 1, Tail::Paper, Fusion::Flat);
    let reference = joint_reference(&s, 4, 1);
    for (f, r) in reference.iter().enumerate() {
        let x = d.latent(5, f, &NoProgress).unwrap();
        assert_eq!(bits(&x), bits(r), "frame {f}");
    }
    // Exactly windows × steps network calls.
    assert_eq!(s.calls(), 4 * 5);
}

fn render_all(s: &Setup, order: &[usize], threads: usize) -> Vec<Vec<u32>> {
    let d = s.denoiser(4, 1, Tail::Paper, Fusion::Flat);
    let out: Vec<parking_lot::Mutex<Vec<u32>>> =
        (0..order.len()).map(|_| Default::default()).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&f) = order.get(i) else { break };
                *out[f].lock() = bits(&d.image(f, &NoProgress).unwrap());
            });
        }
    });
    out.into_iter().map(|m| m.into_inner()).collect()
}

#[test]
fn order_and_threads_do_not_change_pixels() {
    let n = 23;
    let seq: Vec<usize> = (0..n).collect();
    let rev: Vec<usize> = (0..n).rev().collect();
    let rnd: Vec<usize> = (0..n).map(|i| (i * 7 + 3) % n).collect();
    let a = Setup::new(n, 4);
    let base = render_all(&a, &seq, 1);
    // Exactly windows × steps network calls for a full sequential pass, one decode per frame.
    let windows = WindowPlan::new(n, 4, 1, Tail::Paper, Fusion::Flat)
        .unwrap()
        .windows()
        .len();
    assert_eq!(a.calls(), (windows * 4) as u64);
    assert_eq!(a.counters.decodes.load(Ordering::Relaxed), n as u64);
    for (order, threads) in [(&rev, 1), (&rnd, 1), (&rnd, 4), (&seq, 4)] {
        let b = Setup::new(n, 4);
        assert_eq!(render_all(&b, order, threads), base);
        assert_eq!(
            b.calls(),
            (windows * 4) as u64,
            "single flight: no duplicated window batches"
        );
    }
}

#[test]
fn farm_split_equals_single_pass() {
    let n = 100;
    let whole = Setup::new(n, 3);
    let all = render_all(&whole, &(0..n).collect::<Vec<_>>(), 2);
    // Two "processes": separate caches and counters, each asked for half the range.
    let first = Setup::new(n, 3);
    let second = Setup::new(n, 3);
    let d1 = first.denoiser(4, 1, Tail::Paper, Fusion::Flat);
    let d2 = second.denoiser(4, 1, Tail::Paper, Fusion::Flat);
    for (f, want) in all.iter().enumerate() {
        let d = if f < 50 { &d1 } else { &d2 };
        assert_eq!(&bits(&d.image(f, &NoProgress).unwrap()), want, "frame {f}");
    }
}

#[test]
fn single_frame_cost_does_not_grow_with_clip_length() {
    let cost = |len: usize| {
        let s = Setup::new(len, 4);
        let d = s.denoiser(4, 1, Tail::Paper, Fusion::Flat);
        d.image(len / 2, &NoProgress).unwrap();
        (s.calls(), s.ctrl.fetches.load(Ordering::Relaxed))
    };
    let (c200, _) = cost(200);
    let (c50, _) = cost(50);
    // The cone of 4 steps at stride 3 spans at most 2·4+1 windows per step; frames 25 and 100
    // sit at different offsets inside their windows, so allow one window of difference.
    assert!(
        c200.abs_diff(c50) <= 1,
        "200 frames: {c200} calls, 50 frames: {c50}"
    );
    assert!(c200 <= 4 * 9, "{c200} calls exceed the cone bound");
}

#[test]
fn changed_inputs_recompute_and_unchanged_ones_hit() {
    let s = Setup::new(20, 3);
    let d = s.denoiser(4, 1, Tail::Paper, Fusion::Flat);
    let before: Vec<_> = (0..20)
        .map(|f| bits(&d.image(f, &NoProgress).unwrap()))
        .collect();
    let calls = s.calls();
    // Same settings, same cache: no new work.
    let d = s.denoiser(4, 1, Tail::Paper, Fusion::Flat);
    for (f, want) in before.iter().enumerate() {
        assert_eq!(&bits(&d.image(f, &NoProgress).unwrap()), want);
    }
    assert_eq!(s.calls(), calls);
    // Another fusion: a different key, so the frame is recomputed (window 6, overlap 3, where
    // pyramid weights differ from flat ones in the overlap).
    let flat = bits(
        &s.denoiser(6, 3, Tail::Paper, Fusion::Flat)
            .image(10, &NoProgress)
            .unwrap(),
    );
    let calls = s.calls();
    let d = s.denoiser(6, 3, Tail::Paper, Fusion::Pyramid);
    let pyramid = bits(&d.image(10, &NoProgress).unwrap());
    assert!(s.calls() > calls);
    assert_ne!(pyramid, flat);
    // An edited control frame changes only the frames in its cone.
    let mut edited = Setup::new(20, 3);
    edited.ctrl.edited = Some(2);
    let d = edited.denoiser(4, 1, Tail::Paper, Fusion::Flat);
    assert_ne!(bits(&d.image(2, &NoProgress).unwrap()), before[2]);
    assert_eq!(bits(&d.image(19, &NoProgress).unwrap()), before[19]);
}

struct CancelAfter(AtomicUsize, AtomicBool);
impl Progress for CancelAfter {
    fn window_done(&self, _: usize, _: usize, _: usize) {
        if self.0.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.1.store(true, Ordering::SeqCst);
        }
    }
    fn cancelled(&self) -> bool {
        self.1.load(Ordering::SeqCst)
    }
}

#[test]
fn cancel_then_rerun_gives_the_same_frames() {
    let clean = Setup::new(15, 4);
    let expect = render_all(&clean, &(0..15).collect::<Vec<_>>(), 1);
    let s = Setup::new(15, 4);
    let d = s.denoiser(4, 1, Tail::Paper, Fusion::Flat);
    let cancel = CancelAfter(AtomicUsize::new(5), AtomicBool::new(false));
    let err = d.image(7, &cancel).unwrap_err();
    assert!(matches!(err, EngineError::Cancelled), "{err}");
    assert_eq!(
        s.calls(),
        5,
        "stops at the first window batch after the cancel"
    );
    for (f, want) in expect.iter().enumerate() {
        assert_eq!(&bits(&d.image(f, &NoProgress).unwrap()), want, "frame {f}");
    }
}

#[test]
fn cache_budget_bounds_memory_and_stays_exact() {
    let roomy = Setup::new(30, 4);
    let expect = render_all(&roomy, &(0..30).collect::<Vec<_>>(), 1);
    let mut tight = Setup::new(30, 4);
    tight.cache = Cache::new(16 * 1024);
    let got = render_all(&tight, &(0..30).rev().collect::<Vec<_>>(), 1);
    assert_eq!(got, expect);
    assert!(tight.cache.stats().peak_bytes <= 16 * 1024);
}
