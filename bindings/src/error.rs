//! OFX status codes as a Rust enum, and this crate's error type.
use crate::names;
use openfx::sys::generic::core::OfxStatus;

/// An OFX status code (`kOfxStat*`), as returned by host suites and by plugin actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// `kOfxStatOK`: all went well.
    Ok,
    /// `kOfxStatFailed`: failed, no more specific code applies.
    Failed,
    /// `kOfxStatErrFatal`: fatal error; the host should stop using the plug-in.
    ErrFatal,
    /// `kOfxStatErrUnknown`: an unknown object or name.
    ErrUnknown,
    /// `kOfxStatErrMissingHostFeature`: the host lacks something the plug-in needs.
    ErrMissingHostFeature,
    /// `kOfxStatErrUnsupported`: the operation is not supported.
    ErrUnsupported,
    /// `kOfxStatErrExists`: the thing being created already exists.
    ErrExists,
    /// `kOfxStatErrFormat`: an incorrect format.
    ErrFormat,
    /// `kOfxStatErrMemory`: out of memory.
    ErrMemory,
    /// `kOfxStatErrBadHandle`: a bad handle.
    ErrBadHandle,
    /// `kOfxStatErrBadIndex`: a property index out of range.
    ErrBadIndex,
    /// `kOfxStatErrValue`: an illegal value.
    ErrValue,
    /// `kOfxStatReplyYes`: yes.
    ReplyYes,
    /// `kOfxStatReplyNo`: no (the progress suite's "cancel").
    ReplyNo,
    /// `kOfxStatReplyDefault`: the action was not trapped; the host applies its default.
    ReplyDefault,
    /// `kOfxStatUnlicensed`: not licensed.
    Unlicensed,
    /// `kOfxStatErrImageFormat`: an image format the plug-in cannot handle.
    ErrImageFormat,
    /// A code outside the OFX 1.5 list.
    Other(OfxStatus),
}

impl Status {
    /// The status for a raw `OfxStatus` value.
    pub fn from_raw(raw: OfxStatus) -> Self {
        match raw {
            names::kOfxStatOK => Self::Ok,
            names::kOfxStatFailed => Self::Failed,
            names::kOfxStatErrFatal => Self::ErrFatal,
            names::kOfxStatErrUnknown => Self::ErrUnknown,
            names::kOfxStatErrMissingHostFeature => Self::ErrMissingHostFeature,
            names::kOfxStatErrUnsupported => Self::ErrUnsupported,
            names::kOfxStatErrExists => Self::ErrExists,
            names::kOfxStatErrFormat => Self::ErrFormat,
            names::kOfxStatErrMemory => Self::ErrMemory,
            names::kOfxStatErrBadHandle => Self::ErrBadHandle,
            names::kOfxStatErrBadIndex => Self::ErrBadIndex,
            names::kOfxStatErrValue => Self::ErrValue,
            names::kOfxStatReplyYes => Self::ReplyYes,
            names::kOfxStatReplyNo => Self::ReplyNo,
            names::kOfxStatReplyDefault => Self::ReplyDefault,
            names::kOfxStatUnlicensed => Self::Unlicensed,
            names::kOfxStatErrImageFormat => Self::ErrImageFormat,
            other => Self::Other(other),
        }
    }

    /// The raw `OfxStatus` value.
    pub fn to_raw(self) -> OfxStatus {
        match self {
            Self::Ok => names::kOfxStatOK,
            Self::Failed => names::kOfxStatFailed,
            Self::ErrFatal => names::kOfxStatErrFatal,
            Self::ErrUnknown => names::kOfxStatErrUnknown,
            Self::ErrMissingHostFeature => names::kOfxStatErrMissingHostFeature,
            Self::ErrUnsupported => names::kOfxStatErrUnsupported,
            Self::ErrExists => names::kOfxStatErrExists,
            Self::ErrFormat => names::kOfxStatErrFormat,
            Self::ErrMemory => names::kOfxStatErrMemory,
            Self::ErrBadHandle => names::kOfxStatErrBadHandle,
            Self::ErrBadIndex => names::kOfxStatErrBadIndex,
            Self::ErrValue => names::kOfxStatErrValue,
            Self::ReplyYes => names::kOfxStatReplyYes,
            Self::ReplyNo => names::kOfxStatReplyNo,
            Self::ReplyDefault => names::kOfxStatReplyDefault,
            Self::Unlicensed => names::kOfxStatUnlicensed,
            Self::ErrImageFormat => names::kOfxStatErrImageFormat,
            Self::Other(raw) => raw,
        }
    }

    /// `Ok(())` for [`Status::Ok`], otherwise an [`Error::Status`] naming the suite function `call`.
    pub fn check(raw: OfxStatus, call: &'static str) -> Result<()> {
        match Self::from_raw(raw) {
            Self::Ok => Ok(()),
            status => Err(Error::Status { call, status }),
        }
    }
}

impl From<OfxStatus> for Status {
    fn from(raw: OfxStatus) -> Self {
        Self::from_raw(raw)
    }
}

impl From<Status> for OfxStatus {
    fn from(status: Status) -> Self {
        status.to_raw()
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Other(raw) => write!(f, "OfxStatus {raw}"),
            named => write!(f, "kOfxStat{named:?}"),
        }
    }
}

/// Errors of the safe OFX layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No host was set yet (`OfxSetHost`/`setHost` not called, or called with null).
    #[error("no OFX host has been set (setHost was not called)")]
    NoHost,
    /// The host does not provide a suite this call needs.
    #[error("the host does not provide the {name} suite (version {version})")]
    MissingSuite {
        /// Suite name, e.g. `OfxProgressSuite`.
        name: &'static str,
        /// Suite version asked for.
        version: i32,
    },
    /// The host's suite has a null function pointer where a function is needed.
    #[error("the host's suite has no {0} function")]
    MissingFunction(&'static str),
    /// A suite function returned a status other than `kOfxStatOK`.
    #[error("{call} returned {status}")]
    Status {
        /// The suite function, e.g. `propGetInt`.
        call: &'static str,
        /// What it returned.
        status: Status,
    },
    /// A property-suite call on a named property returned a status other than `kOfxStatOK`
    /// (for example `kOfxStatErrUnknown` from a host that does not set that property).
    #[error("{call}({property}) returned {status}")]
    Property {
        /// The suite function, e.g. `propGetDouble`.
        call: &'static str,
        /// The property, e.g. `OfxImageEffectPropFrameRange`.
        property: String,
        /// What it returned.
        status: Status,
    },
    /// The host handed a null handle or pointer where a valid one was required.
    #[error("the host returned a null {0}")]
    NullHandle(&'static str),
    /// A Rust string contained an interior NUL byte and cannot be passed to C.
    #[error("string {0:?} contains a NUL byte")]
    Nul(String),
    /// A property or string value the host returned is not valid UTF-8.
    #[error("the host returned a non-UTF-8 string for {0}")]
    NotUtf8(String),
    /// A pixel layout or geometry that the pixel view cannot handle.
    #[error(transparent)]
    Pixels(#[from] crate::pixels::PixelError),
}

impl Error {
    /// The status a plug-in action should return for this error.
    pub fn status(&self) -> Status {
        match self {
            Self::Status {
                status: Status::ErrMemory,
                ..
            }
            | Self::Property {
                status: Status::ErrMemory,
                ..
            } => Status::ErrMemory,
            Self::MissingSuite { .. } => Status::ErrMissingHostFeature,
            _ => Status::Failed,
        }
    }

    /// Whether this is the host saying it does not know a property (`kOfxStatErrUnknown` from
    /// the property suite): the property is absent on that object, not broken.
    pub fn is_unknown_property(&self) -> bool {
        matches!(
            self,
            Self::Property {
                status: Status::ErrUnknown,
                ..
            }
        )
    }
}

/// Result of the safe OFX layer.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_every_code() {
        for raw in 0..=15 {
            let status = Status::from_raw(raw);
            assert!(!matches!(status, Status::Other(_)), "{raw} is a named code");
            assert_eq!(status.to_raw(), raw);
        }
        assert_eq!(Status::from_raw(1000), Status::ErrImageFormat);
        assert_eq!(Status::from_raw(77), Status::Other(77));
        assert_eq!(Status::Other(77).to_raw(), 77);
        assert_eq!(Status::ReplyDefault.to_raw(), 14);
        assert_eq!(Status::Failed.to_string(), "kOfxStatFailed");
        assert!(Status::check(0, "x").is_ok());
        let err = Status::check(13, "progressUpdate").err();
        assert_eq!(
            err.map(|e| e.to_string()),
            Some("progressUpdate returned kOfxStatReplyNo".to_string())
        );
        let unknown = Error::Property {
            call: "propGetDouble",
            property: "OfxImageEffectPropFrameRange".into(),
            status: Status::ErrUnknown,
        };
        assert_eq!(
            unknown.to_string(),
            "propGetDouble(OfxImageEffectPropFrameRange) returned kOfxStatErrUnknown"
        );
        assert!(unknown.is_unknown_property());
        assert_eq!(unknown.status(), Status::Failed);
    }
}
