"""The Learn page's sentences (``ui.learn``), checked against the lesson they describe: counts,
plurals and claims such as "every weight moves" must be true of the case shown."""

from __future__ import annotations

import re

import pytest

import obsviz
from obsviz.lesson import SCORINGS, Lesson, coupled_toy, first_columns, mode_outcomes

from ui import learn

#: "1 scopes", "2 block", …: a count that disagrees with its noun.
BAD_PLURAL = re.compile(r"\b1 (scopes|blocks|weights|candidates|rows)\b"
                        r"|\b([02-9]|\d\d+) (scope|block|weight|candidate|row)\b(?!s)")


def layer(name: str, k: int):
    src = coupled_toy() if name == "coupled" else obsviz.load_sample_layer(name)
    W, H = first_columns(src.weight, src.hessian, k)
    return W.double(), H.double()


CASES = [("toy", 16, "2:4", 0), ("toy", 16, "2:4-pairs", 3), ("toy", 8, "1:8", 2),
         ("coupled", 64, "block16", 0), ("coupled", 32, "block16", 9),
         ("layer0.query", 16, "block16", 0), ("toy", 16, "coupled-2:4", 5)]


def lessons():
    for name, k, preset, row in CASES:
        W, H = layer(name, k)
        geom = (obsviz.Geometry.nm(1, 8, tuple(W.shape)) if preset == "1:8"
                else obsviz.Geometry.preset(preset, tuple(W.shape)))
        for scoring in SCORINGS:
            yield W, H, geom, Lesson.start(W, H, geom, geom.nnz, row, scoring=scoring)


@pytest.mark.parametrize("case", range(len(CASES) * len(SCORINGS)))
def test_every_sentence_is_true_of_its_case(case):
    W, H, geom, lesson = list(lessons())[case]
    obs_path = lesson
    outcomes = mode_outcomes(W, H, geom, geom.nnz, lesson.rows, scoring=lesson.scoring)
    texts = [learn.case_caption(lesson, W.shape[0]), learn.done_text(lesson, obs_path)]
    if lesson.coupled:
        texts.append(learn.coupled_note(lesson))
    T = lesson.n_steps
    assert ("the one scope decided" in texts[1]) == (T == 1)
    assert f"all {T} scopes decided" in texts[1] or T == 1
    for n in range(1, T + 1):
        texts += [learn.choice_text(lesson, n), learn.biggest_move_text(lesson, n),
                  learn.sums_text(lesson, n)[0]]
        if n < T:
            texts.append(learn.next_text(lesson, n, outcomes))
        step = lesson.steps[n - 1]
        for r in range(len(lesson.rows)):
            text = learn.compensation_text(lesson, n, r)
            texts.append(text)
            free, moved = lesson.free_cols_after(n, r), lesson.moved_cols(n, r)
            if not step.pruned_cols[r]:
                assert "nothing pruned here" in text
                assert ("stay as they were" in text) == (not moved)
                continue
            if not free:
                assert text.endswith("no weight is left to compensate.")
                continue
            every = re.search(r"all (\d+) weights|the only weight", text)
            assert bool(every) == (len(moved) == len(free))
            if every and every.group(1):
                assert int(every.group(1)) == len(free)
            part = re.search(r"(\d+) of the (\d+) weights?", text)
            if part:
                assert (int(part.group(1)), int(part.group(2))) == (len(moved), len(free))
            later = [c for c in moved if c not in set(step.scope_cols(r))]
            assert ("in a later scope" in text or "in later scopes" in text) == (
                bool(moved) and n < T)
            if "every one of them in a later scope" in text:
                assert len(later) == len(moved)
    for text in texts:
        assert not BAD_PLURAL.search(text), text


def test_one_scope_with_nothing_left_to_move_says_so():
    """The issue's case: block16 on 16 columns of layer0.query has one scope; the row that loses
    its block has no weight left, the other keeps its weights: no sentence claims they move."""
    W, H = layer("layer0.query", 16)
    geom = obsviz.Geometry.preset("block16", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, 1, 0)
    assert lesson.n_steps == 1
    done = learn.done_text(lesson, lesson)
    assert done.startswith("Done: the one scope decided;")
    texts = [learn.compensation_text(lesson, 1, r) for r in range(2)]
    assert sorted(t.split(":")[1].strip()[:7] for t in texts) == ["columns", "nothing"]
    assert any(t.endswith("no weight is left to compensate.") for t in texts)
    assert not any("moved" in t for t in texts)
    assert "1 scope on these rows" in learn.case_caption(lesson, W.shape[0])


def test_the_caption_names_what_is_run_and_says_when_nothing_is_pruned():
    W, H = layer("toy", 16)
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    one = Lesson.start(W, H, geom, 1, 0)                   # 2:4 at nnz 1 keeps 1 of 4: 1:4
    assert "**1:4**" in learn.case_caption(one, 8)
    none = Lesson.start(W, H, geom, 4, 0)
    text = learn.case_caption(none, 8)
    assert none.n_steps == 0 and "nothing is pruned" in text and "keeps all 4 blocks" in text
