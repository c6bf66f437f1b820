-- tokentrace schema: read-only access for analysts (`tokentrace migrate --reader-role NAME`).
--
-- A reader role may SELECT the views and call the report functions, and nothing
-- else: it cannot read tokentrace.spans (prompts, completions, any attribute a
-- span carried) or the rollup and settings tables directly, and cannot write.
--
-- How: views already read their tables with their owner's rights, but functions run
-- with their caller's, and the views call functions. So the functions that read
-- tables on a report's behalf become SECURITY DEFINER — they run with the rights of
-- their owner (the role that ran the migrations) — with a fixed search_path, so no
-- object a caller creates (in pg_temp, say) can stand in for one they use. They only
-- read, and take their arguments as values, never as SQL.
--
-- The functions that change things (ensure_partitions, prune, rebuild_rollups,
-- grant_reader) stay SECURITY INVOKER, and EXECUTE on them is taken from PUBLIC:
-- only their owner (or a role granted EXECUTE explicitly) may call them.
--
-- A later migration that redefines one of these functions (CREATE OR REPLACE resets
-- SECURITY DEFINER) must call tokentrace.secure_report_functions() again, and one
-- that adds a report function must add it to the list below (tests check both).

CREATE FUNCTION tokentrace.report_function_names() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY[
        'retention_days', 'rollup_retention_days', 'raw_horizon',
        'span_summary', 'window_plan', 'window_parts',
        'efficiency', 'efficiency_range', 'efficiency_change',
        'efficiency_series', 'efficiency_series_range',
        'span_time_bounds', 'relation_growth', 'footprint_summary'
    ]::text[]
$$;

COMMENT ON FUNCTION tokentrace.report_function_names() IS
    'The functions that read tables for the reports: SECURITY DEFINER, callable by reader roles (tokentrace).';

-- Makes every report function SECURITY DEFINER with a fixed search_path; returns how
-- many it altered. Safe to repeat.
CREATE FUNCTION tokentrace.secure_report_functions() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    fn      regprocedure;
    altered integer := 0;
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = 'tokentrace'::regnamespace
          AND p.proname = ANY (tokentrace.report_function_names())
        ORDER BY 1
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, tokentrace, pg_temp', fn);
        altered := altered + 1;
    END LOOP;
    RETURN altered;
END
$$;

SELECT tokentrace.secure_report_functions();

-- Creates the role `role_name` if it does not exist (NOLOGIN), or takes an existing
-- one; then leaves it exactly these rights on tokentrace: CONNECT on the database,
-- USAGE on the schema, SELECT on every view, EXECUTE on the report functions and
-- the pure helpers they use. Any other right it held on the schema's tables,
-- sequences and functions is revoked, and its transactions default to read-only.
-- `password_verifier`, when given, is a SCRAM/MD5 verifier (hashed by the client, so
-- the clear text never reaches the server or its logs): the role may then log in.
-- Refuses roles that could do more than read (superuser, CREATEROLE, the schema
-- owner or a member of it, …).
CREATE FUNCTION tokentrace.grant_reader(role_name text, password_verifier text DEFAULT NULL)
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
        SELECT p.oid::regprocedure::text FROM pg_proc p
        WHERE p.pronamespace = 'tokentrace'::regnamespace
          AND (p.proname = ANY (tokentrace.report_function_names())
               OR p.proname IN ('bucket_floor', 'bucket_ceil', 'mpt_bin', 'mpt_value',
                                'mpt_merge', 'mpt_quantile', 'report_function_names'))
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

COMMENT ON FUNCTION tokentrace.grant_reader(text, text) IS
    'Creates or updates a read-only reader role: SELECT on the views, EXECUTE on the report functions, nothing else (tokentrace).';

REVOKE EXECUTE ON FUNCTION tokentrace.ensure_partitions(date[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION tokentrace.rebuild_rollups(timestamptz, timestamptz) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION tokentrace.grant_reader(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION tokentrace.secure_report_functions() FROM PUBLIC;
DO $$
DECLARE
    fn regprocedure;
BEGIN
    -- prune() by name: whichever signature the earlier migrations left.
    FOR fn IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = 'tokentrace'::regnamespace AND p.proname = 'prune'
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
    END LOOP;
END
$$;
