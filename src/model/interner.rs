//! One copy of each path for maps that are built apart. The state is loaded
//! before the scans; the local and the remote scan then name the same
//! paths again, each on its own. A [`PathInterner`] made from the state's
//! paths hands the scans the state's copy of a path instead of a new one,
//! so on a run with little to do the trees and the state share one
//! allocation per path (a [`RelPath`] clone is a reference count).

use super::path::{NameError, RelPath, validate_name};

/// A sorted, read-only set of known paths, shared by the threads that scan.
/// Read-only so that the scans need no lock; a path it does not hold (new
/// on one side since the last run) is allocated as [`RelPath::join`] does.
#[derive(Debug, Default)]
pub struct PathInterner {
    /// Sorted and without duplicates: searched by binary search. A slice of
    /// shared paths costs 16 bytes a path, less than a hash set's table.
    known: Box<[RelPath]>,
}

impl PathInterner {
    /// Knows `paths` (in any order; a map's keys come sorted, and sorting a
    /// sorted list is linear).
    pub fn new(paths: impl IntoIterator<Item = RelPath>) -> Self {
        let mut known: Vec<RelPath> = paths.into_iter().collect();
        known.sort_unstable();
        known.dedup();
        PathInterner {
            known: known.into_boxed_slice(),
        }
    }

    /// How many paths it knows.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// The known copy of the path `text`, if there is one.
    pub fn get(&self, text: &str) -> Option<&RelPath> {
        self.known
            .binary_search_by(|p| p.as_str().cmp(text))
            .ok()
            .map(|i| &self.known[i])
    }

    /// The child `name` of `dir`, validated as [`RelPath::join`] does: the
    /// known copy if there is one, else a new path.
    pub fn join(&self, dir: &RelPath, name: &[u8]) -> Result<RelPath, NameError> {
        let name = validate_name(name)?;
        if self.known.is_empty() {
            return Ok(dir.join_valid(name));
        }
        let text = dir.joined_text(name);
        Ok(match self.get(&text) {
            Some(known) => known.clone(),
            None => RelPath::from_valid(&text),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    #[test]
    fn join_hands_out_the_known_copy() {
        let known = p("a/b");
        let interner = PathInterner::new([p("z"), known.clone(), p("a"), p("a/b")]);
        assert_eq!(interner.len(), 3);
        let joined = interner.join(&p("a"), b"b").unwrap();
        assert_eq!(joined, known);
        assert!(
            RelPath::same_text(&joined, &known),
            "a new copy was made of a known path"
        );
        // Under the root, and a path it does not know: equal, not shared.
        let top = interner.join(&RelPath::root(), b"z").unwrap();
        assert!(RelPath::same_text(&top, interner.get("z").unwrap()));
        let new = interner.join(&p("a"), b"c").unwrap();
        assert_eq!(new, p("a/c"));
        assert!(interner.get("a/c").is_none());
        assert!(interner.get("a/b/").is_none());
    }

    #[test]
    fn join_validates_like_relpath() {
        let interner = PathInterner::new([p("a/b")]);
        for bad in [&b".."[..], b"x/y", b"", b"x\r\ny"] {
            assert_eq!(
                interner.join(&p("a"), bad).err(),
                p("a").join(bad).err(),
                "{bad:?}"
            );
            assert!(interner.join(&p("a"), bad).is_err());
        }
        let empty = PathInterner::default();
        assert!(empty.is_empty());
        assert_eq!(empty.join(&p("a"), b"b").unwrap(), p("a/b"));
        assert!(empty.join(&p("a"), b"..").is_err());
    }
}
