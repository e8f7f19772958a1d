"""Before step 0 a training run checks every input it will read and that the cluster can hold its
workers (issue 30, items 3 and 7): a missing evaluation directory or a GPU the cluster lacks is a
clear error now, not a crash at the first evaluation or an endless wait."""

from __future__ import annotations

import pytest

from helpers import ROOT


def _cfg(tmp_path, overrides):
    from spladeray.config import load_config
    from spladeray.data.synthetic import write_prepared

    data = write_prepared(tmp_path / "prepared", n_rows=8, n_neg=1)
    return load_config(
        ROOT / "configs" / "train_cpu_smoke.yaml",
        overrides=[f"train.data_dir={data}", f"train.output_dir={tmp_path / 'out'}", *overrides],
    )


def test_missing_evaluation_and_model_are_named_before_training(tmp_path):
    from spladeray.storage import StorageError
    from spladeray.train.trainer import run_train

    cfg = _cfg(
        tmp_path,
        [f"train.eval.beir_dir={tmp_path / 'no-beir'}", f"model.path={tmp_path / 'no-model'}"],
    )
    with pytest.raises(StorageError) as err:
        run_train(cfg)  # raises before Ray is even started
    message = str(err.value)
    for missing in (
        "no-beir/corpus.jsonl",
        "no-beir/queries.jsonl",
        "no-beir/qrels/dev.tsv",
        "no-model",
    ):
        assert missing in message


def test_inputs_of_a_good_config_pass(tmp_path, scifact, splade_tiny):
    from spladeray.train.trainer import check_inputs, input_uris

    cfg = _cfg(tmp_path, [f"train.eval.beir_dir={scifact}", f"model.path={splade_tiny}"])
    check_inputs(cfg)
    assert any(u.endswith("qrels/dev.tsv") for u in input_uris(cfg))


def test_trainer_needing_more_gpus_than_the_cluster_fails(tmp_path, ray_cluster, monkeypatch):
    from spladeray.train.trainer import check_trainer_capacity

    monkeypatch.delenv("SPLADERAY_AUTOSCALING", raising=False)
    cfg = _cfg(tmp_path, ["train.use_gpu=true", "train.num_workers=2"])
    with pytest.raises(RuntimeError, match="needs .*2 GPUs but the cluster has 0"):
        check_trainer_capacity(cfg)
    check_trainer_capacity(_cfg(tmp_path / "cpu", ["train.num_workers=2"]))  # 2 CPUs fit
