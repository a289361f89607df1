-- Each host's runs per minute, queue and kind, written by the host as
-- the minute fills and kept for two hours: the dashboard's charts.
CREATE TABLE run_minutes (
    minute       INTEGER NOT NULL,
    host         TEXT    NOT NULL,
    queue        TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    runs         INTEGER NOT NULL,
    failures     INTEGER NOT NULL,
    delay_ms_sum INTEGER NOT NULL,
    delay_ms_max INTEGER NOT NULL,
    PRIMARY KEY (minute, host, queue, kind)
) WITHOUT ROWID;
