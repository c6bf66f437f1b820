"""The Citus variants are made from the live functions by checked text edits."""

from __future__ import annotations

import re

import pytest

from tokentrace.store import citus
from tokentrace.store.schema import schema_file


def _function(name: str) -> str:
    text = schema_file().read_text("utf-8")
    match = re.search(rf"^CREATE FUNCTION {re.escape(name)}\(.*?^\$\$;$", text, re.S | re.M)
    assert match, name
    return match.group(0)


def test_the_rollup_function_is_the_trigger_over_the_staged_rows() -> None:
    source = _function("tokentrace.rollup_new_spans")
    made = citus.rollup_function_sql(source)
    assert "FUNCTION tokentrace.rollup_staged()" in made and " RETURNS void" in made
    assert not re.search(r"(?<![\w.])new_spans\b", made)
    assert made.count("pg_temp.tt_inserted") == len(re.findall(r"(?<![\w.])new_spans\b", source))
    assert "PERFORM pg_advisory_xact_lock(hashtext('tokentrace.rollup'));" in made
    # Nothing else changed: undoing the edits gives the source back.
    undone = (made.replace("FUNCTION tokentrace.rollup_staged()", "FUNCTION tokentrace.rollup_new_spans()")
              .replace(" RETURNS void", " RETURNS trigger")
              .replace("\n    PERFORM pg_advisory_xact_lock(hashtext('tokentrace.rollup'));", "")
              .replace("pg_temp.tt_inserted", "new_spans")
              .replace("RETURN;", "RETURN NULL;")
              .replace("unique_violation OR internal_error THEN", "unique_violation THEN")
              .replace("coalesce((c.trace_id, c.span_id) IN (SELECT k.trace_id, k.parent_span_id "
                       "FROM calls k WHERE k.parent_span_id IS NOT NULL), false)",
                       "EXISTS (SELECT FROM calls k\n                       "
                       "WHERE k.trace_id = c.trace_id AND k.parent_span_id = c.span_id)"))
    assert undone == source


def test_an_edit_that_no_longer_applies_is_an_error_not_a_drift() -> None:
    with pytest.raises(citus.CitusSchemaError, match=r"expected 1 match\(es\) of 'OFFSET 0' .* found 0"):
        citus.derive("SELECT 1", [citus.Edit("OFFSET 0", "")], "f()")
    with pytest.raises(citus.CitusSchemaError, match=r"expected 1 match\(es\) .* found 2"):
        citus.derive("a a", [citus.Edit("a", "b")], "f()")
    assert citus.derive("a a", [citus.Edit("a", "b", None)], "f()") == "b b"


def test_a_trigger_reading_trigger_variables_has_no_variant() -> None:
    source = _function("tokentrace.rollup_new_spans").replace("RETURN NULL;", "RAISE NOTICE '%', TG_OP;\n    RETURN NULL;")
    with pytest.raises(citus.CitusSchemaError, match="reads trigger variables"):
        citus.rollup_function_sql(source)
