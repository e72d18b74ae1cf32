"""MUSE-format test data: images, masks and every segmentation form, shared by the data and eval tests."""
from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as mask_utils

H, W = 30, 40


def write_image(path, h=H, w=W, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.write_bytes(cv2.imencode(".png", img)[1].tobytes())  # lossless whatever the name says
    return img[..., ::-1]  # RGB


def box(x0, y0, x1, y1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def rect_poly(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def uncompressed_rle(m):
    flat = m.T.reshape(-1).astype(np.uint8)  # column-major, as COCO
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return {"size": [H, W], "counts": counts}


def compressed_rle(m):
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [H, W], "counts": rle["counts"].decode()}


def inst(seg, name="cup", rephrased="the red cup"):
    d = {"segmentation": seg, "category_name": name}
    if rephrased:
        d["rephrased_name"] = rephrased
    return d


ANN = {"segmentation": [[1, 1, 4, 1, 4, 4]], "bbox": [1, 1, 3, 3], "category_id": 47, "category_name": "cup"}


def polygon_and_rle_record() -> dict:
    """A MUSE record (image COCO_train2014_000000000001.jpg) with a polygon, an uncompressed and a compressed
    RLE target; its second question has a null text answer."""
    return {"file_name": "COCO_train2014_000000000001.jpg", "height": H, "width": W, "ann_list": [ANN],
            "questions": ["What can I drink from?", "Which things are on the left?"],
            "answers": [[inst(rect_poly(10, 5, 20, 15))],
                        [inst(uncompressed_rle(box(0, 0, 5, 10)), "bowl", "the bowl"),
                         inst(compressed_rle(box(30, 20, 40, 30)), "knife", None)]],
            "text_answers": ["You can drink from {seg}.", None]}
