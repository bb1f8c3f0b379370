//! What is stored, as prost messages: a ticket with its per-recipient outcomes, and a delivery
//! with its state. Field numbers are the on-disk format: add fields, never renumber.

/// One accepted exchange, as `Submit` answered it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TicketRow {
    #[prost(string, tag = "1")]
    pub ticket: String,
    /// The sending institution's id.
    #[prost(string, tag = "2")]
    pub sender: String,
    #[prost(string, tag = "3")]
    pub message_id: String,
    /// 1 A052, 2 DmfA, 3 Dimona.
    #[prost(uint32, tag = "4")]
    pub flow: u32,
    /// The person, as the NISS's 11 digits in a number (the store is as sensitive as the data
    /// it keeps; logs and errors never show it).
    #[prost(uint64, tag = "5")]
    pub niss: u64,
    #[prost(string, optional, tag = "6")]
    pub relay_of: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub contact_file: Option<String>,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "8")]
    pub accepted_at_ms: i64,
    /// Fingerprint of the envelope, to tell a resubmission from a reused message id.
    #[prost(uint64, tag = "9")]
    pub fingerprint: u64,
    #[prost(message, repeated, tag = "10")]
    pub outcomes: Vec<OutcomeRow>,
}

/// The decision for one candidate recipient.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OutcomeRow {
    #[prost(string, tag = "1")]
    pub institution: String,
    #[prost(string, optional, tag = "2")]
    pub deliberation: Option<String>,
    /// 0 when admitted; otherwise the refusal reason's 1-based position in
    /// `bcss_domain::RefusalReason::ALL` (the store's own numbering, not the contract's).
    #[prost(uint32, tag = "3")]
    pub refusal: u32,
    /// The delivery's sequence number when admitted (0 when refused).
    #[prost(uint64, tag = "4")]
    pub delivery_seq: u64,
    #[prost(bool, tag = "5")]
    pub a_posteriori: bool,
    #[prost(uint32, tag = "6")]
    pub removed_fields: u32,
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DeliveryState {
    /// Waiting for (another) attempt.
    Pending = 0,
    /// Acknowledged by the recipient.
    Delivered = 1,
    /// Given up after too many attempts or too long; kept for inspection and replay.
    DeadLetter = 2,
}

/// One delivery of a ticket to one recipient.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeliveryRow {
    /// Assigned by the store at commit: the order deliveries were accepted in.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// `<ticket>/<recipient>`: stable across retries, so the recipient can drop duplicates.
    #[prost(string, tag = "2")]
    pub delivery_id: String,
    #[prost(string, tag = "3")]
    pub ticket: String,
    #[prost(string, tag = "4")]
    pub recipient: String,
    /// The person, to keep deliveries about one person in order.
    #[prost(uint64, tag = "5")]
    pub niss: u64,
    #[prost(int64, tag = "6")]
    pub accepted_at_ms: i64,
    #[prost(enumeration = "DeliveryState", tag = "7")]
    pub state: i32,
    #[prost(uint32, tag = "8")]
    pub attempts: u32,
    /// Why the last attempt failed (never personal data: a status code and message).
    #[prost(string, tag = "9")]
    pub last_error: String,
    /// When the next attempt is due, milliseconds since the Unix epoch (0: now).
    #[prost(int64, tag = "10")]
    pub next_attempt_ms: i64,
    #[prost(int64, tag = "11")]
    pub delivered_at_ms: i64,
    /// Why it became a dead letter.
    #[prost(string, tag = "12")]
    pub dead_reason: String,
    /// The encoded `bcss.institution.v1.Delivery`, already filtered (the row goes once delivered).
    #[prost(bytes = "bytes", tag = "13")]
    pub request: bytes::Bytes,
    /// For the journal: who sent it, which flow, under which deliberation, kept how long.
    #[prost(string, tag = "14")]
    pub sender: String,
    #[prost(uint32, tag = "15")]
    pub flow: u32,
    #[prost(string, tag = "16")]
    pub deliberation: String,
    #[prost(int64, tag = "17")]
    pub keep_until_ms: i64,
    #[prost(bool, tag = "18")]
    pub a_posteriori: bool,
    /// Set by the store only, on disk: when deliveries of one ticket carry the same filtered
    /// message (a broadcast to ten CPAS under one deliberation), the store keeps what follows
    /// the delivery id once, in its payloads table under this number (the first such
    /// delivery's); `request` then holds only the delivery id field. 0: `request` is whole, as
    /// in every row the store hands out.
    #[prost(uint64, tag = "19")]
    pub payload_seq: u64,
    /// The last delivery sharing `payload_seq`'s payload: the payload row goes once no
    /// delivery between the two is left.
    #[prost(uint64, tag = "20")]
    pub payload_last: u64,
    /// When an operator last replayed it as a dead letter (0: never): its attempts and its age
    /// limit (`delivery.max_age_s`) count from then.
    #[prost(int64, tag = "21")]
    pub replayed_at_ms: i64,
}

impl DeliveryRow {
    /// Where its age limit counts from: its acceptance, or its last replay.
    pub fn age_from_ms(&self) -> i64 {
        self.accepted_at_ms.max(self.replayed_at_ms)
    }
}

/// The length of an encoded `Delivery`'s first field, its delivery id (key, length, bytes), or
/// `None` when the request does not start with one: what differs between deliveries of one
/// ticket that carry the same filtered message.
pub(crate) fn delivery_id_field_len(request: &[u8]) -> Option<usize> {
    const DELIVERY_ID_KEY: u8 = 1 << 3 | 2;
    if request.first() != Some(&DELIVERY_ID_KEY) {
        return None;
    }
    let mut rest = &request[1..];
    let len = prost::encoding::decode_varint(&mut rest).ok()?;
    let field = request.len() - rest.len() + usize::try_from(len).ok()?;
    (field <= request.len()).then_some(field)
}
