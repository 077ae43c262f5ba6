//! One copy of each path for maps that are built apart. The state is loaded
//! before the scans; the local and the remote scan then name the same
//! paths again, each on its own. A [`PathInterner`] over the state's map
//! hands the scans the state's copy of a path instead of a new one, so on a
//! run with little to do the trees and the state share one allocation per
//! path (a [`RelPath`] clone is a reference count).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::path::{NameError, RelPath, validate_name};

/// Paths an interner can hand out, looked up by their text.
trait KnownPaths: Send + Sync {
    fn find(&self, text: &str) -> Option<&RelPath>;
    fn count(&self) -> usize;
}

/// A map's keys: the interner looks into the map itself, so it costs no
/// memory of its own (a list of a million paths was 16 MiB).
impl<V: Send + Sync> KnownPaths for BTreeMap<RelPath, V> {
    fn find(&self, text: &str) -> Option<&RelPath> {
        self.get_key_value(text).map(|(k, _)| k)
    }
    fn count(&self) -> usize {
        self.len()
    }
}

/// A sorted list without duplicates, searched by binary search.
struct SortedPaths(Box<[RelPath]>);

impl KnownPaths for SortedPaths {
    fn find(&self, text: &str) -> Option<&RelPath> {
        self.0
            .binary_search_by(|p| p.as_str().cmp(text))
            .ok()
            .map(|i| &self.0[i])
    }
    fn count(&self) -> usize {
        self.0.len()
    }
}

/// A read-only set of known paths, shared by the threads that scan.
/// Read-only so that the scans need no lock; a path it does not hold (new
/// on one side since the last run) is allocated as [`RelPath::join`] does.
#[derive(Default)]
pub struct PathInterner {
    known: Option<Arc<dyn KnownPaths>>,
}

impl std::fmt::Debug for PathInterner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PathInterner")
            .field("known", &self.len())
            .finish()
    }
}

impl PathInterner {
    /// Knows `paths` (in any order), in a list of its own.
    pub fn new(paths: impl IntoIterator<Item = RelPath>) -> Self {
        let mut known: Vec<RelPath> = paths.into_iter().collect();
        known.sort_unstable();
        known.dedup();
        PathInterner {
            known: Some(Arc::new(SortedPaths(known.into_boxed_slice()))),
        }
    }

    /// Knows the keys of `map`, looked up in the map itself (no copy of
    /// them). The map is shared until the interner is dropped: a run takes
    /// it back with `Arc::try_unwrap` once its scans are done.
    pub fn over<V: Send + Sync + 'static>(map: Arc<BTreeMap<RelPath, V>>) -> Self {
        PathInterner { known: Some(map) }
    }

    /// How many paths it knows.
    pub fn len(&self) -> usize {
        self.known.as_ref().map_or(0, |k| k.count())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The known copy of the path `text`, if there is one.
    pub fn get(&self, text: &str) -> Option<&RelPath> {
        self.known.as_ref().and_then(|k| k.find(text))
    }

    /// The child `name` of `dir`, validated as [`RelPath::join`] does: the
    /// known copy if there is one, else a new path.
    pub fn join(&self, dir: &RelPath, name: &[u8]) -> Result<RelPath, NameError> {
        let name = validate_name(name)?;
        if self.is_empty() {
            return Ok(dir.join_valid(name));
        }
        Ok(dir.with_joined_text(name, |text| match self.get(text) {
            Some(known) => known.clone(),
            None => RelPath::from_valid(text),
        }))
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

    #[test]
    fn over_a_map_hands_out_its_keys() {
        let known = p("a/b");
        let map = Arc::new(BTreeMap::from([(p("a"), 1), (known.clone(), 2)]));
        let interner = PathInterner::over(Arc::clone(&map));
        assert_eq!(interner.len(), 2);
        let joined = interner.join(&p("a"), b"b").unwrap();
        assert!(RelPath::same_text(&joined, &known));
        assert_eq!(interner.join(&p("a"), b"c").unwrap(), p("a/c"));
        assert!(interner.join(&p("a"), b"..").is_err());
        drop(interner);
        // The map comes back once the interner is gone.
        assert!(Arc::try_unwrap(map).is_ok());
    }
}
