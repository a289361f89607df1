//! A schema migration: one numbered SQL file of a backend's `migrations/`
//! folder (`NNNN_what_it_does.sql`), listed once, in order, in that
//! backend's `schema.rs`, applied once and recorded with its version and
//! name. The list's checks, shared by both backends, keep a file from
//! being forgotten or two from sharing a number.

/// One migration of a backend's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The newest version `list` knows (0 for none).
pub(crate) fn latest(list: &[Migration]) -> i64 {
    list.last().map_or(0, |m| m.version)
}

/// The migrations of `list` a database at `current` has yet to apply.
pub(crate) fn pending(list: &[Migration], current: i64) -> impl Iterator<Item = &Migration> {
    list.iter().filter(move |m| m.version > current)
}

/// Checks that `list` numbers its migrations 1, 2, 3, … and lists every
/// `.sql` file of `dir` exactly once, each under its own number.
#[cfg(test)]
pub(crate) fn check_list(list: &[Migration], dir: &std::path::Path) {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".sql"))
        .collect();
    files.sort();
    assert_eq!(files.len(), list.len(), "{} holds {files:?}; the list names {} migrations", dir.display(), list.len());
    for ((n, migration), file) in list.iter().enumerate().zip(&files) {
        assert_eq!(migration.version, n as i64 + 1, "migration {} is out of order", migration.name);
        assert!(file.starts_with(&format!("{:04}_", migration.version)), "{file} is not migration {}", migration.version);
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        assert_eq!(text, migration.sql, "{file} is not what the list includes for version {}", migration.version);
    }
}
