//! Frame ranges the way render farms write them, and frame numbers read from file names.
//!
//! Owns three things `anchor render` needs to treat a folder of frames like every farm tool does:
//!
//! - [`FrameSpec`]: `--frames` values such as `5`, `1001-1100`, `1-100x2` (every second frame)
//!   and comma lists of those (`1,5,10-20x5`), as Nuke, Deadline and OpenCue write them.
//! - [`natural_cmp`] and [`frame_number`]: the order and the numbers people read in file names
//!   (`mesh.2.png` before `mesh.10.png`; `mesh.1001.png` is frame 1001).
//! - [`NumberedClip`]: a folder's files in that order, checked for duplicate and missing frames,
//!   and the mapping from frame numbers to positions in the clip.
//!
//! Frames are the numbers in the file names. A folder whose names carry no number is numbered
//! 0, 1, … in natural order, so `--frames A-B` keeps its old meaning (0-based, inclusive) there.
//! Errors are sentences naming the part at fault, ready to print after `anchor: `.
use std::cmp::Ordering;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The most frames one spec may name: far above any shot, low enough that a typo such as
/// `1-10000000000` fails at once instead of allocating the whole range.
pub const MAX_SPEC_FRAMES: u64 = 1_000_000;

/// How many separate runs of frames an error message lists before it says "and N more".
const MAX_LISTED_RUNS: usize = 6;

/// One item of a frame list: `first-last` every `step` frames (`5` is `5-5x1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRange {
    /// The first frame.
    pub first: i64,
    /// The last frame asked for; reached only when `last - first` is a multiple of `step`.
    pub last: i64,
    /// The distance between frames, at least 1.
    pub step: i64,
}

impl FrameRange {
    /// The frames of the range, ascending.
    pub fn frames(&self) -> impl Iterator<Item = i64> {
        // `step` is checked to be >= 1 when parsed; max(1) keeps a hand-built range finite.
        (self.first..=self.last).step_by(self.step.max(1) as usize)
    }

    /// How many frames the range names.
    pub fn len(&self) -> u64 {
        if self.last < self.first {
            return 0;
        }
        (self.last - self.first) as u64 / self.step.max(1) as u64 + 1
    }

    /// Whether the range names no frame (only possible for a hand-built range).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Display for FrameRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.first == self.last, self.step) {
            (true, _) => write!(f, "{}", self.first),
            (false, 1) => write!(f, "{}-{}", self.first, self.last),
            (false, step) => write!(f, "{}-{}x{step}", self.first, self.last),
        }
    }
}

/// A `--frames` value: a comma list of frames (`5`), ranges (`1001-1100`) and stepped ranges
/// (`1-100x2`), parsed with [`str::parse`]. Whitespace around numbers and commas is ignored.
///
/// ```
/// use anchor_cli::frames::FrameSpec;
/// let spec: FrameSpec = "1, 5, 10-20x5".parse().unwrap();
/// assert_eq!(spec.frames(), vec![1, 5, 10, 15, 20]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSpec {
    ranges: Vec<FrameRange>,
}

impl FrameSpec {
    /// The items of the list, in the order written.
    pub fn ranges(&self) -> &[FrameRange] {
        &self.ranges
    }

    /// Every frame the spec names, ascending, each once.
    pub fn frames(&self) -> Vec<i64> {
        let mut frames: Vec<i64> = self.ranges.iter().flat_map(FrameRange::frames).collect();
        frames.sort_unstable();
        frames.dedup();
        frames
    }
}

impl fmt::Display for FrameSpec {
    /// The spec in its canonical spelling (`1,5,10-20x5`), as a header or a log line shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, range) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{range}")?;
        }
        Ok(())
    }
}

impl FromStr for FrameSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err(
                "the frame list is empty: give frames such as 5, 1001-1100 or 1-100x2".into(),
            );
        }
        let mut ranges = Vec::new();
        let mut total: u64 = 0;
        for item in text.split(',') {
            let range = parse_range(item).map_err(|e| {
                if item.trim().is_empty() {
                    format!(
                        "frame list \"{}\": an item is empty (check the commas)",
                        text.trim()
                    )
                } else {
                    e
                }
            })?;
            total = total.saturating_add(range.len());
            if total > MAX_SPEC_FRAMES {
                return Err(format!(
                    "frame list \"{}\" names more than {MAX_SPEC_FRAMES} frames; check the \
                     numbers for a typo",
                    text.trim()
                ));
            }
            ranges.push(range);
        }
        Ok(Self { ranges })
    }
}

/// Parses one item of a frame list: `N`, `A-B` or `A-BxS`.
fn parse_range(item: &str) -> Result<FrameRange, String> {
    let item = item.trim();
    let what = if item.contains(['-', 'x', 'X']) {
        "frame range"
    } else {
        "frame"
    };
    let (span, step) = match item.split_once(['x', 'X']) {
        Some((span, step)) => (span, Some(step)),
        None => (item, None),
    };
    let number = |piece: &str, role: &str| -> Result<i64, String> {
        let piece = piece.trim();
        if piece.is_empty() {
            return Err(format!("{what} \"{item}\": the {role} is missing"));
        }
        if !piece.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{what} \"{item}\": \"{piece}\" is not a frame number (frames are whole numbers \
                 0 or more, as in 5, 1001-1100 or 1-100x2)"
            ));
        }
        piece
            .parse::<i64>()
            .map_err(|_| format!("{what} \"{item}\": {piece} is too large for a frame number"))
    };
    let (first, last) = match span.split_once('-') {
        Some((a, b)) => (number(a, "start")?, number(b, "end")?),
        None => {
            let n = number(span, "frame number")?;
            (n, n)
        }
    };
    if !span.contains('-') && step.is_some() {
        return Err(format!(
            "frame \"{item}\": a step needs a range, as in 1-100x2"
        ));
    }
    if last < first {
        return Err(format!(
            "frame range \"{item}\": the end is before the start"
        ));
    }
    let step = match step {
        Some(s) => number(s, "step")?,
        None => 1,
    };
    if step < 1 {
        return Err(format!(
            "frame range \"{item}\": the step must be 1 or more"
        ));
    }
    Ok(FrameRange { first, last, step })
}

/// Compares names as people read them: runs of ASCII digits compare by their value
/// (`mesh.2` < `mesh.10`), everything else character by character.
///
/// Names that differ only in leading zeros (`f.7`, `f.007`) are then ordered by plain string
/// comparison, so the order is total and a sort by it is deterministic.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < ab.len() && j < bb.len() {
        if ab[i].is_ascii_digit() && bb[j].is_ascii_digit() {
            let run_a = digit_run(ab, i);
            let run_b = digit_run(bb, j);
            let order = cmp_digit_runs(&ab[i..run_a], &bb[j..run_b]);
            if order != Ordering::Equal {
                return order;
            }
            (i, j) = (run_a, run_b);
        } else {
            // Bytes, not chars: UTF-8 byte order is code point order, and a digit never sits
            // inside a multi-byte character.
            match ab[i].cmp(&bb[j]) {
                Ordering::Equal => (i, j) = (i + 1, j + 1),
                order => return order,
            }
        }
    }
    (ab.len() - i).cmp(&(bb.len() - j)).then_with(|| a.cmp(b))
}

/// The end (exclusive) of the run of ASCII digits starting at `start`.
fn digit_run(bytes: &[u8], start: usize) -> usize {
    start
        + bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
}

/// Compares two digit runs by value, of any length (no parsing, so no overflow).
fn cmp_digit_runs(a: &[u8], b: &[u8]) -> Ordering {
    let strip = |run: &[u8]| -> usize { run.iter().take_while(|&&d| d == b'0').count() };
    let (a, b) = (&a[strip(a)..], &b[strip(b)..]);
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// The frame number in a file name, as farm tools read it: the last run of digits in the name
/// without its extension. `mesh.1001.png` is 1001, `frame_0007.png` is 7, `shot3_v2.0042.exr` is
/// 42, `mesh.1001` is 1001 (an all-digit suffix is the number, not an extension), and `mesh.png`
/// has none. A run too long for an `i64` counts as no number.
pub fn frame_number(file_name: &str) -> Option<i64> {
    let stem = match file_name.rsplit_once('.') {
        Some((stem, ext)) if !ext.bytes().all(|b| b.is_ascii_digit()) => stem,
        _ => file_name,
    };
    let bytes = stem.as_bytes();
    let end = bytes.iter().rposition(u8::is_ascii_digit)? + 1;
    let start = bytes[..end]
        .iter()
        .rposition(|b| !b.is_ascii_digit())
        .map_or(0, |p| p + 1);
    stem[start..end].parse().ok()
}

/// The file name of `path` for messages and numbering (the whole path if it has none).
fn display_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy()
        .into_owned()
}

/// A clip's files in frame order, with the frame number of each.
///
/// Built by [`NumberedClip::scan`]: either every file carries a number (`numbers` all `Some`,
/// unique and contiguous, ascending) or none does (`numbers` all `None`, and the frames are
/// the positions 0, 1, … in natural name order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberedClip {
    /// The files, in frame order.
    pub paths: Vec<PathBuf>,
    /// The frame number of each file, read by [`frame_number`]; `None` for an unnumbered clip.
    pub numbers: Vec<Option<i64>>,
}

impl NumberedClip {
    /// Orders `paths` naturally by file name, reads their frame numbers and checks them: unique,
    /// without gaps, and either on every file or on none. The paths need not exist.
    pub fn scan(paths: Vec<PathBuf>) -> Result<Self, String> {
        let mut files: Vec<(String, PathBuf)> =
            paths.into_iter().map(|p| (display_name(&p), p)).collect();
        files.sort_by(|(na, pa), (nb, pb)| natural_cmp(na, nb).then_with(|| pa.cmp(pb)));
        let numbers: Vec<Option<i64>> = files.iter().map(|(n, _)| frame_number(n)).collect();
        let with = numbers.iter().position(Option::is_some);
        let without = numbers.iter().position(Option::is_none);
        let clip = match (with, without) {
            (Some(w), Some(wo)) => {
                return Err(format!(
                    "some file names carry a frame number and some do not ({} is frame {}, but \
                     {} has no number); name every frame alike, or keep the sequence alone in \
                     its folder",
                    files[w].0,
                    numbers[w].unwrap_or_default(),
                    files[wo].0
                ));
            }
            (Some(_), None) => {
                let mut numbered: Vec<(i64, String, PathBuf)> = numbers
                    .into_iter()
                    .zip(files)
                    .map(|(n, (name, path))| (n.unwrap_or_default(), name, path))
                    .collect();
                // Stable: files sharing a number stay in name order for the error below.
                numbered.sort_by_key(|(n, _, _)| *n);
                check_unique(&numbered)?;
                check_contiguous(&numbered)?;
                Self {
                    numbers: numbered.iter().map(|(n, _, _)| Some(*n)).collect(),
                    paths: numbered.into_iter().map(|(_, _, p)| p).collect(),
                }
            }
            (None, _) => Self {
                numbers,
                paths: files.into_iter().map(|(_, p)| p).collect(),
            },
        };
        Ok(clip)
    }

    /// How many files the clip holds.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether the clip holds no file.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Whether the frames are the numbers in the file names (rather than positions).
    pub fn is_numbered(&self) -> bool {
        self.numbers.first().is_some_and(Option::is_some)
    }

    /// The frame number of the file at `index`: its number, or `index` in an unnumbered clip.
    pub fn number_of(&self, index: usize) -> Option<i64> {
        match self.numbers.get(index)? {
            Some(n) => Some(*n),
            None => i64::try_from(index).ok(),
        }
    }

    /// The first frame number (0 for an unnumbered clip); `None` for an empty clip.
    pub fn first_number(&self) -> Option<i64> {
        self.number_of(0)
    }

    /// The last frame number; `None` for an empty clip.
    pub fn last_number(&self) -> Option<i64> {
        self.number_of(self.len().checked_sub(1)?)
    }

    /// The position in the clip of frame `number`, if the clip has it.
    pub fn index_of(&self, number: i64) -> Option<usize> {
        let offset = usize::try_from(number.checked_sub(self.first_number()?)?).ok()?;
        if self.number_of(offset) == Some(number) {
            return Some(offset);
        }
        // Only a hand-built clip with gaps gets here: `scan` makes numbers contiguous.
        (0..self.len()).find(|&i| self.number_of(i) == Some(number))
    }

    /// The frames of the clip as `first-last` (`1001-1100`, or `0-99` for an unnumbered clip).
    pub fn span(&self) -> String {
        match (self.first_number(), self.last_number()) {
            (Some(first), Some(last)) if first == last => first.to_string(),
            (Some(first), Some(last)) => format!("{first}-{last}"),
            _ => "(empty)".into(),
        }
    }

    /// The positions in the clip of the frames `spec` names, ascending, each once. In an
    /// unnumbered clip the spec's numbers are the positions themselves (0-based), as
    /// `--frames A-B` always meant. Every frame must be in the clip; the error names those that
    /// are not.
    pub fn select(&self, spec: &FrameSpec) -> Result<Vec<usize>, String> {
        if self.is_empty() {
            return Err(format!("the clip has no frames to select {spec} from"));
        }
        let mut indices = Vec::new();
        let mut outside = Vec::new();
        for number in spec.frames() {
            match self.index_of(number) {
                Some(i) => indices.push(i),
                None => outside.push(number),
            }
        }
        if outside.is_empty() {
            return Ok(indices);
        }
        let (named, verb) = name_frames(&runs_of(&outside), ("is", "are"));
        let why = if self.is_numbered() {
            "frames are the numbers in the file names"
        } else {
            "its file names carry no frame numbers, so frames count from 0 in name order"
        };
        Err(format!(
            "{named} {verb} outside the clip {} ({why})",
            self.span()
        ))
    }
}

/// Fails when two files carry the same number; `numbered` is sorted by number.
fn check_unique(numbered: &[(i64, String, PathBuf)]) -> Result<(), String> {
    let mut shared: Vec<(i64, Vec<&str>)> = Vec::new();
    for pair in numbered.windows(2) {
        let ((na, a, _), (nb, b, _)) = (&pair[0], &pair[1]);
        if na != nb {
            continue;
        }
        match shared.last_mut() {
            Some((n, names)) if n == na => names.push(b),
            _ => shared.push((*na, vec![a, b])),
        }
    }
    if shared.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = shared
        .iter()
        .take(3)
        .map(|(n, names)| format!("frame {n} is in {}", join_and(names)))
        .collect();
    let more = match shared.len() {
        0..=3 => String::new(),
        n => format!(", and {} more frames are shared", n - 3),
    };
    Err(format!(
        "file names share frame numbers: {}{more}; keep one sequence per folder",
        listed.join("; ")
    ))
}

/// Fails when numbers are missing between the first and last; `numbered` is sorted, unique.
fn check_contiguous(numbered: &[(i64, String, PathBuf)]) -> Result<(), String> {
    let gaps: Vec<(i64, i64)> = numbered
        .windows(2)
        .filter(|pair| pair[1].0 - pair[0].0 > 1)
        .map(|pair| (pair[0].0 + 1, pair[1].0 - 1))
        .collect();
    let (Some(first), Some(last)) = (numbered.first(), numbered.last()) else {
        return Ok(());
    };
    if gaps.is_empty() {
        return Ok(());
    }
    let (named, verb) = name_frames(&gaps, ("is", "are"));
    Err(format!(
        "{named} {verb} missing between {} and {}",
        first.0, last.0
    ))
}

/// Groups ascending, unique frames into inclusive runs of consecutive numbers.
fn runs_of(frames: &[i64]) -> Vec<(i64, i64)> {
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for &f in frames {
        match runs.last_mut() {
            Some((_, end)) if end.checked_add(1) == Some(f) => *end = f,
            _ => runs.push((f, f)),
        }
    }
    runs
}

/// Names inclusive runs of frames compactly ("frame 1010", "frames 1004-1006 and 1010",
/// "frames 2, 4, … and 40 more"), with the verb (`verbs.0` singular, `.1` plural) that agrees.
fn name_frames(runs: &[(i64, i64)], verbs: (&'static str, &'static str)) -> (String, &'static str) {
    let count = |runs: &[(i64, i64)]| -> u128 {
        runs.iter()
            .map(|&(a, b)| (i128::from(b) - i128::from(a) + 1) as u128)
            .sum()
    };
    let total = count(runs);
    let shown = &runs[..runs.len().min(MAX_LISTED_RUNS)];
    let mut pieces: Vec<String> = shown
        .iter()
        .map(|&(a, b)| match b - a {
            0 => a.to_string(),
            _ => format!("{a}-{b}"),
        })
        .collect();
    let hidden = count(&runs[shown.len()..]);
    if hidden > 0 {
        pieces.push(format!("{hidden} more"));
    }
    let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
    if total == 1 {
        (format!("frame {}", pieces.join("")), verbs.0)
    } else {
        (format!("frames {}", join_and(&pieces)), verbs.1)
    }
}

/// Joins words as a sentence does: "a", "a and b", "a, b and c".
fn join_and(words: &[&str]) -> String {
    match words {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// `frames` named as the messages name them, for the render header: `frame 5`,
/// `frames 1001-1100`, `frames 1, 5 and 10-20` (sorted and deduplicated first).
pub fn describe_frames(frames: &[i64]) -> String {
    let mut sorted = frames.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.is_empty() {
        return "no frames".into();
    }
    name_frames(&runs_of(&sorted), ("", "")).0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> FrameSpec {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    fn spec_err(text: &str) -> String {
        match text.parse::<FrameSpec>() {
            Ok(s) => panic!("{text:?} should fail, parsed as {s:?}"),
            Err(e) => e,
        }
    }

    fn paths(names: &[&str]) -> Vec<PathBuf> {
        names
            .iter()
            .map(|n| PathBuf::from("poses").join(n))
            .collect()
    }

    fn names(clip: &NumberedClip) -> Vec<String> {
        clip.paths.iter().map(|p| display_name(p)).collect()
    }

    fn scan_err(names: &[&str]) -> String {
        match NumberedClip::scan(paths(names)) {
            Ok(c) => panic!("{names:?} should fail, scanned as {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn spec_single_frame() {
        assert_eq!(spec("5").frames(), vec![5]);
        assert_eq!(spec(" 0 ").frames(), vec![0]);
    }

    #[test]
    fn spec_range_is_inclusive() {
        let frames = spec("1001-1100").frames();
        assert_eq!(frames.len(), 100);
        assert_eq!((frames[0], frames[99]), (1001, 1100));
    }

    #[test]
    fn spec_stepped_range() {
        assert_eq!(spec("1-10x2").frames(), vec![1, 3, 5, 7, 9]);
        assert_eq!(spec("1-100x2").frames().len(), 50);
        assert_eq!(spec("0-9X3").frames(), vec![0, 3, 6, 9]);
        assert_eq!(spec("4-4x7").frames(), vec![4]);
    }

    #[test]
    fn spec_comma_list_is_sorted_and_deduplicated() {
        assert_eq!(spec("1,5,10-20x5").frames(), vec![1, 5, 10, 15, 20]);
        assert_eq!(spec("20, 3-5 ,4, 1").frames(), vec![1, 3, 4, 5, 20]);
        assert_eq!(spec(" 10 - 12 x 1 , 11").frames(), vec![10, 11, 12]);
    }

    #[test]
    fn spec_display_is_canonical() {
        assert_eq!(
            spec(" 1 , 5,10 - 20 x5, 7-8x1 ").to_string(),
            "1,5,10-20x5,7-8"
        );
        assert_eq!(spec("3-3").to_string(), "3");
        assert_eq!(
            spec("3-3").ranges(),
            &[FrameRange {
                first: 3,
                last: 3,
                step: 1
            }]
        );
    }

    #[test]
    fn spec_errors_name_the_bad_part() {
        assert_eq!(
            spec_err("10-5"),
            "frame range \"10-5\": the end is before the start"
        );
        assert_eq!(
            spec_err("1-10x0"),
            "frame range \"1-10x0\": the step must be 1 or more"
        );
        assert_eq!(
            spec_err("5x2"),
            "frame \"5x2\": a step needs a range, as in 1-100x2"
        );
        assert_eq!(spec_err("1-"), "frame range \"1-\": the end is missing");
        assert_eq!(spec_err("-5"), "frame range \"-5\": the start is missing");
        assert_eq!(
            spec_err("1-10x"),
            "frame range \"1-10x\": the step is missing"
        );
        assert_eq!(
            spec_err("1,a"),
            "frame \"a\": \"a\" is not a frame number (frames are whole numbers 0 or more, as \
             in 5, 1001-1100 or 1-100x2)"
        );
        assert!(spec_err("1-2-3").starts_with("frame range \"1-2-3\": \"2-3\" is not a frame"));
        assert_eq!(
            spec_err("99999999999999999999"),
            "frame \"99999999999999999999\": 99999999999999999999 is too large for a frame number"
        );
    }

    #[test]
    fn spec_errors_for_empty_lists_and_items() {
        assert_eq!(
            spec_err("  "),
            "the frame list is empty: give frames such as 5, 1001-1100 or 1-100x2"
        );
        assert_eq!(
            spec_err("1,,2"),
            "frame list \"1,,2\": an item is empty (check the commas)"
        );
        assert_eq!(
            spec_err("1,"),
            "frame list \"1,\": an item is empty (check the commas)"
        );
    }

    #[test]
    fn spec_refuses_huge_ranges() {
        assert_eq!(
            spec_err("0-10000000000"),
            "frame list \"0-10000000000\" names more than 1000000 frames; check the numbers for \
             a typo"
        );
        assert_eq!(spec("0-999999").frames().len(), 1_000_000);
        assert!(spec_err("0-999999,1000000").contains("more than 1000000 frames"));
    }

    #[test]
    fn natural_order_compares_digit_runs_by_value() {
        assert_eq!(natural_cmp("mesh.2", "mesh.10"), Ordering::Less);
        assert_eq!(natural_cmp("mesh.10.png", "mesh.9.png"), Ordering::Greater);
        assert_eq!(natural_cmp("a2b10", "a2b9"), Ordering::Greater);
        assert_eq!(natural_cmp("x", "x1"), Ordering::Less);
        assert_eq!(natural_cmp("abc", "abd"), Ordering::Less);
        assert_eq!(natural_cmp("same", "same"), Ordering::Equal);
        // Longer than any integer type: still compared by value.
        assert_eq!(
            natural_cmp("f99999999999999999999999", "f100000000000000000000000"),
            Ordering::Less
        );
    }

    #[test]
    fn natural_order_is_total_on_leading_zeros() {
        assert_eq!(natural_cmp("f.007", "f.7"), Ordering::Less);
        assert_eq!(natural_cmp("f.7", "f.007"), Ordering::Greater);
        assert_eq!(natural_cmp("f.007", "f.8"), Ordering::Less);
    }

    #[test]
    fn natural_sort_fixes_raw_order() {
        let mut names = vec![
            "mesh.1.png",
            "mesh.10.png",
            "mesh.11.png",
            "mesh.2.png",
            "mesh.0.png",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            [
                "mesh.0.png",
                "mesh.1.png",
                "mesh.2.png",
                "mesh.10.png",
                "mesh.11.png"
            ]
        );
    }

    #[test]
    fn frame_numbers_from_file_names() {
        assert_eq!(frame_number("mesh.1001.png"), Some(1001));
        assert_eq!(frame_number("frame_0007.png"), Some(7));
        assert_eq!(frame_number("shot3_v2.0042.exr"), Some(42));
        assert_eq!(frame_number("mesh.png"), None);
        assert_eq!(frame_number("mesh.1001"), Some(1001));
        assert_eq!(frame_number("12.jpg"), Some(12));
        assert_eq!(frame_number("take2_final.png"), Some(2));
        assert_eq!(frame_number("plate.0005.jp2"), Some(5));
        assert_eq!(frame_number("99999999999999999999.png"), None);
    }

    #[test]
    fn scan_numbered_clip_in_natural_order() {
        let clip = NumberedClip::scan(paths(&[
            "mesh.10.png",
            "mesh.9.png",
            "mesh.11.png",
            "mesh.8.png",
        ]))
        .unwrap();
        assert_eq!(
            names(&clip),
            ["mesh.8.png", "mesh.9.png", "mesh.10.png", "mesh.11.png"]
        );
        assert_eq!(clip.numbers, vec![Some(8), Some(9), Some(10), Some(11)]);
        assert!(clip.is_numbered());
        assert_eq!(clip.first_number(), Some(8));
        assert_eq!(clip.last_number(), Some(11));
        assert_eq!(clip.span(), "8-11");
        assert_eq!(clip.index_of(10), Some(2));
        assert_eq!(clip.index_of(7), None);
        assert_eq!(clip.index_of(12), None);
        assert_eq!(clip.number_of(3), Some(11));
        assert_eq!(clip.paths[0], PathBuf::from("poses/mesh.8.png"));
    }

    #[test]
    fn scan_unnumbered_clip_uses_positions() {
        let clip = NumberedClip::scan(paths(&["b.png", "a.png", "c.png"])).unwrap();
        assert_eq!(names(&clip), ["a.png", "b.png", "c.png"]);
        assert_eq!(clip.numbers, vec![None, None, None]);
        assert!(!clip.is_numbered());
        assert_eq!(clip.first_number(), Some(0));
        assert_eq!(clip.span(), "0-2");
        assert_eq!(clip.index_of(2), Some(2));
        assert_eq!(clip.index_of(3), None);
        assert_eq!(clip.index_of(-1), None);
    }

    #[test]
    fn scan_empty_clip() {
        let clip = NumberedClip::scan(Vec::new()).unwrap();
        assert!(clip.is_empty());
        assert_eq!(clip.first_number(), None);
        assert_eq!(clip.span(), "(empty)");
        assert_eq!(
            clip.select(&spec("1")).unwrap_err(),
            "the clip has no frames to select 1 from"
        );
    }

    #[test]
    fn scan_names_the_missing_frames() {
        let mut files: Vec<String> = (1001..=1020)
            .filter(|f| !(1004..=1006).contains(f) && *f != 1010)
            .map(|f| format!("mesh.{f}.png"))
            .collect();
        files.reverse();
        let files: Vec<&str> = files.iter().map(String::as_str).collect();
        assert_eq!(
            scan_err(&files),
            "frames 1004-1006 and 1010 are missing between 1001 and 1020"
        );
        assert_eq!(
            scan_err(&["f.1.png", "f.3.png"]),
            "frame 2 is missing between 1 and 3"
        );
    }

    #[test]
    fn scan_caps_a_long_list_of_gaps() {
        let files: Vec<String> = (0..=40).step_by(2).map(|f| format!("f.{f}.png")).collect();
        let files: Vec<&str> = files.iter().map(String::as_str).collect();
        assert_eq!(
            scan_err(&files),
            "frames 1, 3, 5, 7, 9, 11 and 14 more are missing between 0 and 40"
        );
        // A huge gap is described, not enumerated.
        assert_eq!(
            scan_err(&["f.0.png", "f.999999999999.png"]),
            "frames 1-999999999998 are missing between 0 and 999999999999"
        );
    }

    #[test]
    fn scan_names_duplicate_numbers() {
        assert_eq!(
            scan_err(&["mesh.1001.png", "mesh.01001.png", "mesh.1002.png"]),
            "file names share frame numbers: frame 1001 is in mesh.01001.png and mesh.1001.png; \
             keep one sequence per folder"
        );
        assert_eq!(
            scan_err(&[
                "mask.1.png",
                "mesh.1.png",
                "mask.2.png",
                "mesh.2.png",
                "x.2.png"
            ]),
            "file names share frame numbers: frame 1 is in mask.1.png and mesh.1.png; frame 2 is \
             in mask.2.png, mesh.2.png and x.2.png; keep one sequence per folder"
        );
    }

    #[test]
    fn scan_refuses_mixed_naming() {
        assert_eq!(
            scan_err(&["mesh.png", "mesh.1001.png"]),
            "some file names carry a frame number and some do not (mesh.1001.png is frame 1001, \
             but mesh.png has no number); name every frame alike, or keep the sequence alone in \
             its folder"
        );
    }

    #[test]
    fn select_maps_frame_numbers_to_positions() {
        let files: Vec<String> = (1001..=1100).map(|f| format!("mesh.{f}.png")).collect();
        let clip = NumberedClip::scan(files.iter().map(PathBuf::from).collect()).unwrap();
        assert_eq!(clip.select(&spec("1001")).unwrap(), vec![0]);
        assert_eq!(
            clip.select(&spec("1001-1010x3,1100")).unwrap(),
            vec![0, 3, 6, 9, 99]
        );
        assert_eq!(
            clip.select(&spec("1001-1100")).unwrap(),
            (0..100).collect::<Vec<_>>()
        );
    }

    #[test]
    fn select_names_frames_outside_the_clip() {
        let files: Vec<String> = (1001..=1100).map(|f| format!("mesh.{f}.png")).collect();
        let clip = NumberedClip::scan(files.iter().map(PathBuf::from).collect()).unwrap();
        assert_eq!(
            clip.select(&spec("1050-1200")).unwrap_err(),
            "frames 1101-1200 are outside the clip 1001-1100 (frames are the numbers in the file \
             names)"
        );
        assert_eq!(
            clip.select(&spec("0,1001")).unwrap_err(),
            "frame 0 is outside the clip 1001-1100 (frames are the numbers in the file names)"
        );
    }

    #[test]
    fn select_in_unnumbered_clip_is_zero_based() {
        let files: Vec<String> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|n| format!("{n}.png"))
            .collect();
        let clip = NumberedClip::scan(files.iter().map(PathBuf::from).collect()).unwrap();
        // Today's `--frames 1-3`: 0-based, inclusive.
        assert_eq!(clip.select(&spec("1-3")).unwrap(), vec![1, 2, 3]);
        assert_eq!(
            clip.select(&spec("3-6")).unwrap_err(),
            "frames 5-6 are outside the clip 0-4 (its file names carry no frame numbers, so \
             frames count from 0 in name order)"
        );
    }

    #[test]
    fn numbered_from_zero_keeps_old_indices() {
        // `frame_0000.png …`: the numbers equal the old 0-based indices.
        let files: Vec<String> = (0..12).map(|f| format!("frame_{f:04}.png")).collect();
        let clip = NumberedClip::scan(files.iter().map(PathBuf::from).collect()).unwrap();
        assert_eq!(clip.select(&spec("2-4")).unwrap(), vec![2, 3, 4]);
    }

    #[test]
    fn describe_frames_for_the_header() {
        assert_eq!(describe_frames(&[5]), "frame 5");
        assert_eq!(describe_frames(&[3, 1, 2, 2]), "frames 1-3");
        assert_eq!(
            describe_frames(&[1, 5, 10, 11, 12]),
            "frames 1, 5 and 10-12"
        );
        assert_eq!(describe_frames(&[]), "no frames");
    }
}
