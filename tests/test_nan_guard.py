"""Fail safely: a NaN loss stops training before backward, naming the step and the batch's images; training loaders
drop the last incomplete batch."""
from __future__ import annotations

import pytest
import torch

from mnv2_vision.checkpoint import build_from_config
from mnv2_vision.config import load_config, to_dict
from mnv2_vision.data.synthetic import generate_shapes
from mnv2_vision.lit.common import NonFiniteLossError, make_trainer
from mnv2_vision.lit.detection import DetectionModule, build_det_datamodule, resolve_det_classes
from mnv2_vision.lit.segmentation import SegmentationModule, build_seg_datamodule


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("tiny"), num_train=12, num_val=4, num_cls_train=0, num_cls_val=0)


def _det_cfg(root, *extra):
    return load_config("ssdlite_shapes", [
        "data.synthetic=false", f"data.root={root / 'coco'}", "data.image_size=96", "data.batch_size=2",
        "data.num_workers=0", "model.width_mult=0.35", "trainer.max_epochs=1", "trainer.accelerator=cpu", *extra])


def test_nan_loss_stops_before_backward_naming_step_and_image_ids(tiny_root, tmp_path):
    cfg = _det_cfg(tiny_root)
    dm = build_det_datamodule(cfg)
    cfg = resolve_det_classes(cfg, dm.num_classes)
    module = DetectionModule(build_from_config(cfg), optim=cfg.optim, sched=cfg.sched, eval_cfg=cfg.eval,
                             loss=cfg.loss, category_ids=dm.category_ids, config=to_dict(cfg))
    real_step = module.training_step
    seen: dict = {}

    def poisoned(batch, batch_idx):
        loss = real_step(batch, batch_idx)
        if batch_idx == 2:
            seen["ids"] = [t["image_id"] for t in batch[1]]
            seen["weights"] = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
            return loss * float("nan")
        return loss

    module.training_step = poisoned
    trainer = make_trainer(cfg, tmp_path, monitor="val/map")
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit(module, datamodule=dm)
    msg = str(err.value)
    assert "global step 2 " in msg and "batch 2)" in msg and "nan" in msg
    assert f"images in this batch: {seen['ids']}" in msg and len(seen["ids"]) == 2
    # raised before backward: the optimiser never saw the NaN, the weights are those of the poisoned step's start
    for k, v in module.model.state_dict().items():
        assert torch.equal(v, seen["weights"][k]), k


def test_segmentation_batch_ids_are_voc_ids():
    assert SegmentationModule.batch_ids({"id": ["2007_000032", "2007_000039"]}) == ["2007_000032", "2007_000039"]


def test_training_loaders_drop_the_last_incomplete_batch(tiny_root):
    dm = build_det_datamodule(_det_cfg(tiny_root, "data.batch_size=5", "data.val_batch_size=5"))
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert train.drop_last and len(train) == 2  # 12 images, batches of 5: the 2 left over are dropped
    assert not val.drop_last and len(val) == 1  # validation sees every image
    seg_cfg = load_config("deeplabv3_shapes", ["data.synthetic=false", f"data.root={tiny_root / 'VOC2012'}",
                                               "data.batch_size=5", "data.val_batch_size=3", "data.num_workers=0"])
    seg = build_seg_datamodule(seg_cfg)
    seg.setup("fit")
    train, val = seg.train_dataloader(), seg.val_dataloader()
    assert train.drop_last and len(train) == 2
    assert not val.drop_last and len(val) == 2  # 4 val images in batches of 3
