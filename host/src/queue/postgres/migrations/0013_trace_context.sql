-- The W3C traceparent a job's attempts' spans are children of.
ALTER TABLE jobs ADD COLUMN traceparent text;
