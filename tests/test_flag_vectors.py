"""The shared flag vectors (tests/fixtures/flag_vectors.json) are this engine's answers.

The Node client's suite evaluates the same file; together the two suites prove both
engines agree on every operator, rollout edge, variant, date, dependency and id.
"""

from __future__ import annotations

import json

import msgspec

from fpcd.client.model import compile_document, to_context
from fpcd.domain.flags import evaluate
from tests.flag_vectors import CASES, PATH, render


def test_the_vector_file_is_what_the_engine_answers_now() -> None:
    # Regenerate with `python -m tests.flag_vectors` after a deliberate rule change.
    assert PATH.read_text(encoding="utf-8") == render()


def test_every_vector_evaluates_from_the_file_alone() -> None:
    vectors = json.loads(PATH.read_text(encoding="utf-8"))
    compiled = {}
    for doc in vectors["flags"]:
        flag = compile_document(doc)
        if flag is not None:
            compiled[doc["key"]] = flag
    cases = vectors[CASES]
    assert len(cases) > 3000
    reasons = set()
    for key, index, expected in cases:
        context = to_context(vectors["contexts"][index], vectors["defaultEnvironment"])
        result = evaluate(compiled.get(key, key), context, vectors["now"], compiled.get)
        assert msgspec.to_builtins(result) == expected, (key, vectors["contexts"][index])
        reasons.add((expected["reason"], expected.get("detail")))
    # The file exercises every branch of the evaluation order.
    assert {r for r, _ in reasons} == {
        "STATIC", "DEFAULT", "TARGETING_MATCH", "SPLIT", "DISABLED", "ERROR"
    }  # fmt: skip
    details = {d for _, d in reasons}
    assert {
        "scheduled", "ended", "excluded", "targeted", "not_targeted", "rollout_0",
        "no_stickiness_id", "not_in_rollout", "dependency:disabled",
    } <= details  # fmt: skip
