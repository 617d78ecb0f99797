"""SSD anchors against coordinates worked out by hand from TF's ssd_anchor_generator formulas (docs/design.md#ssdlite).

TF: scales s_k = 0.2 + 0.75·k/5 → 0.2, 0.35, 0.5, 0.65, 0.8, 0.95 (and s_6 = 1 for the interpolated box);
box height = s/√a · min(H, W), width = s·√a · min(H, W), centre ((j + ½)/fw · W, (i + ½)/fh · H).
"""
import math

import pytest
import torch

from mnv2_vision.ops.anchors import anchor_box_specs, num_anchors_per_location, ssd_anchors

SIZES_320 = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
SIZES_300 = [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]


def test_box_specs_match_tf():
    specs = anchor_box_specs()
    assert specs[0] == [(0.1, 1.0), (0.2, 2.0), (0.2, 0.5)]
    scales = [0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0]
    for k in range(1, 6):
        assert [a for _, a in specs[k]] == pytest.approx([1.0, 2.0, 0.5, 3.0, 1 / 3, 1.0])
        assert [s for s, _ in specs[k][:5]] == pytest.approx([scales[k]] * 5)
        assert specs[k][5][0] == pytest.approx(math.sqrt(scales[k] * scales[k + 1]))
    assert num_anchors_per_location() == [3, 6, 6, 6, 6, 6]
    assert num_anchors_per_location(reduce_boxes_in_lowest_layer=False) == [6] * 6


def test_counts_320_and_300():
    assert ssd_anchors(SIZES_320, (320, 320)).shape == (2034, 4)  # 1200 + 600 + 150 + 54 + 24 + 6
    assert ssd_anchors(SIZES_300, (300, 300)).shape == (1917, 4)  # 1083 + 600 + 150 + 54 + 24 + 6


def test_last_level_1x1_at_320():
    # One cell centred at (160, 160); s = 0.95, base 320, so s·320 = 304.
    # ratio 2: w = 304·√2, h = 304/√2 → half-sizes 152·√2 = 214.960461, 152/√2 = 107.480231
    # ratio 3: half-sizes 152·√3 = 263.271723, 152/√3 = 87.757241
    # interpolated: side 320·√0.95 → half 155.948709
    expected = torch.tensor([
        [8.0, 8.0, 312.0, 312.0],
        [-54.960461, 52.519769, 374.960461, 267.480231],
        [52.519769, -54.960461, 267.480231, 374.960461],
        [-103.271723, 72.242759, 423.271723, 247.757241],
        [72.242759, -103.271723, 247.757241, 423.271723],
        [4.051291, 4.051291, 315.948709, 315.948709],
    ])
    anchors = ssd_anchors(SIZES_320, (320, 320))
    torch.testing.assert_close(anchors[-6:], expected, atol=1e-4, rtol=0)


def test_first_level_cell_order_at_320():
    # Row i = 1, column j = 2 of the 20×20 level: centre x = 2.5·16 = 40, y = 1.5·16 = 24; rows (1·20 + 2)·3 = 66..68.
    # (0.1, 1): 32 px square; (0.2, 2): half-sizes 32·√2 = 45.254834 (x), 32/√2 = 22.627417 (y); (0.2, ½) swapped.
    expected = torch.tensor([
        [24.0, 8.0, 56.0, 40.0],
        [-5.254834, 1.372583, 85.254834, 46.627417],
        [17.372583, -21.254834, 62.627417, 69.254834],
    ])
    anchors = ssd_anchors(SIZES_320, (320, 320))
    torch.testing.assert_close(anchors[66:69], expected, atol=1e-4, rtol=0)
    # The second level starts after 20·20·3 rows: cell (0, 0) centred at (16, 16), first box 0.35·320 = 112 px.
    torch.testing.assert_close(anchors[1200], torch.tensor([-40.0, -40.0, 72.0, 72.0]), atol=1e-4, rtol=0)


def test_non_square_input_uses_min_side_like_tf():
    # H = 200, W = 400, one 1×1 level: centre (200, 100); base anchor side min(H, W) = 200, so the 0.1 box is 20 px
    # square in pixels (TF scales its unit base box by min_im_shape / im_height and / im_width).
    anchors = ssd_anchors([(1, 1)], (200, 400))
    torch.testing.assert_close(anchors[0], torch.tensor([190.0, 90.0, 210.0, 110.0]))
    # ratio 2 at scale 0.2: w = 40·√2, h = 40/√2
    h, w = 40 / math.sqrt(2), 40 * math.sqrt(2)
    torch.testing.assert_close(anchors[1], torch.tensor([200 - w / 2, 100 - h / 2, 200 + w / 2, 100 + h / 2]))


def test_dtype_device_and_bad_input():
    a = ssd_anchors(SIZES_320, (320, 320), dtype=torch.float64)
    assert a.dtype == torch.float64 and a.device.type == "cpu"
    with pytest.raises(ValueError, match="image_size"):
        ssd_anchors(SIZES_320, (0, 320))
    with pytest.raises(ValueError, match="min_scale"):
        ssd_anchors(SIZES_320, (320, 320), min_scale=0.9, max_scale=0.2)
