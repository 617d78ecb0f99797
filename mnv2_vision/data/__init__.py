"""Dataset location: the built-in shapes data or a user's folder, with a clear message when it is missing."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import Config, DataCfg

__all__ = ["resolve_root", "pin_root", "LAYOUTS"]

LAYOUTS = {
    "coco": (
        "COCO 2017 layout:\n  <root>/train2017/*.jpg\n  <root>/val2017/*.jpg\n"
        "  <root>/annotations/instances_train2017.json\n  <root>/annotations/instances_val2017.json\n"
        "Get it with: python tools/prepare_data.py coco --root <root>  (or set data.root / --set data.synthetic=true)"
    ),
    "voc": (
        "PASCAL VOC 2012 layout (root may be VOCdevkit or VOCdevkit/VOC2012):\n  <root>/JPEGImages/*.jpg\n"
        "  <root>/SegmentationClass/*.png (palette PNGs)\n  <root>/ImageSets/Segmentation/{train,val}.txt\n"
        "  optional SBD trainaug: <root>/SegmentationClassAug/*.png + ImageSets/Segmentation/trainaug.txt\n"
        "Get it with: python tools/prepare_data.py voc --root <root>  (or --set data.synthetic=true)"
    ),
    "yolo": "YOLO (ultralytics) layout: <root>/data.yaml (names, train, val), <root>/images/<split>/, "
            "<root>/labels/<split>/",
    "voc_xml": "PASCAL VOC detection layout: <root>/Annotations/*.xml, <root>/JPEGImages/, "
               "<root>/ImageSets/Main/<split>.txt",
    "cvat": "CVAT for images 1.1 layout: <root>/annotations.xml (split = the images' subset), <root>/images/",
    "labelme": "LabelMe layout: <root>/<split>/*.json beside the images (optional <root>/labels.txt)",
    "labelstudio": "Label Studio JSON export: <root>/<split>.json, the images in <root>/images/",
    "imagefolder": "ImageFolder layout: <root>/<split>/<class_name>/*.jpg (ImageNet's own layout)",
    "cifar10": "CIFAR-10 python batches: <root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
    "flowers102": "torchvision Flowers102 layout: <root>/flowers-102/{jpg/,imagelabels.mat,setid.mat}",
}
_SYNTHETIC_SUBDIR = {"coco": "coco", "voc": "VOC2012", "imagefolder": "classification"}


def resolve_root(data: DataCfg) -> Path:
    """The dataset folder for ``data``: the cached built-in shapes data when ``data.synthetic``, else ``data.root``."""
    if data.synthetic:
        if data.format not in _SYNTHETIC_SUBDIR:
            raise FileNotFoundError(f"the built-in dataset has no {data.format!r} variant; "
                                    f"use data.format in {sorted(_SYNTHETIC_SUBDIR)}")
        from .synthetic import ensure_shapes

        return ensure_shapes() / _SYNTHETIC_SUBDIR[data.format]
    root = Path(data.root).expanduser()
    if not root.exists():
        layout = LAYOUTS.get(data.format, data.format).replace("<root>", str(root))
        raise FileNotFoundError(f"dataset not found at data.root={str(root)!r}. Expected the {layout}")
    return root


def pin_root(cfg: Config) -> Config:
    """``cfg`` with ``data.root`` set to the folder really read: the built-in data's cache folder when
    ``data.synthetic`` (the run's ``config.yaml`` then says where the images came from, not the unused default)."""
    if not cfg.data.synthetic:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(resolve_root(cfg.data))))
