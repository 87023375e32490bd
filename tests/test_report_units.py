"""Small hand-computed checks of render.py (FittedTable's column widths, the figures of the
`poi report` table) and of study/report.py (`poi report`: finding runs, reading results.csv,
method and variant names, the tables by noise and seed, the cross-validation rows, report.md's
cells): each pins one behaviour a mutation audit found unguarded.

The tests marked `deploy` import neither torch nor pandas (this file is collected in
.venv-deploy too); the others import study/report.py (pandas, torch) inside the test.
Everything is generated in tmp_path, and no model is trained or run.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from poi_cli import render
from poi_cli.render import FittedTable

deploy = pytest.mark.deploy


def _rendered(table: FittedTable, width: int) -> str:
    console = Console(file=io.StringIO(), width=width)
    console.print(table)
    return console.file.getvalue()


def _table(*columns: tuple[str, str]) -> FittedTable:
    """One row; columns as (header, cell)."""
    table = FittedTable()
    for header, _ in columns:
        table.add_column(header)
    table.add_row(*(cell for _, cell in columns))
    return table


def _widths(table: FittedTable, width: int) -> list:
    _rendered(table, width)
    return [column.width for column in table.columns]


def _cells(text: str) -> list[list[str]]:
    """The body rows of a rendered table, as lists of stripped cells."""
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]


# ------------------------------------------------------------------- render.FittedTable
# Each table below has 2 columns: padding 1 + 1 per column and 3 border characters (two edges,
# one separator), so the room for the cells is the console width - 4 - 3.


@deploy
def test_a_table_exactly_as_wide_as_the_console_is_left_whole():
    # guards the border count: one separator fewer than columns (+ 2 edges); counting one per
    # column left the room one short and folded a table that fits exactly
    table = _table(("a", "xxxx yyyy"), ("b", "zz"))  # 9 + 2 cells + 4 padding + 3 borders = 18
    assert _cells(_rendered(table, 18)) == [["xxxx yyyy", "zz"]]
    assert _cells(_rendered(table, 17)) == [["xxxx", "zz"], ["yyyy", ""]]  # one short: the space breaks


@deploy
def test_spare_width_goes_first_to_the_column_that_needs_the_least_more():
    # guards the order of the spare width (least needed first) and its cap at each column's
    # widest cell: room 18 - 7 = 11; longest words 2 and 4 leave 5 spare; "aa bb" needs 3 more
    # (to 5, one line), the other column 10: it gets the remaining 2 (to 6)
    table = _table(("a", "aa bb"), ("b", "cccc dddd eeee"))
    assert _widths(table, 18) == [5, 6]
    assert _cells(_rendered(table, 18)) == [["aa bb", "cccc"], ["", "dddd"], ["", "eeee"]]


@deploy
def test_a_header_keeps_its_longest_word_where_the_width_allows_it():
    # guards the headers' words in the first widths tried: room 19 - 7 = 12 holds "confidence" (10)
    # and the longest cell word of the other column (2), so the header is not folded (the other
    # column, which needs 3 more, would have taken the width first and left 7 for "confidence")
    table = _table(("confidence", "9"), ("b", "aa bb"))
    assert _widths(table, 19) == [10, 2]
    assert "confidence" in _rendered(table, 19)


@deploy
def test_too_narrow_for_the_words_folds_only_the_longest():
    # guards which column is narrowed when even the longest words do not fit: room 15 - 7 = 8 for
    # words of 10 and 2: the 10 goes down to 6, the short one stays whole
    table = _table(("a", "abcdefghij"), ("b", "xy"))
    assert _widths(table, 15) == [6, 2]
    assert _cells(_rendered(table, 15)) == [["abcdef", "xy"], ["ghij", ""]]


@deploy
def test_widths_are_chosen_again_at_each_width():
    # guards the reset of the widths of an earlier (narrower) render: printed wide, it is one line
    table = _table(("a", "abcdefghij"), ("b", "xy"))
    assert _widths(table, 15) == [6, 2]
    assert _cells(_rendered(table, 80)) == [["abcdefghij", "xy"]]


# ------------------------------------------------------------------ render.report_summary


def _report_result(tmp_path: Path, summary_rows: list[dict], cv_rows: list[dict], files: list[str]) -> SimpleNamespace:
    import pandas as pd

    return SimpleNamespace(summary=pd.DataFrame(summary_rows), cross_validation=pd.DataFrame(cv_rows),
                           files=[tmp_path / name for name in files], out_dir=tmp_path, runs=summary_rows, skipped=[])


def test_the_report_table_shows_each_figure_in_its_column(tmp_path):
    # guards epochs as done/planned (not planned/done), best val from best_val_acc (not the final one) with its
    # epoch, the evaluated split and image count, and '-' / '?' for NaN (a mixed column is float: NaN, not None)
    nan = float("nan")
    complete = dict(run="poi20", method="POI", noise=0.2, epochs_done=3, epochs_planned=4, final_val_acc=0.5,
                    best_val_acc=0.55, best_epoch=2, eval_acc=0.6125, eval_split="test", eval_n=80)
    fresh = dict(run="fresh", method="baseline", noise=nan, epochs_done=0, epochs_planned=nan, final_val_acc=nan,
                 best_val_acc=nan, best_epoch=nan, eval_acc=nan, eval_split=nan, eval_n=nan)
    result = _report_result(tmp_path, [complete, fresh], [], ["report.md"])
    table = render.report_summary(result)[0]
    assert _cells(_rendered(table, 200)) == [
        ["poi20", "POI", "20.00", "3/4", "50.00", "55.00 (2)", "61.25 (test, 80 images)"],
        ["fresh", "baseline", "-", "0/?", "-", "-", "-"]]


def test_the_report_names_each_cross_validation_with_its_spread_and_the_pictures_it_wrote(tmp_path):
    # guards the cross-validation lines (only those with a mean; '± std' only with one; fold runs
    # trained one by one named as such) and '1 PNG' in the singular
    nan = float("nan")
    cv = [dict(cv="runs/cv", accuracy_mean=0.75, accuracy_std=0.05, folds=3, accuracy_pooled=0.7525),
          dict(cv="", accuracy_mean=0.8, accuracy_std=nan, folds=1, accuracy_pooled=0.8),
          dict(cv="runs/none", accuracy_mean=nan, accuracy_std=nan, folds=0, accuracy_pooled=nan)]
    row = dict(run="a", method="POI", noise=0.0, epochs_done=1, epochs_planned=1, final_val_acc=0.5,
               best_val_acc=0.5, best_epoch=1, eval_acc=None, eval_split=None, eval_n=None)
    result = _report_result(tmp_path, [row], cv, ["report.md", "runs.csv", "curves_a.png"])
    lines = [item.text for item in render.report_summary(result)[1:]]
    assert lines == [
        "cross-validation runs/cv: test accuracy on the held-out folds 75.00 ± 5.00 % over 3 folds (pooled 75.25 %)",
        "cross-validation of fold runs: test accuracy on the held-out folds 80.00 % over 1 folds (pooled 80.00 %)",
        f"wrote 3 files in {tmp_path} (report.md, runs.csv, 1 PNG)"]


@deploy
def test_pct_is_a_dash_for_none_and_nan_and_two_decimals_of_a_percent():
    # guards the NaN check (NaN != NaN), which a missing figure in a pandas row is
    assert render._pct(None) == "-" and render._pct(float("nan")) == "-"
    assert render._pct(0.12345) == "12.35" and render._pct(0) == "0.00"


@deploy
def test_strata_lines_pair_each_fraction_with_the_consistency_stratum_where_there_is_one():
    # guards `index < len(...)`: an evaluation with fewer consistency strata (or none) raised IndexError
    def stratum(fraction, most, least):
        return {"fraction": fraction, "most_confident_accuracy": most, "least_confident_accuracy": least}

    result = {"confidence_strata": [stratum(0.3, 0.9, 0.4), stratum(0.5, 0.8, 0.5)],
              "consistency_strata": [stratum(0.3, 0.85, 0.45)]}
    assert render.strata_lines(result) == [
        "30% most / least confident: by confidence 90.00% / 40.00%; by consistency 85.00% / 45.00%",
        "50% most / least confident: by confidence 80.00% / 50.00%"]


@deploy
def test_prepare_summary_puts_ok_first_and_shows_a_speed_of_10_without_decimals():
    # guards the status order (ok, then the others by name) and the speed's boundary: from 10 images/s on,
    # whole numbers (10, not 10.00); below, two decimals
    def result(speed):
        return SimpleNamespace(already_done=False, out_dir="prep", notes=[], resumed=0, images_per_second=speed,
                               processed=20, seconds=2.0,
                               counts={"train": {"no_face": 1, "ok": 3, "bad_image": 2}, "test": {"ok": 2}})

    items = render.prepare_summary("ck48", result(10.0))
    assert _cells(_rendered(items[1], 80)) == [["test", "2", "0", "0"], ["train", "3", "2", "1"]]
    assert [column.header for column in items[1].columns] == ["split", "ok", "bad_image", "no_face"]
    assert items[-1].text == "20 images in 2.0 s (10 images/s)"
    assert render.prepare_summary("ck48", result(9.5))[-1].text == "20 images in 2.0 s (9.50 images/s)"


# ------------------------------------------------------------------ study/report.py: runs


def _run_folder(folder: Path, config: dict | None = None, results: str | None = None) -> Path:
    """A run folder: config.json (when given) and results.csv (its text, when given)."""
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    if results is not None:
        (folder / "results.csv").write_text(results)
    return folder


def test_find_runs_takes_runs_train_by_default_and_each_run_once(tmp_path, monkeypatch):
    # guards the default folder (runs/train) and the de-duplication of a run named twice (as
    # itself and through its parent): it was reported twice, as `a` and `a_2`
    from poi_cli.study.report import find_runs

    run = _run_folder(tmp_path / "runs" / "train" / "a", {"epochs": 1})
    monkeypatch.chdir(tmp_path)
    assert find_runs([]) == ([Path("runs/train/a")], [])
    assert find_runs([run, tmp_path / "runs" / "train", run]) == ([run], [])


def test_safe_name_keeps_a_name_usable_in_file_names():
    # guards the fallback name for a folder name made only of other characters (curves_.png)
    from poi_cli.study.report import _safe_name

    assert _safe_name("my run (1)") == "my_run_1" and _safe_name("a-b.c_d") == "a-b.c_d"
    assert _safe_name("(!)") == "run"


def test_runs_of_one_folder_name_get_numbered_names(tmp_path):
    # guards the numbering from 2 and that each name taken is remembered: three runs named `a`
    # were a, a_2, a_2 (or a, a, a), and their curves and report rows overwrote one another
    from poi_cli.study.report import build_report

    runs = [_run_folder(tmp_path / parent / "a", {"epochs": 2}) for parent in ("x", "y", "z")]
    report = build_report(runs, tmp_path / "report")
    assert [run.name for run in report.runs] == ["a", "a_2", "a_3"]
    assert report.summary["run"].tolist() == ["a", "a_2", "a_3"]


def test_a_report_into_a_run_folder_is_refused_and_a_stale_cv_table_removed(tmp_path):
    # guards --out RUN (report.md and runs.csv would land among the run's files) and the removal of
    # an earlier report's cross_validation.csv when this report holds no fold run
    from poi_cli.study.report import ReportError, build_report

    run = _run_folder(tmp_path / "a", {"epochs": 2})
    with pytest.raises(ReportError, match="is a run folder"):
        build_report([run], run)
    assert not (run / "report.md").exists()
    out = tmp_path / "report"
    out.mkdir()
    (out / "cross_validation.csv").write_text("cv\nold\n")
    report = build_report([run], out)
    assert not (out / "cross_validation.csv").exists() and out / "cross_validation.csv" not in report.files


def test_results_are_read_in_epoch_order_and_a_repeated_epoch_counts_its_last_row(tmp_path):
    # guards the sort by epoch (final = the last epoch, not the last row) and keep="last" (a resumed
    # run writes an epoch again: the later row is the one its checkpoint holds)
    from poi_cli.study.report import load_run

    run = _run_folder(tmp_path / "a", {"epochs": 3}, "epoch,val_acc\n3,0.5\n1,0.2\n2,0.3\n2,0.4\n")
    results = load_run(run, "a").results
    assert results["epoch"].tolist() == [1, 2, 3] and results["val_acc"].tolist() == [0.2, 0.4, 0.5]


def test_an_epoch_that_is_not_a_whole_number_is_no_runs_results(tmp_path):
    # guards the whole-number check: epoch 1.5 was read as a run's epoch; the message shows the
    # value as written (it showed numpy 2's `np.float64(1.5)`)
    from poi_cli.study.report import ReportError, load_run

    run = _run_folder(tmp_path / "a", {"epochs": 3}, "epoch,val_acc\n1,0.2\n1.5,0.3\n")
    with pytest.raises(ReportError, match=r"epoch '1\.5' is not a whole number"):
        load_run(run, "a")


# ------------------------------------------------------------------ study/report.py: names


def test_method_name_defaults_each_switch_to_on():
    # guards the defaults of config.get: an older config.json without a switch ran with it on
    from poi_cli.study.report import method_name

    assert method_name({}) == "unknown" and method_name({"seed": 0}) == "POI"
    assert method_name({"use_pin": False, "use_oim": False}) == "baseline"
    assert method_name({"use_pin": True, "prior_supervision": False, "use_uem": False}) == "POI w/o PB, UEM"


def test_noise_of_a_run_without_noise_or_labels_is_zero():
    # guards (0, 0) for a run on the clean labels (unknown, None, is only for a label file gone)
    from poi_cli.study.report import noise_of

    assert noise_of({"seed": 1}) == (0.0, 0.0)
    assert noise_of({}) == (None, None)
    assert noise_of({"noise": 0.3, "resolved": {"noise_realised_rate": 0.29}}) == (0.3, 0.29)


def test_variant_names_ignore_a_teacher_weight_without_a_teacher_and_a_weights_files_folder():
    # guards teacher_weight counting only with a teacher, and --pretrained by its file name (the
    # same weights copied elsewhere): these runs share one recipe
    from poi_cli.study.report import variant_names

    configs = [{"teacher": None, "teacher_weight": 1.0, "pretrained": "/a/w.pth"},
               {"teacher": None, "teacher_weight": 2.0, "pretrained": "/b/w.pth"}]
    assert variant_names(configs) == ["", ""]


def test_a_variant_is_named_against_the_most_common_recipe_and_an_empty_value_as_none():
    # guards most_common (not the least common) and `none` for an empty value (`arch=` read as a typo)
    from poi_cli.study.report import variant_names

    configs = [{"temperature": 2.0}, {"temperature": 2.0}, {"temperature": 1.0}, {"temperature": None}]
    assert variant_names(configs) == ["", "", "temperature=1.0", "temperature=none"]


def test_data_labels_name_a_store_by_its_path_only_where_two_share_its_name(tmp_path):
    # guards `> 1`: one store is named by its name (ck48), two of one name by their paths
    from poi_cli.study.report import data_labels

    here, there = tmp_path / "here" / "ck48", tmp_path / "there" / "ck48"
    assert data_labels([{"data": str(here)}, {"data": str(here)}, {"data": str(tmp_path / "raf")}]) == ["ck48", "ck48", "raf"]
    assert data_labels([{"data": str(here)}, {"data": str(there)}]) == [str(here.resolve()), str(there.resolve())]


def test_missing_epochs_count_from_epoch_one():
    # guards the range's start: a run resumed without its first epoch's row misses epoch 1
    from poi_cli.study.report import _missing_epochs

    assert _missing_epochs([2, 3, 5]) == "1 4" and _missing_epochs([1, 2]) == "" and _missing_epochs([]) == ""


def test_a_baseline_keeps_use_pin_false_and_blanks_the_switches_it_ignores(tmp_path):
    # guards the use_pin exception: a baseline's row said use_pin blank (unknown) instead of False
    import pandas as pd

    from poi_cli.study.report import Run, summarise

    results = pd.DataFrame({"epoch": [1, 2], "val_acc": [0.3, 0.4], "train_acc": [0.5, 0.6]})
    config = {"use_pin": False, "use_oim": True, "use_uem": True, "prior_supervision": True}
    row = summarise(Run(tmp_path, "b", config, results), "", "ck")
    assert row["use_pin"] is False and row["use_oim"] is None and row["use_uem"] is None
    assert (row["final_val_acc"], row["best_val_acc"], row["best_epoch"], row["final_train_acc"]) == (0.4, 0.4, 2, 0.6)


# --------------------------------------------------------- study/report.py: tables by noise


def _summary(rows: list[dict]):
    import pandas as pd

    base = dict(data="ck", method="POI", variant="", noise=0.2, fold=None, seed=0, final_val_acc=0.5, best_val_acc=0.5)
    return pd.DataFrame([base | row for row in rows])


def test_seeds_table_means_three_seeds_lists_them_sorted_and_leaves_fold_runs_out():
    # guards the mean (with two seeds the median is the same), the sorted seeds, and fold runs left out
    from poi_cli.study.report import by_noise_table, seeds_table

    summary = _summary([dict(seed=3, final_val_acc=0.5, best_val_acc=0.6), dict(seed=1, final_val_acc=0.6, best_val_acc=0.7),
                        dict(seed=2, final_val_acc=0.9, best_val_acc=0.95),
                        dict(seed=0, fold="fold0", final_val_acc=0.1, best_val_acc=0.1)])
    row = seeds_table(summary).iloc[0]
    assert (row["runs"], row["seeds"]) == (3, "1 2 3")
    assert row["final_mean_acc"] == pytest.approx(2.0 / 3) and row["best_mean_acc"] == pytest.approx(0.75)
    assert (row["final_min_acc"], row["final_max_acc"]) == (0.5, 0.9)
    by_noise = by_noise_table(seeds_table(summary))  # Table II: the mean of the best, not of the final
    assert by_noise.columns.tolist() == ["data", "method", "noise 20%"] and by_noise.loc[0, "noise 20%"] == pytest.approx(0.75)


def test_noise_rates_a_whole_percent_cannot_tell_apart_get_columns_of_their_own():
    # 0.12 and 0.125 were both "noise 12%" (two columns of one name; 12.5 % shown as 12 %)
    from poi_cli.study.report import by_noise_table, seeds_table

    summary = _summary([dict(noise=0.12, best_val_acc=0.6), dict(noise=0.125, best_val_acc=0.7), dict(noise=0.3)])
    by_noise = by_noise_table(seeds_table(summary))
    assert by_noise.columns.tolist() == ["data", "method", "noise 12%", "noise 12.5%", "noise 30%"]
    assert by_noise.loc[0, "noise 12.5%"] == pytest.approx(0.7)


def test_the_repeated_seed_note_names_only_groups_with_a_seed_twice():
    # guards the comparison of the seeds with their set: two different seeds are a spread
    from poi_cli.study.report import repeated_seeds_note, seeds_table

    assert repeated_seeds_note(seeds_table(_summary([dict(seed=0), dict(seed=1)]))) == ""
    note = repeated_seeds_note(seeds_table(_summary([dict(seed=4), dict(seed=4), dict(seed=1, variant="lr=1")])))
    assert "in POI at noise 0.2 (seeds 4 4):" in note and "lr=1" not in note


# --------------------------------------------------------- study/report.py: cross-validation


def _fold_run(tmp_path: Path, name: str, fold: str, accuracy: float, n: int, data: Path, split: str | None = None,
              cv: Path | None = None):
    """A --fold K run (in memory) evaluated on `split` (default: its own fold) of `data`, and its runs.csv row."""
    from poi_cli.study.report import Run

    import pandas as pd

    config = {"data": str(data), "fold": fold[4:], "seed": 0}
    evaluation = {"split": split or fold, "accuracy": accuracy, "n_images": n, "data": str(data)}
    run = Run(tmp_path / name, name, config, pd.DataFrame(columns=["epoch"]), evaluation, cv=cv)
    row = dict(run=name, fold=fold, data="ck48", method="POI", variant="", noise=0.0, seed=0)
    return run, row


def _cv_table(pairs):
    import pandas as pd

    from poi_cli.study.report import cross_validation_table

    return cross_validation_table([run for run, _ in pairs], pd.DataFrame([row for _, row in pairs]))


def test_a_fold_result_is_of_its_own_fold_on_its_own_store(tmp_path):
    # guards the split check (an evaluation on test is no fold's test accuracy) and the store check
    # (fold0 of another folder named ck48 is other images)
    from poi_cli.study.report import _own_fold_result

    data = tmp_path / "ck48"
    run, _ = _fold_run(tmp_path, "k0", "fold0", 0.75, 8, data)
    assert _own_fold_result(run, "fold0") == {"fold": "fold0", "n_test": 8, "accuracy": 0.75,
                                              "mean_class_recall": pytest.approx(float("nan"), nan_ok=True)}
    on_test, _ = _fold_run(tmp_path, "k0", "fold0", 0.75, 8, data, split="test")
    assert _own_fold_result(on_test, "fold0") is None
    run.evaluation["data"] = str(tmp_path / "elsewhere" / "ck48")
    assert _own_fold_result(run, "fold0") is None


def test_one_fold_has_no_spread_and_a_repeated_fold_is_counted_once(tmp_path):
    # guards std None for one fold (folds_summary says 0.0), and the number of distinct folds in the
    # note on the store's folds: fold0 twice covers 1 of a 2-fold store's folds, though 2 runs
    data = tmp_path / "ck48"
    data.mkdir()
    (data / "prepared.json").write_text(json.dumps({"protocol": {"folds": 2}}))
    table, notes = _cv_table([_fold_run(tmp_path, "k0", "fold0", 0.75, 8, data)])
    assert table.loc[0, "folds"] == 1 and table.loc[0, "accuracy_mean"] == 0.75 and table.loc[0, "accuracy_std"] is None
    table, notes = _cv_table([_fold_run(tmp_path, "k0", "fold0", 0.75, 8, data),
                              _fold_run(tmp_path, "k0b", "fold0", 0.5, 8, data)])
    assert table.loc[0, "accuracy_mean"] == pytest.approx(0.625) and table.loc[0, "accuracy_std"] == pytest.approx(math.sqrt(0.03125))
    assert notes == ["fold runs k0 k0b: 1 of the store's 2 folds, not the whole cross-validation",
                     "fold runs k0 k0b: fold0 more than once (a repeat, not another fold)"]


def test_a_cv_json_row_over_more_folds_than_the_report_holds_says_so(tmp_path):
    # guards the note that the row is cv.json's, over every fold, where the report holds fewer fold runs
    cv = tmp_path / "cv"
    cv.mkdir()
    saved = {"folds": 3, "n_test": 30, "accuracy_mean": 0.7, "accuracy_std": 0.1, "accuracy_min": 0.6,
             "accuracy_max": 0.8, "accuracy_pooled": 0.71}
    (cv / "cv.json").write_text(json.dumps(saved))
    table, notes = _cv_table([_fold_run(tmp_path, f"k{k}", f"fold{k}", 0.5, 10, tmp_path / "ck48", cv=cv) for k in (0, 1)])
    assert (table.loc[0, "source"], table.loc[0, "folds"], table.loc[0, "runs"], table.loc[0, "accuracy_mean"]) == (
        "cv.json", 3, 2, 0.7)
    assert notes == [f"{cv}: the report holds 2 of its 3 fold runs; its row is cv.json's, over all of them"]


def test_the_cross_validation_markdown_shows_a_spread_only_where_there_is_one():
    # guards `mean ± std` only with a std: one fold read `80.00 ± -`
    import pandas as pd

    from poi_cli.study.report import CV_TABLE_COLUMNS, cross_validation_markdown

    rows = [dict(cv="", data="ck48", method="POI", variant="", noise=0.0, seed=0, folds=1, runs=1, accuracy_mean=0.8,
                 accuracy_std=None, accuracy_min=0.8, accuracy_max=0.8, accuracy_pooled=0.8, n_test=10, source="s"),
            dict(cv="", data="ck48", method="POI", variant="", noise=0.0, seed=1, folds=2, runs=2, accuracy_mean=0.7,
                 accuracy_std=0.05, accuracy_min=0.65, accuracy_max=0.75, accuracy_pooled=0.7, n_test=20, source="s")]
    lines = cross_validation_markdown(pd.DataFrame(rows, columns=CV_TABLE_COLUMNS)).splitlines()
    assert lines[2] == "|  | ck48 | POI |  | 0.00 | 0 | 1 | 80.00 | 80.00 | 80.00 | 80.00 | 10 | s |"
    assert lines[3] == "|  | ck48 | POI |  | 0.00 | 1 | 2 | 70.00 ± 5.00 | 65.00 | 75.00 | 70.00 | 20 | s |"


# ------------------------------------------------------------ study/report.py: report.md cells


def test_markdown_cells_whole_numbers_percentages_and_dashes():
    # guards counts as whole numbers (a float column after a NaN: 3, not 3.0), *_acc columns in %
    # (0.55 -> 55.00), and '-' for NaN
    import pandas as pd

    from poi_cli.study.report import _markdown

    frame = pd.DataFrame({"run": ["a", "b"], "epochs_done": [3.0, float("nan")], "best_val_acc": [0.55, float("nan")],
                          "noise": [0.2, 0.1], "lr": [0.5, 0.25]})
    assert _markdown(frame, percent=("noise",)).splitlines() == [
        "| run | epochs_done | best_val_acc | noise | lr |", "|---|---|---|---|---|",
        "| a | 3 | 55.00 | 20.00 | 0.5 |", "| b | - | - | 10.00 | 0.25 |"]
    assert _markdown(pd.DataFrame()) == "(none)\n"


def test_the_calibration_table_keeps_a_run_with_any_figure():
    # guards any (not all): a baseline has no consistency AURC, and its ECE was left out
    import pandas as pd

    from poi_cli.study.report import CALIBRATION_COLUMNS, calibration_table

    none = dict.fromkeys(CALIBRATION_COLUMNS)
    summary = pd.DataFrame([{"run": "base", **none, "ece_confidence": 0.123456},
                            {"run": "new", **none}])
    table = calibration_table(summary)
    assert table["run"].tolist() == ["base"] and table["ece_confidence"].tolist() == [0.1235]


def test_an_old_metrics_json_strata_count_as_consistency_strata():
    # guards which score an old metrics.json's confidence_strata (ranked by w) are shown as
    from poi_cli.study.report import strata_of

    old = [{"fraction": 0.3, "n": 3, "most_confident_accuracy": 1.0, "least_confident_accuracy": 0.5}]
    by_score, note = strata_of({"confidence_strata": old})
    assert by_score == {"confidence": None, "consistency": old} and "predates calibrated confidence" in note
    assert strata_of({"confidence_strata": old, "consistency_strata": []}) == ({"confidence": old, "consistency": []}, None)


def test_no_curves_for_a_run_without_a_finished_epoch(tmp_path):
    # guards the early return: a run without results drew an empty (or failing) figure
    import pandas as pd

    from poi_cli.study.report import Run, plot_curves

    run = Run(tmp_path, "fresh", {}, pd.DataFrame(columns=["epoch"]))
    assert plot_curves(run, tmp_path / "curves_fresh.png") is None and not (tmp_path / "curves_fresh.png").exists()
