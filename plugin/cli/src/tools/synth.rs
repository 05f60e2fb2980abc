//! `anchor synth`: a synthetic presenter for training and evaluation without real footage
//! (issue 6 "Training"). One procedurally animated 3D body, built from capsules and
//! ellipsoids, is ray-cast (orthographic camera, z-buffered) twice per frame:
//!
//! - the **mesh render**: untextured, grey-blue Lambert shading on black, standing in for the
//!   SMPL-X renders (SHOW's `mica_org/*.png`) the ControlNet is conditioned on;
//! - the **person**: the same surfaces with the identity's appearance (skin, hair, jacket, shirt,
//!   trousers, eyes, brows, mouth) on a studio gradient, so both share one silhouette.
//!
//! Identities come from a seed: `pre00…` for pre-training and `target`, whose last
//! `--heldout-fraction` of frames is the held-out segment written to `OUT/heldout/` and never to a
//! training JSON-Lines file. Motion is a sum of seeded sinusoids per joint angle, squashed by
//! `tanh` into presenter-like limits, so it is smooth and repeatable.
//!
//! Layout under `--out`:
//! - `<id>/{mesh,person,face_matte}/NNNNNN.png`, `<id>/reference.png` (neutral pose),
//!   `<id>/landmarks.json` (`"NNNNNN": [[x, y] × 5]`), `<id>/train.jsonl` (the reference's
//!   `{"source", "target", "reference"}` format, paths relative to the file), `<id>/identity.json`;
//! - `heldout/{mesh,person,face_matte}/NNNNNN.png` numbered from 0, `heldout/landmarks.json`,
//!   `heldout/reference.png` (the target's) and `heldout/segment.json` (which frames they are).
//!
//! Landmarks are in pixels (x right, y down, pixel `i` spans `[i, i+1)`), in the InsightFace order:
//! image-left eye (the subject's right), image-right eye, nose tip, image-left mouth corner,
//! image-right mouth corner. The face matte is 255 where the head or nose is the visible surface.
//! Everything is a pure function of the seed, so output files are byte-identical across runs.
use std::io::Write;
use std::ops::{Add, Mul, Neg, Sub};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::eval::Rgb8;
use super::{io_err, Result, ToolsError};

// ---------------------------------------------------------------------------------------------
// Small linear algebra.

#[derive(Clone, Copy, Debug, PartialEq, Default)]
struct V3 {
    x: f64,
    y: f64,
    z: f64,
}

const fn v3(x: f64, y: f64, z: f64) -> V3 {
    V3 { x, y, z }
}

impl Add for V3 {
    type Output = V3;
    fn add(self, o: V3) -> V3 {
        v3(self.x + o.x, self.y + o.y, self.z + o.z)
    }
}
impl Sub for V3 {
    type Output = V3;
    fn sub(self, o: V3) -> V3 {
        v3(self.x - o.x, self.y - o.y, self.z - o.z)
    }
}
impl Mul<f64> for V3 {
    type Output = V3;
    fn mul(self, s: f64) -> V3 {
        v3(self.x * s, self.y * s, self.z * s)
    }
}
impl Neg for V3 {
    type Output = V3;
    fn neg(self) -> V3 {
        v3(-self.x, -self.y, -self.z)
    }
}

impl V3 {
    fn dot(self, o: V3) -> f64 {
        self.x * o.x + self.y * o.y + self.z * o.z
    }
    fn cross(self, o: V3) -> V3 {
        v3(
            self.y * o.z - self.z * o.y,
            self.z * o.x - self.x * o.z,
            self.x * o.y - self.y * o.x,
        )
    }
    fn norm(self) -> f64 {
        self.dot(self).sqrt()
    }
    fn normalized(self) -> V3 {
        let n = self.norm();
        if n > 1e-12 {
            self * (1.0 / n)
        } else {
            v3(0.0, 0.0, 1.0)
        }
    }
    fn hadamard(self, o: V3) -> V3 {
        v3(self.x * o.x, self.y * o.y, self.z * o.z)
    }
    fn div(self, o: V3) -> V3 {
        v3(self.x / o.x, self.y / o.y, self.z / o.z)
    }
    /// The part of `self` orthogonal to the unit vector `u`.
    fn reject(self, u: V3) -> V3 {
        self - u * self.dot(u)
    }
    fn lerp(self, o: V3, t: f64) -> V3 {
        self * (1.0 - t) + o * t
    }
}

/// A rotation as the images of the local axes (its columns).
#[derive(Clone, Copy, Debug)]
struct M3 {
    c: [V3; 3],
}

impl M3 {
    fn apply(&self, v: V3) -> V3 {
        self.c[0] * v.x + self.c[1] * v.y + self.c[2] * v.z
    }
    fn apply_t(&self, v: V3) -> V3 {
        v3(self.c[0].dot(v), self.c[1].dot(v), self.c[2].dot(v))
    }
    fn then(&self, o: &M3) -> M3 {
        M3 {
            c: [self.apply(o.c[0]), self.apply(o.c[1]), self.apply(o.c[2])],
        }
    }
    fn rot_x(a: f64) -> M3 {
        let (s, c) = a.sin_cos();
        M3 {
            c: [v3(1.0, 0.0, 0.0), v3(0.0, c, s), v3(0.0, -s, c)],
        }
    }
    fn rot_y(a: f64) -> M3 {
        let (s, c) = a.sin_cos();
        M3 {
            c: [v3(c, 0.0, -s), v3(0.0, 1.0, 0.0), v3(s, 0.0, c)],
        }
    }
    fn rot_z(a: f64) -> M3 {
        let (s, c) = a.sin_cos();
        M3 {
            c: [v3(c, s, 0.0), v3(-s, c, 0.0), v3(0.0, 0.0, 1.0)],
        }
    }
}

/// SplitMix64: a tiny, well-mixed generator; identities and motion depend on nothing else.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[(self.next_u64() % xs.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------------------------
// Geometry.

/// Which body part a surface belongs to (selects the person's material).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Chest,
    Abdomen,
    Shoulder,
    UpperArm,
    Forearm,
    Hand,
    Finger,
    Neck,
    Head,
    Nose,
    Thigh,
}

#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Centre, orientation and semi-axes.
    Ellipsoid { c: V3, rot: M3, r: V3 },
    /// Segment `a`–`b` swept by a ball of radius `r`.
    Capsule { a: V3, b: V3, r: f64 },
}

#[derive(Clone, Copy, Debug)]
struct Prim {
    shape: Shape,
    part: Part,
}

/// The visible surface point of a ray: depth (towards the camera is larger), world normal, and
/// part-local coordinates (unit-sphere point for ellipsoids, `(s, 0, 0)` along a capsule's axis).
#[derive(Clone, Copy, Debug)]
struct Hit {
    z: f64,
    normal: V3,
    local: V3,
}

fn sphere_front(c: V3, r: f64, x: f64, y: f64) -> Option<f64> {
    let (dx, dy) = (x - c.x, y - c.y);
    let d2 = r * r - dx * dx - dy * dy;
    (d2 >= 0.0).then(|| c.z + d2.sqrt())
}

impl Prim {
    /// The front-most intersection of the camera ray through `(x, y)` (looking down −z).
    fn hit(&self, x: f64, y: f64) -> Option<Hit> {
        match self.shape {
            Shape::Ellipsoid { c, rot, r } => {
                // Local q(z) = q0 + z·w; solve |q|² = 1 for the larger root.
                let q0 = rot.apply_t(v3(x, y, 0.0) - c).div(r);
                let w = v3(rot.c[0].z, rot.c[1].z, rot.c[2].z).div(r);
                let (a, b, cc) = (w.dot(w), q0.dot(w), q0.dot(q0) - 1.0);
                let disc = b * b - a * cc;
                if disc < 0.0 {
                    return None;
                }
                let z = (-b + disc.sqrt()) / a;
                let q = q0 + w * z;
                Some(Hit {
                    z,
                    normal: rot.apply(q.div(r)).normalized(),
                    local: q,
                })
            }
            Shape::Capsule { a, b, r } => {
                // The union of the two end balls and the lateral surface between them: the
                // front-most of their front hits.
                let ba = b - a;
                let l2 = ba.dot(ba).max(1e-12);
                let o = v3(x, y, 0.0) - a;
                let d = v3(0.0, 0.0, 1.0);
                let axis = ba * (1.0 / l2.sqrt());
                let (op, dp) = (o.reject(axis), d.reject(axis));
                let mut best: Option<(f64, V3)> = None;
                let qa = dp.dot(dp);
                if qa > 1e-12 {
                    let qb = op.dot(dp);
                    let disc = qb * qb - qa * (op.dot(op) - r * r);
                    if disc >= 0.0 {
                        let z = (-qb + disc.sqrt()) / qa;
                        let s = (o + d * z).dot(ba) / l2;
                        if (0.0..=1.0).contains(&s) {
                            best = Some((z, a + ba * s));
                        }
                    }
                }
                for c in [a, b] {
                    if let Some(z) = sphere_front(c, r, x, y) {
                        if best.is_none_or(|(bz, _)| z > bz) {
                            best = Some((z, c));
                        }
                    }
                }
                best.map(|(z, centre)| {
                    let p = v3(x, y, z);
                    let s = ((p - a).dot(ba) / l2).clamp(0.0, 1.0);
                    Hit {
                        z,
                        normal: (p - centre).normalized(),
                        local: v3(s, 0.0, 0.0),
                    }
                })
            }
        }
    }

    /// World-space x and y bounds.
    fn bounds(&self) -> (f64, f64, f64, f64) {
        match self.shape {
            Shape::Ellipsoid { c, rot, r } => {
                let ex = ((rot.c[0].x * r.x).powi(2)
                    + (rot.c[1].x * r.y).powi(2)
                    + (rot.c[2].x * r.z).powi(2))
                .sqrt();
                let ey = ((rot.c[0].y * r.x).powi(2)
                    + (rot.c[1].y * r.y).powi(2)
                    + (rot.c[2].y * r.z).powi(2))
                .sqrt();
                (c.x - ex, c.x + ex, c.y - ey, c.y + ey)
            }
            Shape::Capsule { a, b, r } => (
                a.x.min(b.x) - r,
                a.x.max(b.x) + r,
                a.y.min(b.y) - r,
                a.y.max(b.y) + r,
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Body, pose and motion.

/// Body proportions of an identity (metres, roughly).
#[derive(Clone, Debug, serde::Serialize)]
struct Body {
    shoulder_half: f64,
    chest: [f64; 3],
    abdomen: [f64; 3],
    head: [f64; 3],
    upper_arm: f64,
    forearm: f64,
}

/// Joint angles of one arm (radians; `open` in 0..1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArmPose {
    /// Sideways raise of the upper arm.
    pub abduction: f64,
    /// Forward raise of the upper arm.
    pub flexion: f64,
    /// Elbow bend.
    pub elbow: f64,
    /// Forearm swing towards the body's midline.
    pub swing: f64,
    /// Wrist bend upwards.
    pub wrist: f64,
    /// Hand openness: 0 a loose fist, 1 spread fingers.
    pub open: f64,
}

/// A full pose of the presenter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pose {
    /// Sideways shift of the pelvis.
    pub sway: f64,
    /// Torso turn, lean sideways and lean forwards.
    pub torso: [f64; 3],
    /// Head turn (yaw), nod (pitch, down is positive) and tilt (roll).
    pub head: [f64; 3],
    /// Subject's right arm (image left), then left arm.
    pub arms: [ArmPose; 2],
}

impl Pose {
    /// Standing straight, arms relaxed, looking into the camera.
    pub fn neutral() -> Self {
        let arm = ArmPose {
            abduction: 0.12,
            flexion: 0.05,
            elbow: 0.3,
            swing: 0.3,
            wrist: 0.0,
            open: 0.6,
        };
        Pose {
            sway: 0.0,
            torso: [0.0; 3],
            head: [0.0; 3],
            arms: [arm; 2],
        }
    }
}

/// One smooth bounded signal: `mid + half·tanh(Σ aᵢ sin(2π fᵢ t + φᵢ))`.
#[derive(Clone, Debug)]
struct Channel {
    mid: f64,
    half: f64,
    terms: [(f64, f64, f64); 3],
}

impl Channel {
    fn new(rng: &mut Rng, lo: f64, hi: f64, fmin: f64, fmax: f64) -> Self {
        let mut terms = [(0.0, 0.0, 0.0); 3];
        for (k, t) in terms.iter_mut().enumerate() {
            // Lower harmonics carry more weight, so motion is mostly slow with some quick accents.
            let amp = rng.range(0.5, 1.0) / (k as f64 + 1.0);
            let f = fmin * (fmax / fmin).powf(rng.range(k as f64 / 3.0, (k as f64 + 1.0) / 3.0));
            *t = (amp, f, rng.range(0.0, std::f64::consts::TAU));
        }
        Channel {
            mid: 0.5 * (lo + hi),
            half: 0.5 * (hi - lo),
            terms,
        }
    }
    fn at(&self, t: f64) -> f64 {
        let s: f64 = self
            .terms
            .iter()
            .map(|&(a, f, p)| a * (std::f64::consts::TAU * f * t + p).sin())
            .sum();
        self.mid + self.half * (1.2 * s).tanh()
    }
}

/// The seeded motion of an identity: one channel per pose parameter.
#[derive(Clone, Debug)]
struct Motion {
    channels: Vec<Channel>,
}

/// `(lo, hi, fmin Hz, fmax Hz)` per channel: sway, torso ×3, head ×3, then per arm ×6.
const BODY_LIMITS: [(f64, f64, f64, f64); 7] = [
    (-0.025, 0.025, 0.05, 0.25),
    (-0.15, 0.15, 0.05, 0.3),
    (-0.05, 0.05, 0.05, 0.3),
    (-0.02, 0.08, 0.05, 0.3),
    (-0.45, 0.45, 0.08, 0.5),
    (-0.15, 0.25, 0.15, 0.9),
    (-0.12, 0.12, 0.05, 0.4),
];
const ARM_LIMITS: [(f64, f64, f64, f64); 6] = [
    (0.08, 0.45, 0.08, 0.5),
    (0.0, 0.85, 0.08, 0.5),
    (0.25, 1.9, 0.1, 0.7),
    (-0.3, 0.7, 0.05, 0.5),
    (-0.3, 0.4, 0.1, 0.8),
    (0.0, 1.0, 0.15, 1.0),
];

impl Motion {
    fn new(rng: &mut Rng) -> Self {
        let channels = BODY_LIMITS
            .iter()
            .chain(ARM_LIMITS.iter())
            .chain(ARM_LIMITS.iter())
            .map(|&(lo, hi, f0, f1)| Channel::new(rng, lo, hi, f0, f1))
            .collect();
        Motion { channels }
    }
    fn pose(&self, t: f64) -> Pose {
        let v: Vec<f64> = self.channels.iter().map(|c| c.at(t)).collect();
        let arm = |o: usize| ArmPose {
            abduction: v[o],
            flexion: v[o + 1],
            elbow: v[o + 2],
            swing: v[o + 3],
            wrist: v[o + 4],
            open: v[o + 5],
        };
        Pose {
            sway: v[0],
            torso: [v[1], v[2], v[3]],
            head: [v[4], v[5], v[6]],
            arms: [arm(7), arm(13)],
        }
    }
}

/// The head's frame, for face features and landmarks.
#[derive(Clone, Copy, Debug)]
struct HeadFrame {
    c: V3,
    rot: M3,
    r: V3,
    nose_tip: V3,
}

const EYE: V3 = v3(0.34, 0.16, 0.92);
const MOUTH_CORNER: V3 = v3(0.17, -0.55, 0.82);
const NOSE_R: V3 = v3(0.014, 0.022, 0.022);

fn ellipsoid(c: V3, rot: M3, r: V3, part: Part) -> Prim {
    Prim {
        shape: Shape::Ellipsoid { c, rot, r },
        part,
    }
}

fn capsule(a: V3, b: V3, r: f64, part: Part) -> Prim {
    Prim {
        shape: Shape::Capsule { a, b, r },
        part,
    }
}

fn arr(a: [f64; 3]) -> V3 {
    v3(a[0], a[1], a[2])
}

/// Builds the body's primitives for a pose (x right, y up, z towards the camera; the subject
/// faces the camera, so its right side is at −x).
fn build(body: &Body, pose: &Pose) -> (Vec<Prim>, HeadFrame) {
    let mut prims = Vec::with_capacity(48);
    let pelvis = v3(pose.sway, 0.0, 0.0);
    let rt = M3::rot_y(pose.torso[0])
        .then(&M3::rot_z(pose.torso[1]))
        .then(&M3::rot_x(pose.torso[2]));
    let at = |p: V3| pelvis + rt.apply(p);
    prims.push(ellipsoid(
        at(v3(0.0, 0.13, 0.0)),
        rt,
        arr(body.abdomen),
        Part::Abdomen,
    ));
    prims.push(ellipsoid(
        at(v3(0.0, 0.37, 0.0)),
        rt,
        arr(body.chest),
        Part::Chest,
    ));
    for sx in [-1.0, 1.0] {
        let hip = pelvis + v3(sx * 0.09, -0.03, 0.0);
        prims.push(capsule(
            hip,
            hip + v3(sx * 0.01, -0.72, 0.02),
            0.085,
            Part::Thigh,
        ));
    }

    // Neck and head: the neck takes half of the head's rotation.
    let [hy, hp, hr] = pose.head;
    let rh = rt
        .then(&M3::rot_y(hy))
        .then(&M3::rot_x(hp))
        .then(&M3::rot_z(hr));
    let rn = rt.then(&M3::rot_y(0.5 * hy)).then(&M3::rot_x(0.5 * hp));
    let neck0 = at(v3(0.0, 0.53, 0.0));
    let neck1 = neck0 + rn.apply(v3(0.0, 0.1, 0.0));
    prims.push(capsule(neck0, neck1, 0.05, Part::Neck));
    let head_r = arr(body.head);
    let head_c = neck1 + rh.apply(v3(0.0, 0.085, 0.012));
    prims.push(ellipsoid(head_c, rh, head_r, Part::Head));
    let nose_c = head_c + rh.apply(v3(0.0, 0.0, head_r.z * 0.93));
    prims.push(ellipsoid(nose_c, rh, NOSE_R, Part::Nose));
    let head = HeadFrame {
        c: head_c,
        rot: rh,
        r: head_r,
        nose_tip: nose_c + rh.apply(v3(0.0, 0.0, NOSE_R.z)),
    };

    let up = rt.apply(v3(0.0, 1.0, 0.0));
    let fwd = rt.apply(v3(0.0, 0.0, 1.0));
    for (side, arm) in pose.arms.iter().enumerate() {
        // side 0 is the subject's right (−x).
        let sx = if side == 0 { -1.0 } else { 1.0 };
        let shoulder = at(v3(sx * body.shoulder_half, 0.5, 0.0));
        prims.push(ellipsoid(
            shoulder,
            rt,
            v3(0.055, 0.05, 0.055),
            Part::Shoulder,
        ));
        let u = rt
            .apply(
                M3::rot_x(-arm.flexion)
                    .then(&M3::rot_z(sx * arm.abduction))
                    .apply(v3(0.0, -1.0, 0.0)),
            )
            .normalized();
        let elbow = shoulder + u * body.upper_arm;
        prims.push(capsule(shoulder, elbow, 0.046, Part::UpperArm));
        let f_perp = fwd.reject(u).normalized();
        let medial = rt.apply(v3(-sx, 0.0, 0.0));
        let m_perp = medial.reject(u).reject(f_perp).normalized();
        let swing = f_perp * arm.swing.cos() + m_perp * arm.swing.sin();
        let v = (u * arm.elbow.cos() + swing * arm.elbow.sin()).normalized();
        let wrist = elbow + v * body.forearm;
        prims.push(capsule(elbow, wrist, 0.037, Part::Forearm));

        // Hand frame: axis h, palm normal n (facing the midline and up), thumb side s.
        let up_v = up.reject(v).normalized();
        let h = (v + up_v * arm.wrist).normalized();
        let n = (medial * 0.8 + up * 0.4).reject(h).normalized();
        let mut s = h.cross(n).normalized();
        if s.dot(up) < 0.0 {
            s = -s;
        }
        let palm = wrist + h * 0.05;
        prims.push(ellipsoid(
            palm,
            M3 { c: [s, h, n] },
            v3(0.042, 0.05, 0.018),
            Part::Hand,
        ));
        let curl = (1.0 - arm.open) * 1.5;
        let fingers = [
            (0.027, 0.07),
            (0.009, 0.076),
            (-0.009, 0.072),
            (-0.027, 0.058),
        ];
        for (k, &(offset, len)) in fingers.iter().enumerate() {
            let spread = (1.5 - k as f64) * 0.12 * arm.open;
            let base = palm + h * 0.045 + s * offset;
            let d1 = (h * (0.5 * curl).cos() + n * (0.5 * curl).sin() + s * spread).normalized();
            let d2 = (h * curl.cos() + n * curl.sin() + s * spread).normalized();
            let mid = base + d1 * (0.55 * len);
            prims.push(capsule(base, mid, 0.0105, Part::Finger));
            prims.push(capsule(mid, mid + d2 * (0.45 * len), 0.0095, Part::Finger));
        }
        let thumb0 = palm + s * 0.035 - h * 0.015;
        let td = (h * 0.6 + s * (0.5 + 0.3 * arm.open) + n * (0.4 * (1.0 - arm.open))).normalized();
        let thumb1 = thumb0 + td * 0.035;
        let td2 = (td + n * (0.6 * (1.0 - arm.open))).normalized();
        prims.push(capsule(thumb0, thumb1, 0.012, Part::Finger));
        prims.push(capsule(thumb1, thumb1 + td2 * 0.03, 0.0105, Part::Finger));
    }
    (prims, head)
}

// ---------------------------------------------------------------------------------------------
// Appearance.

type Rgb = V3;

/// An identity's appearance (linear-ish RGB in 0..1).
#[derive(Clone, Debug, serde::Serialize)]
struct Look {
    skin: [f64; 3],
    hair: [f64; 3],
    iris: [f64; 3],
    lips: [f64; 3],
    jacket: [f64; 3],
    shirt: [f64; 3],
    tie: Option<[f64; 3]>,
    trousers: [f64; 3],
    background_top: [f64; 3],
    background_bottom: [f64; 3],
    /// Height of the hairline on the forehead (unit-sphere y).
    hairline: f64,
    /// How far the hair reaches down the back of the head (unit-sphere y, negative is lower).
    hair_length: f64,
}

const SKINS: [[f64; 3]; 6] = [
    [0.96, 0.80, 0.69],
    [0.90, 0.72, 0.58],
    [0.80, 0.60, 0.45],
    [0.66, 0.47, 0.33],
    [0.50, 0.34, 0.24],
    [0.36, 0.24, 0.17],
];
const HAIRS: [[f64; 3]; 6] = [
    [0.06, 0.05, 0.05],
    [0.20, 0.13, 0.08],
    [0.40, 0.26, 0.14],
    [0.80, 0.66, 0.40],
    [0.55, 0.23, 0.10],
    [0.62, 0.62, 0.64],
];
const IRISES: [[f64; 3]; 4] = [
    [0.30, 0.18, 0.08],
    [0.15, 0.30, 0.55],
    [0.25, 0.40, 0.22],
    [0.12, 0.08, 0.05],
];
const JACKETS: [[f64; 3]; 6] = [
    [0.10, 0.14, 0.30],
    [0.20, 0.20, 0.22],
    [0.45, 0.08, 0.12],
    [0.12, 0.30, 0.18],
    [0.05, 0.05, 0.06],
    [0.60, 0.45, 0.28],
];
const SHIRTS: [[f64; 3]; 4] = [
    [0.95, 0.95, 0.93],
    [0.72, 0.82, 0.95],
    [0.95, 0.80, 0.82],
    [0.93, 0.90, 0.80],
];
const TROUSERS: [[f64; 3]; 4] = [
    [0.15, 0.15, 0.17],
    [0.05, 0.05, 0.06],
    [0.10, 0.12, 0.25],
    [0.55, 0.48, 0.35],
];
const BACKGROUNDS: [([f64; 3], [f64; 3]); 4] = [
    ([0.62, 0.70, 0.80], [0.36, 0.42, 0.52]),
    ([0.60, 0.78, 0.78], [0.30, 0.45, 0.48]),
    ([0.80, 0.80, 0.84], [0.50, 0.52, 0.58]),
    ([0.55, 0.62, 0.88], [0.25, 0.30, 0.50]),
];

fn jitter(rng: &mut Rng, c: [f64; 3], amount: f64) -> [f64; 3] {
    let k = rng.range(1.0 - amount, 1.0 + amount);
    c.map(|v| (v * k).clamp(0.0, 1.0))
}

/// Smallest largest-channel distance between any shade of the identity's materials and any row
/// of the background. A person pixel must stay apart from the background so that
/// `eval::foreground` (threshold 24/255) finds the mesh silhouette in the person frame.
fn background_margin(materials: &[[f64; 3]], top: [f64; 3], bottom: [f64; 3]) -> f64 {
    let mut margin = f64::INFINITY;
    for m in materials {
        let c = arr(*m).hadamard(PERSON_TINT);
        for ks in 0..=17 {
            let shade = c * (0.25 + 0.05 * f64::from(ks));
            for r in 0..=10 {
                let bg = arr(top).lerp(arr(bottom), f64::from(r) / 10.0);
                let d = (shade - bg)
                    .x
                    .abs()
                    .max((shade - bg).y.abs())
                    .max((shade - bg).z.abs());
                margin = margin.min(d);
            }
        }
    }
    margin
}

/// The background must stay this far (largest channel, 0..1) from every material shade.
const BACKGROUND_MARGIN: f64 = 40.0 / 255.0;

impl Look {
    fn new(rng: &mut Rng) -> Self {
        let shirt = rng.pick(&SHIRTS);
        let tie_colour = rng.pick(&JACKETS);
        let has_tie = rng.unit() < 0.5;
        let skin = rng.pick(&SKINS);
        let hair = rng.pick(&HAIRS);
        let jacket = rng.pick(&JACKETS);
        let skin = jitter(rng, skin, 0.05);
        let hair = jitter(rng, hair, 0.1);
        let jacket = jitter(rng, jacket, 0.1);
        let tie = has_tie.then_some(tie_colour.map(|v| (v * 1.4).min(1.0)));
        let trousers = rng.pick(&TROUSERS);
        let lips = [0.70, 0.38, 0.36];
        let mut materials = vec![skin, hair, jacket, shirt, trousers, lips];
        materials.extend(tie);
        // Draw backgrounds until one contrasts with every material; keep the best otherwise.
        let mut best = ([0.0; 3], [0.0; 3], f64::NEG_INFINITY);
        for _ in 0..32 {
            let (top, bottom) = rng.pick(&BACKGROUNDS);
            let (top, bottom) = (jitter(rng, top, 0.05), jitter(rng, bottom, 0.05));
            let margin = background_margin(&materials, top, bottom);
            if margin > best.2 {
                best = (top, bottom, margin);
            }
            if margin >= BACKGROUND_MARGIN {
                break;
            }
        }
        Look {
            skin,
            hair,
            iris: rng.pick(&IRISES),
            lips,
            jacket,
            shirt,
            tie,
            trousers,
            background_top: best.0,
            background_bottom: best.1,
            hairline: rng.range(0.42, 0.62),
            hair_length: rng.range(-0.75, -0.1),
        }
    }
}

/// Albedo of the head surface at unit-sphere point `q` (x towards the subject's left, y up, z
/// out of the face).
fn head_albedo(look: &Look, q: V3) -> Rgb {
    let skin = arr(look.skin);
    let hair = arr(look.hair);
    // Hairline: high on the forehead, at ear level on the sides, lower at the back.
    let line = if q.z >= 0.0 {
        0.05 + (look.hairline - 0.05) * q.z
    } else {
        0.05 + (look.hair_length - 0.05) * (-q.z)
    };
    if q.y > line {
        return hair;
    }
    if q.z < 0.5 {
        return skin;
    }
    for sx in [-1.0, 1.0] {
        let (dx, dy) = (q.x - sx * EYE.x, q.y - EYE.y);
        if dx.abs() < 0.12 && dy.abs() < 0.06 * (1.0 - (dx / 0.12).powi(2)) {
            let d2 = dx * dx + dy * dy;
            return if d2 < 0.024f64.powi(2) {
                v3(0.03, 0.03, 0.03)
            } else if d2 < 0.05f64.powi(2) {
                arr(look.iris)
            } else {
                v3(0.93, 0.92, 0.90)
            };
        }
        let arch = 0.12 + 0.035 * (1.0 - (dx / 0.13).powi(2));
        if dx.abs() < 0.13 && (dy - arch).abs() < 0.025 {
            return hair * 0.85;
        }
    }
    let (dx, dy) = (q.x, q.y - MOUTH_CORNER.y);
    if dx.abs() < MOUTH_CORNER.x {
        let half = 0.045 * (1.0 - (dx / MOUTH_CORNER.x).powi(2));
        if dy.abs() < 0.008 {
            return arr(look.lips) * 0.45;
        }
        if dy.abs() < half {
            return arr(look.lips);
        }
    }
    skin
}

fn albedo(look: &Look, part: Part, local: V3) -> Rgb {
    let jacket = arr(look.jacket);
    let shirt = arr(look.shirt);
    match part {
        Part::Head => head_albedo(look, local),
        Part::Nose | Part::Neck | Part::Hand | Part::Finger => arr(look.skin),
        Part::Chest => {
            let q = local;
            let v_half = 0.38 * (q.y + 0.15);
            if q.z > 0.2 && q.y > -0.15 && q.x.abs() < v_half {
                match look.tie {
                    Some(t) if q.x.abs() < 0.07 && q.y < 0.78 => arr(t),
                    _ => shirt,
                }
            } else if q.z > 0.2 && q.y > -0.15 && q.x.abs() < v_half + 0.05 {
                jacket * 0.75 // lapel edge
            } else {
                jacket
            }
        }
        Part::Abdomen | Part::Shoulder | Part::UpperArm => jacket,
        Part::Forearm => {
            if local.x > 0.92 {
                shirt
            } else {
                jacket
            }
        }
        Part::Thigh => arr(look.trousers),
    }
}

/// Warm tint of the studio light on the person.
const PERSON_TINT: V3 = v3(1.0, 0.98, 0.95);
const KEY_LIGHT: V3 = v3(-0.42, 0.5, 0.76);
const FILL_LIGHT: V3 = v3(0.6, 0.1, 0.79);
/// Grey-blue of the mesh renders (SHOW's SMPL-X renders).
const MESH_ALBEDO: V3 = v3(0.62, 0.68, 0.82);

fn to_u8(c: Rgb) -> [u8; 3] {
    [c.x, c.y, c.z].map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
}

// ---------------------------------------------------------------------------------------------
// Rendering.

/// Orthographic framing of the presenter (hips to above the head), 1.04 × 1.04 world units.
#[derive(Clone, Copy, Debug)]
struct Camera {
    size: usize,
    centre: (f64, f64),
    scale: f64,
}

impl Camera {
    fn new(size: usize) -> Self {
        Camera {
            size,
            centre: (0.0, 0.38),
            scale: size as f64 / 1.04,
        }
    }
    fn to_world(self, px: f64, py: f64) -> (f64, f64) {
        let h = self.size as f64 / 2.0;
        (
            self.centre.0 + (px - h) / self.scale,
            self.centre.1 - (py - h) / self.scale,
        )
    }
    fn to_pixel(self, p: V3) -> [f64; 2] {
        let h = self.size as f64 / 2.0;
        [
            (p.x - self.centre.0) * self.scale + h,
            (self.centre.1 - p.y) * self.scale + h,
        ]
    }
}

/// One rendered frame.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameRender {
    /// The grey-blue mesh render on black.
    pub mesh: Rgb8,
    /// The person on the studio background.
    pub person: Rgb8,
    /// 255 where the head (or nose) is the visible surface, else 0; one byte per pixel.
    pub face_matte: Vec<u8>,
    /// Five face landmarks in pixels (see the module doc for the order).
    pub landmarks: [[f64; 2]; 5],
}

/// A synthetic identity: appearance, proportions and motion, all from one seed.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Folder name (`pre00`, …, `target`).
    pub name: String,
    /// The identity's own seed.
    pub seed: u64,
    look: Look,
    body: Body,
    motion: Motion,
}

impl Identity {
    /// The identity drawn from `seed`.
    pub fn new(name: &str, seed: u64) -> Self {
        let mut rng = Rng(seed);
        let look = Look::new(&mut rng);
        let girth = rng.range(0.92, 1.1);
        let body = Body {
            shoulder_half: rng.range(0.16, 0.185),
            chest: [0.2 * girth, 0.22, 0.12 * girth],
            abdomen: [0.17 * girth, 0.2, 0.11 * girth],
            head: [0.082, 0.105, 0.095].map(|v| v * rng.range(0.96, 1.04)),
            upper_arm: 0.27,
            forearm: 0.24,
        };
        let motion = Motion::new(&mut rng);
        Identity {
            name: name.to_string(),
            seed,
            look,
            body,
            motion,
        }
    }

    /// The pose at time `t` seconds.
    pub fn pose(&self, t: f64) -> Pose {
        self.motion.pose(t)
    }

    /// Renders a pose at `size`×`size` pixels.
    pub fn render(&self, pose: &Pose, size: usize) -> FrameRender {
        render(self, pose, size)
    }
}

fn render(id: &Identity, pose: &Pose, size: usize) -> FrameRender {
    let cam = Camera::new(size);
    let (prims, head) = build(&id.body, pose);
    let n = size * size;
    let mut zbuf = vec![f64::NEG_INFINITY; n];
    let mut hits: Vec<Option<(usize, Hit)>> = vec![None; n];
    for (k, prim) in prims.iter().enumerate() {
        let (x0, x1, y0, y1) = prim.bounds();
        let [px0, py0] = cam.to_pixel(v3(x0, y1, 0.0));
        let [px1, py1] = cam.to_pixel(v3(x1, y0, 0.0));
        let clamp = |v: f64| (v.max(0.0) as usize).min(size);
        let (ix0, ix1) = (clamp(px0.floor()), clamp(px1.ceil() + 1.0));
        let (iy0, iy1) = (clamp(py0.floor()), clamp(py1.ceil() + 1.0));
        for py in iy0..iy1 {
            for px in ix0..ix1 {
                let (x, y) = cam.to_world(px as f64 + 0.5, py as f64 + 0.5);
                if let Some(hit) = prim.hit(x, y) {
                    let i = py * size + px;
                    if hit.z > zbuf[i] {
                        zbuf[i] = hit.z;
                        hits[i] = Some((k, hit));
                    }
                }
            }
        }
    }

    let key = KEY_LIGHT.normalized();
    let fill = FILL_LIGHT.normalized();
    let mut mesh = vec![0u8; n * 3];
    let mut person = vec![0u8; n * 3];
    let mut face_matte = vec![0u8; n];
    let (bg_top, bg_bottom) = (arr(id.look.background_top), arr(id.look.background_bottom));
    for py in 0..size {
        let bg = to_u8(bg_top.lerp(bg_bottom, (py as f64 + 0.5) / size as f64));
        for px in 0..size {
            let i = py * size + px;
            let Some((k, hit)) = hits[i] else {
                person[i * 3..i * 3 + 3].copy_from_slice(&bg);
                continue;
            };
            let part = prims[k].part;
            let lk = hit.normal.dot(key).max(0.0);
            let lf = hit.normal.dot(fill).max(0.0);
            let m = MESH_ALBEDO * (0.22 + 0.62 * lk + 0.22 * lf);
            mesh[i * 3..i * 3 + 3].copy_from_slice(&to_u8(m));
            let a = albedo(&id.look, part, hit.local);
            let p = a.hadamard(PERSON_TINT) * (0.3 + 0.6 * lk + 0.2 * lf);
            person[i * 3..i * 3 + 3].copy_from_slice(&to_u8(p));
            if matches!(part, Part::Head | Part::Nose) {
                face_matte[i] = 255;
            }
        }
    }

    let on_head = |q: V3| head.c + head.rot.apply(head.r.hadamard(q.normalized()));
    let landmarks = [
        on_head(v3(-EYE.x, EYE.y, EYE.z)),
        on_head(EYE),
        head.nose_tip,
        on_head(v3(-MOUTH_CORNER.x, MOUTH_CORNER.y, MOUTH_CORNER.z)),
        on_head(MOUTH_CORNER),
    ]
    .map(|p| cam.to_pixel(p));
    FrameRender {
        mesh: Rgb8 {
            width: size,
            height: size,
            data: mesh,
        },
        person: Rgb8 {
            width: size,
            height: size,
            data: person,
        },
        face_matte,
        landmarks,
    }
}

// ---------------------------------------------------------------------------------------------
// The command.

/// `anchor synth` arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct SynthArgs {
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of all identities and their motion.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Pre-training identities (`pre00`, …); the held-out `target` comes on top.
    #[arg(long, default_value_t = 4)]
    pub identities: usize,
    /// Frames per identity.
    #[arg(long, default_value_t = 1800)]
    pub frames: usize,
    /// Frames per second of the motion.
    #[arg(long, default_value_t = 30.0)]
    pub fps: f64,
    /// Frame width and height in pixels.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Share of the target's frames, at its end, held out of training.
    #[arg(long, default_value_t = 0.1)]
    pub heldout_fraction: f64,
    /// Rendering threads [available cores].
    #[arg(long)]
    pub threads: Option<usize>,
}

impl SynthArgs {
    /// Default settings writing to `out`.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        SynthArgs {
            out: out.into(),
            seed: 0,
            identities: 4,
            frames: 1800,
            fps: 30.0,
            size: 256,
            heldout_fraction: 0.1,
            threads: None,
        }
    }

    fn validate(&self) -> Result<usize> {
        if !(16..=4096).contains(&self.size) {
            return Err(ToolsError::Input(format!(
                "--size must be in 16..=4096, got {}",
                self.size
            )));
        }
        if self.frames < 2 {
            return Err(ToolsError::Input(format!(
                "--frames must be >= 2 (a training part and a held-out part), got {}",
                self.frames
            )));
        }
        if !(self.fps.is_finite() && self.fps > 0.0) {
            return Err(ToolsError::Input(format!(
                "--fps must be a positive number, got {}",
                self.fps
            )));
        }
        if !(self.heldout_fraction > 0.0 && self.heldout_fraction < 1.0) {
            return Err(ToolsError::Input(format!(
                "--heldout-fraction must be in (0, 1), got {}",
                self.heldout_fraction
            )));
        }
        let held = ((self.frames as f64 * self.heldout_fraction).ceil() as usize)
            .clamp(1, self.frames - 1);
        Ok(held)
    }
}

/// The identities of a run: `pre00…` then `target`, each with a seed derived from `seed`.
pub fn identities(seed: u64, pretrain: usize) -> Vec<Identity> {
    (0..=pretrain)
        .map(|i| {
            let name = if i == pretrain {
                "target".to_string()
            } else {
                format!("pre{i:02}")
            };
            let id_seed = Rng(seed ^ (i as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_u64();
            Identity::new(&name, id_seed)
        })
        .collect()
}

/// Where one rendered frame goes.
struct Job {
    identity: usize,
    frame: usize,
    dir: PathBuf,
    name: String,
}

fn frame_name(i: usize) -> String {
    format!("{i:06}")
}

fn write_png(
    path: &Path,
    data: &[u8],
    size: usize,
    colour: image::ExtendedColorType,
) -> Result<()> {
    use image::ImageEncoder;
    let file = std::fs::File::create(path).map_err(io_err(path))?;
    let w = std::io::BufWriter::new(file);
    // Fast compression: PNG encoding dominates the run time otherwise.
    let enc = image::codecs::png::PngEncoder::new_with_quality(
        w,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::Sub,
    );
    enc.write_image(data, size as u32, size as u32, colour)
        .map_err(|source| ToolsError::Image {
            path: path.to_path_buf(),
            source,
        })
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(io_err(path))?;
    f.write_all(text.as_bytes()).map_err(io_err(path))
}

fn create_dirs(root: &Path) -> Result<()> {
    for sub in ["mesh", "person", "face_matte"] {
        let d = root.join(sub);
        std::fs::create_dir_all(&d).map_err(io_err(&d))?;
    }
    Ok(())
}

fn landmarks_json(entries: &[(String, [[f64; 2]; 5])]) -> String {
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    let map: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(name, lm)| {
            let pts = lm.map(|[x, y]| [round(x), round(y)]);
            (name.clone(), serde_json::json!(pts))
        })
        .collect();
    let mut s = serde_json::Value::Object(map).to_string();
    s.push('\n');
    s
}

/// What a run wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthSummary {
    /// Identity names in order (`pre00…`, `target`).
    pub identities: Vec<String>,
    /// Frames rendered in total (all identities, training and held-out).
    pub frames_written: usize,
    /// Frames of the held-out segment.
    pub heldout_frames: usize,
}

/// Renders and writes everything; see the module doc for the layout.
pub fn synthesize(a: &SynthArgs) -> Result<SynthSummary> {
    let held = a.validate()?;
    let ids = identities(a.seed, a.identities);
    let train_target = a.frames - held;
    let heldout_dir = a.out.join("heldout");
    let mut jobs = Vec::new();
    for (k, id) in ids.iter().enumerate() {
        let dir = a.out.join(&id.name);
        create_dirs(&dir)?;
        let is_target = k + 1 == ids.len();
        for f in 0..a.frames {
            let (dir, name) = if is_target && f >= train_target {
                (heldout_dir.clone(), frame_name(f - train_target))
            } else {
                (dir.clone(), frame_name(f))
            };
            jobs.push(Job {
                identity: k,
                frame: f,
                dir,
                name,
            });
        }
    }
    create_dirs(&heldout_dir)?;

    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 64);
    let next = AtomicUsize::new(0);
    let landmarks = parking_lot::Mutex::new(vec![None::<[[f64; 2]; 5]>; jobs.len()]);
    let first_error = parking_lot::Mutex::new(None::<ToolsError>);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                if first_error.lock().is_some() {
                    break;
                }
                let j = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(j) else { break };
                let id = &ids[job.identity];
                let r = id.render(&id.pose(job.frame as f64 / a.fps), a.size);
                let file = format!("{}.png", job.name);
                let rgb = image::ExtendedColorType::Rgb8;
                let written =
                    write_png(&job.dir.join("mesh").join(&file), &r.mesh.data, a.size, rgb)
                        .and_then(|()| {
                            write_png(
                                &job.dir.join("person").join(&file),
                                &r.person.data,
                                a.size,
                                rgb,
                            )
                        })
                        .and_then(|()| {
                            write_png(
                                &job.dir.join("face_matte").join(&file),
                                &r.face_matte,
                                a.size,
                                image::ExtendedColorType::L8,
                            )
                        });
                match written {
                    Ok(()) => landmarks.lock()[j] = Some(r.landmarks),
                    Err(e) => {
                        first_error.lock().get_or_insert(e);
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner() {
        return Err(e);
    }
    let landmarks = landmarks.into_inner();

    for (k, id) in ids.iter().enumerate() {
        let dir = a.out.join(&id.name);
        let reference = id.render(&Pose::neutral(), a.size);
        write_png(
            &dir.join("reference.png"),
            &reference.person.data,
            a.size,
            image::ExtendedColorType::Rgb8,
        )?;
        let is_target = k + 1 == ids.len();
        let n_train = if is_target { train_target } else { a.frames };
        let first_job = k * a.frames;
        let entries: Vec<(String, [[f64; 2]; 5])> = (0..n_train)
            .map(|f| (frame_name(f), landmarks[first_job + f].unwrap_or_default()))
            .collect();
        write_text(&dir.join("landmarks.json"), &landmarks_json(&entries))?;
        write_text(&dir.join("train.jsonl"), &train_jsonl(n_train))?;
        let info = serde_json::json!({
            "name": id.name,
            "seed": id.seed,
            "role": if is_target { "fine-tune target (last frames held out)" } else { "pre-training" },
            "frames": n_train,
            "fps": a.fps,
            "size": a.size,
            "look": id.look,
            "body": id.body,
        });
        write_text(&dir.join("identity.json"), &format!("{info:#}\n"))?;
        if is_target {
            write_png(
                &heldout_dir.join("reference.png"),
                &reference.person.data,
                a.size,
                image::ExtendedColorType::Rgb8,
            )?;
            let entries: Vec<(String, [[f64; 2]; 5])> = (train_target..a.frames)
                .map(|f| {
                    (
                        frame_name(f - train_target),
                        landmarks[first_job + f].unwrap_or_default(),
                    )
                })
                .collect();
            write_text(
                &heldout_dir.join("landmarks.json"),
                &landmarks_json(&entries),
            )?;
            let seg = serde_json::json!({
                "identity": id.name,
                "first_frame": train_target,
                "frames": held,
                "fps": a.fps,
                "size": a.size,
                "seed": a.seed,
            });
            write_text(&heldout_dir.join("segment.json"), &format!("{seg:#}\n"))?;
        }
    }
    Ok(SynthSummary {
        identities: ids.iter().map(|i| i.name.clone()).collect(),
        frames_written: jobs.len(),
        heldout_frames: held,
    })
}

/// The training JSON-Lines of an identity's first `n` frames: mesh source, person target, the
/// identity's reference photo.
fn train_jsonl(n: usize) -> String {
    let mut jsonl = String::new();
    for f in 0..n {
        let name = frame_name(f);
        let line = serde_json::json!({
            "source": format!("mesh/{name}.png"),
            "target": format!("person/{name}.png"),
            "reference": "reference.png",
        });
        jsonl.push_str(&line.to_string());
        jsonl.push('\n');
    }
    jsonl
}

/// `anchor synth`: renders the data set and prints a one-line summary.
pub fn run(a: &SynthArgs) -> Result<()> {
    let start = std::time::Instant::now();
    let s = synthesize(a)?;
    println!(
        "synth: {} identities ({}), {} frames of {}x{} in {:.1} s; held-out segment: {} frames in {}",
        s.identities.len(),
        s.identities.join(", "),
        s.frames_written,
        a.size,
        a.size,
        start.elapsed().as_secs_f64(),
        s.heldout_frames,
        a.out.join("heldout").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dist_to_segment(p: V3, a: V3, b: V3) -> f64 {
        let ba = b - a;
        let s = ((p - a).dot(ba) / ba.dot(ba)).clamp(0.0, 1.0);
        (p - (a + ba * s)).norm()
    }

    #[test]
    fn ray_hits_lie_on_the_front_surface() {
        let rot = M3::rot_y(0.4).then(&M3::rot_x(-0.7)).then(&M3::rot_z(0.3));
        let (c, r) = (v3(0.1, -0.05, 0.2), v3(0.2, 0.12, 0.3));
        let ell = ellipsoid(c, rot, r, Part::Head);
        let (a, b) = (v3(-0.2, 0.1, 0.0), v3(0.15, -0.1, 0.25));
        let cap = capsule(a, b, 0.07, Part::Forearm);
        let (mut n_ell, mut n_cap) = (0, 0);
        for i in 0..60 {
            for j in 0..60 {
                let (x, y) = (-0.4 + i as f64 / 75.0, -0.4 + j as f64 / 75.0);
                if let Some(h) = ell.hit(x, y) {
                    n_ell += 1;
                    let q = rot.apply_t(v3(x, y, h.z) - c).div(r);
                    assert!((q.norm() - 1.0).abs() < 1e-9);
                    // Just in front of the hit is outside, and the normal faces the camera.
                    let q2 = rot.apply_t(v3(x, y, h.z + 1e-6) - c).div(r);
                    assert!(q2.norm() > 1.0);
                    assert!(h.normal.z >= -1e-9 && (h.normal.norm() - 1.0).abs() < 1e-9);
                }
                if let Some(h) = cap.hit(x, y) {
                    n_cap += 1;
                    let p = v3(x, y, h.z);
                    assert!((dist_to_segment(p, a, b) - 0.07).abs() < 1e-9);
                    assert!(dist_to_segment(p + v3(0.0, 0.0, 1e-6), a, b) > 0.07);
                    assert!(h.normal.z >= -1e-9);
                }
                // Bounds contain every hit.
                for prim in [&ell, &cap] {
                    let (x0, x1, y0, y1) = prim.bounds();
                    if prim.hit(x, y).is_some() {
                        assert!(x >= x0 && x <= x1 && y >= y0 && y <= y1);
                    }
                }
            }
        }
        assert!(n_ell > 300 && n_cap > 200, "{n_ell} {n_cap}");
    }

    #[test]
    fn motion_is_bounded_smooth_and_in_frame() {
        // At the default size the 4 sampled border columns are 1.6 % of the width.
        let size = 256;
        for id in identities(3, 4) {
            let mut prev: Option<Vec<f64>> = None;
            for f in 0..600 {
                let t = f as f64 / 30.0;
                let v: Vec<f64> = id.motion.channels.iter().map(|c| c.at(t)).collect();
                let limits = BODY_LIMITS.iter().chain(&ARM_LIMITS).chain(&ARM_LIMITS);
                for (x, &(lo, hi, _, _)) in v.iter().zip(limits) {
                    assert!(
                        *x >= lo && *x <= hi,
                        "{} t={t}: {x} not in [{lo}, {hi}]",
                        id.name
                    );
                }
                // At 30 fps no angle moves more than 0.12 rad (≈7°) between frames.
                if let Some(p) = &prev {
                    let step = v
                        .iter()
                        .zip(p)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0, f64::max);
                    assert!(step < 0.12, "{} t={t}: jump {step}", id.name);
                }
                prev = Some(v);
                if f % 30 == 0 {
                    // The side borders stay background: `eval::foreground` samples them.
                    let r = id.render(&id.pose(t), size);
                    for y in 0..size {
                        for x in (0..4).chain(size - 4..size) {
                            let i = (y * size + x) * 3;
                            assert_eq!(&r.mesh.data[i..i + 3], &[0, 0, 0], "{} t={t}", id.name);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rotations_are_orthonormal() {
        let m = M3::rot_y(0.3).then(&M3::rot_z(-1.1)).then(&M3::rot_x(2.0));
        for i in 0..3 {
            for j in 0..3 {
                let d = m.c[i].dot(m.c[j]);
                assert!((d - f64::from(u8::from(i == j))).abs() < 1e-12);
            }
        }
        // Positive yaw turns the face (+z) towards +x, positive pitch nods it down.
        assert!(M3::rot_y(0.5).apply(v3(0.0, 0.0, 1.0)).x > 0.0);
        assert!(M3::rot_x(0.5).apply(v3(0.0, 0.0, 1.0)).y < 0.0);
    }

    #[test]
    fn bad_arguments_are_rejected() {
        let base = SynthArgs::new("/nonexistent");
        for (a, what) in [
            (
                SynthArgs {
                    size: 8,
                    ..base.clone()
                },
                "--size",
            ),
            (
                SynthArgs {
                    frames: 1,
                    ..base.clone()
                },
                "--frames",
            ),
            (
                SynthArgs {
                    fps: 0.0,
                    ..base.clone()
                },
                "--fps",
            ),
            (
                SynthArgs {
                    heldout_fraction: 1.0,
                    ..base.clone()
                },
                "--heldout-fraction",
            ),
        ] {
            match synthesize(&a) {
                Err(ToolsError::Input(m)) => assert!(m.contains(what), "{m}"),
                other => panic!("{what}: expected an input error, got {other:?}"),
            }
        }
        assert_eq!(base.validate().ok(), Some(180));
    }
}
