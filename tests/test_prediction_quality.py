"""Issue 11: wide path, balanced softmax, best-checkpoint restore and the calibration split."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

import scanpy_kdcpt as kdcpt
from scanpy_kdcpt import KDCPTModule
from scanpy_kdcpt._constants import REGISTRY_KEYS
from scanpy_kdcpt.module._components import PredictionBranch, WidePath

SMALL = {"n_tokens": 32, "n_selected": 8, "d_model": 16, "n_hidden": 32, "n_pcs": 10}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _linear_data(n=600, n_genes=50, seed=0):
    """Two classes separated only along one gene: invisible to a 1-PC bottleneck of the rest."""
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 1.0, size=(n, n_genes)).astype(np.float32)
    y = rng.integers(0, 2, n)
    x[:, 7] = np.where(y == 1, 1.0, 0.0) + 0.1 * rng.random(n)  # weak, clean signal on gene 7
    return torch.as_tensor(x), torch.as_tensor(y)


def test_wide_path_alone_fits_linear_signal():
    torch.manual_seed(0)
    x, y = _linear_data()
    wide = WidePath(x.shape[1], 2)
    bias = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([*wide.parameters(), bias], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(wide(x) + bias, y)
        loss.backward()
        opt.step()
    acc = ((wide(x) + bias).argmax(1) == y).float().mean().item()
    assert acc > 0.97
    # the signal is carried by gene 7
    w = wide.weight.detach()
    assert (w[1, 7] - w[0, 7]).abs() == (w[1] - w[0]).abs().max()


def test_prediction_branch_wide_beats_bottleneck():
    """With a useless embedding, only the wide path can learn the signal."""
    torch.manual_seed(0)
    x, y = _linear_data()
    emb = torch.randn(x.shape[0], 4)  # carries no information about y
    accs = {}
    for use_wide in (True, False):
        torch.manual_seed(0)
        branch = PredictionBranch(4, 16, 2, 4, 8, 0.0, n_genes=x.shape[1] if use_wide else None)
        opt = torch.optim.Adam(branch.parameters(), lr=0.02)
        for _ in range(200):
            opt.zero_grad()
            logits, _ = branch(emb, x)
            torch.nn.functional.cross_entropy(logits, y).backward()
            opt.step()
        xt, yt = _linear_data(seed=1)
        logits, _ = branch(torch.randn(xt.shape[0], 4), xt)
        accs[use_wide] = (logits.argmax(1) == yt).float().mean().item()
    assert accs[True] > 0.95
    assert accs[False] < 0.7


def test_knockout_reaches_wide_path():
    """Zeroing a gene in the module's input x changes the logits through the wide path."""
    torch.manual_seed(0)
    m = KDCPTModule(20, 3, 4, n_tokens=8, n_selected=4, d_model=16, n_hidden=16, use_cell_learner=False)
    m.eval()
    assert not m.is_counts  # x is log-normalised already: the wide path reads it as given
    with torch.no_grad():
        m.prediction.wide.weight.zero_()
        m.prediction.wide.weight[:, 5] = torch.tensor([3.0, -3.0, 0.0])
    x = torch.rand(6, 20) + 0.5
    x[:, 5] = 2.0
    x_ko = x.clone()
    x_ko[:, 5] = 0.0
    with torch.no_grad():
        base = m.inference(x)
        ko = m.inference(x_ko)
    # the deep part reads the PCA embedding, whose loadings are zero in a module not fitted
    # to data: it is the same for both inputs, so the change is the wide path's alone,
    # weight[:, 5] * (2 - 0) = (6, -6, 0): class 0 vs class 1 moves by 12 logits in every cell
    diff_p = base["logits_p"] - ko["logits_p"]
    torch.testing.assert_close(diff_p, torch.tensor([[6.0, -6.0, 0.0]]).expand(6, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(diff_p[:, 0] - diff_p[:, 1], torch.full((6,), 12.0), atol=1e-5, rtol=0)
    assert not torch.allclose(base["logits"], ko["logits"])


@pytest.mark.parametrize(("use_cell_learner", "use_cffm"), [(True, True), (False, False), (True, False)])
def test_ablation_switches_with_wide(use_cell_learner, use_cffm):
    m = KDCPTModule(
        30,
        4,
        5,
        n_tokens=16,
        n_selected=4,
        d_model=16,
        n_hidden=16,
        use_cell_learner=use_cell_learner,
        use_cffm=use_cffm,
    )
    out = m.inference(torch.rand(3, 30))
    assert out["logits"].shape == (3, 4)
    tensors = {REGISTRY_KEYS.X_KEY: torch.rand(3, 30), REGISTRY_KEYS.LABELS_KEY: torch.tensor([[0.0], [1.0], [3.0]])}
    loss = m.loss(tensors, m.inference(tensors[REGISTRY_KEYS.X_KEY]), {}).loss
    loss.backward()
    assert m.prediction.wide.weight.grad is not None and m.prediction.wide.weight.grad.abs().sum() > 0


def test_balanced_softmax_shifts_training_logits_only():
    torch.manual_seed(0)
    m = KDCPTModule(10, 2, 3, n_tokens=8, n_selected=4, d_model=8, n_hidden=8, balanced_softmax=True, wide_l2=0.0)
    m.eval()
    m.log_prior.copy_(torch.log(torch.tensor([0.9, 0.1])))
    x = torch.rand(4, 10)
    y = torch.tensor([[1.0], [1.0], [0.0], [1.0]])
    tensors = {REGISTRY_KEYS.X_KEY: x, REGISTRY_KEYS.LABELS_KEY: y}
    inf = m.inference(x)
    got = m.loss(tensors, inf, {}).classification_loss
    want = torch.nn.functional.cross_entropy(inf["logits"] + m.log_prior, y.long().view(-1))
    assert torch.allclose(got, want)
    m.balanced_softmax = False
    plain = m.loss(tensors, inf, {}).classification_loss
    assert not torch.allclose(plain, got)


class _SpoilAfter(pl.Callback):
    """From epoch ``epoch`` on, add large noise to the weights after each training batch, so
    that the validation loss of later epochs is worse than the best (an epoch before it)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_batch_end(self, trainer, pl_module, *args, **kwargs):
        if trainer.current_epoch >= self.epoch:
            gen = torch.Generator().manual_seed(trainer.current_epoch)
            with torch.no_grad():
                for p in pl_module.module.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * 0.5)


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    adata = kdcpt.datasets.synthetic(n_cells=400, seed=0)
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype")
    # the network alone: these tests are about its SGD (checkpoints, splits); with the first stage,
    # validation cells that choose mix = 0 refit it after the best checkpoint is restored
    model = kdcpt.KDCPT(adata, **SMALL, dropout=0.0, linear_stage=False)
    model.train(
        max_epochs=10, early_stopping=False, batch_size=512, enable_progress_bar=False, callbacks=[_SpoilAfter(6)]
    )
    return model


def test_calibration_indices_disjoint(trained):
    tr, va, ca = (
        np.asarray(a) for a in (trained.train_indices, trained.validation_indices, trained.calibration_indices_)
    )
    assert ca.dtype.kind == "i" and len(ca) > 0 and len(va) > 0
    assert not set(tr) & set(ca)
    assert not set(va) & set(ca)
    assert not set(tr) & set(va)
    assert abs(len(ca) - 40) <= 2 and abs(len(va) - 40) <= 2


def _validation_loss(model) -> float:
    idx = np.asarray(model.validation_indices)
    dl = model._make_data_loader(adata=model.adata, indices=idx, batch_size=len(idx), shuffle=False)
    model.module.eval()
    with torch.no_grad():
        tensors = next(iter(dl))
        _, _, loss = model.module(tensors)
    return float(loss.loss)


def test_best_checkpoint_restored(trained):
    hist = trained.history["validation_loss"].to_numpy().ravel().astype(float)
    best = int(np.argmin(hist))
    assert trained.best_epoch_ == best
    assert best < 6 <= len(hist) - 1, "the test needs a run whose last epoch is not its best"
    assert _validation_loss(trained) == pytest.approx(hist[best], rel=1e-4)
    assert abs(_validation_loss(trained) - hist[-1]) > 1e-3


def test_train_sizes():
    split = kdcpt.KDCPT._split_sizes
    assert split(None, None, 0.1) == pytest.approx((0.8, 0.1, 0.1))
    assert split(1.0, None, 0.1) == pytest.approx((1.0, 0.0, 0.0))
    assert split(0.9, None, 0.1) == pytest.approx((0.9, 0.05, 0.05))
    assert split(None, 0.2, 0.0) == pytest.approx((0.8, 0.2, 0.0))
    with pytest.raises(ValueError):
        split(0.9, 0.2, 0.1)
    # train and validation given: calibration takes the rest; a calibration_size given must be it
    assert split(0.8, 0.2, None) == pytest.approx((0.8, 0.2, 0.0))
    assert split(0.5, 0.2, 0.3) == pytest.approx((0.5, 0.2, 0.3))
    with pytest.raises(ValueError, match="sum to 1.1, not 1"):
        split(0.8, 0.2, 0.1)  # was accepted, with no calibration cells
    with pytest.raises(ValueError, match="sum to 0.75, not 1"):
        split(0.5, 0.2, 0.05)  # was accepted, with 0.3 of the cells for calibration
    assert split(None, None, None) == pytest.approx((0.8, 0.1, 0.1))


def test_wide_lr_param_group(trained):
    """``wide_lr`` puts exactly the wide path's weights into their own group, without weight decay."""
    from scanpy_kdcpt.module._trainingplan import KDCPTTrainingPlan

    module = trained.module
    n_classes = len(trained.classes_)
    default = KDCPTTrainingPlan(module, n_classes=n_classes, lr=1e-3).configure_optimizers()["optimizer"]
    assert len(default.param_groups) == 1
    opt = KDCPTTrainingPlan(module, n_classes=n_classes, lr=1e-3, wide_lr=0.05).configure_optimizers()["optimizer"]
    assert len(opt.param_groups) == 2
    rest, wide = opt.param_groups
    assert [id(p) for p in wide["params"]] == [id(p) for p in module.prediction.wide.parameters()]
    assert wide["lr"] == 0.05 and wide["weight_decay"] == 0.0
    assert rest["lr"] == 1e-3 and rest["weight_decay"] == 1e-4
    n_trainable = sum(1 for p in module.parameters() if p.requires_grad)
    assert len(rest["params"]) + len(wide["params"]) == n_trainable
    # scvi-tools' scheduler is built over the same two groups
    plan = KDCPTTrainingPlan(module, n_classes=n_classes, wide_lr=0.05, reduce_lr_on_plateau=True)
    config = plan.configure_optimizers()
    assert len(config["optimizer"].param_groups) == 2
    assert config["lr_scheduler"]["scheduler"].optimizer is config["optimizer"]
    with pytest.raises(ValueError, match="wide_lr"):
        KDCPTTrainingPlan(module, n_classes=n_classes, wide_lr=0.0)


def test_wide_lr_bad_input():
    adata = kdcpt.datasets.synthetic(n_cells=200, seed=1)
    kdcpt.KDCPT.setup_anndata(adata, labels_key="phenotype")
    model = kdcpt.KDCPT(adata, **SMALL)
    with pytest.raises(ValueError, match="wide_lr must be a positive"):
        model.train(max_epochs=1, wide_lr=-1e-2, enable_progress_bar=False)
    assert not model.is_trained  # refused before any training
    no_wide = kdcpt.KDCPT(adata, **SMALL, use_wide=False)
    with pytest.warns(UserWarning, match="no wide path"):
        no_wide.train(max_epochs=1, wide_lr=1e-2, enable_progress_bar=False)
    assert no_wide.is_trained
