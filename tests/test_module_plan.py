"""A plan applied to the PyTorch module the ONNX model came from (back to training).

``spa_opt.integrations.torch_module.prune_module`` replays a plan on the ONNX export,
maps each pruned initializer to a module tensor (by name, else by values) and slices
the module. Checked on the digits ResNet's module (golden_models/scripts/digits_models.py)
with its trained weights read from the TorchScript export, against three exports: names
kept with BatchNorm separate (``resnet_bn.onnx``), the dynamo export with BatchNorm folded
into the convolutions (``resnet.onnx``: the norms follow their convolutions), and that
export with every initializer renamed (matched by values). Each time the pruned module
must give the pruned ONNX model's outputs in onnxruntime, and it trains.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from conftest import GOLDEN
from onnx import numpy_helper

from spa_opt.api import optimize
from spa_opt.errors import InputError
from spa_opt.passes._infra.context import PipelineContext

torch = pytest.importorskip("torch")

from spa_opt.integrations.torch_module import prune_module  # noqa: E402

DIGITS = GOLDEN / "digits"
sys.path.insert(0, str(GOLDEN / "scripts"))


def _trained_resnet(widths=(16, 32, 64, 128)):
    from digits_models import ResNet

    net = ResNet(widths).eval()
    proto = onnx.load(str(DIGITS / "resnet_bn.onnx"))
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
               for t in proto.graph.initializer}
    state = net.state_dict()
    net.load_state_dict({k: v for k, v in weights.items() if k in state and
                         v.shape == state[k].shape}, strict=False)
    return net


def _plan(source) -> dict:
    model, _ = optimize(source, "couple,group,l1,prune", target_flops=0.5, record_plan=True)
    return PipelineContext.of(model).plan_document


@pytest.fixture(scope="module")
def images():
    return torch.from_numpy(np.load(DIGITS / "test.npz")["image"][:8])


def _renamed(tmp_path):
    proto = onnx.load(str(DIGITS / "resnet.onnx"))
    renames = {t.name: f"onnx::W_{i}" for i, t in enumerate(proto.graph.initializer)}
    for tensor in proto.graph.initializer:
        tensor.name = renames[tensor.name]
    for node in proto.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
    path = tmp_path / "renamed.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("export", ["resnet_bn", "resnet", "renamed"])
def test_plan_prunes_the_module_like_the_onnx_model(export, images, tmp_path):
    source = _renamed(tmp_path) if export == "renamed" else DIGITS / f"{export}.onnx"
    net = _trained_resnet()
    params_before = sum(p.numel() for p in net.parameters())
    result = prune_module(net, _plan(source), source, example=(images,))
    assert result.max_abs_err is not None and result.max_abs_err < 1e-4
    assert sum(p.numel() for p in net.parameters()) < 0.6 * params_before
    how = {how for _, how in result.mapped.values()}
    if export == "resnet_bn":
        assert how == {"name"} and not result.followed
    elif export == "resnet":
        assert how == {"name"} and len(result.followed) == 4 * 20  # 20 folded BatchNorms
    else:
        assert "values (scaled per output channel: a folded norm)" in how
        assert len(result.followed) == 80
    assert net.layers[0].conv1[0].out_channels == net.layers[0].conv1[1].num_features < 16
    # and back to training: a few steps lower the loss on a batch
    labels = torch.from_numpy(np.load(DIGITS / "test.npz")["label"][:8])
    net.train()
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(net(images), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("widths", [(8, 16, 32, 64), (32, 64, 128, 256)])
def test_a_module_of_another_shape_is_refused_untouched(widths):
    """Narrower or wider: names match, shapes do not; nothing of the module is sliced."""
    net = _trained_resnet(widths=widths)
    before = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    with pytest.raises(InputError, match=r"prune_module: '.*' has shape"):
        prune_module(net, _plan(DIGITS / "resnet_bn.onnx"), DIGITS / "resnet_bn.onnx")
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == before


def test_the_callers_onnx_model_is_left_as_it_was(images):
    import onnx_ir as ir

    model = ir.load(str(DIGITS / "resnet_bn.onnx"))
    sizes = {name: v.const_value.size for name, v in model.graph.initializers.items()}
    prune_module(_trained_resnet(), _plan(DIGITS / "resnet_bn.onnx"), model, example=(images,))
    assert {name: v.const_value.size for name, v in model.graph.initializers.items()} == sizes


def test_tied_parameters_stay_tied(tmp_path):
    """An embedding tied to the output layer (as language models do) is sliced once."""
    import onnx_ir as ir

    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(10, 8)
            self.hidden = torch.nn.Linear(8, 12)
            self.back = torch.nn.Linear(12, 8)
            self.head = torch.nn.Linear(8, 10, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids):
            x = self.embed(ids)
            return self.head(self.back(torch.relu(self.hidden(x))) + x)

    net = Tied().eval()
    ids = torch.tensor([[1, 2, 3]])
    path = tmp_path / "tied.onnx"
    torch.onnx.export(net, (ids,), str(path), dynamo=False, input_names=["ids"])
    pruned, _ = optimize(ir.load(str(path)), "couple,group,l1,prune", ratio=0.5,
                         record_plan=True)
    result = prune_module(net, PipelineContext.of(pruned).plan_document, path,
                          example=(ids,))
    assert net.head.weight is net.embed.weight
    assert result.max_abs_err is not None and result.max_abs_err < 1e-4
    assert net.hidden.out_features < 12


def test_unmatched_weight_names_the_weight_and_names_fixes_it(tmp_path, images):
    source = _renamed(tmp_path)
    plan = _plan(source)
    net = _trained_resnet()
    with torch.no_grad():  # values no longer match: only names= can map them now
        net.layers[0].conv1[0].weight.mul_(-1.0).add_(0.5)
    with pytest.raises(InputError, match=r"ONNX weight 'onnx::W_\d+' matches no parameter"):
        prune_module(net, plan, source)
    proto = onnx.load(str(source))
    conv = next(n for n in proto.graph.node if n.op_type == "Conv" and n.name.endswith("294"))
    net = _trained_resnet()
    result = prune_module(net, plan, source, names={conv.input[1]: "layers.0.conv1.0.weight"},
                          example=(images,))
    assert result.mapped[conv.input[1]] == ("layers.0.conv1.0.weight", "names")
