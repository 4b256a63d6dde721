"""The task registry: checkers, splits, determinism, wrong answers."""

from __future__ import annotations

import random

import pytest

from loops_runner.tasks import (
    DEFAULT_FAMILIES,
    FAMILIES,
    as_conversation,
    as_messages,
    normalise,
    sample_rows,
    score,
    split_of,
    wrong_answer,
)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_accepts_its_answer_and_format_variants(family: str) -> None:
    rows = sample_rows(30, families=[family], seed=5)
    for row in rows:
        answer = row["answer"]
        for variant in (answer, f"  {answer}\n", f"{answer}.", f"{answer}!", f'"{answer}"',
                        f"{answer} ", answer.replace(" ", "  ")):
            assert score(row, variant) == 1.0, (row, variant)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_refuses_wrong_answers(family: str) -> None:
    rng = random.Random(0)
    for row in sample_rows(30, families=[family], seed=6):
        wrong = wrong_answer(row, rng)
        assert wrong != row["answer"]
        assert score(row, wrong) == 0.0
        assert score(row, "") == 0.0
        assert score(row, f"{row['answer']} {row['answer']}x") == 0.0
        assert score(row, f"The answer is {row['answer']}") == 0.0


def test_numbers_compare_as_integers_and_case_matters_only_for_capitals() -> None:
    add = {"family": "addition", "answer": "42"}
    assert score(add, "042") == 1.0 and score(add, "+42") == 1.0
    assert score(add, "4 2") == 0.0 and score(add, "41 or 42") == 0.0 and score(add, "42.5") == 0.0
    caps = {"family": "capitals", "answer": "RED FOX"}
    assert score(caps, "RED FOX.") == 1.0 and score(caps, "red fox") == 0.0
    rev = {"family": "reverse", "answer": "der"}
    assert score(rev, "DER") == 1.0
    assert normalise("  'Hello   World'. ") == "hello world"


def test_unknown_family_is_named() -> None:
    with pytest.raises(ValueError, match="unknown family 'poetry'"):
        score({"family": "poetry", "answer": "x"}, "x")
    with pytest.raises(ValueError, match=r"unknown task families \['poetry'\]"):
        sample_rows(3, families=["poetry"])
    with pytest.raises(ValueError, match="difficulties must be 1, 2 or 3"):
        sample_rows(3, difficulties=[4])


def test_heldout_never_overlaps_train() -> None:
    train = sample_rows(20000, split="train", seed=0)
    heldout = sample_rows(2000, split="heldout", seed=0, unique=True)
    assert {r["prompt"] for r in train}.isdisjoint(r["prompt"] for r in heldout)
    assert all(split_of(r["family"], r["prompt"]) == "train" for r in train)
    assert all(split_of(r["family"], r["prompt"]) == "heldout" for r in heldout)
    assert len({r["prompt"] for r in heldout}) == len(heldout)


def test_rows_are_deterministic_and_cover_families_and_difficulties() -> None:
    rows = sample_rows(300, seed=3)
    assert rows == sample_rows(300, seed=3)
    assert rows != sample_rows(300, seed=4)
    assert {r["family"] for r in rows} == set(DEFAULT_FAMILIES) < set(FAMILIES)
    assert {r["family"] for r in sample_rows(300, families=list(FAMILIES))} == set(FAMILIES)
    assert {r["difficulty"] for r in rows} == {1, 2, 3}
    assert all(set(r) == {"id", "family", "difficulty", "prompt", "answer"} for r in rows)


def test_difficulty_grades_the_questions() -> None:
    def mean_answer(difficulty: int) -> float:
        rows = sample_rows(60, families=["addition"], difficulties=[difficulty], seed=1)
        return sum(int(r["answer"]) for r in rows) / len(rows)

    assert mean_answer(1) < mean_answer(2) < mean_answer(3)


def test_small_families_run_out_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"only .* distinct heldout questions"):
        sample_rows(500, split="heldout", families=["larger"], difficulties=[1], unique=True)


def test_rows_render_as_chats() -> None:
    row = sample_rows(1, seed=0)[0]
    assert as_messages(row) == [{"role": "user", "content": row["prompt"]}]
    assert as_conversation(row)["messages"][-1] == {"role": "assistant",
                                                    "content": row["answer"]}
