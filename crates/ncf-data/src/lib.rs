//! # ncf-data
//!
//! Everything between files on disk and the trainer: loaders that report bad input by file,
//! line and field; raw ↔ dense id maps; the leave-one-out split; negative sampling; a seeded
//! synthetic MovieLens generator.

pub mod error;
pub mod interactions;
pub mod ncf_split;
pub(crate) mod parse;
pub mod sampler;

pub use error::{DataError, Result};
pub use interactions::UserItems;
pub use ncf_split::NcfSplit;
pub use sampler::{Row, sample_epoch};
