//! The configuration folder, validated and compiled into an immutable policy snapshot.
//!
//! Start-up and reload go through the same [`Policy::load`]: read every file, check every
//! cross-reference (sectors, institutions, quality codes, field paths against the contracts,
//! overlapping deliberations), then compile what the data path needs: deliberations indexed by
//! recipient and flow, and each deliberation's field list as a wire-level [`FieldTree`]. The data
//! path only reads the result; it never parses configuration.
//!
//! # Layout
//!
//! - [`files`]: the serde shapes of the files in `config/`.
//! - [`settings`]: `hub.toml`, the hub's own settings.
//! - [`schema`]: the flow contracts as the policy sees them (field paths → field numbers).
//! - [`policy`]: the compiled [`Policy`].
//! - [`error`]: [`ConfigError`], naming the file, the entry and what is wrong.

pub mod error;
pub mod files;
pub mod policy;
pub mod schema;
pub mod settings;

pub use bcss_wire::FieldTree;
pub use error::{ConfigError, Problem};
pub use policy::{Grant, Institution, Operator, Policy, Role, Sector};
pub use schema::{FieldNames, FlowSchema, Schema};
pub use settings::Settings;
