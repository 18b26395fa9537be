import numpy as np
import pytest

from mtdp_core.errors import ConfigurationError
from mtdp_core.evaluation.ranking import ScoreTable, average_rank, compare, rank_matrix, select_method

# Hand-made: 3 methods x 4 tasks, 2 seeds each; the means are the numbers in the comments.
RUNS = {
    #      t1 (A > C > B)   t2 (B = C > A)   t3 (B > A > C)   t4 (A > C > B)
    "A": [(0.89, 0.91), (0.69, 0.71), (0.60, 0.60), (0.98, 1.00)],  # 0.90 0.70 0.60 0.99
    "B": [(0.80, 0.80), (0.74, 0.76), (0.64, 0.66), (0.90, 0.90)],  # 0.80 0.75 0.65 0.90
    "C": [(0.84, 0.86), (0.75, 0.75), (0.45, 0.55), (0.95, 0.95)],  # 0.85 0.75 0.50 0.95
}
TASKS = ["t1", "t2", "t3", "t4"]


@pytest.fixture
def table():
    records = [
        {"method": m, "task": t, "seed": s, "score": v}
        for m, per_task in RUNS.items()
        for t, runs in zip(TASKS, per_task)
        for s, v in enumerate(runs)
    ]
    return ScoreTable.from_records(records)


def test_ranks_by_hand(table):
    # Worked out by hand: per task, 1 = best, ties averaged (t2: B and C share ranks 1 and 2 -> 1.5).
    expected = np.array(
        [
            [1, 3, 2, 1],  # A
            [3, 1.5, 1, 3],  # B
            [2, 1.5, 3, 2],  # C
        ]
    )
    np.testing.assert_array_equal(rank_matrix(table), expected)
    # Eq. 2: mean rank over tasks. A: 7/4, B: 8.5/4, C: 8.5/4.
    np.testing.assert_allclose(average_rank(table), [1.75, 2.125, 2.125])


def test_selection_ignores_the_target_tasks_own_rank(table):
    # Overall, A has the best average rank; but leaving out t1 (where A is first):
    # A = (3+2+1)/3 = 2.0, B = (1.5+1+3)/3 = 1.83, C = (1.5+3+2)/3 = 2.17 -> B.
    np.testing.assert_allclose(average_rank(table, exclude=["t1"]), [2.0, 11 / 6, 13 / 6])
    assert select_method(table, "t1") == "B"
    assert select_method(table, "t4") == "B"  # same numbers by symmetry of t1 and t4
    # Leaving out t2: A = (1+2+1)/3 = 1.33, B = 7/3, C = 7/3 -> A.
    assert select_method(table, "t2") == "A"
    # Leaving out t3: A = 5/3, B = 7.5/3, C = 5.5/3 -> A.
    assert select_method(table, "t3") == "A"
    # Leaving out a whole set {t1, t4}: A = (3+2)/2 = 2.5, B = (1.5+1)/2 = 1.25, C = (1.5+3)/2 = 2.25 -> B.
    assert select_method(table, "t1", exclude=["t1", "t4"]) == "B"


def test_means_and_stds_over_seeds(table):
    np.testing.assert_allclose(table.mean()[0], [0.90, 0.70, 0.60, 0.99])
    # Sample std (ddof=1) of two runs x, y: |x - y| / sqrt(2).
    # C: (0.84, 0.86), (0.75, 0.75), (0.45, 0.55), (0.95, 0.95).
    np.testing.assert_allclose(table.std()[2], [0.02 / np.sqrt(2), 0.0, 0.1 / np.sqrt(2), 0.0], atol=1e-12)
    np.testing.assert_allclose(table.std(ddof=0)[2], [0.01, 0.0, 0.05, 0.0], atol=1e-12)  # population std


def test_the_two_sigma_rule():
    # delta 0.07 vs 2 x 0.02 (sample std of 0.80, 0.82, 0.84) = 0.04: significant.
    c = compare([0.80, 0.82, 0.84], [0.75])
    assert c.delta == pytest.approx(0.07) and c.threshold == pytest.approx(0.04)
    assert c.significant and c.verdict == "better"
    # delta 0.07 vs 2 x 0.0707 = 0.141: not significant.
    assert compare([0.80, 0.90], [0.78]).verdict == "same"
    # The larger of the two stds counts, and the sign gives the direction.
    c = compare([0.70], [0.80, 0.80, 0.81])
    assert c.verdict == "worse" and c.threshold == pytest.approx(2 * np.std([0.80, 0.80, 0.81], ddof=1))
    assert not compare([0.5, 0.7], [0.5, 0.7]).significant  # equal means
    one_each = compare([0.9], [0.1])  # no spread to test a difference against
    assert not one_each.significant and one_each.verdict == "untested" and not one_each.testable


def test_ddof_changes_the_verdict_and_the_sample_std_is_the_default():
    # By hand: a = [0.80, 0.84], mean 0.82; b = [0.77] (one run, std 0); delta = 0.05.
    # ddof=0: std(a) = 0.02, threshold 0.04 < 0.05 -> significant.
    # ddof=1: std(a) = sqrt((0.02^2 + 0.02^2) / 1) = 0.028284, threshold 0.056569 > 0.05 -> not significant.
    population = compare([0.80, 0.84], [0.77], ddof=0)
    assert population.std_a == pytest.approx(0.02) and population.threshold == pytest.approx(0.04)
    assert population.verdict == "better"
    sample = compare([0.80, 0.84], [0.77], ddof=1)
    assert sample.std_a == pytest.approx(0.0282843, abs=1e-7) and sample.threshold == pytest.approx(0.0565685, abs=1e-7)
    assert sample.verdict == "same"
    # The default is the sample std: the paper and its code do not say which, and ddof=0 overstates significance.
    assert compare([0.80, 0.84], [0.77]) == sample


def test_incomplete_tables_cannot_be_ranked(table):
    partial = ScoreTable.from_records(
        [{"method": "A", "task": "t1", "score": 1.0}, {"method": "B", "task": "t2", "score": 1.0}]
    )
    with pytest.raises(ConfigurationError, match="no score on task"):
        rank_matrix(partial)
    with pytest.raises(ConfigurationError, match="Unknown task"):
        select_method(table, "t9")


def test_csv_round_trip(table, tmp_path):
    path = table.to_csv(tmp_path / "scores.csv")
    again = ScoreTable.from_csv(path)
    assert again.methods == table.methods and again.tasks == table.tasks
    np.testing.assert_allclose(again.scores, table.scores)
    (tmp_path / "bad.csv").write_text("name,score\nA,1\n")
    with pytest.raises(ConfigurationError, match="lacks the column"):
        ScoreTable.from_csv(tmp_path / "bad.csv")
