-- ensure_partitions, safe under concurrency. The 0001 version looked the partition up
-- again after taking the advisory lock, but within one statement the catalog lookup
-- can still miss a partition another session has just committed, so a second writer
-- failed with "relation already exists" on the first batch of a new day.
-- CREATE TABLE IF NOT EXISTS re-checks at creation, and a duplicate_table that
-- still slips through means the partition exists, which is all we want.
CREATE OR REPLACE FUNCTION tokentrace.ensure_partitions(days date[]) RETURNS integer
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
        BEGIN
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS tokentrace.%I PARTITION OF tokentrace.spans '
                'FOR VALUES FROM (%L) TO (%L)',
                rel,
                (d::timestamp AT TIME ZONE 'UTC'),
                ((d + 1)::timestamp AT TIME ZONE 'UTC'));
            created := created + 1;
        EXCEPTION WHEN duplicate_table THEN
            NULL;
        END;
    END LOOP;
    RETURN created;
END
$$;
