//! House rules checked by a test: every Rust file opens with a `//!` line saying what it is,
//! and no file names a path of the machine it was written on.

use std::path::{Path, PathBuf};

fn files(dir: &Path, extensions: &[&str], found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            files(&path, extensions, found);
        } else if path
            .extension()
            .is_some_and(|e| extensions.iter().any(|x| e == *x))
        {
            found.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_module_doc_line() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for dir in ["src", "crates", "tests", "benches", "fuzz"] {
        files(&root.join(dir), &["rs"], &mut found);
    }
    assert!(found.len() > 20, "found only {} files", found.len());
    let missing: Vec<String> = found
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().starts_with("//!"))
        .map(|f| f.strip_prefix(root).unwrap().display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading `//!` line: {missing:?}"
    );
}

#[test]
fn no_file_names_a_machine_path() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for dir in [
        "src", "crates", "tests", "benches", "config", "proto", "docs", ".ci",
    ] {
        // Raw benchmark output (`txt`) included: a command's echo may carry a path.
        files(
            &root.join(dir),
            &["rs", "toml", "md", "proto", "csv", "sh", "txt"],
            &mut found,
        );
    }
    // The CI scripts have no extension.
    for entry in std::fs::read_dir(root.join(".ci")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path.extension().is_none() {
            found.push(path);
        }
    }
    for name in ["README.md", "ARCHITECTURE.md", "Cargo.toml"] {
        found.push(root.join(name));
    }
    let forbidden = [
        concat!("/wo", "rk/"),
        concat!("/ro", "ot/"),
        concat!("/t", "mp/"),
    ];
    for file in found {
        let text = std::fs::read_to_string(&file).unwrap();
        for needle in forbidden {
            assert!(
                !text.contains(needle),
                "{} contains `{needle}`",
                file.display()
            );
        }
    }
}
