//! Colour: which encoding the host's pixels are in, and the sRGB transfer functions that bring
//! them to what the model was trained on (sRGB-encoded 8-bit pictures) and back.
//!
//! The `colorspace` parameter chooses: `sRGB` (pixels are already display-referred sRGB, as in
//! Resolve and every integer image), `linear` (linear-light Rec.709/sRGB primaries, as Natron and
//! Nuke hand over float images), or `auto`:
//! 1. the OFX 1.5 colour-management property `kOfxImageClipPropColourspace` of the Source clip,
//!    when the host sets it (names with `lin`/`scene_linear`/`acescg` are linear; `srgb`,
//!    `display`, `sdr`, `rec1886`, `gamma` names are display-referred);
//! 2. otherwise the host's known convention: Natron and Nuke give linear float images;
//!    Resolve and everything else display-referred ones; integer images are always treated as
//!    sRGB-encoded.
//!
//! The transfer is IEC 61966-2-1 (piecewise sRGB), applied per channel before quantising inputs
//! to 8 bits and after reading the 8-bit output.
use anchor_ofx::BitDepth;

/// The encoding of pixel values as the host hands them over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// sRGB-encoded (display-referred): used as is.
    Srgb,
    /// Linear light: sRGB-encoded on the way in, decoded on the way out.
    Linear,
}

/// `colorspace` parameter values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColourChoice {
    /// Host properties, else the host's convention.
    Auto,
    /// Linear-light pixels.
    Linear,
    /// sRGB-encoded pixels.
    Srgb,
}

/// Linear light to sRGB encoding (IEC 61966-2-1).
pub fn srgb_encode(v: f32) -> f32 {
    if v <= 0.003_130_8 {
        v * 12.92
    } else {
        1.055 * v.powf(1.0 / 2.4) - 0.055
    }
}

/// sRGB encoding to linear light (IEC 61966-2-1).
pub fn srgb_decode(v: f32) -> f32 {
    if v <= 0.040_45 {
        v / 12.92
    } else {
        ((v + 0.055) / 1.055).powf(2.4)
    }
}

/// The encoding an OFX 1.5 colourspace name implies, if we recognise it.
pub fn encoding_of_colourspace(name: &str) -> Option<Encoding> {
    let n = name.trim().to_ascii_lowercase();
    if n.is_empty() || n == "ofx_raw" {
        return None;
    }
    if n.contains("lin") || n.contains("acescg") || n.contains("aces2065") {
        return Some(Encoding::Linear);
    }
    if ["srgb", "display", "sdr", "rec1886", "gamma", "g22", "g24"]
        .iter()
        .any(|k| n.contains(k))
    {
        return Some(Encoding::Srgb);
    }
    None
}

/// Whether a host (by `kOfxPropName`) hands float images over in linear light.
pub fn host_is_linear(host_name: &str) -> bool {
    let n = host_name.to_ascii_lowercase();
    n.contains("natron") || n.contains("nuke")
}

/// The encoding to assume for a Source image.
pub fn decide(
    choice: ColourChoice,
    clip_colourspace: Option<&str>,
    host_name: &str,
    depth: BitDepth,
) -> Encoding {
    match choice {
        ColourChoice::Linear => Encoding::Linear,
        ColourChoice::Srgb => Encoding::Srgb,
        ColourChoice::Auto => {
            if let Some(e) = clip_colourspace.and_then(encoding_of_colourspace) {
                return e;
            }
            let float = matches!(depth, BitDepth::Half | BitDepth::Float);
            if float && host_is_linear(host_name) {
                Encoding::Linear
            } else {
                Encoding::Srgb
            }
        }
    }
}

/// One host value (RGB channel) as the model's 8-bit sRGB value: encode, clamp, round; NaN is 0.
pub fn to_srgb8(v: f32, encoding: Encoding) -> u8 {
    let e = match encoding {
        Encoding::Srgb => v,
        Encoding::Linear => srgb_encode(v.max(0.0)),
    };
    if e.is_nan() {
        return 0;
    }
    (e.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// One 8-bit sRGB output value as the host's value.
pub fn from_srgb8(v: u8, encoding: Encoding) -> f32 {
    let e = v as f32 / 255.0;
    match encoding {
        Encoding::Srgb => e,
        Encoding::Linear => srgb_decode(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_round_trips_every_byte() {
        for k in 0..=255u8 {
            assert_eq!(
                to_srgb8(from_srgb8(k, Encoding::Linear), Encoding::Linear),
                k
            );
            assert_eq!(to_srgb8(from_srgb8(k, Encoding::Srgb), Encoding::Srgb), k);
        }
        assert!((srgb_decode(0.5) - 0.214_041).abs() < 1e-5);
        assert!((srgb_encode(0.214_041) - 0.5).abs() < 1e-5);
        assert_eq!(to_srgb8(f32::NAN, Encoding::Srgb), 0);
        assert_eq!(to_srgb8(-3.0, Encoding::Linear), 0);
        assert_eq!(to_srgb8(7.0, Encoding::Linear), 255);
    }

    #[test]
    fn auto_follows_properties_then_host() {
        use BitDepth::*;
        let d = |cs: Option<&str>, host: &str, depth| decide(ColourChoice::Auto, cs, host, depth);
        assert_eq!(
            d(Some("ofx_scene_linear"), "DaVinciResolve", Float),
            Encoding::Linear
        );
        assert_eq!(d(Some("lin_rec709_srgb"), "x", Byte), Encoding::Linear);
        assert_eq!(d(Some("srgb_tx"), "fr.inria.Natron", Float), Encoding::Srgb);
        assert_eq!(d(Some("ofx_display_sdr"), "Nuke", Float), Encoding::Srgb);
        assert_eq!(d(None, "fr.inria.Natron", Float), Encoding::Linear);
        assert_eq!(d(None, "uk.co.thefoundry.nuke", Half), Encoding::Linear);
        assert_eq!(d(None, "fr.inria.Natron", Byte), Encoding::Srgb);
        assert_eq!(d(None, "DaVinciResolve", Float), Encoding::Srgb);
        assert_eq!(d(Some("ofx_raw"), "Natron", Float), Encoding::Linear);
        assert_eq!(
            decide(ColourChoice::Linear, Some("srgb_tx"), "x", Byte),
            Encoding::Linear
        );
        assert_eq!(
            decide(ColourChoice::Srgb, None, "Natron", Float),
            Encoding::Srgb
        );
    }
}
