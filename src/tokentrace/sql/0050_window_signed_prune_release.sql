-- tokentrace schema: efficiency windows read as signed pieces, and a prune whose
-- spans are gone before its files are freed.
--
-- 1. efficiency_range() (so efficiency() and efficiency_24h) reads a window as
--    coarser buckets minus what lies outside the window where that is fewer rows
--    (window_plan(start, end, signed => true)): about half the rollup rows, histograms
--    and raw edge spans of 0040's plan. Sums and counts are still exact (integers
--    subtract exactly); the histograms subtract exactly too, so p50/p95 keep their
--    2.19 % bound.
-- 2. prune(…, defer_release => true) detaches expired day partitions and moves them
--    to the schema tokentrace_expired instead of dropping them; the files are freed
--    by tokentrace_expired.release_pruned() in a transaction of its own, which holds
--    no lock on tokentrace.spans. `tokentrace prune` and serve's scheduler run both;
--    prune() without it (what a SQL caller gets by default) drops in one transaction
--    as before, and releases whatever a deferred prune left behind.

-- --- raw edges from the one day partition they lie in ------------------------------------
-- As in 0040, except that a range within one UTC day is read from that day's partition
-- by name (tokentrace.spans_YYYYMMDD holds exactly the spans of that UTC day): at
-- 10 M spans the EXECUTE planned the partitioned table, ~60 partitions opened, in
-- about 0.9 ms per edge; one plain table plans in a tenth of that.
CREATE OR REPLACE FUNCTION tokentrace.span_summary(
    range_start  timestamptz,
    range_end    timestamptz,
    grain        interval,
    model_filter text,
    histograms   boolean)
RETURNS TABLE (
    bucket timestamptz, model text, operation text, spans bigint, errors bigint,
    input_tokens bigint, output_tokens bigint, timed_calls bigint,
    timed_inference_ms double precision, timed_output_tokens bigint,
    decode_ms_tokens double precision, decode_output_tokens bigint, load_ms_n bigint,
    load_ms_sum double precision, first_start timestamptz, last_start timestamptz,
    mpt_bins smallint[], mpt_counts bigint[])
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    -- Bounds, grain and model arrive as parameters of EXECUTE … USING, which plans
    -- with their values: partitions outside [range_start, range_end) are not planned.
    spans_q text := $q$
        SELECT CASE WHEN $3::interval IS NULL THEN $1::timestamptz
                    ELSE tokentrace.bucket_floor(sp.start_time, $3::interval) END AS bucket,
               sp.model, coalesce(sp.operation, '') AS operation, sp.start_time, sp.status,
               sp.input_tokens, sp.output_tokens, sp.inference_ms, sp.ms_per_token,
               sp.decode_ms_per_token, sp.load_ms, sp.duration_ms
        FROM %s sp
        WHERE sp.start_time >= $1::timestamptz AND sp.start_time < $2::timestamptz
          AND sp.model IS NOT NULL
          AND ($4::text IS NULL OR sp.model = $4::text)
    $q$;
    sums_q constant text := $q$
        SELECT s.bucket, s.model, s.operation,
               count(*) AS spans,
               count(*) FILTER (WHERE s.status = 'ERROR') AS errors,
               coalesce(sum(s.input_tokens), 0)::bigint AS input_tokens,
               coalesce(sum(s.output_tokens), 0)::bigint AS output_tokens,
               count(*) FILTER (WHERE s.ms_per_token IS NOT NULL) AS timed_calls,
               sum(s.inference_ms) FILTER (WHERE s.ms_per_token IS NOT NULL) AS timed_inference_ms,
               coalesce(sum(s.output_tokens) FILTER (WHERE s.ms_per_token IS NOT NULL), 0)::bigint
                   AS timed_output_tokens,
               sum(s.decode_ms_per_token * s.output_tokens)
                   FILTER (WHERE s.decode_ms_per_token IS NOT NULL) AS decode_ms_tokens,
               coalesce(sum(s.output_tokens) FILTER (WHERE s.decode_ms_per_token IS NOT NULL), 0)::bigint
                   AS decode_output_tokens,
               count(coalesce(s.load_ms, s.duration_ms))
                   FILTER (WHERE s.operation = 'load_model') AS load_ms_n,
               sum(coalesce(s.load_ms, s.duration_ms))
                   FILTER (WHERE s.operation = 'load_model') AS load_ms_sum,
               min(s.start_time) AS first_start,
               max(s.start_time) AS last_start
        FROM s
        GROUP BY 1, 2, 3
    $q$;
    source regclass := 'tokentrace.spans'::regclass;
    day    date;
BEGIN
    -- A range within one UTC day (every raw edge of a window: at most 5 minutes) is
    -- read from that day's partition: planning it is a fraction of planning the
    -- partitioned table, which opens every day partition. No partition: no spans.
    IF isfinite(range_start) AND isfinite(range_end) AND range_start < range_end
       AND tokentrace.bucket_floor(range_start, '24:00:00')
           = tokentrace.bucket_floor(range_end - interval '1 microsecond', '24:00:00') THEN
        -- The lock a query of tokentrace.spans would take: a report still waits for a
        -- prune detaching or dropping partitions, as it did reading the parent.
        -- (ONLY: no partition is planned or read; the statement just takes the lock.)
        PERFORM FROM ONLY tokentrace.spans LIMIT 0;
        day := (range_start AT TIME ZONE 'UTC')::date;
        source := to_regclass(format('tokentrace.%I', 'spans_' || to_char(day, 'YYYYMMDD')));
        IF source IS NULL THEN
            RETURN;
        END IF;
    END IF;
    spans_q := format(spans_q, source);
    IF NOT histograms THEN
        RETURN QUERY EXECUTE
            'WITH s AS (' || spans_q || '), t AS (' || sums_q || ')
             SELECT t.*, NULL::smallint[], NULL::bigint[] FROM t'
            USING range_start, range_end, grain, model_filter;
        RETURN;
    END IF;
    RETURN QUERY EXECUTE
        'WITH s AS (' || spans_q || '), t AS (' || sums_q || $q$),
         h AS (
             SELECT b.bucket, b.model, b.operation,
                    array_agg(b.bin ORDER BY b.bin) AS bins, array_agg(b.n ORDER BY b.bin) AS counts
             FROM (SELECT s.bucket, s.model, s.operation, tokentrace.mpt_bin(s.ms_per_token) AS bin,
                          count(*) AS n
                   FROM s WHERE s.ms_per_token IS NOT NULL
                   GROUP BY 1, 2, 3, 4) b
             GROUP BY 1, 2, 3
         )
         SELECT t.*, coalesce(h.bins, '{}'), coalesce(h.counts, '{}')
         FROM t LEFT JOIN h ON h.bucket = t.bucket AND h.model = t.model AND h.operation = t.operation
        $q$
        USING range_start, range_end, grain, model_filter;
END
$fn$;


-- --- a window as signed pieces -----------------------------------------------------------
-- Counts, token sums and histograms are additive, so a window may also be read as a
-- coarser bucket minus the part of it outside the window: [07:40, 24:00) of a day is
-- that day's row minus hours [00:00, 08:00) plus 5-minute buckets [07:40, 08:00),
-- 1 + 8 + 4 rollup rows per model and operation instead of 16 hours + 4 five-minute
-- buckets. At every grain an edge is taken to the NEAREST boundary (at most 12 hours,
-- 6 five-minute buckets and 2.5 minutes of raw spans per edge, against up to 23, 11 and
-- 5 minutes when only adding), so a window reads about half the rollup rows and half
-- the raw spans. Pieces carry a weight (+1, −1; ±2 where pieces of both edges
-- overlap): a report sums weight × value.
--
-- window_plan(start, end, signed => true) covers exactly the spans window_plan() covers (the
-- same raw horizon rule: before it, an edge resolves to the whole hour inside the
-- window), and falls back to window_plan()'s pieces (weight 1) when they are fewer,
-- e.g. for windows of a few minutes straddling noon.
CREATE FUNCTION tokentrace.window_plan(range_start timestamptz, range_end timestamptz, signed boolean)
RETURNS TABLE (source text, grain interval, piece_start timestamptz, piece_end timestamptz,
               weight integer)
LANGUAGE plpgsql STABLE ROWS 12 AS $$
DECLARE
    -- tokentrace.raw_horizon(), read here: a SQL function call is planned every time.
    horizon constant timestamptz := coalesce(
        (SELECT st.value::timestamptz FROM tokentrace.settings st WHERE st.key = 'raw_horizon'),
        '-infinity'::timestamptz);
    grains  constant interval[] := ARRAY['24:00:00', '01:00:00', '00:05:00']::interval[];
    s       timestamptz := range_start;
    e       timestamptz := range_end;
    anchor  timestamptz;
    t       timestamptz;
    w       integer;
    cur     timestamptz;
    nxt     timestamptz;
    lo      timestamptz;
    hi      timestamptz;
    g       interval;
    -- pieces: grain (NULL = raw spans), from, to, weight; from > to means negative
    p_grain interval[] := '{}';
    p_from  timestamptz[] := '{}';
    p_to    timestamptz[] := '{}';
    p_w     integer[] := '{}';
    signed_cost   double precision;
    additive_cost double precision;
BEGIN
    IF s IS NULL OR e IS NULL OR s >= e THEN
        RETURN;
    END IF;
    IF signed IS NOT TRUE THEN
        RETURN QUERY SELECT wp.source, wp.grain, wp.piece_start, wp.piece_end, 1
                     FROM tokentrace.window_plan(range_start, range_end) wp;
        RETURN;
    END IF;
    -- Before the raw horizon only hourly and daily rollups exist (window_plan()).
    IF isfinite(s) AND s < horizon THEN s := tokentrace.bucket_ceil(s, '01:00:00'); END IF;
    IF isfinite(e) AND e < horizon THEN e := tokentrace.bucket_floor(e, '01:00:00'); END IF;
    IF s >= e THEN
        RETURN;
    END IF;

    -- [s, e) = prefix(e) − prefix(s), prefixes from a day boundary at or before s.
    anchor := tokentrace.bucket_floor(s, '24:00:00');
    FOR k IN 1 .. 2 LOOP
        t := CASE k WHEN 1 THEN e ELSE s END;
        w := CASE k WHEN 1 THEN 1 ELSE -1 END;
        CONTINUE WHEN t = anchor;  -- covers s = −infinity too
        IF NOT isfinite(t) THEN   -- e = +infinity: whole days from the anchor on
            p_grain := p_grain || grains[1]; p_from := p_from || anchor; p_to := p_to || t;
            p_w := p_w || w;
            CONTINUE;
        END IF;
        cur := anchor;
        FOREACH g IN ARRAY grains LOOP
            lo := tokentrace.bucket_floor(t, g);
            hi := tokentrace.bucket_ceil(t, g);
            nxt := CASE WHEN t - lo <= hi - t THEN lo ELSE hi END;
            IF nxt <> cur THEN
                p_grain := p_grain || g; p_from := p_from || cur; p_to := p_to || nxt;
                p_w := p_w || w;
            END IF;
            cur := nxt;
        END LOOP;
        IF t <> cur THEN
            p_grain := p_grain || NULL::interval; p_from := p_from || cur; p_to := p_to || t;
            p_w := p_w || w;
        END IF;
    END LOOP;

    -- Net weight per grain and segment: overlapping pieces of the two prefixes cancel.
    SELECT coalesce(array_agg(m.g ORDER BY m.g DESC NULLS LAST, m.a), '{}'),
           coalesce(array_agg(m.a ORDER BY m.g DESC NULLS LAST, m.a), '{}'),
           coalesce(array_agg(m.b ORDER BY m.g DESC NULLS LAST, m.a), '{}'),
           coalesce(array_agg(m.w ORDER BY m.g DESC NULLS LAST, m.a), '{}')
    INTO p_grain, p_from, p_to, p_w
    FROM (
        WITH p AS (
            SELECT x.g, least(x.f, x.t) AS a, greatest(x.f, x.t) AS b,
                   CASE WHEN x.f < x.t THEN x.w ELSE -x.w END AS w
            FROM unnest(p_grain, p_from, p_to, p_w) AS x(g, f, t, w)
        ), cuts AS (
            SELECT DISTINCT p.g, c.at FROM p, LATERAL (VALUES (p.a), (p.b)) c(at)
        ), seg AS (
            SELECT cuts.g, cuts.at AS a,
                   lead(cuts.at) OVER (PARTITION BY cuts.g ORDER BY cuts.at) AS b
            FROM cuts
        )
        SELECT seg.g, seg.a, seg.b, sum(p.w)::integer AS w
        FROM seg JOIN p ON p.g IS NOT DISTINCT FROM seg.g AND p.a <= seg.a AND seg.b <= p.b
        WHERE seg.b IS NOT NULL
        GROUP BY seg.g, seg.a, seg.b
        HAVING sum(p.w) <> 0
    ) m;

    -- To +infinity (what efficiency() asks) the signed plan never reads more than the
    -- additive one: no comparison needed.
    IF NOT isfinite(e) THEN
        RETURN QUERY
        SELECT CASE WHEN x.g IS NULL THEN 'raw' ELSE 'rollup' END, x.g, x.a, x.b, x.w
        FROM unnest(p_grain, p_from, p_to, p_w) AS x(g, a, b, w);
        RETURN;
    END IF;

    -- Rough cost, in 5-minute rollup rows: an hourly row has a fuller histogram, a
    -- daily one fuller still; 30 seconds of raw spans cost about one rollup row.
    SELECT coalesce(sum(abs(x.w) * CASE WHEN x.g IS NULL THEN extract(epoch FROM x.b - x.a) / 30
                     WHEN NOT isfinite(x.a) OR NOT isfinite(x.b) THEN 4
                     ELSE extract(epoch FROM x.b - x.a) / extract(epoch FROM x.g)
                          * CASE x.g WHEN '00:05:00' THEN 1 WHEN '01:00:00' THEN 1.5 ELSE 2 END END), 0)
    INTO signed_cost
    FROM unnest(p_grain, p_from, p_to, p_w) AS x(g, a, b, w);
    SELECT coalesce(sum(CASE WHEN wp.grain IS NULL THEN extract(epoch FROM wp.piece_end - wp.piece_start) / 30
                     WHEN NOT isfinite(wp.piece_start) OR NOT isfinite(wp.piece_end) THEN 4
                     ELSE extract(epoch FROM wp.piece_end - wp.piece_start) / extract(epoch FROM wp.grain)
                          * CASE wp.grain WHEN '00:05:00' THEN 1 WHEN '01:00:00' THEN 1.5 ELSE 2 END END), 0)
    INTO additive_cost
    FROM tokentrace.window_plan(range_start, range_end) wp;

    IF additive_cost <= signed_cost THEN
        RETURN QUERY SELECT wp.source, wp.grain, wp.piece_start, wp.piece_end, 1
                     FROM tokentrace.window_plan(range_start, range_end) wp;
        RETURN;
    END IF;
    RETURN QUERY
    SELECT CASE WHEN x.g IS NULL THEN 'raw' ELSE 'rollup' END, x.g, x.a, x.b, x.w
    FROM unnest(p_grain, p_from, p_to, p_w) AS x(g, a, b, w);
END
$$;

-- --- efficiency over a window, from signed pieces ----------------------------------------
-- Same definitions and columns as 0003; the pieces come from window_plan(…, true) and
-- are summed with their weights. The rollup rows of a piece are read by an index scan
-- of the one grain partition that holds them; raw pieces go through span_summary().
-- A model appears when its spans in the window (net of the weights) are not zero,
-- exactly when a raw scan would list it. PL/pgSQL rather than SQL: a SECURITY
-- DEFINER SQL function is never inlined and its query was planned on every call
-- (~0.8 ms); PL/pgSQL keeps the plan for the session.
CREATE OR REPLACE FUNCTION tokentrace.efficiency_range(
    range_start  timestamptz,
    range_end    timestamptz DEFAULT 'infinity',
    model_filter text        DEFAULT NULL)
RETURNS TABLE (
    model                 text,
    calls                 bigint,
    input_tokens          bigint,
    output_tokens         bigint,
    weighted_ms_per_token double precision,
    p50_ms_per_token      double precision,
    p95_ms_per_token      double precision,
    decode_ms_per_token   double precision,
    loads                 bigint,
    avg_load_ms           double precision,
    errors                bigint)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH plan AS MATERIALIZED (
        SELECT * FROM tokentrace.window_plan(range_start, range_end, true)
    ), p AS MATERIALIZED (
        SELECT pl.weight AS w, x.*,
               x.operation NOT IN ('', 'load_model') AS is_call,
               x.operation = 'load_model' AS is_load
        FROM plan pl CROSS JOIN LATERAL (
            SELECT r.model, r.operation, r.spans, r.errors, r.input_tokens, r.output_tokens,
                   r.timed_inference_ms, r.timed_output_tokens, r.decode_ms_tokens,
                   r.decode_output_tokens, r.load_ms_n, r.load_ms_sum, r.mpt_bins, r.mpt_counts
            FROM tokentrace.span_rollups r
            WHERE pl.source = 'rollup' AND r.grain = pl.grain
              AND r.bucket >= pl.piece_start AND r.bucket < pl.piece_end
              AND (model_filter IS NULL OR r.model = model_filter)
            UNION ALL
            SELECT s.model, s.operation, s.spans, s.errors, s.input_tokens, s.output_tokens,
                   s.timed_inference_ms, s.timed_output_tokens, s.decode_ms_tokens,
                   s.decode_output_tokens, s.load_ms_n, s.load_ms_sum, s.mpt_bins, s.mpt_counts
            FROM tokentrace.span_summary(pl.piece_start, pl.piece_end, NULL, model_filter, true) s
            WHERE pl.source = 'raw'
        ) x
    ), t AS (
        SELECT p.model,
               coalesce(sum(p.w * p.spans) FILTER (WHERE p.is_call), 0)::bigint AS calls,
               coalesce(sum(p.w * p.input_tokens) FILTER (WHERE p.is_call), 0)::bigint AS input_tokens,
               coalesce(sum(p.w * p.output_tokens) FILTER (WHERE p.is_call), 0)::bigint AS output_tokens,
               sum(p.w * p.timed_inference_ms) FILTER (WHERE p.is_call)
                 / nullif(sum(p.w * p.timed_output_tokens) FILTER (WHERE p.is_call), 0)::float8 AS weighted,
               sum(p.w * p.decode_ms_tokens) FILTER (WHERE p.is_call)
                 / nullif(sum(p.w * p.decode_output_tokens) FILTER (WHERE p.is_call), 0)::float8 AS decode,
               coalesce(sum(p.w * p.spans) FILTER (WHERE p.is_load), 0)::bigint AS loads,
               sum(p.w * p.load_ms_sum) FILTER (WHERE p.is_load)
                 / nullif(sum(p.w * p.load_ms_n) FILTER (WHERE p.is_load), 0)::float8 AS avg_load_ms,
               coalesce(sum(p.w * p.errors), 0)::bigint AS errors
        FROM p
        GROUP BY p.model
        HAVING sum(p.w * p.spans) <> 0
    ), h AS (
        SELECT u.model, u.bin, sum(u.n)::bigint AS n
        FROM (SELECT p.model, unnest(p.mpt_bins) AS bin, p.w * unnest(p.mpt_counts) AS n
              FROM p WHERE p.is_call) u
        GROUP BY u.model, u.bin
        HAVING sum(u.n) <> 0
    ), q AS (
        SELECT h.model, array_agg(h.bin ORDER BY h.bin) AS bins, array_agg(h.n ORDER BY h.bin) AS counts
        FROM h
        GROUP BY h.model
    )
    SELECT t.model, t.calls, t.input_tokens, t.output_tokens, t.weighted,
           tokentrace.mpt_quantile(q.bins, q.counts, 0.5),
           tokentrace.mpt_quantile(q.bins, q.counts, 0.95),
           t.decode, t.loads, t.avg_load_ms, t.errors
    FROM t LEFT JOIN q ON q.model = t.model
    ORDER BY 5 NULLS LAST, 1;
END
$$;

-- --- retention in two phases ------------------------------------------------------------
-- Where a prune's time went (bench/RESULTS.md): dropping a day partition costs the
-- filesystem handing the day's files back, at commit, and DROP holds an ACCESS
-- EXCLUSIVE lock on tokentrace.spans (every writer and every report waits) until then.
-- prune(…, defer_release => true) detaches the expired partitions instead and moves
-- them to the schema tokentrace_expired: a catalog change of a few milliseconds,
-- after which their spans are gone from tokentrace.spans and from every report and
-- the lock on spans is released. tokentrace_expired.release_pruned(), run in a transaction
-- of its own right after, drops them: the files are freed while it holds a lock on
-- those detached tables only. `tokentrace prune` and serve's scheduler do both.
-- Without defer_release (the default: prune() in SQL keeps its contract) it drops
-- the partitions as before, and releases any table a deferred prune left behind.
CREATE SCHEMA IF NOT EXISTS tokentrace_expired;
REVOKE ALL ON SCHEMA tokentrace_expired FROM PUBLIC;
COMMENT ON SCHEMA tokentrace_expired IS
    'Day partitions of tokentrace.spans detached by prune(…, defer_release => true), until tokentrace_expired.release_pruned() drops them (tokentrace).';

-- Drops every table in tokentrace_expired: one row per table, with the bytes freed.
-- Takes no lock on tokentrace.spans (the tables are no longer partitions of it); it
-- waits for a prune in progress (the same advisory lock) and vice versa.
CREATE FUNCTION tokentrace_expired.release_pruned()
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
    -- The rollup rows a deferred prune reported but left (deleting them is most of
    -- what a prune writes): 5-minute rows before the raw horizon, which no report
    -- reads any more, and hourly and daily rows past the rollup retention.
    DELETE FROM tokentrace.span_rollups r
    WHERE r.grain = '00:05:00' AND r.bucket < tokentrace.raw_horizon();
    DELETE FROM tokentrace.span_rollups r
    WHERE r.grain IN ('01:00:00', '24:00:00')
      AND r.bucket < tokentrace.bucket_floor(
              now() - make_interval(days => tokentrace.rollup_retention_days()), '24:00:00');
END
$$;

COMMENT ON FUNCTION tokentrace_expired.release_pruned() IS
    'Drops the day partitions a deferred prune detached (schema tokentrace_expired), freeing their files, and the rollup rows it left; one row per table (tokentrace).';

REVOKE EXECUTE ON FUNCTION tokentrace_expired.release_pruned() FROM PUBLIC;

DROP FUNCTION tokentrace.prune(interval, interval, boolean);

-- As in 0040, plus defer_release. Per expired partition: DETACH from tokentrace.spans
-- and move to tokentrace_expired (defer_release), or DROP (the default), under the
-- lock on spans that DETACH/DROP take until commit. By default the day's 5-minute
-- rollups and the rollups past their retention are deleted in the same transaction,
-- as before. Deferred, they are counted (read before the lock is taken) and left for
-- release_pruned(): deleting a day's few thousand 5-minute rows was most of what a
-- prune did while it held the lock, and no report reads them once the raw horizon
-- has moved past them. The cost of that: a span arriving late for a pruned day
-- between the two phases recreates the day and is rolled up, and the release then
-- deletes its 5-minute rows, so the prune that drops it again reports it as 0 spans
-- (the hourly and daily rollups keep it; exact_counts => true counts it).
CREATE FUNCTION tokentrace.prune(
    retention        interval DEFAULT '60 days',
    rollup_retention interval DEFAULT NULL,
    exact_counts     boolean  DEFAULT false,
    defer_release    boolean  DEFAULT false)
RETURNS TABLE (partition_name text, day date, spans bigint, rollup_rows bigint, kind text)
LANGUAGE plpgsql AS $$
DECLARE
    p             record;
    cutoff        timestamptz := now() - retention;
    keep_rollups  interval := coalesce(rollup_retention,
                                       make_interval(days => tokentrace.rollup_retention_days()));
    horizon       timestamptz;
    rollup_cutoff timestamptz;
    names         text[] := '{}';
    days          date[] := '{}';
    exact         bigint[] := '{}';
    counted       bigint;
    lower         timestamptz;
    parts         regclass[] := '{}';
    fine_days     date[];
    fine_n        bigint[];
    fine_spans    bigint[];
BEGIN
    IF retention < interval '1 day' THEN
        RAISE EXCEPTION 'retention must be at least 1 day, got %', retention;
    END IF;
    IF keep_rollups < retention THEN
        RAISE EXCEPTION 'rollup retention (%) must be at least the raw retention (%)',
            keep_rollups, retention;
    END IF;
    -- Two schedulers pruning at once would race to drop the same partitions.
    PERFORM pg_advisory_xact_lock(hashtext('tokentrace.prune'));
    horizon := tokentrace.bucket_floor(cutoff, '24:00:00');
    rollup_cutoff := tokentrace.bucket_floor(now() - keep_rollups, '24:00:00');

    FOR p IN
        SELECT sp.partition, sp.partition_name, sp.day FROM tokentrace.span_partitions sp
        WHERE ((sp.day + 1)::timestamp AT TIME ZONE 'UTC') <= cutoff
        ORDER BY sp.day
    LOOP
        IF exact_counts THEN
            EXECUTE format('SELECT count(*) FROM %s', p.partition) INTO counted;
            exact := exact || counted;
        END IF;
        parts := parts || p.partition;
        names := names || p.partition_name;
        days := days || p.day;
    END LOOP;
    lower := least(tokentrace.raw_horizon(), (days[1]::timestamp AT TIME ZONE 'UTC'));

    IF defer_release THEN
        -- The spans and rollup rows of each day, read (not deleted: the release does
        -- that) before the lock on spans is taken, so the lock is held only for the
        -- catalog changes below.
        SELECT coalesce(array_agg(x.day), '{}'), coalesce(array_agg(x.n), '{}'),
               coalesce(array_agg(x.spans), '{}')
        INTO fine_days, fine_n, fine_spans
        FROM (SELECT (r.bucket AT TIME ZONE 'UTC')::date AS day, count(*) AS n,
                     sum(r.spans)::bigint AS spans
              FROM tokentrace.span_rollups r
              WHERE r.grain = '00:05:00' AND r.bucket >= lower AND r.bucket < horizon
              GROUP BY 1) x;
    END IF;

    -- DETACH and DROP take an ACCESS EXCLUSIVE lock on tokentrace.spans until commit:
    -- writers wait, so no span for a removed day can be stored (and rolled up) after
    -- its 5-minute rollups were counted (deferred) or deleted (below).
    FOR i IN 1 .. coalesce(array_length(parts, 1), 0) LOOP
        IF defer_release THEN
            EXECUTE format('ALTER TABLE tokentrace.spans DETACH PARTITION %s', parts[i]);
            -- A same-named table still waiting for release (a deferred prune whose
            -- release never ran, then a late span recreating the day): dropped now.
            IF to_regclass(format('tokentrace_expired.%I', names[i])) IS NOT NULL THEN
                EXECUTE format('DROP TABLE tokentrace_expired.%I', names[i]);
            END IF;
            EXECUTE format('ALTER TABLE %s SET SCHEMA tokentrace_expired', parts[i]);
        ELSE
            EXECUTE format('DROP TABLE %s', parts[i]);
        END IF;
    END LOOP;

    RETURN QUERY
    WITH gone AS (
        DELETE FROM tokentrace.span_rollups r
        WHERE NOT defer_release
          AND r.grain = '00:05:00' AND r.bucket >= lower AND r.bucket < horizon
        RETURNING r.bucket, r.spans
    ), per_day AS (
        SELECT (g.bucket AT TIME ZONE 'UTC')::date AS day, count(*) AS n, sum(g.spans) AS spans
        FROM gone g GROUP BY 1
        UNION ALL
        SELECT * FROM unnest(fine_days, fine_n, fine_spans)
    ), dropped AS (
        SELECT * FROM unnest(names, days, CASE WHEN exact_counts THEN exact END)
            AS x(partition_name, day, spans)
    )
    SELECT d.partition_name, coalesce(d.day, r.day),
           CASE WHEN d.day IS NULL THEN 0
                WHEN exact_counts THEN d.spans
                ELSE coalesce(r.spans, 0) END::bigint,
           coalesce(r.n, 0)::bigint, 'raw'::text
    FROM dropped d FULL JOIN per_day r ON r.day = d.day
    ORDER BY 2;

    -- Hourly and daily rollups past the rollup retention: deleted now, or (deferred)
    -- counted now and deleted by the release.
    RETURN QUERY
    WITH gone AS (
        DELETE FROM tokentrace.span_rollups r
        WHERE NOT defer_release
          AND r.grain IN ('01:00:00', '24:00:00') AND r.bucket < rollup_cutoff
        RETURNING r.grain, r.bucket, r.spans
    ), expiring AS (
        SELECT g.grain, g.bucket, g.spans FROM gone g
        UNION ALL
        SELECT r.grain, r.bucket, r.spans FROM tokentrace.span_rollups r
        WHERE defer_release AND r.grain IN ('01:00:00', '24:00:00') AND r.bucket < rollup_cutoff
    )
    SELECT NULL::text, (g.bucket AT TIME ZONE 'UTC')::date,
           coalesce(sum(g.spans) FILTER (WHERE g.grain = '24:00:00'), 0)::bigint, count(*),
           'rollup'::text
    FROM expiring g GROUP BY 2 ORDER BY 2;

    INSERT INTO tokentrace.settings (key, value)
    VALUES ('raw_horizon', to_char(horizon AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00')
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
    WHERE excluded.value::timestamptz > tokentrace.settings.value::timestamptz;
    IF rollup_retention IS NOT NULL THEN
        UPDATE tokentrace.settings
        SET value = round(extract(epoch FROM rollup_retention) / 86400)::integer::text
        WHERE key = 'rollup_retention_days';
    END IF;
    IF NOT defer_release THEN
        -- Tables a deferred prune left behind (its release never ran) go too.
        PERFORM tokentrace_expired.release_pruned();
    END IF;
END
$$;

COMMENT ON FUNCTION tokentrace.prune(interval, interval, boolean, boolean) IS
    'Removes raw day partitions past the retention (with their 5-minute rollups) and rollups past theirs; one row per UTC day. defer_release: detach now, free the files with release_pruned() (tokentrace).';

REVOKE EXECUTE ON FUNCTION tokentrace.prune(interval, interval, boolean, boolean) FROM PUBLIC;

-- efficiency_range() was replaced (CREATE OR REPLACE resets SECURITY DEFINER) and
-- window_plan(…, signed) is new: both are report functions (0030).
SELECT tokentrace.secure_report_functions();
