"""Real tabular data: files as users have them, preprocessing learned on the training split, stored, reused.

scikit-learn's bundled datasets are exported to CSV as a user would (header, raw units, label names)
and trained with the default command in this process; the bar is scikit-learn's StandardScaler +
linear model on the same split. A survey-like CSV with text columns, missing cells and word labels
trains with default flags, and predict, evaluate and an ONNX export agree on raw rows.
"""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import assert_one_error_line, invoke_app, read_scalars
from ignite_app.config import Config, build_config
from ignite_app.data.preprocess import Preprocessor
from ignite_app.data.sources import load_splits
from ignite_app.data.splits import class_quotas, small_data_batch, stratified_split
from ignite_app.errors import UserError
from ignite_app.io import checkpoint as ckpt
from ignite_app.tools.inference import evaluate
from ignite_app.train.loop import train

pytestmark = pytest.mark.usefixtures("torch_threads")


def export_bundled(name: str, folder: Path) -> tuple[Path, list[str]]:
    """A scikit-learn dataset as a user exports it: header, raw units, class names as labels; its target columns."""
    from sklearn import datasets

    loader = getattr(datasets, f"load_{name}")
    bunch = loader(as_frame=True, scaled=False) if name == "diabetes" else loader(as_frame=True)
    frame = bunch.frame.copy()
    targets = list(bunch.target_names) if name == "linnerud" else ["target"]
    if name in ("wine", "breast_cancer", "iris"):
        frame["target"] = [bunch.target_names[t] for t in bunch.target]
    path = folder / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path, targets


def train_default(dataset: str, out: Path, **flags: object) -> list[str]:
    """The default command (flags as the command line resolves them) in this process; returns its stdout lines."""
    cfg = build_config({}, {"dataset": dataset, "output_dir": str(out), "progress": False, "device": "cpu", **flags})
    lines: list[str] = []
    assert train(cfg, echo=lines.append, warn=lines.append) == 0, lines
    return lines


def linear_baseline(path: Path, targets: list[str]) -> tuple[str, float]:
    """scikit-learn's StandardScaler + LogisticRegression (accuracy) or LinearRegression (MAE) on our split."""
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = pd.read_csv(path)
    y, x = frame[targets].to_numpy(), frame.drop(columns=targets).to_numpy()
    classes = y.dtype == object
    codes = np.unique(y[:, 0], return_inverse=True)[1] if classes else None
    train_rows, val_rows = stratified_split(codes, len(frame), 0.2)
    if classes:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x[train_rows], y[train_rows, 0])
        return "accuracy", float((model.predict(x[val_rows]) == y[val_rows, 0]).mean())
    model = make_pipeline(StandardScaler(), LinearRegression()).fit(x[train_rows], y[train_rows])
    # Ignite's MAE sums the absolute errors of a row's targets before averaging over rows: the same here.
    return "mae", float(np.abs(model.predict(x[val_rows]) - y[val_rows]).sum(axis=1).mean())


# --- the default command on real public datasets --------------------------------------------------

@pytest.mark.parametrize("name", ["wine", "breast_cancer", "iris", "diabetes", "linnerud"])
def test_default_command_reaches_a_standardised_linear_baseline(name, tmp_path):
    path, targets = export_bundled(name, tmp_path)
    flags = {"target": ",".join(targets)} if len(targets) > 1 else {}
    lines = train_default(f"csv:{path}", tmp_path / "run", **flags)
    assert lines[0].startswith(("classification", "regression")) and "features (standardised)" in lines[0]
    metric, baseline = linear_baseline(path, targets)
    ours = evaluate(tmp_path / "run").metrics[metric]
    if metric == "accuracy":
        assert ours >= baseline - 0.01, (ours, baseline)
    else:
        assert ours <= baseline * 1.05, (ours, baseline)


def test_first_line_names_the_task_features_classes_and_a_smaller_batch(tmp_path):
    path, _ = export_bundled("iris", tmp_path)
    lines = train_default(f"csv:{path}", tmp_path / "run", epochs=1)
    assert lines[0].startswith("classification on csv:")
    assert "3 classes (setosa, versicolor, virginica), 4 features (standardised), 120 train / 30 val samples" in lines[0]
    assert "batch 12 (not 64: too few training rows for 10 batches per epoch; --batch-size sets it)" in lines[0]
    given = train_default(f"csv:{path}", tmp_path / "given", epochs=1, batch_size=64)
    assert ", batch 64, " in given[0]


def test_early_stopping_on_a_few_validation_rows_warns(tmp_path):
    path, targets = export_bundled("linnerud", tmp_path)
    lines = train_default(f"csv:{path}", tmp_path / "run", epochs=1, target=",".join(targets))
    assert "3 target(s) (Weight, Waist, Pulse), 3 features" in lines[0]
    assert any(line.startswith("warning: early stopping watches only 4 validation rows") for line in lines)


# --- a survey table: text columns, missing cells, word labels -------------------------------------

def write_survey(path: Path, n: int = 400, seed: int = 0) -> Path:
    """Age (some NA), income written '12 345', city (text, some empty), smoker yes/no; the label is 'low'/'high' risk."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n)
    income = rng.integers(10_000, 90_000, n)
    city = rng.choice(["Paris", "Lyon", "Nice"], n)
    smoker = rng.choice(["yes", "no"], n)
    risk = (age / 80 + (smoker == "yes") * 0.6 + (city == "Nice") * 0.3 - income / 200_000) > 0.75
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["age", "income", "city", "smoker", "risk"])
        for i in range(n):
            writer.writerow(["NA" if i % 17 == 0 else age[i], f"{income[i] // 1000} {income[i] % 1000:03d}",
                             "" if i % 23 == 0 else city[i], smoker[i], "high" if risk[i] else "low"])
    return path


@pytest.fixture(scope="module")
def survey_run(tmp_path_factory) -> tuple[Path, Path]:
    """The survey CSV and a run trained on it with default flags."""
    folder = tmp_path_factory.mktemp("survey")
    path = write_survey(folder / "survey.csv")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_default(f"csv:{path}", folder / "run")
    finally:
        torch.set_num_threads(before)
    return path, folder / "run"


def val_rows(path: Path, out: Path) -> Path:
    """The run's validation rows, raw, as a CSV with the label column."""
    frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    labels = np.unique(frame["risk"], return_inverse=True)[1]
    _, rows = stratified_split(labels, len(frame), 0.2)
    frame.iloc[rows].to_csv(out, index=False)
    return out


def test_text_columns_missing_cells_and_word_labels_train_with_default_flags(survey_run):
    _, run = survey_run
    best = ckpt.best_checkpoint(run)
    state = torch.load(best, weights_only=True)  # the preprocessing is plain tensors and strings
    pre = Preprocessor.from_state(state["preprocess"])
    assert (pre.classes, pre.numeric_names, pre.text_names) == (["high", "low"], ["age", "income"], ["city", "smoker"])
    assert pre.categories == [["Lyon", "Nice", "Paris"], ["no", "yes"]] and pre.features == 7
    assert evaluate(run).metrics["accuracy"] >= 0.85


def test_predict_writes_label_names_and_agrees_with_evaluate_and_the_logged_metrics(survey_run, tmp_path):
    path, run = survey_run
    rows = val_rows(path, tmp_path / "val.csv")
    result = invoke_app("predict", str(run), "--input", str(rows), "--output", str(tmp_path / "pred.csv"))
    assert result.exit_code == 0, result.stderr
    predicted = pd.read_csv(tmp_path / "pred.csv")
    assert list(predicted.columns) == ["label", "prob_high", "prob_low"]
    truth = pd.read_csv(rows)["risk"]
    accuracy = float((predicted["label"] == truth).mean())
    evaluated = evaluate(run).metrics
    step = int(ckpt.best_checkpoint(run).stem.split("_")[-1])
    assert accuracy == pytest.approx(evaluated["accuracy"], abs=1e-12)
    assert evaluated["accuracy"] == pytest.approx(dict(read_scalars(run)["val/accuracy"])[step], abs=1e-6)
    assert evaluated["loss"] == pytest.approx(dict(read_scalars(run)["val/loss"])[step], rel=1e-5)
    every = evaluate(run, f"csv:{path}", split="all")  # evaluate --dataset FILE: every row
    assert every.samples == 400


def test_onnx_export_on_raw_rows_gives_the_same_predictions(tmp_path):
    import onnxruntime

    path, _ = export_bundled("wine", tmp_path)
    run = tmp_path / "run"
    train_default(f"csv:{path}", run, epochs=3)
    result = invoke_app("export", str(run), "--format", "onnx", "--output", str(tmp_path / "m.onnx"))
    assert result.exit_code == 0, result.stderr
    raw = pd.read_csv(path).drop(columns=["target"]).to_numpy(dtype=np.float32)  # raw units: proline is ~1000
    [logits] = onnxruntime.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"input": raw})
    features = tmp_path / "features.csv"
    pd.read_csv(path).drop(columns=["target"]).to_csv(features, index=False)
    assert invoke_app("predict", str(run), "--input", str(features), "--output", str(tmp_path / "p.csv")).exit_code == 0
    predicted = pd.read_csv(tmp_path / "p.csv")
    names = np.array(["class_0", "class_1", "class_2"])
    assert (names[logits.argmax(axis=1)] == predicted["label"].to_numpy()).all()
    assert np.allclose(torch.softmax(torch.as_tensor(logits), 1).numpy(), predicted.iloc[:, 1:].to_numpy(), atol=1e-5)


def test_regression_exports_and_predictions_are_in_the_targets_units(tmp_path):
    path, _ = export_bundled("diabetes", tmp_path)
    run = tmp_path / "run"
    train_default(f"csv:{path}", run, epochs=3)
    features = tmp_path / "features.csv"
    pd.read_csv(path).drop(columns=["target"]).to_csv(features, index=False)
    assert invoke_app("predict", str(run), "--input", str(features), "--output", str(tmp_path / "p.csv")).exit_code == 0
    predicted = pd.read_csv(tmp_path / "p.csv")
    assert list(predicted.columns) == ["target"] and 50 < predicted["target"].mean() < 300  # disease progression units
    assert invoke_app("export", str(run), "--format", "torchscript", "--output", str(tmp_path / "m.pt")).exit_code == 0
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    with torch.no_grad():
        out = scripted(torch.as_tensor(pd.read_csv(features).to_numpy(), dtype=torch.float32))
    assert np.allclose(out[:, 0].numpy(), predicted["target"].to_numpy(), rtol=1e-5)


def test_test_dataset_is_reported_last_and_evaluated_again_alike(tmp_path):
    path = write_survey(tmp_path / "train.csv")
    test = write_survey(tmp_path / "test.csv", n=120, seed=1)
    lines = train_default(f"csv:{path}", tmp_path / "run", epochs=3, test_dataset=str(test))
    assert "320 train / 80 val / 120 test samples" in lines[0]
    assert lines[-1].startswith("test (120 samples, best model best_model_")
    accuracy = float(lines[-1].split("accuracy ")[1])
    assert evaluate(tmp_path / "run", split="test").metrics["accuracy"] == pytest.approx(accuracy, abs=5e-5)


def test_val_dataset_replaces_the_split(tmp_path):
    path = write_survey(tmp_path / "train.csv")
    other = write_survey(tmp_path / "val.csv", n=50, seed=2)
    splits = load_splits(build_config({}, {"dataset": f"csv:{path}", "val_dataset": str(other)}))
    assert (len(splits.train), len(splits.val)) == (400, 50)


# --- reading files as users have them --------------------------------------------------------------

def test_bom_latin1_gzip_index_column_and_spaced_numbers(tmp_path):
    rows = [(i, f"{1000 + i:,}".replace(",", " "), "café" if i % 2 else "thé", i % 2) for i in range(40)]
    text = "ID,price,drink,label\n" + "".join(f"{a},{b},{c},{d}\n" for a, b, c, d in rows)
    (tmp_path / "bom.csv").write_bytes("\ufeff".encode() + text.encode("utf-8"))
    (tmp_path / "latin.csv").write_bytes(text.encode("latin-1"))
    with gzip.open(tmp_path / "zipped.csv.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    pd.read_csv(tmp_path / "bom.csv", encoding="utf-8-sig").set_index("ID").to_csv(tmp_path / "indexed.csv", index=True)
    frame = pd.read_csv(tmp_path / "bom.csv", encoding="utf-8-sig").drop(columns="ID")
    frame.to_csv(tmp_path / "pandas.csv")  # pandas' default: an unnamed index column first
    for name in ("bom.csv", "latin.csv", "zipped.csv.gz", "pandas.csv"):
        s = load_splits(Config(dataset=f"csv:{tmp_path / name}", target="label", standardize=False))
        pre = s.preprocess
        assert pre.categories == [["café", "thé"]] and pre.classes == ["0", "1"], name
        assert "price" in pre.numeric_names and float(s.train.x[:, pre.numeric_names.index("price")].min()) >= 1000
    notes = load_splits(Config(dataset=f"csv:{tmp_path / 'latin.csv'}", target="label")).notes
    assert any("read it as Latin-1" in n for n in notes)
    notes = load_splits(Config(dataset=f"csv:{tmp_path / 'pandas.csv'}", target="label")).notes
    assert any("dropped the first column of pandas.csv" in n for n in notes)


MALFORMED = [
    ("ragged.csv", b"a,b,c\n1,2,0\n3,4,5,6\n", [], "row 3 has 4 columns, expected 3"),
    ("short.csv", b"a,b,c\n1,2,0\n3,4\n", [], "row 3 has 2 columns, expected 3"),
    ("empty.csv", b"", [], "is empty; it needs rows"),
    ("header.csv", b"a,b\n", [], "has a header but no rows"),
    ("single.csv", b"a;b\n1;2\n3;4\n", [], "has one column (is it separated by ';'"),
    ("word.csv", b"a,b\n1,0\n2,1\nx,0\n4,1\n", [], "non-numeric value 'x' in row 4, column 1 ('a')"),
    ("inf.csv", b"a,b\n1,0\ninf,1\n3,0\n", [], "infinite value in row 3"),
    ("broken.csv.gz", b"not gzip at all", [], "cannot be read"),
    ("twice.csv", b"a,a,b\n1,2,0\n3,4,1\n", [], "names column 'a' twice"),
    ("utf8.csv", "a,b\nü,0\né,1\n".encode("latin-1"), ["--encoding", "utf-8"], "is not valid utf-8 text"),
    ("ok.csv", b"a,b\n1,0\n2,1\n", ["--encoding", "klingon"], "unknown --encoding 'klingon'"),
    ("ok.csv", b"a,b\n1,0\n2,1\n", ["--encoding", "hex"], "--encoding 'hex' is not a text encoding"),
    ("ok.csv", b"a,b\n1,0\n2,1\n", ["--encoding", "utf-16"], "is not valid utf-16 text (UTF-16 stream does not start with BOM)"),
    ("trailing.csv", b"a,b,\n1,0,\n2,1,\n3,0,\n", [], "has no target value in any row; choose the target column with --target"),
    ("ok.csv", b"a,b\n1,0\n2,1\n", ["--target", "c"], "--target 'c' is not a column"),
    ("ok.csv", b"a,b\n1,0\n2,1\n", ["--val-fraction", "1.5"], "invalid --val-fraction 1.5"),
    ("gap.csv", b"a,b\n1,0\n,1\n3,0\n", ["--na", "error"], "row 3 has a missing value"),
    ("words.csv", b"a,b\n1,x\n2,y\n3,x\n", ["--task", "regression"], "the target holds words, not numbers"),
    ("ids.csv", ("id,b\n" + "".join(f"n{i},{i % 2}\n" for i in range(150))).encode(), [], "text column 'id' has 120 distinct values"),  # of the 120 training rows
]


@pytest.mark.parametrize("name, data, extra, match", MALFORMED, ids=[m[3][:30] for m in MALFORMED])
def test_every_malformed_file_is_one_error_line(tmp_path, name, data, extra, match):
    (tmp_path / name).write_bytes(data)
    result = invoke_app("train", "--no-progress", "--dataset", f"csv:{tmp_path / name}", "--output-dir",
                        str(tmp_path / "run"), *extra)
    assert_one_error_line(result.exit_code, result.stderr, result.output, match)
    assert not (tmp_path / "run").exists()


# --- splits and batch sizes -------------------------------------------------------------------------

def test_stratified_split_keeps_class_shares_and_is_fixed():
    labels = np.array([0] * 90 + [1] * 10)
    train_rows, val_rows = stratified_split(labels, 100, 0.2)
    assert sorted(np.concatenate([train_rows, val_rows]).tolist()) == list(range(100))
    assert np.bincount(labels[val_rows]).tolist() == [18, 2]
    again = stratified_split(labels, 100, 0.2)
    assert np.array_equal(again[1], val_rows)
    assert class_quotas(np.array([0, 0, 1, 2, 2, 2]), 3).tolist()[1] == 0  # a class of one row stays in training


def test_small_data_batch():
    assert small_data_batch(1438, 64) == 64  # 23 batches: unchanged
    assert small_data_batch(120, 64) == 12
    assert small_data_batch(16, 64) == 1
    assert small_data_batch(400, 64, processes=2) == 20


def test_preprocessing_state_round_trips_and_refuses_other_data(tmp_path):
    path = write_survey(tmp_path / "a.csv")
    pre = load_splits(Config(dataset=f"csv:{path}")).preprocess
    torch.save(pre.state_dict(), tmp_path / "p.pt")
    loaded = Preprocessor.from_state(torch.load(tmp_path / "p.pt", weights_only=True))
    assert loaded.same_as(pre)
    other = load_splits(Config(dataset=f"csv:{write_survey(tmp_path / 'b.csv', seed=5)}")).preprocess
    with pytest.raises(ValueError, match="the data changed"):
        other.load_state_dict(pre.state_dict())


def test_resume_is_bit_exact_with_preprocessing_stored(tmp_path):
    path = write_survey(tmp_path / "s.csv", n=200)
    base = ["train", "--no-progress", "--dataset", f"csv:{path}", "--patience", "0"]
    assert invoke_app(*base, "--epochs", "3", "--output-dir", str(tmp_path / "whole")).exit_code == 0
    assert invoke_app(*base, "--epochs", "1", "--output-dir", str(tmp_path / "parts")).exit_code == 0
    result = invoke_app("train", "--no-progress", "--resume", str(tmp_path / "parts"), "--epochs", "3")
    assert result.exit_code == 0, result.stderr
    whole, parts = (torch.load(ckpt.train_checkpoints(tmp_path / d)[0], weights_only=True) for d in ("whole", "parts"))
    assert Preprocessor.from_state(parts["preprocess"]).same_as(Preprocessor.from_state(whole["preprocess"]))
    for key in ("model", "optimizer"):
        flat_a, flat_b = _tensors(whole[key]), _tensors(parts[key])
        assert flat_a.keys() == flat_b.keys() and all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a)


def _tensors(tree: object, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _tensors(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in _tensors(sub, f"{prefix}/{i}").items()}
    return {}


def test_a_factory_with_word_or_shifted_labels_gets_classes_with_names(user_module):
    name = user_module("""
        import torch
        from torch.utils.data import Dataset, TensorDataset

        def floats(train):
            x = torch.arange(60, dtype=torch.float32).reshape(30, 2)
            return TensorDataset(x, (torch.arange(30) % 3).float())  # 0., 1., 2.

        def signs(train):
            return TensorDataset(torch.randn(30, 2), torch.arange(30) % 2 * 2 - 1)  # -1 / +1

        def one_to_k(train):
            return TensorDataset(torch.randn(30, 2), torch.arange(30) % 3 + 1)  # 1..3

        class Words(Dataset):
            def __len__(self):
                return 12
            def __getitem__(self, i):
                return torch.full((2,), float(i)), ["cat", "dog"][i % 2]

        def words(train):
            return Words()
    """)
    for factory, classes in (("floats", ["0", "1", "2"]), ("signs", ["-1", "1"]), ("one_to_k", ["1", "2", "3"]),
                             ("words", ["cat", "dog"])):
        s = load_splits(Config(dataset=f"{name}:{factory}"))
        assert (s.spec.task, s.spec.num_outputs, s.preprocess.classes) == ("classification", len(classes), classes)
        labels = {int(s.train[i][1]) for i in range(len(s.train))}
        assert labels == set(range(len(classes)))
    with pytest.raises(UserError, match="the target holds words, not numbers; use --task classification"):
        load_splits(Config(dataset=f"{name}:words", task="regression"))


def test_a_checkpoint_from_before_stored_preprocessing_is_not_resumed_on_a_csv(tmp_path):
    import hashlib

    path = write_survey(tmp_path / "s.csv", n=100)
    assert invoke_app("train", "--no-progress", "--dataset", f"csv:{path}", "--epochs", "1",
                      "--output-dir", str(tmp_path / "run")).exit_code == 0
    [old] = ckpt.train_checkpoints(tmp_path / "run")
    state = torch.load(old, weights_only=True)
    del state["preprocess"]  # as every checkpoint written before this change
    torch.save(state, old)
    old.with_name(old.name + ".sha256").write_text(f"{hashlib.sha256(old.read_bytes()).hexdigest()}  {old.name}\n")
    result = invoke_app("train", "--no-progress", "--resume", str(tmp_path / "run"), "--epochs", "2")
    assert_one_error_line(result.exit_code, result.stderr, result.output, "written before preprocessing was stored")


@pytest.mark.parametrize("target, classes", [
    (np.array([3, 1, 2, 1, 3, 0]), ["0", "1", "2", "3"]),
    (np.array([1.0, -1.0, 1.0, 2.5]), ["-1", "1", "2.5"]),
    (np.array(["cat", "dog", "cat", "bird"], dtype=object), ["bird", "cat", "dog"]),
    (np.array([[2], [0], [1]]), ["0", "1", "2"]),  # a column vector
])
def test_label_codes_name_each_distinct_label_as_row_by_row_naming_would(target, classes):
    from ignite_app.data.preprocess import label_codes, label_name

    expected = [classes.index(label_name(v)) for v in target.reshape(len(target))]
    codes = label_codes(target, classes, "d")
    assert codes.dtype == np.int64 and codes.tolist() == expected


@pytest.mark.parametrize("target, first", [
    (np.array([0, 7, 1, 9]), "7"),  # the first unknown label in the file's order, not the smallest
    (np.array([0.0, -2.0, 1.0]), "-2"),
    (np.array(["a", "zebra", "b", "yak"], dtype=object), "zebra"),
])
def test_label_codes_name_the_first_unknown_label(target, first):
    from ignite_app.data.preprocess import label_codes

    with pytest.raises(UserError, match=f"has label '{first}', which is not one of the model's classes"):
        label_codes(target, ["0", "1", "a", "b"], "d")


@pytest.mark.parametrize("seed", range(6))
def test_stratified_split_picks_the_rows_the_row_by_row_definition_picks(seed):
    """Each class's first quota rows in the shuffled order go to validation: the split a run was trained
    with must not change when its evaluation or resume recomputes it."""
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 400))
    labels = rng.integers(0, int(rng.integers(1, 12)), size)  # some classes empty or with one row
    train_rows, val_rows = stratified_split(labels, size, 0.25, seed=seed)

    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).numpy()
    quota = class_quotas(labels, min(size - 1, max(1, int(round(size * 0.25)))))
    taken, expected = np.zeros_like(quota), []
    for row in order:
        if taken[labels[row]] < quota[labels[row]]:
            taken[labels[row]] += 1
            expected.append(row)
    assert val_rows.tolist() == expected
    assert train_rows.tolist() == [row for row in order if row not in set(expected)]


def test_target_given_for_a_headerless_file_picks_that_column_and_keeps_the_others_as_features(tmp_path):
    """predict/evaluate --target N on a file without a header: column N is the target, wherever training had it."""
    from ignite_app.data.preprocess import feature_rows
    from ignite_app.data.tabular import read_table

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)) * [1, 10, 100], rng.integers(0, 2, 60)
    pd.DataFrame(np.column_stack([x, y])).to_csv(tmp_path / "train.csv", index=False, header=False)
    pre = load_splits(Config(dataset=f"csv:{tmp_path / 'train.csv'}")).preprocess
    pd.DataFrame(np.column_stack([y, x])).to_csv(tmp_path / "first.csv", index=False, header=False)
    expected = feature_rows(read_table(tmp_path / "train.csv", "--input", None), pre, None, "--input").numeric
    assert np.array_equal(expected, x)
    first = read_table(tmp_path / "first.csv", "--input", None)
    assert np.array_equal(feature_rows(first, pre, "0", "--input").numeric, x)
    assert np.array_equal(feature_rows(first, pre, "-4", "--input").numeric, x)
    with pytest.raises(UserError, match=r"--target '0,1' leaves 2 columns, but the model takes 3 feature columns"):
        feature_rows(first, pre, "0,1", "--input")


def test_a_text_column_whose_new_cells_all_look_like_numbers_keeps_them_as_written(tmp_path):
    """Codes such as 007 stay the category '007' at predict time (not '7', an unseen one), missing cells stay missing."""
    from ignite_app.data.preprocess import feature_rows
    from ignite_app.data.tabular import read_table

    rng = np.random.default_rng(0)
    code = rng.choice(["007", "012", "A12", "B7"], 80)
    pd.DataFrame({"a": rng.normal(size=80), "code": code, "y": np.isin(code, ["007", "012"]).astype(int)}).to_csv(
        tmp_path / "train.csv", index=False)
    pre = load_splits(Config(dataset=f"csv:{tmp_path / 'train.csv'}")).preprocess
    assert pre.text_names == ["code"] and sorted(pre.categories[0]) == ["007", "012", "A12", "B7"]
    (tmp_path / "new.csv").write_text("a,code\n0.1,007\n0.2,012\n0.3,\n")
    table = read_table(tmp_path / "new.csv", "--input", None)
    assert not table.columns[1].is_text  # this file alone reads as numbers
    assert feature_rows(table, pre, None, "--input").text[:, 0].tolist() == ["007", "012", None]
    subset = table.take(np.array([1, 2]))
    assert feature_rows(subset, pre, None, "--input").text[:, 0].tolist() == ["012", None]
