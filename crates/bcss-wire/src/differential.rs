//! Differential tests: the tuned filter against the untuned one ([`crate::reference`]) on random
//! trees and random, often malformed, inputs; outputs, statistics and errors must be identical.

use crate::reference;
use crate::tree::{FieldTree, FieldTreeBuilder, NodeId, WireType, WireTypes};
use crate::varint;

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const NUMBERS: u64 = 40;

fn random_wire_types(rng: &mut Rng) -> WireTypes {
    match rng.below(6) {
        0 => WireTypes::of(WireType::Varint),
        1 => WireTypes::of(WireType::I64),
        2 => WireTypes::of(WireType::I32),
        3 => WireTypes::string(),
        4 => WireTypes::of(WireType::Len),
        _ => WireTypes::packable(WireType::Varint),
    }
}

fn random_tree(rng: &mut Rng) -> FieldTree {
    let mut b = FieldTreeBuilder::default();
    let mut nodes = vec![NodeId(0)];
    for _ in 0..rng.below(30) {
        let node = nodes[rng.below(nodes.len() as u64) as usize];
        let number = 1 + rng.below(NUMBERS) as u32;
        if rng.chance(30) && nodes.len() < 12 {
            if let Some(child) = b.descend(node, number) {
                nodes.push(child);
            }
        } else {
            let wire_types = random_wire_types(rng);
            b.keep(node, number, wire_types);
        }
    }
    b.build()
}

/// A key, now and then over-long.
fn key(number: u64, wire_type: u64, rng: &mut Rng, out: &mut Vec<u8>) {
    some_varint(number << 3 | wire_type, rng, out);
}

/// `value` as a varint, now and then over-long (valid protobuf all the same).
fn some_varint(mut value: u64, rng: &mut Rng, out: &mut Vec<u8>) {
    if rng.chance(8) {
        // Over-long: the same value with one to three extra continuation groups.
        for _ in 0..1 + rng.below(3) {
            out.push(value as u8 & 0x7f | 0x80);
            value >>= 7;
        }
    }
    varint::encode(value, out);
}

fn random_message(rng: &mut Rng, depth: u32, out: &mut Vec<u8>) {
    for _ in 0..rng.below(12) {
        let number = 1 + rng.below(NUMBERS);
        match rng.below(5) {
            0 => {
                key(number, 0, rng, out);
                let value = if rng.chance(50) {
                    rng.below(128)
                } else {
                    rng.next()
                };
                varint::encode(value, out);
            }
            1 => {
                key(number, 1, rng, out);
                out.extend_from_slice(&rng.next().to_le_bytes());
            }
            2 => {
                key(number, 5, rng, out);
                out.extend_from_slice(&(rng.next() as u32).to_le_bytes());
            }
            _ => {
                let mut body = Vec::new();
                if depth < 5 && rng.chance(60) {
                    random_message(rng, depth + 1, &mut body);
                } else {
                    let n = if rng.chance(10) {
                        100 + rng.below(300)
                    } else {
                        rng.below(12)
                    };
                    body.extend((0..n).map(|_| b'a' + rng.below(26) as u8));
                }
                key(number, 2, rng, out);
                some_varint(body.len() as u64, rng, out);
                out.extend_from_slice(&body);
            }
        }
    }
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        if input.is_empty() {
            input.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(input.len() as u64) as usize;
        match rng.below(4) {
            0 => input[at] = rng.next() as u8,
            1 => input[at] ^= 1 << rng.below(8),
            2 => input.truncate(at),
            _ => input.insert(at, rng.next() as u8),
        }
    }
}

#[test]
fn the_tuned_filter_matches_the_reference() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut err) = (0, 0);
    for case in 0..30_000 {
        let tree = random_tree(&mut rng);
        let mut input = Vec::new();
        random_message(&mut rng, 0, &mut input);
        if rng.chance(40) {
            mutate(&mut rng, &mut input);
        }
        let tuned = crate::filter(&tree, &input).map(|(out, stats)| (out.to_vec(), stats));
        let expected = reference::filter(&tree, &input);
        assert_eq!(tuned, expected, "case {case}: input {input:02x?}");
        // Naming the dropped fields refuses exactly what the filter refuses.
        let dropped = crate::for_each_dropped(&tree, &input, |_, _| {});
        assert_eq!(
            dropped,
            expected.as_ref().map(|_| ()).map_err(|e| *e),
            "case {case}: dropped fields, input {input:02x?}"
        );
        if expected.is_ok() {
            ok += 1;
        } else {
            err += 1;
        }
    }
    // Both kinds of outcome are exercised in earnest.
    assert!(ok > 8_000 && err > 3_000, "{ok} filtered, {err} refused");
}
