"""The augmentation job end to end on tiny phantom data with tiny untrained models.

Checks what the job promises whatever the models' quality: every planned item ends up in
the provenance table exactly once (also after a resumed run and a killed actor), the Ray
Data job makes the same images as the plain loop, a corrupt source is counted, not fatal,
a pool refuses a second generator, and the tables hold the current plan only.
"""

from __future__ import annotations

import csv
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from augment.config import load_config
from augment.data import prepare_data
from shared_paths import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cfg(root: Path, pool: str, *extra: str):
    return load_config(
        REPO / "configs" / "local.yaml",
        [
            f"output_dir={root}/runs",
            "data.image_size=64",
            "data.phantom.n_images=48",
            "data.phantom.image_size=64",
            "classifier.arch=efficientnet-b0",
            "classifier.image_size=64",
            "inpainting.crop_size=32",
            "inpainting.block_out_channels=[16, 32]",
            "inpainting.steps=2",
            "augment.findings=[Cardiomegaly, Effusion]",
            "augment.target_count=40",
            "augment.max_per_finding=3",
            f"augment.output={pool}",
            "augment.batch_size=2",
            "registration.iterations=5",
            "registration.pyramid_levels=1",
            "quality.margin=0.0",
            "resources.cpus_per_actor=0.5",
            "resources.torch_threads=1",
            f"tracking.uri=sqlite:///{root}/mlflow.db",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    from augment.classifier import build_classifier
    from augment.classifier.checkpoint import save_checkpoint as save_clf
    from augment.inpainting import build_model
    from augment.inpainting import save_checkpoint as save_gen

    root = tmp_path_factory.mktemp("augment")
    cfg = _cfg(root, str(root / "unused"))
    torch.manual_seed(0)
    clf = save_clf(root / "classifier.pt", build_classifier(cfg.classifier, load_pretrained=False), cfg.classifier)
    gen = save_gen(root / "generator.pt", build_model(cfg.inpainting), cfg.inpainting)
    torch.manual_seed(1)
    save_gen(root / "generator2.pt", build_model(cfg.inpainting), cfg.inpainting)  # other weights
    _, split = prepare_data(cfg)
    return root, split, str(clf), str(gen)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    # the dashboard serves the state API that finds the actor to kill
    ctx = ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    yield f"http://{ctx.dashboard_url}"
    ray.shutdown()


def _provenance(pool: Path) -> list[dict]:
    return list(csv.DictReader(open(pool / "provenance.csv")))


def test_plain_loop_writes_every_planned_item_once(setup, tmp_path):
    from jobs.augment import run_augment

    root, split, clf, gen = setup
    cfg = _cfg(root, str(tmp_path / "pool"))
    res = run_augment(cfg, split.train, clf, gen, generator_run="g1", use_ray=False)
    assert res.planned == 6 and res.processed == 6
    rows = _provenance(tmp_path / "pool")
    assert sorted(r["item_id"] for r in rows) == sorted({r["item_id"] for r in rows})
    assert len(rows) == 6
    assert {r["finding"] for r in rows} == {"Cardiomegaly", "Effusion"}
    assert set(res.stage_seconds) == {"register", "inpaint", "gate", "write"}
    # the gate searched a near-copy index built once for the training split, under the run's stages
    assert (Path(res.bank_index) / "index.json").is_file() and Path(res.bank_index).parent.parent == root / "runs" / "stages"
    for r in rows:
        folder = "images" if r["accepted"] == "True" else "rejected"
        assert (tmp_path / "pool" / folder / r["image"]).is_file()
        assert r["reference"] and r["generator_run"] == "g1"
    # the accepted images are an NIH folder any reader takes
    n_acc = sum(r["accepted"] == "True" for r in rows)
    if n_acc:
        from augment.data.nih import load_index

        assert len(load_index(tmp_path / "pool")) == n_acc

    # resume: drop two finished items, leave a killed run's temporary file, run again:
    # only those two are made, and the temporary file is gone
    for r in rows[:2]:
        (tmp_path / "pool" / "items" / f"{r['item_id']}.json").unlink()
    (tmp_path / "pool" / "images" / ".half_written.png.1a2b3c.tmp").write_bytes(b"half")
    again = run_augment(cfg, split.train, clf, gen, generator_run="g1", use_ray=False)
    assert again.processed == 2 and again.skipped_done == 4
    assert sorted(r["item_id"] for r in _provenance(tmp_path / "pool")) == sorted(r["item_id"] for r in rows)
    assert not list((tmp_path / "pool").rglob("*.tmp"))

    # another plan (another seed) in the same pool: the tables list its items only
    other = run_augment(_cfg(root, str(tmp_path / "pool"), "augment.seed=5"), split.train, clf, gen, use_ray=False)
    assert other.planned == 6 and other.processed == 6 and other.skipped_done == 0
    now = _provenance(tmp_path / "pool")
    assert len(now) == 6 and not {r["item_id"] for r in now} & {r["item_id"] for r in rows}
    listed = {r["Image Index"] for r in csv.DictReader(open(tmp_path / "pool" / "Data_Entry_2017.csv"))}
    assert listed == {r["image"] for r in now if r["accepted"] == "True"}


def test_rerun_with_another_generator_is_refused(setup, tmp_path):
    from augment.synthesis import PoolError, PoolWriter, generator_fingerprint
    from jobs.augment import run_augment

    root, split, clf, gen = setup
    gen2 = str(root / "generator2.pt")
    assert generator_fingerprint(gen2) != generator_fingerprint(gen)
    pool = tmp_path / "pool"
    PoolWriter(str(pool)).claim_generator(generator_fingerprint(gen), gen)  # as a first run with gen does
    t0 = time.perf_counter()
    with pytest.raises(PoolError, match="set augment.output to another folder"):
        run_augment(_cfg(root, str(pool)), split.train, clf, gen2, use_ray=False)
    assert time.perf_counter() - t0 < 10  # refused before the models load
    assert not list((pool / "items").iterdir())


def test_corrupt_source_is_counted_not_fatal(setup, tmp_path):
    import shutil
    from dataclasses import replace

    from augment.synthesis import generator_fingerprint, plan_augmentation
    from jobs.augment import run_augment

    root, split, clf, gen = setup
    cfg = _cfg(root, str(tmp_path / "pool"))
    # a copy of the training folder in which the first planned source is corrupt
    data = tmp_path / "data"
    shutil.copytree(split.train.root, data)
    train = replace(split.train, root=data)
    first = plan_augmentation(train, ["Cardiomegaly", "Effusion"], 40, 3, cfg.augment.seed,
                              generator=generator_fingerprint(gen))[0]
    (data / "images" / first.source).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    res = run_augment(cfg, train, clf, gen, use_ray=False)
    assert res.processed == 6
    rows = {r["item_id"]: r for r in _provenance(tmp_path / "pool")}
    bad = [r for r in rows.values() if r["source"] == first.source]
    assert bad and all(r["accepted"] == "False" and r["reason"] == "unreadable_source" for r in bad)


def test_ray_data_job_matches_plain_loop(setup, tmp_path, ray_local):
    from jobs.augment import run_augment

    root, split, clf, gen = setup
    plain = run_augment(_cfg(root, str(tmp_path / "a")), split.train, clf, gen, use_ray=False)
    viaray = run_augment(_cfg(root, str(tmp_path / "b")), split.train, clf, gen, use_ray=True)
    assert plain.processed == viaray.processed == 6
    a = {r["item_id"]: r for r in _provenance(tmp_path / "a")}
    b = {r["item_id"]: r for r in _provenance(tmp_path / "b")}
    assert a.keys() == b.keys()
    from augment.data.io import read_image

    for k in a:
        assert a[k]["reference"] == b[k]["reference"] and a[k]["source"] == b[k]["source"]
        fa = "images" if a[k]["accepted"] == "True" else "rejected"
        fb = "images" if b[k]["accepted"] == "True" else "rejected"
        ia = read_image(tmp_path / "a" / fa / a[k]["image"])
        ib = read_image(tmp_path / "b" / fb / b[k]["image"])
        assert np.abs(ia - ib).max() <= 2 / 255  # same seeds -> same images, batching aside


def test_killed_inpaint_actor_loses_and_duplicates_nothing(setup, tmp_path, ray_local):
    from ray.util.state import list_actors

    from jobs.augment import run_augment

    root, split, clf, gen = setup
    pool = tmp_path / "pool"
    cfg = _cfg(root, str(pool), "inpainting.steps=30", "augment.batch_size=1", "augment.max_per_finding=6")
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(res=run_augment(cfg, split.train, clf, gen)))
    t.start()
    killed = None
    deadline = time.time() + 240
    while t.is_alive() and time.time() < deadline and killed is None:
        items = list((pool / "items").glob("*.json")) if (pool / "items").is_dir() else []
        if items:
            for a in list_actors(address=ray_local, filters=[("state", "=", "ALIVE")], detail=True):
                if "InpaintActor" in (a.class_name or "") and a.pid:
                    os.kill(a.pid, signal.SIGKILL)
                    killed = a.pid
                    break
        time.sleep(0.2)
    t.join(timeout=300)
    assert not t.is_alive(), "the job did not finish after its inpainting actor was killed"
    assert killed is not None, "the job finished before an inpainting actor could be killed"
    assert out["res"].planned == 12
    rows = _provenance(pool)
    ids = [r["item_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 12
