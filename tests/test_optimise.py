"""optimise(): scheduled learning rates and loss weights, NaN guard, gradient clipping, resume
after a kill (also for a representation that gsplat's densification resizes)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from engine_toy import run_one_stage

from layerforge.errors import NonFiniteError
from layerforge.models.gaussians import GaussianModel, GsplatPolicy
from layerforge.models.optimisation import ParamGroup
from layerforge.pipelines.optimise import OptimiseConfig, Optimiser, optimise

sys.path.insert(0, str(Path(__file__).parent))


class Killed(Exception):
    """Stands for a kill in the middle of the loop (pytest reserves KeyboardInterrupt for itself)."""

# y = A x + b with a known A, b: least squares has one exact answer to converge to
A_TRUE = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
B_TRUE = torch.tensor([0.3, -0.7])


class Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.A = torch.nn.Parameter(torch.zeros(2, 2))
        self.b = torch.nn.Parameter(torch.zeros(2))


class Regression:
    """Loss term: mean squared error of y = A x + b on the batch."""

    def __init__(self, name: str = "mse", weight=1.0, calls: list[int] | None = None, nan_at: int | None = None) -> None:
        self.name, self.weight, self.calls, self.nan_at = name, weight, calls, nan_at

    def __call__(self, rep, batch, step, info):
        if self.calls is not None:
            self.calls.append(step)
        x = batch
        y = x @ A_TRUE.T + B_TRUE
        loss = ((x @ rep.A.T + rep.b - y) ** 2).mean()
        info["log"]["err_A"] = float((rep.A.detach() - A_TRUE).abs().max())
        return loss * float("nan") if step == self.nan_at else loss


class RandomX:
    def __init__(self, interrupt_at: list[int] | None = None) -> None:
        self.interrupt_at = interrupt_at  # popped when it fires: the resumed run is not killed again

    def sample(self, step, generator):
        if self.interrupt_at and step == self.interrupt_at[0]:
            self.interrupt_at.pop()
            raise Killed  # a kill in the middle of the loop
        return torch.randn(16, 2, generator=generator)


def _ctx_run(tmp_path: Path, name: str, work) -> None:
    """Run ``work(ctx)`` as the one stage of a pipeline in run folder ``name``."""
    run_one_stage(work, tmp_path / name)


def test_converges_with_scheduled_lr_per_group(tmp_path):
    rep = Linear()
    seen: dict[str, list[float]] = {"A": [], "b": []}

    class Probe:
        def state_dict(self):
            return {}

        def load_state_dict(self, s):
            pass

        def step_pre_backward(self, step, r, optimizers, info):
            seen["A"].append(optimizers["A"].param_groups[0]["lr"])
            seen["b"].append(optimizers["b"].param_groups[0]["lr"])

        def step_post_backward(self, step, r, optimizers, info):
            pass

    def work(ctx):
        groups = [ParamGroup("A", [rep.A], [0, 0.1, 0.01, 300]), ParamGroup("b", [rep.b], 0.05)]
        figures = optimise(ctx, rep, groups, [Regression()], RandomX(), OptimiseConfig(steps=400, checkpoint_every=100),
                           policy=Probe())
        assert figures["err_A"] < 1e-3 and figures["total"] < 1e-6

    _ctx_run(tmp_path, "r", work)
    assert torch.allclose(rep.A, A_TRUE, atol=1e-3) and torch.allclose(rep.b, B_TRUE, atol=1e-3)
    assert seen["A"][0] == pytest.approx(0.1) and seen["A"][150] == pytest.approx(0.055) and seen["A"][399] == pytest.approx(0.01)
    assert set(seen["b"]) == {0.05}


def test_term_switched_on_at_step_n_is_not_evaluated_before(tmp_path):
    calls: list[int] = []

    def work(ctx):
        rep = Linear()
        terms = [Regression(), Regression("late", weight=[30, 0.0, 1.0, 30], calls=calls)]
        optimise(ctx, rep, [ParamGroup("all", list(rep.parameters()), 0.01)], terms, RandomX(),
                 OptimiseConfig(steps=50, checkpoint_every=50))

    _ctx_run(tmp_path, "r", work)
    assert calls == list(range(30, 50))


def test_non_finite_loss_names_the_term(tmp_path):
    def work(ctx):
        rep = Linear()
        optimise(ctx, rep, [ParamGroup("all", list(rep.parameters()), 0.01)], [Regression("fit", nan_at=7)], RandomX(),
                 OptimiseConfig(steps=20, checkpoint_every=5))

    with pytest.raises(NonFiniteError) as err:
        _ctx_run(tmp_path, "r", work)
    assert "loss fit became nan at step 8" in str(err.value) and "\n" not in str(err.value)


def test_gradient_norm_is_clipped(tmp_path):
    norms: list[float] = []

    class Watch:
        def state_dict(self):
            return {}

        def load_state_dict(self, s):
            pass

        def step_pre_backward(self, *a):
            pass

        def step_post_backward(self, step, rep, optimizers, info):
            norms.append(float(torch.sqrt(sum((p.grad ** 2).sum() for p in rep.parameters()))))

    def work(ctx):
        rep = Linear()
        optimise(ctx, rep, [ParamGroup("all", list(rep.parameters()), 1e-4)], [Regression()], RandomX(),
                 OptimiseConfig(steps=10, checkpoint_every=10, grad_clip=0.5), policy=Watch())

    _ctx_run(tmp_path, "r", work)
    assert max(norms) <= 0.5 + 1e-6 and min(norms) > 0.49  # the raw gradient at A = 0 is far above 0.5


def _two_runs(tmp_path: Path, interrupt_at: int | None, name: str) -> Linear:
    rep = Linear()
    kill = [] if interrupt_at is None else [interrupt_at]

    def work(ctx):
        opt = Optimiser(rep, [ParamGroup("A", [rep.A], 0.05), ParamGroup("b", [rep.b], [0, 0.05, 0.0, 60])], ctx.seed)
        opt.run(ctx, [Regression()], RandomX(kill), OptimiseConfig(steps=40, checkpoint_every=10),
                subfolder="first")
        opt.run(ctx, [Regression()], RandomX(), OptimiseConfig(steps=30, checkpoint_every=10, start_step=40),
                subfolder="second")

    try:
        _ctx_run(tmp_path, name, work)
    except Killed:
        _ctx_run(tmp_path, name, work)  # resume the interrupted run in place
    return rep


def test_kill_mid_optimise_resumes_to_the_same_result(tmp_path):
    clean = _two_runs(tmp_path, None, "clean")
    resumed = _two_runs(tmp_path, 27, "killed")  # killed at step 27, after the checkpoint at 20
    assert torch.equal(clean.A, resumed.A) and torch.equal(clean.b, resumed.b)


# ---------------------------------------------------------------- gsplat densification, resized on resume


class SplatTerm:
    """Pulls the Gaussians' colours and centres to targets and fills the info gsplat's strategy reads.

    ``means2d`` is an orthographic projection (x, y) of the centres with its gradient retained;
    it stands in for the rasterizer's screen-space means, which gsplat's DefaultStrategy
    accumulates to decide which Gaussians to split or duplicate.
    """

    name, weight = "splat", 1.0

    def __init__(self, interrupt_at: list[int]) -> None:
        self.interrupt_at = interrupt_at

    def __call__(self, rep, batch, step, info):
        if self.interrupt_at and step == self.interrupt_at[0]:
            self.interrupt_at.pop()
            raise Killed
        g = rep.activated()
        means2d = g["means"][None, :, :2] * 1.0
        info["gsplat"] = {"means2d": means2d, "radii": torch.full((1, len(rep)), 4.0), "width": 64, "height": 64,
                          "gaussian_ids": None,
                          "n_cameras": 1}
        target = torch.tensor([0.2, 0.6, 0.9])
        colour = ((g["sh_coeffs"][:, 0] * GaussianModel.SH_C0 + 0.5 - target) ** 2).mean()
        return colour + (means2d ** 2).mean() + (g["means"][:, 2] ** 2).mean()


class Once:
    def sample(self, step, generator):
        return None


def _splats(tmp_path: Path, name: str, interrupt_at: int | None) -> GaussianModel:
    from gsplat.strategy import DefaultStrategy

    torch.manual_seed(0)
    rep = GaussianModel(torch.randn(20, 3), torch.full((20, 3), 0.05), torch.rand(20, 3), torch.full((20,), 0.5))
    kill = [] if interrupt_at is None else [interrupt_at]
    lr = {"means": 1.6e-4, "scales": 5e-3, "quats": 1e-3, "opacities": 0.05, "sh0": 2.5e-3, "shN": 2.5e-3 / 20}

    def work(ctx):
        strategy = DefaultStrategy(refine_start_iter=5, refine_every=5, grow_grad2d=1e-9, reset_every=1000,
                                   refine_stop_iter=25, verbose=False)
        policy = GsplatPolicy(strategy)
        optimise(ctx, rep, rep.param_groups(lr), [SplatTerm(kill)], Once(),
                 OptimiseConfig(steps=30, checkpoint_every=4), policy=policy)

    try:
        _ctx_run(tmp_path, name, work)
    except Killed:
        _ctx_run(tmp_path, name, work)
    return rep


def test_densified_gaussians_checkpoint_and_resume(tmp_path):
    clean = _splats(tmp_path, "clean", None)
    assert len(clean) > 20  # gsplat's strategy grew the set
    resumed = _splats(tmp_path, "killed", 18)  # after two refinements, checkpoint at 16 has the grown set
    assert len(resumed) == len(clean)
    for name in clean.params:
        assert torch.equal(clean.params[name], resumed.params[name]), name
