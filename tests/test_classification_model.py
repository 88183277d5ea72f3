"""AutoPool, the taxonomic loss, the ensemble and save → load of the classifier."""
import json

import numpy as np
import pytest
import torch

from birdsep import files
from birdsep.classification import model as M
from birdsep.errors import UsageError


def test_autopool_limits_mean_and_max():
    x = torch.randn(3, 5, 17)
    pool = M.AutoPool(5, alpha=0.0)
    torch.testing.assert_close(pool(x), x.mean(-1))
    with torch.no_grad():
        pool.alpha.fill_(1e4)
    torch.testing.assert_close(pool(x), x.amax(-1))
    with torch.no_grad():
        pool.alpha.fill_(-1e4)
    torch.testing.assert_close(pool(x), x.amin(-1))


def test_autopool_in_between_and_learnable():
    x = torch.randn(2, 4, 9)
    pool = M.AutoPool(4, alpha=1.0)
    y = pool(x)
    assert torch.all(y >= x.mean(-1) - 1e-6) and torch.all(y <= x.amax(-1) + 1e-6)
    y.sum().backward()
    assert pool.alpha.grad is not None and pool.alpha.grad.abs().sum() > 0


def _bce(z, y):
    return float(torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(z), torch.tensor(y)))


def test_label_smoothing_values_and_optimum():
    y = torch.tensor([1.0, 0.0])
    torch.testing.assert_close(M.smooth_labels(y, 0.1), torch.tensor([0.95, 0.05]))
    # the loss of one positive entry is minimised at p = 0.95, not at p → 1
    z = torch.linspace(0, 6, 601, requires_grad=False)
    losses = [M.taxonomic_loss({"species": zi.view(1, 1)}, {"species": torch.ones(1, 1)},
                               {"species": torch.ones(1, 1)})[0].item() for zi in z]
    best = float(torch.sigmoid(z[int(np.argmin(losses))]))
    assert abs(best - 0.95) < 0.002


def _batch(**masks):
    logits = {"species": torch.tensor([[2.0, -1.0, 0.5]]), "genus": torch.tensor([[1.0, -2.0]]),
              "family": torch.tensor([[0.3]]), "order": torch.tensor([[0.7]]), "bird": torch.tensor([[3.0]])}
    targets = {"species": torch.tensor([[1.0, 0.0, 0.0]]), "genus": torch.tensor([[1.0, 0.0]]),
               "family": torch.tensor([[1.0]]), "order": torch.tensor([[1.0]]), "bird": torch.tensor([[1.0]])}
    m = {k: torch.ones_like(v) for k, v in targets.items()}
    m.update({k: torch.tensor(v) for k, v in masks.items()})
    return logits, targets, m


def test_loss_weights_and_smoothing_by_hand():
    logits, targets, masks = _batch()
    total, per = M.taxonomic_loss(logits, targets, masks)
    sp = np.mean([_bce(2.0, 0.95), _bce(-1.0, 0.05), _bce(0.5, 0.05)])
    ge = np.mean([_bce(1.0, 0.95), _bce(-2.0, 0.05)])
    fa, o, b = _bce(0.3, 0.95), _bce(0.7, 0.95), _bce(3.0, 0.95)
    assert per["species"].item() == pytest.approx(sp, rel=1e-6)
    assert total.item() == pytest.approx(sp + b + 0.1 * (ge + fa + o), rel=1e-6)


def test_background_species_get_zero_loss():
    logits, targets, masks = _batch(species=[[1.0, 0.0, 1.0]])  # species 1 is in the background
    _, per = M.taxonomic_loss(logits, targets, masks)
    assert per["species"].item() == pytest.approx(np.mean([_bce(2.0, 0.95), _bce(0.5, 0.05)]), rel=1e-6)
    # the background species' logit does not matter at all
    logits["species"] = torch.tensor([[2.0, 50.0, 0.5]], requires_grad=True)
    total, _ = M.taxonomic_loss(logits, targets, masks)
    total.backward()
    assert logits["species"].grad[0, 1] == 0 and logits["species"].grad[0, 0] != 0


def test_taxonomy_only_example_trains_no_species():
    logits, targets, masks = _batch(species=[[0.0, 0.0, 0.0]])
    logits = {k: v.clone().requires_grad_(True) for k, v in logits.items()}
    total, per = M.taxonomic_loss(logits, targets, masks)
    total.backward()
    assert per["species"].item() == 0.0 and torch.all(logits["species"].grad == 0)
    for h in ("genus", "family", "order", "bird"):
        assert torch.any(logits[h].grad != 0)


def _cfg(**kw):
    return M.ClassifierConfig(species=("a", "b", "c"), genus=("g1", "g2"), family=("f",), order=("o",), **kw)


def test_classifier_shapes_and_embedding():
    torch.manual_seed(0)
    net = M.Classifier(_cfg()).eval()
    x = torch.randn(2, 16000)
    out = net(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "species": (2, 3), "genus": (2, 2), "family": (2, 1), "order": (2, 1), "bird": (2, 1)}
    assert net.embed_features(net.frontend(x)).shape == (2, 1280)


def test_backbone_b2_projects_to_1280():
    net = M.Classifier(_cfg(backbone="b2"))
    assert net.backbone.num_features == 1408 and net.project.out_features == 1280
    with pytest.raises(ValueError, match="unknown backbone"):
        _cfg(backbone="b7")


def test_ensemble_averages_logits():
    torch.manual_seed(0)
    ens = M.Ensemble(_cfg(members=2)).eval()
    x = torch.randn(1, 16000)
    with torch.no_grad():
        a, b, mean = ens.members[0](x), ens.members[1](x), ens(x)
    torch.testing.assert_close(mean["species"], (a["species"] + b["species"]) / 2)


def test_save_load_identical_outputs_and_strict(tmp_path):
    torch.manual_seed(0)
    ens = M.Ensemble(_cfg()).eval()
    M.save(ens, tmp_path)
    blob = json.loads((tmp_path / "config.json").read_text())
    assert blob["format_version"] == files.FORMAT_VERSION and blob["kind"] == "classifier" and blob["config"]["species"] == ["a", "b", "c"]
    back = M.load(tmp_path)
    assert back.cfg == ens.cfg
    x = torch.randn(1, 16000)
    with torch.no_grad():
        torch.testing.assert_close(back(x)["species"], ens(x)["species"], rtol=0, atol=0)
    # a config that does not match the weights is refused (strict loading)
    blob["config"]["species"] = ["a", "b"]
    (tmp_path / "config.json").write_text(json.dumps(blob))
    with pytest.raises(UsageError, match="weights do not fit the model described by its config .*wrong shape"):
        M.load(tmp_path)
    with pytest.raises(UsageError, match="not a classifier run directory"):
        M.load(tmp_path / "nowhere")


def test_run_folders_written_before_kind_was_stored_still_load(tmp_path):
    """Classifier runs of earlier releases: config.json = {format_version, config}, no kind."""
    torch.manual_seed(0)
    ens = M.Ensemble(_cfg()).eval()
    M.save(ens, tmp_path)
    blob = json.loads((tmp_path / "config.json").read_text())
    assert blob["kind"] == "classifier"
    del blob["kind"]
    (tmp_path / "config.json").write_text(json.dumps(blob, indent=1))
    x = torch.randn(1, 16000)
    with torch.no_grad():
        torch.testing.assert_close(M.load(tmp_path)(x)["species"], ens(x)["species"], rtol=0, atol=0)
    blob["kind"] = "separator"
    (tmp_path / "config.json").write_text(json.dumps(blob))
    with pytest.raises(UsageError, match="holds a separator, not a classifier"):
        M.load(tmp_path)
