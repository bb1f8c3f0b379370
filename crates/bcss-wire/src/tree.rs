//! The compiled form of a field list: a tree of field numbers.
//!
//! Each node stands for a message type as seen at one place in the tree; its slots, indexed
//! by field number, say what to do with each field: drop it, keep it whole (with the wire types
//! its declared type allows), or descend into it as a partially kept sub-message.

/// The four wire types the hub accepts (groups are refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum WireType {
    Varint = 0,
    I64 = 1,
    Len = 2,
    I32 = 5,
}

/// A set of wire types, as a bit mask, and whether a `Len` value is a UTF-8 string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireTypes(u8);

/// Marks a `string` field: its bytes must be UTF-8 (protobuf decoders refuse them otherwise).
const UTF8: u8 = 1 << 7;
const SCALARS: [WireType; 3] = [WireType::Varint, WireType::I64, WireType::I32];

impl WireTypes {
    pub const fn of(wire_type: WireType) -> WireTypes {
        WireTypes(1 << wire_type as u8)
    }
    /// A `string` field: `Len`, holding UTF-8.
    pub const fn string() -> WireTypes {
        WireTypes(1 << WireType::Len as u8 | UTF8)
    }
    /// `Len` plus `wire_type`: a repeated scalar, packed or not.
    pub const fn packable(wire_type: WireType) -> WireTypes {
        WireTypes(1 << wire_type as u8 | 1 << WireType::Len as u8)
    }
    #[inline]
    pub fn contains(self, wire_type: WireType) -> bool {
        self.0 & (1 << wire_type as u8) != 0
    }
    /// True for a `string` field.
    #[inline]
    pub fn is_string(self) -> bool {
        self.0 & UTF8 != 0
    }
    /// For a repeated scalar, the scalar's wire type (a `Len` value is then packed scalars).
    #[inline]
    pub fn packed_scalar(self) -> Option<WireType> {
        if !self.contains(WireType::Len) {
            return None;
        }
        SCALARS.into_iter().find(|scalar| self.contains(*scalar))
    }
}

/// Index of a node in a [`FieldTree`]; the root is `NodeId(0)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    Drop,
    Keep(WireTypes),
    Descend(NodeId),
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Node {
    slots: Vec<Slot>,
}

impl Node {
    #[inline]
    pub(crate) fn slot(&self, field: u32) -> Slot {
        self.slots
            .get(field as usize)
            .copied()
            .unwrap_or(Slot::Drop)
    }
}

/// A compiled field list. Built once with a [`FieldTreeBuilder`], then read-only.
#[derive(Clone, Debug)]
pub struct FieldTree {
    nodes: Vec<Node>,
}

impl FieldTree {
    #[inline]
    pub(crate) fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize]
    }

    /// The root node.
    pub fn root(&self) -> NodeId {
        NodeId(0)
    }

    /// True when the tree keeps nothing at all.
    pub fn is_empty(&self) -> bool {
        self.nodes[0].slots.iter().all(|s| *s == Slot::Drop)
    }

    /// Field numbers kept or descended into at `node`, in order (for tests and reports).
    pub fn fields(&self, node: NodeId) -> impl Iterator<Item = (u32, Option<NodeId>)> + '_ {
        self.node(node)
            .slots
            .iter()
            .enumerate()
            .filter_map(|(number, slot)| match slot {
                Slot::Drop => None,
                Slot::Keep(_) => Some((number as u32, None)),
                Slot::Descend(child) => Some((number as u32, Some(*child))),
            })
    }
}

/// Builds a [`FieldTree`] one path at a time.
#[derive(Debug)]
pub struct FieldTreeBuilder {
    nodes: Vec<Node>,
}

impl Default for FieldTreeBuilder {
    fn default() -> Self {
        FieldTreeBuilder {
            nodes: vec![Node::default()],
        }
    }
}

impl FieldTreeBuilder {
    /// Keeps the whole field `field` of `node`, accepting the given wire types.
    pub fn keep(&mut self, node: NodeId, field: u32, wire_types: WireTypes) {
        self.set(node, field, Slot::Keep(wire_types));
    }

    /// Descends into the sub-message field `field` of `node`, returning its node. A field
    /// already kept whole stays kept whole (a wider grant wins); `None` then.
    pub fn descend(&mut self, node: NodeId, field: u32) -> Option<NodeId> {
        match self.nodes[node.0 as usize].slot(field) {
            Slot::Descend(child) => Some(child),
            Slot::Keep(_) => None,
            Slot::Drop => {
                let child = NodeId(self.nodes.len() as u32);
                self.nodes.push(Node::default());
                self.set(node, field, Slot::Descend(child));
                Some(child)
            }
        }
    }

    fn set(&mut self, node: NodeId, field: u32, slot: Slot) {
        let slots = &mut self.nodes[node.0 as usize].slots;
        if slots.len() <= field as usize {
            slots.resize(field as usize + 1, Slot::Drop);
        }
        slots[field as usize] = slot;
    }

    pub fn build(self) -> FieldTree {
        FieldTree { nodes: self.nodes }
    }
}
