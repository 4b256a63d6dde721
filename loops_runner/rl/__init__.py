"""The RL layer: envs, rollouts, advantages and datums that RL recipes share.

* :mod:`.types` — Env, StepResult, EnvGroupBuilder, RLDataset, Trajectory;
* :mod:`.message_env` — message-level envs rendered with the chat template;
* :mod:`.tools` — tool calls inside message envs;
* :mod:`.datasets` / :mod:`.plugins` — datasets of groups, the user's env or reward;
* :mod:`.rollouts` — sampling groups from the current policy (``sample(n=...)``);
* :mod:`.pipeline` — rollouts sampled ahead of training (sync or off-policy);
* :mod:`.advantages` — group-centred advantages;
* :mod:`.datums` — importance-sampling datums and the sampler/trainer agreement;
* :mod:`.reference_kl` — the optional KL penalty against the base model;
* :mod:`.reporting` — ``rollout/*`` metrics and ``rollouts.jsonl``.

Nothing here imports torch.
"""
