//! Where the embedded backend keeps its file inside a data directory, so
//! `berth server`, `berth dev` and `berth store` open the same one.

use std::path::{Path, PathBuf};

/// The embedded store's file name inside a data directory.
pub const DATA_FILE: &str = "berth.db";

/// The name `berth server` gave the file before it shared [`DATA_FILE`]
/// with the other commands; a directory holding only this one is still
/// opened under it, so existing state is found.
pub const OLD_DATA_FILE: &str = "berth.redb";

/// The embedded store's file inside `dir`: [`DATA_FILE`], unless only a
/// non-empty [`OLD_DATA_FILE`] is there.
pub fn data_file(dir: &Path) -> PathBuf {
    let new = dir.join(DATA_FILE);
    let old = dir.join(OLD_DATA_FILE);
    let has = |p: &Path| p.metadata().is_ok_and(|m| m.len() > 0);
    if !has(&new) && has(&old) { old } else { new }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_name_is_used_only_when_it_is_the_only_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(data_file(dir.path()), dir.path().join("berth.db"), "a fresh directory");
        std::fs::write(dir.path().join("berth.redb"), b"x").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            data_file(dir.path()),
            dir.path().join("berth.redb"),
            "earlier state is found"
        );
        std::fs::write(dir.path().join("berth.db"), b"x").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(data_file(dir.path()), dir.path().join("berth.db"), "the new name wins");
    }
}
