-- tokentrace schema: the link rows of 0100 written with a plain INSERT.
--
-- 0100's trigger upserts every link row (INSERT … ON CONFLICT DO UPDATE). Nearly all of
-- them are new (a span's own row, and its parent's row when the parent is not in the
-- batch), and the speculative insertion of ON CONFLICT costs on top of the rows'
-- unique-index entries, which are most of what 0100 adds to ingest (issue 18;
-- bench/RESULTS.md, "Wrapper detection, plain link INSERT"). So each statement now first inserts its link
-- rows with a plain INSERT, in key order as before; only when one of them exists already
-- (a sibling of an earlier batch named the same parent, a child stored before its parent,
-- a parent stored before its child) does the unique_violation roll that INSERT back (a
-- subtransaction: the BEGIN … EXCEPTION block) and the statement take 0100's upsert for
-- all its rows. Exactness is 0100's: the unique index serializes a plain INSERT as it
-- does an upsert (the second writer waits for the first one's commit, then fails and
-- upserts, seeing it), and the rows the fallback returns are the ones the upsert would
-- have returned from the start. A statement whose keys were all new completed no pair
-- with an earlier one, so only the pairs within it can be wrappers.
--
-- The keys are computed once, into arrays, for whichever INSERT runs. And the sums
-- take the simpler shape: every new span with a model, plus every span marked a wrapper
-- now with sign -1 (a wrapper stored now is added and subtracted in the same statement),
-- instead of an anti-join that left the new wrappers out.
--
-- Cost: a statement that falls back pays for a subtransaction, the rolled-back INSERT
-- (up to its first existing row, in key order) and then the upsert, i.e. more than 0100
-- did; that is the workload in which most batches share a link row with an earlier
-- batch (children of one parent spread over many batches). The two unique-index entries
-- per call span remain: wrapper detection still costs ingest more than 10 %. Measured
-- with bench/bench_links.py and bench/bench_receiver.py (bench/RESULTS.md).

CREATE OR REPLACE FUNCTION tokentrace.rollup_new_spans() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    k_day   date[];
    k_trace bytea[];
    k_span  bytea[];
    k_start timestamptz[];
    k_child boolean[];
    w_start timestamptz[];
    w_trace bytea[];
    w_span  bytea[];
    marked  tokentrace.spans[];
BEGIN
    -- The link rows of 0100, in key order: each call's own row (and the next day's,
    -- for a call that ends after midnight), has_child when a call among the new spans
    -- names it as its parent; and the row of each parent that is not among the new
    -- spans. Grouped, for siblings and for two new spans with one (trace_id, span_id).
    WITH calls AS MATERIALIZED (
        SELECT n.trace_id, n.span_id, n.parent_span_id, n.start_time,
               (n.start_time AT TIME ZONE 'UTC')::date AS day,
               (n.end_time AT TIME ZONE 'UTC')::date AS end_day
        FROM new_spans n
        WHERE n.model IS NOT NULL AND tokentrace.counts_as_call(n.operation)
    ), own AS (
        SELECT c.day, c.trace_id, c.span_id, c.start_time, c.end_day,
               coalesce((c.trace_id, c.span_id) IN (SELECT k.trace_id, k.parent_span_id FROM calls k
                                                    WHERE k.parent_span_id IS NOT NULL), false)
                   AS has_child
        FROM calls c
    ), keys AS (
        SELECT o.day, o.trace_id, o.span_id, o.start_time, o.has_child FROM own o
        UNION ALL
        SELECT o.day + 1, o.trace_id, o.span_id, o.start_time, o.has_child
        FROM own o WHERE o.end_day > o.day
        UNION ALL
        SELECT c.day, c.trace_id, c.parent_span_id, NULL::timestamptz, true
        FROM calls c
        WHERE c.parent_span_id IS NOT NULL
          AND NOT EXISTS (SELECT FROM new_spans p
                          WHERE p.trace_id = c.trace_id AND p.span_id = c.parent_span_id)
    ), g AS (
        SELECT k.day, k.trace_id, k.span_id, min(k.start_time) AS start_time,
               bool_or(k.has_child) AS has_child
        FROM keys k
        GROUP BY k.day, k.trace_id, k.span_id
    )
    SELECT array_agg(g.day ORDER BY g.day, g.trace_id, g.span_id),
           array_agg(g.trace_id ORDER BY g.day, g.trace_id, g.span_id),
           array_agg(g.span_id ORDER BY g.day, g.trace_id, g.span_id),
           array_agg(g.start_time ORDER BY g.day, g.trace_id, g.span_id),
           array_agg(g.has_child ORDER BY g.day, g.trace_id, g.span_id)
    INTO k_day, k_trace, k_span, k_start, k_child
    FROM g;

    IF k_day IS NOT NULL THEN
        BEGIN
            -- Usually every row is new: a plain INSERT, and the wrappers are the calls
            -- with a child among the new spans.
            INSERT INTO tokentrace.call_links (day, trace_id, span_id, start_time, has_child)
            SELECT k.day, k.trace_id, k.span_id, k.start_time, k.has_child
            FROM unnest(k_day, k_trace, k_span, k_start, k_child) WITH ORDINALITY
                 AS k(day, trace_id, span_id, start_time, has_child, i)
            ORDER BY k.i;
            SELECT array_agg(k.start_time), array_agg(k.trace_id), array_agg(k.span_id)
            INTO w_start, w_trace, w_span
            FROM unnest(k_start, k_trace, k_span, k_child) AS k(start_time, trace_id, span_id, has_child)
            WHERE k.has_child AND k.start_time IS NOT NULL;
        EXCEPTION WHEN unique_violation THEN
            -- Some row exists (committed: the INSERT waited for its writer): 0100's upsert.
            WITH linked AS (
                INSERT INTO tokentrace.call_links AS l (day, trace_id, span_id, start_time, has_child)
                SELECT k.day, k.trace_id, k.span_id, k.start_time, k.has_child
                FROM unnest(k_day, k_trace, k_span, k_start, k_child) WITH ORDINALITY
                     AS k(day, trace_id, span_id, start_time, has_child, i)
                ORDER BY k.i
                ON CONFLICT (day, trace_id, span_id) DO UPDATE
                    SET start_time = coalesce(l.start_time, excluded.start_time),
                        has_child  = l.has_child OR excluded.has_child
                    WHERE (l.start_time IS NULL AND excluded.start_time IS NOT NULL)
                       OR (excluded.has_child AND NOT l.has_child)
                RETURNING l.start_time, l.trace_id, l.span_id, l.has_child
            )
            SELECT array_agg(x.start_time), array_agg(x.trace_id), array_agg(x.span_id)
            INTO w_start, w_trace, w_span
            FROM linked x
            WHERE x.has_child AND x.start_time IS NOT NULL;
        END;
    END IF;

    -- As 0100: marked in a statement of its own, so that it sees the rows of a partner
    -- whose commit the link INSERT waited for; the `wrapper` flag guards against a
    -- second subtraction.
    IF w_start IS NOT NULL THEN
        WITH m AS (
            UPDATE tokentrace.spans sp SET wrapper = true
            FROM unnest(w_start, w_trace, w_span) AS w(start_time, trace_id, span_id)
            WHERE sp.start_time = w.start_time AND sp.trace_id = w.trace_id
              AND sp.span_id = w.span_id AND NOT sp.wrapper
            RETURNING sp
        )
        SELECT array_agg(m.sp) INTO marked FROM m;
    END IF;

    INSERT INTO tokentrace.span_rollups AS r (
        grain, bucket, model, operation, spans, errors, input_tokens, output_tokens,
        timed_calls, timed_inference_ms, timed_output_tokens, decode_ms_tokens,
        decode_output_tokens, load_ms_n, load_ms_sum, first_start, last_start, mpt_packed,
        prefill_ms_tokens, prefill_input_tokens, inference_ms_total, load_ms_total)
    WITH src AS (
        -- Every span stored now, wrappers included, and then every span marked a
        -- wrapper now, subtracted: the new ones among them cancel out (they still
        -- bound first_start/last_start), the ones stored earlier were summed then.
        SELECT 1 AS sign, n.start_time, n.model, n.operation, n.status, n.input_tokens,
               n.output_tokens, n.inference_ms, n.ms_per_token, n.decode_ms_per_token,
               n.prefill_ms_per_token, n.load_ms, n.duration_ms
        FROM new_spans n
        WHERE n.model IS NOT NULL
        UNION ALL
        SELECT -1, m.start_time, m.model, m.operation, m.status, m.input_tokens,
               m.output_tokens, m.inference_ms, m.ms_per_token, m.decode_ms_per_token,
               m.prefill_ms_per_token, m.load_ms, m.duration_ms
        FROM unnest(marked) m
    ), sb AS (
        SELECT tokentrace.bucket_floor(s.start_time, '00:05:00') AS bucket,
               s.model COLLATE "C" AS model, coalesce(s.operation, '') COLLATE "C" AS operation,
               tokentrace.mpt_bin(s.ms_per_token) AS bin,
               sum(s.sign) AS spans,
               sum(s.sign) FILTER (WHERE s.status = 'ERROR') AS errors,
               sum(s.sign * s.input_tokens) AS input_tokens,
               sum(s.sign * s.output_tokens) AS output_tokens,
               sum(s.sign * s.inference_ms) FILTER (WHERE s.ms_per_token IS NOT NULL) AS timed_inference_ms,
               sum(s.sign * s.output_tokens) FILTER (WHERE s.ms_per_token IS NOT NULL) AS timed_output_tokens,
               sum(s.sign * s.decode_ms_per_token * s.output_tokens)
                   FILTER (WHERE s.decode_ms_per_token IS NOT NULL) AS decode_ms_tokens,
               sum(s.sign * s.output_tokens)
                   FILTER (WHERE s.decode_ms_per_token IS NOT NULL) AS decode_output_tokens,
               sum(s.sign) FILTER (WHERE tokentrace.is_load(s.operation)
                                     AND coalesce(s.load_ms, s.duration_ms) IS NOT NULL) AS load_ms_n,
               sum(s.sign * coalesce(s.load_ms, s.duration_ms))
                   FILTER (WHERE tokentrace.is_load(s.operation)) AS load_ms_sum,
               min(s.start_time) AS first_start,
               max(s.start_time) AS last_start,
               sum(s.sign * s.prefill_ms_per_token * s.input_tokens)
                   FILTER (WHERE s.prefill_ms_per_token IS NOT NULL) AS prefill_ms_tokens,
               sum(s.sign * s.input_tokens)
                   FILTER (WHERE s.prefill_ms_per_token IS NOT NULL) AS prefill_input_tokens,
               sum(s.sign * s.inference_ms) AS inference_ms_total,
               sum(s.sign * s.load_ms) AS load_ms_total
        FROM src s
        GROUP BY 1, 2, 3, 4
    ), f AS (
        SELECT sb.bucket, sb.model, sb.operation,
               sum(sb.spans) AS spans, coalesce(sum(sb.errors), 0) AS errors,
               coalesce(sum(sb.input_tokens), 0) AS input_tokens,
               coalesce(sum(sb.output_tokens), 0) AS output_tokens,
               coalesce(sum(sb.spans) FILTER (WHERE sb.bin IS NOT NULL), 0) AS timed_calls,
               sum(sb.timed_inference_ms) AS timed_inference_ms,
               coalesce(sum(sb.timed_output_tokens), 0) AS timed_output_tokens,
               sum(sb.decode_ms_tokens) AS decode_ms_tokens,
               coalesce(sum(sb.decode_output_tokens), 0) AS decode_output_tokens,
               coalesce(sum(sb.load_ms_n), 0) AS load_ms_n, sum(sb.load_ms_sum) AS load_ms_sum,
               min(sb.first_start) AS first_start, max(sb.last_start) AS last_start,
               sum(sb.prefill_ms_tokens) AS prefill_ms_tokens,
               coalesce(sum(sb.prefill_input_tokens), 0) AS prefill_input_tokens,
               coalesce(sum(sb.inference_ms_total), 0) AS inference_ms_total,
               coalesce(sum(sb.load_ms_total), 0) AS load_ms_total,
               coalesce(sum(sb.spans * tokentrace.mpt_unit(sb.bin)) FILTER (WHERE sb.bin IS NOT NULL), 0)
                   AS packed
        FROM sb
        GROUP BY 1, 2, 3
    ), g(grain) AS (
        VALUES (interval '00:05:00'), (interval '01:00:00'), (interval '24:00:00')
    ), t AS (
        SELECT g.grain, tokentrace.bucket_floor(f.bucket, g.grain) AS bucket, f.model, f.operation,
               sum(f.spans)::bigint AS spans, sum(f.errors)::bigint AS errors,
               sum(f.input_tokens)::bigint AS input_tokens, sum(f.output_tokens)::bigint AS output_tokens,
               sum(f.timed_calls)::bigint AS timed_calls, sum(f.timed_inference_ms) AS timed_inference_ms,
               sum(f.timed_output_tokens)::bigint AS timed_output_tokens,
               sum(f.decode_ms_tokens) AS decode_ms_tokens,
               sum(f.decode_output_tokens)::bigint AS decode_output_tokens,
               sum(f.load_ms_n)::bigint AS load_ms_n, sum(f.load_ms_sum) AS load_ms_sum,
               min(f.first_start) AS first_start, max(f.last_start) AS last_start,
               sum(f.prefill_ms_tokens) AS prefill_ms_tokens,
               sum(f.prefill_input_tokens)::bigint AS prefill_input_tokens,
               sum(f.inference_ms_total) AS inference_ms_total, sum(f.load_ms_total) AS load_ms_total,
               sum(f.packed) AS packed
        FROM f CROSS JOIN g
        GROUP BY 1, 2, 3, 4
    )
    SELECT t.grain, t.bucket, t.model, t.operation, t.spans, t.errors, t.input_tokens,
           t.output_tokens, t.timed_calls, t.timed_inference_ms, t.timed_output_tokens,
           t.decode_ms_tokens, t.decode_output_tokens, t.load_ms_n, t.load_ms_sum,
           t.first_start, t.last_start, t.packed,
           t.prefill_ms_tokens, t.prefill_input_tokens, t.inference_ms_total, t.load_ms_total
    FROM t
    ORDER BY t.grain, t.bucket, t.model, t.operation
    ON CONFLICT (grain, bucket, model, operation) DO UPDATE SET
        spans                = r.spans + excluded.spans,
        errors               = r.errors + excluded.errors,
        input_tokens         = r.input_tokens + excluded.input_tokens,
        output_tokens        = r.output_tokens + excluded.output_tokens,
        timed_calls          = r.timed_calls + excluded.timed_calls,
        -- NULL means "no value summed yet": coalesce(a + b, a, b) keeps that meaning.
        timed_inference_ms   = coalesce(r.timed_inference_ms + excluded.timed_inference_ms,
                                        r.timed_inference_ms, excluded.timed_inference_ms),
        timed_output_tokens  = r.timed_output_tokens + excluded.timed_output_tokens,
        decode_ms_tokens     = coalesce(r.decode_ms_tokens + excluded.decode_ms_tokens,
                                        r.decode_ms_tokens, excluded.decode_ms_tokens),
        decode_output_tokens = r.decode_output_tokens + excluded.decode_output_tokens,
        load_ms_n            = r.load_ms_n + excluded.load_ms_n,
        load_ms_sum          = coalesce(r.load_ms_sum + excluded.load_ms_sum,
                                        r.load_ms_sum, excluded.load_ms_sum),
        first_start          = least(r.first_start, excluded.first_start),
        last_start           = greatest(r.last_start, excluded.last_start),
        mpt_packed           = r.mpt_packed + excluded.mpt_packed,
        prefill_ms_tokens    = coalesce(r.prefill_ms_tokens + excluded.prefill_ms_tokens,
                                        r.prefill_ms_tokens, excluded.prefill_ms_tokens),
        prefill_input_tokens = r.prefill_input_tokens + excluded.prefill_input_tokens,
        -- NULL here means "not known" (rolled up before 0080, raw spans since pruned),
        -- and stays so: adding to an unknown sum gives an unknown sum.
        inference_ms_total    = r.inference_ms_total + excluded.inference_ms_total,
        load_ms_total         = r.load_ms_total + excluded.load_ms_total;
    RETURN NULL;
END
$$;
