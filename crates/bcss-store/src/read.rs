//! What the store reads: recovery at start, tickets, deliveries, journal queries, the
//! chain's verification. Short reads run on the writer thread between groups; those that may
//! walk the whole journal (queries, verification) on the reader thread.

use std::path::Path;

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::journal::{self, EntryKind, JournalEntry, Verified};
use crate::rows::{DeliveryRow, DeliveryState, TicketRow};
use crate::tables::{
    CHECKPOINTS, CONTACT_FILES, COUNTERS, DEAD, DELIVERIES, JOURNAL, JOURNAL_BY_PARTY,
    JOURNAL_BY_PERSON, JOURNAL_BY_TICKET, JOURNAL_EXPIRY, OrUnavailable, PAYLOADS, RELAYS, TICKETS,
    decode, unavailable,
};
use crate::writer::ticket_entries;
use crate::{DamagedRow, JournalQuery, Recovered, Size, StoreError, StoredTicket};

pub(crate) fn recover(db: &Database, hold_since_ms: i64) -> Result<Recovered, StoreError> {
    let txn = db.begin_read().or_unavailable()?;
    let deliveries = txn.open_table(DELIVERIES).or_unavailable()?;
    let payloads = txn.open_table(PAYLOADS).or_unavailable()?;
    let mut pending = Vec::new();
    // A row that does not decode is skipped and named in `damaged`, not a reason to stop: one
    // bad row would otherwise hold back every other delivery. It stays on disk as it is.
    let mut damaged = Vec::new();
    // Tickets whose deliveries are not all made: pending ones and dead letters.
    let mut unsettled = std::collections::BTreeSet::new();
    for entry in deliveries.iter().or_unavailable()? {
        let (key, value) = entry.or_unavailable()?;
        let seq = key.value();
        let Some(row) = readable(decode::<DeliveryRow>(value.value()))? else {
            damaged.push(DamagedRow::Delivery(seq));
            continue;
        };
        unsettled.insert(row.ticket.clone());
        // Dead letters wait for an operator (files written before delivered rows were
        // removed also hold delivered ones).
        if row.state() == DeliveryState::Pending {
            match readable(whole(row, &payloads))? {
                Some(row) => pending.push(row),
                None => damaged.push(DamagedRow::Delivery(seq)),
            }
        }
    }
    let dead_table = txn.open_table(DEAD).or_unavailable()?;
    let mut dead = Vec::new();
    for entry in dead_table.iter().or_unavailable()? {
        dead.push(entry.or_unavailable()?.0.value());
    }
    let tickets_table = txn.open_table(TICKETS).or_unavailable()?;
    let mut tickets = Vec::new();
    // The recent ones, newest first (UUIDv7 keys sort in the order they were made): the scan
    // stops at the first one accepted before `hold_since_ms`.
    for entry in tickets_table.iter().or_unavailable()?.rev() {
        let (key, value) = entry.or_unavailable()?;
        let Some(row) = readable(decode::<TicketRow>(value.value()))? else {
            unsettled.remove(key.value());
            damaged.push(DamagedRow::Ticket(key.value().to_owned()));
            continue;
        };
        if row.accepted_at_ms < hold_since_ms {
            break;
        }
        unsettled.remove(key.value());
        tickets.push(row);
    }
    for ticket in unsettled {
        if let Some(value) = tickets_table.get(ticket.as_str()).or_unavailable()? {
            match readable(decode::<TicketRow>(value.value()))? {
                Some(row) => tickets.push(row),
                None => damaged.push(DamagedRow::Ticket(ticket)),
            }
        }
    }
    tickets.sort_by_key(|t| t.accepted_at_ms);
    Ok(Recovered {
        tickets,
        pending,
        dead,
        damaged,
    })
}

/// `None` for a row that does not decode (`StoreError::Damaged`); any other error stays one.
fn readable<T>(read: Result<T, StoreError>) -> Result<Option<T>, StoreError> {
    match read {
        Ok(value) => Ok(Some(value)),
        Err(StoreError::Damaged(_)) => Ok(None),
        Err(error) => Err(error),
    }
}

/// `ticket` read from `tickets`, with its deliveries' rows and its relays.
pub(crate) fn stored_ticket(
    tickets: &impl ReadableTable<&'static str, &'static [u8]>,
    deliveries: &impl ReadableTable<u64, &'static [u8]>,
    payloads: &impl ReadableTable<u64, &'static [u8]>,
    relays: &impl ReadableTable<(&'static str, &'static str), ()>,
    ticket: &str,
) -> Result<Option<StoredTicket>, StoreError> {
    let Some(value) = tickets.get(ticket).or_unavailable()? else {
        return Ok(None);
    };
    let row: TicketRow = decode(value.value())?;
    let mut left = Vec::new();
    for outcome in row.outcomes.iter().filter(|o| o.delivery_seq > 0) {
        if let Some(delivery) = deliveries.get(outcome.delivery_seq).or_unavailable()? {
            let delivery: DeliveryRow = decode(delivery.value())?;
            // A number is never given twice, but check the row is this ticket's.
            if delivery.ticket == row.ticket {
                left.push(whole(delivery, payloads)?);
            }
        }
    }
    let mut relayed_by = Vec::new();
    for entry in relays.range((ticket, "")..).or_unavailable()? {
        let (key, _) = entry.or_unavailable()?;
        let (parent, relay) = key.value();
        if parent != ticket {
            break;
        }
        relayed_by.push(relay.to_owned());
    }
    Ok(Some(StoredTicket {
        row,
        deliveries: left,
        relays: relayed_by,
    }))
}

pub(crate) fn ticket(db: &Database, ticket: &str) -> Result<Option<StoredTicket>, StoreError> {
    let txn = db.begin_read().or_unavailable()?;
    let tickets = txn.open_table(TICKETS).or_unavailable()?;
    let deliveries = txn.open_table(DELIVERIES).or_unavailable()?;
    let payloads = txn.open_table(PAYLOADS).or_unavailable()?;
    let relays = txn.open_table(RELAYS).or_unavailable()?;
    stored_ticket(&tickets, &deliveries, &payloads, &relays, ticket)
}

pub(crate) fn size(db: &Database, path: &Path) -> Result<Size, StoreError> {
    let txn = db.begin_read().or_unavailable()?;
    let journal_entries = txn
        .open_table(JOURNAL)
        .or_unavailable()?
        .len()
        .or_unavailable()?;
    let file_bytes = std::fs::metadata(path)
        .map_err(|e| unavailable(path, e))?
        .len();
    Ok(Size {
        journal_entries,
        file_bytes,
    })
}

/// How many write groups the file holds (the `commits` counter each group's commit raises):
/// after a commit that reported an error, it tells whether the group reached the file.
pub(crate) fn commits(db: &Database) -> Result<u64, StoreError> {
    let txn = db.begin_read().or_unavailable()?;
    let counters = txn.open_table(COUNTERS).or_unavailable()?;
    let recorded = counters.get("commits").or_unavailable()?;
    Ok(recorded.map_or(0, |n| n.value()))
}

/// The next delivery's sequence number: the one recorded, or past the last row (files written
/// before the counter was kept).
pub(crate) fn next_seq(db: &Database) -> Result<u64, StoreError> {
    let txn = db.begin_read().or_unavailable()?;
    let deliveries = txn.open_table(DELIVERIES).or_unavailable()?;
    let last = deliveries.last().or_unavailable()?;
    let past_rows = last.map_or(0, |(seq, _)| seq.value()) + 1;
    let counters = txn.open_table(COUNTERS).or_unavailable()?;
    let recorded = counters.get("next_seq").or_unavailable()?;
    Ok(recorded.map_or(past_rows, |n| n.value().max(past_rows)))
}

/// `row` with its request whole again, from the payload it shares if it does.
pub(crate) fn whole(
    mut row: DeliveryRow,
    payloads: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<DeliveryRow, StoreError> {
    if row.payload_seq == 0 {
        return Ok(row);
    }
    let shared = payloads
        .get(row.payload_seq)
        .or_unavailable()?
        .ok_or_else(|| StoreError::Damaged("a delivery without its payload".into()))?;
    let mut request = bytes::BytesMut::with_capacity(row.request.len() + shared.value().len());
    request.extend_from_slice(&row.request);
    request.extend_from_slice(shared.value());
    row.request = request.freeze();
    row.payload_seq = 0;
    row.payload_last = 0;
    Ok(row)
}

pub(crate) fn dead_letters(
    db: &Database,
    after: u64,
    limit: usize,
) -> Result<Vec<DeliveryRow>, StoreError> {
    let txn = db.begin_read().or_unavailable()?;
    let dead = txn.open_table(DEAD).or_unavailable()?;
    let deliveries = txn.open_table(DELIVERIES).or_unavailable()?;
    let payloads = txn.open_table(PAYLOADS).or_unavailable()?;
    let mut rows = Vec::new();
    for entry in dead.range(after.saturating_add(1)..).or_unavailable()? {
        if rows.len() >= limit {
            break;
        }
        let (seq, _) = entry.or_unavailable()?;
        if let Some(row) = deliveries.get(seq.value()).or_unavailable()? {
            rows.push(whole(decode(row.value())?, &payloads)?);
        }
    }
    Ok(rows)
}

pub(crate) fn delivery(db: &Database, seq: u64) -> Result<Option<DeliveryRow>, StoreError> {
    let txn = db.begin_read().or_unavailable()?;
    let deliveries = txn.open_table(DELIVERIES).or_unavailable()?;
    let payloads = txn.open_table(PAYLOADS).or_unavailable()?;
    deliveries
        .get(seq)
        .or_unavailable()?
        .map(|row| whole(decode(row.value())?, &payloads))
        .transpose()
}

/// The entries `query` asks for, in journal order. Stops with `StoreError::Unavailable` as soon
/// as `called_off` says so (a failed write is waiting to reopen the file), and with
/// `StoreError::TooMany` once more entries than the query's limit are found, counting those
/// reached through their ticket.
pub(crate) fn journal_query(
    db: &Database,
    query: &JournalQuery,
    called_off: &dyn Fn() -> bool,
) -> Result<Vec<JournalEntry>, StoreError> {
    let stop = || -> Result<(), StoreError> {
        if called_off() {
            Err(StoreError::Unavailable(crate::writer::CALLED_OFF.into()))
        } else {
            Ok(())
        }
    };
    let txn = db.begin_read().or_unavailable()?;
    let journal = txn.open_table(JOURNAL).or_unavailable()?;
    let mut numbers: Vec<u64> = Vec::new();
    match query {
        JournalQuery::Person { niss } => {
            let table = txn.open_table(JOURNAL_BY_PERSON).or_unavailable()?;
            for item in table
                .range((*niss, 0)..=(*niss, u64::MAX))
                .or_unavailable()?
            {
                numbers.push(item.or_unavailable()?.0.value().1);
            }
        }
        JournalQuery::Tickets { tickets } => {
            let table = txn.open_table(JOURNAL_BY_TICKET).or_unavailable()?;
            for ticket in tickets {
                numbers.extend(ticket_entries(&table, &journal, ticket)?);
            }
        }
        JournalQuery::Party {
            institution,
            from_ms,
            to_ms,
            limit,
        } => {
            let table = txn.open_table(JOURNAL_BY_PARTY).or_unavailable()?;
            for item in table
                .range(
                    (institution.as_str(), *from_ms, 0)..=(institution.as_str(), *to_ms, u64::MAX),
                )
                .or_unavailable()?
            {
                numbers.push(item.or_unavailable()?.0.value().2);
                if numbers.len() > *limit {
                    return Err(StoreError::TooMany(*limit));
                }
            }
        }
        JournalQuery::Range {
            from_ms,
            to_ms,
            limit,
        } => {
            for (walked, item) in journal.iter().or_unavailable()?.enumerate() {
                if walked % 4096 == 0 {
                    stop()?;
                }
                let (_, bytes) = item.or_unavailable()?;
                let entry: JournalEntry = decode(bytes.value())?;
                if !entry.removed && entry.at_ms >= *from_ms && entry.at_ms <= *to_ms {
                    numbers.push(entry.number);
                    if numbers.len() > *limit {
                        return Err(StoreError::TooMany(*limit));
                    }
                }
            }
        }
        JournalQuery::ContactFile { institution, id } => {
            let table = txn.open_table(CONTACT_FILES).or_unavailable()?;
            let key = crate::tables::contact_file_key(institution, id);
            if let Some(number) = table.get(key.as_str()).or_unavailable()? {
                numbers.push(number.value());
            }
        }
    }
    let mut entries = read_entries(&journal, &mut numbers)?;
    // Entries indexed only through their ticket (see `Rows`).
    if matches!(
        query,
        JournalQuery::Person { .. } | JournalQuery::Party { .. }
    ) {
        let by_ticket = txn.open_table(JOURNAL_BY_TICKET).or_unavailable()?;
        let limit = match query {
            JournalQuery::Party { limit, .. } => Some(*limit),
            _ => None,
        };
        let mut more = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for hit in entries
            .iter()
            .filter(|e| !e.ticket.is_empty() && !e.consultation)
        {
            if !seen.insert((hit.ticket.as_str(), hit.kind, hit.delivery_id.as_str())) {
                continue;
            }
            stop()?;
            for number in ticket_entries(&by_ticket, &journal, &hit.ticket)? {
                if numbers.binary_search(&number).is_ok() {
                    continue;
                }
                if let Some(bytes) = journal.get(number).or_unavailable()? {
                    let entry: JournalEntry = decode(bytes.value())?;
                    if reached_through(query, hit, &entry) {
                        if let Some(limit) = limit
                            && entries.len() + more.len() >= limit
                        {
                            return Err(StoreError::TooMany(limit));
                        }
                        more.push(entry);
                    }
                }
            }
        }
        if !more.is_empty() {
            entries.extend(more);
            entries.sort_unstable_by_key(|e| e.number);
            entries.dedup_by_key(|e| e.number);
        }
    }
    Ok(entries)
}

/// Whether `entry`, of the same ticket as `hit` (an entry the query's index found), answers
/// the query too: a person's are every entry of their tickets; a sender's, every entry of its
/// tickets; a recipient's, its admission's later entries.
pub(crate) fn reached_through(
    query: &JournalQuery,
    hit: &JournalEntry,
    entry: &JournalEntry,
) -> bool {
    match query {
        JournalQuery::Person { niss } => entry.niss == *niss,
        JournalQuery::Party { institution, .. } => {
            (hit.kind == EntryKind::Submission as i32 && entry.sender == *institution)
                || (hit.kind == EntryKind::Admission as i32
                    && entry.recipient == *institution
                    && entry.delivery_id == hit.delivery_id)
        }
        _ => false,
    }
}

/// The entries with these numbers (sorted and deduplicated first), in order; not those
/// retention removed (a candidate its submission names keeps its number there after its
/// stub is left).
pub(crate) fn read_entries(
    journal: &impl ReadableTable<u64, &'static [u8]>,
    numbers: &mut Vec<u64>,
) -> Result<Vec<JournalEntry>, StoreError> {
    numbers.sort_unstable();
    numbers.dedup();
    let mut entries = Vec::with_capacity(numbers.len());
    for &number in numbers.iter() {
        if let Some(bytes) = journal.get(number).or_unavailable()? {
            let entry: JournalEntry = decode(bytes.value())?;
            if !entry.removed {
                entries.push(entry);
            }
        }
    }
    Ok(entries)
}

/// Checks the journal: its entries are read one at a time, in order, as the check walks them
/// (the journal can hold millions), on one read transaction.
/// Verifies the journal's chain; stops with `StoreError::Unavailable` as soon as `called_off`
/// says so (checked once per entry).
pub(crate) fn verify_db(
    db: &Database,
    key: &[u8; 32],
    called_off: &dyn Fn() -> bool,
) -> Result<Verified, StoreError> {
    let txn = db.begin_read().or_unavailable()?;
    let table = txn.open_table(CHECKPOINTS).or_unavailable()?;
    let mut checkpoints = Vec::new();
    for item in table.iter().or_unavailable()? {
        let (_, bytes) = item.or_unavailable()?;
        checkpoints.push(decode(bytes.value())?);
    }
    let journal = txn.open_table(JOURNAL).or_unavailable()?;
    let mut failed = None;
    let entries = journal.iter().or_unavailable()?.map_while(|item| {
        if called_off() {
            failed = Some(StoreError::Unavailable(crate::writer::CALLED_OFF.into()));
            return None;
        }
        let (number, bytes) = item
            .map_err(|error| failed = Some(StoreError::Unavailable(error.to_string())))
            .ok()?;
        let entry = JournalEntry::decode(bytes.value()).unwrap_or_else(|_| JournalEntry {
            // An entry that no longer decodes was changed.
            number: number.value(),
            hash: vec![0xff],
            ..Default::default()
        });
        Some((number.value(), entry))
    });
    let verified = journal::verify(key, entries, &checkpoints, indexed_up_to(&txn)?);
    match failed {
        Some(error) => Err(error),
        None => Ok(verified),
    }
}

/// The highest entry number any index row names (0 if none), for [`journal::verify`]: entries
/// cut off the end leave their rows behind unless those were found and removed too. Every row
/// is read once, keeping only the highest number.
fn indexed_up_to(txn: &redb::ReadTransaction) -> Result<u64, StoreError> {
    fn highest<K: redb::Key + 'static, V: redb::Value + 'static>(
        txn: &redb::ReadTransaction,
        table: redb::TableDefinition<K, V>,
        number: impl Fn(&K::SelfType<'_>, &V::SelfType<'_>) -> u64,
    ) -> Result<u64, StoreError> {
        let table = match txn.open_table(table) {
            Ok(table) => table,
            // A file from before that index was kept.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(error) => return Err(StoreError::Unavailable(error.to_string())),
        };
        let mut up_to = 0;
        for item in table.iter().or_unavailable()? {
            let (key, value) = item.or_unavailable()?;
            up_to = up_to.max(number(&key.value(), &value.value()));
        }
        Ok(up_to)
    }
    Ok([
        highest(txn, JOURNAL_BY_PERSON, |key, _| key.1)?,
        highest(txn, JOURNAL_BY_TICKET, |key, _| key.1)?,
        highest(txn, JOURNAL_BY_PARTY, |key, _| key.2)?,
        highest(txn, JOURNAL_EXPIRY, |key, _| key.1)?,
        highest(txn, CONTACT_FILES, |_, number| *number)?,
    ]
    .into_iter()
    .max()
    .unwrap_or(0))
}

/// The journal key's file in the data folder `dir`.
pub(crate) fn journal_key_file(dir: &Path) -> std::path::PathBuf {
    dir.join("journal.key")
}

/// The key that seals checkpoints: `journal.key` in the data folder, created on first start
/// (by [`crate::create_secret_file`]) when `create` is set.
pub(crate) fn journal_key(dir: &Path, create: bool) -> Result<[u8; 32], StoreError> {
    let file = journal_key_file(dir);
    match std::fs::read(&file) {
        Ok(bytes) if bytes.len() == 32 => Ok(bytes.try_into().expect("32 bytes")),
        Ok(_) => Err(StoreError::Damaged(format!(
            "{} is not a 32-byte key",
            file.display()
        ))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && create => {
            let key: [u8; 32] = rand::random();
            crate::create_secret_file(&file, &key).map_err(|e| unavailable(&file, e))?;
            Ok(key)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(StoreError::Damaged(format!(
                "{} is missing: checkpoints cannot be checked without the key that sealed them",
                file.display()
            )))
        }
        Err(error) => Err(unavailable(&file, error)),
    }
}

pub(crate) fn journal_head(db: &Database) -> Result<(u64, [u8; 32]), StoreError> {
    let txn = db.begin_read().or_unavailable()?;
    let journal = txn.open_table(JOURNAL).or_unavailable()?;
    match journal.last().or_unavailable()? {
        None => Ok((0, [0; 32])),
        Some((number, bytes)) => {
            let entry: JournalEntry = decode(bytes.value())?;
            let hash: [u8; 32] = entry
                .hash
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::Damaged("a journal entry without its hash".into()))?;
            Ok((number.value(), hash))
        }
    }
}
