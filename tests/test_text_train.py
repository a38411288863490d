"""The language-RL pipeline (experiment=llm/...): run folder, exact resume, ArCHer, wrong inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from rlft.agents import text_rollout
from rlft.agents.archer import ArCHer, ArcherConfig
from rlft.runtime.checkpoint import list_checkpoints, load_checkpoint
from rlft.runtime.text_train import TextExperiment


def llm_config(*overrides: str) -> DictConfig:
    with initialize_config_module("rlft.configs", version_base="1.3"):
        return compose("config", [
            "experiment=llm/ppo/numberline",
            "model.tiny={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1}",
            "sft.episodes=20", "sft.steps=5",
            "loop.num_envs=4", "loop.waves=1", "loop.iterations=3", "loop.eval_every=1", "loop.eval_episodes=4",
            "loop.eval_envs=4", "loop.checkpoint_every=1", "loop.keep_checkpoints=10", "progress=false",
            "generation.max_new_tokens=3", *overrides,
        ])


SMALL = {"grpo": ["text_method.rollout.group_size=2"],
         "archer": ["text_method.algorithm.warmup_updates=1", "text_method.algorithm.batch_size=8",
                    "text_method.algorithm.critic_epochs=3"],
         "filtered_bc": ["text_method.algorithm.batch_size=8"]}


@pytest.mark.parametrize("method", ["ppo", "grpo", "archer", "filtered_bc"])
def test_run_folder_holds_everything_a_user_needs(tmp_path: Path, method: str) -> None:
    overrides = [f"text_method={method}", *SMALL.get(method, [])]
    results = TextExperiment(llm_config(*overrides), tmp_path).run()
    for name in ("config.yaml", "metrics.csv", "eval.json", "learning_curve.png", "transcripts.jsonl",
                 "model/config.json", "model/tokenizer.json"):
        assert (tmp_path / name).exists(), name
    assert results["before"]["phase"] == "sft" and results["after"]["phase_step"] == 3
    assert results["step"] == 12 and 0.0 <= results["after"]["success_rate"] <= 1.0
    assert len(list_checkpoints(tmp_path / "checkpoints")) == 4  # after SFT, then every iteration


@pytest.mark.parametrize("overrides", [[], ["text_method=grpo", "text_method.rollout.group_size=2",
                                            "text_method.algorithm.kl_coef=0.04"]], ids=["ppo", "grpo-kl"])
def test_resume_continues_bit_for_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: list[str]) -> None:
    cfg = llm_config(*overrides)  # GRPO's KL reference (frozen after SFT) travels in the checkpoint
    full = TextExperiment(cfg, tmp_path / "full").run()
    calls = {"n": 0}
    original = text_rollout.collect_text

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr("rlft.runtime.text_train.collect_text", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        TextExperiment(cfg, tmp_path / "cut").run()
    monkeypatch.setattr("rlft.runtime.text_train.collect_text", original)
    resumed = TextExperiment(cfg, tmp_path / "cut")
    assert resumed.resume() and resumed.phase_step == 2
    assert resumed.run()["history"] == full["history"]
    a, b = (load_checkpoint(list_checkpoints(tmp_path / run / "checkpoints")[-1])["state"] for run in ("full", "cut"))
    assert all(torch.equal(a["policy"][k], b["policy"][k]) for k in a["policy"])
    if overrides:
        sft_end = load_checkpoint(list_checkpoints(tmp_path / "full" / "checkpoints")[0])["state"]["policy"]
        reference = b["rl"]["reference"]
        assert reference and all(torch.equal(reference[k], sft_end["model." + k]) for k in reference)
    with pytest.raises(FileExistsError, match="resume"):
        TextExperiment(cfg, tmp_path / "full").run()


def test_a_step_budget_ends_rl_at_the_first_iteration_that_reaches_it(tmp_path: Path) -> None:
    results = TextExperiment(llm_config("loop.iterations=10", "loop.max_steps=7", "loop.eval_every=5"), tmp_path).run()
    assert results["after"]["phase_step"] == 2 and results["step"] == 8  # 4 episodes per iteration: 4, 8 >= 7
    assert [r["phase_step"] for r in results["history"] if r["phase"] == "ppo"] == [2]  # evaluated where it stopped


def test_archer_critic_targets_follow_the_paper(tmp_path: Path) -> None:
    experiment = TextExperiment(llm_config("text_method=archer"), tmp_path)
    archer: ArCHer = experiment.rl
    from rlft.agents.archer import Transition

    batch = [Transition("position 1, target 3", "+", 0.0, "position 2, target 3", False),
             Transition("position 2, target 3", "+", 1.0, "position 3, target 3", True)]
    with torch.no_grad():  # make the target critic's values known: V' = 2, Q' = 5
        for net, value in ((archer.target_critic.v, 2.0), (archer.target_critic.q, 5.0)):
            last = net.net[-1]
            last.weight.zero_()
            last.bias.fill_(value)
    q_target, v_target = archer.critic_targets(batch, ["+", "-"])
    gamma = archer.config.gamma
    assert torch.allclose(q_target, torch.tensor([[gamma * 2.0, 1.0]] * 2))  # r + gamma (1 - done) V'(s')
    assert torch.allclose(v_target, torch.full((2, 2), 5.0))  # V(s) <- Q'(s, a ~ pi)
    with pytest.raises(ValueError, match="tau"):
        ArcherConfig(tau=0.0)


def test_wrong_inputs_are_refused_with_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown loop option"):
        TextExperiment(llm_config("+loop.episodes=3"), tmp_path)
    with pytest.raises(TypeError, match="not a text env"):
        TextExperiment(llm_config("text_task.env_cfg.task=pendulum"), tmp_path)
    with pytest.raises(FileNotFoundError, match="transcript"):
        TextExperiment(llm_config(f"sft.transcripts={tmp_path / 'none.jsonl'}"), tmp_path / "run").run()


def test_init_from_starts_rl_from_another_runs_sft_policy(tmp_path: Path) -> None:
    first = TextExperiment(llm_config("loop.iterations=1"), tmp_path / "sft").run()
    second = TextExperiment(llm_config("loop.iterations=1", f"init_from={tmp_path / 'sft'}"), tmp_path / "rl").run()
    assert not (tmp_path / "rl" / "transcripts.jsonl").exists()  # no SFT of its own
    assert second["before"]["phase"] == "sft" and second["before"]["returns"] == first["before"]["returns"]
    assert second["after"]["phase_step"] == 1
    with pytest.raises(ValueError, match="init_from .* trained model"):
        TextExperiment(llm_config("model.tiny.hidden_size=16", f"init_from={tmp_path / 'sft'}"),
                       tmp_path / "other").run()
