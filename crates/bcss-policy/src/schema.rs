//! The flow contracts as the policy sees them: field paths resolved to field numbers against
//! the compiled descriptor set, each flow's full schema tree for validation, and the paths of
//! the fields a filter would remove (for `Explain`).

use bcss_domain::Flow;
use bcss_wire::{FieldTree, FieldTreeBuilder, NodeId, WireType, WireTypes};
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value,
};

/// What the hub knows of one flow's message type.
#[derive(Clone, Debug)]
pub struct FlowSchema {
    pub message: MessageDescriptor,
    /// Every field of the message, recursively: what a well-formed payload may contain.
    pub tree: FieldTree,
    /// Field numbers from the flow message down to the person's NISS.
    pub niss_path: Vec<u32>,
}

/// The three flow schemas.
#[derive(Clone, Debug)]
pub struct Schema {
    flows: Vec<FlowSchema>,
}

/// Where the person's NISS sits in each flow message.
const NISS_PATHS: [(Flow, &str, &str); 3] = [
    (Flow::A052, "bcss.flows.v1.A052", "niss"),
    (
        Flow::Dmfa,
        "bcss.flows.v1.Dmfa",
        "employer_declaration.natural_person.niss",
    ),
    (Flow::Dimona, "bcss.flows.v1.Dimona", "worker.niss"),
];

/// Messages nest at most this deep; deeper means a recursive type, which flows do not have.
const MAX_DEPTH: usize = 16;

impl Schema {
    /// Reads the descriptor set compiled into `bcss-proto`. A failure here is a build defect,
    /// not a configuration error, hence the panic.
    pub fn load() -> Schema {
        let pool = DescriptorPool::decode(bcss_proto::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptor set decodes");
        let flows = NISS_PATHS
            .iter()
            .map(|(flow, name, niss)| {
                let message = pool
                    .get_message_by_name(name)
                    .expect("every flow message is in the descriptor set");
                let mut builder = FieldTreeBuilder::default();
                add_all(&mut builder, builder_root(), &message, 0);
                let niss_path = resolve(&message, niss)
                    .expect("the NISS path exists")
                    .iter()
                    .map(|f| f.number())
                    .collect();
                debug_assert_eq!(*flow, Flow::ALL[flows_index(*flow)]);
                FlowSchema {
                    message,
                    tree: builder.build(),
                    niss_path,
                }
            })
            .collect();
        Schema { flows }
    }

    pub fn flow(&self, flow: Flow) -> &FlowSchema {
        &self.flows[flows_index(flow)]
    }

    /// Compiles a field list into a tree, or says which paths do not exist. A path that names a
    /// sub-message keeps each field the contract gives it, not its bytes: a field the contract
    /// does not know (a sender's addition) is dropped there as anywhere else.
    pub fn compile(&self, flow: Flow, paths: &[String]) -> Result<FieldTree, Vec<String>> {
        let message = &self.flow(flow).message;
        let mut builder = FieldTreeBuilder::default();
        let mut problems = Vec::new();
        for path in paths {
            match resolve(message, path) {
                Ok(fields) => {
                    let mut node = Some(builder_root());
                    for (i, field) in fields.iter().enumerate() {
                        let Some(at) = node else { break };
                        if i + 1 == fields.len() {
                            match field.kind() {
                                Kind::Message(inner) => {
                                    if let Some(child) = builder.descend(at, field.number()) {
                                        add_all(&mut builder, child, &inner, fields.len());
                                    }
                                }
                                _ => builder.keep(at, field.number(), wire_types(field)),
                            }
                        } else {
                            node = builder.descend(at, field.number());
                        }
                    }
                }
                Err(problem) => problems.push(problem),
            }
        }
        if problems.is_empty() {
            Ok(builder.build())
        } else {
            Err(problems)
        }
    }

    /// The dotted path of every field `tree` (compiled for `flow`) can drop, by node and
    /// field number: what [`crate::Grant::removed_fields`] names.
    pub fn field_names(&self, flow: Flow, tree: &FieldTree) -> FieldNames {
        fn visit(
            tree: &FieldTree,
            node: NodeId,
            message: &MessageDescriptor,
            prefix: &str,
            names: &mut FieldNames,
        ) {
            let descended: Vec<(u32, NodeId)> = tree
                .fields(node)
                .filter_map(|(number, child)| Some((number, child?)))
                .collect();
            for field in message.fields() {
                let path = if prefix.is_empty() {
                    field.name().to_owned()
                } else {
                    format!("{prefix}.{}", field.name())
                };
                let child = descended.iter().find(|(n, _)| *n == field.number());
                if let (Some(&(_, child)), Kind::Message(inner)) = (child, field.kind()) {
                    visit(tree, child, &inner, &path, names);
                }
                names.set(node, field.number(), path);
            }
        }
        let mut names = FieldNames::default();
        visit(tree, tree.root(), &self.flow(flow).message, "", &mut names);
        names
    }

    /// The reference for [`crate::Grant::removed_fields`], by another road: decodes the
    /// payload with prost-reflect and lists the set fields `allowed` does not grant. Slower by
    /// an order of magnitude; the tests check one against the other, and that nothing outside
    /// a deliberation reaches a recipient.
    pub fn removed_fields(
        &self,
        flow: Flow,
        allowed: &[String],
        payload: &[u8],
    ) -> Result<Vec<String>, prost::DecodeError> {
        let message = DynamicMessage::decode(self.flow(flow).message.clone(), payload)?;
        let mut removed = Vec::new();
        collect_removed(&message, "", allowed, &mut removed);
        // Name each path once, however many repeated blocks carried it.
        let mut seen = std::collections::HashSet::new();
        removed.retain(|path| seen.insert(path.clone()));
        Ok(removed)
    }
}

/// The dotted path of fields, by node of a grant's tree and field number.
#[derive(Clone, Debug, Default)]
pub struct FieldNames {
    by_node: Vec<Vec<Option<Box<str>>>>,
}

impl FieldNames {
    /// The path of field `number` at `node`, if the schema knows it.
    pub fn name(&self, node: NodeId, number: u32) -> Option<&str> {
        self.by_node
            .get(node.0 as usize)?
            .get(number as usize)?
            .as_deref()
    }

    fn set(&mut self, node: NodeId, number: u32, path: String) {
        let (node, number) = (node.0 as usize, number as usize);
        if self.by_node.len() <= node {
            self.by_node.resize(node + 1, Vec::new());
        }
        let names = &mut self.by_node[node];
        if names.len() <= number {
            names.resize(number + 1, None);
        }
        names[number] = Some(path.into());
    }
}

fn flows_index(flow: Flow) -> usize {
    match flow {
        Flow::A052 => 0,
        Flow::Dmfa => 1,
        Flow::Dimona => 2,
    }
}

fn builder_root() -> NodeId {
    NodeId(0)
}

/// Resolves a dot-separated path to its fields, or explains what does not exist.
fn resolve(message: &MessageDescriptor, path: &str) -> Result<Vec<FieldDescriptor>, String> {
    let mut fields = Vec::new();
    let mut current = message.clone();
    let segments: Vec<&str> = path.split('.').collect();
    for (i, segment) in segments.iter().enumerate() {
        let Some(field) = current.get_field_by_name(segment) else {
            let known: Vec<String> = current.fields().map(|f| f.name().to_owned()).collect();
            return Err(format!(
                "field path `{path}`: `{segment}` is not a field of {} (its fields: {})",
                current.full_name(),
                known.join(", ")
            ));
        };
        if i + 1 < segments.len() {
            match field.kind() {
                Kind::Message(inner) => current = inner,
                _ => {
                    return Err(format!(
                        "field path `{path}`: `{segment}` is not a message, so it has no field `{}`",
                        segments[i + 1]
                    ));
                }
            }
        }
        fields.push(field);
    }
    Ok(fields)
}

/// The wire types a field's declared type allows.
fn wire_types(field: &FieldDescriptor) -> WireTypes {
    let scalar = match field.kind() {
        Kind::String => return WireTypes::string(),
        Kind::Message(_) | Kind::Bytes => return WireTypes::of(WireType::Len),
        Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => WireType::I64,
        Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => WireType::I32,
        Kind::Int32
        | Kind::Int64
        | Kind::Uint32
        | Kind::Uint64
        | Kind::Sint32
        | Kind::Sint64
        | Kind::Bool
        | Kind::Enum(_) => WireType::Varint,
    };
    if field.is_list() {
        WireTypes::packable(scalar)
    } else {
        WireTypes::of(scalar)
    }
}

fn add_all(
    builder: &mut FieldTreeBuilder,
    node: NodeId,
    message: &MessageDescriptor,
    depth: usize,
) {
    assert!(
        depth < MAX_DEPTH,
        "{} nests too deep (recursive type?)",
        message.full_name()
    );
    for field in message.fields() {
        match field.kind() {
            Kind::Message(inner) => {
                let child = builder
                    .descend(node, field.number())
                    .expect("a fresh field");
                add_all(builder, child, &inner, depth + 1);
            }
            _ => builder.keep(node, field.number(), wire_types(&field)),
        }
    }
}

fn collect_removed(
    message: &DynamicMessage,
    prefix: &str,
    allowed: &[String],
    removed: &mut Vec<String>,
) {
    for (field, value) in message.fields() {
        let path = if prefix.is_empty() {
            field.name().to_owned()
        } else {
            format!("{prefix}.{}", field.name())
        };
        if allowed.contains(&path) {
            continue;
        }
        let below = format!("{path}.");
        let partially = allowed.iter().any(|a| a.starts_with(&below));
        match value {
            Value::Message(inner) if partially => collect_removed(inner, &path, allowed, removed),
            Value::List(items) if partially => {
                for item in items {
                    if let Value::Message(inner) = item {
                        collect_removed(inner, &path, allowed, removed);
                    }
                }
            }
            _ => removed.push(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_paths_are_explained() {
        let schema = Schema::load();
        let problems = schema
            .compile(
                Flow::Dmfa,
                &[
                    "employer_declaration.nope".into(),
                    "employer_declaration.year.more".into(),
                ],
            )
            .unwrap_err();
        assert_eq!(problems.len(), 2);
        assert!(
            problems[0].contains("`nope` is not a field of bcss.flows.v1.EmployerDeclaration"),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].contains("`year` is not a message"),
            "{}",
            problems[1]
        );
    }

    /// A052 `risks.period` granted whole, and a payload whose period carries a field 15 the
    /// contract does not have: the start and end go through, field 15 does not.
    #[test]
    fn a_sub_message_granted_whole_keeps_its_known_fields_only() {
        fn len_field(number: u8, content: &[u8]) -> Vec<u8> {
            let mut out = vec![number << 3 | 2, content.len() as u8];
            out.extend_from_slice(content);
            out
        }
        let schema = Schema::load();
        let tree = schema
            .compile(Flow::A052, &["niss".into(), "risks.period".into()])
            .unwrap();
        let mut period = len_field(1, b"2024-01-01");
        period.extend(len_field(2, b"2024-03-31"));
        period.extend(len_field(15, b"burn-out diagnosis"));
        let mut payload = len_field(1, b"85073003328");
        payload.extend(len_field(5, &len_field(3, &period)));
        let (out, _) = bcss_wire::filter(&tree, &payload).unwrap();
        let mut expected_period = len_field(1, b"2024-01-01");
        expected_period.extend(len_field(2, b"2024-03-31"));
        let mut expected = len_field(1, b"85073003328");
        expected.extend(len_field(5, &len_field(3, &expected_period)));
        assert_eq!(&out[..], &expected[..]);
    }

    #[test]
    fn niss_paths_resolve_to_field_numbers() {
        let schema = Schema::load();
        assert_eq!(schema.flow(Flow::A052).niss_path, vec![1]);
        assert_eq!(schema.flow(Flow::Dmfa).niss_path.len(), 3);
        assert_eq!(schema.flow(Flow::Dimona).niss_path.len(), 2);
    }
}
