"""The papers' target numbers load, are self-consistent, and use the keys our metrics produce."""

from __future__ import annotations

import pytest

from mammoflow.evaluation.metrics import classification_report, metric_names, report_with_ci
from mammoflow.evaluation.papers import compare_with_paper, load_paper_results, paper_cell, paper_predictions


def test_loads_and_holds_the_headline_numbers():
    entries = load_paper_results()
    assert {e["paper"] for e in entries} == {"yu2020", "jaamour2023", "xi2018"}
    yu = paper_cell("yu2020", "VGG16_Fusion1")
    assert yu["metrics"]["accuracy"] == 0.8906
    assert yu["branches"] == [1, 2, 3, 4, 5]
    assert yu["protocol"]["level"] == "ROI" and yu["protocol"]["n_test"] == 64
    assert "Yu" in yu["source"]["citation"] and yu["source"]["table"] == "Table 2"
    assert paper_cell("yu2020", "VGG19_Fusion1")["branches"] == [2, 3, 4, 5]  # the row the paper headlines
    assert paper_cell("yu2020", "VGG19_Fusion1", branches=[1, 2, 3, 4, 5])["metrics"]["accuracy"] == 0.8750
    assert paper_cell("yu2020", "VGG16_Fusion2")["metrics"]["tumour_recall"] == 0.9565
    assert paper_cell("yu2020", "VGG16")["metrics"]["accuracy"] == 0.7344
    assert paper_cell("jaamour2023", "baseline")["metrics"]["accuracy"] == 0.6180
    h = paper_cell("jaamour2023", "H")
    assert h["metrics"]["accuracy"] == 0.6740 and h["protocol"]["n_test"] == 641
    assert paper_cell("xi2018", "VGGNet")["metrics"]["accuracy"] == 0.9253
    assert paper_cell("xi2018", "VGGNet", subset="mass")["metrics"]["accuracy"] == 0.9264


def test_unknown_cells_say_what_exists():
    with pytest.raises(KeyError, match="VGG16_Fusion1"):
        paper_cell("yu2020", "VGG16_Fusion9")
    with pytest.raises(KeyError):
        paper_cell("yu2020", "VGG16_Fusion1", branches=[1, 3])


def test_every_entry_has_source_protocol_and_known_metric_keys():
    for e in load_paper_results():
        assert e["source"]["citation"] and e["source"]["table"]
        assert e["protocol"]["level"] in {"ROI", "patch", "image"}
        assert e["protocol"]["split"]
        known = set(metric_names(tuple(e["class_names"]) if e["class_names"] else ("negative", "positive")))
        assert set(e["metrics"]) <= known, (e["model"], set(e["metrics"]) - known)
        assert all(v is None or 0 <= v <= 1 for v in e["metrics"].values())


def test_yu_counts_reproduce_every_printed_number():
    yu = [e for e in load_paper_results() if e["paper"] == "yu2020"]
    assert len(yu) == 26  # Table 1 (8 rows) + Table 2 (8) + Table 3 (10)
    for e in yu:
        y_true, y_pred = paper_predictions(e)
        assert (y_true == 0).sum() == 41 and (y_true == 1).sum() == 23  # the released test split
        ours = classification_report(y_true, y_pred.astype(float), y_pred=y_pred)["metrics"]
        for name, printed in e["metrics"].items():
            if printed is not None:
                assert ours[name] == pytest.approx(printed, abs=6e-5), (e["model"], e["branches"], name)


def test_compare_with_paper_puts_a_ci_on_the_papers_own_numbers():
    cell = paper_cell("yu2020", "VGG16_Fusion1")
    y_true, y_pred = paper_predictions(cell)
    report = report_with_ci(y_true, y_pred.astype(float), y_pred=y_pred, n_resamples=500, seed=0)
    rows = {r["metric"]: r for r in compare_with_paper(report, cell)}
    assert set(rows) == set(cell["metrics"])
    acc = rows["accuracy"]
    assert acc["delta"] == pytest.approx(0, abs=6e-5) and acc["paper_within_ci"]
    # 64 test ROIs: the paper's 0.8906 is compatible with anything from about 0.8 to 0.97
    assert acc["ci_high"] - acc["ci_low"] > 0.1
    with pytest.raises(ValueError):
        paper_predictions(paper_cell("jaamour2023", "H"))
