//! # ncf-data
//!
//! Everything between files on disk and the trainer: loaders that report bad input by file,
//! line and field; raw ↔ dense id maps; the leave-one-out split; negative sampling; a seeded
//! synthetic MovieLens generator.

pub mod error;
pub mod explicit;
pub mod features;
pub mod idmap;
pub mod interactions;
pub mod movielens;
pub mod ncf_split;
pub(crate) mod parse;
pub mod sampler;
pub mod split;
pub mod synth;

pub use error::{DataError, Result, write_atomic};
pub use explicit::{Explicit, Rated, RatingSplit, SplitKind, split_ratings};
pub use features::{SideFeatures, item_features, user_features};
pub use idmap::IdMap;
pub use interactions::UserItems;
pub use movielens::{
    MovieLensFiles, RawRating, load_item_meta, load_movies, load_ratings, load_ratings_in_range, load_users,
};
pub use ncf_split::NcfSplit;
pub use parse::{DEFAULT_MAX_LINES, MAX_LINE_BYTES, for_each_line, max_lines, parse_lines_par};
pub use sampler::{Row, sample_epoch};
pub use split::{Implicit, LeaveOneOut, leave_latest_out};
