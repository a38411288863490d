"""Language policies: token-exact multi-turn sequences, log-prob bookkeeping, SFT, PPO/GRPO updates,
and one evaluator/logger serving an MLP policy and an LLM policy on the same wrapped env."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from rlft.agents.filtered_bc import FilteredBCConfig, OnlineFilteredBC
from rlft.agents.text_pg import (
    TextPGConfig,
    TextPolicyGradient,
    action_token_weights,
    group_advantages,
    process_advantages,
)
from rlft.agents.text_rollout import TextRolloutConfig, collect_text
from rlft.envs import make_env, make_vector_env
from rlft.offline.transcripts import (
    expert_actor,
    filter_transcripts,
    load_transcripts,
    record_transcripts,
    save_transcripts,
    sft_samples,
)
from rlft.agents.sft import sft_loss, train_sft
from rlft.policies.llm import (
    MIN_SHARED_PREFIX, ChatAgent, ChatFormat, GenerationConfig, LLMPolicy, LoraSettings, add_lora,
    shared_prefix_length,
)
from rlft.policies.text_mlp import TextMLPPolicy
from rlft.policies.tiny_lm import build_tiny_lm
from rlft.runtime.evaluation import evaluate
from rlft.runtime.logger import MetricLogger
from conftest import assert_log_probs_recomputed


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"), seed=0)


def load(path: Path, value_head: bool = False, max_new_tokens: int = 6) -> LLMPolicy:
    return LLMPolicy.from_pretrained(path, value_head=value_head,
                                     generation=GenerationConfig(max_new_tokens=max_new_tokens))


def numberline_setup(tiny_lm: Path, num_envs: int = 4, **kwargs):
    policy = load(tiny_lm, **kwargs)
    chat = ChatFormat(policy.tokenizer, make_env({"task": "numberline"}).unwrapped.system_prompt)
    return policy, chat, make_vector_env({"task": "numberline"}, num_envs)


def test_multi_turn_sequences_are_token_exact_and_mask_only_model_tokens(tiny_lm: Path) -> None:
    policy, chat, vec = numberline_setup(tiny_lm)
    batch = collect_text(policy, chat, vec, 1, seed=0, config=TextRolloutConfig(context="episode"),
                         generator=torch.Generator().manual_seed(0))
    assert len(batch.samples) == 4 and all(ep.length >= 2 for ep in batch.episodes)
    tokenizer = policy.tokenizer
    for episode in batch.episodes:
        sample = batch.samples[batch.turns[episode.turns[0]].sample]
        mask = np.array(sample.model_mask)
        spans = [batch.turns[t].span for t in episode.turns]
        expected = np.zeros(len(sample.tokens), dtype=bool)
        for start, end in spans:
            expected[start:end] = True
        assert (mask == expected).all()  # model tokens are exactly the sampled replies
        for t in episode.turns:  # the masked tokens decode to what the env received
            start, end = batch.turns[t].span
            assert tokenizer.decode(sample.tokens[start:end], skip_special_tokens=True) == batch.turns[t].text
        for t in episode.turns:  # each reply follows the template's generation prompt
            assert tokenizer.decode(sample.tokens[: batch.turns[t].span[0]]).endswith("<|im_start|>assistant\n")


def test_concatenated_turns_equal_the_chat_template_token_for_token(tiny_lm: Path) -> None:
    policy = load(tiny_lm)
    env = make_env({"task": "guess-number"}).unwrapped
    chat = ChatFormat(policy.tokenizer, env.system_prompt)
    transcripts = record_transcripts(env, expert_actor(0.0), 4, seed=0, task="guess-number")
    assert [sum(m["role"] == "assistant" for m in t.messages) for t in transcripts] == [3, 1, 3, 4]
    for transcript, sample in zip(transcripts, sft_samples(transcripts, chat, context="episode")):
        rendered = policy.tokenizer.apply_chat_template(transcript.messages[:-1], tokenize=False)
        assert chat.encode(rendered) == sample.tokens + chat.encode("\n")


def test_sampled_log_probs_equal_the_training_recomputation(tiny_lm: Path) -> None:
    policy, chat, vec = numberline_setup(tiny_lm, num_envs=3)
    for context in ("episode", "turn"):
        batch = collect_text(policy, chat, vec, 1, seed=5, config=TextRolloutConfig(context=context),
                             generator=torch.Generator().manual_seed(0))
        recomputed = policy.token_log_probs([s.tokens for s in batch.samples])
        for row, sample in enumerate(batch.samples):
            mask = torch.tensor(sample.model_mask)
            sampled = torch.tensor(sample.sampled_log_probs)[mask]
            assert torch.allclose(recomputed[row, : len(sample.tokens)][mask], sampled, atol=1e-5)


def test_a_shared_prompt_prefix_is_computed_once_and_changes_no_reply(tiny_lm: Path) -> None:
    policy = load(tiny_lm)
    chat = ChatFormat(policy.tokenizer, "Reach the target on the number line. Answer + or -.")
    prompts = [chat.first_prompt(o) for o in ("position 3, target 5", "position 12, target 0", "p 1")]
    assert shared_prefix_length(prompts) >= MIN_SHARED_PREFIX  # the batch takes the shared-prefix path
    calls = []
    hook = policy.model.register_forward_pre_hook(lambda _, args, kwargs: calls.append(kwargs["input_ids"].shape),
                                                  with_kwargs=True)
    batched = policy.generate(prompts, greedy=True)
    hook.remove()
    assert calls[0] == (1, shared_prefix_length(prompts))  # the prefix, once, at batch 1
    for prompt, reply in zip(prompts, batched, strict=True):
        alone = policy.generate([prompt], greedy=True)[0]  # a batch of one shares nothing
        assert reply.tokens == alone.tokens
        torch.testing.assert_close(torch.tensor(reply.log_probs), torch.tensor(alone.log_probs), atol=1e-5, rtol=0)


def test_scoring_with_a_shared_prefix_equals_the_full_batch_in_values_and_gradients(tiny_lm: Path,
                                                                                    monkeypatch) -> None:
    policy = load(tiny_lm)
    chat = ChatFormat(policy.tokenizer, "Reach the target on the number line. Answer + or -.")
    sequences = [chat.first_prompt(o) + chat.encode(a) + [policy.eos_id]
                 for o, a in (("position 3, target 5", "+"), ("position 12, target 0", "-"), ("p 1", "+-"))]

    def scored() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        policy.model.zero_grad()
        scores, _ = policy.score(sequences)
        (scores.log_probs.sum() + scores.entropy.sum() + scores.hidden[:, -1].square().sum()).backward()
        return [scores.log_probs, scores.entropy, scores.hidden], [p.grad.clone() for p in policy.model.parameters()]

    shared_values, shared_grads = scored()
    monkeypatch.setattr("rlft.policies.llm.MIN_SHARED_PREFIX", 10**9)  # every row through the whole model
    full_values, full_grads = scored()
    for got, expected in zip(shared_values + shared_grads, full_values + full_grads, strict=True):
        # float32 sums in another order: within 1e-5 of each tensor's scale (the embedding's gradient reaches ~80)
        torch.testing.assert_close(got, expected, atol=1e-5 * max(1.0, expected.abs().max().item()), rtol=1e-4)


def test_temperature_defines_the_log_probs_and_greedy_is_deterministic(tiny_lm: Path) -> None:
    policy = LLMPolicy.from_pretrained(tiny_lm, generation=GenerationConfig(max_new_tokens=5, temperature=0.5))
    chat = ChatFormat(policy.tokenizer, "sys")
    prompts = [chat.first_prompt("abc"), chat.first_prompt("a much longer observation")]
    replies = policy.generate(prompts, generator=torch.Generator().manual_seed(0))
    scores = policy.token_log_probs([p + r.tokens for p, r in zip(prompts, replies)])
    for row, (prompt, reply) in enumerate(zip(prompts, replies)):
        got = scores[row, len(prompt): len(prompt) + len(reply.tokens)]
        assert torch.allclose(got, torch.tensor(reply.log_probs), atol=1e-5)
    assert [r.tokens for r in policy.generate(prompts, greedy=True)] == [r.tokens for r in
                                                                       policy.generate(prompts, greedy=True)]
    with pytest.raises(ValueError, match="temperature"):
        GenerationConfig(temperature=0.0)


def test_chain_of_thought_weights_come_from_the_parsed_action_span(tiny_lm: Path) -> None:
    policy = load(tiny_lm)
    reply = "bigger, so\nAction: +"
    tokens = policy.tokenizer(reply, add_special_tokens=False)["input_ids"] + [policy.eos_id]
    start = reply.index("+")
    weights = action_token_weights(policy, tokens, (start, start + 1), cot_lambda=0.5)
    assert weights[start] == 1.0 and weights[-1] == 1.0  # the action character and the end of turn
    assert (weights[:start] == 0.5).all()
    assert (action_token_weights(policy, tokens, None, 0.5) == 1.0).all()


def test_reasoning_transcripts_think_about_the_state_then_name_the_action(tiny_lm: Path) -> None:
    env = make_env({"task": "numberline"}).unwrapped
    transcripts = record_transcripts(env, expert_actor(0.0, reasoning=True), 3, 0, "numberline")
    plain = record_transcripts(env, expert_actor(0.0), 3, 0, "numberline")
    assert [t.success for t in transcripts] == [t.success for t in plain] == [True] * 3  # same moves
    reply = next(m["content"] for m in transcripts[0].messages if m["role"] == "assistant")
    position, target = (int(x) for x in re.findall(r"\d+", transcripts[0].messages[1]["content"]))
    assert reply == f"{position}{'<' if position < target else '>'}{target}\nAction: {'+' if target > position else '-'}"
    env.reset(seed=0)
    start, end = env.action_span(reply)
    assert reply[start:end] in ("+", "-") and env.parse(reply) == reply[start:end]
    policy = load(tiny_lm)
    tokens = policy.tokenizer.encode(reply, add_special_tokens=False) + [policy.tokenizer.eos_token_id]
    weights = action_token_weights(policy, tokens, (start, end), cot_lambda=0.3)
    assert weights.tolist().count(1.0) == 2 and (weights == 0.3).sum() == len(tokens) - 2  # action + end of turn


def test_grpo_advantages_standardise_within_groups() -> None:
    returns = np.array([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    adv = group_advantages(returns, groups)
    unbiased = np.std([1.0, 0.0, 0.0, 1.0], ddof=1)  # TRL: torch.std (unbiased), plus 1e-4
    assert np.allclose(adv[:4], np.array([0.5, -0.5, -0.5, 0.5]) / (unbiased + 1e-4), atol=1e-7)
    assert (adv[4:] == 0.0).all()  # a group that all scored the same teaches nothing


def test_grpo_process_supervision_sums_standardised_turn_rewards_to_go() -> None:
    rewards = [np.array([0.0, 1.0]), np.array([-1.0, -1.0, 0.0]), np.array([1.0]), np.array([1.0])]
    adv = process_advantages(rewards, np.array([0, 0, 1, 1]))
    pooled = np.array([0.0, 1.0, -1.0, -1.0, 0.0])
    z = (pooled - pooled.mean()) / (pooled.std(ddof=1) + 1e-4)
    assert np.allclose(adv[0], [z[0] + z[1], z[1]], atol=1e-5)
    assert np.allclose(adv[1], [z[2] + z[3] + z[4], z[3] + z[4], z[4]], atol=1e-5)
    assert (adv[2] == 0).all() and (adv[3] == 0).all()  # identical rewards: no signal


@pytest.mark.parametrize("skip", [True, False])
def test_skip_uninformative_is_an_opt_in_that_leaves_a_tied_batch_alone(tiny_lm: Path, skip: bool) -> None:
    policy, chat, vec = numberline_setup(tiny_lm, num_envs=4)
    batch = collect_text(policy, chat, vec, 1, 0, TextRolloutConfig(group_size=2), torch.Generator().manual_seed(0))
    learner = TextPolicyGradient(policy, TextPGConfig(algorithm="grpo", supervision="outcome", skip_uninformative=skip))
    for k, turn in enumerate(batch.turns):  # first an informative batch, so Adam has momentum ...
        turn.reward = float(k % 2)
    assert learner.update(batch)
    for turn in batch.turns:  # ... then a sparse task before the first success: every episode returned 0
        turn.reward = 0.0
    before = [p.detach().clone() for p in policy.trainable_parameters()]
    learner.update(batch)
    unchanged = all(torch.equal(a, b) for a, b in zip(before, policy.trainable_parameters()))
    assert unchanged == skip  # off (every reference's way), a zero-advantage step still moves by Adam's momentum
    assert not TextPGConfig().skip_uninformative


def test_grpo_groups_share_a_task_instance(tiny_lm: Path) -> None:
    policy, chat, vec = numberline_setup(tiny_lm, num_envs=4)
    batch = collect_text(policy, chat, vec, 2, seed=0, config=TextRolloutConfig(group_size=2),
                         generator=torch.Generator().manual_seed(0))
    assert [ep.group for ep in batch.episodes] == [0, 0, 1, 1, 2, 2, 3, 3]
    first_turns = [batch.turns[ep.turns[0]] for ep in batch.episodes]
    first_prompts = [batch.samples[t.sample].tokens[: t.span[0]] for t in first_turns]
    assert first_prompts[0] == first_prompts[1] and first_prompts[2] == first_prompts[3]
    assert first_prompts[0] != first_prompts[2]
    with pytest.raises(ValueError, match="multiple"):
        collect_text(policy, chat, vec, 1, 0, TextRolloutConfig(group_size=3))


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_one_update_raises_good_replies_and_lowers_bad_ones(tiny_lm: Path, algorithm: str) -> None:
    policy, chat, vec = numberline_setup(tiny_lm, num_envs=8, value_head=algorithm == "ppo")
    env = make_env({"task": "numberline"}).unwrapped  # a little SFT on random moves: valid, varied replies
    train_sft(policy, sft_samples(record_transcripts(env, expert_actor(1.0), 30, 0, "numberline"), chat), 40)
    batch = collect_text(policy, chat, vec, 1, seed=0, config=TextRolloutConfig(group_size=4),
                         generator=torch.Generator().manual_seed(0))
    returns = batch.episode_returns()
    assert returns.std() > 0
    config = TextPGConfig(algorithm=algorithm, lr=1e-4, epochs=1, minibatch_samples=1000)  # a first-order step
    learner = TextPolicyGradient(policy, config)
    prepared = learner._prepare(batch)
    advantage = prepared.token_advantage if algorithm == "grpo" else prepared.turn_advantage[prepared.turn_of]
    before = policy.token_log_probs([s.tokens for s in batch.samples])[prepared.rows, prepared.cols].detach()
    metrics = learner.update(batch)
    after = policy.token_log_probs([s.tokens for s in batch.samples])[prepared.rows, prepared.cols].detach()
    change = after - before
    assert np.isfinite(list(metrics.values())).all()
    assert (change * advantage).sum() > 0  # likelihood moves with the sign of the advantage
    assert change[advantage > 0].mean() > change[advantage < 0].mean()


def test_ppo_needs_a_value_head(tiny_lm: Path) -> None:
    with pytest.raises(ValueError, match="value head"):
        TextPolicyGradient(load(tiny_lm), TextPGConfig(algorithm="ppo"))


@pytest.mark.parametrize("lora", [False, True])
def test_grpo_kl_reference_is_the_policy_after_sft(tiny_lm: Path, lora: bool) -> None:
    """DeepSeekMath Sec. 4.1: pi_ref is the initial RL policy, i.e. the SFT model. The learner is
    built before SFT (as the pipeline does), so the reference must be frozen at the first update."""
    policy, chat, vec = numberline_setup(tiny_lm, num_envs=8)
    if lora:
        policy.model = add_lora(policy.model, LoraSettings(rank=4))
    learner = TextPolicyGradient(policy, TextPGConfig(algorithm="grpo", kl_coef=0.04, epochs=1,
                                                      minibatch_samples=1000, lr=1e-2))
    env = make_env({"task": "numberline"}).unwrapped
    train_sft(policy, sft_samples(record_transcripts(env, expert_actor(1.0), 30, 0, "numberline"), chat), 40, lr=1e-2)
    batch = collect_text(policy, chat, vec, 1, 0, TextRolloutConfig(group_size=4), torch.Generator().manual_seed(0))
    assert batch.episode_returns().std() > 0
    first = learner.update(batch)  # one step: its KL is measured before the weights move
    assert first["kl_ref"] < 1e-6
    trained = {n for n, p in policy.model.named_parameters() if p.requires_grad}
    assert set(learner.reference.weights) == trained and (not lora or all("lora_" in n for n in trained))
    assert learner.update(batch)["kl_ref"] > 1e-4  # the policy has moved away from it since


def test_online_filtered_bc_clones_the_best_episodes_so_far(tiny_lm: Path) -> None:
    policy, chat, vec = numberline_setup(tiny_lm, num_envs=8)
    batch = collect_text(policy, chat, vec, 1, 0, TextRolloutConfig(), torch.Generator().manual_seed(0))
    for k, turn in enumerate(batch.turns):  # distinct returns: episode e returns about e
        turn.reward = float(next(e for e, ep in enumerate(batch.episodes) if k in ep.turns)) / len(
            next(ep for ep in batch.episodes if k in ep.turns).turns)
    learner = OnlineFilteredBC(policy, FilteredBCConfig(top_fraction=0.25, steps=20, batch_size=16, lr=1e-2, warmup_updates=0))
    first = learner.update(batch)
    assert first["cutoff_return"] == pytest.approx(np.quantile(batch.episode_returns(), 0.75))
    best = [e for e, r in enumerate(batch.episode_returns()) if r >= first["cutoff_return"]]
    kept = {batch.turns[t].sample for e in best for t in batch.episodes[e].turns}
    assert first["cloned_sequences"] == len(kept) and len(best) == 2
    before = sft_loss(policy, [batch.samples[s] for s in sorted(kept)]).item()
    again = learner.update(batch)  # the same episodes twice: the cutoff stays, the clones get likelier
    assert again["buffer_episodes"] == 16 and again["bc_loss"] < first["bc_loss"]
    assert sft_loss(policy, [batch.samples[s] for s in sorted(kept)]).item() < before
    restored = OnlineFilteredBC(policy, learner.config)
    restored.load_state_dict(learner.state_dict())
    assert restored.returns == learner.returns and restored.cutoff() == learner.cutoff()
    assert [s.tokens for seqs in restored.sequences for s in seqs] == [s.tokens for seqs in learner.sequences for s in seqs]


def test_missing_model_files_are_named(tiny_lm: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no model folder"):
        LLMPolicy.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        LLMPolicy.from_pretrained(tiny_lm, gguf_file="model.gguf")


def test_save_and_load_round_trip(tiny_lm: Path, tmp_path: Path) -> None:
    policy = load(tiny_lm, value_head=True)
    with torch.no_grad():
        policy.value_head.linear.bias.fill_(0.25)
    policy.save_pretrained(tmp_path / "saved")
    again = load(tmp_path / "saved", value_head=True)
    seq = [ChatFormat(policy.tokenizer).first_prompt("hello")]
    a, _ = policy.score(seq)
    b, _ = again.score(seq)
    assert torch.allclose(a.log_probs, b.log_probs)
    assert torch.equal(again.value_head.linear.bias, policy.value_head.linear.bias)


def test_transcripts_round_trip_filter_and_sft_loss_falls(tiny_lm: Path, tmp_path: Path) -> None:
    env = make_env({"task": "numberline"}).unwrapped
    transcripts = record_transcripts(env, expert_actor(0.5), 40, seed=0, task="numberline")
    path = tmp_path / "t.jsonl"
    save_transcripts(transcripts, path)
    loaded = load_transcripts(path)
    assert [t.as_json() for t in loaded] == [t.as_json() for t in transcripts]
    kept = filter_transcripts(loaded, success_only=True)
    assert kept and all(t.success for t in kept) and len(kept) < len(loaded)
    policy = load(tiny_lm)
    chat = ChatFormat(policy.tokenizer, env.system_prompt)
    samples = sft_samples(kept, chat, context="episode")
    assert len(samples) == len(kept)
    for transcript, sample in zip(kept, samples):  # model tokens = assistant turns (+ their end-of-turn)
        replies = [m["content"] for m in transcript.messages if m["role"] == "assistant"]
        masked = [tok for tok, m in zip(sample.tokens, sample.model_mask) if m]
        assert policy.tokenizer.decode(masked, skip_special_tokens=True) == "".join(replies)
        assert masked.count(chat.end_of_turn) == len(replies)
    initial = sft_loss(policy, samples).item()
    losses = train_sft(policy, sft_samples(kept, chat), steps=40, lr=1e-3)
    assert losses[-1] < 0.5 * initial


def test_transcript_files_are_validated(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_transcripts(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task": "x", "seed": 0, "messages": []}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*misses keys \['return', 'success'\]"):
        load_transcripts(bad)


def test_one_evaluator_and_logger_serve_an_mlp_and_an_llm_policy(tiny_lm: Path, tmp_path: Path) -> None:
    """The same wrapped env, evaluator and logger for a character MLP and a language model."""
    vec = make_vector_env({"task": "text-frozenlake"}, 2)
    env = make_env({"task": "text-frozenlake"}).unwrapped
    mlp = TextMLPPolicy(env.admissible_actions())
    observations, labels = [], []
    env.reset(seed=0)
    done = False
    while not done:  # behaviour cloning on the scripted expert's path
        observations.append(env.render())
        labels.append(env.admissible_actions().index(env.expert_action()))
        _, _, terminated, truncated, _ = env.step(env.expert_action())
        done = terminated or truncated
    optimizer = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(mlp(observations), torch.tensor(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    policy = load(tiny_lm)
    llm = ChatAgent(policy, ChatFormat(policy.tokenizer, env.system_prompt), context="episode")
    logger = MetricLogger(tmp_path, tensorboard=False)
    results = {}
    for step, (name, act) in enumerate((("mlp", mlp.act), ("llm", llm))):
        result = evaluate(act, vec, episodes=4, seed=0, ref_min_score=0.0, ref_max_score=1.0)
        logger.log(step, {"policy": name, "eval/success_rate": result.success_rate,
                          "eval/normalized_score": result.normalized_score})
        results[name] = result
    logger.close()
    assert results["mlp"].success_rate == 1.0 and results["mlp"].normalized_score == 100.0
    assert results["llm"].success_rate == 0.0  # an untrained LM babbles (and is told so by the env)
    assert set(results["mlp"].as_dict()) == set(results["llm"].as_dict())
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [r["policy"] for r in rows] == ["mlp", "llm"]


def test_truncated_episodes_bootstrap_and_minibatches_of_final_states_are_skipped(tiny_lm: Path) -> None:
    import gymnasium as gym
    from rlft.envs.text_tasks import NumberLine

    policy = load(tiny_lm, value_head=True)
    chat = ChatFormat(policy.tokenizer, NumberLine.system_prompt)
    vec = gym.vector.SyncVectorEnv([lambda: NumberLine(max_turns=1)] * 4,
                                   autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    batch = collect_text(policy, chat, vec, 1, seed=0, generator=torch.Generator().manual_seed(0))
    truncated = [ep for ep in batch.episodes if not ep.terminated]
    assert truncated and all(ep.bootstrap is not None for ep in truncated)
    assert len(batch.samples) == len(batch.turns) + len(truncated)  # a prompt-only sequence per final state
    metrics = TextPolicyGradient(policy, TextPGConfig(minibatch_samples=1, epochs=1)).update(batch)
    assert np.isfinite(list(metrics.values())).all()


def test_a_tiny_vlm_sees_the_image_and_its_log_probs_are_recomputed_exactly(tmp_path: Path) -> None:
    from rlft.policies.tiny_lm import build_tiny_vlm

    policy = LLMPolicy.from_pretrained(build_tiny_vlm(tmp_path / "vlm"), generation=GenerationConfig(max_new_tokens=4))
    env = make_env({"task": "numberline-image"}).unwrapped
    chat = ChatFormat(policy.tokenizer, env.system_prompt, policy.image_placeholder)
    vec = make_vector_env({"task": "numberline-image"}, 3)
    batch = collect_text(policy, chat, vec, 1, seed=0, generator=torch.Generator().manual_seed(0))
    assert all(sample.image is not None and sample.image.shape == (96, 96, 3) for sample in batch.samples)
    recomputed = assert_log_probs_recomputed(policy, batch)
    sample = batch.samples[0]
    other = make_env({"task": "numberline-image"}).unwrapped
    other.reset(seed=0)
    other.position, other.target = (env.size, 0) if sample.image[10, 5, 1] > 100 else (0, env.size)
    changed = policy.token_log_probs([sample.tokens], [other.draw()])
    assert not torch.allclose(changed[0], recomputed[0, : len(sample.tokens)])  # the image reaches the LM
    with pytest.raises(ValueError, match="vision-language"):
        ChatFormat(policy.tokenizer, env.system_prompt).first_prompt({"text": "x", "image": sample.image})
    transcripts = record_transcripts(env, expert_actor(1.0), 2, seed=0, task="numberline-image")
    samples = sft_samples(transcripts, chat, env=env)
    assert len(samples) == sum(len(t.messages) // 2 - 1 for t in transcripts)
    assert all(s.image is not None for s in samples)


def test_vlm_sft_loss_is_finite_and_falls(tmp_path: Path) -> None:
    from rlft.policies.tiny_lm import build_tiny_vlm

    policy = LLMPolicy.from_pretrained(build_tiny_vlm(tmp_path / "vlm"))
    env = make_env({"task": "numberline-image"}).unwrapped
    chat = ChatFormat(policy.tokenizer, env.system_prompt, policy.image_placeholder)
    samples = sft_samples(record_transcripts(env, expert_actor(0.0), 10, 0, "numberline-image"), chat, env=env)
    losses = train_sft(policy, samples, steps=20, lr=1e-3)
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]


def test_categorical_sampling_draws_each_token_with_its_probability_and_never_a_masked_one():
    from rlft.policies.llm import sample_categorical

    probs = torch.tensor([0.0, 0.1, 0.0, 0.2, 0.7, 0.0])
    log_probs = probs.log().expand(200_000, -1)
    tokens = sample_categorical(log_probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=6).float() / len(tokens)
    assert freq[[0, 2, 5]].sum() == 0  # zero-probability tokens (e.g. constrained decoding) never come out
    torch.testing.assert_close(freq, probs, atol=4e-3, rtol=0)  # ~4 standard errors at 200k draws
    again = sample_categorical(log_probs[:10], torch.Generator().manual_seed(1))
    assert torch.equal(again, sample_categorical(log_probs[:10], torch.Generator().manual_seed(1)))


def test_bfloat16_rollouts_track_the_float32_policy_and_learners_rescore_them(tiny_lm: Path) -> None:
    policy, chat, vec = numberline_setup(tiny_lm)
    policy.generation = GenerationConfig(max_new_tokens=6, dtype="bfloat16")
    prompts = [chat.first_prompt(o) for o in vec.reset(seed=0)[0]]
    replies = policy.generate(prompts, generator=torch.Generator().manual_seed(0))
    sampler = policy._sampling_model()
    assert next(sampler.parameters()).dtype == torch.bfloat16 and next(policy.model.parameters()).dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in policy.state_dict().values())  # the copy is not part of the policy
    exact = policy.token_log_probs([p + r.tokens for p, r in zip(prompts, replies)]).detach()
    for prompt, reply, row in zip(prompts, replies, exact):
        np.testing.assert_allclose(reply.log_probs, row[len(prompt):len(prompt) + len(reply.tokens)], atol=0.1)
    with torch.no_grad():  # an in-place update of the float32 model reaches the sampler at the next generate
        next(policy.model.parameters()).add_(1.0)
    policy.generate(prompts[:1])
    assert torch.equal(next(sampler.parameters()), next(policy.model.parameters()).to(torch.bfloat16))
    assert not policy.samples_exact_log_probs
    batch = collect_text(policy, chat, vec, 1, seed=0, generator=torch.Generator().manual_seed(0))
    prepared = TextPolicyGradient(policy, TextPGConfig(algorithm="grpo"))._prepare(batch)
    rescored = policy.token_log_probs([s.tokens for s in batch.samples]).detach()[prepared.rows, prepared.cols]
    torch.testing.assert_close(prepared.old_log_prob, rescored)  # the old policy is the float32 one
    with pytest.raises(ValueError, match="generation dtype must be one of"):
        GenerationConfig(dtype="float16")


def test_bfloat16_autocast_training_rescores_the_old_policy_as_it_trains(tiny_lm: Path) -> None:
    """``autocast: bfloat16``: the learner's forward passes run in bfloat16 (they differ from float32),
    the old log-probs are rescored under the same setting (PPO's first ratio is 1), and the weights
    and gradients stay float32."""
    policy, chat, vec = numberline_setup(tiny_lm, value_head=True)
    batch = collect_text(policy, chat, vec, 1, seed=0, generator=torch.Generator().manual_seed(0))
    learner = TextPolicyGradient(policy, TextPGConfig(algorithm="ppo", epochs=1, autocast="bfloat16"))
    prepared = learner._prepare(batch)
    exact = policy.token_log_probs([s.tokens for s in batch.samples]).detach()[prepared.rows, prepared.cols]
    assert not torch.equal(prepared.old_log_prob, exact)  # rescored in bfloat16, not the float32 recording
    torch.testing.assert_close(prepared.old_log_prob, exact, atol=0.1, rtol=0.0)
    again = learner._token_log_probs(batch, prepared)
    torch.testing.assert_close(again, prepared.old_log_prob, atol=0.0, rtol=0.0)  # same setting, same numbers
    metrics = learner.update(batch)
    assert np.isfinite(list(metrics.values())).all()
    assert all(p.dtype == torch.float32 for p in policy.parameters())
    with pytest.raises(ValueError, match="text_method.algorithm.autocast must be one of"):
        TextPGConfig(autocast="float16")
