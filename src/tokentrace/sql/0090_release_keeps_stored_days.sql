-- tokentrace schema: release_pruned() never deletes the hourly and daily rollups of a
-- day whose raw spans are still stored.
--
-- Why: the release deleted hourly and daily rows before `now() − rollup retention`,
-- computed when it ran. With the rollup retention equal to the raw one (allowed), a
-- release that ran later than the prune it followed — across a UTC midnight, or by
-- hand days after (or before any prune at all) — deleted the rows of days at or
-- after the raw horizon, whose raw spans are still in tokentrace.spans: the reports,
-- which read whole hours and days from those rows, then under-counted them. The
-- rows a deferred prune counted as past the rollup retention always lie before the
-- horizon that prune set, so bounding the delete by the horizon too changes nothing
-- else.

CREATE OR REPLACE FUNCTION tokentrace_expired.release_pruned()
RETURNS TABLE (table_name text, day date, total_bytes bigint)
LANGUAGE plpgsql AS $$
DECLARE
    t record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tokentrace.prune'));
    FOR t IN
        SELECT c.oid, c.relname::text AS relname FROM pg_class c
        WHERE c.relnamespace = 'tokentrace_expired'::regnamespace AND c.relkind = 'r'
        ORDER BY c.relname
    LOOP
        table_name := t.relname;
        day := to_date(substr(t.relname, 7, 8), 'YYYYMMDD');
        total_bytes := pg_total_relation_size(t.oid);
        EXECUTE format('DROP TABLE IF EXISTS tokentrace_expired.%I', t.relname);
        RETURN NEXT;
    END LOOP;
    -- The rollup rows a deferred prune reported but left: 5-minute rows before the raw
    -- horizon, which no report reads any more, and hourly and daily rows past the
    -- rollup retention — but never those of a day at or after the raw horizon.
    DELETE FROM tokentrace.span_rollups r
    WHERE r.grain = '00:05:00' AND r.bucket < tokentrace.raw_horizon();
    DELETE FROM tokentrace.span_rollups r
    WHERE r.grain IN ('01:00:00', '24:00:00')
      AND r.bucket < least(
              tokentrace.bucket_floor(
                  now() - make_interval(days => tokentrace.rollup_retention_days()), '24:00:00'),
              tokentrace.raw_horizon());
END
$$;

COMMENT ON FUNCTION tokentrace_expired.release_pruned() IS
    'Drops the day partitions a deferred prune detached (schema tokentrace_expired), freeing their files, and the rollup rows it left; one row per table (tokentrace).';

REVOKE EXECUTE ON FUNCTION tokentrace_expired.release_pruned() FROM PUBLIC;
