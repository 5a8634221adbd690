"""jobs.evaluate end to end on tiny NIH-layout folders, a tiny pool and a random-weight classifier."""

import json

import numpy as np
import pytest
import torch

from jobs.evaluate import EVALUATION_KEYS, main

torch.set_num_threads(1)


@pytest.fixture
def inputs(tmp_path, make_nih_folder):
    from augment.synthesis.pool import PoolWriter, ProvenanceRow
    from augment.classifier import build_classifier, save_checkpoint
    from augment.config import ClassifierConfig
    from augment.data.io import read_image
    from augment.data.nih import load_index

    labels = ["Effusion", "Nodule", "No Finding", "Effusion|Nodule"]
    real = make_nih_folder([(f"{100 + i:08d}_000.png", labels[i % 4], 100 + i // 2) for i in range(12)], size=32, name="real")
    train = make_nih_folder([(f"{i:08d}_000.png", "No Finding", i) for i in range(10)], size=32, name="train")
    pool = tmp_path / "pool"
    writer = PoolWriter(str(pool))
    yy, xx = np.mgrid[0:32, 0:32]
    train_idx = load_index(train)
    for i in range(12):
        src = train_idx.records[i % 10]
        finding = "Effusion" if i % 2 else "Nodule"
        mask = ((yy - 10 - i) ** 2 + (xx - 16) ** 2 < 16).astype(np.float32)
        img = np.where(mask > 0, 0.9, read_image(train_idx.path(src)))
        name = f"syn_{finding.lower()}_{i:05d}_{src.image_index}"
        row = ProvenanceRow(
            item_id=f"{finding}-{i:05d}", image=name, finding=finding, source=src.image_index, source_patient=src.patient_id,
            reference="", mask=name, mask_area=float(mask.mean()), prob_before=0.1, prob_after=0.6, accepted=i % 3 != 0,
            reason="ok" if i % 3 else "no rise", registration_ncc=None, generator_run="test", seed=i,
        )
        writer.write_item(row, img, mask)
    writer.finalize()
    cfg = ClassifierConfig(arch="efficientnet-b0", image_size=32)
    torch.manual_seed(0)
    clf = save_checkpoint(tmp_path / "classifier.pt", build_classifier(cfg), cfg)
    return real, train, pool, clf


def test_evaluate_writes_json_figures_and_mlflow_run(inputs, tmp_path, capsys):
    real, train, pool, clf = inputs
    out = tmp_path / "out"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["--real", str(real), "--synthetic", str(pool), "--classifier", str(clf), "--generator-train", str(train),
            "--out", str(out), "--image-size", "32", "--max-images", "12", "--n-boot", "20", "--epochs", "2",
            "--max-pairs", "10", "--tracking-uri", uri, "--experiment", "eval-test",
            "--artifact-location", (tmp_path / "artifacts").as_uri()]
    assert main(argv) == 0
    res = json.loads((out / "evaluation.json").read_text())
    assert set(EVALUATION_KEYS) <= set(res)
    assert res["inputs"]["n_real"] == 12 and res["inputs"]["n_synthetic"] == 8  # the gate's 8, not its 4 rejected
    assert res["inputs"]["masks"] and res["inputs"]["provenance"] and not res["inputs"]["include_rejected"]
    assert set(res["fid"]) == {"classifier", "pixels", "encoder"} and res["fid"]["classifier"]["n_real"] == 12
    assert res["fid"]["classifier"]["low"] is not None
    assert res["fid"]["pixels"]["kid_subset_size"] == 8 and "kid_pixels" in res["metrics"]  # KID beside FID
    assert res["inputs"]["real_excluded_source_patients"] == 0  # --real holds other patients than the sources
    assert res["fidelity"]["cosine_to_source"]["n"] == 8
    assert "overall" in res["fidelity"]["embedding_silhouette"]
    assert set(res["diversity"]) == {"Effusion", "Nodule"}
    assert set(res["two_sample"]) == {"image", "crop"}
    ts = res["two_sample"]["image"]
    assert ts["grouped"] and ts["n_test"] == 20 and len(ts["auc_repeats"]) == ts["repeats"]
    assert ts["n_groups"] == 6 + 7  # 6 real patients; the 8 accepted images come from 7 source patients
    assert res["memorisation"]["masked"] and res["memorisation"]["flagged"] == []  # sources skipped
    assert res["memorisation"]["n_train"] == 10 and res["memorisation"]["embedding_features"] == "encoder"  # all of them; not the gate's space
    assert {r["set"] for r in res["classifier_sets"]} == {"real", "synthetic", "combined"}
    m = res["metrics"]
    assert {"fid_classifier", "embedding_silhouette", "two_sample_image_auc", "memorisation_pixel_n_flagged",
            "msssim_synthetic_Effusion", "classifier_real_auc_Effusion"} <= set(m)
    for name in res["figures"]:
        assert (out / name).stat().st_size > 1000
    assert {"pixels_pca2d.png", "embedding_tsne2d.png", "intensity_histogram.png", "memorisation.png"} <= set(res["figures"])
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))
    summary = json.loads(capsys.readouterr().out)
    import mlflow

    run = mlflow.MlflowClient(tracking_uri=uri).get_run(summary["mlflow_run_id"])
    assert run.data.metrics["fid_classifier"] == pytest.approx(m["fid_classifier"])
    assert run.data.params["evaluate.n_real"] == "12"


def test_evaluate_include_rejected_reads_the_gates_rejects(inputs, tmp_path):
    real, train, pool, clf = inputs
    out = tmp_path / "out"
    argv = ["--real", str(real), "--synthetic", str(pool), "--classifier", str(clf), "--generator-train", str(train),
            "--out", str(out), "--image-size", "32", "--max-images", "12", "--n-boot", "5", "--epochs", "1",
            "--max-pairs", "5", "--include-rejected"]
    assert main(argv) == 0
    res = json.loads((out / "evaluation.json").read_text())
    assert res["inputs"]["n_synthetic"] == 12
    assert (res["inputs"]["pool_accepted"], res["inputs"]["pool_rejected"]) == (8, 4)
    assert res["fidelity"]["cosine_to_source"]["n"] == 12  # rejected images keep their provenance source
    assert res["two_sample"]["crop"]["n_test"] > 0  # and their masks
    assert set(res["diversity"]) == {"Effusion", "Nodule"}


def test_the_real_side_leaves_out_the_sources_patients(inputs, tmp_path, make_nih_folder, capsys):
    """--real holding the sources themselves: their patients are dropped; only sources: a clear error."""
    _, train, pool, clf = inputs
    mixed = make_nih_folder([(f"{i:08d}_000.png", "No Finding", i) for i in range(10)]
                            + [(f"{300 + i:08d}_000.png", "Effusion", 300 + i) for i in range(8)], size=32, name="mixed")
    out = tmp_path / "out"
    argv = ["--real", str(mixed), "--synthetic", str(pool), "--classifier", str(clf), "--out", str(out),
            "--image-size", "32", "--n-boot", "5", "--epochs", "1", "--max-pairs", "5"]
    assert main(argv) == 0
    res = json.loads((out / "evaluation.json").read_text())
    assert res["inputs"]["real_excluded_source_patients"] == 10 and res["inputs"]["n_real"] == 8
    assert main(["--real", str(train), "--synthetic", str(pool), "--classifier", str(clf), "--out", str(tmp_path / "o2")]) == 2
    assert "disjoint from the sources" in capsys.readouterr().err


def test_evaluate_without_provenance_cannot_include_rejected(tmp_path, make_nih_folder, inputs, capsys):
    real, _, _, clf = inputs
    plain = make_nih_folder([(f"{200 + i:08d}_000.png", "Effusion", 200 + i) for i in range(4)], size=32, name="plain")
    argv = ["--real", str(real), "--synthetic", str(plain), "--classifier", str(clf), "--out", str(tmp_path / "o"), "--include-rejected"]
    assert main(argv) == 2
    assert "provenance.csv" in capsys.readouterr().err


def test_evaluate_reports_bad_inputs(inputs, tmp_path, capsys):
    real, _, pool, clf = inputs
    assert main(["--real", str(tmp_path / "nope"), "--synthetic", str(pool), "--classifier", str(clf), "--out", str(tmp_path / "o")]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert main(["--real", str(real), "--synthetic", str(pool), "--classifier", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_a_copy_of_any_training_image_is_flagged_not_only_of_a_sampled_few(tmp_path, make_nih_folder):
    """The old search read --max-images random training images; a copy of another one went unseen."""
    from augment.synthesis.pool import PoolWriter, ProvenanceRow
    from augment.classifier import build_classifier, save_checkpoint
    from augment.config import ClassifierConfig
    from augment.data.io import read_image
    from augment.data.nih import load_index

    train = make_nih_folder([(f"{i:08d}_000.png", "No Finding", i) for i in range(24)], size=32, name="train")
    real = make_nih_folder([(f"{500 + i:08d}_000.png", "Effusion", 500 + i) for i in range(8)], size=32, name="real")
    idx = load_index(train)
    pool = tmp_path / "pool"
    writer = PoolWriter(str(pool))
    mask = np.zeros((32, 32), np.float32)
    mask[8:20, 8:20] = 1
    for i in range(6):
        src = idx.records[i]
        img = read_image(idx.path(idx.records[23])) if i == 0 else np.clip(read_image(idx.path(src)) + 0.3 * mask, 0, 1)
        name = f"syn_{i:03d}_{src.image_index}"
        writer.write_item(ProvenanceRow(
            item_id=f"Effusion-{i:05d}", image=name, finding="Effusion", source=src.image_index, source_patient=src.patient_id,
            reference="", mask=name, mask_area=float(mask.mean()), prob_before=0.1, prob_after=0.6, accepted=True,
            reason="ok", registration_ncc=None, generator_run="test", seed=i), img, mask)
    writer.finalize()
    cfg = ClassifierConfig(arch="efficientnet-b0", image_size=32)
    torch.manual_seed(0)
    clf = save_checkpoint(tmp_path / "classifier.pt", build_classifier(cfg), cfg)
    out = tmp_path / "out"
    argv = ["--real", str(real), "--synthetic", str(pool), "--classifier", str(clf), "--generator-train", str(train),
            "--out", str(out), "--image-size", "32", "--max-images", "6", "--n-boot", "5", "--epochs", "1", "--max-pairs", "5"]
    assert main(argv) == 0
    mem = json.loads((out / "evaluation.json").read_text())["memorisation"]
    assert mem["n_train"] == 24  # all of them, though --max-images is 6
    assert [f[:2] for f in mem["flagged"]] == [["syn_000_00000000_000.png", "00000023_000.png"]], mem["flagged"]
