-- tokentrace schema, part 1: the spans table, partitioned by day.
-- Migrations are append-only: never edit a file once released; add a new one.

CREATE SCHEMA IF NOT EXISTS tokentrace;

CREATE TABLE tokentrace.settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO tokentrace.settings (key, value) VALUES ('retention_days', '60');

-- The retention window the reports state; `tokentrace migrate`/`prune` keep it in
-- step with TOKENTRACE_RETENTION_DAYS.
CREATE FUNCTION tokentrace.retention_days() RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT value::integer FROM tokentrace.settings WHERE key = 'retention_days'), 60)
$$;

CREATE TABLE tokentrace.spans (
    trace_id             bytea            NOT NULL,
    span_id              bytea            NOT NULL,
    parent_span_id       bytea,
    name                 text             NOT NULL,
    kind                 text             NOT NULL,
    service_name         text,
    operation            text,            -- gen_ai.operation.name; 'load_model' for loads
    provider             text,
    model                text,            -- response model, else request model
    start_time           timestamptz      NOT NULL,
    end_time             timestamptz      NOT NULL,
    duration_ms          double precision,
    input_tokens         bigint,
    output_tokens        bigint,
    inference_ms         double precision, -- wall time minus any model load inside the call
    ms_per_token         double precision, -- inference_ms / output_tokens
    prefill_ms_per_token double precision,
    decode_ms_per_token  double precision,
    ttft_ms              double precision,
    load_ms              double precision,
    token_source         text,            -- reported | estimated | missing
    status               text             NOT NULL DEFAULT 'UNSET',
    error_type           text,
    attributes           jsonb            NOT NULL DEFAULT '{}'::jsonb,
    resource             jsonb            NOT NULL DEFAULT '{}'::jsonb,
    -- A span's identity is (trace_id, span_id); start_time is part of the key because
    -- a partitioned table's keys must contain the partition column. Retried batches
    -- resend the same start_time, so the key still deduplicates them.
    PRIMARY KEY (start_time, trace_id, span_id)
) PARTITION BY RANGE (start_time);

CREATE INDEX spans_model_start_time ON tokentrace.spans (model, start_time);

COMMENT ON TABLE tokentrace.spans IS
    'One row per span (tokentrace). Partitioned by UTC day on start_time: spans_YYYYMMDD.';

-- Creates the day partitions that rows for `days` need. Any date works (years old,
-- far future): a span is never refused for want of a partition. Serialized with an
-- advisory lock so concurrent writers never race on CREATE TABLE.
CREATE FUNCTION tokentrace.ensure_partitions(days date[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    d       date;
    rel     text;
    created integer := 0;
BEGIN
    FOREACH d IN ARRAY days LOOP
        rel := 'spans_' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(format('tokentrace.%I', rel)) IS NOT NULL;
        PERFORM pg_advisory_xact_lock(hashtext('tokentrace.ensure_partitions'));
        CONTINUE WHEN to_regclass(format('tokentrace.%I', rel)) IS NOT NULL;
        EXECUTE format(
            'CREATE TABLE tokentrace.%I PARTITION OF tokentrace.spans FOR VALUES FROM (%L) TO (%L)',
            rel,
            (d::timestamp AT TIME ZONE 'UTC'),
            ((d + 1)::timestamp AT TIME ZONE 'UTC'));
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;

-- Day partitions with the UTC day each holds.
CREATE VIEW tokentrace.span_partitions AS
SELECT c.oid::regclass AS partition,
       c.relname::text AS partition_name,
       to_date(substr(c.relname, 7), 'YYYYMMDD') AS day
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'tokentrace.spans'::regclass
  AND c.relname ~ '^spans_[0-9]{8}$';

-- Drops every day partition that lies wholly before now() - retention, and says
-- what it removed. Whole partitions: no row-by-row DELETE, no bloat left behind.
-- Granularity is one UTC day: a span is removed once its whole day is past the window.
CREATE FUNCTION tokentrace.prune(retention interval DEFAULT '60 days')
RETURNS TABLE (partition_name text, day date, spans bigint)
LANGUAGE plpgsql AS $$
DECLARE
    p      record;
    cutoff timestamptz := now() - retention;
BEGIN
    IF retention < interval '1 day' THEN
        RAISE EXCEPTION 'retention must be at least 1 day, got %', retention;
    END IF;
    FOR p IN
        SELECT sp.partition, sp.partition_name, sp.day FROM tokentrace.span_partitions sp
        WHERE ((sp.day + 1)::timestamp AT TIME ZONE 'UTC') <= cutoff
        ORDER BY sp.day
    LOOP
        partition_name := p.partition_name;
        day := p.day;
        EXECUTE format('SELECT count(*) FROM %s', p.partition) INTO spans;
        EXECUTE format('DROP TABLE %s', p.partition);
        RETURN NEXT;
    END LOOP;
END
$$;
