"""nsl-graph: CE + alpha * mean neighbour distance of the embeddings (Neural Structured Learning)."""

import pytest
import torch
import torch.nn.functional as F

from robustlab.models import build_model
from robustlab.training import OBJECTIVES, TrainConfig, build_objective, train
from robustlab.training.nsl_graph import NSLGraph, graph_loss, knn_pairs, label_pairs, pair_distance


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits are a given table (one row per input sample, in order)."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.as_tensor(table, dtype=torch.float32))

    def forward(self, x):
        return self.table[: len(x)]


def _tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return build_model("small-cnn", 10, 1, input_size=8, channels=(8, 16), hidden=32)


def test_registered_and_options_are_checked():
    assert OBJECTIVES["nsl-graph"] is NSLGraph
    assert build_objective("nsl-graph", alpha=0.5, distance="cosine").config() == {
        "name": "nsl-graph", "alpha": 0.5, "distance": "cosine", "neighbours": "label", "k": 3,
        "embedding": "logits", "knn_space": "pixel"}
    for bad, match in [({"distance": "l3"}, "distance must be one of l2, l1, cosine"),
                       ({"neighbours": "graph"}, "neighbours must be one of label, knn"),
                       ({"embedding": "conv1"}, "embedding must be one of logits, penultimate"),
                       ({"alpha": -1}, "alpha must be >= 0"), ({"k": 0}, "k must be an integer >= 1"),
                       ({"eps": 0.1}, "unknown option.*eps")]:
        with pytest.raises(ValueError, match=match):
            build_objective("nsl-graph", **bad)


def test_graph_loss_is_a_hand_computed_mean_over_label_pairs():
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [2.0, 2.0]])
    y = torch.tensor([0, 0, 1, 1])
    i, j = label_pairs(y)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 1), (2, 3)]
    # pair (0,1): squared L2 1 + 4 = 5, L1 1 + 2 = 3, cosine 1 - 0 = 1; pair (2,3): 2, 2, 1 - 1 = 0
    assert graph_loss(h, i, j, "l2").item() == pytest.approx(3.5)
    assert graph_loss(h, i, j, "l1").item() == pytest.approx(2.5)
    assert graph_loss(h, i, j, "cosine").item() == pytest.approx(0.5, abs=1e-6)
    # the objective: CE on the logits plus alpha times that mean
    model = FixedLogits(h)
    loss, logs = NSLGraph(alpha=0.3, distance="l2")(model, torch.zeros(4, 1, 8, 8), y)
    assert loss.item() == pytest.approx(F.cross_entropy(h, y).item() + 0.3 * 3.5, abs=1e-6)
    assert logs["pairs"] == 2.0 and logs["graph"].item() == pytest.approx(3.5)


def test_knn_pairs_by_hand_on_a_line():
    x = torch.tensor([0.0, 1.0, 3.0, 7.0]).view(4, 1, 1, 1)
    i, j = knn_pairs(x, 1)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 1), (1, 0), (2, 1), (3, 2)]
    h = x.view(4, 1)
    assert graph_loss(h, i, j, "l2").item() == pytest.approx((1 + 1 + 4 + 16) / 4)
    i2, j2 = knn_pairs(x, 2)
    assert sorted(zip(i2.tolist(), j2.tolist())) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (3, 1), (3, 2)]
    assert len(knn_pairs(x, 10)[0]) == 4 * 3  # at most the n - 1 others
    assert len(knn_pairs(x[:1], 3)[0]) == 0  # a single sample has no neighbour
    assert graph_loss(h, *knn_pairs(x[:1], 3)).item() == 0.0


@pytest.mark.parametrize("distance", ["l2", "l1", "cosine"])
@pytest.mark.parametrize("embedding", ["logits", "penultimate"])
def test_graph_term_is_zero_when_neighbours_embed_identically(digits, distance, embedding):
    """Label neighbours that are the same image have the same embedding: no graph term."""
    xtr, ytr, _, _ = digits
    first = torch.stack([torch.nonzero(ytr == c)[0, 0] for c in range(4)])  # one image of each of 4 classes
    x = xtr[first].repeat(3, 1, 1, 1)  # each three times, with its label: the only same-class pairs
    y = ytr[first].repeat(3)
    model = _tiny_cnn().train()
    obj = build_objective("nsl-graph", alpha=5.0, distance=distance, embedding=embedding)
    loss, logs = obj(model, x, y)
    assert logs["pairs"] == 12  # 4 groups of 3 identical images: 3 pairs each
    if distance == "cosine":
        assert abs(logs["graph"].item()) <= 1e-6
    else:
        assert logs["graph"].item() == 0.0
    assert loss.item() == pytest.approx(F.cross_entropy(model(x), y).item(), abs=5e-6)


def test_penultimate_embedding_is_the_last_linear_input_and_knn_uses_it(digits):
    xtr, ytr, _, _ = digits
    x, y = xtr[:16], ytr[:16]
    model = _tiny_cnn().eval()
    seen = []
    handle = model.classifier[4].register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    obj = NSLGraph(alpha=1.0, neighbours="knn", k=2, embedding="penultimate", knn_space="embedding")
    loss, logs = obj(model, x, y)
    handle.remove()
    feats = seen[-1]
    i, j = knn_pairs(feats, 2)
    expected = pair_distance(feats[i], feats[j]).mean()
    assert logs["graph"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() == pytest.approx(F.cross_entropy(model(x), y).item() + expected.item(), rel=1e-5)


def test_alpha_pulls_same_class_embeddings_together_on_digits(digits):
    """Measured (3 epochs, digits test set): mean squared logit distance of same-class pairs
    15.0 with alpha=0, 2.3 with alpha=0.1; asserted: less than half."""
    xtr, ytr, xte, yte = digits
    cfg = TrainConfig(epochs=3, batch_size=64, lr=3e-3, progress=False)

    def neighbour_distance(alpha):
        model = _tiny_cnn()
        train(model, build_objective("nsl-graph", alpha=alpha), (xtr, ytr), None, cfg)
        with torch.no_grad():
            h = model.eval()(xte)
        i, j = label_pairs(yte)
        return pair_distance(h[i], h[j]).mean().item(), (h.argmax(1) == yte).float().mean().item()

    (plain, plain_acc), (graph, graph_acc) = neighbour_distance(0.0), neighbour_distance(0.1)
    assert graph < 0.5 * plain, (plain, graph)
    assert graph_acc >= plain_acc - 0.05, (plain_acc, graph_acc)  # still a classifier
