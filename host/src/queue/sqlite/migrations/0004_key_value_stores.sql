-- What plugins keep (wasi:keyvalue), per plugin (`namespace`) and store.
CREATE TABLE kv (
    namespace  TEXT    NOT NULL,
    store      TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    value      BLOB    NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, store, key)
) WITHOUT ROWID;
