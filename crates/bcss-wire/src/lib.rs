//! Protobuf wire format without schemas: payload validation and the wire-level field filter.
//!
//! The hub never decodes a payload it only forwards. A deliberation's field list compiles once
//! (in the policy) into a [`FieldTree`] of field numbers; [`filter`] walks the wire format,
//! copies the byte ranges of kept fields, recurses into partially kept sub-messages rewriting
//! their lengths, and skips everything else without decoding it. [`scan`] walks a payload
//! against the flow's full schema tree to check it is well formed and to find the person's NISS.
//!
//! # Layout
//!
//! - [`varint`]: base-128 varints, the only integer encoding the walker needs.
//! - [`tree`]: the compiled tree of field numbers and accepted wire types.
//! - [`walk`]: one field at a time over a buffer, with bounds checks.
//! - [`filter`]: the filter itself.
//! - [`dropped`]: the fields the filter drops, without filtering (to name them).
//! - [`scan`]: validation and NISS extraction.

pub mod dropped;
pub mod filter;
pub mod scan;
pub mod tree;
pub mod varint;
pub mod walk;

#[cfg(test)]
mod differential;
/// The untuned filter, as an oracle for the differential tests and the fuzz target.
#[cfg(any(test, feature = "reference"))]
pub mod reference;

pub use dropped::for_each_dropped;
pub use filter::{FilterStats, filter, filter_to_vec};
pub use scan::scan;
pub use tree::{FieldTree, FieldTreeBuilder, NodeId, WireType, WireTypes};
pub use walk::WireError;
