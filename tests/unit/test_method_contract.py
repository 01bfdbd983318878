"""The Method contract, checked on every registered method (components/models/base.py,
docs/architecture.md "The Method interface"): it builds from its Config and the Config names a
bad key; a training step gives finite losses and trains every trainable network; restore gives
what its task (components/tasks) says, or NotARestorer for a task that takes no image; export
reloads to identical outputs; a checkpoint resumes training exactly; two DDP ranks train it.

Parametrised over the registry itself, so a newly registered method is checked without an
edit here: it needs an entry in method_checks.TINY_CONFIGS (and TINY_UPSTREAM / TINY_FACES
where it builds on an earlier stage or reads other faces). A method's own test file keeps only
its maths: its losses, its paper's shapes and parameter counts, its knobs, its short CPU run.
"""

import math

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from components.models import METHODS, build_method, load_method, method_class
from components.models.base import Method, NotARestorer
from components.tasks import task_named, task_of
from components.training import checkpoint
from tests.unit.method_checks import (TINY_CONFIGS, assert_training_step_finite_under_bf16, method_batch,
                                      run_ddp_steps_of_each, save_upstream)

NAMES = sorted(METHODS)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """name -> the tiny upstream model directories method `name` builds on, saved once per module."""
    saved: dict[str, dict[str, str]] = {}

    def of(name: str) -> dict[str, str]:
        if name not in saved:
            saved[name] = save_upstream(name, lambda stage: tmp_path_factory.mktemp(f"{name}-{stage}"))
        return saved[name]

    return of


def build(name, upstream, seed=0):
    torch.manual_seed(seed)
    return build_method(name, TINY_CONFIGS[name], upstream(name))


def trainable(net: nn.Module) -> dict[str, torch.Tensor]:
    return {key: p for key, p in net.named_parameters() if p.requires_grad}


def test_every_registered_method_has_a_tiny_config():
    assert sorted(TINY_CONFIGS) == NAMES


# -- build and config ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_builds_from_its_config_with_networks_and_optimisers_the_training_loop_can_use(name, upstream):
    method = build(name, upstream)
    cls = method_class(name)
    assert isinstance(method, cls) and isinstance(method, Method) and method.name == name
    assert task_named(method.task) is task_named(cls.task_for(method.cfg))
    # export and load_exported rebuild from the JSON dump of the config
    assert cls.Config.model_validate(method.cfg.model_dump(mode="json")) == method.cfg
    nets = method.networks()
    assert nets and all(isinstance(net, nn.Module) for net in nets.values())
    assert all(net.training for net in nets.values() if trainable(net)), "a trainable network built in eval mode"
    # every trainable parameter is stepped by exactly one optimiser, and an optimiser steps nothing else
    trained = {id(p): f"{net_name}.{key}" for net_name, net in nets.items() for key, p in trainable(net).items()}
    stepped = [id(p) for opt in method.optimizers().values() for group in opt.param_groups for p in group["params"]]
    assert sorted(stepped) == sorted(trained), "parameters not stepped by one optimiser: " + ", ".join(
        sorted(trained[i] for i in set(trained) - set(stepped))[:5])


@pytest.mark.parametrize("name", NAMES)
def test_the_config_refuses_an_unknown_key_and_an_impossible_value_naming_the_key(name):
    with pytest.raises(ValidationError, match=r"(?m)^no_such_setting$"):
        build_method(name, {**TINY_CONFIGS[name], "no_such_setting": 1})
    with pytest.raises(ValidationError, match=r"(?m)^lr$"):
        build_method(name, {**TINY_CONFIGS[name], "lr": 0.0})


# -- training ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_a_training_step_gives_finite_losses_and_trains_every_trainable_network(name, upstream):
    method = build(name, upstream)
    batch = method_batch(name)
    nets = method.networks()
    before = {net_name: {key: p.detach().clone() for key, p in trainable(net).items()} for net_name, net in nets.items()}
    losses = method.training_step(dict(batch), 1)
    assert losses and all(isinstance(v, float) and math.isfinite(v) for v in losses.values()), losses
    unchanged = [net_name for net_name, net in nets.items() if before[net_name]
                 and all(torch.equal(p, before[net_name][key]) for key, p in trainable(net).items())]
    assert not unchanged, f"a training step left {unchanged} unchanged"
    # From the second step on (a zero-initialised head passes no gradient back on the first) every
    # trainable parameter has a gradient: one without would stall DDP's reduction.
    method.training_step(dict(batch), 2)
    silent = [f"{net_name}.{key}" for net_name, net in nets.items() for key, p in trainable(net).items() if p.grad is None]
    assert not silent, f"no gradient after the second step: {silent[:5]}"


@pytest.mark.parametrize("name", NAMES)
def test_a_training_step_under_bf16_autocast_gives_finite_losses(name, upstream):
    assert_training_step_finite_under_bf16(build(name, upstream), method_batch(name))


@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_resumes_training_exactly(name, upstream, tmp_path):
    """What the training loop saves (networks, optimisers, step, RNG) is all a method's state:
    the step after a resume gives the losses and weights of the step without one."""
    method = build(name, upstream)
    batch = method_batch(name)
    method.training_step(dict(batch), 1)
    checkpoint.save(checkpoint.capture(method, 1, {}), tmp_path)
    expected = method.training_step(dict(batch), 2)
    resumed = build(name, upstream, seed=1)
    assert checkpoint.apply(resumed, checkpoint.load(tmp_path)) == 1
    assert resumed.training_step(dict(batch), 2) == expected
    for net_name, net in method.networks().items():
        theirs = resumed.networks()[net_name].state_dict()
        assert all(torch.equal(value, theirs[key]) for key, value in net.state_dict().items()), net_name


# -- restore and export --------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_restore_returns_what_its_task_says_or_refuses_a_task_that_takes_no_image(name, upstream):
    method = build(name, upstream)
    batch = method_batch(name)
    task = task_of(method)
    if task.image_input is None:
        with pytest.raises(NotARestorer, match=f"method '{name}'.*task '{task.name}'"):
            method.restore(dict(batch))
        return
    for step in (1, 2):  # past the zero-initialised heads: the output is the network's, not its input
        method.training_step(dict(batch), step)
    given = task.scoring.method_batch(batch)  # what the evaluate stage feeds a method of this task
    modes = {net_name: net.training for net_name, net in method.networks().items()}
    out = method.restore(dict(given))
    assert out.shape == task.scoring.target(batch).shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1 and not out.requires_grad
    assert {net_name: net.training for net_name, net in method.networks().items()} == modes
    if task.keeps_known:
        photo, holes = given[task.image_input], given["mask"].bool().expand_as(out)
        assert torch.equal(out[~holes], photo[~holes])
        # the photo here is the clean face: a method reading what lies under its holes would copy it
        assert not torch.equal(out[holes], photo[holes])


@pytest.mark.parametrize("name", NAMES)
def test_export_then_load_method_gives_identical_outputs(name, upstream):
    method = build(name, upstream)
    batch = method_batch(name)
    method.training_step(dict(batch), 1)  # moves BatchNorm statistics, EMA copies and queues off their init
    state, config = method.export()
    assert config["method"] == name and config["task"] == method.task
    assert {key.partition(".")[0] for key in state} == {n for n, net in method.networks().items() if net.state_dict()}
    loaded = load_method(load_safetensors(save_safetensors(state)), config)
    assert type(loaded) is type(method) and loaded.upstream == {}  # the export alone rebuilds it
    assert not any(net.training for net in loaded.networks().values())
    again, _ = loaded.export()
    assert again.keys() == state.keys() and all(torch.equal(again[key], value) for key, value in state.items())
    task = task_of(method)
    if task.image_input is not None:
        given = task.scoring.method_batch(batch)
        torch.manual_seed(0)
        expected = method.restore(dict(given))
        torch.manual_seed(0)
        assert torch.equal(loaded.restore(dict(given)), expected)
    elif method.samples() is not None:
        assert torch.equal(loaded.samples(), method.samples())


# -- DDP -----------------------------------------------------------------------------------------
def test_every_method_trains_on_two_gloo_ranks(upstream):
    """Three steps of every method on 2 DDP processes, networks wrapped as the training loop wraps
    them, one pair of processes for all. Catches what only DDP breaks: in-place buffer updates
    between forwards, a trainable parameter that gets no gradient. (A method file checks what its
    own maths adds under DDP: StyleGAN2's two regularisers, the PatchGAN's two forwards per backward.)"""
    cases = {name: (TINY_CONFIGS[name], method_batch(name, n=2), upstream(name)) for name in NAMES}
    results = run_ddp_steps_of_each(cases, steps=3)
    failed = {name: result for name, result in results.items()
              if isinstance(result, str) or len(result) != 3
              or not all(math.isfinite(v) for losses in result for v in losses.values())}
    assert sorted(results) == NAMES and not failed, failed
