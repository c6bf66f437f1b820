"""tokentrace on a Citus cluster: the same schema, distributed.

A database where the ``citus`` extension is installed (``CREATE EXTENSION citus`` on
the coordinator, workers added) is migrated distributed: ``tokentrace migrate``
applies the same numbered migrations, then :func:`distribute` lays the tables out
across the workers, and the writer and reports take the paths below. Point
tokentrace at the coordinator; nothing else changes for users (same SQL names,
same reports, same guarantees). ``tokentrace migrate --citus`` says so explicitly
and refuses a database without the extension. A database without Citus is not
touched by anything here.

The layout:

- ``spans`` and ``call_links`` are distributed by ``trace_id`` and colocated (a
  trace's spans and its link rows live on one worker), still partitioned by UTC day:
  a day partition is a distributed table of its own, so retention drops whole days.
  Their primary keys already hold ``trace_id``, as Citus requires.
- ``span_rollups`` is distributed by ``model``: a rollup row's upsert goes to one
  shard, and the reports' per-model sums run on the workers.
- ``settings`` and ``schema_migrations`` are reference tables (a copy on every node);
  so is any other plain table a later migration adds.

Citus does not run a statement trigger with transition tables on a distributed
table, so the rollup trigger is dropped there and the writer does its work: it COPYs
a batch into a temporary table on the coordinator, inserts it into ``spans`` (``ON
CONFLICT DO NOTHING RETURNING`` when some spans are stored already, so a duplicate
is never summed), keeps the rows actually inserted in the temporary table
``tt_inserted`` and calls ``tokentrace.rollup_staged()`` over it, all in the batch's
one transaction (a rolled-back batch leaves nothing). ``rollup_staged()`` is made
from the live trigger function's text by exact, checked edits (:func:`derive`), so
the two never diverge: a migration that changes the trigger changes it too, and an
edit that no longer applies is a :class:`CitusSchemaError`, never a silent drift.
It takes a transaction-level advisory lock on the coordinator first: the rollup rows
of a batch sit on several shards, written in parallel, and two receivers upserting
the same rows in different shard orders would otherwise deadlock.

Report functions that Citus cannot plan as written get variants made the same way:
``efficiency_range`` and ``efficiency_series_range`` with custom plans (Citus cannot
plan a generic plan's parameters), the former without its ``OFFSET 0`` fence (Citus
cannot push a lateral subquery with an ``OFFSET`` down) and with its model filter
kept from routing the query to one worker (the plan and raw-span parts must run on
the coordinator); ``efficiency_series_raw``
as PL/pgSQL (Citus does not plan parameters in SQL functions); ``footprint``,
``footprint_summary`` and ``relation_growth`` with sizes and row estimates summed
over the workers' shards; ``prune`` without the deferred release (Citus cannot
move a distributed partition to another schema); ``grant_reader`` in Citus's
sequential mode. They are regenerated after every migration.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

Conn = psycopg.Connection[tuple[Any, ...]]

TRIGGER_FUNCTION = "tokentrace.rollup_new_spans()"
ROLLUP_FUNCTION = "tokentrace.rollup_staged()"
# The coordinator-local tables a Citus writer stages a batch in (rolled back with it).
STAGING = "tt_staging"
INSERTED = "tt_inserted"
ROLLUP_LOCK = "tokentrace.rollup"

_REFERENCE = ("tokentrace.settings", "tokentrace.schema_migrations")
_BY_TRACE = ("tokentrace.spans", "tokentrace.call_links")
_BY_MODEL = ("tokentrace.span_rollups",)


class CitusSchemaError(RuntimeError):
    """The schema cannot be laid out on Citus as this version knows how to."""


def has_citus(conn: Conn) -> bool:
    """Whether the ``citus`` extension is installed in this database."""
    row = conn.execute("SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus')").fetchone()
    return bool(row and row[0])


def is_distributed(conn: Conn) -> bool:
    """Whether ``tokentrace.spans`` is a distributed table here (the writer's switch)."""
    if not has_citus(conn):
        return False
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition "
        "WHERE logicalrelid = to_regclass('tokentrace.spans'))"
    ).fetchone()
    return bool(row and row[0])


# --- text edits --------------------------------------------------------------------
@dataclass(frozen=True)
class Edit:
    """Replace ``old`` (a regular expression when ``regex``) with ``new``; ``count`` is the
    number of matches expected (``None``: at least one). An ``optional`` edit may also
    match nothing: it rewrites a shape that only some versions of a function have."""

    old: str
    new: str
    count: int | None = 1
    regex: bool = False
    optional: bool = False


def derive(source: str, edits: Sequence[Edit], what: str) -> str:
    """``source`` with ``edits`` applied, each checked to match as expected."""
    text = source
    for e in edits:
        pattern = e.old if e.regex else re.escape(e.old)
        found = len(re.findall(pattern, text))
        if e.optional and found == 0:
            continue
        if (e.count is None and found == 0) or (e.count is not None and found != e.count):
            expected = "at least 1" if e.count is None else str(e.count)
            raise CitusSchemaError(
                f"cannot make the Citus variant of {what}: expected {expected} match(es) of "
                f"{e.old!r} in its definition, found {found}; the function changed and "
                "tokentrace.store.citus must be updated with it"
            )
        text = re.sub(pattern, _literal(e.new), text)
    return text


def _literal(replacement: str) -> Callable[[re.Match[str]], str]:
    # A function, not a string: re.sub would read backslashes in the replacement.
    def replace(_match: re.Match[str]) -> str:
        return replacement

    return replace


def _functiondef(conn: Conn, signature: str) -> str:
    row = conn.execute("SELECT pg_get_functiondef(to_regprocedure(%s))", (signature,)).fetchone()
    if not row or row[0] is None:
        raise CitusSchemaError(f"{signature} does not exist; migrate first")
    return str(row[0])


def _viewdef(conn: Conn, name: str) -> str:
    row = conn.execute("SELECT pg_get_viewdef(to_regclass(%s), true)", (name,)).fetchone()
    if not row or row[0] is None:
        raise CitusSchemaError(f"view {name} does not exist; migrate first")
    return str(row[0])


def _comment(conn: Conn, signature: str) -> str | None:
    row = conn.execute(
        "SELECT obj_description(to_regprocedure(%s), 'pg_proc')", (signature,)
    ).fetchone()
    return None if not row or row[0] is None else str(row[0])


# --- the variants -----------------------------------------------------------------
def rollup_function_sql(trigger_source: str) -> str:
    """``rollup_staged()``: the trigger function over ``pg_temp.tt_inserted``."""
    text = derive(
        trigger_source,
        [
            Edit(f"FUNCTION {TRIGGER_FUNCTION}", f"FUNCTION {ROLLUP_FUNCTION}"),
            Edit(" RETURNS trigger", " RETURNS void"),
            Edit("RETURN NULL;", "RETURN;", None),
            # The transition table, wherever the function names it.
            Edit(r"(?<![\w.])new_spans\b", f"pg_temp.{INSERTED}", None, regex=True),
            # 0100's "has a call child" test, a correlated EXISTS over a CTE: Citus plans a
            # statement that writes a distributed table by running each CTE apart, as an
            # intermediate result the planner sizes at 1,000 rows, and rescans it for
            # every row (8 s for a batch of 8,192). The same test as a hashable IN.
            Edit("EXISTS (SELECT FROM calls k\n                       "
                 "WHERE k.trace_id = c.trace_id AND k.parent_span_id = c.span_id)",
                 "coalesce((c.trace_id, c.span_id) IN (SELECT k.trace_id, k.parent_span_id "
                 "FROM calls k WHERE k.parent_span_id IS NOT NULL), false)", optional=True),
            # A trigger that tries a plain INSERT first and falls back on unique_violation
            # (0120's link rows): Citus reports a duplicate key met on a worker by an
            # INSERT … SELECT as internal_error (XX000). The fallback is an upsert, right
            # whatever the error was; one that was not a duplicate fails again there.
            Edit("EXCEPTION WHEN unique_violation THEN",
                 "EXCEPTION WHEN unique_violation OR internal_error THEN", None, optional=True),
            # First statement of the body: serialize rollups (see the module docstring).
            Edit(r"\nBEGIN\n", f"\nBEGIN\n    PERFORM pg_advisory_xact_lock(hashtext('{ROLLUP_LOCK}'));\n",
                 1, regex=True),
        ],
        TRIGGER_FUNCTION,
    )
    if re.search(r"\bTG_\w+", text):
        raise CitusSchemaError(f"{TRIGGER_FUNCTION} reads trigger variables; it has no Citus variant")
    return text


_SIZE_FUNCTIONS = """
CREATE OR REPLACE FUNCTION tokentrace.cluster_relation_size(rel regclass) RETURNS bigint
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'tokentrace', 'pg_temp'
    AS $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_dist_partition d WHERE d.logicalrelid = rel) THEN
        RETURN citus_total_relation_size(rel);
    END IF;
    RETURN pg_total_relation_size(rel);
END
$$;
COMMENT ON FUNCTION tokentrace.cluster_relation_size(regclass) IS
    'On Citus: a relation''s total size with its shards on every worker (tokentrace: report)';

CREATE OR REPLACE FUNCTION tokentrace.cluster_row_estimate(rel regclass) RETURNS bigint
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'tokentrace', 'pg_temp'
    AS $$
DECLARE
    n bigint;
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_dist_partition d WHERE d.logicalrelid = rel) THEN
        SELECT coalesce(sum(r.result::bigint), 0) INTO n
        FROM run_command_on_shards(rel,
            $q$SELECT greatest(c.reltuples::bigint, coalesce(s.n_live_tup, 0))
               FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
               WHERE c.oid = '%s'::regclass$q$) r
        WHERE r.success;
        RETURN n;
    END IF;
    SELECT greatest(c.reltuples::bigint, coalesce(s.n_live_tup, 0)) INTO n
    FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.oid = rel;
    RETURN coalesce(n, 0);
END
$$;
COMMENT ON FUNCTION tokentrace.cluster_row_estimate(regclass) IS
    'On Citus: a relation''s row estimate summed over its shards on the workers (tokentrace: report)';
"""

_ROW_ESTIMATE_LOCAL = "GREATEST(pc.reltuples::bigint, COALESCE(st.n_live_tup, 0::bigint))"


def _view_variant(conn: Conn) -> str | None:
    live = _viewdef(conn, "tokentrace.footprint")
    if "tokentrace.cluster_relation_size(" in live:
        return None  # the variant already
    body = derive(
        live,
        [
            Edit("pg_total_relation_size(pt.relid::regclass)",
                 "tokentrace.cluster_relation_size(pt.relid::regclass)"),
            Edit(_ROW_ESTIMATE_LOCAL, "tokentrace.cluster_row_estimate(pt.relid::regclass)"),
        ],
        "tokentrace.footprint",
    )
    return f"CREATE OR REPLACE VIEW tokentrace.footprint AS {body}"


# The last line of every variant: a function that carries it was made here from the
# original, which a later migration replacing the function removes.
MARKER = "-- tokentrace: the Citus variant (tokentrace.store.citus)"


def _variant(conn: Conn, signature: str, edits: Sequence[Edit]) -> str | None:
    source = _functiondef(conn, signature)
    if MARKER in source:
        return None
    text = derive(source, edits, signature)
    return derive(text, [Edit(r"\n\$function\$\s*$", f"\n{MARKER}\n$function$\n", 1, regex=True)],
                  signature)


def function_variants(conn: Conn) -> list[tuple[str, str | None]]:
    """``(signature, CREATE OR REPLACE …)`` for each function that needs a Citus variant,
    made from its live definition (``None`` where the live one is the variant already)."""
    out: list[tuple[str, str | None]] = []

    sig = "tokentrace.efficiency_range(timestamptz,timestamptz,text)"
    out.append((sig, _variant(conn, sig, [
        Edit("plan_cache_mode TO 'force_generic_plan'", "plan_cache_mode TO 'force_custom_plan'"),
        # Without the OFFSET fence, and without a filter Citus could route to the one
        # shard of the model: a routed query would run window_plan() and span_values()
        # on a worker, reading settings and spans from there (nested distributed
        # execution, refused); unrouted, they run on the coordinator.
        Edit(r"r\.model = model_filter\)(\s*)OFFSET 0\) r\b",
             "(r.model || '') = model_filter)\n            ) r", 1, regex=True),
    ])))

    sig = "tokentrace.expected_latency(integer,integer,text[],timestamptz,interval)"
    out.append((sig, _variant(conn, sig, [
        # Citus cannot push down a LIMIT/OFFSET in a lateral subquery over VALUES; the
        # fence only keeps the planner from merging steps that are MATERIALIZED anyway.
        Edit("AND (wanted IS NULL OR r.model = ANY (wanted))\n            OFFSET 0) r",
             "AND (wanted IS NULL OR r.model = ANY (wanted))\n            ) r"),
    ])))

    sig = "tokentrace.efficiency_series_range(timestamptz,timestamptz,interval,text)"
    out.append((sig, _variant(conn, sig, [
        Edit("plan_cache_mode TO 'force_generic_plan'", "plan_cache_mode TO 'force_custom_plan'"),
    ])))

    sig = "tokentrace.efficiency_series_raw(timestamptz,timestamptz,interval,text)"
    out.append((sig, _variant(conn, sig, [
        Edit(" LANGUAGE sql\n", " LANGUAGE plpgsql\n"),
        Edit("AS $function$\n", "AS $function$\n#variable_conflict use_column\nBEGIN\nRETURN QUERY\n"),
        Edit(r"\n\$function\$\s*$", "\n;\nEND\n$function$\n", 1, regex=True),
    ])))

    sig = "tokentrace.relation_growth(timestamptz)"
    out.append((sig, _variant(conn, sig, [
        Edit("pg_total_relation_size(", "tokentrace.cluster_relation_size(", 2),
    ])))

    sig = "tokentrace.footprint_summary(bigint)"
    out.append((sig, _variant(conn, sig, [
        Edit("greatest(pc.reltuples::bigint, coalesce(st.n_live_tup, 0))",
             "tokentrace.cluster_row_estimate(p.partition)"),
    ])))

    sig = "tokentrace.prune(interval,interval,boolean,boolean)"
    out.append((sig, _variant(conn, sig, [
        Edit("\nBEGIN\n", "\nBEGIN\n    IF defer_release THEN\n"
             "        RAISE EXCEPTION 'prune(defer_release => true) is not available on Citus: "
             "a day partition is a distributed table, dropped on every worker at once'\n"
             "            USING ERRCODE = 'feature_not_supported';\n    END IF;\n"),
        # Citus wants an ON CONFLICT … WHERE on a distributed (here: reference) table to
        # be immutable, and text::timestamptz is not: the same "only ever forward" test,
        # made before the upsert (under prune's lock).
        Edit("    INSERT INTO tokentrace.settings (key, value)\n    VALUES ('raw_horizon',",
             "    IF horizon > tokentrace.raw_horizon() THEN\n"
             "    INSERT INTO tokentrace.settings (key, value)\n    VALUES ('raw_horizon',"),
        Edit("\n    WHERE excluded.value::timestamptz > tokentrace.settings.value::timestamptz;",
             ";\n    END IF;"),
    ])))
    return out


def install_variants(conn: Conn) -> list[str]:
    """(Re)create the Citus variants from the live definitions; returns their names."""
    made: list[str] = []
    conn.execute(_ROLLUP_HEADER)
    trigger_source = _functiondef(conn, TRIGGER_FUNCTION)
    conn.execute(rollup_function_sql(trigger_source).encode())
    conn.execute(
        f"COMMENT ON FUNCTION {ROLLUP_FUNCTION} IS "
        "'On Citus: links and rolls up the spans in pg_temp.tt_inserted, the rows a batch "
        "inserted (made from rollup_new_spans()) (tokentrace: write)'"
    )
    made.append(ROLLUP_FUNCTION)
    conn.execute(_SIZE_FUNCTIONS)
    made += ["tokentrace.cluster_relation_size(regclass)", "tokentrace.cluster_row_estimate(regclass)"]
    for signature, text in function_variants(conn):
        if text is None:
            continue  # the live function is our variant already
        comment = _comment(conn, signature)
        conn.execute(text.encode())
        if comment is not None:
            conn.execute(sql.SQL("COMMENT ON FUNCTION {} IS {}").format(
                sql.SQL(signature), sql.Literal(comment)))
        made.append(signature)
    view = _view_variant(conn)
    if view is not None:
        conn.execute(view.encode())
        made.append("tokentrace.footprint")
    # REVOKE/GRANT on every object in a multi-shard transaction: Citus asks for one connection.
    conn.execute(
        "ALTER FUNCTION tokentrace.grant_reader(text, text) SET citus.multi_shard_modify_mode TO 'sequential'"
    )
    conn.execute("SELECT tokentrace.secure_report_functions()")
    return made


# rollup_staged() reads this table; it must exist when the function is created and
# whenever it runs (each writer session creates its own).
_ROLLUP_HEADER = (
    f"CREATE TEMP TABLE IF NOT EXISTS {INSERTED} "
    "(LIKE tokentrace.spans INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)


def create_write_tables(conn: Conn) -> None:
    """The session's staging tables for the Citus write path."""
    conn.execute(_ROLLUP_HEADER)
    conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {STAGING} "
        "(LIKE tokentrace.spans INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )


# --- the layout --------------------------------------------------------------------
def _distributed_tables(conn: Conn) -> set[str]:
    rows = conn.execute(
        "SELECT logicalrelid::regclass::text FROM pg_catalog.pg_dist_partition"
    ).fetchall()
    return {str(r[0]) for r in rows}


def _drop_span_triggers(conn: Conn) -> None:
    rows = conn.execute(
        "SELECT t.tgname, t.tgfoid::regprocedure::text FROM pg_catalog.pg_trigger t "
        "WHERE t.tgrelid = 'tokentrace.spans'::regclass AND NOT t.tgisinternal"
    ).fetchall()
    for name, function in rows:
        if str(function) != TRIGGER_FUNCTION:
            raise CitusSchemaError(
                f"trigger {name} on tokentrace.spans runs {function}, which has no Citus variant"
            )
        conn.execute(sql.SQL("DROP TRIGGER {} ON tokentrace.spans").format(sql.Identifier(str(name))))


def distribute(conn: Conn) -> list[str]:
    """Lay out the migrated schema on the cluster (idempotent) and (re)install the
    variants. Runs in the caller's transaction (``migrate``'s, under its lock)."""
    done: list[str] = []
    _drop_span_triggers(conn)
    have = _distributed_tables(conn)
    for table in _REFERENCE:
        if table not in have:
            conn.execute("SELECT create_reference_table(%s)", (table,))
            done.append(table)
    for table in _BY_TRACE:
        if table not in have:
            conn.execute(
                "SELECT create_distributed_table(%s, 'trace_id', colocate_with => %s)",
                (table, "none" if table == _BY_TRACE[0] else _BY_TRACE[0]),
            )
            done.append(table)
    for table in _BY_MODEL:
        if table not in have:
            conn.execute("SELECT create_distributed_table(%s, 'model')", (table,))
            done.append(table)
    # Any other table a migration added: small by rule (a big one is listed above).
    others = conn.execute(
        "SELECT c.oid::regclass::text, c.relkind FROM pg_catalog.pg_class c "
        "WHERE c.relnamespace = 'tokentrace'::regnamespace AND c.relkind IN ('r', 'p') "
        "AND NOT c.relispartition "
        "AND NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition d WHERE d.logicalrelid = c.oid)"
    ).fetchall()
    for name, kind in others:
        if str(kind) == "p":
            raise CitusSchemaError(f"{name} is partitioned and has no distribution in tokentrace.store.citus")
        conn.execute("SELECT create_reference_table(%s)", (str(name),))
        done.append(str(name))
    for table in done:
        # The rows copied to the shards stay in the coordinator's own table, unseen.
        conn.execute("SELECT truncate_local_data_after_distributing_table(%s)", (table,))
    install_variants(conn)
    return done
