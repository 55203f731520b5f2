"""Launched by torchrun from tests/test_distributed.py: adversarial training (pgd-at) on digits
with DDP (BatchNorm buffers broadcast from rank 0); each rank writes its final weights and its loss history so the test
can check that every rank ends identical and that the loss went down."""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from robustlab.data import load_dataset
from robustlab.distributed import dist_info, init_from_env, shutdown, unwrap, wrap
from robustlab.models import build_model
from robustlab.training import TrainConfig, build_objective, train

out = Path(sys.argv[1])
dev = init_from_env(torch.device("cpu"))
rank, world = dist_info()
xtr, ytr, _ = load_dataset("digits", "train")
xte, yte, _ = load_dataset("digits", "test")
torch.manual_seed(0)
model = build_model("small-cnn", 10, 1, input_size=8, channels=(8, 16), hidden=32, batchnorm=True)
model = wrap(model, dev)
cfg = TrainConfig(epochs=3, batch_size=64, lr=3e-3, seed=0, progress=False)
res = train(model, build_objective("pgd-at", eps=0.1, steps=3), (xtr, ytr), (xte, yte), cfg, run_dir=out / "run")
save_file({k: v.contiguous() for k, v in unwrap(model).state_dict().items()}, str(out / f"rank{rank}.safetensors"))
(out / f"rank{rank}.json").write_text(json.dumps({"world": world, "history": res.history}))
shutdown()
