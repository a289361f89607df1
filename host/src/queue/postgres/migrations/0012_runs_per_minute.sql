-- Each host's runs per minute, queue and kind, written by the host as
-- the minute fills and kept for two hours: the dashboard's charts.
CREATE TABLE run_minutes (
    minute       bigint NOT NULL,
    host         text   NOT NULL,
    queue        text   NOT NULL,
    kind         text   NOT NULL,
    runs         bigint NOT NULL,
    failures     bigint NOT NULL,
    delay_ms_sum bigint NOT NULL,
    delay_ms_max bigint NOT NULL,
    PRIMARY KEY (minute, host, queue, kind)
);
