"""The torch-free install of the runner: ``packaging/rlft-deploy`` installs ``rlft.deploy`` with
numpy and ONNX Runtime only, into a fresh virtual environment, where an export acts exactly as in
the full install.

It needs the package index (pip fetches setuptools to build, numpy and ONNX Runtime): without it
the test fails rather than skips, as CI has one. pip's own cache is used as usual, so a second run
downloads nothing; the environment itself lives in the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np

from conftest import REPO_ROOT
from rlft.deploy import DeployedPolicy
from test_deploy_safety import small_export

# run in the fresh environment with -I (no PYTHONPATH, user site or working directory on sys.path)
RUN = """
import sys
from importlib.metadata import version
from pathlib import Path
import numpy as np
try:
    import torch
except ImportError:
    pass
else:
    sys.exit("torch is importable in the fresh environment")
import rlft, rlft.deploy
from rlft.deploy import DeployedPolicy, DeployedVLA
export, observations, out = sys.argv[1:]
assert rlft.__file__ is None, "rlft is a namespace package (no rlft/__init__.py) in the torch-free install"
assert Path(rlft.deploy.__file__).is_relative_to(sys.prefix), rlft.deploy.__file__
policy = DeployedPolicy(export)
np.save(out, np.stack([policy.act(o) for o in np.load(observations)]))
print(version("rlft-deploy"))
"""


def run(*command: str | Path, cwd: Path) -> str:
    """A command's stdout; its whole output in the failure of one that fails (say, an unreachable
    index) or takes over 5 minutes."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_the_runner_installs_without_torch_and_acts_as_in_the_full_install(tmp_path: Path) -> None:
    export = small_export(tmp_path)
    observations = np.load(export / "golden.npz")["observation"]
    np.save(tmp_path / "observations.npy", observations)
    policy = DeployedPolicy(export)
    expected = np.stack([policy.act(o) for o in observations])
    # the two folders a clone has (the link rlft/deploy -> ../../../deploy kept), so nothing is built in the repository
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT / "deploy", source / "deploy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / "packaging" / "rlft-deploy", source / "packaging" / "rlft-deploy", symlinks=True,
                    ignore=shutil.ignore_patterns("build", "*.egg-info"))
    run(sys.executable, "-m", "venv", tmp_path / "venv", cwd=tmp_path)
    python = tmp_path / "venv" / "bin" / "python"
    # numpy and ONNX Runtime at the versions here, so the actions can be compared bit for bit
    run(python, "-m", "pip", "install", "--quiet", source / "packaging" / "rlft-deploy",
        f"numpy=={version('numpy')}", f"onnxruntime=={version('onnxruntime')}", cwd=tmp_path)
    installed = run(python, "-I", "-c", RUN, export, tmp_path / "observations.npy", tmp_path / "actions.npy",
                    cwd=tmp_path)
    assert installed.strip() == version("rlft"), "rlft-deploy's version is rlft's"
    np.testing.assert_array_equal(np.load(tmp_path / "actions.npy"), expected)
