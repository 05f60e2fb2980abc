//! The message suite's memory: every message a plugin posts (including persistent ones) and
//! every spec violation the host notices, so tests and the CLI can read them back.
//!
//! Messages are process-global because the message suite receives only an opaque handle, and a
//! plugin may post with a null handle (e.g. during Load).

use std::sync::LazyLock;

use parking_lot::Mutex;

/// One message posted by the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// OFX message type without the `OfxMessage` prefix: `Error`, `Warning`, `Message`, `Log`,
    /// `Fatal`, `Question`.
    pub kind: String,
    /// The message id (may be empty).
    pub id: String,
    /// The formatted text.
    pub text: String,
    /// Posted with `setPersistentMessage`.
    pub persistent: bool,
}

#[derive(Default)]
struct Journal {
    messages: Vec<Message>,
    violations: Vec<String>,
    echo: bool,
}

static JOURNAL: LazyLock<Mutex<Journal>> = LazyLock::new(|| Mutex::new(Journal::default()));

/// Echo plugin messages on stderr as they arrive (the CLI turns this on).
pub fn set_echo(on: bool) {
    JOURNAL.lock().echo = on;
}

/// Record a message from the plugin.
pub fn record(msg: Message) {
    let mut j = JOURNAL.lock();
    if j.echo {
        let p = if msg.persistent { "persistent " } else { "" };
        eprintln!(
            "ofx-render: plugin {p}{}: {}",
            msg.kind.to_lowercase(),
            msg.text
        );
    }
    log::debug!("plugin message {msg:?}");
    j.messages.push(msg);
}

/// Record a spec violation noticed by the host.
pub fn violation(text: impl Into<String>) {
    let text = text.into();
    log::warn!("violation: {text}");
    JOURNAL.lock().violations.push(text);
}

/// All messages so far.
pub fn messages() -> Vec<Message> {
    JOURNAL.lock().messages.clone()
}

/// All violations so far.
pub fn violations() -> Vec<String> {
    JOURNAL.lock().violations.clone()
}

/// Number of violations so far (to find the ones a step added).
pub fn violation_count() -> usize {
    JOURNAL.lock().violations.len()
}

/// Drain messages and violations (start of a run).
pub fn clear() {
    let mut j = JOURNAL.lock();
    j.messages.clear();
    j.violations.clear();
}

thread_local! {
    /// Number of messages when this thread last sent an action (see `mark_action`).
    static ACTION_MARK: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Remember where the journal stood when this thread sent an action, so a failure report only
/// quotes messages posted since.
pub fn mark_action() {
    let n = JOURNAL.lock().messages.len();
    ACTION_MARK.with(|m| m.set(n));
}

/// The last message since this thread's last action that explains a failure (Error, Fatal, Warning or Log: a plugin reports an
/// abort as a Log message), for failure reports.
pub fn last_error_text() -> Option<String> {
    let mark = ACTION_MARK.with(|m| m.get());
    JOURNAL
        .lock()
        .messages
        .iter()
        .skip(mark)
        .rev()
        .find(|m| matches!(m.kind.as_str(), "Error" | "Fatal" | "Warning" | "Log"))
        .map(|m| m.text.clone())
}

/// Arguments of a C variadic call as they arrived in registers (x86-64 SysV): integer and
/// pointer arguments in order, doubles in order. See `suites.rs` for why this works.
pub struct VarArgs<'a> {
    /// Integer/pointer arguments.
    pub ints: &'a [usize],
    /// Double arguments.
    pub doubles: &'a [f64],
}

/// A small `printf`: flags, width, precision (`*` too), length modifiers, and the conversions
/// `d i u x X o c s p f F e E g G %`. Enough for plugin messages; unknown conversions are copied.
pub fn format_printf(fmt: &[u8], args: VarArgs<'_>) -> String {
    let mut out = String::new();
    let mut ni = 0;
    let mut nd = 0;
    let mut next_int = || {
        let v = args.ints.get(ni).copied().unwrap_or(0);
        ni += 1;
        v
    };
    let mut i = 0;
    while i < fmt.len() {
        let c = fmt[i];
        if c != b'%' {
            let start = i;
            while i < fmt.len() && fmt[i] != b'%' {
                i += 1;
            }
            out.push_str(&String::from_utf8_lossy(&fmt[start..i]));
            continue;
        }
        i += 1;
        let mut left = false;
        let mut zero = false;
        let mut plus = false;
        while i < fmt.len() && matches!(fmt[i], b'-' | b'+' | b' ' | b'#' | b'0') {
            match fmt[i] {
                b'-' => left = true,
                b'0' => zero = true,
                b'+' => plus = true,
                _ => {}
            }
            i += 1;
        }
        let mut width = 0usize;
        if i < fmt.len() && fmt[i] == b'*' {
            width = next_int() as i32 as usize;
            i += 1;
        }
        while i < fmt.len() && fmt[i].is_ascii_digit() {
            width = width * 10 + (fmt[i] - b'0') as usize;
            i += 1;
        }
        let mut precision: Option<usize> = None;
        if i < fmt.len() && fmt[i] == b'.' {
            i += 1;
            let mut p = 0usize;
            if i < fmt.len() && fmt[i] == b'*' {
                p = next_int() as i32 as usize;
                i += 1;
            }
            while i < fmt.len() && fmt[i].is_ascii_digit() {
                p = p * 10 + (fmt[i] - b'0') as usize;
                i += 1;
            }
            precision = Some(p);
        }
        let mut long = false;
        while i < fmt.len() && matches!(fmt[i], b'h' | b'l' | b'L' | b'z' | b'j' | b't' | b'q') {
            if matches!(fmt[i], b'l' | b'z' | b'j' | b't' | b'q') {
                long = true;
            }
            i += 1;
        }
        let Some(&conv) = fmt.get(i) else { break };
        i += 1;
        let body = match conv {
            b'%' => "%".to_string(),
            b'd' | b'i' => {
                let raw = next_int();
                let v = if long { raw as i64 } else { raw as i32 as i64 };
                if plus && v >= 0 {
                    format!("+{v}")
                } else {
                    v.to_string()
                }
            }
            b'u' => {
                let raw = next_int();
                if long { raw as u64 } else { raw as u32 as u64 }.to_string()
            }
            b'x' | b'X' | b'o' => {
                let raw = next_int();
                let v = if long { raw as u64 } else { raw as u32 as u64 };
                match conv {
                    b'x' => format!("{v:x}"),
                    b'X' => format!("{v:X}"),
                    _ => format!("{v:o}"),
                }
            }
            b'c' => char::from(next_int() as u8).to_string(),
            b'p' => format!("{:#x}", next_int()),
            b's' => {
                let p = next_int() as *const std::ffi::c_char;
                let s = if p.is_null() {
                    "(null)".to_string()
                } else {
                    // SAFETY: `%s` promises a NUL-terminated string argument.
                    unsafe { std::ffi::CStr::from_ptr(p) }
                        .to_string_lossy()
                        .into_owned()
                };
                match precision {
                    Some(p) => s.chars().take(p).collect(),
                    None => s,
                }
            }
            b'f' | b'F' | b'e' | b'E' | b'g' | b'G' | b'a' | b'A' => {
                let v = args.doubles.get(nd).copied().unwrap_or(0.0);
                nd += 1;
                let p = precision.unwrap_or(6);
                let s = match conv {
                    b'f' | b'F' => format!("{v:.p$}"),
                    b'e' => format!("{v:.p$e}"),
                    b'E' => format!("{v:.p$E}"),
                    _ => format!("{v}"),
                };
                if plus && v >= 0.0 {
                    format!("+{s}")
                } else {
                    s
                }
            }
            other => format!("%{}", char::from(other)),
        };
        let len = body.chars().count();
        if len >= width {
            out.push_str(&body);
        } else if left {
            out.push_str(&body);
            out.push_str(&" ".repeat(width - len));
        } else if zero && conv != b's' {
            let (sign, digits) = match body.strip_prefix('-') {
                Some(d) => ("-", d),
                None => ("", body.as_str()),
            };
            out.push_str(sign);
            out.push_str(&"0".repeat(width - len));
            out.push_str(digits);
        } else {
            out.push_str(&" ".repeat(width - len));
            out.push_str(&body);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printf_subset() {
        let s = c"world";
        let ints = [s.as_ptr() as usize, (-42i32) as u32 as usize, 7];
        let doubles = [1.5, 0.25];
        let out = format_printf(
            b"hello %s: %d %03d%% %.2f %g",
            VarArgs {
                ints: &ints,
                doubles: &doubles,
            },
        );
        assert_eq!(out, "hello world: -42 007% 1.50 0.25");
    }
}
