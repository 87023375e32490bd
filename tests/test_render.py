"""poi_cli/render.py: the commands' tables and lines, built from plain results without torch."""

from __future__ import annotations

import io
import subprocess
import sys
from types import SimpleNamespace

from rich.console import Console
from rich.table import Table

from poi_cli import render
from poi_cli.cli import show


def text_of(*items: render.Item, width: int = 60) -> str:
    """What `show` prints on a plain console `width` columns wide."""
    console = Console(file=io.StringIO(), width=width)
    show(*items, to=console)
    return console.file.getvalue()


def test_importing_render_loads_no_torch_numpy_or_pandas():
    code = "import sys, poi_cli.render; print(sorted({'torch', 'numpy', 'pandas'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_soft_wrapped_lines_are_never_cut_and_the_others_wrap():
    long = "wrote " + "/a/very/long/path" * 6
    soft, wrapped = text_of(render.Line(long, soft_wrap=True)), text_of(render.Line(long))
    assert soft == long + "\n"
    assert wrapped.replace("\n", "") == long and wrapped.count("\n") > 1
    # one print per item: consecutive lines never run together on one line
    assert text_of(render.Line("a"), render.Line("b")) == "a\nb\n"


def test_predict_table_marks_active_aus_by_region_and_failed_images():
    from poi_cli.deploy.records import FaceRecord

    records = [
        FaceRecord(image="a.jpg", face=0, expression="happiness", confidence=0.967, consistency=0.5, status="ok",
                   aus={"AU06": {"left_eye": 0.9, "right_eye": 0.6}, "AU12": {"mouth": 0.2}, "AU26": {"mouth": None}},
                   with_au=True, regions_agree=3, pin_expression="sadness"),
        FaceRecord(image="c.jpg", face=0, expression="fear", confidence=0.5, consistency=None, status="ok"),
        FaceRecord.empty("b.txt", "error", "not an image"),
    ]
    table = render.predict_table(records, "model.pt", ["a", "b", "c"], show_au=True)
    assert isinstance(table, Table) and table.title == "model.pt (3 classes)"
    out = text_of(table, width=200)
    assert "AU06(L,R)" in out and "AU12" not in out and "96.7%" in out
    # the regions' agreement, not the consistency (which stays in JSON / CSV); '-' for a baseline
    header = out.splitlines()[2]
    assert "regions" in header and "consistency" not in header and "3/4" in out and "0.500" not in out
    assert [line.split("│")[5].strip() for line in out.splitlines() if "c.jpg" in line] == ["-"]
    assert "error: not an image" in out
    assert render.active_aus(None) == "-"
    # an AU counts from 0.5 on (>=), in each region that carries it: L(eft), R(ight)
    assert render.active_aus({"AU06": {"left_eye": 0.5, "right_eye": 0.49}, "AU26": {"left_mouth": 0.2}}) == "AU06(L)"
    assert render.active_aus({"AU06": {"left_eye": 0.9, "right_eye": None}}) == "AU06(L)"  # it raised a TypeError
    assert render.predict_summary(3, {"ok": 1, "no_face": 0, "error": 2}, "p.csv", None).text == (
        "3 images: 1 face predicted, 0 images without a face, 2 errors; wrote p.csv")


def test_a_narrow_terminal_breaks_the_predict_table_between_words():
    from poi_cli.deploy.records import FaceRecord

    aus = {au: {"left_eye": 0.9, "right_eye": 0.8} for au in ("AU06", "AU12", "AU26")}
    records = [FaceRecord(image=name, face=0, expression="happiness", confidence=0.998, consistency=1.0, status="ok",
                          aus=aus, with_au=True, regions_agree=4)
               for name in ("astronaut.jpg", "IMG_20230101_120000.jpg")]
    table = render.predict_table(records, "m.onnx", ["a"] * 8, show_au=True)

    def cells(out: str) -> list[str]:
        return [cell.strip() for line in out.splitlines() for cell in line.split("│")[1:-1] if cell.strip()]

    # 80 columns: rich folded `astronaut.j` / `pg` while the AUs column could wrap between AUs
    out = text_of(table, width=80)
    assert {"astronaut.jpg", "IMG_20230101_120000.jpg", "happiness", "99.8%", "4/4", "AU06(L,R)", "AU26(L,R)"} <= set(
        cells(out))
    # 64: the longest word (the long name) alone is folded; the other cells stay whole
    out = text_of(table, width=64)
    assert {"astronaut.jpg", "happiness", "99.8%", "AU12(L,R)"} <= set(cells(out))
    assert "IMG_20230101_120000.jpg" not in out
    for width in (40, 64, 80):
        assert max(len(line) for line in text_of(table, width=width).splitlines()) <= width
    # the widths are chosen again for each console: wide, every row is one line
    assert len(text_of(table, width=200).splitlines()) == len(text_of(render.predict_table(
        records, "m.onnx", ["a"] * 8, show_au=False), width=200).splitlines())


def test_a_report_table_keeps_run_names_whole_in_80_columns():
    # rich cut the run column with an ellipsis (`ferplus_po…`): the name a user copies to --resume
    table = render.FittedTable(title="runs")
    for column in ("run", "method", "noise", "epochs", "final val", "best val (epoch)", "best.pt evaluated"):
        table.add_column(column)
    table.add_row("ferplus_poi_n30_seed1", "poi", "30.00", "26/26", "84.12", "84.50 (22)", "84.31 (valid, 3191 images)")
    out = text_of(table, width=80)
    assert "ferplus_poi_n30_seed1" in out and "…" not in out


def test_predict_table_names_the_shared_folder_once(tmp_path, monkeypatch):
    from poi_cli.deploy.records import FaceRecord

    def rows(*images):
        return [FaceRecord(image=i, face=0, expression="fear", confidence=0.5, consistency=None, status="ok") for i in images]

    # a long shared folder goes to the caption; the narrow column keeps names whole
    deep = "/data/a/very/long/folder/of/photos"
    table = render.predict_table(rows(f"{deep}/one.jpg", f"{deep}/sub/two.jpg"), "m.onnx", ["a"], show_au=False)
    out = text_of(table, width=80)
    assert table.caption == f"images in {deep}" and "│ one.jpg " in out and "│ sub/two.jpg " in out
    # nothing shared, a file of the working folder, or an in-memory image: the names as given
    assert render.shared_folder(["/x/a.jpg", "/y/b.jpg"]) == (None, ["/x/a.jpg", "/y/b.jpg"])
    assert render.shared_folder(["a.jpg", "d/b.jpg"]) == (None, ["a.jpg", "d/b.jpg"])
    assert render.shared_folder(["<image 1>", "<image 2>"])[0] is None
    assert render.shared_folder(["/abs/a.jpg", "rel/b.jpg"])[0] is None
    assert render.predict_table(rows("a.jpg"), "m.onnx", ["a"], show_au=False).caption is None
    # the model's path as typed, relative to the working folder when that is shorter
    monkeypatch.chdir(tmp_path)
    assert render.shown_path(tmp_path / "w" / "m.onnx") == "w/m.onnx"
    assert render.shown_path("/elsewhere/m.onnx") == "/elsewhere/m.onnx" and render.shown_path("m.onnx") == "m.onnx"
    beside = tmp_path.parent / "a-long-folder-name-of-models" / "m.onnx"
    assert render.shown_path(beside) == "../a-long-folder-name-of-models/m.onnx"
    # the bundled model by its file name, wherever the package is installed
    site = "/usr/lib/python3.11/site-packages/poi_cli/weights/poi_ferplus8_resnet10_96.onnx"
    table = render.predict_table(rows("a.jpg"), site, ["a"] * 8, show_au=False, bundled=True)
    assert table.title == "bundled model poi_ferplus8_resnet10_96.onnx (8 classes)"
    assert render.predict_table(rows("a.jpg"), "m.onnx", ["a"], show_au=False).title == "m.onnx (1 classes)"


def test_clean_and_calibrate_lines():
    summary = {"n_selected": 3, "n_images": 10, "n_changed": 2, "changed_wrong_before": 2, "changed_right_after": 1,
               "noise_rate_before": 0.2, "noise_rate_after": 0.1}
    lines = [line.text for line in render.clean_summary(summary, True, ["l.csv", "l.json"], "prep")]
    assert lines == ["3 of 10 images selected, 2 relabelled",
                     "of the 2 relabelled: 2 had a wrong label, 1 now have the right one; label noise 20.00% -> 10.00%",
                     "wrote l.csv, l.json; train with `poi train prep --labels l.csv`"]
    spaced = render.clean_summary(summary, True, ["my labels.csv", "my labels.json"], "prep dir")[-1].text
    assert spaced.endswith("train with `poi train 'prep dir' --labels 'my labels.csv'`")  # pasted, it works
    # a cleaned test split is never offered as a training set (it suggested --train-split test)
    on_test = render.clean_summary({**summary, "split": "test"}, True, ["t.csv", "t.json"], "prep")[-1].text
    assert "never train on it" in on_test and "poi train" not in on_test
    of_valid = render.clean_summary({**summary, "split": "valid"}, True, ["l.csv", "l.json"], "prep")[-1].text
    assert of_valid.endswith("`poi train prep --labels l.csv --train-split valid`")  # the split the file covers
    from poi_cli.core.outputs import PredictionRecipe
    from poi_cli.model.calibration import Calibration

    calibration = Calibration(temperature=1.5, n_images=14, split="valid", nll_before=1.0, nll_after=0.9,
                              recipe=PredictionRecipe("trn+pin", False))
    tried = [Calibration(1.4, "valid", 14, 1.1, 0.95), calibration]
    result = SimpleNamespace(calibration=calibration, previous=None, written="x.pt", candidates=tried)
    assert [line.text for line in render.calibrate_summary(result)] == [
        "recipe: TRN + PIN, image alone (lowest NLL after temperature scaling, ties to the cheaper; "
        "TRN, image alone 0.9500; TRN + PIN, image alone 0.9000)",
        "T_cal = 1.5000 fitted on 14 images of split valid (was uncalibrated (T_cal = 1)); NLL 1.0000 -> 0.9000",
        f"warning: {calibration.caveat}",  # 14 images: too few to trust
        "wrote x.pt"]
    forced = SimpleNamespace(calibration=tried[0], previous=calibration, written="x.pt", candidates=tried[:1])
    assert render.calibrate_summary(forced)[0].text == "recipe: TRN, image alone (the only one asked for)"


def test_the_last_line_of_train_names_the_best_epoch_its_accuracy_and_the_time(tmp_path):
    # what a timm or Ultralytics user reads at the end of a run: best.pt's epoch (the first of equal
    # accuracies, as training keeps it), the last epoch's accuracy, the time
    from poi_cli.train.run_folder import run_summary

    (tmp_path / "results.csv").write_text("epoch,val_acc,epoch_time_s\n1,0.5,60\n2,0.7,60\n3,0.7,60\n4,0.6,90\n")
    line = render.train_done(tmp_path, run_summary(tmp_path)).text
    assert "best val_acc 70.00% at epoch 2, last 60.00%; 4 epochs in 4.5 min;" in line
    (tmp_path / "results.csv").write_text("epoch,val_acc,epoch_time_s\n1,,30\n2,,30\n")  # --val-split none
    assert "(2 epochs in 1.0 min; results.csv" in render.train_done(tmp_path, run_summary(tmp_path)).text
    assert run_summary(tmp_path / "missing") is None
