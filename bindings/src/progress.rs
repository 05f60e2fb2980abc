//! The progress suite (`OfxProgressSuiteV1/V2`): a progress bar that honours "cancel".
use crate::error::{Error, Result, Status};
use crate::host::{host, ProgressSuite};
use crate::property::c_string;
use crate::ImageEffect;

/// A running progress bar; ended when dropped.
#[derive(Debug)]
pub struct Progress {
    effect: ImageEffect,
    suite: ProgressSuite,
}

impl Progress {
    /// Start a progress bar labelled `label` on an instance. `Ok(None)` when the host has no
    /// progress suite (work goes on without a bar).
    pub fn start(effect: ImageEffect, label: &str, id: &str) -> Result<Option<Self>> {
        let Some(suite) = host()?.progress else {
            return Ok(None);
        };
        let label = c_string(label)?;
        let id = c_string(id)?;
        let h = effect.raw().cast();
        // SAFETY: valid strings for the call; the instance handle is the host's.
        let raw = unsafe {
            match suite {
                ProgressSuite::V1(s) => s.progressStart.map(|f| f(h, label.as_ptr())),
                ProgressSuite::V2(s) => s.progressStart.map(|f| f(h, label.as_ptr(), id.as_ptr())),
            }
        }
        .ok_or(Error::MissingFunction("progressStart"))?;
        Status::check(raw, "progressStart")?;
        Ok(Some(Self { effect, suite }))
    }

    /// Report progress in `[0, 1]`. Returns `Ok(false)` when the user asked to cancel (the host
    /// replied `kOfxStatReplyNo`); the caller must stop.
    pub fn update(&self, fraction: f64) -> Result<bool> {
        let h = self.effect.raw().cast();
        let f = match self.suite {
            ProgressSuite::V1(s) => s.progressUpdate,
            ProgressSuite::V2(s) => s.progressUpdate,
        }
        .ok_or(Error::MissingFunction("progressUpdate"))?;
        // SAFETY: plain call on the instance handle.
        match Status::from_raw(unsafe { f(h, fraction.clamp(0.0, 1.0)) }) {
            Status::Ok => Ok(true),
            Status::ReplyNo => Ok(false),
            status => Err(Error::Status {
                call: "progressUpdate",
                status,
            }),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        let f = match self.suite {
            ProgressSuite::V1(s) => s.progressEnd,
            ProgressSuite::V2(s) => s.progressEnd,
        };
        if let Some(f) = f {
            // SAFETY: ends the bar this value started.
            unsafe { f(self.effect.raw().cast()) };
        }
    }
}
