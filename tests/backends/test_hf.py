"""Shared Hugging Face loading: finding weights offline, safety, preprocessing, OOM backoff."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_llmseg import get_model, segment
from napari_llmseg.backends import hf
from napari_llmseg.backends.clipseg import DEFAULT_ID as CLIPSEG_ID
from napari_llmseg.backends.clipseg import CLIPSegBackend
from napari_llmseg.backends.hf import (
    ALLOW_PATTERNS,
    ImageSettings,
    WeightsUnavailableError,
    resolve_dtype,
    resolve_source,
    run_in_chunks,
)
from napari_llmseg.engine.normalize import IntensityStats

from .conftest import put_in_cache

pytestmark = pytest.mark.usefixtures("one_thread")


def unavailable_pattern(backend: str, spec: str, reason: str) -> str:
    import re

    model_id, _, revision = spec.partition("@")
    download = f"hf download {model_id}" + (f" --revision {revision}" if revision else "")
    return (
        rf"cannot load the {backend} weights '{re.escape(spec)}': {reason}.*Looked in the "
        rf"Hugging Face cache '.*hf-cache'.*`{re.escape(download)} --local-dir DIR`"
        rf".*pass --model {backend}:DIR"
    )


# ------------------------------------------------------------------------------------------
# Offline and unavailable weights


@pytest.mark.parametrize(
    ("model", "backend", "model_id"),
    [
        ("clipseg", "clipseg", CLIPSEG_ID),
        ("sam3", "sam3", "facebook/sam3"),
        ("clipseg:nobody/no-such-model", "clipseg", "nobody/no-such-model"),
        ("grounded-sam", "grounded-sam detector", "IDEA-Research/grounding-dino-tiny"),
    ],
)
def test_offline_error_names_id_cache_and_what_to_do(hf_cache, offline, model, backend, model_id):
    t0 = time.perf_counter()
    with pytest.raises(
        WeightsUnavailableError,
        match=unavailable_pattern(
            backend, model_id, r"they are not cached and offline mode is on"
        ),
    ) as err:
        get_model(model, device="cpu")
    assert time.perf_counter() - t0 < 5
    assert str(hf_cache) in str(err.value)
    assert "\n" not in str(err.value)  # one line, as the CLI prints it


def test_offline_error_through_segment(hf_cache, offline):
    with pytest.raises(WeightsUnavailableError, match=r"'facebook/sam3'"):
        segment(np.zeros((64, 64), np.float32), "cell", model="sam3")


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            "gated",
            r"the repository is gated and this machine has no access to it: accept its "
            r"licence on https://huggingface.co/facebook/sam3 and log in with `hf auth login`",
        ),
        ("missing", r"no such model on the Hugging Face Hub"),
        (
            "network",
            r"they are not cached and the Hub could not be reached "
            r"\(LocalEntryNotFoundError\)",
        ),
        ("revision", r"the repository has no revision 'v9'"),
    ],
)
def test_fetch_failures_explain_why(hf_cache, monkeypatch, error, reason):
    import huggingface_hub
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append(kwargs)
        if kwargs.get("local_files_only"):
            raise LocalEntryNotFoundError("not cached")
        response = SimpleNamespace(headers={}, status_code=403, request=None)
        raise {
            "gated": lambda: GatedRepoError("gated", response=response),
            "missing": lambda: RepositoryNotFoundError("404", response=response),
            "network": lambda: LocalEntryNotFoundError("Got: ConnectError"),
            "revision": lambda: RevisionNotFoundError("404", response=response),
        }[error]()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    spec = "facebook/sam3@v9" if error == "revision" else "facebook/sam3"
    with pytest.raises(WeightsUnavailableError, match=unavailable_pattern("sam3", spec, reason)):
        get_model(f"sam3:{spec}", device="cpu")
    assert [c.get("local_files_only", False) for c in calls] == [True, False]
    assert all(c["revision"] == ("v9" if error == "revision" else None) for c in calls)
    assert all(c["allow_patterns"] == list(ALLOW_PATTERNS) for c in calls)


def test_fetch_downloads_only_config_tokenizer_and_safetensors(
    hf_cache, monkeypatch, clipseg_dir, tmp_path
):
    import fnmatch

    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_files = [
        "config.json",
        "model.safetensors",
        "pytorch_model.bin",
        "tf_model.h5",
        "flax_model.msgpack",
        "model.ckpt",
        "preprocessor_config.json",
        "tokenizer.json",
        "merges.txt",
        "modeling_x.py",
    ]
    fetched = [f for f in repo_files if any(fnmatch.fnmatch(f, p) for p in ALLOW_PATTERNS)]
    assert fetched == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "tokenizer.json",
        "merges.txt",
    ]
    pickle_only = tmp_path / "pickle-only"
    pickle_only.mkdir()
    (pickle_only / "config.json").write_text('{"model_type": "clipseg"}')

    def fake_snapshot_download(repo_id, **kwargs):
        if kwargs.get("local_files_only"):
            raise LocalEntryNotFoundError("not cached")
        return str(clipseg_dir if repo_id == "org/good" else pickle_only)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    model = get_model("clipseg:org/good", device="cpu")
    assert isinstance(model, CLIPSegBackend)
    assert model.describe() == {"name": "clipseg", "id": "org/good", "revision": clipseg_dir.name}
    with pytest.raises(
        ValueError,
        match=r"'org/pickled' offers no .safetensors weights; .* refuses .* pass its revision: "
        r"clipseg:org/pickled@refs/pr/N",
    ):
        get_model("clipseg:org/pickled", device="cpu")


def test_model_id_loads_from_the_cache_with_no_network(hf_cache, offline, clipseg_dir):
    from napari_llmseg.backends.registry import model_info

    assert not model_info("clipseg").available_offline
    # the default is pinned to a commit: found in the cache without reading refs/
    model_id, commit = CLIPSEG_ID.split("@")
    put_in_cache(hf_cache, model_id, commit, folder=clipseg_dir, ref="unrelated")
    assert model_info("clipseg").available_offline
    model = get_model("clipseg", device="cpu")
    assert model.describe() == {"name": "clipseg", "id": model_id, "revision": commit}
    # a plain id follows refs/main, ID@BRANCH follows refs/BRANCH
    put_in_cache(hf_cache, "org/model", "b" * 40, folder=clipseg_dir)
    put_in_cache(hf_cache, "org/other", "c" * 40, folder=clipseg_dir, ref="v2")
    assert get_model("clipseg:org/model", device="cpu").describe()["revision"] == "b" * 40
    assert get_model("clipseg:org/other@v2", device="cpu").describe()["revision"] == "c" * 40
    with pytest.raises(
        WeightsUnavailableError,
        match=unavailable_pattern("clipseg", "org/model@v2", "they are not cached"),
    ) as err:
        get_model("clipseg:org/model@v2", device="cpu")
    assert "`hf download org/model --revision v2 --local-dir DIR`" in str(err.value)
    with pytest.raises(WeightsUnavailableError, match=r"weights 'org/model@refs/pr/5'"):
        get_model("clipseg:org/model@refs/pr/5", device="cpu")  # an id, not a folder path
    # a cached snapshot without weights (an interrupted download) is not "available"
    snapshot = hf_cache / f"models--{model_id.replace('/', '--')}" / "snapshots" / commit
    (snapshot / "model.safetensors").unlink()
    assert not model_info("clipseg").available_offline
    with pytest.raises(WeightsUnavailableError, match="not cached and offline mode is on"):
        get_model("clipseg", device="cpu")


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        (
            "clipseg:./no/such/dir",
            ValueError,
            r"clipseg model folder './no/such/dir' does not exist",
        ),
        ("clipseg:a/b/c", ValueError, r"clipseg model folder 'a/b/c' does not exist"),
        (
            "clipseg:bad id!",
            ValueError,
            r"bad clipseg model 'bad id!': expected a Hugging Face model id such as "
            r"'CIDAS/clipseg-rd64-refined@325a8.*' \(optionally ID@REVISION\) or the path of a "
            r"local model folder",
        ),
        ("clipseg:org/name@", ValueError, r"bad clipseg model 'org/name@'"),
        ("sam3:--x--", ValueError, r"bad sam3 model '--x--'"),
    ],
)
def test_bad_specs(spec, error, message):
    with pytest.raises(error, match=message):
        get_model(spec, device="cpu")


# ------------------------------------------------------------------------------------------
# Safety: safetensors only, never remote code


def test_pickle_only_and_remote_code_folders_are_refused(clipseg_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(clipseg_dir, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(
        ValueError, match=r"only pickle-based weights \(pytorch_model.bin\); they are refused"
    ):
        get_model(f"clipseg:{folder}", device="cpu")
    (folder / "pytorch_model.bin").rename(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(
        ValueError,
        match=r"asks to run its own code \(auto_map in config.json: \['AutoModel'\]\); "
        "napari-llmseg never enables trust_remote_code",
    ):
        get_model(str(folder), device="cpu")


def test_every_load_uses_safetensors_and_never_remote_code(
    monkeypatch, clipseg_dir, sam3_dir, grounded_dir
):
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    seen: list[tuple[str, dict]] = []
    model_load = PreTrainedModel.from_pretrained.__func__  # type: ignore[attr-defined]
    tok_load = PreTrainedTokenizerBase.from_pretrained.__func__  # type: ignore[attr-defined]

    def spy_model(cls, *args, **kwargs):
        seen.append((cls.__name__, kwargs))
        return model_load(cls, *args, **kwargs)

    def spy_tokenizer(cls, *args, **kwargs):
        seen.append((cls.__name__, kwargs))
        return tok_load(cls, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(spy_model))
    monkeypatch.setattr(PreTrainedTokenizerBase, "from_pretrained", classmethod(spy_tokenizer))
    for folder in (clipseg_dir, sam3_dir, grounded_dir):
        get_model(str(folder), device="cpu")
    names = [name for name, _ in seen]
    assert names == [
        "CLIPSegForImageSegmentation",
        "CLIPTokenizer",
        "Sam3Model",
        "CLIPTokenizer",
        "GroundingDinoForObjectDetection",
        "SamModel",
        "BertTokenizer",
    ]
    for name, kwargs in seen:
        assert kwargs.get("trust_remote_code", False) is False, name
        assert kwargs["local_files_only"] is True, name
        if not name.endswith("Tokenizer"):
            assert kwargs["use_safetensors"] is True and kwargs["dtype"] == torch.float32, name


# ------------------------------------------------------------------------------------------
# Processor settings and preprocessing


def test_image_settings_come_from_the_saved_processor_config(tmp_path, clipseg_dir):
    settings = ImageSettings.from_folder(clipseg_dir, ("ViTImageProcessorPil",))
    assert settings.size == {"height": 64, "width": 64} and settings.resample == "bilinear"
    # Hub repositories hold preprocessor_config.json; it wins over processor_config.json
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "size": {"shortest_edge": 800, "longest_edge": 1333},
                "image_mean": [0.1] * 3,
                "image_std": [0.2] * 3,
                "resample": 3,
                "do_rescale": False,
            }
        )
    )
    s = ImageSettings.from_folder(folder)
    assert s.resample == "bicubic" and s.rescale_factor is None and s.mean == (0.1, 0.1, 0.1)
    assert s.resized_shape(800, 800) == (800, 800) and s.edge == 800
    assert s.resized_shape(400, 1000) == (533, 1333)  # longest edge capped at 1333
    assert s.resized_shape(1000, 500) == (1333, 666)
    assert s.resized_shape(500, 700) == (800, 1120)
    # keys the file leaves out take the processor class's defaults
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3}))
    s = ImageSettings.from_folder(folder, ("ViTImageProcessorPil",))
    assert s.size == {"height": 224, "width": 224} and s.std == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match=r"does not give size, image_std"):
        ImageSettings.from_folder(folder)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no preprocessor_config.json"):
        ImageSettings.from_folder(folder)


def test_prepare_uses_whole_input_stats_not_the_window():
    s = ImageSettings(
        size={"height": 4, "width": 4},
        resample="bilinear",
        rescale_factor=1 / 255,
        mean=(0.5, 0.25, 0.0),
        std=(0.5, 0.5, 1.0),
    )
    stats = IntensityStats(low=(100.0,), high=(1100.0,))
    raw = np.full((1, 1, 4, 4), 600.0, np.float32)  # mid-range: 0.5 whatever the window holds
    raw[0, 0, 0, 0], raw[0, 0, 0, 1] = 5000.0, -50.0  # clipped to 1 and 0
    px = s.prepare(raw, stats).numpy()
    assert px.shape == (1, 3, 4, 4) and px.dtype == np.float32
    np.testing.assert_allclose(px[0, :, 1, 1], [0.0, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(px[0, :, 0, 0], [1.0, 1.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(px[0, :, 0, 1], [-1.0, -0.5, 0.0], atol=1e-6)
    # RGB keeps its colour balance: one range for all channels
    rgb_stats = IntensityStats(low=(0.0, 10.0, 20.0), high=(200.0, 255.0, 100.0))
    rgb = np.zeros((1, 3, 4, 4), np.float32)
    rgb[0, :] = np.array([51.0, 102.0, 255.0])[:, None, None]
    px = s.prepare(rgb, rgb_stats).numpy()
    np.testing.assert_allclose(
        px[0, :, 2, 2], [(0.2 - 0.5) / 0.5, (0.4 - 0.25) / 0.5, 1.0], atol=1e-6
    )


def test_prepare_resizes_and_pads_like_sam():
    s = ImageSettings(
        size={"longest_edge": 32},
        resample="bilinear",
        rescale_factor=1 / 255,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        pad_size=(32, 32),
    )
    stats = IntensityStats(low=(0.0,), high=(1.0,))
    px = s.prepare(np.ones((2, 1, 40, 20), np.float32), stats).numpy()
    assert px.shape == (2, 3, 32, 32) and s.resized_shape(40, 20) == (32, 16)
    from transformers import SamImageProcessorPil

    for shape in [(40, 20), (33, 47), (1000, 999), (7, 64)]:
        expected = SamImageProcessorPil()._get_preprocess_shape(shape, 32)
        assert s.resized_shape(*shape) == expected
    assert np.allclose(px[..., :16], 1.0) and np.all(px[..., 16:] == 0.0)


# ------------------------------------------------------------------------------------------
# Devices, dtypes and out-of-memory backoff


def test_resolve_dtype():
    assert resolve_dtype(None) is None and resolve_dtype("bf16") is torch.bfloat16
    assert (
        resolve_dtype("torch.float16") is torch.float16
        and resolve_dtype(torch.float32) is torch.float32
    )
    with pytest.raises(
        ValueError, match=r"unknown dtype 'int8'; expected float32, float16 or bfloat16"
    ):
        resolve_dtype("int8")


def test_autocast_only_on_gpus():
    import contextlib

    assert isinstance(hf.autocast(torch.device("cpu"), None), contextlib.nullcontext)
    assert isinstance(hf.autocast(torch.device("mps"), torch.float32), contextlib.nullcontext)
    ctx = hf.autocast(torch.device("mps"), None)
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.float16


def test_run_in_chunks_halves_on_oom_and_remembers():
    backend = SimpleNamespace(name="fake", batch_limit=None)
    calls: list[tuple[int, int]] = []

    def fn(start, stop):
        calls.append((start, stop))
        if stop - start > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return list(range(start, stop))

    out = run_in_chunks(backend, 8, fn)  # type: ignore[arg-type]
    assert [x for chunk in out for x in chunk] == list(range(8))
    assert calls == [(0, 8), (0, 4), (0, 2), (2, 4), (4, 6), (6, 8)]
    assert backend.batch_limit == 2
    calls.clear()
    run_in_chunks(backend, 3, fn)  # type: ignore[arg-type]
    assert calls == [(0, 2), (2, 3)]  # starts at the remembered size


def test_dtype_is_applied_to_the_weights(clipseg_dir, stats):
    model = get_model(f"clipseg:{clipseg_dir}", device="cpu", dtype="bfloat16")
    assert model.model.dtype == torch.bfloat16
    raw = np.random.default_rng(0).uniform(0, 1200, (1, 1, 64, 64)).astype(np.float32)
    out = model.predict(model.preprocess(raw, stats), model.encode_prompts(["water"]))
    assert out.dtype == np.float32 and out.shape == (1, 1, 64, 64) and np.isfinite(out).all()


def test_resolve_source_of_a_folder_is_local(clipseg_dir):
    src = resolve_source(str(clipseg_dir), backend="clipseg", default_id="x/y")
    assert src.folder == Path(clipseg_dir) and src.model_id is None
    assert src.describe() == {"folder": str(clipseg_dir)}
