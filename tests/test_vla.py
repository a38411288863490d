"""Token-action VLAs: the action tokenizer, constrained decoding, VLA tasks and their splits, SFT on
action tokens only, GRPO groups, and save/load of a VLA."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlft.agents.text_pg import TextPGConfig, TextPolicyGradient, _Prepared
from rlft.agents.text_rollout import (
    DynamicSampling,
    Episode,
    TextBatch,
    TextRolloutConfig,
    TurnRecord,
    collect_informative,
    collect_text,
)
from rlft.envs import make_env, make_vector_env
from rlft.envs.vla import PARAPHRASES, held_out
from rlft.offline.transcripts import expert_actor, record_transcripts, sft_samples
from rlft.envs.action_tokenizer import ActionTokenizer, add_action_tokens
from rlft.policies.llm import ChatFormat, Conversation, GenerationConfig, LLMPolicy
from rlft.policies.tiny_lm import build_tiny_vlm
from conftest import assert_log_probs_recomputed

TASK = "vla-babyai-gotoobj"


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"), image_size=56, patch_size=8, seed=0)


def vla(path: Path, tokens: int = 7, value_head: bool = False) -> LLMPolicy:
    """A VLA whose action tokens' output rows are spread out: new rows start at the mean embedding,
    which makes an untrained policy nearly uniform and log-prob checks nearly vacuous."""
    policy = LLMPolicy.from_pretrained(path, action_tokens=tokens, value_head=value_head,
                                       generation=GenerationConfig(max_new_tokens=1))
    with torch.no_grad():
        rows = policy.model.get_output_embeddings().weight
        rows[policy.allowed_tokens] = torch.randn(len(policy.allowed_tokens), rows.shape[1],
                                                  generator=torch.Generator().manual_seed(0))
    return policy


def play(policy: LLMPolicy, num_envs: int, seed: int = 0, config: TextRolloutConfig | None = None):
    """The VLA's chat format and one wave of ``num_envs`` BabyAI GoToObj episodes."""
    env = make_env({"task": TASK}).unwrapped
    chat = ChatFormat(policy.tokenizer, env.system_prompt, policy.image_placeholder)
    batch = collect_text(policy, chat, make_vector_env({"task": TASK}, num_envs), 1, seed=seed, config=config,
                         generator=torch.Generator().manual_seed(0))
    return chat, batch


def test_continuous_actions_round_trip_to_bin_centres_within_the_bounds() -> None:
    space = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32))
    tok = ActionTokenizer.for_space(space, bins=256, chunk=3)
    actions = np.random.default_rng(0).uniform(space.low, space.high, (3, 2))
    decoded = tok.decode(tok.encode(actions))
    assert decoded.shape == (3, 2) and tok.reply_length == 6
    assert tok.vocabulary == 255  # OpenVLA's edges np.linspace(-1, 1, 256): 255 distinct centres
    assert (np.abs(decoded - actions) <= (space.high - space.low) / 255 / 2 + 1e-12).all()  # half a bin
    edges = tok.encode(np.array([[-9.0, 99.0]] * 3))  # out of bounds: clipped to the outer bins
    assert edges == [0, 254] * 3
    assert np.allclose(tok.decode(edges)[0], [-2 + 2 / 255, 10 - 5 / 255])  # outer bin centres
    openvla_centres = (np.linspace(-1, 1, 256)[:-1] + np.linspace(-1, 1, 256)[1:]) / 2
    assert np.allclose(ActionTokenizer.for_space(gym.spaces.Box(-1, 1, (1,)), chunk=255).decode(list(range(255)))[:, 0],
                       openvla_centres)


def test_discrete_actions_are_one_token_each_and_bad_replies_do_not_parse() -> None:
    tok = ActionTokenizer.for_space(gym.spaces.Discrete(7))
    assert tok.decode(tok.encode(5)).tolist() == [5] and tok.text([5]) == "<act_5>"
    assert tok.parse(" <act_3> ") == [3]
    for bad in ("<act_7>", "<act_1><act_2>", "go <act_1>", "", "<act_x>"):
        assert tok.parse(bad) is None, bad
    with pytest.raises(ValueError, match=r"in \[0, 7\)"):
        tok.encode(7)
    with pytest.raises(ValueError, match="finite bounds"):
        ActionTokenizer.for_space(gym.spaces.Box(-np.inf, np.inf, (2,)))


def test_action_tokens_are_whole_tokens_and_keep_their_ids_after_save(tiny_vlm: Path, tmp_path: Path) -> None:
    policy = vla(tiny_vlm)
    ids = policy.tokenizer.convert_tokens_to_ids(ActionTokenizer(7, 1).tokens)
    assert policy.tokenizer.encode("<act_0><act_6>", add_special_tokens=False) == [ids[0], ids[6]]
    policy.save_pretrained(tmp_path / "saved")
    again = vla(tmp_path / "saved")
    assert again.tokenizer.convert_tokens_to_ids(ActionTokenizer(7, 1).tokens) == ids
    assert len(again.tokenizer) == len(policy.tokenizer)  # nothing added twice
    assert add_action_tokens(again.tokenizer, again.model, 7) == ids


def test_constrained_decoding_writes_only_action_tokens_with_exact_log_probs(tiny_vlm: Path) -> None:
    policy = vla(tiny_vlm)
    action_ids = set(policy.tokenizer.convert_tokens_to_ids(ActionTokenizer(7, 1).tokens))
    chat, batch = play(policy, 4)
    assert batch.turns and not any(t.invalid for t in batch.turns)
    for sample in batch.samples:  # (prompt-only sequences of truncated episodes' final states aside)
        model = [tok for tok, mine in zip(sample.tokens, sample.model_mask) if mine]
        assert len(model) == 1 and set(model) <= action_ids or not any(sample.model_mask)
    assert_log_probs_recomputed(policy, batch)
    logits = torch.randn(2, policy.model.get_output_embeddings().weight.shape[0])
    probs = policy._log_softmax(logits).exp()
    assert torch.allclose(probs[:, sorted(action_ids)].sum(-1), torch.ones(2))  # all mass on action tokens


def test_sft_on_demonstrations_trains_on_action_tokens_only(tiny_vlm: Path) -> None:
    policy = vla(tiny_vlm)
    env = make_env({"task": TASK}).unwrapped
    chat = ChatFormat(policy.tokenizer, env.system_prompt, policy.image_placeholder)
    transcripts = record_transcripts(env, expert_actor(0.0), 3, seed=0, task=TASK)
    assert all(t.success for t in transcripts)  # BabyAI's bot demonstrates
    samples = sft_samples(transcripts, chat, env=env, ends_turns=policy.ends_turns)
    action_ids = set(policy.tokenizer.convert_tokens_to_ids(ActionTokenizer(7, 1).tokens))
    for sample in samples:
        marked = [tok for tok, mine in zip(sample.tokens, sample.model_mask) if mine]
        assert len(marked) == 1 and set(marked) <= action_ids and sample.tokens[-1] == chat.end_of_turn
        assert sample.image is not None and sample.image.shape == (56, 56, 3)


def test_value_is_read_at_the_last_prompt_token(tiny_vlm: Path) -> None:
    policy = vla(tiny_vlm, value_head=True)
    chat, batch = play(policy, 2)
    prepared = TextPolicyGradient(policy, TextPGConfig())._prepare(batch)
    for turn, position in zip(batch.turns, prepared.value_pos.tolist()):
        sample = batch.samples[turn.sample]
        assert position == turn.span[0] - 1 and not sample.model_mask[position]  # the prompt's last token
        assert sample.model_mask[position + 1]  # ... right before the action token


def test_grpo_groups_start_from_the_same_initial_state(tiny_vlm: Path) -> None:
    policy = vla(tiny_vlm)
    chat, batch = play(policy, 4, seed=5, config=TextRolloutConfig(group_size=2))
    first = [batch.samples[batch.turns[ep.turns[0]].sample] for ep in batch.episodes]
    assert [ep.group for ep in batch.episodes] == [0, 0, 1, 1]
    assert np.array_equal(first[0].image, first[1].image) and np.array_equal(first[2].image, first[3].image)
    assert not np.array_equal(first[0].image, first[2].image)


def _episodes(task: str, count: int = 12) -> list[tuple[dict, object]]:
    env = make_env({"task": task}).unwrapped
    return [(env.reset(seed=seed)[0], env.scene) for seed in range(count)]


def test_splits_change_what_they_name_and_nothing_else() -> None:
    train = _episodes(TASK)
    for obs, scene in train:  # training: training objects, the level's wording, left-half starts
        assert not held_out(*scene.target()) and obs["text"].startswith("go to the ")
        assert scene.env.agent_pos[0] < scene.env.width // 2
    for obs, scene in _episodes(f"{TASK}-semantic"):
        assert held_out(*scene.target()) and obs["text"].split(" the ")[0] + " the " in PARAPHRASES["go to the "]
    for obs, scene in _episodes(f"{TASK}-execution"):
        assert not held_out(*scene.target()) and scene.env.agent_pos[0] >= scene.env.width // 2
    plain, shifted = train[0][0]["image"], _episodes(f"{TASK}-visual", 1)[0][0]["image"]
    assert (plain == 0).all(-1).mean() > 0.1 and (shifted == 0).all(-1).mean() < 0.05  # the floor is tinted
    assert not held_out(*_episodes(f"{TASK}-visual", 1)[0][1].target())


def test_splits_are_seeded() -> None:
    a, b = _episodes(f"{TASK}-visual", 2), _episodes(f"{TASK}-visual", 2)
    assert all(np.array_equal(x[0]["image"], y[0]["image"]) and x[0]["text"] == y[0]["text"] for x, y in zip(a, b))


# --- the RL4VLA / SimpleVLA-RL recipe pieces of the text policy gradient ------------------------------

def _batch(successes: list[list[bool]]) -> TextBatch:
    """A batch of one-turn episodes, one group per inner list."""
    batch = TextBatch()
    for group, outcomes in enumerate(successes):
        for success in outcomes:
            batch.samples.append(Conversation(tokens=[1, 2, 3], model_mask=[False, False, True],
                                              sampled_log_probs=[0.0, 0.0, -1.0], turns=[(2, 3)]))
            batch.turns.append(TurnRecord(len(batch.samples) - 1, (2, 3), float(success), None, "a", False, "o", "o",
                                          True))
            batch.episodes.append(Episode([len(batch.turns) - 1], group, True, success, None))
            batch.generated_tokens += 1
    return batch


def test_dynamic_sampling_keeps_mixed_groups_and_collects_until_it_has_enough() -> None:
    rounds = [_batch([[True, True], [False, True]]), _batch([[False, False], [True, False]]), _batch([[True, False]] * 2)]
    calls = []

    def collect(k: int) -> TextBatch:
        calls.append(k)
        return rounds[k]

    collected, kept, stats = collect_informative(collect, DynamicSampling(enabled=True, lower=0.1, upper=0.9))
    assert calls == [0, 1] and len(collected.episodes) == 8  # two mixed groups found in two rounds
    assert len(kept.episodes) == 4 and all(0 < np.mean([e.success for e in kept.episodes if e.group == g]) < 1
                                           for g in {e.group for e in kept.episodes})
    assert [kept.turns[e.turns[0]].sample for e in kept.episodes] == [0, 1, 2, 3]  # renumbered
    assert stats["dynamic/kept_groups"] == 2 and stats["dynamic/rounds"] == 2
    everything, same, none = collect_informative(lambda k: _batch([[True, True]]), DynamicSampling())
    assert everything is same and none == {}  # off: one collection, trained on whole


def test_clip_higher_bounds_the_ratio_asymmetrically() -> None:
    cfg = TextPGConfig(algorithm="grpo", clip=0.2, clip_high=0.28)
    assert cfg.clip_range == (0.8, 1.28)
    learner = TextPolicyGradient.__new__(TextPolicyGradient)
    learner.config = cfg
    ratios = torch.tensor([1.25, 1.30, 0.75])
    log_prob = ratios.log().requires_grad_()
    n = len(ratios)
    prepared = _Prepared(rows=torch.zeros(n, dtype=torch.long), cols=torch.arange(n), turn_of=torch.arange(n),
                         weight=torch.ones(n), old_log_prob=torch.zeros(n), ref_log_prob=None,
                         token_advantage=torch.tensor([1.0, 1.0, -1.0]), token_scale=torch.ones(n),
                         episode_of=torch.arange(n), turn_sample=torch.zeros(n, dtype=torch.long),
                         value_pos=torch.zeros(n, dtype=torch.long), turn_advantage=torch.zeros(n),
                         turn_return=torch.zeros(n), turn_value=torch.zeros(n))
    learner._grpo_loss(prepared, torch.ones(n, dtype=torch.bool), log_prob, {}).backward()
    assert log_prob.grad[0] != 0  # 1.25 < 1.28: still pushed up
    assert log_prob.grad[1] == 0 and log_prob.grad[2] == 0  # above 1 + clip_high, below 1 - clip: clipped


def test_value_clipping_takes_the_worse_loss_and_huber_grows_linearly() -> None:
    learner = TextPolicyGradient.__new__(TextPolicyGradient)
    learner.config = TextPGConfig(value_clip=0.2, value_loss="huber", huber_delta=1.0)
    old, returns = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 30.0])
    values = torch.tensor([1.0, 30.0])  # exact, but far from the old values: the clipped value (0.2) counts
    assert torch.allclose(learner._value_loss(values, old, returns), torch.tensor([0.5 * 0.8**2, 29.8 - 0.5]))
    learner.config = TextPGConfig()
    assert (learner._value_loss(values, old, returns) == 0.0).all()  # plain MSE, no clipping


def test_grad_accumulation_steps_once_per_group_and_the_value_head_has_its_own_lr(tiny_vlm: Path) -> None:
    policy = vla(tiny_vlm, value_head=True)
    chat, batch = play(policy, 4)
    steps = {}
    for accumulation in (1, 100):
        learner = TextPolicyGradient(vla(tiny_vlm, value_head=True), TextPGConfig(
            epochs=1, minibatch_samples=2, grad_accumulation=accumulation, lr=1e-4, value_lr=3e-3,
            skip_uninformative=False))
        learner.update(batch)
        head = learner.optimizer.param_groups[1]
        assert head["lr"] == 3e-3 and {id(p) for p in head["params"]} == {
            id(p) for p in learner.policy.value_head.parameters()}
        steps[accumulation] = int(learner.optimizer.state[head["params"][0]]["step"])
    with_turns = len({t.sample for t in batch.turns})  # prompt-only samples (cut episodes' final states) train nothing
    assert steps == {1: -(-with_turns // 2), 100: 1}


def vla_config(experiment: str, *overrides: str):
    from hydra import compose, initialize_config_module

    with initialize_config_module("rlft.configs", version_base="1.3"):
        return compose("config", [
            f"experiment={experiment}", "model.tiny={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1}",
            "sft.episodes=6", "sft.steps=4", "loop.num_envs=4", "loop.waves=1", "loop.iterations=2",
            "loop.eval_every=2", "loop.eval_episodes=4", "loop.eval_envs=4", "progress=false", *overrides])


def test_a_vla_run_trains_saves_and_loads_back_to_the_same_evaluation(tmp_path: Path) -> None:
    from rlft.runtime.text_train import TextExperiment, evaluate_saved

    sft = TextExperiment(vla_config("vla/ppo/babyai-gotoobj", "loop.iterations=0"), tmp_path / "sft").run()
    assert sft["after"] is None and (tmp_path / "sft" / "model").is_dir()  # an SFT-only run: its model is the SFT policy
    cfg = vla_config("vla/grpo/babyai-gotoobj", "text_method.rollout.group_size=2",
                     "text_method.dynamic_sampling.max_rounds=2", f"init_from={tmp_path / 'sft'}")
    experiment = TextExperiment(cfg, tmp_path / "grpo")  # GRPO from PPO's SFT policy: its value head is dropped
    results = experiment.run()
    assert results["before"]["returns"] == sft["before"]["returns"]  # the same SFT policy
    assert experiment.generation.max_new_tokens == 1 and results["after"]["phase_step"] == 2
    assert results["axis"] == "environment steps"
    rows = (tmp_path / "grpo" / "metrics.csv").read_text()
    assert "dynamic/kept_groups" in rows and "time/env_steps_per_s" in rows
    again = evaluate_saved(tmp_path / "grpo" / "model", {"task": TASK}, 4, seed=cfg.loop.eval_seed, num_envs=4,
                           temperature=cfg.loop.eval_temperature)
    assert again.returns == results["after"]["returns"] and again.lengths == results["after"]["lengths"]
    loaded = LLMPolicy.from_pretrained(tmp_path / "grpo" / "model", action_tokens=7, generation=experiment.generation)
    chat = ChatFormat(loaded.tokenizer, "", loaded.image_placeholder)
    prompt = chat.start(make_env({"task": TASK}).reset(seed=3)[0])
    tokens = prompt.tokens + [loaded.allowed_tokens[2]]  # ... and one action token to score
    scores = [p.score([tokens], [prompt.image])[0] for p in (experiment.policy, loaded)]
    assert torch.equal(scores[0].hidden, scores[1].hidden) and scores[0].log_probs[0, -1] < 0
    assert torch.equal(scores[0].log_probs, scores[1].log_probs)  # the saved model is the trained one, bit for bit
    semantic = evaluate_saved(tmp_path / "grpo" / "model", {"task": f"{TASK}-semantic"}, 4, num_envs=4)
    assert len(semantic.returns) == 4
    ire = TextExperiment(vla_config("vla/ire/babyai-gotoobj", "text_method.algorithm.rl_iterations=1",
                                    f"init_from={tmp_path / 'sft'}"), tmp_path / "ire")
    assert len(ire.rl.demonstrations) == 0
    ire.run()  # init_from re-records the demonstrations its supervised stage needs
    assert len(ire.rl.demonstrations) > 0 and "ire/sft_loss" in (tmp_path / "ire" / "metrics.csv").read_text()


def test_ire_vla_trains_only_the_heads_in_rl_and_the_whole_model_in_sft(tiny_vlm: Path) -> None:
    from rlft.agents.ire_vla import IReVLA, IReVLAConfig

    policy = vla(tiny_vlm, value_head=True)
    chat, batch = play(policy, 4)
    env = make_env({"task": TASK}).unwrapped
    demos = sft_samples(record_transcripts(env, expert_actor(0.0), 2, 0, TASK), chat, env=env, ends_turns=False)
    learner = IReVLA(policy, IReVLAConfig(rl_iterations=2, sft_steps=2, rl={"skip_uninformative": False, "lr": 1e-2}),
                     policy.allowed_tokens, torch.Generator().manual_seed(0))
    learner.demonstrations = demos
    output = policy.model.get_output_embeddings().weight
    action = policy.allowed_tokens
    others = [i for i in range(output.shape[0]) if i not in action]
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    metrics = learner.update(batch)  # RL stage
    moved = {name for name, p in policy.named_parameters() if not torch.equal(p, before[name])}
    assert moved == {"value_head.linear.weight", "value_head.linear.bias", output_name(policy)}
    assert torch.equal(output[others], before[output_name(policy)][others])  # only the action rows
    assert "ire/sft_loss" not in metrics
    metrics = learner.update(batch)  # the round's last RL iteration, then the supervised stage
    assert "ire/sft_loss" in metrics and all(p.requires_grad for p in learner.whole)
    vision = next(name for name, _ in policy.named_parameters() if "vision" in name)
    assert not torch.equal(dict(policy.named_parameters())[vision], before[vision])  # SFT trains the backbone
    state = learner.state_dict()
    again = IReVLA(vla(tiny_vlm, value_head=True), IReVLAConfig(rl_iterations=2, sft_steps=2), action)
    again.load_state_dict(state)
    assert again.iterations == 2 and len(again.demonstrations) == len(demos)


def output_name(policy: LLMPolicy) -> str:
    output = policy.model.get_output_embeddings().weight
    return next(name for name, p in policy.named_parameters() if p is output)


def test_pusht_is_a_continuous_vla_task_with_its_splits() -> None:
    env = make_env({"task": "vla-pusht"}).unwrapped
    obs, _ = env.reset(seed=0)
    tok = env.action_tokenizer
    assert (tok.vocabulary, tok.reply_length, obs["image"].shape) == (255, 2, (64, 64, 3))
    assert obs["text"] == "push the T onto the target" and env.scene.env.block.position[0] < 256
    expert = env.expert_action()
    assert env.parse(expert) == expert and len(tok.parse(expert)) == 2
    _, _, _, _, info = env.step(expert)
    assert not info["invalid_action"]
    shifted = make_env({"task": "vla-pusht-visual"}).reset(seed=0)[0]["image"]
    assert (obs["image"] == 255).all(-1).mean() > 0.5 and (shifted == 255).all(-1).mean() < 0.05
    moved = make_env({"task": "vla-pusht-execution"}).unwrapped
    moved.reset(seed=0)
    assert moved.scene.env.block.position[0] >= 256
    assert make_env({"task": "vla-pusht-semantic"}).reset(seed=0)[0]["text"] in PARAPHRASES["push the T onto the target"]


@pytest.mark.parametrize("experiment", [f"vla/{method}/{task}" for method in ("ppo", "grpo", "ire")
                                        for task in ("pusht", "babyai-gotoobj", "babyai-gotolocal")
                                        if (method, task) != ("ire", "pusht")])
def test_every_vla_experiment_composes_for_a_vla_task(experiment: str) -> None:
    from rlft.runtime.text_train import TextExperiment

    cfg = vla_config(experiment)
    settings = TextExperiment.settings(cfg)
    assert cfg.text_task.env_cfg.task.startswith("vla-") and cfg.model.vision.patch_size == 8
    assert settings["sft"].epsilon == 0.0  # demonstrations, not random actions


def test_an_idefics3_vla_samples_action_tokens_with_exact_log_probs(tmp_path: Path) -> None:
    from rlft.policies.tiny_lm import build_tiny_idefics3

    policy = vla(build_tiny_idefics3(tmp_path / "idefics3", image_size=64, patch_size=16, scale_factor=2))
    assert policy.image_placeholder == "<image>" * 4  # (64 / 16)^2 patches, 2 x 2 merged per token
    _, batch = play(policy, 2)  # 56 x 56 images, resized to the tower's 64
    recomputed = assert_log_probs_recomputed(policy, batch)
    sample = batch.samples[0]
    hidden = [policy.score([sample.tokens], [image])[0].hidden for image in (sample.image, sample.image[::-1].copy())]
    assert not torch.allclose(hidden[0], hidden[1])  # the image reaches the LM
    assert recomputed[0][torch.tensor(sample.model_mask + [False] * (recomputed.shape[1] - len(sample.tokens)))].item() \
        != pytest.approx(-np.log(7), abs=1e-3)  # not a uniform policy: the check above means something


def test_adding_action_tokens_never_shrinks_a_padded_vocabulary(tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText

    path = build_tiny_vlm(tmp_path / "padded", image_size=56, patch_size=8)
    model = AutoModelForImageTextToText.from_pretrained(path)
    model.resize_token_embeddings(200)  # rows beyond the tokenizer's 104 ids, as padded vocabularies have
    model.save_pretrained(path)
    policy = LLMPolicy.from_pretrained(path, action_tokens=7, generation=GenerationConfig(max_new_tokens=1))
    assert policy.model.get_input_embeddings().weight.shape[0] == 200
    assert max(policy.allowed_tokens) < 200 and len(policy.tokenizer) == 111


def test_chunked_babyai_replies_execute_the_bots_plan() -> None:
    env = make_env({"task": TASK, "env_kwargs": {"chunk": 3}}).unwrapped
    assert env.action_tokenizer.reply_length == 3
    for seed in range(3):
        env.reset(seed=seed)
        done, turns, info = False, 0, {}
        while not done:
            _, _, terminated, truncated, info = env.step(env.expert_action())
            done, turns = terminated or truncated, turns + 1
        assert info["success"] and not info["invalid_action"]
    with pytest.raises(ValueError, match="one action at a time"):
        make_env({"task": "vla-pusht", "env_kwargs": {"chunk": 2}}).unwrapped.expert_action()


def test_a_tiny_vla_cloned_from_the_bot_beats_random_actions(tmp_path: Path) -> None:
    from rlft.agents.sft import train_sft
    from rlft.policies.llm import ChatAgent
    from rlft.runtime.evaluation import evaluate
    from rlft.policies.tiny_lm import TinyLMConfig

    path = build_tiny_vlm(tmp_path / "vla", TinyLMConfig(hidden_size=32, intermediate_size=64), image_size=56,
                          patch_size=8, seed=0)
    policy = LLMPolicy.from_pretrained(path, action_tokens=7, generation=GenerationConfig(max_new_tokens=1))
    env = make_env({"task": TASK}).unwrapped
    chat = ChatFormat(policy.tokenizer, env.system_prompt, policy.image_placeholder)
    samples = sft_samples(record_transcripts(env, expert_actor(0.0), 40, 0, TASK), chat, env=env, ends_turns=False)
    train_sft(policy, samples, steps=80, lr=3e-3)
    cloned = evaluate(ChatAgent(policy, chat, greedy=True), make_vector_env({"task": TASK}, 16), 32, 10**6, 0.0, 1.0)
    rng = np.random.default_rng(0)
    tokens = env.action_tokenizer.tokens
    uniform = evaluate(lambda obs: tuple(tokens[i] for i in rng.integers(7, size=len(obs["text"]))),
                       make_vector_env({"task": TASK}, 16), 32, 10**6, 0.0, 1.0)
    assert cloned.success_rate >= uniform.success_rate + 0.25, (cloned.success_rate, uniform.success_rate)


def test_rl4vla_value_head_is_an_mlp_that_saves_and_loads(tiny_vlm: Path, tmp_path: Path) -> None:
    policy = LLMPolicy.from_pretrained(tiny_vlm, value_head=True, value_hidden=(512, 128), action_tokens=7)
    widths = [m.out_features for m in policy.value_head.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [512, 128, 1] and policy.value_head.linear.bias is None
    policy.save_pretrained(tmp_path / "saved")
    again = LLMPolicy.from_pretrained(tmp_path / "saved", value_head=True, value_hidden=(512, 128), action_tokens=7)
    hidden = torch.randn(3, policy.value_head.hidden[0].in_features)
    assert torch.equal(policy.value_head(hidden), again.value_head(hidden))
