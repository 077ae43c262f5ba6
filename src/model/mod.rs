//! The shared vocabulary of a run, depended on by every other module and
//! depending on none of them: validated relative paths ([`RelPath`]), what a
//! scan finds ([`Tree`], [`Entry`], [`Kind`]), one shared copy of each path
//! for maps built apart ([`PathInterner`]), timestamps with their
//! precision ([`RemoteTime`]) and which side of a sync something is on
//! ([`Side`]).

pub mod interner;
pub mod path;
pub mod time;
pub mod tree;

pub use interner::PathInterner;
pub use path::{NameError, RelPath, check_command_arg, validate_name};
pub use time::RemoteTime;
pub use tree::{
    Entry, Kind, ListingFacts, LocalMeta, LocalTree, Problem, RemoteMeta, RemoteTree,
    SecondListing, Tree, pack,
};

use serde::Serialize;

/// Which side an item acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Local,
    Remote,
}
