"""The TRL side of the ``anchors`` measure: ``SFTTrainer``, ``GRPOTrainer`` and
``DPOTrainer`` in this process, on the same model, data and settings as our recipes.

Each function trains one short run and returns a :class:`Trace`: the wall time of
every optimizer step (from one step's end to the next, so the first step, which
pays dataset preparation, compilation-free warm-up and the reference precompute,
is left out by the caller) and the per-step learning figure TRL logs (train loss,
mean reward, preference accuracy). ``trl`` is an optional extra
(``pip install -e '.[anchors]'``); torch, transformers and trl are imported in the
functions only.

What is matched with the recipe (the measure writes it into each row's note): the
built-in pretrained ``tiny``, LoRA r=16, alpha 32 on q/k/v/o/gate/up/down, no
dropout; AdamW betas (0.9, 0.95), no weight decay, gradient clipping at 1.0; the
same rows of the task registry; the same batch, lengths, steps and schedule.
"""

from __future__ import annotations

import itertools
import json
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.measures._trainer import LORA_ALPHA, PROJECTIONS

RANK = 16  # conf/model/tiny.yaml: the rank our recipes train with on tiny


@dataclass
class Trace:
    """One run: seconds per optimizer step and the learning figure of each step."""

    step_s: list[float] = field(default_factory=list)
    learning: list[float] = field(default_factory=list)


def lora_config() -> Any:
    from peft import LoraConfig

    return LoraConfig(r=RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=PROJECTIONS)


def _common_args(work: str, seed: int, steps: int, learning_rate: float, **extra: Any
                 ) -> dict[str, Any]:
    return {"output_dir": work, "max_steps": steps, "learning_rate": learning_rate,
            "adam_beta1": 0.9, "adam_beta2": 0.95, "weight_decay": 0.0, "max_grad_norm": 1.0,
            "logging_steps": 1, "save_strategy": "no", "eval_strategy": "no",
            "report_to": "none", "use_cpu": True, "dataloader_num_workers": 0, "seed": seed,
            "disable_tqdm": True, "bf16": False, "fp16": False, **extra}


def _run(make_trainer: Callable[[Any], Any], key: str) -> Trace:
    """Train with a callback that stamps every step's end and keeps ``logs[key]``."""
    from transformers import TrainerCallback

    trace = Trace()
    stamps: list[float] = []

    class Stamps(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kwargs: Any) -> None:
            if logs and key in logs:
                trace.learning.append(float(logs[key]))

    import datasets
    import transformers
    from transformers.trainer_callback import PrinterCallback

    # The suite's stdout is its table: no per-step log dicts, bars or warnings from TRL.
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    trainer = make_trainer(Stamps())
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    trace.step_s = [b - a for a, b in itertools.pairwise(stamps)]
    return trace


def _model(model_path: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)


def _tokenizer(model_path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


# -- SFT ------------------------------------------------------------------------------


def sft_rows(model_path: str, num_examples: int, eval_examples: int, max_length: int,
             seed: int) -> list[dict[str, list[int]]]:
    """The recipe's training examples, rendered by the same code: ids and assistant masks.

    The recipe shuffles the synthetic chats with ``random.Random(seed)`` and holds the
    first ``eval_examples`` out; the same happens here, so both train on the same rows.
    """
    from loops_runner.data.chat import render
    from loops_runner.data.synthetic import conversations

    tokenizer = _tokenizer(model_path)
    chats = conversations(num_examples, seed=seed)
    order = list(range(len(chats)))
    random.Random(seed).shuffle(order)
    rows = []
    for index in order[eval_examples:]:
        example = render(tokenizer, chats[index]["messages"], "assistant", max_length)
        if example.trained_tokens > 0:
            rows.append({"input_ids": example.tokens,
                         "assistant_masks": [int(w) for w in example.weights]})
    return rows


def sft(model_path: str, rows: list[dict[str, list[int]]], *, batch_size: int, steps: int,
        learning_rate: float, warmup_steps: int, min_lr_ratio: float, max_length: int,
        seed: int) -> Trace:
    """``SFTTrainer`` on pre-tokenized rows (loss on the assistant tokens only)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    with tempfile.TemporaryDirectory(prefix="trl-sft-") as work:
        args = SFTConfig(**_common_args(
            work, seed, steps, learning_rate, per_device_train_batch_size=batch_size,
            lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr_rate": min_lr_ratio}, warmup_steps=warmup_steps,
            max_length=max_length, packing=False))
        return _run(lambda callback: SFTTrainer(
            model=_model(model_path), args=args, train_dataset=Dataset.from_list(rows),
            processing_class=_tokenizer(model_path), peft_config=lora_config(),
            callbacks=[callback]), "loss")


# -- GRPO -----------------------------------------------------------------------------


def _task_reward(prompts: list[Any], completions: list[Any], row: list[str],
                 **_: Any) -> list[float]:
    """The task registry's checker, as the recipe's bundled env scores a reply."""
    from loops_runner import tasks

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [tasks.score(json.loads(r), text) for r, text in zip(row, texts, strict=True)]


def grpo(model_path: str, task_rows: list[dict[str, Any]], *, groups: int, group_size: int,
         max_tokens: int, steps: int, learning_rate: float, seed: int) -> Trace:
    """``GRPOTrainer``: ``groups`` prompts x ``group_size`` completions per step, no KL."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from loops_runner import tasks

    dataset = Dataset.from_list([{"prompt": tasks.as_messages(r), "row": json.dumps(r)}
                                 for r in task_rows])
    with tempfile.TemporaryDirectory(prefix="trl-grpo-") as work:
        args = GRPOConfig(**_common_args(
            work, seed, steps, learning_rate, per_device_train_batch_size=groups * group_size,
            num_generations=group_size, max_completion_length=max_tokens, temperature=1.0,
            top_p=1.0, beta=0.0, scale_rewards="none", lr_scheduler_type="constant",
            warmup_steps=0))
        return _run(lambda callback: GRPOTrainer(
            model=_model(model_path), reward_funcs=_task_reward, args=args,
            train_dataset=dataset, processing_class=_tokenizer(model_path),
            peft_config=lora_config(), callbacks=[callback]), "reward")


# -- DPO ------------------------------------------------------------------------------


def dpo(model_path: str, pairs: list[Any], *, batch_size: int, steps: int, beta: float,
        learning_rate: float, warmup_steps: int, min_lr_ratio: float, max_length: int,
        seed: int) -> Trace:
    """``DPOTrainer`` on the recipe's task pairs, reference logprobs computed up front
    (as the recipe does), the reference being the base model (adapter off)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    dataset = Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen,
                                  "rejected": p.rejected} for p in pairs])
    with tempfile.TemporaryDirectory(prefix="trl-dpo-") as work:
        args = DPOConfig(**_common_args(
            work, seed, steps, learning_rate, per_device_train_batch_size=batch_size,
            lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr_rate": min_lr_ratio}, warmup_steps=warmup_steps,
            beta=beta, max_length=max_length, precompute_ref_log_probs=True))
        return _run(lambda callback: DPOTrainer(
            model=_model(model_path), args=args, train_dataset=dataset,
            processing_class=_tokenizer(model_path), peft_config=lora_config(),
            callbacks=[callback]), "rewards/accuracies")
