"""imagefolder: datasets, the decoded cache, augmentation on the device, normalisation stored with the model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_one_error_line, invoke_app, train_in_process
from ignite_app.config import Config
from ignite_app.data.arrays import StreamingArrayDataset, channel_stats
from ignite_app.data.augment import Augment, uniforms
from ignite_app.data.image_cache import load_image_splits, load_or_build
from ignite_app.data.images import TRAIN, VAL, scan_folder, stratified_split
from ignite_app.data.sources import ArrayDataset
from ignite_app.errors import UserError
from ignite_app.io import checkpoint as ckpt

CLASSES = ("cat", "dog", "fish")


def write_image(path: Path, label: int, seed: int, gray: bool = False, size: tuple[int, int] = (12, 10)) -> None:
    """A small image whose colour says its class, saved in the format its suffix names."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (size[1], size[0], 3), dtype=np.uint8)
    pixels[..., label] += 150
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    (image.convert("L") if gray else image).save(path)


def make_folder(root: Path, per_class: int = 10, corrupt: bool = True) -> Path:
    """Flat layout: PNG and JPEG, one grayscale image, one file that is not an image."""
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            write_image(root / name / f"{i:02d}.{'png' if i % 2 else 'jpg'}", label, 100 * label + i, gray=(label, i) == (1, 3))
    if corrupt:
        (root / "dog" / "broken.png").write_bytes(b"\x89PNG but not really")
    (root / "cat" / "notes.txt").write_text("not an image, ignored")
    return root


def make_nested(root: Path, train: int = 8, val: int = 3) -> Path:
    """train/ and val/ folders with the same classes."""
    for label, name in enumerate(CLASSES):
        for i in range(train):
            write_image(root / "train" / name / f"{i}.png", label, 1000 + 10 * label + i)
        for i in range(val):
            write_image(root / "val" / name / f"{i}.jpg", label, 2000 + 10 * label + i)
    return root


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_folder(tmp_path / "images")


def quiet(line: str) -> None:
    pass


# --- the folder and its splits -------------------------------------------------------------------


def test_flat_folder_classes_and_a_stratified_split(folder):
    scan = scan_folder(folder)
    assert scan.classes == CLASSES and not scan.has_val_folder
    assert len(scan.files) == 31 and {f.subset for f in scan.files} == {TRAIN}
    splits = load_image_splits(Config(dataset=f"imagefolder:{folder}", image_size=8))
    assert splits.classes == CLASSES
    assert len(splits.train) + len(splits.val) == 30  # the broken file is skipped
    assert splits.spec.input_shape == (3, 8, 8) and splits.spec.num_outputs == 3  # one RGB image makes all RGB
    val_labels = splits.val.y.tolist()
    assert sorted(val_labels) == [0, 0, 1, 1, 2, 2], "20% of each class (10, 9 and 10 images)"
    x, y = splits.train[0]
    assert x.dtype == torch.uint8 and x.shape == (3, 8, 8)


def test_fifos_and_broken_links_named_like_images_are_not_images(folder):
    os.mkfifo(folder / "cat" / "zzz.png")  # opening it would block until someone writes
    (folder / "dog" / "gone.png").symlink_to(folder / "nowhere.png")
    (folder / "dog" / "link.png").symlink_to(folder / "dog" / "01.png")  # a link to an image stays one
    names = sorted(Path(f.path).name for f in scan_folder(folder).files)
    assert "zzz.png" not in names and "gone.png" not in names and "link.png" in names
    assert len(names) == 32


@pytest.mark.parametrize("first, match", [
    ((9000, 9000), "is 9000x9000 pixels, so its shorter side (9000) cannot be the default --image-size (4-1024); pass --image-size N"),
    ((50, 1), "is 50x1 pixels, so its shorter side (1) cannot be the default --image-size"),
    (None, "-first.png, whose size would set the default --image-size (UnidentifiedImageError); pass --image-size N"),
])
def test_a_first_image_that_cannot_set_the_default_size_is_one_error_line(folder, tmp_path, first, match):
    from PIL import Image

    path = folder / "cat" / "-first.png"  # sorts before 00.jpg
    if first is None:
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    else:
        Image.new("L", first).save(path)  # all zeros: a small file, even at 9000x9000
    result = invoke_app("train", "--no-progress", "--dataset", f"imagefolder:{folder}", "--output-dir", str(tmp_path / "run"))
    assert_one_error_line(result.exit_code, result.stderr, result.output, match)
    assert not (tmp_path / "run").exists()
    assert not (folder / ".ignite_app_cache").exists() or not list((folder / ".ignite_app_cache").glob("*.npy"))


@pytest.mark.parametrize("channels", [1, 3])
def test_a_16_bit_grayscale_png_keeps_its_range(tmp_path, channels):
    from PIL import Image

    from ignite_app.data.images import decode_image

    ramp = np.linspace(0, 65535, 256).reshape(16, 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    pixels = decode_image(tmp_path / "g16.png", 16, channels)
    assert pixels.shape == (channels, 16, 16)
    assert np.array_equal(pixels[0], (ramp >> 8).astype(np.uint8))  # every channel the same gray ramp, 0-255
    assert np.array_equal(pixels[-1], pixels[0])


def test_stratified_split_is_seeded_and_keeps_every_class():
    labels = np.repeat(np.arange(4), [50, 5, 2, 1])
    train, val = stratified_split(labels, 0.2, seed=0)
    again = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[val], minlength=4).tolist() == [10, 1, 1, 0]  # a lone sample stays in training
    assert not np.array_equal(val, stratified_split(labels, 0.2, seed=1)[1])


def test_nested_train_and_val_folders_are_the_split(tmp_path):
    root = make_nested(tmp_path / "nested")
    splits = load_image_splits(Config(dataset=f"imagefolder:{root}", val_fraction=0.5))
    assert len(splits.train) == 24 and len(splits.val) == 9  # val/ is the validation split, whatever --val-fraction says
    assert splits.val.y.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert splits.spec.input_shape == (3, 10, 10)  # default size: the first image's shorter side


def test_all_grayscale_gives_one_channel(tmp_path):
    for label in range(2):
        for i in range(3):
            write_image(tmp_path / "g" / f"c{label}" / f"{i}.png", label, i, gray=True)
    splits = load_image_splits(Config(dataset=f"imagefolder:{tmp_path / 'g'}", image_size=6))
    assert splits.spec.input_shape == (1, 6, 6)


def test_bad_folders_are_one_error_line(tmp_path):
    (tmp_path / "one" / "only").mkdir(parents=True)
    with pytest.raises(UserError, match="at least 2"):
        scan_folder(tmp_path / "one")
    with pytest.raises(UserError, match="is not a folder"):
        scan_folder(tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir(parents=True)
    with pytest.raises(UserError, match="no images"):
        scan_folder(tmp_path / "empty")
    with pytest.raises(UserError, match="val-fraction"):
        Config(dataset="imagefolder:x", val_fraction=1.5)
    with pytest.raises(UserError, match="--augment"):
        Config(dataset="imagefolder:x", augment="crop,rotate")
    with pytest.raises(UserError, match="applies to imagefolder"):
        Config(dataset="digits", augment="on")


# --- the cache -----------------------------------------------------------------------------------


def decoded(lines: list[str]) -> int:
    return sum(line.startswith("decoding") for line in lines)


def test_cache_is_reused_then_rebuilt_when_a_file_changes(folder):
    lines: list[str] = []
    first = load_or_build(scan_folder(folder), 8, None, False, lines.append)
    assert decoded(lines) == 1 and first.path.parent == folder / ".ignite_app_cache"
    again = load_or_build(scan_folder(folder), 8, None, False, lines.append)
    assert decoded(lines) == 1, "the second run reads the cache"
    before = np.array(first.array())
    assert np.array_equal(before, again.array())
    target = folder / "fish" / "00.jpg"
    write_image(target, 0, seed=7)  # now a red fish: new content
    os.utime(target, ns=(1, 1))  # a different mtime whatever the clock's resolution
    changed = load_or_build(scan_folder(folder), 8, None, False, lines.append)
    assert decoded(lines) == 2
    assert not np.array_equal(before, changed.array())


@pytest.mark.parametrize("damage", ["flip-a-byte", "truncate", "no-json", "bad-json", "short-labels", "label-7", "subset-5"])
def test_a_damaged_or_half_written_cache_is_rebuilt(folder, damage):
    lines: list[str] = []
    cache = load_or_build(scan_folder(folder), 8, None, False, lines.append)
    want = np.array(cache.array())
    meta = cache.path.with_suffix(".json")
    if damage == "flip-a-byte":
        data = bytearray(cache.path.read_bytes())
        data[-5] ^= 0xFF
        cache.path.write_bytes(bytes(data))
    elif damage == "truncate":
        cache.path.write_bytes(cache.path.read_bytes()[:-100])
    elif damage == "no-json":
        meta.unlink()
    elif damage == "bad-json":
        meta.write_text("{not json")
    else:  # the JSON has no checksum: labels and subsets are checked against the rows and the classes
        values = json.loads(meta.read_text())
        key, change = {"short-labels": ("labels", lambda v: v[:10]), "label-7": ("labels", lambda v: [7] * len(v)),
                       "subset-5": ("subsets", lambda v: [5] * len(v))}[damage]
        values[key] = change(values[key])
        meta.write_text(json.dumps(values))
    rebuilt = load_or_build(scan_folder(folder), 8, None, False, lines.append)
    assert decoded(lines) == 2
    assert np.array_equal(rebuilt.array(), want)
    assert np.array_equal(rebuilt.labels, cache.labels) and np.array_equal(rebuilt.subsets, cache.subsets)
    assert json.loads(meta.read_text())["shape"] == [30, 3, 8, 8]


def test_unreadable_images_are_reported_or_stop_the_run_with_strict(folder, tmp_path):
    lines: list[str] = []
    cache = load_or_build(scan_folder(folder), 8, str(tmp_path / "cache"), False, lines.append)
    assert cache.skipped == 1 and cache.path.parent == tmp_path / "cache"
    report = (tmp_path / "cache" / "images-8px.unreadable.txt").read_text().splitlines()
    assert len(report) == 1 and report[0].startswith(str(folder / "dog" / "broken.png") + ": ")
    assert any("skipped 1 unreadable" in line for line in lines)
    result = invoke_app("train", "--dataset", f"imagefolder:{folder}", "--strict", "--cache-dir", str(tmp_path / "c2"),
                        "--output-dir", str(tmp_path / "run"))
    assert_one_error_line(result.exit_code, result.stderr, result.output, "broken.png")
    assert not (tmp_path / "run").exists()


# --- augmentation --------------------------------------------------------------------------------


def batch(n: int = 16, size: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


ALL = ("resized-crop", "crop", "flip")


def test_augmentation_is_a_function_of_seed_epoch_and_sample():
    x, index = batch(), torch.arange(100, 116)
    aug = Augment(ALL, seed=3)
    out = aug(x, index, epoch=0)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, Augment(ALL, seed=3)(x, index, epoch=0)), "same seed, same batch"
    assert not torch.equal(out, aug(x, index, epoch=1)), "another epoch, other crops"
    assert not torch.equal(out, Augment(ALL, seed=4)(x, index, epoch=0))
    halves = torch.cat([aug(x[:5], index[:5], 0), aug(x[5:], index[5:], 0)])
    assert torch.equal(out, halves), "a sample's augmentation does not depend on its batch"


def test_crop_is_a_padded_window_and_flip_mirrors():
    x, index = batch(64), torch.arange(64)
    cropped = Augment(("crop",), seed=0, padding=2)(x, index, 0)
    for n in range(64):
        padded = torch.nn.functional.pad(x[n], (2, 2, 2, 2))
        windows = [padded[:, i : i + 8, j : j + 8] for i in range(5) for j in range(5)]
        assert any(torch.equal(cropped[n], w) for w in windows)
    flipped = Augment(("flip",), seed=0)(x, index, 0)
    mirrored = [torch.equal(flipped[n], x[n].flip(-1)) for n in range(64)]
    assert all(m or torch.equal(flipped[n], x[n]) for n, m in enumerate(mirrored))
    assert 16 < sum(mirrored) < 48


def test_uniforms_are_spread_over_zero_to_one():
    u = uniforms(0, 0, torch.arange(10_000), 0)
    assert u.min() >= 0 and u.max() < 1
    assert abs(float(u.mean()) - 0.5) < 0.02
    assert np.histogram(u.numpy(), bins=10, range=(0, 1))[0].min() > 900


# --- training, normalisation, inference ----------------------------------------------------------


def image_options(root: Path, **extra: object) -> dict[str, object]:
    return {"dataset": f"imagefolder:{root}", "image_size": 8, "batch_size": 8, "augment": "crop,flip,resized-crop", **extra}


def test_training_with_augmentation_is_reproducible_and_stores_the_statistics(folder, tmp_path):
    from conftest import trained_weights

    a = train_in_process(tmp_path / "a", epochs=2, **image_options(folder))
    b = train_in_process(tmp_path / "b", epochs=2, **image_options(folder))
    wa, wb = trained_weights(a), trained_weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    mean, std = channel_stats(a.splits.train)
    assert torch.allclose(wa["pixel_mean"].flatten(), mean) and torch.allclose(wa["pixel_std"].flatten(), std)
    assert float(mean[0]) != pytest.approx(float(mean[1]), abs=1e-3)


def test_streamed_data_trains_exactly_like_data_in_memory(folder, tmp_path, monkeypatch):
    from conftest import trained_weights
    from ignite_app.data import image_cache

    memory = train_in_process(tmp_path / "m", epochs=1, **image_options(folder))
    monkeypatch.setattr(image_cache, "fits_in_memory", lambda path, rows, budget: False)
    streamed = train_in_process(tmp_path / "s", epochs=1, **image_options(folder))
    assert isinstance(memory.splits.train, ArrayDataset)
    assert isinstance(streamed.splits.train, StreamingArrayDataset)
    wm, ws = trained_weights(memory), trained_weights(streamed)
    assert all(torch.equal(wm[k], ws[k]) for k in wm)


def test_the_memory_rule_follows_the_budget(folder):
    from ignite_app.data.arrays import fits_in_memory

    cache = load_or_build(scan_folder(folder), 64, None, False, quiet)  # 30 images of 12 KiB: 360 KiB
    assert fits_in_memory(cache.path, 30, budget_mb=1)
    assert not fits_in_memory(cache.path, 100, budget_mb=1)  # 1.2 MB


def test_streaming_dataset_reads_the_rows_it_is_asked(folder):
    cache = load_or_build(scan_folder(folder), 8, None, False, quiet)
    rows = np.array([3, 0, 29, 7])
    ds = StreamingArrayDataset(cache.path, rows, torch.arange(4))
    x, y = ds.__getitems__([2, 0])
    assert torch.equal(x, torch.from_numpy(np.array(cache.array()[[29, 3]]))) and y.tolist() == [2, 0]
    assert torch.equal(ds[1][0], torch.from_numpy(np.array(cache.array()[0])))


def test_predict_on_an_image_folder_agrees_with_evaluate(tmp_path):
    root = make_nested(tmp_path / "nested")
    run = tmp_path / "run"
    result = invoke_app("train", "--dataset", f"imagefolder:{root}", "--image-size", "8", "--augment", "on",
                        "--epochs", "3", "--batch-size", "8", "--no-progress", "--patience", "0", "--output-dir", str(run))
    assert result.exit_code == 0, result.output + result.stderr
    for path in (ckpt.train_checkpoints(run)[0], ckpt.best_checkpoint(run)):  # the statistics travel with the model
        state = torch.load(path, weights_only=True)
        assert state["model"]["pixel_mean"].shape == (1, 3, 1, 1) and (state["model"]["pixel_std"] > 0).all()
    evaluated = invoke_app("evaluate", str(run), "--json")
    assert evaluated.exit_code == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    out = tmp_path / "pred.npz"
    predicted = invoke_app("predict", str(run), "--input", str(root / "val"), "--output", str(out))
    assert predicted.exit_code == 0, predicted.stderr
    labels = np.load(out)["labels"]
    truth = np.repeat(np.arange(3), 3)  # val/cat, val/dog, val/fish, sorted by path
    assert len(labels) == 9
    assert float((labels == truth).mean()) == pytest.approx(metrics["accuracy"])
    one = invoke_app("predict", str(run), "--input", str(root / "val" / "dog" / "1.jpg"), "--output", str(tmp_path / "one.npz"))
    assert one.exit_code == 0, one.stderr
    assert np.load(tmp_path / "one.npz")["labels"][0] == labels[4]
