"""Hostile text is stored as text: no quoting, ';' or '--' reaches the SQL parser.

The seed's ``execute_sql "INSERT ... VALUES ('$name')"`` would run these as SQL.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import inspect

from cfn.errors import InvalidInputError
from cfn.store.records import ApprovalInput
from cfn.store.repository import Store

HOSTILE = [
    "x'); DROP TABLE skills; --",
    "' OR '1'='1",
    'quote " double',
    "semi;colon; DELETE FROM approval_history;",
    "dash -- comment",
    "/* block */ name",
    "back\\slash\\'",
    "unicode ☃ ü 𝄞",
    "%s %(name)s ? :name $1",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_skill_names_and_agent_ids_round_trip(store: Store, name: str) -> None:
    store.upsert_skill("innocent", "0" * 64, "skills/innocent.md")
    record, _ = store.upsert_skill(name, "1" * 64, "skills/x.md")
    assert record.name == name
    assert store.get_skill(name).id == record.id
    metadata = json.dumps({"note": name, "nul": "a\x00b", "sql": "'; DROP TABLE skills; --"})
    approval = store.add_approval(name, name, "REJECT", 0.25, metadata)
    history = store.history(name)
    assert [(h.agent_id, h.decision, h.confidence) for h in history] == [(name, "REJECT", 0.25)]
    # Metadata comes back as the same JSON value, NUL included (escaped as \u0000).
    assert json.loads(history[0].metadata or "") == json.loads(metadata)
    assert history[0].id == approval.id
    # Nothing else was touched: both skills, one approval, every table still there.
    assert sorted(s.name for s in store.list_skills()) == sorted(["innocent", name])
    assert store.history("innocent") == []
    assert {"skills", "approval_history"} <= set(inspect(store.engine).get_table_names())


@pytest.mark.parametrize("field", ["skill_name", "agent_id"])
def test_nul_and_control_characters_are_refused_and_nothing_is_written(
    store: Store, field: str
) -> None:
    store.upsert_skill("ok", "0" * 64, "skills/ok.md")
    for bad in ["a\x00b", "line\nbreak", "esc\x1b[31m"]:
        values = {"skill_name": "ok", "agent_id": "agent", "decision": "DEFER", "confidence": 0.5}
        values[field] = bad
        with pytest.raises(InvalidInputError, match="control character"):
            store.add_approvals([ApprovalInput(**values)])  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="control character"):
        store.upsert_skill("nul\x00name", "0" * 64, "skills/ok.md")
    assert store.row_counts()["approval_history"] == 0
    assert [s.name for s in store.list_skills()] == ["ok"]


@pytest.mark.parametrize(
    "metadata", ["{", "{'single': 1}", "NaN", '{"a": Infinity}', "raw\x00nul", ""]
)
def test_bad_metadata_is_refused(store: Store, metadata: str) -> None:
    store.upsert_skill("ok", "0" * 64, "skills/ok.md")
    with pytest.raises(InvalidInputError, match="metadata is not valid JSON"):
        store.add_approval("ok", "agent", "APPROVE", 0.5, metadata)
    assert store.row_counts()["approval_history"] == 0


def test_lookup_by_hostile_name_matches_nothing_else(store: Store) -> None:
    store.upsert_skill("real", "0" * 64, "skills/real.md")
    assert store.find_skill("' OR '1'='1") is None
    assert store.find_skill("real' --") is None
    assert store.find_skill("%") is None
