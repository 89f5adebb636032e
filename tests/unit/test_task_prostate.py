import numpy as np
import pytest
import torch

from oncofl.data import read_datalist
from oncofl.site_config import load_site_config
from oncofl.tasks import get_task
from oncofl.tasks.prostate_seg import ProstateSegNet, dice_per_case

TASK = get_task("prostate_seg")


def test_load_case_puts_every_vendor_on_one_grid(synthetic_data):
    shapes = set()
    for site in ("site-1", "site-2", "site-3"):
        config = load_site_config(synthetic_data / "site_configs" / f"{site}.json", site_name=site)
        case = read_datalist(config)["training"][0]
        image, label = TASK.load_case(case.image, case.label, TASK.params(None))
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert 0.0 <= image.min() and image.max() <= 1.0  # percentile-scaled: vendor gain/offset removed
        assert set(np.unique(label)) == {0, 1}
        # the gland keeps its physical size (~20-30 cm^3) whatever the vendor's voxel size
        gland_ml = label.sum() * 2.5 * 2.5 * 4.0 / 1000
        assert 12 < gland_ml < 45, (site, gland_ml)
        shapes.add((image.shape, label.shape))
    assert shapes == {((1, 64, 64, 16), (1, 64, 64, 16))}


def test_params_reject_unknown_keys():
    assert TASK.params({"volume_size": [32, 32, 16]})["volume_size"] == [32, 32, 16]
    with pytest.raises(ValueError, match="no preprocessing parameter"):
        TASK.params({"spacing": [1, 1, 1]})


def test_augment_keeps_shapes_and_flips_image_and_label_together():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(8, 1, 16, 12, 8)
    labels = torch.zeros(8, 1, 16, 12, 8, dtype=torch.int64)
    labels[:, :, :4] = 1  # gland on the low-x side
    images[:, :, :4] += 10.0  # and bright there
    out_img, out_lab = TASK.augment(images, labels, gen)
    assert out_img.shape == images.shape and out_lab.shape == labels.shape and out_lab.dtype == labels.dtype
    flipped = out_lab[:, 0, -1].sum(dim=(1, 2)) > 0
    assert 0 < int(flipped.sum()) < 8  # some flipped, some not (seeded)
    bright_high_x = out_img[:, 0, -4:].mean(dim=(1, 2, 3)) > out_img[:, 0, :4].mean(dim=(1, 2, 3))
    assert torch.equal(bright_high_x, flipped)


def test_network_forward_on_32_cubed_and_loss_backward():
    net = ProstateSegNet()
    x = torch.randn(2, 1, 32, 32, 32)
    logits = net(x)
    assert logits.shape == (2, 2, 32, 32, 32)
    labels = (torch.rand(2, 1, 32, 32, 32) > 0.9).long()
    loss = TASK.make_loss()(logits, labels)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_dice_per_case():
    labels = torch.zeros(3, 1, 4, 4, 4, dtype=torch.int64)
    labels[:2, :, :2] = 1
    perfect = torch.stack([1 - labels[:, 0], labels[:, 0]], dim=1).float()
    scores = dice_per_case(perfect, labels)
    torch.testing.assert_close(scores, torch.ones(3))  # third case: empty truth, empty prediction -> 1
    all_fg = torch.stack([torch.zeros(3, 4, 4, 4), torch.ones(3, 4, 4, 4)], dim=1)
    torch.testing.assert_close(dice_per_case(all_fg, labels)[:2], torch.full((2,), 2 * 32 / (32 + 64)))
