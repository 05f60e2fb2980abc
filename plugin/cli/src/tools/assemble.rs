//! `anchor assemble`: makes a released Make-Your-Anchor checkpoint folder usable.
//!
//! The released folders hold only `body/{unet,controlnet}` and `head/{unet,controlnet}`. The
//! original inference code takes the VAE, the text encoder (for the empty-prompt negative) and
//! the scheduler from Stable Diffusion 1.5, and the image encoder from CLIP ViT-B/32. This writes
//! the released folder's `anchor.json`, mapping those components to the user's SD1.5 and CLIP
//! folders, and checks the result as `anchor inspect` does (body, and head when present). A
//! result with problems is not kept.
use std::path::{Path, PathBuf};

use anchor_engine::model::{inspect_model_part, ModelPart};

use super::{Result, ToolsError};

/// `anchor assemble`.
#[derive(clap::Args, Debug)]
pub struct AssembleArgs {
    /// The released checkpoint folder (holding body/ and optionally head/). Its anchor.json is
    /// written.
    #[arg(long)]
    pub released: PathBuf,
    /// A Stable Diffusion 1.5 folder in diffusers layout (vae/, text_encoder/, scheduler/).
    #[arg(long)]
    pub sd15: PathBuf,
    /// The CLIP ViT-B/32 image encoder folder (config.json, weights, preprocessor_config.json).
    #[arg(long)]
    pub clip: PathBuf,
    /// Replace an existing anchor.json.
    #[arg(long)]
    pub force: bool,
}

/// Folders the SD1.5 components come from, by component name.
const FROM_SD15: [&str; 3] = ["vae", "text_encoder", "scheduler"];

fn absolute(option: &str, p: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(p)
        .map_err(|e| ToolsError::Input(format!("{option} {}: {e}", p.display())))
}

/// The `anchor.json` text mapping the shared components of `a`.
pub fn anchor_json(a: &AssembleArgs) -> Result<String> {
    let sd15 = absolute("--sd15", &a.sd15)?;
    let clip = absolute("--clip", &a.clip)?;
    let mut components = serde_json::Map::new();
    for name in FROM_SD15 {
        let dir = sd15.join(name);
        if !dir.is_dir() {
            return Err(ToolsError::Input(format!(
                "--sd15 {}: no {name}/ folder (expected a Stable Diffusion 1.5 folder in \
                 diffusers layout)",
                a.sd15.display()
            )));
        }
        components.insert(name.into(), dir.display().to_string().into());
    }
    components.insert("image_encoder".into(), clip.display().to_string().into());
    let json = serde_json::json!({ "components": components });
    Ok(serde_json::to_string_pretty(&json).unwrap_or_default() + "\n")
}

/// Runs `anchor assemble`, printing the inspection of each part.
pub fn run(a: &AssembleArgs) -> Result<()> {
    let released = absolute("--released", &a.released)?;
    if !released.join("body").is_dir() {
        return Err(ToolsError::Input(format!(
            "--released {}: no body/ folder (a released Make-Your-Anchor checkpoint holds body/ \
             and head/)",
            a.released.display()
        )));
    }
    let path = released.join("anchor.json");
    let old = std::fs::read(&path).ok();
    if old.is_some() && !a.force {
        return Err(ToolsError::Input(format!(
            "{} exists; pass --force to replace it",
            path.display()
        )));
    }
    let text = anchor_json(a)?;
    std::fs::write(&path, &text).map_err(super::io_err(&path))?;
    let mut problems = Vec::new();
    let mut parts = vec![ModelPart::Body];
    if released.join("head").is_dir() {
        parts.push(ModelPart::Head);
    }
    for part in parts {
        match inspect_model_part(&released, part, true) {
            Ok(report) => {
                println!("{report}");
                if !report.is_ok() {
                    problems.push(format!("the {} part has problems", part.subfolder()));
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() {
        println!("wrote {}", path.display());
        return Ok(());
    }
    // Not kept: the folder is as it was.
    let _ = match old {
        Some(bytes) => std::fs::write(&path, bytes),
        None => std::fs::remove_file(&path),
    };
    Err(ToolsError::Input(format!(
        "the assembled model folder {} is not usable ({}); anchor.json was not kept",
        released.display(),
        problems.join("; ")
    )))
}
