-- tokentrace schema: every function says what it is, in its comment; the rules read that.
--
-- Until now the report functions (SECURITY DEFINER, callable by reader roles) were a
-- list restated whole by every migration that added one (0030, 0060, 0080), and the
-- pure helpers a reader may call another list inside grant_reader(). Now each
-- function's comment ends with its role:
--
--   (tokentrace: report)  reads tables on a report's behalf: SECURITY DEFINER with a
--                         fixed search_path, EXECUTE for reader roles;
--   (tokentrace: pure)    computes from its arguments only: callable by anyone;
--   (tokentrace: write)   changes things: no EXECUTE for PUBLIC or readers.
--
-- and tokentrace.functions_of(role) answers from the catalogue. A migration that adds
-- a function gives it a comment with its role; one that redefines a report function
-- calls tokentrace.secure_report_functions() again (CREATE OR REPLACE resets SECURITY
-- DEFINER, not comments). tests/integration/security/test_reader_role.py checks both.
--
-- And mpt_merge(), which 0060 left without a caller, goes.

DROP FUNCTION tokentrace.mpt_merge(smallint[], bigint[], smallint[], bigint[]);

-- --- the roles ------------------------------------------------------------------------------
CREATE FUNCTION tokentrace.functions_of(role text) RETURNS SETOF regprocedure
LANGUAGE sql STABLE AS $$
    SELECT p.oid::regprocedure
    FROM pg_proc p
    WHERE p.pronamespace IN ('tokentrace'::regnamespace, 'tokentrace_expired'::regnamespace)
      AND obj_description(p.oid, 'pg_proc') LIKE '%(tokentrace: ' || role || ')'
    ORDER BY 1
$$;

COMMENT ON FUNCTION tokentrace.functions_of(text) IS
    'The functions whose comment names this role: report, pure or write (tokentrace: pure)';
COMMENT ON FUNCTION tokentrace.bucket_floor(timestamptz, interval) IS
    'The start of the UTC bucket of this grain that holds ts (tokentrace: pure)';
COMMENT ON FUNCTION tokentrace.bucket_ceil(timestamptz, interval) IS
    'The first UTC bucket boundary of this grain at or after ts (tokentrace: pure)';
COMMENT ON FUNCTION tokentrace.counts_as_call(text) IS
    'Whether a span with a model and this operation (NULL or '''' for none) is a model call: anything but load_model (tokentrace: pure)';
COMMENT ON FUNCTION tokentrace.is_load(text) IS
    'Whether a span with a model and this operation is a model load (tokentrace: pure)';
COMMENT ON FUNCTION tokentrace.mpt_bin(double precision) IS
    'The ms/token histogram bin of a value: 32 bins per doubling (tokentrace: pure)';
COMMENT ON FUNCTION tokentrace.mpt_value(smallint) IS
    'The value a histogram bin stands for (tokentrace: pure)';
COMMENT ON FUNCTION tokentrace.mpt_unit(smallint) IS
    'One count of a bin in a packed histogram: 10^(12·bin) (tokentrace: pure)';
COMMENT ON FUNCTION tokentrace.mpt_pack(smallint[], bigint[]) IS
    'A histogram (bins, counts) packed into one numeric (tokentrace: pure)';
COMMENT ON FUNCTION tokentrace.mpt_digits(numeric) IS
    'The (bin, count) pairs of a packed histogram (tokentrace: pure)';
COMMENT ON FUNCTION tokentrace.mpt_unpack(numeric) IS
    'A packed histogram as (bins, counts) arrays (tokentrace: pure)';
COMMENT ON FUNCTION tokentrace.mpt_quantile(smallint[], bigint[], double precision) IS
    'The q-quantile of a histogram, interpolated between bin values (tokentrace: pure)';
COMMENT ON FUNCTION tokentrace.report_function_names() IS
    'The names of the report functions (tokentrace: pure)';

COMMENT ON FUNCTION tokentrace.efficiency(interval, text) IS
    'Per model over a window: calls, tokens, token-weighted ms/token, p50/p95 (histogram, within 2.19 %), decode ms/token, loads, errors (tokentrace: report)';
COMMENT ON FUNCTION tokentrace.efficiency_range(timestamptz, timestamptz, text) IS
    'efficiency() over [range_start, range_end): from rollups, raw spans only at the partial edges (tokentrace: report)';
COMMENT ON FUNCTION tokentrace.efficiency_change(interval, interval) IS
    'Per model: recent token-weighted ms/token against the baseline before it, and their ratio (tokentrace: report)';
COMMENT ON FUNCTION tokentrace.efficiency_series(interval, interval, text) IS
    'Per model and time bucket over a window: calls, tokens, token-weighted ms/token, p50/p95, prefill/decode ms/token, loads, load and inference time, errors (tokentrace: report)';
COMMENT ON FUNCTION tokentrace.efficiency_series_range(timestamptz, timestamptz, interval, text) IS
    'efficiency_series() over [range_start, range_end), buckets laid from range_start; from rollups when the buckets line up with them (tokentrace: report)';
COMMENT ON FUNCTION tokentrace.efficiency_series_raw(timestamptz, timestamptz, interval, text) IS
    'efficiency_series_range() from raw spans (exact percentiles), whatever the buckets (tokentrace: report)';
COMMENT ON FUNCTION tokentrace.footprint_summary(bigint) IS
    'The store''s total size, growth, projected size and days until a disk cap (tokentrace: report)';
COMMENT ON FUNCTION tokentrace.relation_growth(timestamptz) IS
    'Per relation: bytes per day over the last 7 days and the size it settles at (tokentrace: report)';
COMMENT ON FUNCTION tokentrace.span_time_bounds() IS
    'The oldest and newest span start stored (tokentrace: report)';
COMMENT ON FUNCTION tokentrace.span_summary(timestamptz, timestamptz, interval, text) IS
    'span_summary(…, histograms => true) (tokentrace: report)';
COMMENT ON FUNCTION tokentrace.span_summary(timestamptz, timestamptz, interval, text, boolean) IS
    'Raw spans of [range_start, range_end) summed like the rollups, per bucket of grain; histograms optional (tokentrace: report)';
COMMENT ON FUNCTION tokentrace.span_values(timestamptz, timestamptz, text) IS
    'Per counted span with a model in [range_start, range_end): the columns the reports sum (tokentrace: report)';
COMMENT ON FUNCTION tokentrace.window_plan(timestamptz, timestamptz) IS
    'A window as rollup buckets and raw edges, coarsest grain first (tokentrace: report)';
COMMENT ON FUNCTION tokentrace.window_plan(timestamptz, timestamptz, boolean) IS
    'A window as signed pieces: coarser buckets less what lies outside, raw edges at most 2.5 minutes (tokentrace: report)';
COMMENT ON FUNCTION tokentrace.window_parts(timestamptz, timestamptz, text, boolean) IS
    'The rollup rows and raw sums that make up a window, per model and operation (tokentrace: report)';
COMMENT ON FUNCTION tokentrace.retention_days() IS
    'Days of raw spans kept (setting retention_days) (tokentrace: report)';
COMMENT ON FUNCTION tokentrace.rollup_retention_days() IS
    'Days of hourly and daily rollups kept (setting rollup_retention_days) (tokentrace: report)';
COMMENT ON FUNCTION tokentrace.raw_horizon() IS
    'The start of the oldest UTC day whose raw spans are kept; -infinity before the first prune (tokentrace: report)';

COMMENT ON FUNCTION tokentrace.ensure_partitions(date[]) IS
    'Creates the day partitions of spans (and of call_links, for each day and the next) that do not exist; returns the span partitions created (tokentrace: write)';
COMMENT ON FUNCTION tokentrace.prune(interval, interval, boolean, boolean) IS
    'Removes raw day partitions past the retention (with their 5-minute rollups and link rows) and rollups past theirs; one row per UTC day. defer_release: detach now, free the files with release_pruned() (tokentrace: write)';
COMMENT ON FUNCTION tokentrace_expired.release_pruned() IS
    'Drops the day partitions a deferred prune detached (schema tokentrace_expired), freeing their files, and the rollup rows it left; one row per table (tokentrace: write)';
COMMENT ON FUNCTION tokentrace.rebuild_rollups(timestamptz, timestamptz) IS
    'Recomputes the rollups of the whole UTC days overlapping [range_start, range_end) from raw spans (tokentrace: write)';
COMMENT ON FUNCTION tokentrace.fill_rollup_totals(timestamptz, timestamptz) IS
    'Fills the rollups'' prefill, inference and in-call load sums from raw spans (tokentrace: write)';
COMMENT ON FUNCTION tokentrace.rollup_new_spans() IS
    'The statement trigger that links and rolls up the spans a statement inserted (tokentrace: write)';
COMMENT ON FUNCTION tokentrace.grant_reader(text, text) IS
    'Creates or updates a read-only reader role: SELECT on the views, EXECUTE on the report and pure functions, nothing else (tokentrace: write)';
COMMENT ON FUNCTION tokentrace.secure_report_functions() IS
    'Makes every report function SECURITY DEFINER with a fixed search_path; returns how many (tokentrace: write)';

-- --- the rules, read from the roles --------------------------------------------------------
CREATE OR REPLACE FUNCTION tokentrace.report_function_names() RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(DISTINCT p.proname::text ORDER BY p.proname::text), '{}')
    FROM pg_proc p
    WHERE p.oid IN (SELECT tokentrace.functions_of('report'))
$$;

CREATE OR REPLACE FUNCTION tokentrace.secure_report_functions() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    fn      regprocedure;
    altered integer := 0;
BEGIN
    FOR fn IN SELECT tokentrace.functions_of('report') LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, tokentrace, pg_temp', fn);
        altered := altered + 1;
    END LOOP;
    RETURN altered;
END
$$;

-- As in 0030, with the functions a reader may call read from their roles.
CREATE OR REPLACE FUNCTION tokentrace.grant_reader(role_name text, password_verifier text DEFAULT NULL)
RETURNS TABLE (role text, views integer, functions integer, can_login boolean, created boolean)
LANGUAGE plpgsql AS $$
DECLARE
    r       record;
    obj     text;
    owner_  oid := (SELECT n.nspowner FROM pg_namespace n WHERE n.nspname = 'tokentrace');
BEGIN
    IF role_name IS NULL OR btrim(role_name) = '' THEN
        RAISE EXCEPTION 'a reader role needs a name';
    END IF;
    role := role_name;
    created := false;
    SELECT * INTO r FROM pg_roles WHERE rolname = role_name;
    IF NOT FOUND THEN
        EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
        created := true;
        SELECT * INTO r FROM pg_roles WHERE rolname = role_name;
    ELSIF r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication OR r.rolbypassrls THEN
        RAISE EXCEPTION 'role % can do more than read (superuser, CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS); choose another name', role_name;
    END IF;
    IF r.oid = owner_ OR pg_has_role(r.oid, owner_, 'USAGE') OR r.rolname = current_user THEN
        RAISE EXCEPTION 'role % owns the tokentrace schema or has its rights; choose another name', role_name;
    END IF;
    -- Start from nothing on the schema's objects, then grant what reading needs.
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA tokentrace FROM %I', role_name);
    EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA tokentrace FROM %I', role_name);
    EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA tokentrace FROM %I', role_name);
    EXECUTE format('REVOKE ALL ON SCHEMA tokentrace FROM %I', role_name);
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), role_name);
    EXECUTE format('GRANT USAGE ON SCHEMA tokentrace TO %I', role_name);
    views := 0;
    FOR obj IN
        SELECT c.oid::regclass::text FROM pg_class c
        WHERE c.relnamespace = 'tokentrace'::regnamespace AND c.relkind IN ('v', 'm')
        ORDER BY 1
    LOOP
        EXECUTE format('GRANT SELECT ON %s TO %I', obj, role_name);
        views := views + 1;
    END LOOP;
    PERFORM tokentrace.secure_report_functions();
    functions := 0;
    FOR obj IN
        SELECT f::text FROM tokentrace.functions_of('report') f
        UNION ALL
        SELECT f::text FROM tokentrace.functions_of('pure') f
        WHERE f::text NOT LIKE 'tokentrace_expired.%'
        ORDER BY 1
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', obj, role_name);
        functions := functions + 1;
    END LOOP;
    EXECUTE format('ALTER ROLE %I SET default_transaction_read_only = on', role_name);
    IF password_verifier IS NOT NULL THEN
        EXECUTE format('ALTER ROLE %I LOGIN PASSWORD %L', role_name, password_verifier);
    END IF;
    can_login := (SELECT rolcanlogin FROM pg_roles WHERE rolname = role_name);
    RETURN NEXT;
END
$$;

-- Functions that change things: only their owner (or a role granted EXECUTE) may call them.
-- (The trigger function is left as it was: nobody calls it, the trigger fires it.)
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN SELECT f FROM tokentrace.functions_of('write') f
              JOIN pg_proc p ON p.oid = f WHERE p.prorettype <> 'trigger'::regtype LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
    END LOOP;
END
$$;

SELECT tokentrace.secure_report_functions();
