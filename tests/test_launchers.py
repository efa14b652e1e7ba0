"""Where comparison runs execute: local slots pinned to GPUs, and Ray tasks whose results equal the local
launcher's, with and without a shared filesystem."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from test_compare import TINY, write

from capslab.compare import launch as launch_mod
from capslab.compare import load_compare, run_compare
from capslab.compare.launch import local_slots
from capslab.compare.runner import prepare
from capslab.errors import CapslabError


def test_slots_pin_runs_to_gpus_and_pack_k_per_gpu():
    slots = local_slots(None, 2, ["0", "1", "2"], cpus=12)
    assert len(slots) == 6  # --jobs defaults to GPUs x runs-per-gpu
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "1", "2", "0", "1", "2"]
    assert {s.env["OMP_NUM_THREADS"] for s in slots} == {"2"}  # 12 CPUs over 6 jobs
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in local_slots(4, 1, ["5", "7"], cpus=2)] == ["5", "7", "5", "7"]
    cpu = local_slots(2, 1, [], cpus=2)  # a CPU machine: threads split as before
    assert len(cpu) == 2 and all("CUDA_VISIBLE_DEVICES" not in s.env and s.env["OMP_NUM_THREADS"] == "1" for s in cpu)
    with pytest.raises(CapslabError, match="--runs-per-gpu 0"):
        local_slots(None, 0, ["0"], cpus=2)


def test_visible_gpus_follow_the_parents_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert launch_mod.visible_gpus() == ["3", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert launch_mod.visible_gpus() == []


def test_local_launcher_pins_gpu_runs_and_leaves_cpu_and_indexed_runs_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(launch_mod, "visible_gpus", lambda: ["0", "1"])
    seen = {}
    monkeypatch.setattr(launch_mod, "launch", lambda run_dir, env: seen.setdefault(run_dir.name, env) and 0)
    dirs = [tmp_path / name for name in ("auto", "cpu", "cuda1")]
    done = []
    devices = ["auto", "cpu", "cuda:1"]
    slots = launch_mod.slots_for(devices, None, 1)
    assert len(slots) == 2  # one per GPU
    launch_mod.run_local(dirs, devices, slots, lambda d, code, place: done.append(d.name))
    assert sorted(done) == ["auto", "cpu", "cuda1"]
    assert seen["auto"]["CUDA_VISIBLE_DEVICES"] in ("0", "1")
    assert "CUDA_VISIBLE_DEVICES" not in seen["cpu"] and "CUDA_VISIBLE_DEVICES" not in seen["cuda1"]


def comparison(tmp_path):
    return write(
        tmp_path,
        "base: quickstart\nset: " + json.dumps(TINY) + "\nvariants: [{label: a}, {label: b, routing.iterations: 1}]"
        "\nseeds: [0, 1]\n",
    )


def results(out):
    runs = json.loads((out / "results.json").read_text())["runs"]
    return {(r["variant"], r["seed"]): (r["test_error"], r["params"], r["epochs"]) for r in runs}


def kill_first_worker(under: Path, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first training process that starts on a run under ``under`` (a lost worker)."""
    while not stop.is_set() and not killed:
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                args = cmdline.read_bytes().split(b"\0")
            except OSError:
                continue
            if b"capslab.compare.worker" in args and any(str(under).encode() in a for a in args):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
                killed.append(int(cmdline.parent.name))
                return
        time.sleep(0.05)


def test_ray_runs_equal_the_local_launchers_and_a_killed_worker_is_retried(tmp_path):
    ray = pytest.importorskip("ray")
    path = comparison(tmp_path)
    runs = load_compare(path)[:3]  # a 3-run comparison
    cores = os.cpu_count() or 1
    run_compare(runs, tmp_path / "local", jobs=cores)  # one thread per run, as each Ray task below
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_first_worker, args=(tmp_path / "ray", killed, stop))
    killer.start()
    try:
        run_compare(runs, tmp_path / "ray", launcher="ray", cpus_per_run=1)
    finally:
        stop.set()
        killer.join()
        ray.shutdown()
    assert killed, "no training process was seen to kill"
    assert len(results(tmp_path / "ray")) == 3  # the killed run was retried to the end
    assert results(tmp_path / "ray") == results(tmp_path / "local")
    assert not list((tmp_path / "ray").glob(".capslab-ray-*"))  # the shared-filesystem marker is removed


def test_a_run_ships_to_a_worker_without_the_output_directory_and_back(tmp_path):
    from capslab.compare.ray_launcher import pack, train_task, unpack

    run = load_compare(comparison(tmp_path))[0]
    run_dir = prepare(run, tmp_path / "out")
    code, payload = train_task(str(run_dir), str(tmp_path / "no-such-marker"), pack(run_dir), 1)
    assert code == 0 and payload is not None
    assert not (run_dir / "summary.json").exists()  # trained elsewhere, nothing written here yet
    unpack(payload, run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 1 and (run_dir / "metrics.jsonl").exists() and (run_dir / "checkpoints").is_dir()


def test_ray_without_ray_installed_is_one_line(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    runs = load_compare(comparison(tmp_path))[:1]
    with pytest.raises(CapslabError, match=r"pip install 'capslab\[ray\]'"):
        run_compare(runs, tmp_path / "out", launcher="ray")
    with pytest.raises(CapslabError, match="--launcher 'slurm'"):
        run_compare(runs, tmp_path / "out", launcher="slurm")
