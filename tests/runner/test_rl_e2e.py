"""The ``rl`` recipe through the real CLI, with a user's reward and a user's env from
another directory."""

from __future__ import annotations

import json
from pathlib import Path

from loops_runner.data.checks import MAX_HELD_OUT_FRACTION
from tests.runner.conftest import kill_after_checkpoint, run_runner, runner_env

ROLLOUT_KEYS = {"step", "policy_version", "group", "prompt", "completions", "rewards",
                "advantages"}
STABLE_METRICS = {"rollout/reward_mean", "rollout/reward_std", "rollout/frac_mixed",
                  "rollout/tokens", "rollout/episode_len", "rollout/errors",
                  "rollout/staleness", "time/sample_s", "time/train_s", "time/step_s"}

REWARD_MODULE = '''
import os, time, zlib

def score(prompt, completion, **row):
    if row.get("broken"):
        return None
    time.sleep(float(os.environ.get("REWARD_SLEEP_S", "0")))
    # Partial credit that differs between any two different samples (a pretrained model
    # may answer a prompt the same way every time; then the group teaches nothing), plus
    # a field of the row.
    return zlib.crc32(completion.encode()) % 1000 / 1000 + row["bonus"]
'''

ENV_MODULE = '''
from loops_runner.rl.types import Env, EnvGroupBuilder, RLDataset, StepResult


class EvenTokens(Env):
    """Two turns; reward: the share of even token ids sampled."""

    def __init__(self, prompt, weight):
        self.prompt, self.weight, self.turn = prompt, weight, 0

    def initial_observation(self):
        return self.prompt

    def step(self, action):
        self.turn += 1
        reward = self.weight * sum(t % 2 == 0 for t in action) / max(1, len(action))
        return StepResult(reward=reward, episode_done=self.turn == 2,
                          next_observation=self.prompt + action + [7],
                          metrics={"even_share": reward / self.weight})


class Group(EnvGroupBuilder):
    def __init__(self, prompt, weight):
        self.prompt, self.weight = prompt, weight

    def make_envs(self, group_size):
        return [EvenTokens(self.prompt, self.weight) for _ in range(group_size)]

    def prompt_text(self):
        return str(self.prompt)


class Tokens(RLDataset):
    def __init__(self, groups_per_batch, weight):
        self.groups_per_batch, self.weight = groups_per_batch, weight

    def __len__(self):
        return 100

    def get_batch(self, index):
        return [Group([10 + index, 20 + g, 30], self.weight)
                for g in range(self.groups_per_batch)]


def make_dataset(setup, weight=1.0):
    return Tokens(setup.groups_per_batch, weight)
'''


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def one_run_dir(cwd: Path) -> Path:
    [run_dir] = list((cwd / "outputs" / "rl").iterdir())
    return run_dir


def write_prompts(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_user_reward_on_prompts_trains_and_counts_bad_episodes(tmp_path: Path,
                                                               runner_home: Path) -> None:
    (tmp_path / "my_rewards.py").write_text(REWARD_MODULE)
    write_prompts(tmp_path / "prompts.jsonl", [
        {"prompt": "Count to three.", "bonus": 0.0},
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Say 7."}], "bonus": 0.5},
        {"prompt": "This prompt is long. " * 600, "bonus": 0.0},  # > the 2048-token context
        {"prompt": "Broken row.", "bonus": 0.0, "broken": True},
    ])
    result = run_runner("+recipe=rl", "recipe.reward=my_rewards:score",
                        "recipe.prompts=prompts.jsonl", "recipe.max_steps=2",
                        "recipe.groups_per_batch=2", "recipe.group_size=3",
                        "recipe.eval_prompts=0", "recipe.max_rollout_error_frac=1.0",
                        cwd=tmp_path, home=runner_home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = one_run_dir(tmp_path)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(set(m) >= STABLE_METRICS for m in metrics)
    assert sum(m["rollout/errors"] for m in metrics) == 6  # the long and the broken row
    trained = [m for m in metrics if m["train/datums"] > 0]
    assert trained and all(m["kl/sample_train"] <= 1e-3 for m in trained)
    assert all(m["optim/grad_norm"] > 0 for m in trained)
    lines = read_jsonl(run_dir / "rollouts.jsonl")
    assert len(lines) == 4 and all(set(line) >= ROLLOUT_KEYS for line in lines)
    errors = [e for line in lines for e in line["errors"] if e]
    assert any("does not fit the model's context of 2048 tokens" in e for e in errors)
    assert any("my_rewards:score" in e and "returned None" in e for e in errors)
    assert "episode error" in result.stdout
    for line in lines:
        assert len(line["completions"]) == len(line["rewards"]) == len(line["advantages"]) == 3
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"


def test_user_env_runs_off_policy_with_bounded_staleness(tmp_path: Path,
                                                         runner_home: Path) -> None:
    (tmp_path / "my_envs.py").write_text(ENV_MODULE)
    result = run_runner("+recipe=rl", "recipe.env=my_envs:make_dataset",
                        "+recipe.env_args.weight=2.0", "recipe.max_steps=3",
                        "recipe.max_steps_off_policy=1", "recipe.groups_per_batch=2",
                        "recipe.group_size=3", "recipe.max_tokens=4", cwd=tmp_path,
                        home=runner_home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = read_jsonl(one_run_dir(tmp_path) / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["rollout/turns"] == 2 and m["rollout/errors"] == 0 for m in metrics)
    assert all(0 <= m["rollout/reward_mean"] <= 4.0 for m in metrics)
    assert "rollout/env/even_share" in metrics[0]
    staleness = [m["rollout/staleness"] for m in metrics]
    # Step 2 trains on samples taken while step 1 trained: one version behind, never more.
    assert staleness[0] == 0 and max(staleness) == 1
    # On-policy samples agree with the trainer; a version behind, they differ (which is
    # why the importance ratio uses the sampler's logprobs).
    assert metrics[0]["kl/sample_train"] <= 1e-3
    assert any(m["kl/sample_train"] > 1e-3 for m in metrics if m["rollout/staleness"] == 1)
    # The diagnostics say the same: the stale steps' samples carry a KL and a spread of
    # importance ratios, the distribution of staleness is logged, and each step's most
    # divergent tokens are in divergence.jsonl.
    assert metrics[0]["kl/sample_train_k3"] <= 1e-4 and metrics[0]["rollout/stale_frac"] == 0
    stale = [m for m in metrics if m["rollout/staleness"] == 1]
    assert all(m["rollout/stale_frac/lag1"] == 1.0 and m["rollout/staleness_max"] == 1
               for m in stale)
    assert any(m["kl/sample_train_k3"] > 1e-4 and m["diag/ess_frac"] < 1.0 for m in stale)
    assert all(m["diag/entropy"] > 0 and "diag/group_reward_std" in m for m in metrics)
    divergence = read_jsonl(one_run_dir(tmp_path) / "divergence.jsonl")
    assert [line["step"] for line in divergence] == [1, 2, 3]
    assert all(len(line["tokens"]) == 10 for line in divergence)
    # Tokens per step and in total: sampled (completions), prompt, trained. Off-policy, a
    # batch sampled ahead counts on the line of the step during which it was sampled, so
    # the last step may have sampled nothing new; every step trains.
    assert all(m["tokens/trained"] > 0 for m in metrics)
    for kind in ("sampled", "prompt", "trained"):
        assert metrics[0][f"tokens/{kind}"] > 0, kind
        assert metrics[-1][f"tokens/{kind}_total"] == sum(m[f"tokens/{kind}"] for m in metrics)


def test_bad_rl_config_is_refused_before_provisioning(tmp_path: Path,
                                                      runner_home: Path) -> None:
    write_prompts(tmp_path / "prompts.jsonl", [{"prompt": "ok"}, {"text": "no prompt"}])
    (tmp_path / "my_rewards.py").write_text(REWARD_MODULE)
    result = run_runner("+recipe=rl", "recipe.reward=my_rewards:score",
                        "recipe.prompts=prompts.jsonl", cwd=tmp_path, home=runner_home)
    assert result.returncode != 0
    assert "prompts.jsonl line 2: needs a 'prompt' (text or messages) or a 'messages' list" in \
        result.stderr
    assert "Loops session" not in result.stdout + result.stderr
    alone = run_runner("+recipe=rl", "recipe.reward=my_rewards:score", cwd=tmp_path,
                       home=runner_home)
    assert alone.returncode != 0 and "recipe.reward scores replies to recipe.prompts" in \
        alone.stderr


def test_killed_rl_run_resumes_from_its_checkpoint(tmp_path: Path, runner_home: Path) -> None:
    (tmp_path / "my_rewards.py").write_text(REWARD_MODULE)
    write_prompts(tmp_path / "prompts.jsonl", [{"prompt": f"Say {i}.", "bonus": 0.0}
                                               for i in range(4)])
    args = ["+recipe=rl", "recipe.reward=my_rewards:score", "recipe.prompts=prompts.jsonl",
            "recipe.max_steps=4", "recipe.save_every=2", "recipe.groups_per_batch=1",
            "recipe.group_size=2"]
    env = {**runner_env(runner_home), "REWARD_SLEEP_S": "0.25"}  # time to kill it mid-run
    run_json = kill_after_checkpoint(args, cwd=tmp_path, home=runner_home, recipe="rl", step=2,
                                     env=env)

    resumed = run_runner(*args, cwd=tmp_path, home=runner_home)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Resuming from step" in resumed.stdout
    record = json.loads(run_json.read_text())
    assert record["status"] == "completed" and record["attempts"] == 2
    assert [m["step"] for m in read_jsonl(run_json.parent / "metrics.jsonl")] == \
        [1, 2, 3, 4]
    assert [line["step"] for line in read_jsonl(run_json.parent / "rollouts.jsonl")] == \
        [1, 2, 3, 4]
    # Divergent tokens too: what the killed attempt logged after its checkpoint is dropped
    # (a step that trained nothing has no line).
    steps = [line["step"] for line in read_jsonl(run_json.parent / "divergence.jsonl")]
    assert steps == sorted(set(steps)) and set(steps) <= {1, 2, 3, 4}


def _standalone_samplers_since(home: Path, since: str) -> list[tuple[str, str, int | None]]:
    """(id, status, pid) of the standalone samplers the daemon of ``home`` created since."""
    import sqlite3

    [db] = list(home.rglob("control_plane.sqlite"))
    with sqlite3.connect(db) as connection:
        return connection.execute(
            "SELECT id, status, pid FROM deployments WHERE kind = 'sampler' AND "
            "role = 'standalone' AND created_at >= ? ORDER BY created_at", (since,)).fetchall()


def _process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie has exited; only its parent's record is left


def test_judge_reward_through_the_cli_and_its_sampler_stops_with_the_run(
        tmp_path: Path, runner_home: Path) -> None:
    import datetime as dt

    write_prompts(tmp_path / "prompts.jsonl",
                  [{"prompt": f"What is {i} + {i}?"} for i in range(8)])
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S")
    result = run_runner("+recipe=rl", "recipe.judge=tiny", "recipe.prompts=prompts.jsonl",
                        "recipe.max_steps=2", "recipe.groups_per_batch=2",
                        "recipe.group_size=3", "recipe.eval_prompts=2",
                        # The judge scores in the sampling thread too.
                        "recipe.max_steps_off_policy=1",
                        "recipe.judge_rubric='Question: {prompt} Answer: {completion} Right?'",
                        cwd=tmp_path, home=runner_home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Judge: tiny (base_model)" in result.stdout
    run_dir = one_run_dir(tmp_path)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2]
    held_out = min(2, int(8 * MAX_HELD_OUT_FRACTION))
    assert metrics[0]["eval/episodes"] == 3 * held_out and 0 < metrics[0]["eval/reward"] < 1
    for m in metrics[1:]:
        # No reward function: each reward is the judge's P(yes), and all are fresh or cached.
        assert 0 < m["rollout/env/judge_score"] < 1
        assert m["rollout/reward_mean"] == m["rollout/env/judge_score"]
        assert 0 <= m["rollout/env/judge_cached"] <= 1 and m["rollout/errors"] == 0
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    # The judge had a sampler process of its own, and it is gone now the run is over
    # (the local backend keeps the policy's trainer and sampler warm; not the judge's).
    [(sampler_id, status, pid)] = _standalone_samplers_since(runner_home, since)
    assert status == "STOPPED", (sampler_id, status)
    assert pid is not None and _process_gone(pid), pid
