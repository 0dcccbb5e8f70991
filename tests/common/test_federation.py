"""Data per party: held-out test set first, sites next; preprocessing from public parameters
only (the same at every site and the server); each site's split from its own spec; a deployed
site reads its own file; a deployed server needs no data to build the model."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

import numpy as np
import pytest

from common.config import RunConfig
from common.credit import write_credit_csv
from common.data.schema import BUILTIN_SCHEMAS
from common.dataset import Dataset, Modality
from common.errors import ConfigError, DataError
from common.federation import (
    _keyed_hashes,
    local_site_data,
    model_spec,
    pool_and_test,
    server_test_set,
    site_data,
    site_partitions,
    split_records,
)

SPLIT = {"val_fraction": 0.25, "split_seed": 1234}
CREDIT = {"class_names": (), "feature_schema": str(BUILTIN_SCHEMAS["synthetic:credit"])}


def test_test_set_is_held_out_before_sites_are_made() -> None:
    cfg = RunConfig.of(sites=4)
    pool, test = pool_and_test(cfg)
    sites = site_partitions(cfg, 4)
    assert sum(len(s.train) + len(s.val) for s in sites) == len(pool)
    assert len(pool) + len(test) == 569


def test_every_party_uses_the_same_public_transform() -> None:
    """Sites and the server preprocess with the shipped schema's bounds: a record's inputs do
    not depend on which party holds it (no per-party statistics)."""
    from sklearn.datasets import load_breast_cancer

    from common.loaders import load_sklearn

    cfg = RunConfig.of(sites=3)
    everything = load_sklearn("breast_cancer")
    rows = {tuple(r) for r in everything.x}
    parts = [*site_partitions(cfg, 3)]
    for ds in [server_test_set(cfg), *(p.train for p in parts), *(p.val for p in parts)]:
        assert {tuple(r) for r in ds.x} <= rows
        assert ds.x.min() >= -1.0 and ds.x.max() <= 1.0
    assert everything.x.shape == load_breast_cancer().data.shape


def test_split_is_the_sites_own_not_the_servers() -> None:
    """(c) The server's seed and val-fraction do not move a site's split; the site's spec does,
    the same way every time."""
    cfg = RunConfig.of(sites=3)
    site = site_data(cfg, 1, 3, **SPLIT)
    for server in (cfg.replace(val_fraction=0.5), cfg.replace(val_fraction=0.05)):
        other = site_data(server, 1, 3, **SPLIT)
        np.testing.assert_array_equal(other.val.x, site.val.x)
        np.testing.assert_array_equal(other.train.x, site.train.x)
    assert 0.15 < len(site.val) / (len(site.train) + len(site.val)) < 0.35
    again = site_data(cfg, 1, 3, **SPLIT)
    np.testing.assert_array_equal(again.val.x, site.val.x)
    reseeded = site_data(cfg, 1, 3, val_fraction=0.25, split_seed=99)
    assert not np.array_equal(reseeded.val.x, site.val.x)


def test_deployed_split_ignores_the_servers_seed_and_val_fraction(tmp_path: Path) -> None:
    path = tmp_path / "loans.csv"
    write_credit_csv(str(path), 120, seed=1)
    cfg = RunConfig.of(dataset="csv", label_column="default")
    site = local_site_data(cfg, str(path), **SPLIT, **CREDIT)
    for server in (cfg.replace(seed=7), cfg.replace(val_fraction=0.6), cfg.replace(seed=3, val_fraction=0.1)):
        other = local_site_data(server, str(path), **SPLIT, **CREDIT)
        np.testing.assert_array_equal(other.val.x, site.val.x)
        np.testing.assert_array_equal(other.train.y, site.train.y)
    assert 15 <= len(site.val) <= 45  # about 0.25 of 120: each record is assigned by itself


def _records(n: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(rng.normal(size=(n, 3)).astype(np.float32), rng.integers(0, 2, n), 2, Modality.TABULAR, "t")


def test_split_records_is_a_pure_function_of_the_spec() -> None:
    data = _records(500)
    a = split_records(data, val_fraction=0.2, split_seed=5)
    b = split_records(data, val_fraction=0.2, split_seed=5)
    np.testing.assert_array_equal(a[0], b[0])
    assert 60 < len(a[1]) < 140 and set(a[0]).isdisjoint(a[1]) and len(a[0]) + len(a[1]) == 500
    assert len(split_records(_records(2), val_fraction=0.9, split_seed=0)[0]) == 1  # a training record stays


@pytest.mark.parametrize("seed", [0, 5, -3, 2**120])
@pytest.mark.parametrize("shape", [(40, 3), (12, 1, 8, 8), (9,)])
def test_split_hash_is_hmac_sha256_of_each_record(seed: int, shape: tuple[int, ...]) -> None:
    """The split's keyed hash (one keyed HMAC object copied per record) gives exactly the
    bytes of ``hmac.new``: the same split as before it was made faster, for any record shape."""
    rng = np.random.default_rng(seed % 97)
    x, y = rng.random(shape).astype(np.float32), rng.integers(0, 4, shape[0])
    key = seed.to_bytes(16, "big", signed=True)
    expected = [int.from_bytes(hmac.new(key, x[i].tobytes() + y[i].tobytes(), hashlib.sha256).digest()[:8], "big")
                for i in range(shape[0])]  # fmt: skip
    assert _keyed_hashes(key, x, y).tolist() == [float(e) for e in expected]


def test_adding_one_record_moves_no_other_record_across_the_split() -> None:
    # The attack on a permuted split: with a known seed, permutation(n) and permutation(n + 1)
    # are unrelated, so neighbouring datasets had training parts differing in ~100 records.
    data = _records(569)
    more = Dataset(np.vstack([data.x, np.ones((1, 3), np.float32)]), np.append(data.y, 1), 2, Modality.TABULAR, "t")
    train, val = split_records(data, val_fraction=0.2, split_seed=0)
    train2, val2 = split_records(more, val_fraction=0.2, split_seed=0)
    assert set(train) <= set(train2) and set(val) <= set(val2)
    assert len(set(train2) - set(train)) + len(set(val2) - set(val)) == 1


def test_deployed_server_builds_the_model_without_data() -> None:
    cfg = RunConfig.of(
        dataset="csv", data_path="/nowhere/at/all.csv", label_column="y", input_shape="12", num_classes=3, hidden="8"
    )
    spec = model_spec(cfg)
    assert spec.input_shape == (12,) and spec.num_classes == 3


def test_deployed_site_reads_its_own_file(tmp_path: Path) -> None:
    path = tmp_path / "loans.csv"
    write_credit_csv(str(path), 200, seed=1)
    cfg = RunConfig.of(dataset="csv", label_column="default")
    site = local_site_data(cfg, str(path), **SPLIT, **CREDIT, site_id=2)
    assert len(site.train) + len(site.val) == 200 and site.train.x.shape[1] == 14 and site.site_id == 2
    # Public transform only: clipped to the schema's bounds, then scaled or standardised with
    # its public centre and spread (the credit schema's), so every value is finite and bounded.
    assert np.isfinite(site.train.x).all() and np.abs(site.train.x).max() <= 10.0


def test_a_deployed_table_without_schema_or_class_names_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "loans.csv"
    write_credit_csv(str(path), 50, seed=1)
    cfg = RunConfig.of(dataset="csv", label_column="default", categorical_columns="home,purpose")
    with pytest.raises(DataError, match=re.escape(f"{path}: no feature-schema")):
        local_site_data(cfg, str(path), **SPLIT, class_names=("0", "1"), feature_schema="")
    npz = tmp_path / "scans.npz"
    np.savez(npz, train_images=np.zeros((6, 2, 2), np.uint8), train_labels=np.array([0, 1] * 3))
    with pytest.raises(DataError, match=re.escape(f"{npz}: a npz file needs class-names")):
        local_site_data(RunConfig.of(dataset="npz", model="cnn"), str(npz), **SPLIT, class_names=(), feature_schema="")
    site = local_site_data(
        RunConfig.of(dataset="npz", model="cnn"), str(npz), **SPLIT, class_names=("a", "b", "c"), feature_schema=""
    )
    assert site.train.num_classes == 3  # from the site's class-names, not the largest label held


def test_the_jobs_class_names_must_agree_with_the_sites(tmp_path: Path) -> None:
    path = tmp_path / "loans.csv"
    write_credit_csv(str(path), 50, seed=1)
    cfg = RunConfig.of(dataset="csv", label_column="default", class_names="1,0")
    with pytest.raises(ConfigError, match="differ from this site's class-names 0, 1"):
        local_site_data(cfg, str(path), **SPLIT, class_names=("0", "1"), feature_schema=CREDIT["feature_schema"])


def test_class_names_give_every_site_the_same_label_mapping(tmp_path, tiny_text_model) -> None:
    """A deployed site's text file may lack a class; with class-names its labels still map to
    the federation's classes (without, its two labels would become classes 0 and 1)."""
    import json

    path = tmp_path / "site.jsonl"
    rows = [{"text": f"cough and wheezing {i}", "label": ["neurology", "pulmonology"][i % 2]} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RunConfig.of(
        dataset="text",
        model="transformer",
        pretrained_path=str(tiny_text_model),
        random_init=True,
        class_names="cardiology,neurology,pulmonology",
    )
    names = cfg.data.class_name_list
    site = local_site_data(cfg, str(path), **SPLIT, class_names=names, feature_schema="")
    assert site.train.num_classes == 3 and set(site.train.y) | set(site.val.y) == {1, 2}
    assert model_spec(cfg).num_classes == 3  # a server holding no data builds the same head
    with pytest.raises(DataError, match="a text file needs class-names"):  # never the labels found
        local_site_data(cfg.replace(class_names=""), str(path), **SPLIT, class_names=(), feature_schema="")


def test_a_sites_outlier_moves_no_other_records_inputs(tmp_path: Path) -> None:
    """(a) at the site: with one far-out record added, every other record's preprocessed
    features are unchanged (a scaler fitted on the site's records moves all of them)."""
    base, neighbour = tmp_path / "d.csv", tmp_path / "d2.csv"
    write_credit_csv(str(base), 80, seed=2)
    lines = base.read_text().splitlines()
    neighbour.write_text("\n".join([*lines, "75,99999999,1.0,500,400,57,rent,business,1"]) + "\n")
    cfg = RunConfig.of(dataset="csv", label_column="default")

    def rows(path: Path) -> set[tuple[float, ...]]:
        site = local_site_data(cfg, str(path), **SPLIT, **CREDIT)
        return {tuple(r) for r in np.concatenate([site.train.x, site.val.x])}

    before, after = rows(base), rows(neighbour)
    assert before < after and len(after - before) == 1


@pytest.mark.parametrize("dtype", [">i8", "<U3", "int32"])
def test_split_hash_is_hmac_sha256_for_any_label_dtype(dtype: str) -> None:
    """Byte order and string labels (whose ``y[i].tobytes()`` is not a slice of the array's
    bytes) hash as ``hmac.new`` hashes them (found in review)."""
    x = np.random.default_rng(0).random((6, 2)).astype(np.float32)
    y = np.array(["a", "bb", "c", "ddd", "e", "f"]).astype(dtype) if "U" in dtype else np.arange(6).astype(dtype)
    key = (7).to_bytes(16, "big", signed=True)
    expected = [int.from_bytes(hmac.new(key, x[i].tobytes() + y[i].tobytes(), hashlib.sha256).digest()[:8], "big")
                for i in range(6)]  # fmt: skip
    assert _keyed_hashes(key, x, y).tolist() == [float(e) for e in expected]
