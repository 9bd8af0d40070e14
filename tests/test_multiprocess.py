"""Two real processes on JAX's distributed runtime equal one process.

Two workers (tests/_multiprocess_worker.py) join through
``jax.distributed.initialize`` with a coordinator on 127.0.0.1 and JAX's CPU
collectives (gloo), 2 CPU devices each, and run densax's sharded computations
over the global 4-device mesh; a third worker runs the same code in one process
with 4 local devices (the reference). Each worker writes what it sees; the
parent compares.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import compile_flags

WORKER = Path(__file__).with_name("_multiprocess_worker.py")
TIMEOUT = 480  # seconds; about 40 s on an idle 2-core machine


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(out, process_id, num_processes, port):
    env = dict(os.environ)
    # The suite's compile-time flags; the worker sets its own device count.
    env["XLA_FLAGS"] = compile_flags()
    env["JAX_PLATFORMS"] = "cpu"
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(WORKER), str(out), str(process_id)]
    cmd += [str(num_processes), str(port)]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: dict of results} for process 0, process 1 and the single process."""
    tmp = tmp_path_factory.mktemp("multiprocess")
    port = _free_port()
    procs = {
        "p0": _start(tmp / "p0.npz", 0, 2, port),
        "p1": _start(tmp / "p1.npz", 1, 2, port),
        "single": _start(tmp / "single.npz", 0, 1, 0),
    }
    failed = {}
    for name, proc in procs.items():
        try:
            log, _ = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for other in procs.values():
                other.kill()
            pytest.fail(f"worker {name} timed out after {TIMEOUT} s")
        if proc.returncode != 0:
            failed[name] = log[-3000:]
    if failed:
        pytest.fail(f"workers failed: {failed}")
    return {name: dict(np.load(tmp / f"{name}.npz")) for name in procs}


def _check(runs, prefix, rtol, atol):
    ref = runs["single"]
    names = [k for k in ref if k.startswith(prefix)]
    assert names
    for name in names:
        for proc in ("p0", "p1"):
            if name in runs[proc]:
                np.testing.assert_allclose(
                    runs[proc][name], ref[name], rtol=rtol, atol=atol, err_msg=name
                )


def test_two_processes_match_one(runs):
    # float64; the collectives sum the same 4 partial sums in another order.
    _check(runs, "gmm_", rtol=1e-10, atol=1e-12)
    _check(runs, "kde_", rtol=1e-12, atol=0)
    _check(runs, "sinkhorn_", rtol=1e-9, atol=1e-10)
    assert int(runs["p0"]["gmm_n_iter"]) == int(runs["single"]["gmm_n_iter"])
    # Sinkhorn's first potential stays sharded: each process holds its half.
    halves = {k for k in runs["p0"] if k.startswith("sinkhorn_f")}
    halves |= {k for k in runs["p1"] if k.startswith("sinkhorn_f")}
    assert halves == {k for k in runs["single"] if k.startswith("sinkhorn_f")}
    assert not (set(runs["p0"]) & set(runs["p1"]) & halves)


def test_two_processes_generative_train(runs):
    assert "train_error" not in runs["p0"], runs["p0"].get("train_error")
    # float32 networks, 6 steps (as tests/test_generative_train.py).
    _check(runs, "train_", rtol=1e-5, atol=1e-5)
