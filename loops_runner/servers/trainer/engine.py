"""The training engine: one frozen base model, one LoRA adapter per run (torch + PEFT).

Every run (``run_id``) owns a PEFT adapter on the shared base model, an AdamW
state, a gradient buffer (the ``.grad`` of its own adapter parameters) and a
normalisation counter. Runs never touch each other's tensors, so sweep jobs
share the base weights in memory and still train independently.

All methods run on the operation store's single engine thread, one at a time:
the engine itself holds no locks.

Math (spec 4.8): ``forward_backward`` adds the gradient of the *sum* of its
per-token losses and adds its count of active tokens (pairs for DPO);
``optim_step`` divides by ``max(1, count)`` (unless the step's gradients came
with ``skip_token_normalization``), clips the global norm, applies AdamW and
clears the buffer. Chunked submissions therefore give the same update as one.
One micro-batch's forward (logits, loss, per-datum outputs) is ``forward_pass``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from loops_runner.models.loading import LoadedModel
from loops_runner.servers.trainer import checkpoint_folders, forward_pass, publish, residency
from loops_runner.servers.trainer.batching import (
    CUDA_BATCH_OVERHEAD_TOKENS,
    DEFAULT_BATCH_OVERHEAD_TOKENS,
    Strategy,
    default_token_budget,
    plan_micro_batches,
)
from loops_runner.servers.trainer.losses import (
    finish_stats,
    merge_stats,
)
from loops_runner.servers.trainer.optimizer import AdamState, adamw_step, global_grad_norm
from loops_runner.servers.trainer.validation import ModelLimits, PreparedBatch
from loops_runner.storage import atomic, layout
from loops_runner.wire.paths import bt_path, parse_bt_path
from loops_runner.wire.tensors import TensorData
from loops_runner.wire.training import (
    AdamParams,
    ForwardBackwardOutput,
    InitTrainerServerResponse,
    LoadWeightsResponse,
    OptimStepResponse,
    SaveWeightsForSamplerResponse,
    SaveWeightsResponse,
)

logger = logging.getLogger(__name__)

DEFAULT_LORA_ALPHA = 32
DEFAULT_LORA_SEED = 0
NORMALIZATION_ENV = "LOOPS_TRAINER_NORMALIZATION"  # "token" (default, spec 4.8) or "sum"
# Architectures whose logits are exactly lm_head(decoder(x)) (no soft-capping or
# scaling): for them only positions with a target go through the lm_head.
PLAIN_LM_HEAD_TYPES = frozenset({"qwen2", "qwen3", "llama", "mistral", "qwen2_moe", "qwen3_moe"})
# Leaf names of the attention and MLP projections LoRA adapts.
PROJECTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

NormMode = Literal["tokens", "pairs", "sum"]
_MODE_TEXT = {"tokens": "token-normalized", "pairs": "pair-normalized (dpo)",
              "sum": "unnormalized (skip_token_normalization)"}


@dataclass
class RunState:
    run_id: str
    adapter: str  # PEFT adapter name (run ids may hold characters module names cannot)
    rank: int
    alpha: float
    seed: int
    lora_config: LoraConfig
    params: dict[str, torch.nn.Parameter]  # PEFT state-dict key -> parameter
    optimizer: AdamState = field(default_factory=AdamState)
    step: int = 0
    grad_count: float = 0.0
    grad_mode: NormMode | None = None

    def clear_gradients(self) -> None:
        for param in self.params.values():
            param.grad = None
        self.grad_count = 0.0
        self.grad_mode = None


class TrainerEngine:
    def __init__(
        self,
        loaded: LoadedModel,
        home: Path,
        *,
        base_model_id: str,
        token_budget: int | None = None,
        strategy: Strategy = "grouped",
        lora_alpha: float = DEFAULT_LORA_ALPHA,
        normalization: str | None = None,
    ) -> None:
        self.loaded = loaded
        self.home = home
        self.base_model_id = base_model_id
        self.base = loaded.model
        self.device = loaded.device
        self.lora_alpha = lora_alpha
        self.token_budget = token_budget or default_token_budget(loaded.vocab_size)
        self.strategy: Strategy = strategy
        self.normalization = normalization or os.environ.get(NORMALIZATION_ENV, "token")
        if self.normalization not in ("token", "sum"):
            raise ValueError(f"{NORMALIZATION_ENV} must be 'token' or 'sum', "
                             f"got {self.normalization!r}")
        self.batch_overhead_tokens = (CUDA_BATCH_OVERHEAD_TOKENS if self.device.type == "cuda"
                                      else DEFAULT_BATCH_OVERHEAD_TOKENS)
        self.limits = ModelLimits(loaded.vocab_size, loaded.max_context_length,
                                  loaded.resolved.requested)
        self.target_modules = _projection_modules(self.base)
        model_type = getattr(self.base.config, "model_type", "")
        self.plain_lm_head = model_type in PLAIN_LM_HEAD_TYPES
        self.peft: PeftModel | None = None
        # Resident runs, least recently used first; idle ones beyond the cap
        # live on disk (residency.py) and come back on their next operation.
        self.runs: dict[str, RunState] = {}
        self.evicted: set[str] = set()
        self.max_resident_runs = residency.max_resident_runs()
        self._active: str | None = None
        self._adapters_made = 0

    # -- runs ------------------------------------------------------------------

    def run(self, run_id: str) -> RunState:
        state = self.runs.pop(run_id, None)
        if state is None and run_id in self.evicted:
            state = self._restore(run_id)
        if state is None:
            raise ValueError(f"unknown run {run_id!r}: send init_trainer_server first")
        self.runs[run_id] = state  # most recently used last
        self._evict_idle(keep=run_id)
        return state

    def _new_adapter(self, lora_rank: int, seed: int
                     ) -> tuple[str, LoraConfig, dict[str, torch.nn.Parameter]]:
        """A seeded adapter, made active; its PEFT name and parameters."""
        self._adapters_made += 1
        adapter = f"run{self._adapters_made}"
        config = LoraConfig(r=lora_rank, lora_alpha=self.lora_alpha,
                            target_modules=sorted(self.target_modules), lora_dropout=0.0,
                            bias="none", task_type="CAUSAL_LM")
        # Seeded and isolated: the same (seed, rank) always gives the same
        # adapter, whatever other runs did to the global generator.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.peft is None:
                self.peft = get_peft_model(self.base, config, adapter_name=adapter)
            else:
                self.peft.add_adapter(adapter, config)
        self.peft.set_adapter(adapter)
        self._active = adapter
        marker = f".{adapter}."
        params = {name.replace(marker, "."): param
                  for name, param in self.peft.named_parameters() if marker in name}
        if not params:  # pragma: no cover - PEFT naming changed
            raise RuntimeError(f"no LoRA parameters found for adapter {adapter!r}")
        return adapter, config, params

    def _evict_idle(self, keep: str) -> None:
        """Move least recently used runs without pending gradients to disk, over the cap."""
        idle = [run_id for run_id, run in self.runs.items()
                if run_id != keep and run.grad_count == 0 and run.grad_mode is None]
        while len(self.runs) > self.max_resident_runs and idle:
            run_id = idle.pop(0)
            run = self.runs[run_id]
            residency.save_evicted(
                self.home, run_id,
                residency.EvictedRun(run.rank, run.seed, run.step, run.optimizer.step),
                dict(run.params), run.optimizer.exp_avg, run.optimizer.exp_avg_sq)
            assert self.peft is not None
            if self._active == run.adapter:
                self._activate(self.runs[keep])
            self.peft.delete_adapter(run.adapter)
            del self.runs[run_id]
            self.evicted.add(run_id)
            logger.info("run %s idle: state moved to disk (%d runs resident)", run_id,
                        len(self.runs))

    def _restore(self, run_id: str) -> RunState:
        meta, slots = residency.load_evicted(self.home, run_id)
        adapter, config, params = self._new_adapter(meta.rank, meta.seed)
        run = RunState(run_id, adapter, meta.rank, self.lora_alpha, meta.seed, config, params,
                       step=meta.step)
        with torch.no_grad():
            for key, param in params.items():
                param.copy_(slots["param"][key].to(param.device, param.dtype))
        run.optimizer = AdamState(step=meta.adam_step)
        for key, param in params.items():
            if key in slots["exp_avg"]:
                run.optimizer.exp_avg[key] = slots["exp_avg"][key].to(param.device)
                run.optimizer.exp_avg_sq[key] = slots["exp_avg_sq"][key].to(param.device)
        self.evicted.discard(run_id)
        logger.info("run %s back in memory from disk (step %d)", run_id, meta.step)
        return run

    def _activate(self, run: RunState) -> None:
        assert self.peft is not None
        if self._active != run.adapter:
            self.peft.set_adapter(run.adapter)
            self._active = run.adapter

    def init_run(self, run_id: str, lora_rank: int, seed: int | None = None
                 ) -> InitTrainerServerResponse:
        """A fresh seeded adapter for ``run_id``; drops its optimizer, gradients and step."""
        seed = DEFAULT_LORA_SEED if seed is None else seed
        adapter, config, params = self._new_adapter(lora_rank, seed)
        previous = self.runs.pop(run_id, None)
        if previous is not None:
            self.peft.delete_adapter(previous.adapter)  # type: ignore[union-attr]
        self.evicted.discard(run_id)
        self.runs[run_id] = RunState(run_id, adapter, lora_rank, self.lora_alpha, seed, config,
                                     params)
        self._evict_idle(keep=run_id)
        publish.set_live(self.home, run_id, 0, None)
        return InitTrainerServerResponse(step=0, lora_rank=lora_rank)

    def policy_version(self, run_id: str) -> int:
        return self.run(run_id).step

    # -- forward / forward_backward ----------------------------------------------

    def forward_backward(self, run_id: str, batch: PreparedBatch, *, backward: bool
                         ) -> ForwardBackwardOutput:
        run = self.run(run_id)
        mode: NormMode = ("sum" if batch.skip_token_normalization
                          else "pairs" if batch.loss_fn == "dpo" else "tokens")
        if backward and batch.data and run.grad_mode not in (None, mode):
            raise ValueError(
                f"this step already holds {_MODE_TEXT[run.grad_mode]} gradients; "  # type: ignore[index]
                f"{_MODE_TEXT[mode]} gradients cannot be added to the same optim_step "
                "(run optim_step first)")
        self._activate(run)
        plan = plan_micro_batches([d.length for d in batch.data], self.token_budget,
                                  unit_size=2 if batch.loss_fn == "dpo" else 1,
                                  strategy=self.strategy,
                                  batch_overhead_tokens=self.batch_overhead_tokens)
        outputs: list[dict[str, TensorData]] = [{} for _ in batch.data]
        stats: dict[str, list[float]] = {}
        count = 0.0
        saved = self._stash_grads(run) if backward else None
        try:
            for micro in plan:
                with torch.set_grad_enabled(backward):
                    part = forward_pass.micro_batch(micro, batch, outputs, self._logits,
                                                    self.device)
                    if backward and part.loss_sum.requires_grad:
                        part.loss_sum.backward()
                count += part.count
                merge_stats(stats, part.stats)
        except BaseException:
            if saved is not None:
                self._restore_grads(run, saved)
            raise
        if saved is not None:
            self._merge_grads(run, saved)
            if batch.data:
                run.grad_count += count
                run.grad_mode = mode
        metrics = finish_stats(stats)
        metrics.setdefault("loss", 0.0)
        metrics.update({
            "num_sequences": float(len(batch.data)),
            "num_tokens": float(batch.num_tokens),
            "num_loss_tokens" if batch.loss_fn != "dpo" else "num_pairs": count,
        })
        if batch.skip_token_normalization:
            metrics["skip_token_normalization"] = 1.0
        metrics = {k: v if math.isfinite(v) else 0.0 for k, v in metrics.items()}
        return ForwardBackwardOutput(loss=metrics["loss"], loss_fn_output_type="ArrayRecord",
                                     loss_fn_outputs=outputs, metrics=metrics)

    def _stash_grads(self, run: RunState) -> dict[str, torch.Tensor | None]:
        """Set the buffer aside so a failure midway can put it back untouched."""
        saved = {key: param.grad for key, param in run.params.items()}
        for param in run.params.values():
            param.grad = None
        return saved

    @staticmethod
    def _restore_grads(run: RunState, saved: dict[str, torch.Tensor | None]) -> None:
        for key, param in run.params.items():
            param.grad = saved[key]

    @staticmethod
    def _merge_grads(run: RunState, saved: dict[str, torch.Tensor | None]) -> None:
        for key, param in run.params.items():
            old, new = saved[key], param.grad
            if old is not None and new is not None:
                param.grad = old.add_(new)
            elif old is not None:
                param.grad = old

    def _logits(self, ids: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """fp32 logits of the flattened ``(row * width + position)`` ``index``.

        Rows are right-padded and passed without an attention mask: under causal
        attention a real token only sees earlier positions, which are all real,
        so padding cannot change its output and the fast causal kernel applies.
        """
        assert self.peft is not None
        if self.plain_lm_head:
            hidden = self.base.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
            picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
            return self.base.get_output_embeddings()(picked).float()
        logits = self.peft(input_ids=ids, use_cache=False).logits
        return logits.reshape(-1, logits.shape[-1]).index_select(0, index).float()

    # -- optim_step ------------------------------------------------------------------

    def optim_step(self, run_id: str, hp: AdamParams) -> OptimStepResponse:
        run = self.run(run_id)
        # "sum" (server-wide, for Tinker-exact sums, spec Q2) or a
        # skip_token_normalization step applies the summed gradient as is.
        normalize = run.grad_mode != "sum" and self.normalization == "token"
        denominator = max(1.0, run.grad_count) if normalize else 1.0
        grads: dict[str, torch.Tensor] = {}
        for key, param in run.params.items():
            grad = param.grad if param.grad is not None else torch.zeros_like(param)
            grads[key] = grad / denominator if denominator != 1.0 else grad
        norm = global_grad_norm(list(grads.values()))
        if not math.isfinite(norm):
            run.clear_gradients()
            raise ValueError("the accumulated gradient is not finite (NaN/inf); the update was "
                             "skipped and the gradient buffer cleared")
        clipped_norm = norm
        if hp.grad_clip_norm > 0 and norm > hp.grad_clip_norm:
            scale = hp.grad_clip_norm / (norm + 1e-6)
            for grad in grads.values():
                grad.mul_(scale)
            clipped_norm = norm * scale
        adamw_step(run.params, grads, run.optimizer, hp)
        units = run.grad_count
        run.clear_gradients()
        run.step += 1
        return OptimStepResponse(metrics={
            "grad_norm": norm, "grad_norm_clipped": clipped_norm,
            "learning_rate": hp.learning_rate, "step": float(run.step),
            "num_loss_tokens": units, "grad_scale": 1.0 / denominator,
        })

    # -- checkpoints -------------------------------------------------------------------

    def _payload(self, run: RunState) -> checkpoint_folders.AdapterPayload:
        tensors = {key: param.detach().to("cpu").clone() for key, param in run.params.items()}
        return checkpoint_folders.AdapterPayload(tensors, run.lora_config, run.rank, run.alpha,
                                          self.base_model_id)

    def save_state(self, run_id: str, name: str, ttl_seconds: int | None) -> SaveWeightsResponse:
        run = self.run(run_id)
        checkpoint_folders.write_checkpoint(self.home, run_id, "weights", name, self._payload(run),
                                     step=run.step, ttl_seconds=ttl_seconds,
                                     optimizer=run.optimizer)
        return SaveWeightsResponse(mode="state", path=bt_path(run_id, "weights", name))

    def save_weights_for_sampler(self, run_id: str, name: str, ttl_seconds: int | None,
                                 bump_version: bool) -> SaveWeightsForSamplerResponse:
        run = self.run(run_id)
        checkpoint_folders.write_checkpoint(self.home, run_id, "sampler_weights", name,
                                     self._payload(run), step=run.step, ttl_seconds=ttl_seconds)
        if bump_version:
            publish.set_live(self.home, run_id, run.step, name)
        return SaveWeightsForSamplerResponse(
            version=run.step, path=bt_path(run_id, "sampler_weights", name))

    def load_state(self, run_id: str, path: str, *, with_optimizer: bool) -> LoadWeightsResponse:
        run = self.run(run_id)
        if path.startswith("bt://"):
            parsed = parse_bt_path(path)
            atomic.restore_moved_aside(layout.run_dir(self.home, parsed.run_id) / parsed.kind)
        directory = layout.resolve_checkpoint_path(self.home, path)
        loaded = checkpoint_folders.read_checkpoint(directory, with_optimizer=with_optimizer)
        if loaded.base_model is not None and not self._same_base(loaded.base_model):
            raise ValueError(f"checkpoint {path} was trained on base model {loaded.base_model!r}, "
                             f"but this trainer serves {self.base_model_id!r}")
        if loaded.rank != run.rank:
            raise ValueError(f"checkpoint {path} has LoRA rank {loaded.rank}, but run "
                             f"{run_id!r} was created with rank {run.rank}")
        checkpoint_folders.check_layout(path, "adapter weights", loaded.tensors, run.params)
        if loaded.optimizer is not None:
            checkpoint_folders.check_layout(path, "optimizer moments", loaded.optimizer.exp_avg,
                                     run.params)
        with torch.no_grad():
            for key, param in run.params.items():
                param.copy_(loaded.tensors[key].to(param.device, param.dtype))
        run.clear_gradients()
        if loaded.optimizer is not None:
            state = AdamState(step=loaded.optimizer.step)
            for key, param in run.params.items():
                state.exp_avg[key] = loaded.optimizer.exp_avg[key].to(param.device, param.dtype)
                state.exp_avg_sq[key] = loaded.optimizer.exp_avg_sq[key].to(param.device,
                                                                             param.dtype)
            run.optimizer = state
            run.step = loaded.step
        else:
            run.optimizer = AdamState()
            run.step = 0
        publish.set_live(self.home, run_id, 0, None)
        return LoadWeightsResponse(step=run.step)

    def _same_base(self, other: str) -> bool:
        if other == self.base_model_id:
            return True
        from loops_runner.models.registry import canonical_model_id

        try:
            return canonical_model_id(other, self.home) == self.base_model_id
        except ValueError:
            return False

    # -- diagnostics ---------------------------------------------------------------------

    def gradient_buffer(self, run_id: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The summed, not yet normalised gradients and their counter."""
        run = self.run(run_id)
        tensors = {key: (param.grad if param.grad is not None else torch.zeros_like(param))
                   .detach().to("cpu").clone() for key, param in run.params.items()}
        meta = {"count": repr(run.grad_count), "mode": run.grad_mode or "", "step": str(run.step)}
        return tensors, meta

    def adapter_weights(self, run_id: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        run = self.run(run_id)
        tensors = {key: param.detach().to("cpu").clone() for key, param in run.params.items()}
        return tensors, {"step": str(run.step), "rank": str(run.rank), "alpha": repr(run.alpha)}


def _projection_modules(model: torch.nn.Module) -> set[str]:
    """The attention/MLP projection leaf names present in ``model``."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear)}
    found = {name for name in PROJECTION_NAMES if name in names}
    if not found:
        raise ValueError("the base model has none of the projection layers LoRA targets "
                         f"({', '.join(PROJECTION_NAMES)})")
    return found
