"""The mechanics the reference recipes rest on, each against a hand computation: GAE at a turn limit
(RL4VLM, RL4VLA), SimpleVLA-RL's per-episode token mean and its independence from how a step is
cut into forward passes, RL4VLA's per-dimension policy weight, RL4VLM's ratio cap and cosine
schedule, and ArCHer's actor, advantage, targets and trust region."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlft.agents.archer import ArCHer, ArcherConfig
from rlft.agents.text_pg import TextPGConfig, TextPolicyGradient, _Prepared
from rlft.agents.text_rollout import TextBatch, TextRolloutConfig, collect_text
from rlft.agents.sft import train_sft
from rlft.envs import make_env, make_vector_env
from rlft.envs.text_tasks import NumberLine
from rlft.offline.transcripts import expert_actor, record_transcripts, sft_samples
from rlft.policies.llm import ChatFormat, GenerationConfig, LLMPolicy
from rlft.policies.tiny_lm import build_tiny_lm


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"), seed=0)


def policy_and_chat(tiny_lm: Path, value_head: bool = False, sft: bool = False) -> tuple[LLMPolicy, ChatFormat]:
    policy = LLMPolicy.from_pretrained(tiny_lm, value_head=value_head, generation=GenerationConfig(max_new_tokens=4))
    chat = ChatFormat(policy.tokenizer, NumberLine.system_prompt)
    if sft:  # a little SFT on random moves: valid, varied replies
        env = make_env({"task": "numberline"}).unwrapped
        train_sft(policy, sft_samples(record_transcripts(env, expert_actor(1.0), 30, 0, "numberline"), chat), 40)
    return policy, chat


def numberline_batch(policy: LLMPolicy, chat: ChatFormat, num_envs: int = 8, group_size: int = 1,
                     max_turns: int | None = None) -> TextBatch:
    if max_turns is None:
        vec = make_vector_env({"task": "numberline"}, num_envs)
    else:
        vec = gym.vector.SyncVectorEnv([lambda: NumberLine(max_turns=max_turns)] * num_envs,
                                       autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    return collect_text(policy, chat, vec, 1, seed=0, config=TextRolloutConfig(group_size=group_size),
                        generator=torch.Generator().manual_seed(0))


def step_gradients(learner: TextPolicyGradient, batch: TextBatch) -> list[list[torch.Tensor]]:
    """The gradient of every optimiser step of one update (the step itself is skipped; build the
    learner with ``max_grad_norm=None``, or the gradients come clipped)."""
    grads: list[list[torch.Tensor]] = []
    learner.optimizer.step = lambda: grads.append(  # type: ignore[method-assign]
        [p.grad.clone() for p in learner.policy.trainable_parameters()])
    learner.update(batch)
    return grads


@pytest.mark.parametrize("bootstrap", [True, False])
def test_gae_at_a_turn_limit_bootstraps_from_the_final_state_value_or_ends(tiny_lm: Path, bootstrap: bool) -> None:
    policy, chat = policy_and_chat(tiny_lm, value_head=True)
    batch = numberline_batch(policy, chat, num_envs=4, max_turns=1)  # every episode is cut after one turn
    cut = [ep for ep in batch.episodes if not ep.terminated]
    assert cut and all(ep.bootstrap is not None for ep in cut)
    config = TextPGConfig(gamma=0.9, gae_lambda=0.95, normalize_advantages=False, bootstrap_truncated=bootstrap)
    prepared = TextPolicyGradient(policy, config)._prepare(batch)
    with torch.no_grad():
        for episode in cut:
            turn = batch.turns[episode.turns[0]]
            hidden = policy.score_conversations([batch.samples[turn.sample], batch.samples[episode.bootstrap[0]]]).hidden
            v_state, v_final = policy.values(hidden, torch.tensor([[0, turn.span[0] - 1], [1, episode.bootstrap[1]]]))
            target = turn.reward + (0.9 * float(v_final) if bootstrap else 0.0)  # one turn: delta = A
            t = episode.turns[0]
            assert float(prepared.turn_return[t]) == pytest.approx(target, abs=1e-5)
            assert float(prepared.turn_advantage[t]) == pytest.approx(target - float(v_state), abs=1e-5)


def test_simplevla_loss_is_each_episodes_token_mean_averaged_over_the_step(tiny_lm: Path) -> None:
    """SimpleVLA-RL (dp_rob.py): a step's loss is the mean over its trajectories of each one's token
    mean of max(-A r, -A clip(r)); here against that formula written out, for the first of two steps."""
    policy, chat = policy_and_chat(tiny_lm, sft=True)
    batch = numberline_batch(policy, chat, num_envs=8, group_size=4)
    for e, episode in enumerate(batch.episodes):  # distinct returns within each group
        for t in episode.turns:
            batch.turns[t].reward = float(e % 4) / len(episode.turns)
    config = TextPGConfig(algorithm="grpo", supervision="outcome", epochs=1, minibatch_episodes=4,
                          minibatch_samples=1000, max_grad_norm=None)
    learner = TextPolicyGradient(policy, config)
    prepared = learner._prepare(batch)
    with torch.no_grad():  # the old policy: a little away from the current one, so the ratios differ from 1
        prepared.old_log_prob = prepared.old_log_prob + 0.3 * torch.sin(torch.arange(len(prepared.rows)).float())
    learner._prepare = lambda _: prepared  # type: ignore[method-assign]
    first, second = step_gradients(learner, batch)

    policy.zero_grad()
    log_probs = policy.score_conversations(batch.samples).log_probs[prepared.rows, prepared.cols]
    ratio = torch.exp(log_probs - prepared.old_log_prob)
    advantage = prepared.token_advantage
    per_token = torch.max(-advantage * ratio, -advantage * ratio.clamp(0.8, 1.2))
    episode_means = [per_token[prepared.episode_of == e].mean() for e in range(4)]  # the first step's episodes
    torch.stack(episode_means).mean().backward()
    hand = [p.grad for p in policy.trainable_parameters()]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(first, hand))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(second, hand))


def test_a_grpo_step_is_the_same_however_it_is_cut_into_forward_passes(tiny_lm: Path) -> None:
    policy, chat = policy_and_chat(tiny_lm, sft=True)
    batch = numberline_batch(policy, chat, num_envs=8, group_size=4)
    for e, episode in enumerate(batch.episodes):
        for t in episode.turns:
            batch.turns[t].reward = float(e % 3)
    assert max(len(ep.turns) for ep in batch.episodes) > 1  # episodes span several turn samples
    grads = {}
    for size in (1, 3, 1000):
        config = TextPGConfig(algorithm="grpo", supervision="outcome", epochs=1, minibatch_episodes=4,
                              minibatch_samples=size, max_grad_norm=None)
        grads[size] = step_gradients(TextPolicyGradient(policy, config), batch)
    assert len(grads[1]) == 2  # 8 episodes in steps of 4
    for size in (3, 1000):
        assert all(torch.allclose(a, b, atol=1e-6) for s, t in zip(grads[1], grads[size]) for a, b in zip(s, t))


@pytest.mark.parametrize("context", ["turn", "episode"])
def test_a_ppo_step_is_the_mean_over_its_turns_however_it_is_cut(tiny_lm: Path, context: str) -> None:
    """Samples of several turns (context: episode) and prompt-only samples (the final states of cut
    episodes, context: turn) weigh by their turns; the split into forward passes changes nothing."""
    policy, chat = policy_and_chat(tiny_lm, value_head=True, sft=True)
    vec = gym.vector.SyncVectorEnv([lambda: NumberLine(max_turns=3)] * 6, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    batch = collect_text(policy, chat, vec, 1, seed=0, config=TextRolloutConfig(context=context),
                         generator=torch.Generator().manual_seed(0))
    assert len(batch.samples) != len(batch.turns)  # 3-turn samples, or prompt-only ones beside the turns
    grads = {}
    for size, accumulation in ((1, 1000), (4, 1000), (1000, 1)):
        config = TextPGConfig(epochs=1, minibatch_samples=size, grad_accumulation=accumulation, max_grad_norm=None)
        [grads[size]] = step_gradients(TextPolicyGradient(policy, config), batch)
    for size in (4, 1000):
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[1], grads[size]))


def test_rl4vla_weighs_the_policy_loss_once_per_action_dimension(tiny_lm: Path) -> None:
    """RL4VLA (openvla_train.py) broadcasts the [B, 1] action log-prob into a [B, 7] buffer and sums
    the clipped surrogate over the 7 columns: ``policy_coef: 7`` is that weight, the value loss
    keeps its own."""
    ratio, advantage = torch.tensor([[0.7], [1.1], [1.4]]), torch.tensor([[1.0], [-2.0], [0.5]])
    surrogate = torch.min(ratio * advantage, ratio.clamp(0.8, 1.2) * advantage)
    rl4vla = -surrogate.expand(-1, 7).sum(-1, keepdim=True).mean()  # its [B, 7] buffer, summed over dims
    learner = stub_learner(TextPGConfig(policy_coef=7.0), advantage[:, 0])
    policy_sum, _ = learner._ppo_losses(learner.prepared, torch.ones(3, dtype=torch.bool), ratio[:, 0].log(),
                                        torch.zeros(1, 3, 1), [0], {})
    assert torch.isclose(learner.config.policy_coef * policy_sum / 3, rl4vla)  # _backward: coef x sum / turns

    policy, chat = policy_and_chat(tiny_lm, value_head=True, sft=True)
    batch = numberline_batch(policy, chat)
    assert batch.episode_returns().std() > 0
    grads = {}
    for coef in (0.0, 1.0, 7.0):
        config = TextPGConfig(epochs=1, minibatch_samples=1000, policy_coef=coef, value_coef=1.0, max_grad_norm=None)
        grads[coef] = step_gradients(TextPolicyGradient(policy, config), batch)[0]
    head = {id(p) for p in policy.value_head.parameters()}
    for k, p in enumerate(policy.trainable_parameters()):
        value, one, seven = grads[0.0][k], grads[1.0][k], grads[7.0][k]
        assert torch.allclose(seven, value + 7 * (one - value), atol=1e-6)
        if id(p) in head:  # the value head sees the value loss only
            assert torch.equal(value, seven)


def stub_learner(config: TextPGConfig, turn_advantage: torch.Tensor) -> TextPolicyGradient:
    """A learner over one token per turn and a value head that answers 0 (``learner.prepared``)."""
    learner = TextPolicyGradient.__new__(TextPolicyGradient)
    learner.config = config
    n = len(turn_advantage)
    learner.prepared = _Prepared(
        rows=torch.zeros(n, dtype=torch.long), cols=torch.arange(n), turn_of=torch.arange(n), weight=torch.ones(n),
        old_log_prob=torch.zeros(n), ref_log_prob=None, token_advantage=torch.zeros(n), token_scale=torch.ones(n),
        episode_of=torch.arange(n), turn_sample=torch.zeros(n, dtype=torch.long), value_pos=torch.zeros(n, dtype=torch.long),
        turn_advantage=turn_advantage, turn_return=torch.zeros(n), turn_value=torch.zeros(n))
    learner.policy = type("Values", (), {"values": staticmethod(lambda hidden, positions: torch.zeros(len(positions)))})
    return learner


def test_rl4vlm_ratio_cap_keeps_only_the_clipped_term_past_it() -> None:
    for cap, expect_first in ((None, True), (10.0, False)):
        learner = stub_learner(TextPGConfig(clip=0.1, ratio_cap=cap), torch.tensor([-1.0, -1.0, 1.0]))
        log_prob = torch.tensor([12.0, 1.05, 1.0]).log().requires_grad_()  # ratios 12, 1.05, 1
        policy_loss, _ = learner._ppo_losses(learner.prepared, torch.ones(3, dtype=torch.bool), log_prob,
                                             torch.zeros(1, 3, 1), [0], {})
        policy_loss.backward()
        assert (log_prob.grad[0] != 0) == expect_first  # A < 0 at ratio 12: min() keeps r A, the cap keeps clip(r) A
        assert log_prob.grad[1] != 0 and log_prob.grad[2] != 0


def test_rl4vlm_cosine_schedule_steps_once_per_update_and_resumes(tiny_lm: Path) -> None:
    policy, chat = policy_and_chat(tiny_lm, value_head=True)
    batch = numberline_batch(policy, chat, num_envs=4)
    config = TextPGConfig(epochs=1, lr=1e-3, lr_schedule="cosine", cosine_updates=4, lr_end=1e-9, adam_eps=1e-7)
    learner = TextPolicyGradient(policy, config)
    assert learner.optimizer.param_groups[0]["eps"] == 1e-7
    rates = [learner.update(batch)["lr"] for _ in range(2)]  # each update's own rate: k = 0, 1
    expected = [1e-9 + (1e-3 - 1e-9) * (1 + np.cos(np.pi * k / 4)) / 2 for k in (0, 1, 2)]
    assert rates == pytest.approx(expected[:2], rel=1e-6)
    restored = TextPolicyGradient(policy, config)
    restored.load_state_dict(learner.state_dict())
    assert restored.update(batch)["lr"] == pytest.approx(expected[2], rel=1e-6)
    with pytest.raises(ValueError, match="schedule"):
        restored.load_state_dict(learner.state_dict() | {"scheduler": None})


def archer_setup(tiny_lm: Path, **config) -> tuple[ArCHer, LLMPolicy, ChatFormat]:
    policy, chat = policy_and_chat(tiny_lm, sft=True)
    return ArCHer(policy, chat, ArcherConfig(batch_size=64, **config), torch.Generator().manual_seed(0)), policy, chat


def test_archer_actor_step_raises_the_reply_its_critic_prefers(tiny_lm: Path) -> None:
    archer, policy, chat = archer_setup(tiny_lm, actor_lr=1e-3)
    batch = numberline_batch(policy, chat)
    archer.add(batch)
    # a fixed critic: Q(s, "+") = 1, Q(s, anything else) = 0, V = 0 (two members that disagree by 0.5)
    archer.critic.q_values = lambda obs, replies: torch.tensor([[float(r.strip() == "+") for r in replies]] * 2) \
        + torch.tensor([[0.0], [0.5]])
    archer.critic.v_values = lambda obs: torch.zeros(2, len(obs))
    prompt = chat.first_prompt(batch.turns[0].observation)
    end = [policy.tokenizer.eos_token_id]
    plus, minus = (policy.tokenizer.encode(r, add_special_tokens=False) + end for r in ("+", "-"))
    replies = [plus, minus, plus, plus]  # the actor's fresh replies, fixed here

    def policy_replies(observations: list[str]) -> tuple[list, list, list]:
        chosen = [replies[k % 4] for k in range(len(observations))]
        return [prompt] * len(observations), chosen, [policy.tokenizer.decode(r, skip_special_tokens=True) for r in chosen]

    archer._policy_replies = policy_replies  # type: ignore[method-assign]

    def log_p(reply: list[int]) -> torch.Tensor:
        return policy.score([prompt + reply])[0].log_probs[0, len(prompt):].sum()

    before = {"+": float(log_p(plus)), "-": float(log_p(minus))}
    with torch.no_grad():
        n = min(archer.config.batch_size, len(archer.buffer))  # the actor's batch
        raw = torch.tensor([[1.0, 0.0, 1.0, 1.0][k % 4] for k in range(n)])  # min Q - min V: raw, not standardised
        expected = -(raw * torch.stack([log_p(replies[k % 4]) for k in range(n)])).mean()
    metrics = archer._actor_step(None)
    assert metrics["advantage_mean"] == pytest.approx(float(raw.mean()))
    assert metrics["actor_loss"] == pytest.approx(float(expected), rel=1e-5)
    assert float(log_p(plus)) > before["+"] and float(log_p(minus)) < before["-"]


def test_archer_advantage_and_target_update_match_a_hand_computation(tiny_lm: Path) -> None:
    archer, policy, chat = archer_setup(tiny_lm, tau=0.1)
    with torch.no_grad():  # member m of Q answers q[m], of V answers v[m], whatever the input
        for net, values in ((archer.critic.q, (3.0, 2.0)), (archer.critic.v, (0.5, 1.5))):
            last = net.net[-1]
            last.weight.zero_()
            last.bias.copy_(torch.tensor(values).view(2, 1, 1))
    advantage = archer.advantages(["position 1, target 3"], ["+"])
    assert advantage.tolist() == [2.0 - 0.5]  # min(3, 2) - min(0.5, 1.5)

    archer.add(numberline_batch(policy, chat))
    target_before = [p.detach().clone() for p in archer.target_critic.parameters()]
    archer._critic_step()
    for old, online, target in zip(target_before, archer.critic.parameters(), archer.target_critic.parameters()):
        assert torch.allclose(target, 0.9 * old + 0.1 * online.detach(), atol=1e-7)


@pytest.mark.parametrize("bootstrap", [False, True])
def test_archer_takes_the_turn_limit_as_done_as_released(tiny_lm: Path, bootstrap: bool) -> None:
    archer, policy, chat = archer_setup(tiny_lm, bootstrap_truncated=bootstrap)
    batch = numberline_batch(policy, chat, num_envs=4, max_turns=1)
    archer.add(batch)
    cut = [ep.turns[-1] for ep in batch.episodes if not ep.terminated]
    assert cut and all(archer.buffer[t].terminated != bootstrap for t in cut)


def test_archer_trust_region_holds_later_actor_steps_near_the_iterations_start(tiny_lm: Path) -> None:
    moved = {}
    for beta in (0.0, 50.0):
        archer, policy, chat = archer_setup(tiny_lm, actor_lr=3e-3, actor_epochs=3, warmup_updates=0,
                                            critic_epochs=1, actor_kl_coef=beta)
        start = [p.detach().clone() for p in policy.trainable_parameters()]
        metrics = archer.update(numberline_batch(policy, chat))
        moved[beta] = sum(float((p - s).norm() ** 2) for p, s in zip(policy.trainable_parameters(), start)) ** 0.5
        assert ("actor_kl" in metrics) == (beta > 0)
        if beta:
            assert metrics["actor_kl"] > 0  # the last of three steps: the policy has left where the iteration began
    assert moved[50.0] < moved[0.0]
    with pytest.raises(ValueError, match="actor_kl_coef"):
        ArcherConfig(actor_kl_coef=-1.0)
