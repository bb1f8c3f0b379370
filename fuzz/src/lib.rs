//! Shared set-up of the fuzz targets: the flow schemas and the shipped deliberations' grants,
//! loaded once per process, and what "decodes as the flow's message type" means.

use std::path::Path;
use std::sync::OnceLock;

use bcss_domain::Flow;
use bcss_policy::{FieldTree, Policy, Schema, Settings};
use bcss_proto::flows::v1 as flows;
use prost::Message;

/// The flow schemas the hub validates payloads against (`Schema::load`, as `Policy` does).
pub fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(Schema::load)
}

/// The shipped policy, loaded from `config/hub.toml` the way start-up does.
pub fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let hub_toml = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/hub.toml");
        let settings = Settings::load(&hub_toml).expect("config/hub.toml loads");
        Policy::load(&settings).expect("the shipped configuration loads")
    })
}

/// One deliberation's grant for one flow.
#[derive(Debug)]
pub struct GrantRef {
    pub deliberation: String,
    pub flow: Flow,
    pub tree: &'static FieldTree,
}

/// Every (deliberation, flow) grant of the shipped configuration, in file order then flow
/// order, so that the byte that picks one means the same grant on every run.
pub fn grants() -> &'static [GrantRef] {
    static GRANTS: OnceLock<Vec<GrantRef>> = OnceLock::new();
    GRANTS.get_or_init(|| {
        let policy = policy();
        let mut grants = Vec::new();
        for deliberation in policy.deliberations() {
            for flow in Flow::ALL {
                if let Some(grant) = policy.grant(deliberation, flow) {
                    grants.push(GrantRef {
                        deliberation: deliberation.id.to_string(),
                        flow,
                        tree: &grant.tree,
                    });
                }
            }
        }
        assert!(
            !grants.is_empty(),
            "the shipped configuration grants something"
        );
        grants
    })
}

/// The flow a selector byte picks.
pub fn flow_of(selector: u8) -> Flow {
    Flow::ALL[usize::from(selector) % Flow::ALL.len()]
}

/// The person's NISS as prost decodes `payload` as the flow's message type, or `None` when
/// prost refuses the bytes. An absent NISS (or absent enclosing block) is `Some("")`, as
/// proto3 reads it.
pub fn decoded_niss(flow: Flow, payload: &[u8]) -> Option<String> {
    match flow {
        Flow::A052 => flows::A052::decode(payload).ok().map(|m| m.niss),
        Flow::Dmfa => flows::Dmfa::decode(payload).ok().map(|m| {
            m.employer_declaration
                .and_then(|d| d.natural_person)
                .map(|p| p.niss)
                .unwrap_or_default()
        }),
        Flow::Dimona => flows::Dimona::decode(payload)
            .ok()
            .map(|m| m.worker.map(|w| w.niss).unwrap_or_default()),
    }
}

/// True when prost decodes `payload` as the flow's message type.
pub fn decodes(flow: Flow, payload: &[u8]) -> bool {
    decoded_niss(flow, payload).is_some()
}
