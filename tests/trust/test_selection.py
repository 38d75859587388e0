"""Self-selection of α and image space: the one-SE rule, the cross-fitted fallback to MSP, leave-one-out
prototypes, the vectorised bootstrap metrics and the anchored rule (issue 14's --tune fix)."""

from __future__ import annotations

import numpy as np
import pytest

from app.trust.metrics import aurc, auroc, eaurc
from app.trust.prototypes import PrototypeBank
from app.trust.scores import l2_normalize, trustvlm_scores
from app.trust.selection import (
    MSP,
    Candidate,
    CandidateScores,
    aurc_rows,
    auroc_rows,
    candidate_grid,
    eaurc_rows,
    loo_similarities,
    prototype_similarities,
    score_candidates,
    select_candidate,
)


def world(n: int, informative: float, seed: int, c: int = 5, f: int = 16) -> dict[str, np.ndarray]:
    """Text logits that are right ~45 % of the time; an image space whose features carry the label with
    weight ``informative`` (0 = pure noise)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    centres = l2_normalize(rng.normal(size=(c, f)))
    logits = 1.6 * rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels]
    feats = informative * centres[labels] + 0.5 * rng.normal(size=(n, f))
    support_labels = np.repeat(np.arange(c), 16)
    support = informative * centres[support_labels] + 0.5 * rng.normal(size=(support_labels.size, f))
    bank = PrototypeBank.from_features(support, support_labels, c)
    return {
        "labels": labels,
        "logits": logits,
        "feats": feats,
        "protos": bank.prototypes(),
        "mask": bank.has_prototype,
    }


def selection_on(w: dict[str, np.ndarray], spaces: dict[str, np.ndarray] | None = None, **kw: object):
    spaces = spaces or {"own": w["feats"]}
    sims = {name: prototype_similarities(f, w["protos"], w["mask"]) for name, f in spaces.items()}
    grid = candidate_grid(list(spaces))
    scores = score_candidates(w["logits"], w["labels"], sims, grid)
    return select_candidate(scores, grid, evidence="calibration", **kw), scores  # type: ignore[arg-type]


def test_grid_is_msp_then_smaller_alpha_then_own_space_first() -> None:
    names = [c.name for c in candidate_grid(["own", "lite0"], alphas=(2.0, 0.5))]
    assert names == [MSP, "own@α=0.5", "lite0@α=0.5", "own@α=2", "lite0@α=2"]
    with pytest.raises(ValueError):
        candidate_grid(["own"], alphas=(0.0, 1.0))


def test_candidate_scores_equal_trustvlm_scores() -> None:
    w = world(200, 1.0, seed=1)
    sims = {"own": prototype_similarities(w["feats"], w["protos"], w["mask"])}
    for score in ("trustvlm", "trustvlm_star"):
        scores = score_candidates(
            w["logits"], w["labels"], sims, [Candidate(), Candidate(2.0, "own")], score=score
        )
        ref = trustvlm_scores(w["logits"], w["feats"], w["protos"], w["mask"], alpha=2.0)
        np.testing.assert_allclose(scores.confidence["own@α=2"], getattr(ref, score))
        judged = ref.refined_prediction if score == "trustvlm_star" else ref.prediction
        np.testing.assert_array_equal(scores.correct["own@α=2"], judged == w["labels"])
        np.testing.assert_allclose(scores.confidence[MSP], ref.s_it)


def test_an_informative_space_is_chosen_with_its_evidence() -> None:
    selection, scores = selection_on(world(400, 1.5, seed=2))
    assert selection.chosen != MSP and selection.alpha > 0 and selection.space == "own"
    assert selection.evidence == "calibration" and selection.n == 400 and selection.fallback is None
    assert selection.crossfit_gain is not None and selection.crossfit_gain > 0
    assert len(selection.crossfit_choices) == 5
    rows = {r.name: r for r in selection.candidates}
    assert set(rows) == set(scores.confidence)
    chosen = rows[selection.chosen]
    assert chosen.aurc == pytest.approx(
        aurc(scores.confidence[selection.chosen], scores.correct[selection.chosen])
    )
    assert chosen.aurc_interval[0] <= chosen.aurc <= chosen.aurc_interval[1]
    assert chosen.aurc_minus_msp < 0 and chosen.aurc_minus_msp_interval[1] < 0
    assert chosen.within_one_se and rows[MSP].auroc < chosen.auroc  # type: ignore[operator]
    assert selection.model_dump_json()  # JSON-ready for storing with a label set


def test_a_useless_space_keeps_msp_in_most_draws() -> None:
    """Pure-noise image space at a few hundred samples: the rule must nearly always stay with MSP (it
    may only pick a fusion whose gain is within noise, never a clearly worse one)."""
    kept_msp = 0
    for seed in range(12):
        selection, scores = selection_on(world(300, 0.0, seed=seed), replicates=200)
        kept_msp += selection.chosen == MSP
        msp_aurc = aurc(scores.confidence[MSP], scores.correct[MSP])
        chosen_aurc = aurc(scores.confidence[selection.chosen], scores.correct[selection.chosen])
        assert chosen_aurc <= msp_aurc + 1e-12
    assert kept_msp >= 10


def test_two_spaces_pick_the_informative_one() -> None:
    w = world(400, 1.5, seed=3)
    noise = np.random.default_rng(9).normal(size=w["feats"].shape)
    selection, _ = selection_on(w, {"noise": noise, "good": w["feats"]})
    assert selection.space == "good"


def test_too_few_errors_choose_msp_and_say_why() -> None:
    w = world(100, 1.5, seed=4)
    w["logits"] = w["logits"] + 20 * np.eye(5)[w["labels"]]  # always right
    selection, _ = selection_on(w)
    assert selection.chosen == MSP and "too little evidence" in (selection.fallback or "")
    assert selection.candidates == []


def test_identical_candidates_choose_the_simplest() -> None:
    rng = np.random.default_rng(5)
    conf, correct = rng.random(200), rng.random(200) < 0.5
    scores = CandidateScores({MSP: conf, "own@α=1": conf.copy()}, {MSP: correct, "own@α=1": correct})
    selection = select_candidate(scores, [Candidate(), Candidate(1.0, "own")], evidence="calibration")
    assert selection.chosen == MSP and selection.best == MSP


def test_crossfit_fallback_to_msp_is_applied_and_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.trust import selection as module

    w = world(400, 1.5, seed=2)
    assert selection_on(w)[0].chosen != MSP
    monkeypatch.setattr(module, "_crossfit_gain", lambda *a, **k: (-0.002, 0.001, [MSP] * 5))
    selection = selection_on(w)[0]
    assert selection.chosen == MSP and selection.best != MSP
    assert "cross-fitted" in (selection.fallback or "") and selection.crossfit_gain == -0.002


def test_loo_similarities_equal_brute_force() -> None:
    rng = np.random.default_rng(6)
    feats = rng.normal(size=(13, 4))
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 1, 0, 2])
    labels[5] = 4  # class 4 has one image; class 2 keeps one (index 12)
    sims, valid = loo_similarities(feats, labels, num_classes=5)
    for i in range(13):
        keep = np.arange(13) != i
        bank = PrototypeBank.from_features(feats[keep], labels[keep], 5)
        expected = l2_normalize(feats[i]) @ bank.prototypes().astype(np.float64).T
        np.testing.assert_array_equal(valid[i], bank.has_prototype)
        np.testing.assert_allclose(sims[i][valid[i]], expected[valid[i]], atol=1e-6)
    assert not valid[5, 4] and not valid[12, 2]


def test_support_loo_selection_runs_and_says_so() -> None:
    w = world(200, 1.5, seed=7)
    rng = np.random.default_rng(0)
    support_labels = np.repeat(np.arange(5), 30)
    centres = l2_normalize(rng.normal(size=(5, 16)))
    feats = 1.5 * centres[support_labels] + 0.5 * rng.normal(size=(150, 16))
    logits = 1.6 * rng.normal(size=(150, 5)) + 1.5 * np.eye(5)[support_labels]
    grid = candidate_grid(["own"])
    scores = score_candidates(
        logits, support_labels, {"own": loo_similarities(feats, support_labels, 5)}, grid
    )
    selection = select_candidate(scores, grid, evidence="support-loo")
    assert selection.evidence == "support-loo" and selection.chosen != MSP
    del w


def test_vectorised_bootstrap_metrics_match_the_reference() -> None:
    rng = np.random.default_rng(8)
    conf = np.round(rng.random((6, 50)), 1)  # ties
    correct = (rng.random((6, 50)) < 0.6).astype(np.int64)
    for r in range(6):
        assert aurc_rows(conf, correct)[r] == pytest.approx(aurc(conf[r], correct[r]))
        assert auroc_rows(conf, correct)[r] == pytest.approx(auroc(conf[r], correct[r]))
        assert eaurc_rows(conf, correct)[r] == pytest.approx(eaurc(conf[r], correct[r]))


def test_anchored_rule_keeps_the_default_unless_the_evidence_beats_it() -> None:
    """Issue 14's ``--tune`` fix: from a default in use (α = 4, near the best), the anchored rule keeps it
    where the free rule moves to its own simplest pick (α = 2); from a harmful default (α = 8 on a
    pure-noise space) it moves to MSP, which beats it clearly."""
    anchor = Candidate(4.0, "own")
    kept = moved_free = 0
    for seed in range(6):
        w = world(300, 1.5, seed=seed)
        selection, _ = selection_on(w, replicates=200, anchor=anchor)
        kept += selection.chosen == anchor.name
        moved_free += selection_on(w, replicates=200)[0].chosen != anchor.name
        assert selection.anchor == anchor.name and "default" in selection.rule
    assert kept >= 5 and moved_free >= 5
    harmful = Candidate(8.0, "own")
    for seed in range(3):
        selection, scores = selection_on(world(300, 0.0, seed=seed), replicates=200, anchor=harmful)
        assert selection.chosen == MSP and selection.fallback is None
        assert selection.crossfit_gain is not None and selection.crossfit_gain_se is not None
        assert selection.crossfit_gain > selection.crossfit_gain_se
        assert aurc(scores.confidence[MSP], scores.correct[MSP]) < aurc(
            scores.confidence[harmful.name], scores.correct[harmful.name]
        )


def test_anchor_must_be_in_the_grid() -> None:
    with pytest.raises(ValueError, match="anchor"):
        selection_on(world(100, 1.0, seed=1), anchor=Candidate(3.0, "own"))
