"""Omniglot: the real dataset, the cache, splits, the task sampler, bad input and a short training run."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rlmaml.config import OmniglotConfig
from rlmaml.meta import adapt, meta_objective, params_of
from rlmaml.supervised import omniglot_data as omniglot
from rlmaml.supervised.omniglot import (
    ClassPool,
    OmniglotData,
    OmniglotDomain,
    OmniglotFormatError,
    OmniglotNotFoundError,
    find_sources,
    load_omniglot,
    make_splits,
    sample_task_batch,
)


@pytest.fixture(scope="session")
def real(omniglot_source: tuple[Path, Path]) -> tuple[OmniglotData, Path, Path]:
    """``(data, cache, root)``: the real dataset, read from the session's cache (``omniglot_source`` in
    conftest.py), that cache folder and the folder of the zips."""
    root, cache = omniglot_source
    return load_omniglot(root, cache), cache, root


def real_domain(real: tuple[OmniglotData, Path, Path], **overrides) -> OmniglotDomain:
    return OmniglotDomain(OmniglotConfig(root=str(real[2]), cache_dir=str(real[1]), **overrides))


# ---------------------------------------------------------------------------------------- fake sources


def png_bytes(size: tuple[int, int] = (105, 105), seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).random(size[::-1]) > 0.1
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def fake_folders(root: Path, characters: int = 2, odd: dict[str, bytes] | None = None) -> Path:
    """A tiny dataset in the published layout: each part has one alphabet of ``characters`` characters."""
    for p, part in enumerate(omniglot.PARTS):
        for c in range(characters):
            folder = root / part / f"Alphabet_{p}" / f"character{c + 1:02d}"
            folder.mkdir(parents=True)
            for d in range(omniglot.DRAWINGS):
                (folder / f"{c:04d}_{d + 1:02d}.png").write_bytes(png_bytes(seed=100 * c + d))
    for relative, data in (odd or {}).items():
        (root / relative).write_bytes(data)
    return root


def zip_folder(folder: Path, part: str) -> Path:
    target = folder / f"{part}.zip"
    with zipfile.ZipFile(target, "w") as archive:
        for file in sorted((folder / part).rglob("*.png")):
            archive.write(file, file.relative_to(folder).as_posix())
    return target


# ------------------------------------------------------------------------------------------ real data


def test_real_dataset_has_1623_characters_of_20_drawings(real):
    data = real[0]
    assert data.images.shape == (1623, 20, 28, 28)
    assert data.images.dtype == np.uint8
    assert data.images.shape[0] * data.images.shape[1] == 32_460
    assert data.background == 964
    assert len(set(data.alphabets)) == 50


def test_real_images_have_bright_ink_on_dark_background(real):
    images = real[0].images
    assert np.median(images) == 0  # background is 0 after inversion
    assert images.max() == 255
    assert 0.02 < (images > 127).mean() < 0.2  # strokes are a small fraction of the pixels


def test_second_load_comes_from_the_cache_file(real, monkeypatch):
    data, cache, root = real
    assert len(list(cache.glob("*.npy"))) == 1 and len(list(cache.glob("*.json"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(omniglot, "_decode", no_decoding)
    again = load_omniglot(root, cache)
    np.testing.assert_array_equal(again.images, data.images)
    assert again.characters == data.characters and again.background == data.background


def test_cache_metadata_names_characters_and_fingerprints_the_zips(real):
    meta = json.loads(next(real[1].glob("*.json")).read_text())
    assert meta["characters"][0] == "Alphabet_of_the_Magi/character01"
    zips = {source["zip"]: source for source in meta["sources"].values()}
    assert set(zips) == {"images_background.zip", "images_evaluation.zip"}
    assert zips["images_background.zip"]["size"] == (real[2] / "images_background.zip").stat().st_size
    assert all(len(source["sha256"]) == 64 for source in zips.values())


def test_paper_split_has_1200_train_and_423_test_characters(real):
    pools = make_splits(real[0], "paper", train_characters=1200, split_seed=1, rotations=True)
    train, test = pools["train"].characters, pools["test"].characters
    assert len(train) == 1200 and len(test) == 423
    assert len(np.union1d(train, test)) == 1623 and len(np.intersect1d(train, test)) == 0


def test_paper_split_rotations_make_4800_train_classes(real):
    pools = make_splits(real[0], "paper", rotations=True)
    assert pools["train"].num_classes == 4800
    assert pools["test"].num_classes == 4 * 423  # the original code rotates test classes too
    assert make_splits(real[0], "paper", rotations=False)["train"].num_classes == 1200


def test_paper_split_depends_only_on_split_seed(real):
    first = make_splits(real[0], "paper", split_seed=1)["train"].characters
    np.testing.assert_array_equal(first, make_splits(real[0], "paper", split_seed=1)["train"].characters)
    assert not np.array_equal(first, make_splits(real[0], "paper", split_seed=2)["train"].characters)


def test_alphabet_split_is_background_versus_evaluation(real):
    data = real[0]
    pools = make_splits(data, "alphabet")
    assert len(pools["train"].characters) == 964 and len(pools["test"].characters) == 659
    train_alphabets = {data.alphabets[i] for i in pools["train"].characters}
    test_alphabets = {data.alphabets[i] for i in pools["test"].characters}
    assert len(train_alphabets) == 30 and len(test_alphabets) == 20 and not train_alphabets & test_alphabets


def test_real_task_has_paper_shapes_and_dtypes(real):
    domain = real_domain(real, ways=5, shots=1, queries=15)
    (xs, ys), (xq, yq) = domain.sample_tasks(4, np.random.default_rng(0), "train")
    assert xs.shape == (4, 5, 1, 28, 28) and ys.shape == (4, 5)
    assert xq.shape == (4, 75, 1, 28, 28) and yq.shape == (4, 75)
    assert xs.dtype == xq.dtype == torch.float32 and ys.dtype == yq.dtype == torch.int64
    assert float(xq.min()) >= 0.0 and float(xq.max()) <= 1.0


def test_real_task_labels_are_balanced(real):
    domain = real_domain(real, ways=20, shots=3, queries=4)
    (_, ys), (_, yq) = domain.sample_tasks(3, np.random.default_rng(1), "test")
    for t in range(3):
        assert torch.bincount(ys[t], minlength=20).tolist() == [3] * 20
        assert torch.bincount(yq[t], minlength=20).tolist() == [4] * 20


def test_domain_loads_the_dataset_lazily(tmp_path):
    domain = OmniglotDomain(OmniglotConfig(root=str(tmp_path / "nowhere"), cache_dir=str(tmp_path)))
    with pytest.raises(OmniglotNotFoundError):
        domain.sample_tasks(1, np.random.default_rng(0))


# ------------------------------------------------------------------------------ sampler (synthetic data)


def coded_data(characters: int = 12) -> OmniglotData:
    """Images that encode (character, drawing, orientation) in rotation-aware pixels.

    The centre 2x2 holds the character id and the four points (1,1), (1,26), (26,1), (26,26) the drawing id
    (both sets are invariant under 90-degree rotations); pixel (0,0) is a marker that rotations move.
    """
    images = np.zeros((characters, omniglot.DRAWINGS, 28, 28), dtype=np.uint8)
    for c in range(characters):
        for d in range(omniglot.DRAWINGS):
            images[c, d, 13:15, 13:15] = c + 1
            images[c, d, [1, 1, 26, 26], [1, 26, 1, 26]] = d + 1
            images[c, d, 0, 0] = 255
    return OmniglotData(images, tuple(f"A/character{c:02d}" for c in range(characters)), characters // 2)


def decode_task(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Character id, drawing id and marker corner (0..3) of each image of ``x [M, 1, 28, 28]``."""
    pixels = np.rint(x[:, 0].numpy() * 255).astype(int)
    character = pixels[:, 13, 13] - 1
    drawing = pixels[:, 1, 1] - 1
    corners = np.stack([pixels[:, 0, 0], pixels[:, 27, 0], pixels[:, 27, 27], pixels[:, 0, 27]], axis=1)
    return character, drawing, corners.argmax(axis=1)


def test_each_label_is_one_character_with_distinct_drawings():
    data = coded_data()
    pool = ClassPool(np.arange(12), rotations=4)
    (xs, ys), (xq, yq) = sample_task_batch(data.images, pool, 6, 5, 2, 3, np.random.default_rng(0))
    for t in range(6):
        characters_s, drawings_s, _ = decode_task(xs[t])
        characters_q, drawings_q, _ = decode_task(xq[t])
        chosen = set()
        for label in range(5):
            s, q = ys[t].numpy() == label, yq[t].numpy() == label
            character = set(characters_s[s]) | set(characters_q[q])
            assert len(character) == 1
            chosen |= character
            drawings = np.concatenate([drawings_s[s], drawings_q[q]])
            assert len(set(drawings)) == 5  # K + Q distinct drawings, none shared by support and query
        assert len(chosen) == 5


def test_rotation_is_shared_by_all_images_of_a_class():
    data = coded_data()
    (xs, ys), (xq, yq) = sample_task_batch(data.images, ClassPool(np.arange(12), 4), 40, 5, 2, 3,
                                           np.random.default_rng(1))
    seen = set()
    for t in range(40):
        for label in range(5):
            corners = np.concatenate([decode_task(xs[t][ys[t] == label])[2], decode_task(xq[t][yq[t] == label])[2]])
            assert len(set(corners)) == 1
            seen |= set(corners)
    assert seen == {0, 1, 2, 3}


def test_no_rotation_without_augmentation():
    data = coded_data()
    (xs, _), (xq, _) = sample_task_batch(data.images, ClassPool(np.arange(12), 1), 10, 5, 1, 1,
                                         np.random.default_rng(2))
    assert set(decode_task(xs.flatten(0, 1))[2]) == {0} and set(decode_task(xq.flatten(0, 1))[2]) == {0}


def test_labels_are_permuted_per_task():
    data = coded_data()
    (xs, ys), _ = sample_task_batch(data.images, ClassPool(np.arange(12), 1), 50, 5, 1, 1,
                                    np.random.default_rng(3))
    label_of_smallest = []
    for t in range(50):
        characters = decode_task(xs[t])[0]
        label_of_smallest.append(int(ys[t][characters.argmin()]))
    assert set(label_of_smallest) == set(range(5))


def test_tasks_only_use_characters_of_the_pool():
    data = coded_data()
    pool = ClassPool(np.array([1, 4, 7, 8, 10]), 1)
    (xs, _), (xq, _) = sample_task_batch(data.images, pool, 8, 3, 1, 2, np.random.default_rng(4))
    used = set(decode_task(xs.flatten(0, 1))[0]) | set(decode_task(xq.flatten(0, 1))[0])
    assert used <= {1, 4, 7, 8, 10}


def test_same_generator_seed_gives_the_same_tasks():
    data = coded_data()
    pool = ClassPool(np.arange(12), 4)
    first = sample_task_batch(data.images, pool, 3, 5, 1, 2, np.random.default_rng(7))
    second = sample_task_batch(data.images, pool, 3, 5, 1, 2, np.random.default_rng(7))
    for a, b in zip(torch.utils._pytree.tree_leaves(first), torch.utils._pytree.tree_leaves(second), strict=True):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------- bad input


def test_missing_files_error_names_the_zips_and_how_to_point_at_them(tmp_path):
    with pytest.raises(OmniglotNotFoundError) as error:
        find_sources(tmp_path)
    message = str(error.value)
    assert "\n" not in message
    for text in ("images_background.zip", "images_evaluation.zip", "brendenlake/omniglot", "omniglot.root=",
                 "RLMAML_DATA", str(tmp_path)):
        assert text in message


def test_missing_location_without_root_or_environment(monkeypatch):
    monkeypatch.delenv("RLMAML_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="RLMAML_DATA is not set"):
        find_sources(None)


def test_environment_variable_may_name_a_parent_with_an_omniglot_folder(tmp_path, monkeypatch):
    fake_folders(tmp_path / "omniglot", characters=1)
    monkeypatch.setenv("RLMAML_DATA", str(tmp_path))
    assert find_sources(None) == {part: tmp_path / "omniglot" / part for part in omniglot.PARTS}


def test_zips_are_preferred_to_folders(tmp_path):
    fake_folders(tmp_path, characters=1)
    zipped = zip_folder(tmp_path, "images_background")
    assert find_sources(tmp_path)["images_background"] == zipped


def test_corrupt_zip_error_names_the_file(tmp_path):
    fake_folders(tmp_path, characters=1)
    (tmp_path / "images_background.zip").write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(OmniglotFormatError, match="images_background.zip"):
        load_omniglot(tmp_path, tmp_path / "cache")


def test_truncated_zip_error_names_the_file(tmp_path):
    fake_folders(tmp_path, characters=1)
    zipped = zip_folder(tmp_path, "images_evaluation")
    zipped.write_bytes(zipped.read_bytes()[: zipped.stat().st_size // 2])
    with pytest.raises(OmniglotFormatError, match="images_evaluation.zip"):
        load_omniglot(tmp_path, tmp_path / "cache")


def test_folder_with_wrong_layout_error_names_the_file(tmp_path):
    fake_folders(tmp_path, characters=1)
    stray = tmp_path / "images_background" / "character99"
    stray.mkdir()
    (stray / "0001_01.png").write_bytes(png_bytes())  # no alphabet level
    with pytest.raises(OmniglotFormatError, match=r"character99/0001_01\.png.*expected images_background/"):
        load_omniglot(tmp_path, tmp_path / "cache")


def test_character_with_missing_drawings_is_rejected(tmp_path):
    fake_folders(tmp_path, characters=1)
    next((tmp_path / "images_evaluation").rglob("*.png")).unlink()
    with pytest.raises(OmniglotFormatError, match="has 19 drawings, expected 20"):
        load_omniglot(tmp_path, tmp_path / "cache")


def test_image_of_the_wrong_size_error_names_it(tmp_path):
    odd = "images_background/Alphabet_0/character01/0000_05.png"
    fake_folders(tmp_path, characters=1, odd={odd: png_bytes((64, 64))})
    with pytest.raises(OmniglotFormatError, match=r"0000_05\.png: image is 64x64, expected 105x105"):
        load_omniglot(tmp_path, tmp_path / "cache")


def test_fake_dataset_from_zips_loads_and_caches(tmp_path):
    fake_folders(tmp_path / "src", characters=2)
    for part in omniglot.PARTS:
        zipped = zip_folder(tmp_path / "src", part)
        zipped.rename(tmp_path / zipped.name)
    data = load_omniglot(tmp_path, tmp_path / "cache")
    assert data.images.shape == (4, 20, 28, 28) and data.background == 2
    assert data.characters[0] == "Alphabet_0/character01" and data.characters[-1] == "Alphabet_1/character02"


def test_changed_source_invalidates_the_cache(tmp_path):
    fake_folders(tmp_path, characters=1)
    before = load_omniglot(tmp_path, tmp_path / "cache")
    changed = tmp_path / "images_background/Alphabet_0/character01/0000_01.png"
    changed.write_bytes(png_bytes(seed=999))
    after = load_omniglot(tmp_path, tmp_path / "cache")
    assert not np.array_equal(before.images[0, 0], after.images[0, 0])
    np.testing.assert_array_equal(before.images[1:], after.images[1:])


def test_corrupt_cache_file_is_rebuilt(tmp_path):
    fake_folders(tmp_path, characters=1)
    first = load_omniglot(tmp_path, tmp_path / "cache")
    array = next((tmp_path / "cache").glob("*.npy"))
    array.write_bytes(array.read_bytes()[:100])
    np.testing.assert_array_equal(load_omniglot(tmp_path, tmp_path / "cache").images, first.images)


def test_too_many_ways_is_rejected_before_training():
    with pytest.raises(ValueError, match="ways = 700 exceeds the 659 characters"):
        OmniglotDomain(OmniglotConfig(ways=700, split="alphabet"))


def test_too_many_ways_for_the_pool_is_rejected_by_the_sampler():
    data = coded_data(characters=4)
    with pytest.raises(ValueError, match="ways = 5 exceeds the 4 characters"):
        sample_task_batch(data.images, ClassPool(np.arange(4)), 1, 5, 1, 1, np.random.default_rng(0))


def test_more_than_20_shots_plus_queries_is_rejected_before_training():
    with pytest.raises(ValueError, match="shots \\+ omniglot.queries = 10 \\+ 15 = 25 exceeds the 20"):
        OmniglotDomain(OmniglotConfig(shots=10, queries=15))


def test_shots_plus_queries_override_is_checked_when_sampling():
    domain = OmniglotDomain(OmniglotConfig(ways=3, split="alphabet"), data=coded_data())
    with pytest.raises(ValueError, match="5 \\+ 16 = 21"):
        domain.sample_tasks(1, np.random.default_rng(0), "test", shots=5, queries=16)


# -------------------------------------------------------------------------------------------- domain


def test_domain_models_depend_only_on_the_seed():
    domain = OmniglotDomain(OmniglotConfig(), data=coded_data())
    a, b, c = domain.build_model(3), domain.build_model(3), domain.build_model(4)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.state_dict()["head.weight"], c.state_dict()["head.weight"])


def test_domain_metrics_report_loss_and_accuracy_of_one_task():
    domain = OmniglotDomain(OmniglotConfig(ways=5, shots=1, queries=3, model="mlp", split="alphabet"),
                            data=coded_data())
    model = domain.build_model(0)
    _, (xq, yq) = domain.sample_tasks(1, np.random.default_rng(0), "test")
    with torch.no_grad():
        metrics = domain.metrics(model, params_of(model), (xq[0], yq[0]))
    assert set(metrics) == {"loss", "accuracy"}
    assert float(metrics["loss"]) > 0 and 0.0 <= float(metrics["accuracy"]) <= 1.0
    assert torch.allclose(metrics["loss"], domain.loss_fn(model)(params_of(model), (xq[0], yq[0])))


def test_domain_prefers_the_measured_batching_on_cpu():
    domain = OmniglotDomain(OmniglotConfig(), data=coded_data())
    assert domain.preferred_batching(torch.device("cpu")) == "loop"


def test_per_step_batch_norm_uses_one_weight_set_per_inner_step():
    from rlmaml.meta import meta_objective

    domain = OmniglotDomain(OmniglotConfig(ways=3, split="alphabet", per_step_bn=True, test_steps=3, queries=2),
                            data=coded_data())
    model = domain.build_model(0)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    bn = [k for k in params if "norm" in k]
    assert bn and all(params[k].shape[0] == 3 for k in bn), "one batch-norm weight set per test step"
    support, query = domain.sample_tasks(2, np.random.default_rng(0), "train")
    loss_fn = domain.loss_fn(model)
    loss = meta_objective(loss_fn, loss_fn, params, support, query, steps=2, lr=0.1, batching="loop")
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
    for k in bn:  # two inner steps: sets 0 and 1 get gradients, the unused set 2 gets none
        assert grads[k][:2].abs().sum() > 0 and grads[k][2].abs().sum() == 0


# ---------------------------------------------------------------------------------------------- training




@pytest.mark.slow
def test_short_maml_run_lifts_test_accuracy_well_above_chance(real, one_thread):
    """120 first-order meta-iterations of 5-way 1-shot (meta-batch 8): one inner step then reaches ~0.68
    query accuracy on held-out characters, from ~0.41 untrained (chance 0.2)."""
    torch.manual_seed(0)
    domain = real_domain(real, ways=5, shots=1, queries=5)
    model = domain.build_model(0)
    params = params_of(model)
    loss = domain.loss_fn(model)

    def test_accuracy() -> float:
        (xs, ys), (xq, yq) = domain.sample_tasks(40, np.random.default_rng(1), "test")
        accuracy = []
        for t in range(40):
            adapted = adapt(loss, params, (xs[t], ys[t]), steps=1, lr=0.4)
            with torch.no_grad():
                accuracy.append(float(domain.metrics(model, adapted, (xq[t], yq[t]))["accuracy"]))
        return float(np.mean(accuracy))

    untrained = test_accuracy()
    optimizer = torch.optim.Adam(params.values(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(120):
        support, query = domain.sample_tasks(8, rng, "train")
        objective = meta_objective(loss, loss, params, support, query, steps=1, lr=0.4, first_order=True,
                                   batching="loop")
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()
    trained = test_accuracy()
    assert trained > 0.55 and trained > untrained + 0.15, (untrained, trained)
