"""What a user sees for a mistyped or refused ``rlft`` command: one line naming what is wrong and
the closest known names, exit status 2, and no run folder left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlft.common.suggest import close_matches, did_you_mean

# (arguments, what the one line must say)
CASES = {
    "nested experiment": (["experiment=o2o/wsrl/hoper-medium"],
                          ["no experiment 'o2o/wsrl/hoper-medium'", "did you mean 'o2o/wsrl/hopper-medium-local'",
                           "rlft --list"]),
    "group option": (["agent=sacc"], ["agent=sacc: no such option of group 'agent'", "did you mean 'sac'"]),
    "key": (["trainer.onlinesteps=5"], ["unknown key 'trainer.onlinesteps'", "did you mean 'trainer.online_steps'",
                                        "--cfg job"]),
    "top-level key": (["sede=3"], ["unknown key 'sede'", "did you mean 'seed'"]),
    "task": (["env.task=hoper"], ["unknown task 'hoper'", "did you mean 'hopper'"]),
    "recipe and agent": (["experiment=o2o/wsrl/hopper-medium-local", "agent=iql"],
                         ["agent=iql: experiment 'o2o/wsrl/hopper-medium-local' uses recipe 'wsrl'",
                          "recipe.allow_other_agents=true"]),
    "init_from a folder that is no run": (["init_from=."], ["init_from=.: neither a run folder"]),
    "custom env module": (["env.task=no_such_module:MyEnv"], ["cannot import module 'no_such_module'"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_refused_start_says_one_line_and_leaves_nothing(tmp_path, case):
    args, said = CASES[case]
    proc = subprocess.run([sys.executable, "-m", "rlft.scripts.main", *args], cwd=tmp_path, env=os.environ,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rlft: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for text in said:
        assert text in errors[0], (text, errors[0])
    assert "Traceback" not in proc.stderr and "+trainer" not in proc.stderr and "Available options" not in proc.stderr
    assert list(tmp_path.iterdir()) == [], "a refused start leaves no run folder"


def test_an_added_key_is_checked_by_its_section_not_by_the_override_check(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlft.scripts.main", "+trainer.onlinesteps=5"], cwd=tmp_path,
                          env=os.environ, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "onlinesteps" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_suggestions_rank_close_names_and_stay_silent_for_far_ones():
    assert close_matches("hoper", ["hopper", "halfcheetah", "walker2d"]) == ["hopper"]
    assert close_matches("o2o/iql/hopper-medium", ["o2o/iql/hopper-medium-local", "o2o/iql/walker2d-medium-local",
                                                   "llm/ppo/numberline"])[0] == "o2o/iql/hopper-medium-local"
    assert did_you_mean("zzzz", ["hopper"]) == ""
    assert did_you_mean("expectle", ["expectile", "beta"], prefix="agent.") == " (did you mean 'agent.expectile'?)"
