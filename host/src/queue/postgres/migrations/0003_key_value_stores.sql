-- What plugins keep (wasi:keyvalue), per plugin (`namespace`) and store.
CREATE TABLE kv (
    namespace  text   NOT NULL,
    store      text   NOT NULL,
    key        text   COLLATE "C" NOT NULL,
    value      bytea  NOT NULL,
    updated_at bigint NOT NULL,
    PRIMARY KEY (namespace, store, key)
);
