"""MUSE, labelme and COCO sources: decoding, answers, and bad records named by file and index."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch

from training.data.coco import CocoDataset
from training.data.common import compressed_counts, decode_segmentation
from training.data.labelme import LabelmeDataset
from training.data.muse import MuseDataset
from training.data.sample import SEG_PLACEHOLDER, DataError

from tests.support.muse_fixtures import (ANN, H, W, box, compressed_rle, inst, polygon_and_rle_record, rect_poly,
                                         uncompressed_rle, write_image)

# pycocotools' decode under numpy 2 (not ours to fix)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def muse(tmp_path):
    rgb = write_image(tmp_path / "coco" / "train2014" / "COCO_train2014_000000000001.jpg")
    write_image(tmp_path / "coco" / "val2017" / "000000000002.png", seed=1)
    records = [
        polygon_and_rle_record(),
        {"coco_url": "http://images.cocodataset.org/val2017/000000000002.png", "height": H, "width": W,
         "ann_list": [ANN], "questions": ["Anything here?", "Two parts?"],
         "answers": [[], [inst([[0, 0, 10, 0, 10, 10, 0, 10], [5, 5, 15, 5, 15, 15, 5, 15]])]]},
    ]
    path = tmp_path / "muse.json"
    path.write_text(json.dumps(records))
    return path, tmp_path / "coco", records, rgb


def test_muse_decodes_all_segmentation_forms(muse):
    path, root, _, rgb = muse
    ds = MuseDataset(path, root)
    assert len(ds) == 4
    s = ds[0]
    assert (s.image == rgb).all() and s.image.dtype == np.uint8
    assert s.question == "What can I drink from?" and s.answer == "You can drink from {seg}."
    assert s.masks.shape == (1, H, W) and s.masks[0].sum() == 100 and (s.masks[0] == box(10, 5, 20, 15)).all()
    s = ds[1]  # null text answer -> template, uncompressed + compressed RLE
    assert (s.masks[0] == box(0, 0, 5, 10)).all() and (s.masks[1] == box(30, 20, 40, 30)).all()
    assert s.answer.count(SEG_PLACEHOLDER) == 2
    assert "and" in s.answer and ("bowl" in s.answer) and ("knife" in s.answer)
    s = ds[2]  # coco_url image under val2017, no targets
    assert s.masks.shape == (0, H, W) and SEG_PLACEHOLDER not in s.answer
    s = ds[3]  # two overlapping polygon parts are summed, then > 0: the union
    assert (s.masks[0] == (box(0, 0, 10, 10) | box(5, 5, 15, 15))).all()
    assert s.answer.count(SEG_PLACEHOLDER) == 1
    assert ds[1].answer == MuseDataset(path, root)[1].answer  # templates are a function of the index


def test_muse_templates_cover_both_forms():
    from training.data.muse import template_answer
    answers = {template_answer(["the cup", "the bowl", "the knife"], np.random.default_rng(i)) for i in range(40)}
    assert all(a.count(SEG_PLACEHOLDER) == 3 for a in answers)
    assert any(a.startswith("The cup is {seg}, the bowl is {seg} and the knife") for a in answers)
    assert any(a.startswith("Sure, the cup, the bowl and the knife are {seg}, {seg} and {seg}") for a in answers)


@pytest.mark.parametrize("case, message", [
    ("odd", "odd number of coordinates"),
    ("mismatch", "has 2 {seg}"),
    ("missing_image", "not found"),
    ("no_segmentation", "no 'segmentation'"),
    ("wrong_size", "RLE size is 10x10"),
])
def test_muse_bad_records_name_file_and_index(muse, case, message):
    path, root, records, _ = muse
    rec = records[1]
    if case == "odd":
        rec["answers"][1][0]["segmentation"] = [[0, 0, 10, 0, 10, 10, 0]]
    elif case == "mismatch":
        rec["text_answers"] = [None, "Here: {seg} and {seg}."]
    elif case == "missing_image":
        rec["coco_url"] = "http://x/val2017/nope.jpg"
    elif case == "no_segmentation":
        del rec["answers"][1][0]["segmentation"]
    elif case == "wrong_size":
        rec["answers"][1][0]["segmentation"] = {"size": [10, 10], "counts": [100]}
    path.write_text(json.dumps(records))
    ds = MuseDataset(path, root)
    with pytest.raises(DataError, match=message) as e:
        ds[3]
    assert str(path) in str(e.value) and "record 1 question 1" in str(e.value)
    ds[0]  # other records are unaffected


def test_muse_malformed_record_raises_on_access(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps([{"ann_list": [ANN], "questions": ["a", "b"], "answers": [[]]}]))
    ds = MuseDataset(path, tmp_path)
    assert len(ds) == 1
    with pytest.raises(DataError, match=r"m.json: record 0: malformed record: 2 questions but 1"):
        ds[0]


@pytest.mark.parametrize("ann_list", [[], None, "missing"])
def test_muse_record_without_instances_is_malformed_even_with_answers(muse, ann_list):
    path, root, records, _ = muse
    if ann_list == "missing":
        del records[1]["ann_list"]
    else:
        records[1]["ann_list"] = ann_list
    path.write_text(json.dumps(records))
    ds = MuseDataset(path, root)
    assert len(ds) == 2 + 1 and ds.malformed == {1: ds.malformed[1]} and "'ann_list' is missing or empty" in ds.malformed[1]
    with pytest.raises(DataError, match=r"muse\.json: record 1: malformed record: 'ann_list' is missing or empty"):
        ds[2]
    assert len(ds[1].masks) == 2  # record 0 is read as before


def test_compressed_rle_is_checked_before_decoding():
    with pytest.raises(ValueError, match="runs sum"):
        decode_segmentation({"size": [H, W], "counts": "0000"}, H, W)
    m = box(3, 4, 9, 20)
    assert sum(compressed_counts(compressed_rle(m)["counts"].encode())) == H * W


# --------------------------------------------------------------------------- labelme

def labelme_file(folder, name, shapes, questions=None, embed=False):
    rgb = write_image(folder / f"{name}.png", seed=len(name))
    data = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": f"{name}.png", "imageData": None,
            "imageHeight": H, "imageWidth": W}
    if embed:
        data["imageData"] = base64.b64encode((folder / f"{name}.png").read_bytes()).decode()
        data["imagePath"] = "elsewhere/missing.png"
    if questions is not None:
        data["questions"] = questions
    (folder / f"{name}.json").write_text(json.dumps(data))
    return rgb


def shape(label, points, kind="polygon", group_id=None):
    return {"label": label, "points": points, "group_id": group_id, "shape_type": kind, "flags": {}}


def test_labelme_derived_questions_and_shape_types(tmp_path):
    rgb = labelme_file(tmp_path, "a", [
        shape("cup", [[10, 5], [19, 5], [19, 14], [10, 14]]),
        shape("cup", [[30, 20], [25, 25]], "rectangle"),
        shape("ball", [[5, 20], [5, 24]], "circle"),
        shape("ball", [[0, 0], [2, 0], [2, 2]], group_id=1),
        shape("ball", [[36, 0], [39, 0], [39, 3]], group_id=1),
    ], embed=True)
    ds = LabelmeDataset(tmp_path)
    assert len(ds) == 2
    cups, balls = ds[0], ds[1]
    assert (cups.image == rgb).all()
    assert cups.question == "Segment every cup." and cups.answer == "The cup {seg} and the cup {seg}."
    assert cups.masks[0].sum() == 100 and (cups.masks[0] == box(10, 5, 20, 15)).all()  # outline included
    assert (cups.masks[1] == box(25, 20, 31, 26)).all()  # corners in any order
    assert balls.masks.shape == (2, H, W)  # the circle, and one instance of two grouped polygons
    yy, xx = np.mgrid[:H, :W]
    inside = (yy - 20) ** 2 + (xx - 5) ** 2 <= 9
    assert balls.masks[0][inside].all() and 40 < balls.masks[0].sum() < 90  # radius 4
    assert balls.masks[1][0, 0] and balls.masks[1][0, 39] and not balls.masks[1][0, 20]


def test_labelme_written_questions(tmp_path):
    shapes = [shape("cup", [[10, 5], [19, 5], [19, 14], [10, 14]]), shape("bowl", [[0, 0], [5, 5]], "rectangle"),
              shape("cup", [[30, 20], [35, 25]], "rectangle")]
    labelme_file(tmp_path, "b", shapes, [
        {"question": "What holds water?", "answer": "The bowl {seg} and the cups {seg}, {seg}.",
         "targets": ["bowl", "cup"]},
        {"question": "", "answer": "", "targets": []},  # a stub: ignored
        {"question": "Which is on the right?", "answer": "That cup {seg}.", "targets": [2]},
        {"question": "Too many?", "answer": "{seg}", "targets": ["cup"]},
    ])
    labelme_file(tmp_path, "c_empty", [], [{"question": "", "answer": "", "targets": []}])  # unfilled template
    ds = LabelmeDataset(tmp_path)
    assert len(ds) == 3 and ds.skipped == 1
    s = ds[0]
    assert s.names == ["bowl", "cup", "cup"]
    assert (s.masks[0] == box(0, 0, 6, 6)).all() and (s.masks[2] == box(30, 20, 36, 26)).all()
    assert (ds[1].masks[0] == box(30, 20, 36, 26)).all()
    with pytest.raises(DataError, match=r"b\.json question 3: answer has 1 \{seg\} but the targets are 2"):
        ds[2]


def test_labelme_bad_shapes(tmp_path):
    labelme_file(tmp_path, "d", [shape("cup", [[1, 1], [2, 2]]), shape("line", [[1, 1], [5, 5]], "line")])
    ds = LabelmeDataset(tmp_path)
    with pytest.raises(DataError, match=r"d\.json label 0: shape 0 \('cup'\): a polygon needs at least 3"):
        ds[0]
    with pytest.raises(DataError, match="not a region"):
        ds[1]


# --------------------------------------------------------------------------- COCO

def test_coco_one_sample_per_image_and_category(tmp_path):
    rgb = write_image(tmp_path / "images" / "000000000007.jpg")
    anns = [
        {"id": 1, "image_id": 7, "category_id": 1, "segmentation": rect_poly(10, 5, 20, 15), "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 3, "segmentation": compressed_rle(box(0, 0, 4, 4)), "iscrowd": 0},
        {"id": 3, "image_id": 7, "category_id": 1, "segmentation": uncompressed_rle(box(30, 0, 40, 10)),
         "iscrowd": 0},
    ]
    coco = {"images": [{"id": 7, "file_name": "000000000007.jpg", "height": H, "width": W}],
            "annotations": anns,
            "categories": [{"id": 1, "name": "traffic_light"}, {"id": 3, "name": "car"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    ds = CocoDataset(path, tmp_path / "images")
    assert len(ds) == 2
    a, b = ds[0], ds[1]
    assert a.question == "Segment every traffic light." and a.answer.count(SEG_PLACEHOLDER) == 2
    assert (a.masks[0] == box(10, 5, 20, 15)).all() and (a.masks[1] == box(30, 0, 40, 10)).all()
    assert b.question == "Segment every car." and b.answer == "The car is {seg}." and b.masks[0].sum() == 16
    assert (a.image == rgb).all()
    anns[1]["segmentation"] = [[0, 0, 4, 0, 4]]
    path.write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"instances\.json: sample 1 \(image 7, category 3\): annotation 1: .*odd"):
        CocoDataset(path, tmp_path / "images")[1]


def test_sources_plug_into_the_mixture(muse, tmp_path):
    from training.config import SourceConfig
    from training.data.dataset import source_reader

    path, root, _, _ = muse
    read, n = source_reader(SourceConfig(kind="muse", path=str(path), image_root=str(root)))
    assert n == 4 and read(0).masks.shape == (1, H, W)
    (tmp_path / "lm").mkdir()
    labelme_file(tmp_path / "lm", "e", [shape("cup", [[1, 1], [5, 1], [5, 5]])])
    read, n = source_reader(SourceConfig(kind="labelme", path=str(tmp_path / "lm")))
    assert n == 1 and read(0).answer == "The cup is {seg}."


def test_muse_record_without_questions_asks_per_category(muse):
    path, root, records, _ = muse
    anns = [{**inst(rect_poly(0, 0, 4, 4), "dog"), "category_id": 18},
            {**inst(rect_poly(10, 10, 14, 14), "cat"), "category_id": 17},
            {**inst(rect_poly(20, 20, 24, 24), "dog"), "category_id": 18}]
    records.append({"file_name": "COCO_train2014_000000000001.jpg", "height": H, "width": W, "ann_list": anns})
    records.append("not a record")
    path.write_text(json.dumps(records))
    ds = MuseDataset(path, root)
    assert len(ds) == 4 + 2 + 1
    dogs, cats = ds[4], ds[5]
    assert dogs.question == "Segment every dog." and dogs.masks.shape == (2, H, W) and dogs.names == ["the dog", "the dog"]
    assert cats.masks.shape == (1, H, W) and "cat" in cats.answer.lower()
    with pytest.raises(DataError, match="record 3: malformed record: expected a dict"):
        ds[6]


def test_prefetching_workers_give_the_same_batches_and_position():
    from pixellm_ros.model.scratch import tiny_random_pixellm
    from training.config import DataConfig, SourceConfig
    from training.data.dataset import IndexedBatches, MixtureStream

    _, tok = tiny_random_pixellm(0)
    stream = MixtureStream(DataConfig(sources=[SourceConfig(seed=3)]), tok, 224, seed=0)
    plain = IndexedBatches(stream, batch_size=3, rank=1, world=2, start=12)
    ahead = IndexedBatches(stream, batch_size=3, rank=1, world=2, start=12, workers=2)
    for _ in range(3):
        a, b = plain.next_batch(), ahead.next_batch()
        assert [it.source for it in a["items"]] == [it.source for it in b["items"]]
        assert torch.equal(a["pixels"], b["pixels"])
        assert all(torch.equal(x.masks, y.masks) for x, y in zip(a["items"], b["items"]))
    assert plain.position == ahead.position == 12 + 3 * 3 * 2


def test_records_cannot_read_images_outside_the_data_folder(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "secret"
    data.mkdir()
    outside.mkdir()
    write_image(outside / "x.png")
    (data / "link.png").symlink_to(outside / "x.png")
    for i, image_path in enumerate(["../secret/x.png", str(outside / "x.png"), "link.png"]):
        labelme_file(data, f"f{i}", [shape("cup", [[1, 1], [5, 1], [5, 5]])])
        record = json.loads((data / f"f{i}.json").read_text())
        (data / f"f{i}.json").write_text(json.dumps({**record, "imagePath": image_path}))
    ds = LabelmeDataset(data)
    for i in range(len(ds)):
        with pytest.raises(DataError, match="outside the data folder"):
            ds[i]
    records = [{"file_name": "../secret/x.png", "height": H, "width": W, "ann_list": [ANN], "questions": ["Q?"],
                "answers": [[inst(rect_poly(1, 1, 5, 5))]]}]
    (data / "muse.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match="outside the data folder"):
        MuseDataset(data / "muse.json", data)[0]
