//! Generated code for the hub's contracts in `proto/`, the server-side views, and the
//! descriptor set. No logic lives here but the two hand-written encodings, `codec` and `stored`.
//!
//! # Layout
//!
//! - [`flows::v1`]: the flow messages (A052, DmfA, Dimona) with every block and field.
//! - [`hub::v1`]: the envelope, the Gateway (with `Consult`) and Directory services.
//! - [`institution::v1`]: the Institution service the hub delivers to and asks (`Answer`).
//! - [`hub::view::v1`]: `EnvelopeView`, `DeliveryView`, `AnswerReplyView` and
//!   `ConsultReplyView`, wire-compatible with their public messages but keeping the payload as
//!   `bytes::Bytes` (zero-copy on decode; a source's answer is filtered, never decoded).
//! - [`gateway_view`]: the Gateway server (and a client, for raw-byte tests) over views;
//!   [`institution_view`]: the Institution
//!   client over views. These are what the hub runs; the typed ones are for institutions.
//! - [`codec`]: prost with malformed requests answered `INVALID_ARGUMENT` (the views use it).
//! - [`stored`]: a `Delivery` already encoded, sent as stored with its attempt number (the
//!   hub's Institution client sends these, over `Deliver` and `DeliverStream`).
//! - [`FILE_DESCRIPTOR_SET`]: the compiled public contracts, for reflection and for resolving
//!   deliberation field paths.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// Packages mirror the proto packages so that generated cross-package paths resolve.
pub mod bcss {
    pub mod flows {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/bcss.flows.v1.rs"));
        }
    }
    pub mod hub {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/bcss.hub.v1.rs"));
        }
        pub mod view {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/views/bcss.hub.view.v1.rs"));
            }
        }
    }
    pub mod institution {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/bcss.institution.v1.rs"));
        }
    }
}

pub use bcss::{flows, hub, institution};

pub mod codec;
pub mod stored;

/// The Gateway service over envelope views.
pub mod gateway_view {
    include!(concat!(env!("OUT_DIR"), "/views/bcss.hub.v1.Gateway.rs"));
}

/// The Institution client over stored deliveries and answer views.
pub mod institution_view {
    include!(concat!(
        env!("OUT_DIR"),
        "/views/bcss.institution.v1.Institution.rs"
    ));
}

/// The Institution server over delivery views (what the reference institutions serve).
pub mod institution_receiving {
    include!(concat!(
        env!("OUT_DIR"),
        "/views/receiving/bcss.institution.v1.Institution.rs"
    ));
}

/// The encoded `FileDescriptorSet` of the public contracts (not the views).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/bcss_descriptor.bin"));
