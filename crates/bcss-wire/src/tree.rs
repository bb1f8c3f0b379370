//! The compiled form of a field list: a tree of field numbers.
//!
//! Each node stands for a message type as seen at one place in the tree; its slots, indexed
//! by field number, say what to do with each field: drop it, keep it whole (with the wire types
//! its declared type allows), or descend into it as a partially kept sub-message.
//!
//! For the filter's hot loop each node also has a `KeyTable`: what to do with a field, by its
//! whole key (field number and wire type), wire-type check included, in one lookup.

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

/// What the filter does with a field, by its key (`number << 3 | wire type`) for every field
/// number the node has a slot for (and at least 1 to 15): [`Action`]s. Keys past the end of the
/// table are field numbers the node drops.
#[derive(Clone, Debug)]
pub(crate) struct KeyTable(pub(crate) Box<[Action]>);

/// One entry of a [`KeyTable`]: a kind in the low two bits, the child node above them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Action(pub(crate) u32);

impl Action {
    /// Not a plain case (field 0, a group, an unknown or refused wire type): the field goes
    /// through the generic reader, which gives the precise error.
    pub(crate) const SLOW: u32 = 0;
    /// Drop the field (whatever its wire type).
    pub(crate) const DROP: u32 = 1;
    /// Keep the field whole: its wire type is one the tree accepts.
    pub(crate) const KEEP: u32 = 2;
    /// A `Len` field to filter with the child node `self.0 >> 2`.
    pub(crate) const DESCEND: u32 = 3;

    #[inline]
    pub(crate) fn kind(self) -> u32 {
        self.0 & 3
    }
    #[inline]
    pub(crate) fn child(self) -> NodeId {
        NodeId(self.0 >> 2)
    }

    /// The action for a field, given its number's slot and its wire type.
    pub(crate) fn of(slot: Slot, wire_type: WireType) -> Action {
        Action(match slot {
            Slot::Drop => Action::DROP,
            Slot::Keep(accepted) if accepted.contains(wire_type) => Action::KEEP,
            Slot::Descend(child) if wire_type == WireType::Len => {
                assert!(child.0 < 1 << 30, "a tree of more than 2^30 nodes");
                Action::DESCEND | child.0 << 2
            }
            Slot::Keep(_) | Slot::Descend(_) => Action::SLOW,
        })
    }

    /// The action for a key past the end of a [`KeyTable`], by wire type (`key & 7`).
    pub(crate) const PAST_TABLE: [Action; 8] = {
        let (drop, slow) = (Action(Action::DROP), Action(Action::SLOW));
        [drop, drop, drop, slow, slow, drop, slow, slow]
    };
}

impl KeyTable {
    fn of(node: &Node) -> KeyTable {
        let numbers = node.slots.len().max(16);
        let table = (0..numbers << 3)
            .map(|key| {
                let number = (key >> 3) as u32;
                let wire_type = match key & 7 {
                    0 => WireType::Varint,
                    1 => WireType::I64,
                    2 => WireType::Len,
                    5 => WireType::I32,
                    _ => return Action(Action::SLOW),
                };
                if number == 0 {
                    Action(Action::SLOW)
                } else {
                    Action::of(node.slot(number), wire_type)
                }
            })
            .collect();
        KeyTable(table)
    }

    /// The action for `key` (already known to be below 2^14).
    #[inline]
    pub(crate) fn get(&self, key: usize) -> Action {
        match self.0.get(key) {
            Some(action) => *action,
            None => Action::PAST_TABLE[key & 7],
        }
    }
}

/// A compiled field list. Built once with a [`FieldTreeBuilder`], then read-only.
#[derive(Clone, Debug)]
pub struct FieldTree {
    nodes: Vec<Node>,
    /// One per node, same index.
    keys: Vec<KeyTable>,
}

impl FieldTree {
    #[inline]
    pub(crate) fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize]
    }

    #[inline]
    pub(crate) fn keys(&self, id: NodeId) -> &KeyTable {
        &self.keys[id.0 as usize]
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
        let keys = self.nodes.iter().map(KeyTable::of).collect();
        FieldTree {
            nodes: self.nodes,
            keys,
        }
    }
}
