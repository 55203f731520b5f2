"""advprop: auxiliary BatchNorms for the adversarial examples; the saved model is the plain one."""

import copy

import pytest
import torch
import torch.nn.functional as F

from helpers.state import assert_same_state, snapshot
from robustlab.models import build_model
from robustlab.runs import RunSpec, train_run
from robustlab.storage import load_model
from robustlab.training import TrainConfig, build_objective, train
from robustlab.training.advprop import AUX, AdvProp, add_auxiliary_bn, dual_batchnorm, main_batchnorms, route


def _bn_model(seed=0, batchnorm=True):
    torch.manual_seed(seed)
    return build_model("small-cnn", 10, 1, input_size=8, channels=(8, 16), hidden=32, batchnorm=batchnorm)


def _stats(bns):
    return [(bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked)) for bn in bns]


def _same(a, b):
    return all(torch.allclose(x[0], y[0], atol=1e-6) and torch.allclose(x[1], y[1], atol=1e-6) and x[2] == y[2]
               for x, y in zip(a, b, strict=True))


def _plain_copy(model, use_twins: bool):
    """A copy of the model without twins whose BatchNorms hold the main (or the twins') state."""
    c = copy.deepcopy(model)
    for bn in main_batchnorms(c):
        twin = bn._modules.pop(AUX)
        if use_twins:
            bn.load_state_dict(twin.state_dict())
    return c


@pytest.fixture()
def batch(digits):
    xtr, ytr, _, _ = digits
    return xtr[:32], ytr[:32]


def test_each_batchnorm_sees_only_its_own_batches(batch):
    x, y = batch
    model = _bn_model().train()
    assert add_auxiliary_bn(model) == 2 and add_auxiliary_bn(model) == 0  # one twin per BatchNorm
    mains = main_batchnorms(model)
    twins = [bn._modules[AUX] for bn in mains]
    # a clean forward pass moves only the main statistics ...
    before_main, before_aux = _stats(mains), _stats(twins)
    model(x)
    assert not _same(_stats(mains), before_main) and _same(_stats(twins), before_aux)
    # ... a routed one only the twins'
    before_main, before_aux = _stats(mains), _stats(twins)
    with route(model):
        model(x)
    assert _same(_stats(mains), before_main) and not _same(_stats(twins), before_aux)
    # The objective's step: main statistics as if only the clean batch went through the model, the
    # twins' as if only the PGD batch went through a model with the twins in place.
    obj = AdvProp(eps=0.1, steps=2)
    torch.manual_seed(5)
    x_adv = obj.craft(model, x, y)
    expect_main, expect_aux = _plain_copy(model, False), _plain_copy(model, True)
    expect_main(x)
    expect_aux(x_adv)
    assert not _same(_stats(main_batchnorms(expect_main)), _stats(main_batchnorms(expect_aux)))
    torch.manual_seed(5)  # the same random start as the craft above
    loss, logs = obj(model, x, y)
    assert _same(_stats(mains), _stats(main_batchnorms(expect_main)))
    assert _same(_stats(twins), _stats(main_batchnorms(expect_aux)))
    # loss = CE(clean through main) + CE(adversarial through the twins), each half with its own batch statistics
    ref = F.cross_entropy(_plain_copy(model, False).train()(x), y) + F.cross_entropy(_plain_copy(model, True).train()(x_adv), y)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for bn in twins for p in bn.parameters())  # the twins are trained too


def test_crafting_leaves_the_model_as_found(batch):
    x, y = batch
    model = _bn_model().train()
    AdvProp().prepare(model)
    before, saved_x = snapshot(model), x.clone()
    AdvProp(eps=0.1, steps=2).craft(model, x, y)
    assert_same_state(model, before)
    assert torch.equal(x, saved_x)


def test_plain_model_after_training_in_python(digits):
    xtr, ytr, xte, _ = digits
    model = _bn_model()
    plain_keys = list(model.state_dict())
    cfg = TrainConfig(epochs=1, batch_size=64, lr=3e-3, progress=False)
    with dual_batchnorm(model):
        assert len(model.state_dict()) > len(plain_keys)
        train(model, build_objective("advprop", eps=0.1, steps=1), (xtr[:256], ytr[:256]), None, cfg)
    assert list(model.state_dict()) == plain_keys
    assert not any(AUX in m._modules for m in model.modules())
    model.eval()
    reloaded = _bn_model(seed=1).eval()
    reloaded.load_state_dict(model.state_dict())  # strict: the plain architecture
    assert torch.equal(reloaded(xte[:8]), model(xte[:8]))


def test_run_saves_the_plain_model(tmp_path):
    spec = RunSpec(dataset="digits", train_limit=256, test_limit=64, model="small-cnn",
                   model_options={"channels": [8, 16], "hidden": 32, "batchnorm": True},
                   defense="advprop", defense_options={"eps": 0.1, "steps": 1}, monitor=None)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=3e-3, progress=False)
    metrics = train_run(spec, tmp_path / "run", cfg, device="cpu")
    loaded = load_model(tmp_path / "run")  # strict load into the registered plain architecture
    plain = build_model("small-cnn", 10, 1, input_size=8, channels=(8, 16), hidden=32, batchnorm=True)
    assert list(loaded.state_dict()) == list(plain.state_dict())
    assert loaded.robustlab_metadata["objective"]["name"] == "advprop"
    from robustlab.runs import load_run_data
    from robustlab.training import accuracy

    x, y, _ = load_run_data(tmp_path / "run")
    assert accuracy(loaded, x, y) == pytest.approx(metrics["clean_accuracy"])


def test_a_model_without_batchnorm_is_refused(batch):
    x, y = batch
    obj = build_objective("advprop")
    with pytest.raises(ValueError, match="--batchnorm"):
        obj.prepare(_bn_model(batchnorm=False))
    with pytest.raises(ValueError, match="no auxiliary BatchNorms"):
        obj(_bn_model(), x, y)  # twins not added before the optimiser was built


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """The twins are part of the training state, so --resume continues them exactly."""
    import robustlab.runs.train as runs_train

    def spec():
        return RunSpec(dataset="digits", train_limit=256, test_limit=64, model="small-cnn",
                       model_options={"channels": [8, 16], "hidden": 32, "batchnorm": True}, defense="advprop",
                       defense_options={"eps": 0.1, "steps": 1}, monitor={"attack": "fgsm", "eps": 0.1, "norm": "linf"})

    cfg = TrainConfig(epochs=3, batch_size=64, lr=3e-3, progress=False)
    train_run(spec(), tmp_path / "full", cfg, device="cpu")

    class Killed(Exception):
        pass

    real = runs_train.build_monitor

    def dying_monitor(s):
        attack, calls = real(s), []

        def call(model, x, y):
            calls.append(1)
            if len(calls) == 2:  # the monitor of epoch 2: epoch 1 is saved, epoch 2 is lost
                raise Killed
            return attack(model, x, y)
        return call

    monkeypatch.setattr(runs_train, "build_monitor", dying_monitor)
    with pytest.raises(Killed):
        train_run(spec(), tmp_path / "part", cfg, device="cpu")
    monkeypatch.setattr(runs_train, "build_monitor", real)
    train_run(spec(), tmp_path / "part", cfg, device="cpu", resume=True)
    full, part = load_model(tmp_path / "full").state_dict(), load_model(tmp_path / "part").state_dict()
    assert list(full) == list(part) and all(torch.equal(full[k], part[k]) for k in full)
