"""Trials per GPU: the memory estimate, the packing plan and its refusals, the GPU share in specs."""

import pytest

from clmr_ray import packing
from clmr_ray.config import SpecError, preset, spec_hash, with_overrides
from clmr_ray.distributed.pack import share_text, sweep_specs
from clmr_ray.distributed.train import worker_resources
from clmr_ray.distributed.tune import concurrency_limit, trial_config, trial_needs, trial_resources
from clmr_ray.sweep_files import sweep_from_dict

GIB = 2**30


@pytest.fixture(scope="module")
def tiny():
    return preset("tiny", {"scaling.use_gpu": True})


def test_shares_never_add_up_to_more_than_a_gpu():
    assert packing.gpus_per_trial(1) == 1.0
    assert packing.gpus_per_trial(4) == 0.25
    for n in (3, 7, 12, 22):
        share = packing.gpus_per_trial(n)
        assert n * share <= 1.0 and packing.trials_per_gpu(share) == n
    with pytest.raises(packing.PackingError, match="trials-per-gpu"):
        packing.gpus_per_trial(0)


def test_trials_per_gpu_parses_a_number_or_auto():
    assert packing.parse_trials_per_gpu("4") == 4
    assert packing.parse_trials_per_gpu("AUTO") == "auto"
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(packing.PackingError, match="--trials-per-gpu"):
            packing.parse_trials_per_gpu(bad)


def test_estimate_scales_with_the_batch_and_amp_halves_pretraining_activations(tiny):
    small = packing.estimate(tiny)
    big = packing.estimate(with_overrides(tiny, {"pretrain.batch_size": 32}))
    assert big.states == small.states
    assert big.pretrain_activations == pytest.approx(4 * small.pretrain_activations, rel=0.01)
    no_amp = packing.estimate(with_overrides(tiny, {"pretrain.amp": False}))
    saved_share = small.pretrain_activations / no_amp.pretrain_activations
    assert 0.5 <= saved_share < 0.6  # halved, except the float32 batch of crops itself
    wider_eval = packing.estimate(with_overrides(tiny, {"eval.batch_size": 1024}))
    assert wider_eval.eval_activations > 3 * small.eval_activations
    assert small.total == small.states + max(small.pretrain_activations, small.eval_activations) + small.context
    two_workers = packing.estimate(with_overrides(tiny, {"scaling.num_workers": 2}))
    assert two_workers.pretrain_activations == pytest.approx(small.pretrain_activations / 2, rel=0.01)


def test_auto_fills_the_card_with_headroom(tiny):
    one = packing.estimate(tiny).total
    plan = packing.plan([tiny], "auto", 16 * GIB)
    assert plan.trials_per_gpu == int(0.9 * 16 * GIB // one)
    assert plan.trials_per_gpu * one <= 0.9 * 16 * GIB < (plan.trials_per_gpu + 1) * one
    assert "trials per GPU" in plan.describe()


def test_a_packing_that_cannot_fit_is_refused_in_one_line(tiny):
    with pytest.raises(packing.PackingError) as refused:
        packing.plan([tiny], 4, 2 * GIB)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("--trials-per-gpu 4: 4 trials need about")
    assert "at most 2 fit" in message
    with pytest.raises(packing.PackingError, match="not even one fits"):
        packing.plan([tiny], 1, GIB // 2)
    with pytest.raises(packing.PackingError, match="more than the"):
        packing.plan([tiny], "auto", GIB // 2)
    with pytest.raises(packing.PackingError, match="pass --gpu-memory-gib"):
        packing.plan([tiny], "auto", None)
    assert packing.plan([tiny], 8, None).trials_per_gpu == 8  # memory unknown: not checked


def test_the_specs_own_share_is_checked_too(tiny):
    packed = with_overrides(tiny, {"scaling.gpus_per_trial": 0.25})
    assert packing.plan([tiny, packed], None, 16 * GIB).trials_per_gpu == 4
    with pytest.raises(packing.PackingError, match="--trials-per-gpu 4"):
        packing.plan([packed], None, 2 * GIB)


def test_the_share_is_validated_and_left_out_of_the_spec_hash(tiny):
    packed = with_overrides(tiny, {"scaling.gpus_per_trial": 0.25})
    assert spec_hash(packed) == spec_hash(tiny)
    for bad in (0, 1.5, -0.5):
        with pytest.raises(SpecError, match=r"scaling\.gpus_per_trial: must be in \(0, 1\]"):
            with_overrides(tiny, {"scaling.gpus_per_trial": bad})
    with pytest.raises(SpecError, match="NCCL"):
        with_overrides(tiny, {"scaling.num_workers": 2, "scaling.gpus_per_trial": 0.5})
    with_overrides(tiny, {"scaling.num_workers": 2, "scaling.gpus_per_trial": 0.6})


def test_trials_and_workers_reserve_their_share(tiny, tmp_path):
    packed = with_overrides(tiny, {"scaling.gpus_per_trial": 0.25})
    bundle = trial_resources(trial_config(packed, runs_dir=tmp_path)).bundles[0]
    assert bundle["GPU"] == 0.25 and bundle["CPU"] == 1
    assert trial_needs(packed)["GPU"] == 0.25
    assert worker_resources(packed) == {"CPU": 1, "GPU": 0.25}
    assert worker_resources(with_overrides(packed, {"scaling.use_gpu": False})) == {"CPU": 1}
    assert trial_resources(trial_config(preset("tiny"), runs_dir=tmp_path)).bundles[0].get("GPU", 0) == 0
    assert share_text(packed) == "4 per GPU (0.25 GPU each)"
    assert share_text(tiny) == "1 GPU each" and share_text(preset("tiny")) == ""


def test_concurrency_counts_shares_per_card(tiny):
    cluster = {"CPU": 64, "GPU": 2}
    assert concurrency_limit(tiny, 100, cluster) == 2
    assert concurrency_limit(with_overrides(tiny, {"scaling.gpus_per_trial": 0.25}), 100, cluster) == 8
    assert concurrency_limit(with_overrides(tiny, {"scaling.gpus_per_trial": 0.3333}), 100, cluster) == 6
    # two 0.4 shares per card: 4 trials on 2 cards, not 5
    assert concurrency_limit(with_overrides(tiny, {"scaling.gpus_per_trial": 0.4}), 100, cluster) == 4
    assert concurrency_limit(with_overrides(tiny, {"scaling.gpus_per_trial": 0.25}), 100, {"CPU": 3, "GPU": 2}) == 3
    multi = with_overrides(tiny, {"scaling.num_workers": 2, "scaling.gpus_per_trial": 0.6})
    assert concurrency_limit(multi, 100, {"CPU": 64, "GPU": 4}) == 2


def test_a_sweep_is_checked_at_the_extremes_of_its_memory_keys():
    sweep = sweep_from_dict({
        "name": "mem", "preset": "tiny", "base": {"scaling.use_gpu": True},
        "space": {"pretrain.batch_size": {"type": "categorical", "choices": [8, 16]},
                  "pretrain.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "budget": {"num_samples": 2},
    })
    batches = sorted(s.pretrain.batch_size for s in sweep_specs(sweep))
    assert batches == [8, 8, 16]  # the base, then each swept batch size; the learning rate leaves memory alone
