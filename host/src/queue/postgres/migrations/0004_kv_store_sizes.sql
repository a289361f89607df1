-- What each store holds (keys' and values' bytes), kept with every
-- write, so a quota check reads one row instead of summing the store.
CREATE TABLE kv_usage (
    namespace text   NOT NULL,
    store     text   NOT NULL,
    bytes     bigint NOT NULL,
    PRIMARY KEY (namespace, store)
);
INSERT INTO kv_usage (namespace, store, bytes)
    SELECT namespace, store, sum(octet_length(key) + octet_length(value)) FROM kv GROUP BY namespace, store;
