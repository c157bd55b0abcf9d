"""When the U-Net joins the voxel head (core.training.warmup)."""

from __future__ import annotations

from napari_sparse_unet.core.training.warmup import WINDOW, HeadWarmup


def _steps(warmup: HeadWarmup, losses, budget_steps: int) -> int:
    """Run head steps with ``losses`` until the U-Net joins; return the step it joined at."""
    for step, loss in enumerate(losses):
        if not warmup.head_alone(step / budget_steps):
            return step
        warmup.add(loss)
    return len(losses)


def test_a_head_that_stopped_learning_hands_over_at_the_least_fraction():
    joined = _steps(HeadWarmup(0.1, 0.5), [0.3] * 5000, budget_steps=5000)
    assert joined == 500


def test_a_head_still_learning_keeps_the_unet_waiting_until_it_stops():
    losses = [2.0 * 0.999**i for i in range(3000)] + [0.1] * 2000  # falls 20 % per window, then flat
    joined = _steps(HeadWarmup(0.1, 0.9), losses, budget_steps=5000)
    assert 3000 < joined <= 3000 + 3 * WINDOW


def test_the_unet_joins_at_the_latest_fraction_even_if_the_head_still_learns():
    losses = [2.0 * 0.999**i for i in range(5000)]
    assert _steps(HeadWarmup(0.1, 0.5), losses, budget_steps=5000) == 2500


def test_once_joined_the_unet_stays_and_no_warmup_means_joined_from_the_start():
    warmup = HeadWarmup(0.1, 0.5)
    assert not warmup.head_alone(0.6)
    assert not warmup.head_alone(0.0)
    assert not HeadWarmup(0.0).head_alone(0.0)
