"""When the training loop evaluates: RunConfig.evaluates_at, the one rule Trainer.fit follows."""
import pytest

from lifecycle.runs.config import DEFAULT_EVALUATIONS, RunConfig


def evaluation_steps(config, steps_per_epoch, total_steps):
    return [s for s in range(1, total_steps + 1) if config.evaluates_at(s, steps_per_epoch, total_steps)]


@pytest.mark.parametrize("steps_per_epoch, epochs", [(37, 3), (400, 3), (5, 3), (1, 4), (40, 2.5)])
def test_the_default_config_evaluates_at_the_end_of_each_epoch(steps_per_epoch, epochs):
    config = RunConfig(epochs=epochs)
    assert config.eval_every == 0  # the form's and the API's default
    total = round(epochs * steps_per_epoch)
    steps = evaluation_steps(config, steps_per_epoch, total)
    epoch_ends = [e * steps_per_epoch for e in range(1, int(epochs) + 1)]
    assert set(epoch_ends) <= set(steps)
    assert steps[-1] == total
    # About DEFAULT_EVALUATIONS in all (the spacing is rounded up), plus the epoch ends.
    assert min(total, DEFAULT_EVALUATIONS) - 1 <= len(steps) <= DEFAULT_EVALUATIONS + len(epoch_ends) + 1


def test_a_run_shorter_than_an_epoch_still_draws_a_validation_curve():
    # max_steps 151 on a big training split: the epoch never ends before the run does.
    steps = evaluation_steps(RunConfig(max_steps=151), steps_per_epoch=2000, total_steps=151)
    assert len(steps) >= DEFAULT_EVALUATIONS and steps[-1] == 151
    assert steps[0] <= 151 // DEFAULT_EVALUATIONS + 1


def test_an_explicit_interval_is_kept_and_the_last_step_always_evaluates():
    assert evaluation_steps(RunConfig(eval_every=30), steps_per_epoch=40, total_steps=100) == [30, 60, 90, 100]
