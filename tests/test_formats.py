"""Bringing one's own data set: the COCO, VOC and YOLO readers, the cache's COCO form,
bad input as one line and exit 2, and train / distill / eval / show on an imported
set through the command line. Every data set here is a few tiny images the test
writes itself; BCCD is read from ../shared/data when it is there."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image

from bckd_train import __main__ as cli
from bckd_train import checkpoints, config, data, formats
from bckd_train.errors import UserError
from bckd_train.formats import writers
from bckd_train.model import GFL, ModelConfig

BCCD = os.path.join(ROOT, "..", "shared", "data", "bccd", "BCCD")
W, H = 64, 48
CLASSES = ("cat", "dog")
# (split, name, [(class, x1, y1, x2, y2), ...]) in pixels
IMAGES = [
    ("train", "a", [("cat", 4, 4, 30, 20), ("dog", 30, 10, 60, 44)]),
    ("train", "b", [("dog", 10, 8, 40, 40)]),
    ("train", "c", [("cat", 2, 2, 20, 30), ("cat", 40, 20, 62, 46)]),
    ("train", "d", [("dog", 20, 4, 50, 30)]),
    ("val", "e", [("cat", 8, 6, 36, 40), ("dog", 38, 2, 62, 26)]),
    ("test", "f", [("dog", 5, 5, 55, 45)]),
]


def write_image(path, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def make_voc(root, images=IMAGES, splits=True):
    for k, (_, name, objects) in enumerate(images):
        write_image(os.path.join(root, "JPEGImages", f"{name}.jpg"), k)
        xml = [f"<annotation><filename>{name}.jpg</filename><path>/elsewhere/{name}.jpg</path>"]
        xml += [f"<object><name>{c}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                f"<ymax>{y2}</ymax></bndbox></object>" for c, x1, y1, x2, y2 in objects]
        os.makedirs(os.path.join(root, "Annotations"), exist_ok=True)
        with open(os.path.join(root, "Annotations", f"{name}.xml"), "w") as f:
            f.write("".join(xml) + "</annotation>")
    if splits:
        os.makedirs(os.path.join(root, "ImageSets", "Main"))
        for split in formats.SPLITS:
            with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
                f.writelines(f"{name}\n" for s, name, _ in images if s == split)
    return str(root)


def coco_json(images, classes=CLASSES):
    out = {"images": [], "annotations": [], "categories": [{"id": 10 * (k + 1), "name": c} for k, c in enumerate(classes)]}
    for _, name, objects in images:
        image_id = len(out["images"]) + 100
        out["images"].append({"id": image_id, "file_name": f"{name}.png", "width": W, "height": H})
        for c, x1, y1, x2, y2 in objects:
            out["annotations"].append({"id": len(out["annotations"]) + 1, "image_id": image_id,
                                       "category_id": 10 * (classes.index(c) + 1), "bbox": [x1, y1, x2 - x1, y2 - y1],
                                       "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    return out


def make_coco(root, images=IMAGES, per_split=True):
    """train.json, val.json and test.json (or one instances.json) and images/."""
    for k, (_, name, _) in enumerate(images):
        write_image(os.path.join(root, "images", f"{name}.png"), k)
    groups = {s: [im for im in images if im[0] == s] for s in formats.SPLITS} if per_split else {"instances": images}
    for split, group in groups.items():
        with open(os.path.join(root, f"{split}.json"), "w") as f:
            json.dump(coco_json(group), f)
    return str(root)


def make_yolo(root, images=IMAGES):
    for k, (split, name, objects) in enumerate(images):
        write_image(os.path.join(root, "images", split, f"{name}.png"), k)
        os.makedirs(os.path.join(root, "labels", split), exist_ok=True)
        with open(os.path.join(root, "labels", split, f"{name}.txt"), "w") as f:
            for c, x1, y1, x2, y2 in objects:
                f.write(f"{CLASSES.index(c)} {(x1 + x2) / 2 / W} {(y1 + y2) / 2 / H} {(x2 - x1) / W} {(y2 - y1) / H}\n")
    with open(os.path.join(root, "data.yaml"), "w") as f:
        f.write("path: .\ntrain: images/train\nval: images/val\ntest: images/test\nnames:\n  0: cat\n  1: dog\n")
    return os.path.join(root, "data.yaml")


MAKERS = {"coco": make_coco, "voc": make_voc, "yolo": make_yolo}


def expected_boxes(split):
    return [(np.array([o[1:] for o in objects], dtype=np.float64), [CLASSES.index(o[0]) for o in objects])
            for s, _, objects in IMAGES if s == split]


@pytest.mark.parametrize("fmt", MAKERS)
def test_reader_keeps_splits_classes_and_boxes(fmt, tmp_path):
    dataset = formats.read(fmt, MAKERS[fmt](tmp_path))
    assert dataset.classes == CLASSES and dataset.split_seed is None
    assert {s: len(v) for s, v in dataset.splits.items()} == {"train": 4, "val": 1, "test": 1}
    for split in formats.SPLITS:
        for sample, (boxes, labels) in zip(dataset.splits[split], expected_boxes(split)):
            assert (sample.width, sample.height) == (W, H)
            np.testing.assert_allclose(sample.boxes, boxes, atol=1e-4)  # YOLO's are normalised floats
            assert sample.labels.tolist() == labels
    assert sum(dataset.dropped.values()) == 0


@pytest.mark.parametrize("fmt", MAKERS)
def test_without_splits_the_seeded_split_is_recorded(fmt, tmp_path, capsys):
    if fmt == "voc":
        path = make_voc(tmp_path, splits=False)
    elif fmt == "coco":
        path = os.path.join(make_coco(tmp_path, per_split=False), "instances.json")
    else:
        path = make_yolo(tmp_path)
        with open(path, "w") as f:
            f.write("train: [images/train, images/val, images/test]\nnames: [cat, dog]\n")
    assert cli.main(["data", "--name", "pets", "--format", fmt, "--path", path, "--seed", "3",
                     "--cache", str(tmp_path / "cache")]) == 0
    assert "splits drawn with seed 3" in capsys.readouterr().out
    folder = tmp_path / "cache" / "data" / "pets"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["split_seed"] == 3 and meta["classes"] == list(CLASSES) and meta["format"] == fmt
    assert {s: meta["splits"][s]["images"] for s in meta["splits"]} == {"train": 4, "val": 1, "test": 1}
    assert sorted(os.listdir(folder)) == ["images", "meta.json", "test.json", "train.json", "val.json"]


def test_cache_form_loads_as_coco_and_reads_back(tmp_path):
    """write_coco's folder: CocoDetection and pycocotools read it, the boxes are the
    reader's, and read_coco reads it back as it was."""
    from pycocotools.coco import COCO

    dataset = formats.read_voc(make_voc(tmp_path / "voc"))
    out = formats.write_coco(dataset, str(tmp_path / "cache" / "pets"))
    for split in formats.SPLITS:
        coco = CocoDetectionOf(out, split)
        assert coco.classes == CLASSES and len(coco) == len(dataset.splits[split])
        for k, sample in enumerate(dataset.splits[split]):
            image, target = coco[k]
            assert tuple(image.shape) == (3, H, W)
            np.testing.assert_allclose(target["boxes"].numpy(), sample.boxes, rtol=1e-6)
            assert target["labels"].tolist() == sample.labels.tolist()
        assert len(COCO(os.path.join(out, f"{split}.json")).getAnnIds()) == sum(len(s.boxes) for s in dataset.splits[split])
    again = formats.read_coco(out)
    assert again.classes == CLASSES
    for split in formats.SPLITS:
        for a, b in zip(again.splits[split], dataset.splits[split]):
            np.testing.assert_allclose(a.boxes, b.boxes) and np.testing.assert_array_equal(a.labels, b.labels)


def CocoDetectionOf(folder, split):
    return data.CocoDetection(folder, split)


@pytest.mark.parametrize("fmt", MAKERS)
def test_to_yolo_round_trip(fmt, tmp_path, capsys):
    path = MAKERS[fmt](tmp_path / "src")
    assert cli.main(["to-yolo", "--format", fmt, "--path", path, "--out", str(tmp_path / "yolo")]) == 0
    assert f"wrote {tmp_path / 'yolo' / 'data.yaml'}" in capsys.readouterr().out
    back = formats.read_yolo(str(tmp_path / "yolo" / "data.yaml"))
    assert back.classes == CLASSES
    for split in formats.SPLITS:
        for sample, (boxes, labels) in zip(back.splits[split], expected_boxes(split)):
            np.testing.assert_allclose(sample.boxes, boxes, atol=1e-3)
            assert sample.labels.tolist() == labels


def test_coco_one_json_per_split_and_yolo_lists(tmp_path):
    root = make_coco(tmp_path / "coco")
    per_split = formats.read_coco({s: os.path.join(root, f"{s}.json") for s in ("train", "val")})
    assert set(per_split.splits) == {"train", "val"} and per_split.split_seed is None
    # categories matched by name when a later split lists them in another order
    val = coco_json([im for im in IMAGES if im[0] == "val"], classes=("dog", "cat"))
    with open(os.path.join(root, "val.json"), "w") as f:
        json.dump(val, f)
    assert formats.read_coco(root).splits["val"][0].labels.tolist() == [0, 1]
    yaml = make_yolo(tmp_path / "yolo")
    with open(tmp_path / "yolo" / "train.txt", "w") as f:
        f.write("./images/train/a.png\nimages/train/b.png\n")
    with open(yaml, "w") as f:
        f.write("path: .\ntrain: train.txt\nval: [images/val]\nnames: [cat, dog]\n")
    dataset = formats.read_yolo(yaml)
    assert [os.path.basename(s.path) for s in dataset.splits["train"]] == ["a.png", "b.png"]


def test_class_order_can_be_given(tmp_path):
    dataset = formats.read("voc", make_voc(tmp_path), classes=["dog", "cat"])
    assert dataset.classes == ("dog", "cat") and dataset.splits["test"][0].labels.tolist() == [0]
    with pytest.raises(UserError, match="class 'dog' is not in the classes \\['cat'\\]"):
        formats.read("coco", make_coco(tmp_path / "coco"), classes=["cat"])


# ------------------------------------------------------------ bad input ----


def one_line_error(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def data_argv(fmt, path, tmp_path, *extra):
    return ["data", "--name", "pets", "--format", fmt, "--path", str(path), "--cache", str(tmp_path / "cache"), *extra]


def no_data_set(tmp_path):
    folder = tmp_path / "cache" / "data"
    return not folder.exists() or os.listdir(folder) == []


@pytest.mark.parametrize("fmt", MAKERS)
def test_missing_path_is_one_line(fmt, tmp_path, capsys):
    err = one_line_error(data_argv(fmt, tmp_path / "nope", tmp_path), capsys)
    assert str(tmp_path / "nope") in err and "not found" in err
    assert no_data_set(tmp_path)


def test_missing_image_folder_and_list_are_one_line(tmp_path, capsys):
    os.remove(os.path.join(make_voc(tmp_path / "voc"), "JPEGImages", "a.jpg"))
    assert str(tmp_path / "voc" / "JPEGImages" / "a.jpg") in one_line_error(data_argv("voc", tmp_path / "voc", tmp_path), capsys)
    yaml = make_yolo(tmp_path / "yolo")
    with open(yaml) as f:
        text = f.read().replace("test: images/test", "test: missing/")
    with open(yaml, "w") as f:
        f.write(text)
    assert str(tmp_path / "yolo" / "missing") in one_line_error(data_argv("yolo", yaml, tmp_path), capsys)
    root = make_coco(tmp_path / "coco")
    err = one_line_error(data_argv("coco", os.path.join(root, "train.json"), tmp_path, "--images", str(tmp_path / "no")),
                         capsys)
    assert str(tmp_path / "no") in err
    assert no_data_set(tmp_path)


BROKEN = {"coco": ("train.json", '{"images": [{"id": 1,'), "voc": ("Annotations/b.xml", "<annotation><object>"),
          "yolo": ("data.yaml", "names: [cat, dog\ntrain: images/train\n")}


@pytest.mark.parametrize("fmt", MAKERS)
def test_broken_annotation_file_is_one_line(fmt, tmp_path, capsys):
    path = MAKERS[fmt](tmp_path)
    broken = os.path.join(tmp_path, BROKEN[fmt][0])
    with open(broken, "w") as f:
        f.write(BROKEN[fmt][1])
    err = one_line_error(data_argv(fmt, path, tmp_path), capsys)
    assert broken in err and "not a readable" in err
    assert no_data_set(tmp_path)


@pytest.mark.parametrize("fmt", MAKERS)
def test_undecodable_image_is_one_line(fmt, tmp_path, capsys):
    path = MAKERS[fmt](tmp_path)
    image = {"coco": "images/c.png", "voc": "JPEGImages/c.jpg", "yolo": "images/train/c.png"}[fmt]
    with open(tmp_path / image, "wb") as f:
        f.write(b"\x89PNG not really")
    err = one_line_error(data_argv(fmt, path, tmp_path), capsys)
    assert str(tmp_path / image) in err and "does not decode" in err
    assert no_data_set(tmp_path)


def test_unknown_format_and_wrong_arguments_are_one_line(tmp_path, capsys):
    assert "--format 'kitti'" in one_line_error(data_argv("kitti", tmp_path, tmp_path), capsys)
    assert "--format 'kitti'" in one_line_error(["to-yolo", "--format", "kitti", "--path", str(tmp_path), "--out",
                                                 str(tmp_path / "y")], capsys)
    assert "need --name" in one_line_error(["data", "--format", "voc", "--path", str(tmp_path)], capsys)
    assert "built-in" in one_line_error(["data", "--name", "fashion", "--format", "voc", "--path", str(tmp_path)], capsys)
    assert "--name '../x'" in one_line_error(["data", "--name", "../x", "--format", "voc", "--path", "."], capsys)
    assert "--images is for --format coco" in one_line_error(data_argv("voc", tmp_path, tmp_path, "--images", "."), capsys)
    err = one_line_error(["eval", "--ckpt", "x.pth", "--data", "nothing", "--cache", str(tmp_path)], capsys)
    assert "x.pth does not exist" in err


def test_bad_labels_name_their_file_and_line(tmp_path, capsys):
    yaml = make_yolo(tmp_path / "yolo")
    label = tmp_path / "yolo" / "labels" / "train" / "b.txt"
    for text, message in (("0 0.5 0.5 0.2\n", "line 1 has 4 values"), ("0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.1 0.1\n",
                                                                         "line 2: class 2 is not one of"),
                          ("0 a b c d\n", "line 1 is not numbers")):
        label.write_text(text)
        err = one_line_error(data_argv("yolo", yaml, tmp_path), capsys)
        assert str(label) in err and message in err, err
    root = make_coco(tmp_path / "coco")
    coco = json.loads(open(os.path.join(root, "val.json")).read())
    coco["annotations"][0]["category_id"] = 99
    with open(os.path.join(root, "val.json"), "w") as f:
        json.dump(coco, f)
    err = one_line_error(data_argv("coco", root, tmp_path), capsys)
    assert os.path.join(root, "val.json") in err and "category_id 99" in err
    assert no_data_set(tmp_path)


FIXES = [  # (split, name, objects): a degenerate box, one reaching outside, one wholly outside, an image without
    ("train", "g", [("cat", 10, 10, 10, 30), ("dog", 50, 30, 80, 60), ("cat", 100, 100, 120, 110)]),
    ("train", "h", []),
    ("train", "i", [("dog", 30, 20, 20, 40)]),  # only a degenerate box: the image goes too
]


@pytest.mark.parametrize("fmt", MAKERS)
def test_degenerate_outside_and_empty_are_counted_not_fatal(fmt, tmp_path, capsys):
    path = MAKERS[fmt](tmp_path / "src", IMAGES + FIXES)  # YOLO: w <= 0 as written, cx > 1 outside
    assert cli.main(data_argv(fmt, path, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "degenerate boxes dropped: 2" in out
    assert "boxes clipped to their image: 1" in out
    assert "boxes outside their image dropped: 1" in out
    assert "images without boxes dropped: 2" in out
    assert "train: 5 images, 7 boxes (cat 3, dog 4)" in out
    meta = json.loads((tmp_path / "cache" / "data" / "pets" / "meta.json").read_text())
    assert meta["dropped"]["images without boxes dropped"] == 2
    train = data.CocoDetection(str(tmp_path / "cache" / "data" / "pets"), "train")
    _, target = train[[im["file_name"] for im in train.images].index("train/" + ("g.jpg" if fmt == "voc" else "g.png"))]
    np.testing.assert_allclose(target["boxes"].numpy(), [[50, 30, W, H]], atol=1e-3)  # clipped to the image


def test_killed_write_leaves_no_half_data_set(tmp_path, monkeypatch, capsys):
    """The writer fails after two images: the cache has no pets folder and no temporary
    one; a stale temporary folder of a killed earlier run is removed by the next write;
    a second import replaces the first whole."""
    path = make_voc(tmp_path / "voc")
    real, calls = writers.shutil.copyfile, []

    def copyfile(src, dst):
        calls.append(src)
        if len(calls) > 2:
            raise KeyboardInterrupt  # as a Ctrl-C midway
        return real(src, dst)

    monkeypatch.setattr(writers.shutil, "copyfile", copyfile)
    with pytest.raises(KeyboardInterrupt):
        cli.main(data_argv("voc", path, tmp_path))
    assert os.listdir(tmp_path / "cache" / "data") == []
    monkeypatch.setattr(writers.shutil, "copyfile", real)
    stale = tmp_path / "cache" / "data" / ".pets.tmp-999999999"  # no such process: a killed writer's
    live = tmp_path / "cache" / "data" / f".pets.tmp-{os.getppid()}"  # a running process's: another writer's
    stale.mkdir()
    live.mkdir()
    assert cli.main(data_argv("voc", path, tmp_path)) == 0
    assert sorted(os.listdir(tmp_path / "cache" / "data")) == [live.name, "pets"]
    live.rmdir()
    assert cli.main(data_argv("voc", path, tmp_path, "--classes", "dog,cat")) == 0
    assert os.listdir(tmp_path / "cache" / "data") == ["pets"]
    assert data.classes("pets", str(tmp_path / "cache")) == ("dog", "cat")


@pytest.mark.skipif(not os.path.isdir(BCCD), reason="BCCD is not at ../shared/data/bccd/BCCD")
def test_bccd_reads_with_its_splits_and_two_degenerate_boxes():
    dataset = formats.read_voc(BCCD)
    assert dataset.classes == ("Platelets", "RBC", "WBC") and dataset.split_seed is None
    assert {s: len(v) for s, v in dataset.splits.items()} == {"train": 205, "val": 87, "test": 72}
    assert dataset.dropped["degenerate boxes dropped"] == 2
    assert sum(len(s.boxes) for v in dataset.splits.values() for s in v) == 4888 - 2
    assert {(s.width, s.height) for v in dataset.splits.values() for s in v} == {(640, 480)}


# ------------------------------------------------- training on an import ----


@pytest.fixture
def tiny(monkeypatch):
    """A preset small enough for a test: random weights (no wheel), 2 images a batch."""
    cfg = dataclasses.replace(config.PRESETS["instant"], name="tiny", batch_size=2, epochs=1, warmup_iters=1,
                              max_train_images=None, max_val_images=None,
                              model=ModelConfig(num_classes=1, fpn_channels=16, head_convs=1, pretrained=False))
    monkeypatch.setitem(config.PRESETS, "tiny", cfg)
    return cfg


def test_train_distill_eval_show_on_an_imported_set(tiny, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    common = ["--config", "tiny", "--cache", cache, "--device", "cpu", "--max-iters", "2"]
    assert cli.main(["data", "--name", "pets", "--format", "coco", "--path", make_coco(tmp_path / "coco"),
                     "--cache", cache]) == 0
    teacher = tmp_path / "teacher"
    assert cli.main(["train", "--data", "pets", "--out", str(teacher), *common]) == 0
    ckpt = torch.load(teacher / "checkpoint.pth", weights_only=False)
    assert ckpt["dataset"] == "pets" and ckpt["classes"] == list(CLASSES) and ckpt["iteration"] == 2
    assert ckpt["model"]["head.cls_out.weight"].shape[0] == 2  # the data set's class count, not the preset's
    assert "pets val, 1 images" in capsys.readouterr().out

    student = tmp_path / "student"
    assert cli.main(["distill", "--data", "pets", "--teacher", str(teacher / "checkpoint.pth"), "--method", "bckd",
                     "--out", str(student), *common]) == 0
    ckpt = torch.load(student / "checkpoint.pth", weights_only=False)
    assert ckpt["classes"] == list(CLASSES) and ckpt["method"] == "bckd"
    losses = [json.loads(line) for line in open(student / "log.jsonl") if '"loss"' in line]
    assert len(losses) == 2 and all("loss_bcdl" in r for r in losses)

    assert cli.main(["eval", "--ckpt", str(student / "checkpoint.pth"), "--split", "test", "--cache", cache,
                     "--device", "cpu"]) == 0
    assert "pets test, 1 images" in capsys.readouterr().out and (student / "eval_test.json").exists()
    assert cli.main(["show", "--ckpt", str(student / "checkpoint.pth"), "--image", "val/e.png", "--cache", cache,
                     "--device", "cpu", "--score", "0", "--out", str(tmp_path / "e.png")]) == 0
    assert Image.open(tmp_path / "e.png").size == (W, H)

    # the same names in another order are other classes: the teacher is refused, both lists named
    assert cli.main(["data", "--name", "pets2", "--format", "coco", "--path", str(tmp_path / "coco"),
                     "--classes", "dog,cat", "--cache", cache]) == 0
    capsys.readouterr()
    err = one_line_error(["distill", "--data", "pets2", "--teacher", str(teacher / "checkpoint.pth"), "--method",
                          "bckd", "--out", str(tmp_path / "refused"), *common], capsys)
    assert "teacher's classes ['cat', 'dog'] (dataset 'pets')" in err
    assert "the student's ['dog', 'cat'] (dataset 'pets2')" in err
    err = one_line_error(["eval", "--ckpt", str(student / "checkpoint.pth"), "--data", "pets2", "--cache", cache,
                          "--device", "cpu"], capsys)
    assert "['dog', 'cat']" in err and "['cat', 'dog']" in err
    err = one_line_error(["train", "--data", "pets2", "--resume", "--out", str(teacher), *common[:-2],
                          "--max-iters", "3"], capsys)
    assert "trained on data set 'pets'" in err
    assert "not prepared" in one_line_error(["train", "--data", "nope", "--out", str(tmp_path / "x"), *common], capsys)
    # one JSON per split, no test split: eval --split test says so
    assert cli.main(["data", "--name", "pets3", "--format", "coco", "--path", f"train={tmp_path / 'coco' / 'train.json'}",
                     f"val={tmp_path / 'coco' / 'val.json'}", "--cache", cache]) == 0
    capsys.readouterr()
    err = one_line_error(["eval", "--ckpt", str(student / "checkpoint.pth"), "--split", "test", "--data", "pets3",
                          "--cache", cache, "--device", "cpu"], capsys)
    assert "data set 'pets3' has no test split" in err


def test_checkpoint_without_classes_is_a_builtin_sets(tiny, tmp_path):
    """Checkpoints written before classes were kept load with their built-in set's classes."""
    model = GFL(dataclasses.replace(tiny.model, num_classes=10))
    torch.save({"model": model.state_dict(), "config": "tiny", "seed": 0}, tmp_path / "old.pth")
    cfg, loaded = checkpoints.load_checkpoint(str(tmp_path / "old.pth"))
    assert cfg.dataset == "fashion" and cfg.classes == data.FASHION_CLASSES and cfg.model.num_classes == 10
    assert loaded.head.cls_out.out_channels == 10
