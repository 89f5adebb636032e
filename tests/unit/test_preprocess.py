"""Preprocessing: exact geometry on the CPU (NumPy/SciPy), and the same numbers on the GPU (CuPy) when present."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import ResizeWithPadOrCrop

from oncofl import preprocess
from oncofl.preprocess import Preprocessor, crop_or_pad, extract_patches, resample, to_ras, window


def test_to_ras_equals_nibabel_closest_canonical():
    rng = np.random.default_rng(0)
    array = rng.normal(size=(7, 5, 4)).astype(np.float32)
    affine = np.array([[0, 0, -3.0, 10], [-1.5, 0, 0, 20], [0, 2.0, 0, -5], [0, 0, 0, 1]])  # a sagittal-ish stack
    canonical = nib.as_closest_canonical(nib.Nifti1Image(array, affine))
    out, out_affine = to_ras(array, affine, np)
    np.testing.assert_array_equal(out, canonical.get_fdata().astype(np.float32))
    np.testing.assert_allclose(out_affine, canonical.affine)


def test_resample_keeps_world_positions():
    x = np.arange(20, dtype=np.float32)[:, None, None] * np.ones((20, 6, 4), np.float32)  # value = x index
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    out, new_affine = resample(x, affine, (2.5, 1.0, 1.5), np, preprocess.scipy.ndimage)
    np.testing.assert_allclose(np.linalg.norm(new_affine[:3, :3], axis=0), (2.5, 1.0, 1.5))
    assert out.shape == (8, 6, 7)
    np.testing.assert_allclose(out[:, 0, 0], 2.5 * np.arange(8), atol=1e-5)  # voxel i sits at x = 2.5 i mm


def test_crop_or_pad_matches_monai():
    rng = np.random.default_rng(1)
    for shape, size in [((70, 50, 9), (64, 64, 16)), ((63, 65, 17), (64, 64, 16)), ((10, 10, 10), (10, 10, 10))]:
        a = rng.normal(size=shape).astype(np.float32)
        expected = ResizeWithPadOrCrop(size)(torch.from_numpy(a[None]))[0].numpy()
        np.testing.assert_array_equal(crop_or_pad(a, size, np), expected)


def test_window_and_patches():
    hu = np.array([-1000.0, -600.0, 150.0, 3000.0])
    np.testing.assert_allclose(window(hu, -600, 1500, np), [0.2333333, 0.5, 1.0, 1.0], atol=1e-6)
    vol = np.arange(10 * 10 * 10, dtype=np.float32).reshape(10, 10, 10)
    patches = extract_patches(vol, np.array([[5, 5, 5], [0, 0, 0]]), (4, 4, 4), np, value=-1)
    assert patches.shape == (2, 4, 4, 4)
    np.testing.assert_array_equal(patches[0], vol[3:7, 3:7, 3:7])
    assert patches[1][0, 0, 0] == -1 and patches[1][2, 2, 2] == vol[0, 0, 0]


def test_preprocessor_falls_back_to_numpy_without_a_gpu(monkeypatch):
    monkeypatch.setattr(preprocess, "gpu_available", lambda: False)
    assert not Preprocessor((2.0, 2.0, 2.0), (8, 8, 8)).on_gpu


@pytest.mark.gpu
@pytest.mark.skipif(not preprocess.gpu_available(), reason="needs CUDA and CuPy")
def test_gpu_and_cpu_paths_agree():
    rng = np.random.default_rng(2)
    image = rng.normal(100, 30, size=(96, 80, 40)).astype(np.float32)
    label = (rng.random((96, 80, 40)) > 0.7).astype(np.uint8)
    affine = np.diag([-0.7, -0.7, 2.5, 1.0])
    cpu = Preprocessor((1.0, 1.0, 2.0), (64, 64, 48), use_gpu=False)(image, affine, label)
    gpu = Preprocessor((1.0, 1.0, 2.0), (64, 64, 48), use_gpu=True)(image, affine, label)
    np.testing.assert_allclose(gpu[0], cpu[0], atol=1e-4)  # stated tolerance: 1e-4 on [0, 1] intensities
    assert (gpu[1] != cpu[1]).mean() < 1e-3  # nearest-neighbour ties may break differently
    np.testing.assert_allclose(gpu[2], cpu[2])
    # CuPy's pool keeps what preprocessing used; a site hands it back to the driver before training
    preprocess.release_gpu_memory()
    pool = preprocess.cupy.get_default_memory_pool()
    assert pool.total_bytes() == pool.used_bytes()


@pytest.mark.gpu
@pytest.mark.skipif(not preprocess.gpu_available(), reason="needs CUDA and CuPy")
@pytest.mark.parametrize("task", ["breast_mammo_cls", "lung_nodule_cls"])
def test_task_cases_load_the_same_on_the_gpu_and_the_cpu(task, tmp_path, monkeypatch):
    """Each 2D / patch task's whole case loading (DICOM -> network input) through CuPy equals its NumPy/SciPy path."""
    import importlib
    from dataclasses import replace

    import scipy.ndimage

    module = importlib.import_module(f"oncofl.tasks.{task}")
    if task == "breast_mammo_cls":
        from oncofl import synthetic_mammo

        vendor = replace(synthetic_mammo.SITE_VENDORS["site-2"].scaled(4), n_cases=3)  # MONOCHROME1, 14 bit
        entries = synthetic_mammo.write_site(tmp_path, "site-2", vendor, seed=0, split=False)["testing"]
        site = tmp_path / "site-2"
    else:
        from oncofl import synthetic_lung

        scanner = replace(synthetic_lung.SITE_SCANNERS["site-1"], n_cases=1)
        entries = synthetic_lung.write_site(tmp_path, "site-1", scanner, seed=0, split=False)["testing"]
        site = tmp_path / "site-1"
    spec, params = module.TASK, module.TASK.params(None)

    def load_all():
        if hasattr(module, "_volume"):
            module._volume.cache_clear()
        return [
            spec.load_case(
                site / e["image"], float(e["label"]), {**params, **{k: v for k, v in e.items() if k != "image"}}
            )
            for e in entries
        ]

    assert module._array_modules()[0] is preprocess.cupy
    on_gpu = load_all()
    monkeypatch.setattr(module, "_array_modules", lambda: (np, scipy.ndimage))
    on_cpu = load_all()
    if hasattr(module, "_volume"):
        module._volume.cache_clear()
    assert len(on_gpu) == len(entries) >= 1
    for (gpu_image, gpu_label), (cpu_image, cpu_label) in zip(on_gpu, on_cpu):
        assert gpu_image.shape == cpu_image.shape and gpu_image.dtype == cpu_image.dtype == np.float32
        np.testing.assert_allclose(gpu_image, cpu_image, atol=1e-4)
        np.testing.assert_array_equal(gpu_label, cpu_label)
