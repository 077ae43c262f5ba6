//! Relative paths inside a synced tree, and the rules for names that come
//! from outside (a server listing or the local disk).
//!
//! Every path the planner and executor handle is a [`RelPath`]: a sequence of
//! validated names joined by `/`. Validation happens once, where a name enters
//! ftpsync, so nothing downstream can build a path that escapes the local root
//! or smuggles a second command onto the FTP control connection.

use std::borrow::Borrow;
use std::fmt;
use std::path::{Path, PathBuf};

use triomphe::ThinArc;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("`.` or `..` component")]
    DotComponent,
    #[error("contains a path separator (`/` or `\\`)")]
    Separator,
    #[error("contains a control character (NUL, CR, LF, …)")]
    ControlChar,
    #[error("not valid UTF-8")]
    NotUtf8,
}

/// Checks one name (a single path component) taken from a listing or a
/// directory walk. Rejects what could escape the root (`..`, separators,
/// absolute paths) or inject protocol commands (CR, LF, NUL and the other
/// C0/C1 control characters).
pub fn validate_name(raw: &[u8]) -> Result<&str, NameError> {
    let name = std::str::from_utf8(raw).map_err(|_| NameError::NotUtf8)?;
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name == "." || name == ".." {
        return Err(NameError::DotComponent);
    }
    if name.contains(['/', '\\']) {
        return Err(NameError::Separator);
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::ControlChar);
    }
    Ok(name)
}

/// A path relative to a sync root, `/`-separated, every component checked by
/// [`validate_name`]. The empty path is the root itself.
///
/// The text is shared: a clone is a reference count, not a copy. One path
/// sits in the local tree, the remote tree, the state, their side maps and
/// the plan at once, and with a million files those copies were most of a
/// run's memory (see [`super::PathInterner`] for sharing between maps built
/// apart). It compares, orders and hashes as its text (`Borrow<str>`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RelPath(Text);

/// The shared text of a path: one allocation that holds the count, the
/// length and the bytes, behind a one-word pointer. An `Arc<str>` is two
/// words (pointer and length): as the key of the state and of both trees
/// that was 8 bytes a path three times over, 2.4 MB at 100,000 files.
#[derive(Clone)]
struct Text(ThinArc<(), u8>);

impl Text {
    fn new(text: &str) -> Self {
        Text(ThinArc::from_header_and_slice((), text.as_bytes()))
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        // SAFETY: the bytes were copied from a `&str` in `Text::new` and
        // are never changed, so they are valid UTF-8.
        unsafe { std::str::from_utf8_unchecked(&self.0.slice) }
    }
}

impl Default for Text {
    fn default() -> Self {
        Text::new("")
    }
}

// Compared, ordered and hashed as the text, like `str` (what `Borrow<str>`
// on [`RelPath`] requires).
impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}
impl Eq for Text {}
impl PartialOrd for Text {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Text {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (**self).cmp(&**other)
    }
}
impl std::hash::Hash for Text {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state)
    }
}

impl RelPath {
    /// The root of the tree.
    pub fn root() -> Self {
        RelPath(Text::default())
    }

    /// Parses a stored or user-given `a/b/c` path, validating every component.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Ok(Self::root());
        }
        for part in s.split('/') {
            validate_name(part.as_bytes())?;
        }
        Ok(Self::from_valid(s))
    }

    /// The child `name` of this path; `name` is validated.
    pub fn join(&self, name: &[u8]) -> Result<Self, NameError> {
        let name = validate_name(name)?;
        Ok(self.join_valid(name))
    }

    /// The child `name`, already validated.
    pub(super) fn join_valid(&self, name: &str) -> Self {
        self.with_joined_text(name, Self::from_valid)
    }

    /// Calls `f` with the text of the child `name`: `self/name`, or `name`
    /// under the root. The text is built in a buffer kept by the thread, so
    /// a scan does not allocate a string for each name only to look it up
    /// or copy it. `f` must not call this again (the buffer is borrowed).
    pub(super) fn with_joined_text<R>(&self, name: &str, f: impl FnOnce(&str) -> R) -> R {
        thread_local! {
            static TEXT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        TEXT.with_borrow_mut(|text| {
            text.clear();
            if !self.0.is_empty() {
                text.push_str(&self.0);
                text.push('/');
            }
            text.push_str(name);
            f(text)
        })
    }

    /// A path from text made of validated names joined by `/`.
    pub(super) fn from_valid(text: &str) -> Self {
        RelPath(Text::new(text))
    }

    /// Whether the two share one copy of their text (not only equal text).
    #[cfg(test)]
    pub(crate) fn same_text(a: &RelPath, b: &RelPath) -> bool {
        a.0.0.as_ptr() == b.0.0.as_ptr()
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last component (empty for the root).
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or("")
    }

    /// The parent directory, `None` for the root.
    pub fn parent(&self) -> Option<RelPath> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.0.rfind('/') {
            Some(i) => RelPath(Text::new(&self.0[..i])),
            None => RelPath::root(),
        })
    }

    /// Number of components (0 for the root).
    pub fn depth(&self) -> usize {
        if self.0.is_empty() {
            0
        } else {
            self.0.split('/').count()
        }
    }

    /// Whether `self` is `ancestor` or lies below it.
    pub fn is_within(&self, ancestor: &RelPath) -> bool {
        let (me, up) = (self.as_str(), ancestor.as_str());
        up.is_empty() || me == up || (me.starts_with(up) && me.as_bytes()[up.len()] == b'/')
    }

    /// `self` with its ancestor `from` (or itself) replaced by `to`: the
    /// same place in a tree that `to` stands for. `None` if `self` is not
    /// within `from`.
    pub fn rebase(&self, from: &RelPath, to: &RelPath) -> Option<RelPath> {
        if !self.is_within(from) {
            return None;
        }
        let rest = self.as_str()[from.as_str().len()..].trim_start_matches('/');
        if rest.is_empty() {
            return Some(to.clone());
        }
        if to.is_root() {
            return Some(Self::from_valid(rest));
        }
        Some(Self::from_valid(&format!("{}/{rest}", to.as_str())))
    }

    /// The path under a local root. Components are validated, so the result
    /// never leaves `root` lexically.
    pub fn to_local(&self, root: &Path) -> PathBuf {
        let mut p = root.to_path_buf();
        if !self.0.is_empty() {
            p.extend(self.0.split('/'));
        }
        p
    }

    /// The absolute (or login-relative) path on the server under `root`.
    pub fn to_remote(&self, root: &str) -> String {
        if self.0.is_empty() {
            return root.to_owned();
        }
        if root.is_empty() {
            self.0.to_string()
        } else if root.ends_with('/') {
            format!("{root}{}", self.as_str())
        } else {
            format!("{root}/{}", self.as_str())
        }
    }
}

impl Borrow<str> for RelPath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str(".")
        } else {
            f.write_str(&self.0)
        }
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl serde::Serialize for RelPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Checks a remote path before it is sent in a command: RFC 959 commands end
/// at CRLF, so a CR or LF (or a NUL, which some servers treat as the end of the
/// string) inside a path would let a hostile name inject another command.
pub fn check_command_arg(arg: &str) -> Result<(), NameError> {
    if arg.contains(['\r', '\n', '\0']) {
        Err(NameError::ControlChar)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebase_moves_a_path_to_what_stands_for_its_ancestor() {
        let p = |s: &str| RelPath::parse(s).unwrap();
        let to = p("www/.tmp");
        assert_eq!(p("www/new").rebase(&p("www/new"), &to), Some(to.clone()));
        assert_eq!(
            p("www/new/a/b.txt").rebase(&p("www/new"), &to),
            Some(p("www/.tmp/a/b.txt"))
        );
        assert_eq!(p("www/newer/a").rebase(&p("www/new"), &to), None);
        assert_eq!(p("www").rebase(&p("www/new"), &to), None);
        assert_eq!(p("a/b").rebase(&RelPath::root(), &p("t")), Some(p("t/a/b")));
        assert_eq!(p("t/a/b").rebase(&p("t"), &RelPath::root()), Some(p("a/b")));
    }

    #[test]
    fn a_path_is_one_word_and_behaves_as_its_text() {
        assert_eq!(std::mem::size_of::<RelPath>(), std::mem::size_of::<usize>());
        assert_eq!(
            std::mem::size_of::<Option<RelPath>>(),
            std::mem::size_of::<usize>()
        );
        // Ordered, compared and hashed as the text, so that maps keyed by
        // paths can be searched with a `&str`.
        let texts = ["", "a", "a b", "a.b", "a/b", "a/b/c", "ab", "é", "z"];
        let paths: Vec<RelPath> = texts.iter().map(|t| RelPath::parse(t).unwrap()).collect();
        for (a, ta) in paths.iter().zip(texts) {
            assert_eq!(a.as_str(), ta);
            for (b, tb) in paths.iter().zip(texts) {
                assert_eq!(a.cmp(b), ta.cmp(tb), "{ta:?} vs {tb:?}");
                assert_eq!(a == b, ta == tb);
            }
        }
        let set: std::collections::HashSet<RelPath> = paths.iter().cloned().collect();
        for t in texts {
            assert!(set.contains(t), "{t:?}");
        }
        assert!(!set.contains("a/c"));
        let copy = paths[4].clone();
        assert!(RelPath::same_text(&copy, &paths[4]));
        assert!(!RelPath::same_text(
            &RelPath::parse("a/b").unwrap(),
            &paths[4]
        ));
        assert_eq!(RelPath::default(), RelPath::root());
        assert_eq!(paths[5].parent().unwrap(), paths[4]);
    }

    #[test]
    fn rejects_hostile_names() {
        for bad in [
            &b""[..],
            b".",
            b"..",
            b"../x",
            b"/etc/passwd",
            b"a/b",
            b"C:\\x",
            b"x\0",
            b"x\r\nDELE y",
            b"tab\there",
            b"\xff\xfe",
            b"esc\x1b",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            &b"index.html"[..],
            b"with space",
            b" leading",
            b"trailing ",
            b"#hash",
            "ünïcödé €".as_bytes(),
            b"...",
            b".hidden",
        ] {
            assert_eq!(validate_name(good).unwrap().as_bytes(), good);
        }
    }

    #[test]
    fn relpath_operations() {
        let p = RelPath::parse("a/b c/d.txt").unwrap();
        assert_eq!(p.name(), "d.txt");
        assert_eq!(p.parent().unwrap().as_str(), "a/b c");
        assert_eq!(p.depth(), 3);
        assert_eq!(p.to_remote("/www"), "/www/a/b c/d.txt");
        assert_eq!(p.to_remote("/"), "/a/b c/d.txt");
        assert_eq!(p.to_remote(""), "a/b c/d.txt");
        assert_eq!(
            p.to_local(Path::new("/tmp/x")),
            PathBuf::from("/tmp/x/a/b c/d.txt")
        );
        assert!(p.is_within(&RelPath::parse("a").unwrap()));
        assert!(
            !RelPath::parse("ab")
                .unwrap()
                .is_within(&RelPath::parse("a").unwrap())
        );
        assert!(p.is_within(&RelPath::root()));
        assert_eq!(RelPath::root().parent(), None);
        assert_eq!(RelPath::parse("a").unwrap().parent(), Some(RelPath::root()));
        assert!(RelPath::parse("a/../b").is_err());
        assert!(RelPath::parse("a//b").is_err());
        assert!(check_command_arg("/a\r\nDELE b").is_err());
        assert!(check_command_arg("/a b").is_ok());
    }
}
