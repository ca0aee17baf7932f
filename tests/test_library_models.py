"""torchvision and timm networks by name, and teachers imported from weights files (issue 17)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from bandistill.checkpoint import load_checkpoint, model_from_checkpoint, normalization
from bandistill.errors import UserError
from bandistill.inference import predict_logits
from bandistill.models import build_model, count_parameters, model_options, validate_model_name

from conftest import assert_one_line_error, run_cli, write_imagefolder

timm = pytest.importorskip("timm")

WNIDS = ("n01440764", "n02102040", "n02979186")  # tench, English springer, cassette player: ImageNet 0, 217, 482


@pytest.fixture
def wnid_tree(tmp_path: Path) -> Path:
    return write_imagefolder(tmp_path / "tree", classes=WNIDS, per_class=6, size=(16, 16))


def _full_head_state(tmp_path: Path, arch: str = "resnet18", classes: int = 1000, suffix: str = ".pth") -> Path:
    torch.manual_seed(0)
    net = torchvision.models.get_model(arch, weights=None, num_classes=classes)
    path = tmp_path / f"{arch}{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    else:
        torch.save(net.state_dict(), path)
    return path


def _plain_pytorch_logits(net: torch.nn.Module, images: torch.Tensor, mean, std) -> torch.Tensor:
    """What a torchvision user would write: ToTensor-style scaling, Normalize, the network in eval mode."""
    x = torchvision.transforms.Normalize(mean, std)(images.float() / 255.0)
    with torch.no_grad():
        return net.eval()(x)


# -- names --------------------------------------------------------------------------------------
def test_library_names_build_for_classes_and_channels(one_thread):
    for name in ("torchvision/resnet18", "timm/resnet10t"):
        net = build_model(name, 7, 1)
        assert net.eval()(torch.randn(2, 1, 16, 16)).shape == (2, 7)
    assert validate_model_name("Torchvision/ResNet18") == "torchvision/resnet18"
    # networks whose input size is fixed when built are built for the data's
    options = model_options("timm/vit_tiny_patch16_224", (3, 32, 32))
    assert options == {"image_size": [32, 32]}
    assert build_model("timm/vit_tiny_patch16_224", 5, 3, **options)(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    assert model_options("torchvision/resnet18", (3, 32, 32)) == {}


@pytest.mark.parametrize(("name", "fragments"), [
    ("torchvision/resnet5", ["torchvision/resnet50"]),
    ("timm/efficientnetb0", ["timm/efficientnet_b0"]),
    ("resnet50", ["torchvision/resnet50", "timm/resnet50"]),
    ("torchvision/resnet10t", ["use timm/resnet10t"]),
])
def test_unknown_names_suggest_close_ones(name, fragments):
    with pytest.raises(UserError) as err:
        validate_model_name(name)
    assert all(f in str(err.value) for f in fragments), err.value
    assert "\n" not in str(err.value)


def test_timm_names_without_timm_say_how_to_install(tmp_path):
    code = ("import sys; sys.modules['timm'] = None\n"
            "from bandistill.cli.main import main\n"
            "sys.argv = ['bandistill', 'train', '--model', 'timm/resnet10t', '--dataset', 'digits', '--out', "
            f"{str(tmp_path / 'r')!r}]\nmain()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "timm is not installed" in lines[0] and "pip install" in lines[0], result.stderr


def test_models_lists_library_networks_filtered_with_parameter_counts():
    result = run_cli("models", "torchvision/resnet1*", "--num-classes", "1000", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r["parameters"] for r in json.loads(result.output)["models"]}
    assert rows == {"torchvision/resnet18": 11_689_512, "torchvision/resnet101": 44_549_160,
                    "torchvision/resnet152": 60_192_808}  # torchvision's documented counts
    timm_rows = json.loads(run_cli("models", "timm/resnet10t", "--num-classes", "10", "--json").output)["models"]
    assert timm_rows == [{"name": "timm/resnet10t", "parameters": count_parameters(build_model("timm/resnet10t", 10)),
                          "millions": pytest.approx(4.9, abs=0.1)}]
    assert_one_line_error(run_cli("models", "zzqx"), "no model matches zzqx")


def test_transfer_ends_between_library_networks_or_one_line():
    from bandistill.transfer import check_transferable

    assert check_transferable("torchvision/resnet18", "torchvision/resnet34", 10, 3) == ["conv1", "fc"]
    # timm says where its ends are; resnet14t's classifier reads 2048 features, not 512: only the stem fits
    assert check_transferable("timm/resnet10t", "timm/resnet14t", 10, 3) == ["conv1.0"]
    with pytest.raises(UserError, match="no linear classifier"):  # SqueezeNet classifies with a convolution
        check_transferable("resnet-20", "torchvision/squeezenet1_1", 10, 3)


# -- every stage ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["torchvision/resnet18", "timm/resnet10t"])
def test_library_network_through_every_stage(name, tmp_path, one_thread):
    """train, dump, a student from the cache, export with ONNX parity, ensemble; on tiny generated data."""
    from bandistill.dump import dump_logits
    from bandistill.onnx.ensemble import evaluate_ensemble
    from bandistill.onnx.export import export_checkpoint
    from bandistill.train import TrainConfig, train

    tree = write_imagefolder(tmp_path / "tree", per_class=6, size=(16, 16))
    common = dict(model=name, dataset="imagefolder", data_dir=str(tree), epochs=2, batch_size=6, lr=0.01,
                  device="cpu")
    gen0 = train(TrainConfig(**common), tmp_path / "gen0", progress=False)
    cache = tmp_path / "gen0.h5"
    dumped = dump_logits(gen0["checkpoint"], "imagefolder", cache, views="epochs", data_dir=str(tree),
                         device="cpu", progress=False)
    assert dumped["views"] == 2 and dumped["teacher"] == name
    gen1 = train(TrainConfig(**common, teacher_cache=str(cache), seed=1), tmp_path / "gen1", progress=False)
    assert gen1["generation"] == 1 and load_checkpoint(gen1["checkpoint"])["model"]["name"] == name
    onnx_files = []
    for run in ("gen0", "gen1"):
        exported = export_checkpoint(tmp_path / run, tmp_path / f"{run}.onnx")
        assert exported["model"] == name
        assert exported["parity"]["max_abs_logit_diff"] <= exported["parity"]["tolerance"]
        onnx_files.append(tmp_path / f"{run}.onnx")
    result = evaluate_ensemble(onnx_files, "imagefolder", data_dir=str(tree), provider="cpu")
    assert [m["generation"] for m in result["members"]] == [0, 1]
    assert 0.0 <= result["ensemble"]["accuracy"] <= 1.0


# -- importing a teacher ------------------------------------------------------------------------
def test_imported_state_dict_gives_the_plain_pytorch_logits(tmp_path, one_thread):
    """Same class count, no map: the checkpoint's network and normalisation are exactly torchvision's."""
    from bandistill.data import load_dataset
    from bandistill.import_teacher import import_teacher

    tree = write_imagefolder(tmp_path / "tree", per_class=4, size=(16, 16))
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3)
    for m in net.modules():  # BatchNorm statistics that are not the identity, as trained weights have
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)  # DDP-style save
    result = import_teacher(path, "imagefolder", tmp_path / "t", model="torchvision/resnet18", data_dir=str(tree),
                            device="cpu")
    ckpt = load_checkpoint(result["checkpoint"])
    assert ckpt["normalization"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert "ResNet18_Weights" in ckpt["normalization_source"]
    assert ckpt["generation"] == 0 and ckpt["imported"]["class_map"] is None
    ds = load_dataset("imagefolder", tree)
    mean, std = normalization(ckpt)
    ours = predict_logits(model_from_checkpoint(ckpt), ds.test_images, mean, std)
    theirs = _plain_pytorch_logits(net, ds.test_images, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    acc = float((theirs.argmax(1) == ds.test_labels).float().mean())
    assert result["test_accuracy"] == pytest.approx(acc)


@pytest.mark.parametrize("how", ["wnid", "file", "safetensors"])
def test_class_map_over_a_1000_way_head_gives_the_selected_logits(how, wnid_tree, tmp_path, one_thread):
    from bandistill.data import load_dataset
    from bandistill.import_teacher import import_teacher

    path = _full_head_state(tmp_path, suffix=".safetensors" if how == "safetensors" else ".pth")
    indices = [0, 217, 482]  # the wnids' places in ImageNet-1k's sorted synsets
    class_map = "wnid"
    if how == "file":
        indices = [7, 3, 999]
        class_map = tmp_path / "map.json"
        class_map.write_text(json.dumps(dict(zip(WNIDS, indices))))
    result = import_teacher(path, "imagefolder", tmp_path / "t", model="torchvision/resnet18",
                            data_dir=str(wnid_tree), class_map=str(class_map), device="cpu")
    assert result["class_map"]["indices"] == indices and result["teacher_outputs"] == 1000
    ckpt = load_checkpoint(result["checkpoint"])
    assert ckpt["model"]["num_classes"] == 3
    full = torchvision.models.resnet18(num_classes=1000)
    if how == "safetensors":
        from safetensors.torch import load_file

        full.load_state_dict(load_file(str(path)))
    else:
        full.load_state_dict(torch.load(path, weights_only=True))
    ds = load_dataset("imagefolder", wnid_tree)
    mean, std = normalization(ckpt)
    ours = predict_logits(model_from_checkpoint(ckpt), ds.test_images, mean, std)
    theirs = _plain_pytorch_logits(full, ds.test_images, mean.tolist(), std.tolist())[:, indices]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_import_from_a_bandistill_checkpoint_maps_classes_by_name(digits_teacher, tmp_path):
    from bandistill.import_teacher import import_teacher

    result = import_teacher(digits_teacher, "digits", tmp_path / "t", device="cpu")
    ckpt, source = load_checkpoint(result["checkpoint"]), load_checkpoint(digits_teacher)
    assert ckpt["normalization"] == source["normalization"] and ckpt["model"] == source["model"]
    assert result["test_accuracy"] == pytest.approx(source["metrics"]["test_accuracy"])
    assert ckpt["imported"]["format"] == "bandistill checkpoint"


def test_import_errors_are_one_line(wnid_tree, tmp_path):
    path = _full_head_state(tmp_path)
    base = ["import-teacher", path, "--dataset", "imagefolder", "--data-dir", wnid_tree]
    assert_one_line_error(run_cli(*base, "--model", "torchvision/resnet34", "--class-map", "wnid", "--out",
                                  tmp_path / "a"), "do not fit torchvision/resnet34", "missing layer1.2.conv1.weight")
    assert_one_line_error(run_cli(*base, "--model", "torchvision/resnet18", "--out", tmp_path / "b"),
                          "1000 outputs", "--class-map")
    assert_one_line_error(run_cli(*base, "--model", "torchvision/resnt18", "--out", tmp_path / "c"),
                          "did you mean torchvision/resnet18")
    odd = write_imagefolder(tmp_path / "odd", classes=("n01440764", "goldfish"), per_class=2, size=(16, 16))
    assert_one_line_error(run_cli("import-teacher", path, "--dataset", "imagefolder", "--data-dir", odd, "--model",
                                  "torchvision/resnet18", "--class-map", "wnid", "--out", tmp_path / "d"),
                          "'goldfish' is not a WordNet id")
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"n01440764": 0, "n02102040": 217}))
    assert_one_line_error(run_cli(*base, "--model", "torchvision/resnet18", "--class-map", partial, "--out",
                                  tmp_path / "e"), "does not map the dataset's class 'n02979186'")
    assert not any((tmp_path / d).exists() for d in "abcde")


def test_import_teacher_cli_prints_accuracy_and_digest(wnid_tree, tmp_path):
    path = _full_head_state(tmp_path)
    result = run_cli("import-teacher", path, "--model", "torchvision/resnet18", "--dataset", "imagefolder",
                     "--data-dir", wnid_tree, "--class-map", "wnid", "--device", "cpu", "--out", tmp_path / "t",
                     "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert 0.0 <= out["test_accuracy"] <= 1.0 and len(out["checkpoint_digest"]) == 16
    assert out["eval_transform"].startswith("the dataset's uint8 image as stored")


def test_imagenet_wnids_are_timms_class_order():
    from bandistill.models.weights import imagenet1k_wnids

    ours = imagenet1k_wnids()
    assert len(ours) == 1000 and ours == sorted(ours)
    info = timm.data.ImageNetInfo("imagenet-1k")
    assert ours == [info.index_to_label_name(i) for i in range(1000)]
    assert np.all(np.array(ours[:3]) == np.array(["n01440764", "n01443537", "n01484850"]))


# -- pretrained initialisation --------------------------------------------------------------------
def test_train_init_weights_with_the_class_map_or_a_fresh_head(wnid_tree, tmp_path, one_thread):
    from bandistill.train import TrainConfig, train

    path = _full_head_state(tmp_path)
    source = torch.load(path, weights_only=True)
    common = dict(model="torchvision/resnet18", dataset="imagefolder", data_dir=str(wnid_tree), epochs=1,
                  batch_size=18, lr=1e-12, weight_decay=0.0, momentum=0.0, device="cpu")
    mapped = train(TrainConfig(**common, init_weights=str(path), class_map="wnid"), tmp_path / "m", progress=False)
    ckpt = load_checkpoint(mapped["checkpoint"])
    assert ckpt["normalization"]["mean"] == [0.485, 0.456, 0.406]  # what the weights expect, not the data's
    assert ckpt["init_weights"]["class_map"]["indices"] == [0, 217, 482]
    torch.testing.assert_close(ckpt["state_dict"]["fc.weight"], source["fc.weight"][[0, 217, 482]])
    torch.testing.assert_close(ckpt["state_dict"]["conv1.weight"], source["conv1.weight"])
    fresh = train(TrainConfig(**common, init_weights=str(path), fresh_head=True), tmp_path / "f", progress=False)
    ckpt = load_checkpoint(fresh["checkpoint"])
    assert ckpt["init_weights"]["fresh_head"] == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(ckpt["state_dict"]["layer4.1.conv2.weight"], source["layer4.1.conv2.weight"])
    assert not torch.allclose(ckpt["state_dict"]["fc.weight"], source["fc.weight"][[0, 217, 482]])
    result = run_cli("train", "--model", "torchvision/resnet18", "--dataset", "imagefolder", "--data-dir", wnid_tree,
                     "--epochs", "1", "--init-weights", path, "--out", tmp_path / "x")
    assert_one_line_error(result, "1000 outputs", "--class-map", "or --fresh-head")


def test_live_imported_teacher_sees_the_dumps_images_through_its_own_normalisation(wnid_tree, tmp_path, one_thread):
    """The student normalises with its data's statistics, the imported teacher with ImageNet's: the live
    teacher's logits on the student's input are the dump's logits on the same views."""
    from bandistill.data import load_dataset
    from bandistill.data.views import ViewPlan, normalize
    from bandistill.dump import LogitDump
    from bandistill.import_teacher import import_teacher
    from bandistill.soft_targets import LiveTeacher

    result = import_teacher(_full_head_state(tmp_path), "imagefolder", tmp_path / "t", model="torchvision/resnet18",
                            data_dir=str(wnid_tree), class_map="wnid", device="cpu")
    ds = load_dataset("imagefolder", wnid_tree)
    dump = LogitDump(result["checkpoint"], "imagefolder", tmp_path / "c.h5", views=1, data_dir=str(wnid_tree),
                     dtype="float32", device="cpu", progress=False)
    dumped, params = dump.view_logits(0, 0, ds.num_train)
    live = LiveTeacher(result["checkpoint"], ds, "cpu", plan=ViewPlan("fixed", 1, 0), seed=0)
    mean, std = (torch.tensor(t) for t in ds.normalization())
    assert not torch.allclose(mean, torch.tensor([0.485, 0.456, 0.406]))  # the two normalisations differ
    x = normalize(ds.view_policy.apply(ds.train_images, torch.from_numpy(params)), mean, std)
    got = live.batch_targets(0, torch.arange(ds.num_train), x)
    torch.testing.assert_close(got, torch.from_numpy(dumped), atol=1e-4, rtol=1e-4)


# -- ban --teacher ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_ban_starts_the_chain_from_an_imported_teacher(wnid_tree, tmp_path, one_thread):
    from bandistill.run import ban_options, run_ban

    weights = _full_head_state(tmp_path)
    out = tmp_path / "run"
    given = dict(teacher=str(weights), model="torchvision/resnet18", class_map="wnid", student_model="resnet-8",
                 dataset="imagefolder", data_dir=str(wnid_tree), generations=1, epochs=1, batch_size=6, lr=0.01,
                 device="cpu")
    lines: list[str] = []
    result = run_ban(ban_options(out, given), out, progress=False, log=lines.append)
    assert result["stages_run"][:2] == ["gen0.import", "gen0.export"] and "gen0.train" not in result["stages_run"]
    accuracy = next(i for i, line in enumerate(lines) if line.startswith("teacher test accuracy on imagefolder"))
    assert accuracy < next(i for i, line in enumerate(lines) if "gen0.dump" in line)  # printed before the dump
    gen0 = load_checkpoint(out / "gen0" / "model.pt")
    assert gen0["imported"]["class_map"]["indices"] == [0, 217, 482] and gen0["model"]["num_classes"] == 3
    assert load_checkpoint(out / "gen1" / "model.pt")["teacher"]["teacher_model"] == "torchvision/resnet18"
    assert "imported from resnet18.pth" in " ".join(result["notes"])
    assert result["rows"][0]["network"] == "torchvision/resnet18 -> resnet-8"
    again = run_ban(ban_options(out, {}), out, progress=False)  # options from ban.json; nothing to redo
    assert again["stages_run"] == []


def test_ban_teacher_checkpoint_names_its_architecture_and_a_state_dict_needs_model(digits_teacher, tmp_path):
    from bandistill.run import ban_options

    opts = ban_options(tmp_path / "a", dict(teacher=str(digits_teacher), dataset="digits"))
    assert opts.model == "resnet-20"
    state = tmp_path / "w.pth"
    torch.save(load_checkpoint(digits_teacher)["state_dict"], state)
    with pytest.raises(UserError, match="plain state dict: name the architecture"):
        ban_options(tmp_path / "b", dict(teacher=str(state), dataset="digits"))
    with pytest.raises(UserError, match="--class-map goes with --teacher"):
        ban_options(tmp_path / "c", dict(model="resnet-20", dataset="digits", class_map="wnid")).validate()


def test_import_on_photos_streamed_at_an_image_size_then_dump(wnid_tree, tmp_path, one_thread):
    from bandistill.data import load_dataset
    from bandistill.dump import dump_logits
    from bandistill.import_teacher import import_teacher

    result = import_teacher(_full_head_state(tmp_path), "imagefolder", tmp_path / "t", model="torchvision/resnet18",
                            data_dir=str(wnid_tree), image_size=12, class_map="wnid", device="cpu")
    ckpt = load_checkpoint(result["checkpoint"])
    assert ckpt["config"]["image_size"] == 12 and ckpt["eval_transform"]["resize"] == 12
    assert "central square of 0.875" in ckpt["eval_transform"]["steps"]
    ds = load_dataset("imagefolder", wnid_tree, image_size=12)
    mean, std = normalization(ckpt)
    ours = predict_logits(model_from_checkpoint(ckpt), ds.test_images, mean, std)
    full = torchvision.models.resnet18(num_classes=1000)
    full.load_state_dict(torch.load(tmp_path / "resnet18.pth", weights_only=True))
    theirs = _plain_pytorch_logits(full, ds.test_images.eval_views(), mean.tolist(), std.tolist())[:, [0, 217, 482]]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    dumped = dump_logits(result["checkpoint"], "imagefolder", tmp_path / "c.h5", views=2, data_dir=str(wnid_tree),
                         device="cpu", progress=False, dtype="float32")
    assert dumped["teacher_test_accuracy"] == pytest.approx(result["test_accuracy"])


def test_nothing_is_fetched_from_a_hub(tmp_path):
    """Building, listing, reading a recipe and importing open no network connection (sockets refuse here)."""
    weights = _full_head_state(tmp_path, arch="resnet18", classes=3)
    tree = write_imagefolder(tmp_path / "tree", per_class=2, size=(16, 16))
    code = f"""
import socket
def refuse(*args, **kwargs):
    raise RuntimeError("network access attempted")
socket.socket.connect = refuse
socket.create_connection = refuse
from bandistill.models import build_model
from bandistill.models.libraries import weights_recipe, list_library_models
from bandistill.import_teacher import import_teacher
for name in ("torchvision/resnet18", "timm/resnet10t", "timm/vit_tiny_patch16_224"):
    build_model(name, 3, 3, image_size=[16, 16]) if "vit" in name else build_model(name, 3, 3)
    weights_recipe(name)
assert list_library_models("timm/resnet1*")
import_teacher({str(weights)!r}, "imagefolder", {str(tmp_path / 't')!r}, model="torchvision/resnet18",
               data_dir={str(tree)!r}, device="cpu")
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


@pytest.mark.slow
def test_adding_a_teacher_to_a_trained_run_is_refused_or_supersedes(digits_teacher, tmp_path, one_thread):
    from bandistill.run import ban_options, run_ban

    out = tmp_path / "run"
    run_ban(ban_options(out, dict(model="resnet-8", dataset="digits", generations=1, epochs=1, device="cpu")), out,
            progress=False)
    trained = load_checkpoint(out / "gen0" / "model.pt")
    with pytest.raises(UserError, match="generation 0 was trained, now imported from --teacher"):
        run_ban(ban_options(out, dict(teacher=str(digits_teacher), model="resnet-20")), out, progress=False)
    assert load_checkpoint(out / "gen0" / "model.pt")["state_dict"]["stem.weight"].equal(
        trained["state_dict"]["stem.weight"])  # refused: nothing touched
    result = run_ban(ban_options(out, dict(teacher=str(digits_teacher), model="resnet-20")), out, supersede=True,
                     progress=False)
    assert "gen0.import" in result["stages_run"] and "gen0.train" not in result["stages_run"]
    moved = list((out / "superseded").glob("*/gen0/model.pt"))
    assert len(moved) == 1 and load_checkpoint(moved[0])["model"]["name"] == "resnet-8"  # kept, not deleted
    assert load_checkpoint(out / "gen0" / "model.pt")["imported"]["format"] == "bandistill checkpoint"


def test_rgb_weights_on_grayscale_data_are_one_line(tmp_path):
    path = _full_head_state(tmp_path, classes=10)
    for extra in ([], ["--mean", "0.5", "--std", "0.25"]):
        result = run_cli("import-teacher", path, "--model", "torchvision/resnet18", "--dataset", "digits", *extra,
                         "--out", tmp_path / "t")
        assert_one_line_error(result, "takes 3-channel images but the dataset's have 1")
