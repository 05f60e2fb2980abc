//! The message suite (`OfxMessageSuiteV1/V2`): messages to the user, persistent messages.
//!
//! Text is always passed through a `"%s"` format so that a `%` in a path or error cannot be read
//! as a printf directive by the host.
use crate::error::{Error, Result, Status};
use crate::host::{func, host, MessageSuite};
use crate::names;
use crate::property::c_string;
use crate::ImageEffect;
use std::ffi::CStr;

/// Kind of message (`kOfxMessage*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// Fatal error; the host should stop.
    Fatal,
    /// An error.
    Error,
    /// A warning.
    Warning,
    /// Information.
    Message,
    /// For the host's log only.
    Log,
    /// A yes/no question (not persistent).
    Question,
}

impl MessageType {
    /// The OFX name.
    pub fn ofx_name(self) -> &'static CStr {
        match self {
            Self::Fatal => names::kOfxMessageFatal,
            Self::Error => names::kOfxMessageError,
            Self::Warning => names::kOfxMessageWarning,
            Self::Message => names::kOfxMessageMessage,
            Self::Log => names::kOfxMessageLog,
            Self::Question => names::kOfxMessageQuestion,
        }
    }
}

fn suite() -> Result<MessageSuite> {
    host()?.message.ok_or(Error::MissingSuite {
        name: "OfxMessageSuite",
        version: 1,
    })
}

/// Post a message. `effect` is the instance (or descriptor); a null one posts a global message. Returns the host's
/// reply status (for questions, `ReplyYes`/`ReplyNo`).
pub fn message(effect: ImageEffect, kind: MessageType, id: &str, text: &str) -> Result<Status> {
    let f = match suite()? {
        MessageSuite::V1(s) => func(s.message, "message")?,
        MessageSuite::V2(s) => func(s.message, "message")?,
    };
    let id = c_string(id)?;
    let text = c_string(text)?;
    // SAFETY: "%s" consumes exactly one `const char*` variadic argument.
    let raw = unsafe {
        f(
            effect.raw().cast(),
            kind.ofx_name().as_ptr(),
            id.as_ptr(),
            c"%s".as_ptr(),
            text.as_ptr(),
        )
    };
    Ok(Status::from_raw(raw))
}

/// Set a persistent message on an instance (V2); falls back to [`message`] on V1 hosts.
pub fn set_persistent_message(
    effect: ImageEffect,
    kind: MessageType,
    id: &str,
    text: &str,
) -> Result<Status> {
    let MessageSuite::V2(s) = suite()? else {
        return message(effect, kind, id, text);
    };
    let f = func(s.setPersistentMessage, "setPersistentMessage")?;
    let id = c_string(id)?;
    let text = c_string(text)?;
    // SAFETY: "%s" consumes exactly one `const char*` variadic argument.
    let raw = unsafe {
        f(
            effect.raw().cast(),
            kind.ofx_name().as_ptr(),
            id.as_ptr(),
            c"%s".as_ptr(),
            text.as_ptr(),
        )
    };
    Ok(Status::from_raw(raw))
}

/// Clear an instance's persistent message (V2); a no-op returning `ReplyDefault` on V1 hosts.
pub fn clear_persistent_message(effect: ImageEffect) -> Result<Status> {
    let MessageSuite::V2(s) = suite()? else {
        return Ok(Status::ReplyDefault);
    };
    let f = func(s.clearPersistentMessage, "clearPersistentMessage")?;
    // SAFETY: plain call on the handle.
    Ok(Status::from_raw(unsafe { f(effect.raw().cast()) }))
}
