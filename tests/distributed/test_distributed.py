"""The engine on Dask's distributed scheduler: identical output, resume, failures, cancel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
import zarr

from napari_llmseg import segment
from tests.conftest import ROOT, paced_model, result_arrays, smooth_model, write_zarr

pytestmark = pytest.mark.slow

KW = dict(roi_size=64, overlap=0.25, batch_size=4, chunks=64)


@pytest.fixture(scope="module")
def client():
    from distributed import Client
    from napari_llmseg.distributed import local_cluster

    cluster = local_cluster(2)  # what scheduler="local:2" makes
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist") / "in.zarr"
    rng = np.random.default_rng(3)
    write_zarr(path, rng.normal(size=(12, 160, 200)).astype(np.float32), (4, 80, 100))
    return path


def single_thread_reference(src, out, model, prompts=("a", "b"), **kw):
    """The single-process run, with the same torch thread count as the workers (1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return segment(src, list(prompts), model=model, out=out, **{**KW, **kw})
    finally:
        torch.set_num_threads(threads)


def same_store(a, b):
    gb = zarr.open_group(b, mode="r")
    xs, ys = result_arrays(a), result_arrays(b)
    assert sorted(xs) == sorted(ys) and "labels/segmentation/0" in xs and "0" in xs
    for name, x in xs.items():
        y = ys[name]
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y), f"{name} differs"  # bit-identical, not just close
    assert np.asarray(gb["napari_llmseg/chunks_done"][...]).all()


def test_identical_to_single_process(client, volume, tmp_path):
    ref = single_thread_reference(volume, tmp_path / "single.zarr", smooth_model)
    calls = []
    res = segment(volume, ["a", "b"], model=smooth_model, out=tmp_path / "dist.zarr",
                  scheduler=client, progress=lambda d, t: calls.append((d, t)), **KW)  # fmt: skip
    assert res.complete and res.info.windows == ref.info.windows == calls[-1][0] == calls[-1][1]
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    same_store(tmp_path / "single.zarr", tmp_path / "dist.zarr")


def test_3d_windows_identical_to_single_process(client, tmp_path):
    """3D windows, per-axis overlap, sigma_scale and cval reach the workers (in the plan and
    the task); tasks split the slabs of chunks along Z, windows on their borders run in both."""
    src = tmp_path / "vol.zarr"
    rng = np.random.default_rng(4)
    write_zarr(src, rng.normal(size=(40, 96, 80)).astype(np.float32), (8, 96, 80))
    kw = dict(roi_size=(12, 48, 48), overlap=(0.5, 0.25, 0.25), sigma_scale=(0.2, 0.1, 0.125),
              cval=-2.0, chunks=16)  # fmt: skip
    ref = single_thread_reference(src, tmp_path / "single.zarr", smooth_model, **kw)
    res = segment(src, ["a", "b"], model=smooth_model, out=tmp_path / "dist.zarr",
                  scheduler=client, **{**KW, **kw})  # fmt: skip
    assert res.complete and res.info.windows > ref.info.windows  # border windows run twice
    group = zarr.open_group(tmp_path / "dist.zarr", mode="r")
    assert group["labels/segmentation/0"].chunks == (16, 16, 16)
    same_store(tmp_path / "single.zarr", tmp_path / "dist.zarr")


def test_named_classes_reach_the_workers(client, tmp_path):
    """A model with named classes on a cluster: the workers get each prompt's class channels
    and merge them as the single process does."""
    src = tmp_path / "vol.zarr"
    write_zarr(src, np.random.default_rng(5).normal(size=(24, 64, 80)).astype(np.float32),
               (8, 64, 80))  # fmt: skip
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 4, 3, padding=1).eval()
    kw = dict(model=net, class_names={1: "liver", 2: "kidney_right", 3: "kidney_left"},
              roi_size=(8, 32, 32), chunks=16)  # fmt: skip
    ref = segment(src, ["kidneys", "liver"], out=tmp_path / "single.zarr", **{**KW, **kw})
    res = segment(src, ["kidneys", "liver"], out=tmp_path / "dist.zarr", scheduler=client,
                  **{**KW, **kw})  # fmt: skip
    assert res.complete and res.metadata["prompt_classes"] == ref.metadata["prompt_classes"]
    np.testing.assert_array_equal(np.asarray(res.labels), np.asarray(ref.labels))
    np.testing.assert_allclose(np.asarray(res.probabilities), np.asarray(ref.probabilities),
                               atol=1 / 255)  # fmt: skip
    assert 0 < (np.asarray(res.labels) == 1).mean() < 1


def test_named_model_loaded_on_workers_with_shipped_prompts(client, volume, tmp_path):
    import tifffile

    vol = tifffile.imread(ROOT / "sample_data" / "nuclei.tif")[26:30]
    src = write_zarr(tmp_path / "n.zarr", vol, (2, 128, 128))
    ref = single_thread_reference(
        src, tmp_path / "s.zarr", None, prompts=("nuclei",), roi_size=128
    )
    res = segment(
        src, "nuclei", out=tmp_path / "d.zarr", scheduler=client, **{**KW, "roi_size": 128}
    )
    assert res.complete and res.metadata["model"]["name"] == "llmseg-tiny"
    same_store(tmp_path / "s.zarr", tmp_path / "d.zarr")
    loaded = client.run(
        lambda: sorted(k[0] for k in __import__("napari_llmseg.distributed").distributed._MODELS)
    )
    # loaded once on every worker, before any task (even a worker that runs none of them)
    assert list(loaded.values()) == [["None"], ["None"]]
    del ref


def test_cancel_stops_and_resume_completes(client, volume, tmp_path):
    cancel = threading.Event()
    out = tmp_path / "o.zarr"

    def progress(done: int, total: int) -> None:
        # cancel part way, once at least one task has finished its chunks
        if done >= 20 and np.asarray(zarr.open_group(out)["napari_llmseg/chunks_done"][...]).any():
            cancel.set()

    part = segment(volume, ["a", "b"], model=paced_model, out=out, scheduler=client, cancel=cancel,
                   progress=progress, **KW)  # fmt: skip
    assert not part.complete
    done = np.asarray(zarr.open_group(out)["napari_llmseg/chunks_done"][...])
    assert done.any() and not done.all()
    rest = segment(volume, ["a", "b"], model=paced_model, out=out, scheduler=client, resume=True,
                   **KW)  # fmt: skip
    assert rest.complete and rest.info.total < part.info.total
    single_thread_reference(volume, tmp_path / "s.zarr", paced_model)
    same_store(tmp_path / "s.zarr", out)


def test_killed_worker_is_recovered(volume, tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    monkeypatch.setenv("LLMSEG_TEST_PACE", "0.02")
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster)
    try:
        client.run(lambda: os.environ.__setitem__("LLMSEG_TEST_PACE", "0.02"))
        pids = list(client.run(os.getpid).values())
        killed = []

        def progress(done, total):
            if done >= 16 and not killed:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

        res = segment(volume, ["a", "b"], model=paced_model, out=tmp_path / "k.zarr",
                      scheduler=client, progress=progress, **KW)  # fmt: skip
        assert killed and res.complete
    finally:
        client.close()
        cluster.close()
    monkeypatch.setenv("LLMSEG_TEST_PACE", "0")
    single_thread_reference(volume, tmp_path / "s.zarr", paced_model)
    same_store(tmp_path / "s.zarr", tmp_path / "k.zarr")


KILL_CLIENT = """
import sys
sys.path.insert(0, {root!r})
from tests.conftest import paced_model
from napari_llmseg import segment
if __name__ == "__main__":
    segment({src!r}, ["a", "b"], model=paced_model, out={out!r}, scheduler="local:2",
            roi_size=64, overlap=0.25, batch_size=4, chunks=64)
"""


def test_killed_client_run_resumes(client, volume, tmp_path):
    out = tmp_path / "c.zarr"
    script = tmp_path / "run.py"
    script.write_text(KILL_CLIENT.format(root=str(ROOT), src=str(volume), out=str(out)))
    env = {**os.environ, "LLMSEG_TEST_PACE": "0.05"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, start_new_session=True)
    done = 0
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if (out / "napari_llmseg" / "chunks_done" / "zarr.json").exists():
                marks = zarr.open_array(out / "napari_llmseg" / "chunks_done", mode="r")
                done = int(np.asarray(marks[...]).sum())
                if done >= 3:
                    break
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the client and its local cluster, at once
        proc.wait()
    total = int(np.prod(zarr.open_array(out / "napari_llmseg" / "chunks_done", mode="r").shape))
    assert 0 < done < total
    resumed = segment(volume, ["a", "b"], model=paced_model, out=out, resume=True,
                      scheduler=client, **KW)  # fmt: skip
    assert resumed.complete and 0 < resumed.info.total
    single_thread_reference(volume, tmp_path / "s.zarr", paced_model)
    same_store(tmp_path / "s.zarr", out)


def test_workers_import_torch_before_any_task_arrives(volume, tmp_path, monkeypatch):
    """A task's arguments hold torch tensors (the prompt encodings). Unpickled on a worker's
    event loop while its task thread imported torch (loading the model), they failed with
    KeyError: 'torch' and cut the worker off; so every worker imports torch first."""
    from distributed import Client
    from napari_llmseg.distributed import local_cluster

    def has_torch():
        return "torch" in sys.modules

    with local_cluster(2) as cluster, Client(cluster) as fresh:
        assert not any(fresh.run(has_torch).values())  # a new worker has not imported it
        seen = []
        submit = fresh.submit

        def recording_submit(fn, *args, **kwargs):
            seen.append((fn.__name__, set(fresh.run(has_torch).values())))
            return submit(fn, *args, **kwargs)

        monkeypatch.setattr(fresh, "submit", recording_submit)
        res = segment(volume, "nuclei", out=tmp_path / "o.zarr", scheduler=fresh, **KW)
    assert res.complete
    assert seen and {name for name, _ in seen} == {"_preload", "run_task"}
    assert all(state == {True} for _, state in seen)


def test_unreachable_paths_are_reported(client, volume, tmp_path):
    from napari_llmseg.distributed import _prepare_worker

    assert _prepare_worker(str(volume), str(tmp_path)) is None
    assert "does not exist on this worker" in _prepare_worker("/nowhere/x.zarr", str(tmp_path))
    assert "is not reachable from this worker" in _prepare_worker(None, "/nowhere/out.zarr")
    with pytest.raises(ValueError, match="scheduler= needs out="):
        segment(volume, "a", model=smooth_model, scheduler=client, **KW)
    with pytest.raises(ValueError, match="expected 'local:N' with N >= 1"):
        segment(
            volume, "a", model=smooth_model, scheduler="local:0", out=tmp_path / "x.zarr", **KW
        )
    with pytest.raises(ValueError, match="scheduler must be 'local:N', a scheduler address"):
        segment(volume, "a", model=smooth_model, scheduler=42, out=tmp_path / "y.zarr", **KW)


def test_cli_workers(volume, tmp_path, capsys):
    from napari_llmseg.cli import main

    out = str(tmp_path / "w.zarr")
    args = ["segment", str(volume), "-p", "nuclei", "-o", out, "--roi", "64", "--workers", "1"]
    code = main([*args, "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert zarr.open_group(tmp_path / "w.zarr").attrs["napari_llmseg"]["status"] == "complete"
    assert (
        main(["segment", str(volume), "-p", "x", "-o", str(tmp_path / "z.zarr"), "--workers", "0"])
        == 2
    )
    assert "expected 'local:N' with N >= 1 workers" in capsys.readouterr().err


def test_local_clusters_leave_malloc_at_glibc_default(client):
    """Dask's MALLOC_TRIM_THRESHOLD_ makes every large temporary a fresh mmap (docs/scaling.md)."""
    from distributed import Client, LocalCluster
    from napari_llmseg.distributed import local_cluster

    assert set(client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values()) == {None}
    # a default Dask cluster started first leaves its setting in this process's environment
    with LocalCluster(n_workers=1, processes=True, dashboard_address=None):
        assert os.environ.get("MALLOC_TRIM_THRESHOLD_") == "65536"
    with local_cluster(1) as cluster, Client(cluster) as c:
        values = c.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert list(values.values()) == [None]


def test_local_cluster_workers_use_one_malloc_arena(client):
    """Tasks run on executor threads, whose own arenas would hand every batch's buffers back
    to the kernel (distributed.ARENAS)."""
    assert list(client.run(lambda: os.environ.get("MALLOC_ARENA_MAX")).values()) == ["1", "1"]


def test_local_cluster_workers_do_not_run_the_dashboard_profiler(client):
    import dask

    enabled = client.run(lambda: dask.config.get("distributed.worker.profile.enabled"))
    assert list(enabled.values()) == [False, False]
    # and the workers really keep no profile
    samples = client.run(lambda dask_worker: len(dask_worker.profile_history))
    assert list(samples.values()) == [0, 0]


def test_local_cluster_event_loops_wake_up_every_half_second(client):
    """Dask's 20 ms tick and 100 ms memory monitor woke the workers' event loops, each time
    taking the core from a model thread (distributed.WORKER_CONFIG)."""

    def intervals(dask_worker):
        cbs = dask_worker.periodic_callbacks
        return cbs["tick"].callback_time, cbs["memory_monitor"].callback_time

    assert list(client.run(intervals).values()) == [(500.0, 500.0)] * 2
    assert client.cluster.scheduler.periodic_callbacks["tick"].callback_time == 500.0
    for nanny in client.cluster.workers.values():
        assert nanny.periodic_callbacks["memory_monitor"].callback_time == 500.0


def test_task_regions_hold_whole_plane_groups():
    from napari_llmseg.distributed import task_regions
    from napari_llmseg.engine.windows import WindowPlan

    plan = WindowPlan((32, 256, 256), (64, 64), 0.25, (1, 128, 128))
    for group, workers in ((4, 2), (3, 2), (1, 4), (8, 1)):
        regions = task_regions(plan, workers, group)
        starts = [r[0].start for r in regions]
        stops = [r[0].stop for r in regions]
        assert starts[0] == 0 and stops[-1] == 32
        assert all(a == b for a, b in zip(stops[:-1], starts[1:], strict=True))
        assert all(start % group == 0 for start in starts), (group, starts)
