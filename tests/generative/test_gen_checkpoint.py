"""Generative checkpoints read back, including files whose safetensors header length is 128 mod 256
(a first byte 0x80, which robustlab.storage.read_safetensors takes for a pickle)."""

from __future__ import annotations

import torch
from safetensors.torch import save as safetensors_bytes

from robustlab.generative.checkpoint import load_network, save_networks, write_safetensors
from robustlab.generative.models import build_network
from robustlab.storage import read_safetensors


def test_files_whose_header_starts_like_a_pickle_still_read_back(tmp_path):
    for n in range(1, 200):
        tensors = {"w" * n: torch.zeros(2)}
        if safetensors_bytes(tensors)[:1] == b"\x80":
            break
    else:  # pragma: no cover - some name length always hits it
        raise AssertionError("no header of length 128 mod 256 found")
    write_safetensors(tmp_path / "t.safetensors", tensors)
    assert torch.equal(read_safetensors(tmp_path / "t.safetensors")["w" * n], torch.zeros(2))


def test_networks_round_trip(tmp_path):
    g = build_network("dcgan-generator", seed=3, latent_dim=4, image_size=8, width=4, num_classes=3, norm="virtual", n_ref=5)
    save_networks(tmp_path, {"generator": g}, "gan", note="x")
    back = load_network(tmp_path, "generator")
    assert back.robustlab_config == g.robustlab_config
    assert all(torch.equal(a, b) for a, b in zip(g.state_dict().values(), back.state_dict().values()))
