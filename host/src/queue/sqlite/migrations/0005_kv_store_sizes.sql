-- What each store holds (keys' and values' bytes), kept with every
-- write, so a quota check reads one row instead of summing the store.
CREATE TABLE kv_usage (
    namespace TEXT    NOT NULL,
    store     TEXT    NOT NULL,
    bytes     INTEGER NOT NULL,
    PRIMARY KEY (namespace, store)
) WITHOUT ROWID;
INSERT INTO kv_usage (namespace, store, bytes)
    SELECT namespace, store, sum(length(key) + length(value)) FROM kv GROUP BY namespace, store;
