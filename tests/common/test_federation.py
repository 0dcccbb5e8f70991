"""Data per party: held-out test set first, sites next, each site scaled on its own records;
a deployed site reads its own file; a deployed server needs no data to build the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.config import RunConfig
from common.credit import write_credit_csv
from common.federation import local_site_data, model_spec, pool_and_test, site_partitions


def test_test_set_is_held_out_before_sites_are_made() -> None:
    cfg = RunConfig(sites=4)
    pool, test = pool_and_test(cfg)
    sites = site_partitions(cfg, 4)
    assert sum(len(s.train) + len(s.val) for s in sites) == len(pool)
    assert len(pool) + len(test) == 569


def test_each_site_is_standardised_on_its_own_training_records() -> None:
    for site in site_partitions(RunConfig(sites=3), 3):
        np.testing.assert_allclose(site.train.x.mean(axis=0), 0.0, atol=1e-4)
        assert not np.allclose(site.val.x.mean(axis=0), 0.0, atol=1e-4)  # val uses train statistics


def test_deployed_server_builds_the_model_without_data() -> None:
    cfg = RunConfig(
        dataset="csv", data_path="/nowhere/at/all.csv", label_column="y", input_shape="12", num_classes=3, hidden="8"
    )
    spec = model_spec(cfg)
    assert spec.input_shape == (12,) and spec.num_classes == 3


def test_deployed_site_reads_its_own_file(tmp_path: Path) -> None:
    path = tmp_path / "loans.csv"
    write_credit_csv(str(path), 200, seed=1)
    cfg = RunConfig(dataset="csv", label_column="default", categorical_columns="home,purpose")
    site = local_site_data(cfg, str(path))
    assert len(site.train) + len(site.val) == 200 and site.train.x.shape[1] == 14
    np.testing.assert_allclose(site.train.x.mean(axis=0), 0.0, atol=1e-4)


def test_class_names_give_every_site_the_same_label_mapping(tmp_path, tiny_text_model) -> None:
    """A deployed site's text file may lack a class; with class-names its labels still map to
    the federation's classes (without, its two labels would become classes 0 and 1)."""
    import json

    path = tmp_path / "site.jsonl"
    rows = [{"text": f"cough and wheezing {i}", "label": ["neurology", "pulmonology"][i % 2]} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RunConfig(
        dataset="text",
        model="transformer",
        pretrained_path=str(tiny_text_model),
        random_init=True,
        class_names="cardiology,neurology,pulmonology",
    )
    site = local_site_data(cfg, str(path))
    assert site.train.num_classes == 3 and set(site.train.y) | set(site.val.y) == {1, 2}
    assert model_spec(cfg).num_classes == 3  # a server holding no data builds the same head
    unmapped = local_site_data(cfg.replace(class_names=""), str(path))
    assert unmapped.train.num_classes == 2
