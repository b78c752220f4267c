"""A torchvision network through the same commands as the registered supernets (issue 9): fine-tuned by
``enas4d-train supernet=from_static supernet.source=torchvision:...`` from a local state dict, rebuilt from
its checkpoint, searched and exported; and ``supernet.source`` / ``supernet.weights`` errors."""

from __future__ import annotations

import io
import json

import pytest
import torch
import torchvision
from hydra import compose, initialize_config_dir
from rich.console import Console

from enas4d.checkpoint import load_supernet
from enas4d.export.cli import export
from enas4d.search.cli import CONF_DIR, search
from enas4d.train import train
from enas4d.transform import GraphSupernet, TransformError
from enas4d.transform.sources import StaticTeacher, build_source_model, load_static, transformed_from_config
from tests.training.helpers import compose_train

SIDE = 16  # digits resized to 16x16: ResNet-18 ends at 1x1, a few milliseconds per batch


def _compose(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A static ResNet-18 state dict, and a 2-exit supernet fine-tuned from it for a few tiny batches."""
    root = tmp_path_factory.mktemp("graph")
    torch.manual_seed(0)
    weights = root / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), weights)
    cfg = compose_train(root / "train", "supernet=from_static", "supernet.source=torchvision:resnet18",
                        f"supernet.weights={weights}", f"data.image_size={SIDE}", "supernet.width_mults=[0.5,1.0]")
    metrics, objects = train(cfg)
    return {"root": root, "weights": weights, "metrics": metrics, "objects": objects,
            "ckpt": root / "train" / "checkpoints" / "last.ckpt"}


def test_train_from_a_torchvision_state_dict(trained):
    module = trained["objects"]["module"]
    assert isinstance(module.net, GraphSupernet) and module.net.name == "torchvision:resnet18-s2dnas"
    assert module.net.space.resolutions == (SIDE,)  # the data's image size
    assert isinstance(module.teacher_net, StaticTeacher) and not module.teacher_net.training
    assert not any(p.requires_grad for p in module.teacher_net.parameters())
    static = torchvision.models.resnet18(weights=None, num_classes=10)
    static.load_state_dict(torch.load(trained["weights"]))
    x = torch.rand(2, 3, SIDE, SIDE)
    with torch.no_grad():  # the teacher is the static network of the file, unchanged by the fine-tuning
        assert torch.equal(module.teacher_net(x)[0], static.eval()(x))
    assert {"val/acc", "val/max/exit1", "val/max/exit2"} <= set(trained["metrics"])
    # The checkpoint alone rebuilds the transformed network (its source and options are in the meta).
    net, meta = load_supernet(trained["ckpt"])
    assert meta.supernet["spec"]["kind"] == "graph" and meta.supernet["spec"]["source"] == "torchvision:resnet18"
    assert isinstance(net, GraphSupernet) and net.space == module.net.space
    with torch.no_grad():
        for a, b in zip(net(x), module.net.eval()(x)):
            assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_search_and_export(trained, tmp_path):
    ckpt = trained["ckpt"]
    cfg = _compose("search", f"ckpt={ckpt}", "budget=0.6x", f"cache_dir={tmp_path / 'cache'}", "evaluations=3",
                   "static_evaluations=2", "population=2", "bn.images=32", "bn.batch_size=16", "front_levels=8",
                   "progress=false", "threads=1", "predictor.holdout=0")
    res = search(cfg, tmp_path / "search", _quiet())
    net, _ = load_supernet(ckpt)
    assert res["expected_macs"] <= res["budget"]
    assert res["exit_macs"] == net.macs(net.space.from_dict(res["subnet"]))
    out = tmp_path / "export"
    meta = export(_compose("export", f"result={tmp_path / 'search' / 'result.json'}", f"out={out}", "onnx=false",
                           "validate=false", "check_images=8"), _quiet())
    # The export checked supernet == eager == TorchScript and flop_counter == analytic MACs per stage.
    assert meta["checks"]["supernet_vs_export"] <= 1e-3
    assert meta["checks"]["flop_counter_stage_macs"] == meta["stage_macs"]
    model = torch.jit.load(str(out / "model.ts"))
    logits, exit_index = model(torch.rand(5, 3, SIDE, SIDE))
    assert logits.shape == (5, 10) and exit_index.shape == (5,)
    assert json.loads((out / "subnet.json").read_text())["supernet"]["name"] == "torchvision:resnet18-s2dnas"


def test_config_without_weights_has_no_teacher(tmp_path):
    cfg = compose_train(tmp_path, "supernet=from_static", "supernet.source=timm:resnet18", "data.image_size=24",
                        "supernet.num_stages=3")
    net, teacher = transformed_from_config(cfg.supernet, 10, 3, cfg.data.image_size)
    assert teacher is None  # a random network teaches nothing
    assert net.space.resolutions == (24,) and net.num_stages == 3 and net.spec.source == "timm:resnet18"
    bad = compose_train(tmp_path, "supernet=from_static", "supernet.source=timm:resnet18", "supernet.depths=[1,2]")
    with pytest.raises(TransformError, match=r"supernet.depths=\[1, 2\] not allowed for timm:resnet18.*widths only"):
        transformed_from_config(bad.supernet, 10, 3)


def test_sources_build_without_download():
    assert build_source_model("timm:mobilenetv2_100", 7, 1).conv_stem.in_channels == 1
    assert build_source_model("torchvision:mobilenet_v2", 7, 3).classifier[-1].out_features == 7


def test_source_and_weights_errors(tmp_path):
    with pytest.raises(TransformError, match=r"'torchvision:resnet81' names no known model; did you mean resnet18"):
        build_source_model("torchvision:resnet81", 10, 3)
    with pytest.raises(TransformError, match=r"'timm:mobilenetv2_10' names no known model; did you mean"):
        build_source_model("timm:mobilenetv2_10", 10, 3)
    with pytest.raises(TransformError, match="torchvision classifiers read 3 channels"):
        build_source_model("torchvision:resnet18", 10, 1)
    with pytest.raises(TransformError, match="allowed: enas4d:NAME, torchvision:NAME, timm:NAME"):
        build_source_model("keras:resnet18", 10, 3)
    with pytest.raises(TransformError, match="supernet.weights: no file"):
        load_static("torchvision:resnet18", str(tmp_path / "missing.pt"), 10, 3)
    wrong = tmp_path / "r18_1000.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong)  # 1000 classes
    with pytest.raises(TransformError, match=r"does not fit torchvision:resnet18 with 10 classes: 'fc.weight' is "
                                             r"\[1000, 512\] in the file, \[10, 512\]"):
        load_static("torchvision:resnet18", str(wrong), 10, 3)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a tensor file")
    with pytest.raises(TransformError, match="is not a state-dict file"):
        load_static("torchvision:resnet18", str(junk), 10, 3)
