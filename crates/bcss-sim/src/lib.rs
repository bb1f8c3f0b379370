//! The simulated network around the hub, and the `bcss-hub` command line.
//!
//! # Layout
//!
//! - [`institution`]: the reference institution server and a whole network of them.
//! - [`client`]: connecting to the hub as an institution.
//! - [`envelope`]: building envelopes.
//! - [`payloads`]: realistic A052, DmfA and Dimona messages.
//! - [`network`]: the reproducible persons directory of the sample network.
//! - [`demo`]: `bcss-hub demo`.
//! - [`directory_tool`]: `bcss-hub directory export|import|generate|measure`.
//! - [`load`]: `bcss-hub load`, the load generator.
//! - [`cli`]: the command line.

pub mod cli;
pub mod client;
pub mod demo;
pub mod directory_tool;
pub mod envelope;
pub mod institution;
pub mod load;
pub mod network;
pub mod payloads;
