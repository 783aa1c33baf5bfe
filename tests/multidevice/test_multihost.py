"""Multi-host: two CPU processes with 2 devices each run one sharded pp.infer together
(jax.distributed on localhost) and get the result of one process with 4 devices."""

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.multidevice
WORKER = Path(__file__).with_name("multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    port = str(_free_port())
    ref = tmp_path / "single.npz"
    subprocess.run([sys.executable, str(WORKER), "0", "1", port, str(ref)], check=True, timeout=600)
    outs = [tmp_path / f"p{i}.npz" for i in range(2)]
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), str(i), "2", port, str(outs[i])],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    single = np.load(ref)
    for out in outs:  # every process holds the whole result
        got = np.load(out)
        assert int(got["process_count"]) == 2
        np.testing.assert_allclose(got["w"], single["w"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got["lp"], single["lp"], rtol=1e-6, atol=1e-6)
