//! Compiles the contracts in `proto/` with protox (pure Rust: no protoc to install), generates
//! the prost types and tonic services, the server-side views, and the descriptor set that
//! reflection and the policy's field-path resolution read.

use std::path::PathBuf;

use prost::Message;
use tonic_prost_build::manual::{Builder, Method, MethodBuilder, Service};

const PUBLIC: &[&str] = &[
    "bcss/flows/v1/common.proto",
    "bcss/flows/v1/a052.proto",
    "bcss/flows/v1/dmfa.proto",
    "bcss/flows/v1/dimona.proto",
    "bcss/hub/v1/envelope.proto",
    "bcss/hub/v1/consult.proto",
    "bcss/hub/v1/gateway.proto",
    "bcss/hub/v1/directory.proto",
    "bcss/hub/v1/admin.proto",
    "bcss/hub/v1/journal.proto",
    "bcss/institution/v1/institution.proto",
];

/// The hub's codec: prost, with a request that does not decode answered `INVALID_ARGUMENT`
/// (`src/codec.rs`).
const STRICT: &str = "crate::codec::RequestCodec";
/// Plain prost.
const PROST: &str = "tonic_prost::ProstCodec";

/// A method of a service described by hand, unary unless made streaming.
fn method(codec: &str, name: &str, route: &str, input: &str, output: &str) -> MethodBuilder {
    Method::builder()
        .name(name)
        .route_name(route)
        .input_type(input)
        .output_type(output)
        .codec_path(codec)
}

/// A unary method of a service described by hand.
fn unary(codec: &str, name: &str, route: &str, input: &str, output: &str) -> Method {
    method(codec, name, route, input, output).build()
}

/// A bidirectional streaming method of a service described by hand.
fn streaming(codec: &str, name: &str, route: &str, input: &str, output: &str) -> Method {
    method(codec, name, route, input, output)
        .client_streaming()
        .server_streaming()
        .build()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={}", root.display());

    // The public contracts: types, clients and servers, and the descriptor set.
    let public = protox::compile(PUBLIC, [&root])?;
    std::fs::write(out.join("bcss_descriptor.bin"), public.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(public)?;

    // The views, into their own folder; the types they use come from the public code.
    let views_dir = out.join("views");
    std::fs::create_dir_all(&views_dir)?;
    let views = protox::compile(["bcss/hub/view/v1/views.proto"], [&root])?;
    tonic_prost_build::configure()
        .out_dir(&views_dir)
        .bytes(".")
        .extern_path(".bcss.flows.v1", "crate::flows::v1")
        .extern_path(".bcss.hub.v1", "crate::hub::v1")
        .build_client(false)
        .build_server(false)
        .compile_fds(views)?;

    // The Gateway as the hub serves it (envelopes decoded as views), and the Institution as the
    // hub calls it (deliveries sent as stored, answers decoded as views). Route names match the
    // public services.
    let gateway = Service::builder()
        .name("Gateway")
        .package("bcss.hub.v1")
        .comment("bcss.hub.v1.Gateway, decoding envelopes as views (payload kept as bytes).")
        .method(unary(
            STRICT,
            "submit",
            "Submit",
            "crate::hub::view::v1::EnvelopeView",
            "crate::hub::v1::SubmitReply",
        ))
        .method(streaming(
            STRICT,
            "submit_stream",
            "SubmitStream",
            "crate::hub::view::v1::EnvelopeView",
            "crate::hub::v1::SubmitStreamReply",
        ))
        .method(unary(
            STRICT,
            "explain",
            "Explain",
            "crate::hub::view::v1::EnvelopeView",
            "crate::hub::v1::ExplainReply",
        ))
        .method(unary(
            STRICT,
            "track",
            "Track",
            "crate::hub::v1::TrackRequest",
            "crate::hub::v1::TrackReply",
        ))
        .method(unary(
            STRICT,
            "consult",
            "Consult",
            "crate::hub::v1::ConsultRequest",
            "crate::hub::view::v1::ConsultReplyView",
        ))
        .build();
    let institution = Service::builder()
        .name("Institution")
        .package("bcss.institution.v1")
        .comment("bcss.institution.v1.Institution, sending deliveries as stored.")
        .method(unary(
            STRICT,
            "deliver",
            "Deliver",
            "crate::stored::StoredDelivery",
            "crate::institution::v1::DeliveryAck",
        ))
        .method(streaming(
            STRICT,
            "deliver_stream",
            "DeliverStream",
            "crate::stored::StoredDelivery",
            "crate::institution::v1::DeliveryAck",
        ))
        .method(unary(
            STRICT,
            "answer",
            "Answer",
            "crate::institution::v1::AnswerRequest",
            "crate::hub::view::v1::AnswerReplyView",
        ))
        .build();
    // The Institution as the reference institutions serve it: deliveries decoded as views, so
    // a payload is decoded only by an institution that keeps it (not one that counts). Plain
    // prost decoding, as any institution's: a field written twice is valid protobuf (the last
    // wins), and the hub's stored deliveries append their attempt number that way.
    let receiving = Service::builder()
        .name("Institution")
        .package("bcss.institution.v1")
        .comment("bcss.institution.v1.Institution, receiving deliveries as views (payload kept as bytes).")
        .method(unary(
            PROST,
            "deliver",
            "Deliver",
            "crate::hub::view::v1::DeliveryView",
            "crate::institution::v1::DeliveryAck",
        ))
        .method(streaming(
            PROST,
            "deliver_stream",
            "DeliverStream",
            "crate::hub::view::v1::DeliveryView",
            "crate::institution::v1::DeliveryAck",
        ))
        .method(unary(
            PROST,
            "answer",
            "Answer",
            "crate::institution::v1::AnswerRequest",
            "crate::institution::v1::AnswerReply",
        ))
        .build();
    let receiving_dir = views_dir.join("receiving");
    std::fs::create_dir_all(&receiving_dir)?;
    Builder::new()
        .out_dir(&receiving_dir)
        .build_client(false)
        .compile(std::slice::from_ref(&receiving));
    Builder::new()
        .out_dir(&views_dir)
        .compile(std::slice::from_ref(&gateway));
    Builder::new()
        .out_dir(&views_dir)
        .build_server(false)
        .compile(std::slice::from_ref(&institution));
    Ok(())
}
