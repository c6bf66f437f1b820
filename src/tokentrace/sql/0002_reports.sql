-- tokentrace schema, part 2: the report functions and views analysts query.
-- Token-weighted throughout: a window's ms/token is sum(inference ms) / sum(output
-- tokens) over the calls that reported tokens, never an average of per-call ratios.
-- Model loads (operation = 'load_model') are reported apart and never count as calls.

CREATE FUNCTION tokentrace.efficiency(
    time_window  interval DEFAULT '24 hours',
    model_filter text     DEFAULT NULL)
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
LANGUAGE sql STABLE AS $$
    WITH s AS (
        SELECT sp.model,
               sp.operation = 'load_model' AS is_load,
               sp.input_tokens, sp.output_tokens, sp.inference_ms, sp.ms_per_token,
               sp.decode_ms_per_token, sp.load_ms, sp.duration_ms, sp.status
        FROM tokentrace.spans sp
        WHERE sp.start_time >= now() - time_window
          AND sp.model IS NOT NULL
          AND (model_filter IS NULL OR sp.model = model_filter)
    )
    SELECT s.model,
           count(*) FILTER (WHERE NOT s.is_load),
           coalesce(sum(s.input_tokens) FILTER (WHERE NOT s.is_load), 0)::bigint,
           coalesce(sum(s.output_tokens) FILTER (WHERE NOT s.is_load), 0)::bigint,
           sum(s.inference_ms) FILTER (WHERE NOT s.is_load AND s.ms_per_token IS NOT NULL)
             / nullif(sum(s.output_tokens) FILTER (WHERE NOT s.is_load AND s.ms_per_token IS NOT NULL), 0),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY s.ms_per_token) FILTER (WHERE NOT s.is_load),
           percentile_cont(0.95) WITHIN GROUP (ORDER BY s.ms_per_token) FILTER (WHERE NOT s.is_load),
           sum(s.decode_ms_per_token * s.output_tokens)
               FILTER (WHERE NOT s.is_load AND s.decode_ms_per_token IS NOT NULL)
             / nullif(sum(s.output_tokens)
               FILTER (WHERE NOT s.is_load AND s.decode_ms_per_token IS NOT NULL), 0),
           count(*) FILTER (WHERE s.is_load),
           avg(coalesce(s.load_ms, s.duration_ms)) FILTER (WHERE s.is_load),
           count(*) FILTER (WHERE s.status = 'ERROR')
    FROM s
    GROUP BY s.model
    ORDER BY 5 NULLS LAST, 1
$$;

COMMENT ON FUNCTION tokentrace.efficiency(interval, text) IS
    'Per model over a window: calls, tokens, token-weighted ms/token, p50/p95, decode ms/token, loads, errors.';

CREATE VIEW tokentrace.efficiency_24h AS
SELECT * FROM tokentrace.efficiency('24 hours');

CREATE VIEW tokentrace.stats_60d AS
SELECT count(*)                                        AS total_measurements,
       count(DISTINCT sp.model)                        AS unique_models,
       min(sp.start_time)                              AS oldest_record,
       max(sp.start_time)                              AS newest_record,
       coalesce(sum(coalesce(sp.input_tokens, 0) + coalesce(sp.output_tokens, 0)), 0)::bigint
                                                       AS total_tokens,
       tokentrace.retention_days()                     AS retention_window_days
FROM tokentrace.spans sp
WHERE sp.start_time >= now() - interval '60 days'
  AND sp.model IS NOT NULL;

CREATE VIEW tokentrace.model_trends_60d AS
SELECT sp.model,
       sum(sp.inference_ms) FILTER (WHERE sp.ms_per_token IS NOT NULL)
         / nullif(sum(sp.output_tokens) FILTER (WHERE sp.ms_per_token IS NOT NULL), 0)
                                                       AS avg_efficiency,
       count(*)                                        AS measurement_count,
       coalesce(sum(coalesce(sp.input_tokens, 0) + coalesce(sp.output_tokens, 0)), 0)::bigint
                                                       AS total_tokens_processed
FROM tokentrace.spans sp
WHERE sp.start_time >= now() - interval '60 days'
  AND sp.model IS NOT NULL
  AND sp.operation IS DISTINCT FROM 'load_model'
GROUP BY sp.model
ORDER BY avg_efficiency NULLS LAST, sp.model;

-- Size per relation of the tokentrace schema (a partitioned table counts all its
-- partitions). Row counts are the planner's estimates: fast at any size.
CREATE VIEW tokentrace.footprint AS
SELECT c.relname::text                         AS relation,
       t.total_bytes,
       pg_size_pretty(t.total_bytes)           AS total_size,
       t.row_estimate,
       (SELECT min(sp.start_time) FROM tokentrace.spans sp) AS oldest_span
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'tokentrace'
CROSS JOIN LATERAL (
    SELECT coalesce(sum(pg_total_relation_size(pt.relid)), 0)::bigint AS total_bytes,
           coalesce(sum(greatest(pc.reltuples::bigint, coalesce(st.n_live_tup, 0))), 0)::bigint
                                                                    AS row_estimate
    FROM (SELECT c.oid AS relid WHERE c.relkind = 'r'
          UNION ALL
          SELECT pt.relid FROM pg_partition_tree(c.oid) pt WHERE c.relkind = 'p' AND pt.isleaf) pt
    JOIN pg_class pc ON pc.oid = pt.relid
    LEFT JOIN pg_stat_user_tables st ON st.relid = pt.relid
) t
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY t.total_bytes DESC, relation;
