"""`python -m training.evaluate --muse`: a model or saved masks scored on a small MUSE file, worked out by hand."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from pixellm_ros.engine import Engine
from training.evaluate import main

from tests.support.muse_fixtures import ANN, H, W, box, inst, polygon_and_rle_record, rect_poly, write_image

# pycocotools' decode under numpy 2 (not ours to fix)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
TRAIN_IMAGE = "COCO_train2014_000000000001.jpg"
FOUR = [box(0, 0, 4, 4), box(10, 0, 14, 4), box(20, 0, 24, 4), box(30, 0, 34, 4)]  # 16 px each


@pytest.fixture
def muse_file(tmp_path):
    """Records: 0 polygon + both RLE forms (file_name); 1 coco_url, no text_answers, 0 and 4 targets;
    2 empty ann_list (malformed); 3 questions without answers (malformed); 4 a good and an odd-polygon question."""
    write_image(tmp_path / "coco" / "train2014" / TRAIN_IMAGE)
    write_image(tmp_path / "coco" / "val2017" / "000000000002.png", seed=1)
    records = [
        polygon_and_rle_record(),
        {"coco_url": "http://images.cocodataset.org/val2017/000000000002.png", "height": H, "width": W,
         "ann_list": [ANN], "questions": ["Anything to eat?", "Which four?"],
         "answers": [[], [inst(rect_poly(x, 0, x + 4, 4), "block", f"block {x}") for x in (0, 10, 20, 30)]]},
        {"file_name": TRAIN_IMAGE, "height": H, "width": W, "ann_list": [],
         "questions": ["Q?"], "answers": [[inst(rect_poly(0, 0, 4, 4))]]},
        {"file_name": TRAIN_IMAGE, "height": H, "width": W, "ann_list": [ANN], "questions": ["Q?"]},
        {"file_name": TRAIN_IMAGE, "height": H, "width": W, "ann_list": [ANN],
         "questions": ["Where is the box?", "And the odd one?"],
         "answers": [[inst(rect_poly(0, 0, 10, 10))], [inst([[0, 0, 10, 0, 10, 10, 0]])]]},
    ]
    path = tmp_path / "muse.json"
    path.write_text(json.dumps(records))
    return path, tmp_path / "coco"


def save(folder, name, mask):
    folder.mkdir(exist_ok=True)
    if name.endswith(".npy"):
        np.save(folder / name, mask.astype(np.float32) * 2 - 1)  # logits: > 0 is the mask
    else:
        cv2.imwrite(str(folder / name), mask.astype(np.uint8) * 255)


def test_saved_predictions_are_scored_per_image_as_the_release(muse_file, tmp_path):
    path, root = muse_file
    pred = tmp_path / "pred"
    save(pred, "r0_q0_t0.png", box(10, 5, 20, 15))  # the cup
    save(pred, "r0_q0_t1.npy", box(0, 20, 4, 24))  # one too many (16 px)
    save(pred, "r000_q001_t0.png", box(0, 0, 5, 10))  # the bowl; the knife (100 px) is missed
    for t, m in enumerate(FOUR):  # record 1 question 0: no files = rightly no target
        save(pred, f"r1_q1_t{t}.{'npy' if t % 2 else 'png'}", m)
    save(pred, "r4_q0_t0.png", box(0, 0, 5, 10))  # half of the 100-px box
    save(pred, "r9_q0_t0.png", box(0, 0, 1, 1))  # no such record: reported as unused
    out = tmp_path / "eval"
    assert main(["--muse", str(path), "--image-root", str(root), "--predictions", str(pred), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    # Pair IoUs 1 + 0 | 1 + 0 | - | 4 x 1 | 0.5 over images max(3, 3) + max(4, 4) + max(1, 1) (questions: 2+2+4+1).
    assert report["gIoU"] == pytest.approx(6.5 / 8)
    assert report["cIoU"] == pytest.approx((100 + 50 + 64 + 50) / (116 + 150 + 64 + 100))
    assert report["target_count_accuracy"] == pytest.approx(3 / 5)
    assert report["questions"] == 5 and report["images"] == 3
    by = report["by_targets"]
    assert by["1"]["gIoU"] == pytest.approx((1 + 0.5) / (2 + 1)) and by["2"]["gIoU"] == pytest.approx(1 / 2)
    assert by["4+"]["gIoU"] == 1.0 and by["0"]["target_count_accuracy"] == 1.0 and by["3"]["questions"] == 0
    skipped = report["skipped"]
    assert len(skipped) == 3
    assert any("muse.json: record 2: malformed record: 'ann_list' is missing or empty" in s for s in skipped)
    assert any("muse.json: record 3: malformed record: 'answers' is missing" in s for s in skipped)
    assert any("muse.json: record 4 question 1" in s and "odd number of coordinates" in s for s in skipped)
    assert [(q["record"], q["question_index"], q["pred"], q["gt"]) for q in report["per_question"]] == [
        (0, 0, 2, 1), (0, 1, 1, 2), (1, 0, 0, 0), (1, 1, 4, 4), (4, 0, 1, 1)]
    assert (out / "examples.png").is_file()


def test_samples_take_whole_images(muse_file, tmp_path):
    path, root = muse_file
    out = tmp_path / "eval"
    (tmp_path / "none").mkdir()
    main(["--muse", str(path), "--image-root", str(root), "--predictions", str(tmp_path / "none"),
          "--samples", "3", "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert report["questions"] == 4 and report["images"] == 2 and report["skipped"] == []
    assert report["gIoU"] == 0.0 and report["target_count_accuracy"] == 1 / 4  # nothing predicted


@pytest.mark.parametrize("name, mask, message", [
    ("r0_q0_t1.png", box(0, 0, 2, 2), r"targets \[1\]: number them 0, 1, \.\.\. without gaps"),
    ("r0_q0_t0.npy", np.ones((5, 5), bool), "mask is 5x5, the image is 30x40"),
])
def test_bad_prediction_files_stop_the_run_with_a_reason(muse_file, tmp_path, name, mask, message):
    path, root = muse_file
    save(tmp_path / "pred", name, mask)
    with pytest.raises(SystemExit, match=message):
        main(["--muse", str(path), "--image-root", str(root), "--predictions", str(tmp_path / "pred")])


def test_a_model_is_asked_every_question_with_each_image_encoded_once(muse_file, tmp_path, monkeypatch):
    from pixellm_ros.model import save_pixellm
    from pixellm_ros.model.scratch import tiny_random_pixellm

    model, tok = tiny_random_pixellm(0)
    save_pixellm(model, tok, tmp_path / "model")
    path, root = muse_file
    encoded, asked = [], []
    set_image, ask = Engine.set_image, Engine.ask
    monkeypatch.setattr(Engine, "set_image", lambda self, rgb, image_key=None: encoded.append(image_key) or
                        set_image(self, rgb, image_key))
    monkeypatch.setattr(Engine, "ask", lambda self, q, *a, **k: asked.append(q) or ask(self, q, *a, **k))
    out = tmp_path / "eval"
    main(["--muse", str(path), "--image-root", str(root), "--model", str(tmp_path / "model"), "--device", "cpu",
          "--max-new-tokens", "4", "--out", str(out)])
    assert encoded == ["muse record 0", "muse record 1", "muse record 4"]
    assert asked == ["What can I drink from?", "Which things are on the left?", "Anything to eat?", "Which four?",
                     "Where is the box?"]
    report = json.loads((out / "report.json").read_text())
    assert report["questions"] == 5 and len(report["skipped"]) == 3 and (out / "examples.png").is_file()
    assert set(report["by_targets"]) == {"0", "1", "2", "3", "4+"}
