//! An in-process fake plugin that misbehaves on request, to show the host's checks catch each
//! kind of broken answer (the real plugin is tested in `tests/`).

use std::ffi::{c_char, c_void, CStr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use openfx::sys::generic::core::*;
use openfx::sys::image_effect_v1::image_effect::*;

use super::*;
use crate::effect::IMAGE_EFFECT_SUITE;
use crate::props::PROPERTY_SUITE;

const OK: usize = 0;
const ROD_INVERTED: usize = 1;
const FRAMES_NEEDED_MISS_T: usize = 2;
const FETCH_UNDECLARED: usize = 3;
const LEAK_IMAGE: usize = 4;
const RENDER_REPLY_DEFAULT: usize = 5;
const RENDER_FAILS: usize = 6;

static MODE: AtomicUsize = AtomicUsize::new(OK);

unsafe fn int_prop(p: OfxPropertySetHandle, name: &CStr, i: i32) -> i32 {
    let mut v = 0;
    unsafe { PROPERTY_SUITE.propGetInt.unwrap()(p, name.as_ptr(), i, &mut v) };
    v
}

/// Copy Source at `src_time` to Output at `time` (byte RGBA), following bounds and rowBytes.
unsafe fn copy_frame(
    effect: OfxImageEffectHandle,
    time: f64,
    src_time: f64,
    release: bool,
) -> OfxStatus {
    let fx = &IMAGE_EFFECT_SUITE;
    let ps = &PROPERTY_SUITE;
    unsafe {
        let (mut src_clip, mut out_clip) = (std::ptr::null_mut(), std::ptr::null_mut());
        fx.clipGetHandle.unwrap()(
            effect,
            c"Source".as_ptr(),
            &mut src_clip,
            std::ptr::null_mut(),
        );
        fx.clipGetHandle.unwrap()(
            effect,
            c"Output".as_ptr(),
            &mut out_clip,
            std::ptr::null_mut(),
        );
        let (mut src, mut out) = (std::ptr::null_mut(), std::ptr::null_mut());
        if fx.clipGetImage.unwrap()(src_clip, src_time, std::ptr::null(), &mut src) != kOfxStatOK {
            return kOfxStatFailed;
        }
        if fx.clipGetImage.unwrap()(out_clip, time, std::ptr::null(), &mut out) != kOfxStatOK {
            return kOfxStatFailed;
        }
        let mut sp: *mut c_void = std::ptr::null_mut();
        let mut op: *mut c_void = std::ptr::null_mut();
        ps.propGetPointer.unwrap()(src, kOfxImagePropData.as_ptr(), 0, &mut sp);
        ps.propGetPointer.unwrap()(out, kOfxImagePropData.as_ptr(), 0, &mut op);
        let (srb, orb) = (
            int_prop(src, kOfxImagePropRowBytes, 0),
            int_prop(out, kOfxImagePropRowBytes, 0),
        );
        let (x1, y1, x2, y2) = (
            int_prop(out, kOfxImagePropBounds, 0),
            int_prop(out, kOfxImagePropBounds, 1),
            int_prop(out, kOfxImagePropBounds, 2),
            int_prop(out, kOfxImagePropBounds, 3),
        );
        let row = ((x2 - x1) * 4) as usize;
        for y in 0..(y2 - y1) as isize {
            let s = (sp as *const u8).offset(y * srb as isize);
            let d = (op as *mut u8).offset(y * orb as isize);
            std::ptr::copy_nonoverlapping(s, d, row);
        }
        fx.clipReleaseImage.unwrap()(out);
        if release {
            fx.clipReleaseImage.unwrap()(src);
        }
    }
    kOfxStatOK
}

unsafe extern "C" fn fake_main(
    action: *const c_char,
    handle: *const c_void,
    in_args: OfxPropertySetHandle,
    out_args: OfxPropertySetHandle,
) -> OfxStatus {
    let action = unsafe { CStr::from_ptr(action) };
    let mode = MODE.load(Ordering::SeqCst);
    let effect = handle as OfxImageEffectHandle;
    let ps = &PROPERTY_SUITE;
    let fx = &IMAGE_EFFECT_SUITE;
    let time = || {
        let mut t = 0.0;
        unsafe { ps.propGetDouble.unwrap()(in_args, kOfxPropTime.as_ptr(), 0, &mut t) };
        t
    };
    unsafe {
        if action == kOfxActionDescribe {
            let mut p = std::ptr::null_mut();
            fx.getPropertySet.unwrap()(effect, &mut p);
            ps.propSetString.unwrap()(
                p,
                kOfxImageEffectPropSupportedContexts.as_ptr(),
                0,
                kOfxImageEffectContextFilter.as_ptr(),
            );
            ps.propSetString.unwrap()(
                p,
                kOfxImageEffectPropSupportedPixelDepths.as_ptr(),
                0,
                kOfxBitDepthByte.as_ptr(),
            );
            ps.propSetString.unwrap()(
                p,
                kOfxImageEffectPluginRenderThreadSafety.as_ptr(),
                0,
                kOfxImageEffectRenderFullySafe.as_ptr(),
            );
            return kOfxStatOK;
        }
        if action == kOfxImageEffectActionDescribeInContext {
            let mut p = std::ptr::null_mut();
            fx.clipDefine.unwrap()(effect, c"Source".as_ptr(), &mut p);
            fx.clipDefine.unwrap()(effect, c"Output".as_ptr(), &mut p);
            return kOfxStatOK;
        }
        if action == kOfxImageEffectActionGetRegionOfDefinition && mode == ROD_INVERTED {
            let r = [10.0, 0.0, 0.0, 5.0];
            ps.propSetDoubleN.unwrap()(
                out_args,
                kOfxImageEffectPropRegionOfDefinition.as_ptr(),
                4,
                r.as_ptr(),
            );
            return kOfxStatOK;
        }
        if action == kOfxImageEffectActionGetFramesNeeded && mode == FRAMES_NEEDED_MISS_T {
            let t = time();
            let r = [t + 1.0, t + 2.0];
            ps.propSetDoubleN.unwrap()(
                out_args,
                c"OfxImageClipPropFrameRange_Source".as_ptr(),
                2,
                r.as_ptr(),
            );
            return kOfxStatOK;
        }
        if action == kOfxImageEffectActionRender {
            let t = time();
            let src_t = if mode == FETCH_UNDECLARED {
                (t + 1.0).min(2.0)
            } else {
                t
            };
            let st = copy_frame(effect, t, src_t, mode != LEAK_IMAGE);
            return match mode {
                RENDER_REPLY_DEFAULT => kOfxStatReplyDefault,
                RENDER_FAILS => {
                    crate::suites::MESSAGE_SUITE_V2.message.unwrap()(
                        handle as *mut c_void,
                        c"OfxMessageError".as_ptr(),
                        c"".as_ptr(),
                        c"fake failure at frame %d".as_ptr(),
                        t as i32,
                    );
                    kOfxStatFailed
                }
                _ => st,
            };
        }
    }
    kOfxStatReplyDefault
}

fn run(mode: usize, input: &Path, output: &Path) -> Result<RenderReport, HostError> {
    MODE.store(mode, Ordering::SeqCst);
    let opts = RenderOptions {
        input: input.to_string_lossy().into_owned(),
        output: Some(output.to_string_lossy().into_owned()),
        // One thread: the first failing frame is then always frame 0.
        threads: 1,
        rows: RowLayout {
            negative_row_bytes: true,
            padding: 4,
        },
        ..RenderOptions::default()
    };
    let seq = Sequence::open(&opts.input)?;
    let inputs: Vec<(i32, PathBuf)> = seq.frames.iter().map(|(k, v)| (*k, v.clone())).collect();
    let input = Prepared {
        context: Context::Filter,
        store: Arc::new(FrameStore::new(seq)),
        appearance: None,
        face_matte: None,
        project: (5, 3),
        range: (0, 2),
        frames: vec![0, 1, 2],
        inputs,
    };
    let plugin = Plugin::from_entry("test.fake", fake_main);
    render_with_plugin(&opts, &plugin, "", input)
}

fn frame(n: u32) -> RgbaImage {
    RgbaImage::from_fn(5, 3, |x, y| {
        image::Rgba([(x * 40 + n) as u8, (y * 70) as u8, n as u8, 200])
    })
}

/// One test (the fake's mode is process-global): each misbehaviour is reported as a violation
/// naming the action and the frame; the well-behaved fake renders exactly.
#[test]
fn host_checks_catch_broken_answers() {
    let dir = std::env::temp_dir().join(format!("ofx-host-fake-{}", std::process::id()));
    let (input, output) = (dir.join("in"), dir.join("out"));
    std::fs::create_dir_all(&input).unwrap();
    std::fs::create_dir_all(&output).unwrap();
    for n in 0..3 {
        frame(n).save(input.join(format!("f{n}.png"))).unwrap();
    }

    let report = run(OK, &input, &output).expect("well-behaved fake renders");
    assert_eq!(report.frames.len(), 3);
    for n in 0..3 {
        let got = image::open(output.join(format!("f{n}.png")))
            .unwrap()
            .to_rgba8();
        assert_eq!(got, frame(n), "frame {n}");
    }

    let expect = |mode: usize, says: &str| {
        let err = run(mode, &input, &output)
            .expect_err("must fail")
            .to_string();
        assert!(
            err.contains(says),
            "mode {mode}: {err:?} should contain {says:?}"
        );
    };
    expect(
        ROD_INVERTED,
        "GetRegionOfDefinition at frame 0 returned an invalid rectangle (10, 0, 0, 5)",
    );
    expect(
        FRAMES_NEEDED_MISS_T,
        "GetFramesNeeded at frame 0 returned [(1.0, 2.0)], which does not contain the frame itself",
    );
    expect(
        FETCH_UNDECLARED,
        "fetched Source at 1, outside the frames it declared in GetFramesNeeded [(0.0, 0.0)]",
    );
    expect(LEAK_IMAGE, "clip image(s) were never released");
    expect(RENDER_REPLY_DEFAULT, "OfxImageEffectActionRender returned kOfxStatReplyDefault, which the OFX API does not allow");
    expect(
        RENDER_FAILS,
        "OfxImageEffectActionRender failed with kOfxStatFailed at frame",
    );
    expect(RENDER_FAILS, "(plugin says: fake failure at frame ");
    let _ = std::fs::remove_dir_all(&dir);
}
