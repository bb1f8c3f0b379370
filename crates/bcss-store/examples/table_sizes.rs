//! What a store holds, table by table: rows, stored bytes per row, pages. For studies of what
//! the hub writes per message (docs/BENCHMARKS-HISTORY.md, "Fan-out: one payload row…").
//!
//! ```sh
//! cargo run --release -p bcss-store --example table_sizes -- COPY/OF/hub.redb
//! ```
//!
//! The hub holds its store's file locked: copy `hub.redb` first (a copy taken during a run is
//! read back as of its last commit).

use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableHandle};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: table_sizes PATH/TO/hub.redb")?;
    let db = Database::open(&path)?;
    let txn = db.begin_read()?;
    println!(
        "{:<22} {:>10} {:>14} {:>12} {:>11}",
        "table", "rows", "stored bytes", "bytes/row", "leaf pages"
    );
    for handle in txn.list_tables()? {
        let name = handle.name().to_owned();
        let table = txn.open_untyped_table(handle)?;
        let rows = table.len()?;
        let stats = table.stats()?;
        println!(
            "{:<22} {:>10} {:>14} {:>12.1} {:>11}",
            name,
            rows,
            stats.stored_bytes(),
            stats.stored_bytes() as f64 / rows.max(1) as f64,
            stats.leaf_pages()
        );
    }
    Ok(())
}
