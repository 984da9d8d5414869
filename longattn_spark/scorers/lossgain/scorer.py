"""Loss gain with a causal LM: the full pass and the batched short passes that give each
window's per-token losses (the definition and the score: ``losses.py``). No Spark here.

>>> scorer = LossGainScorer.from_pretrained("/models/SmolLM2-135M")
>>> results = scorer.score_windows([ids_a, ids_b], seq_len=1024)   # short_context: L // 4
>>> results[0].score, results[0].key_share, results[0].full_loss, results[0].short_loss

Cost: one pass over the B windows' L tokens, then every short pass of every window of the
call stacked into one batch of sequences of 2S + 1 tokens (the last block of a window may be
shorter; blocks of one length go together, so nothing is padded): about L + 2(L - 2S) tokens
per window, 2L at S = L/4, with shorter attention spans in the short passes.

GPU path: attention is PyTorch's fused SDPA (transformers' default ``attn_implementation``
for these models, recorded as ``attn_implementation``: flash / memory-efficient kernels on
CUDA), the short passes of a call are one gather and one batch per block length (no Python
loop over blocks on the device), and the per-target losses stay on the device until one
copy to the host per pass.

Memory: the model's body runs to its last hidden state; the LM head is applied only at the
positions whose targets the score reads (t in [2S, L)), a chunk of positions at a time,
log-softmax in float32 and only the target's log-probability kept, so a large vocabulary never
puts a ``[B, L, V]`` tensor in memory. Whether body + head gives the model's own logits (no
logit soft-capping or scaling after the head) is checked once per scorer on a short probe;
if not, the model's whole forward is used (logits of one call's sequences).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longattn_spark.devices import dtype_name
from longattn_spark.errors import InputError
from longattn_spark.scorers.lossgain.losses import (
    DEFAULT_COPY_NGRAM,
    copied_targets,
    LossGainResult,
    checked_short_context,
    lossgain_from_losses,
    min_cohesion,
    short_blocks,
)
from longattn_spark.scorers.model_input import windows_with_bos
from longattn_spark.weights.causal_lm import load_causal_lm
from longattn_spark.weights.configs import bos_token_id

_MIB = 1 << 20


class LossGainScorer:
    """Loss gain of windows with one causal LM (module docstring)."""

    def __init__(self, model: torch.nn.Module, *, bos_id: int, device: torch.device,
                 dtype: torch.dtype, path: Path | None = None,
                 raw_config: dict[str, Any] | None = None,
                 head_budget_bytes: int | None = None,
                 tokens_per_call: int | None = None) -> None:
        self.model = model
        self.bos_id = int(bos_id)
        self.device = device
        self.dtype = dtype
        self.path = path
        self.raw_config = raw_config or {}
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)
        default_head = 1024 * _MIB if device.type == "cuda" else 256 * _MIB
        self.head_budget_bytes = int(head_budget_bytes or default_head)
        #: sequences of one call hold about this many tokens (at least one batch's full pass)
        self.tokens_per_call = int(tokens_per_call or 0)
        self._split: bool | None = None   # body + head == the model's logits (probed once)
        #: the attention transformers runs ("sdpa": PyTorch's fused attention)
        self.attn_implementation = str(getattr(getattr(model, "config", None),
                                               "_attn_implementation", None))

    # ---- construction -----------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype = "float32", allow_pickle: bool = False,
                        bos_id: int | None = None, **kwargs: Any) -> LossGainScorer:
        """Load the causal LM in folder ``path`` (no remote code; safetensors unless
        ``allow_pickle``). ``bos_id``: the folder's own (config.json, else
        generation_config.json) when None. One-line ``InputError`` for a folder that is not
        a causal LM or has no BOS id."""
        loaded = load_causal_lm(path, device=device, dtype=dtype, allow_pickle=allow_pickle,
                                method="lossgain")
        bos = bos_id if bos_id is not None else bos_token_id(loaded.raw_config,
                                                             _generation_config(loaded.folder))
        if bos is None:
            raise InputError(f"{loaded.folder}: neither config.json nor generation_config.json "
                             f"sets bos_token_id (lossgain scores BOS + the window)")
        return cls(loaded.model, bos_id=bos, device=loaded.device, dtype=loaded.dtype,
                   path=loaded.folder, raw_config=loaded.raw_config, **kwargs)

    # ---- scoring ----------------------------------------------------------------------

    def score_windows(self, windows: Sequence[Any], *, seq_len: int, short_context: int = 0
                      ) -> list[LossGainResult]:
        """Loss gain of each window (token ids without BOS, at least ``seq_len - 1`` of
        them), in order."""
        inputs = model_inputs(windows, self.bos_id, seq_len)
        return self.score(inputs, short_context)

    def score(self, inputs: torch.Tensor, short_context: int = 0,
              copy_ngram: int = DEFAULT_COPY_NGRAM) -> list[LossGainResult]:
        """Loss gain of each row of ``inputs`` (``[B, L]``, BOS first), with its copy
        components for m = ``copy_ngram`` and its break components."""
        s = checked_short_context(short_context, int(inputs.shape[1]))
        full, short = self.losses(inputs, s)
        ids = torch.as_tensor(inputs).cpu().numpy()
        return [lossgain_from_losses(full[b], short[b], s, copied_targets(ids[b], s, copy_ngram),
                                     min_cohesion(ids[b], s))
                for b in range(full.shape[0])]

    @torch.inference_mode()
    def losses(self, inputs: torch.Tensor, short_context: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """(l_full, l_short) as float32 ``[B, L]`` arrays indexed by target t, computed for
        t in [2S, L) (NaN elsewhere)."""
        inputs = torch.as_tensor(inputs, dtype=torch.long)
        if inputs.dim() != 2:
            raise InputError(f"inputs must be [B, L], got shape {tuple(inputs.shape)}")
        batch, length = (int(n) for n in inputs.shape)
        s = checked_short_context(short_context, length)
        self._check_ids(inputs)
        budget = max(self.tokens_per_call, batch * length)
        full = np.full((batch, length), np.nan, dtype=np.float32)
        short = np.full((batch, length), np.nan, dtype=np.float32)
        rows = max(1, budget // length)
        for begin in range(0, batch, rows):
            chunk = inputs[begin:begin + rows]
            full[begin:begin + rows, 2 * s:] = self._target_losses(
                chunk, first=2 * s - 1, count=length - 2 * s)
        blocks = short_blocks(length, s)
        for block_length in sorted({b.length for b in blocks}, reverse=True):
            group = [b for b in blocks if b.length == block_length]
            count = group[0].stop_target - group[0].first_target
            # [G, len-1] gather index of every block of this length, built in one step (no
            # per-block op on the device)
            starts = torch.tensor([b.start for b in group], dtype=torch.long)
            index = (starts[:, None] + torch.arange(block_length - 1)).to(inputs.device)
            passes = torch.cat([torch.full((batch, len(group), 1), self.bos_id,
                                           dtype=torch.long, device=inputs.device),
                                inputs[:, index]], dim=2).reshape(-1, block_length)
            out = np.empty((passes.shape[0], count), dtype=np.float32)
            rows = max(1, budget // block_length)
            for begin in range(0, passes.shape[0], rows):
                out[begin:begin + rows] = self._target_losses(
                    passes[begin:begin + rows], first=group[0].first_position, count=count)
            out = out.reshape(batch, len(group), count)
            first, stop = group[0].first_target, group[-1].stop_target
            if stop - first == len(group) * count:  # consecutive blocks: one slice
                short[:, first:stop] = out.reshape(batch, -1)
            else:
                for g, b in enumerate(group):
                    short[:, b.first_target:b.stop_target] = out[:, g]
        return full, short

    # ---- model passes -----------------------------------------------------------------

    def _target_losses(self, ids: torch.Tensor, *, first: int, count: int) -> np.ndarray:
        """float32 ``[n, count]``: -log p(ids[:, p + 1] | ids[:, :p + 1]) for p in
        first .. first + count - 1, from one forward pass of ``ids``."""
        ids = ids.to(self.device)
        targets = ids[:, first + 1:first + 1 + count]
        if self._use_split():
            hidden = self.model.base_model(input_ids=ids, use_cache=False).last_hidden_state
            states = hidden[:, first:first + count]
            head = self.model.get_output_embeddings()
            return self._chunked_nll(states, targets, head)
        logits = self.model(input_ids=ids, use_cache=False).logits[:, first:first + count]
        return self._chunked_nll(logits, targets, None)

    def _chunked_nll(self, states: torch.Tensor, targets: torch.Tensor,
                     head: torch.nn.Module | None) -> np.ndarray:
        """-log softmax(head(states))[target], in float32, a bounded chunk of positions at a
        time (``head`` None: ``states`` are logits already)."""
        n, count = targets.shape
        flat_states = states.reshape(n * count, -1)
        flat_targets = targets.reshape(-1)
        width = int(states.shape[-1]) if head is None else int(
            getattr(head, "out_features", 0) or self.vocab_size)
        step = max(1, self.head_budget_bytes // (12 * width))
        # kept on the model's device and copied to the host once (no sync per chunk)
        out = torch.empty(n * count, dtype=torch.float32, device=flat_states.device)
        for begin in range(0, n * count, step):
            part = flat_states[begin:begin + step]
            logits = (part if head is None else head(part)).float()
            wanted = flat_targets[begin:begin + step]
            picked = logits.gather(1, wanted.unsqueeze(1)).squeeze(1)
            out[begin:begin + step] = torch.logsumexp(logits, dim=1) - picked
            del logits
        return out.view(n, count).cpu().numpy()

    def _use_split(self) -> bool:
        """Once: does body (``base_model``) + LM head give the model's own log-probs on a
        short probe? If not (soft-capping, scaling, no separate body), use the whole
        forward."""
        if self._split is None:
            self._split = self._probe_split()
        return self._split

    def _probe_split(self) -> bool:
        base = getattr(self.model, "base_model", None)
        head = self.model.get_output_embeddings()
        if base is None or base is self.model or head is None:
            return False
        generator = torch.Generator().manual_seed(0)
        probe = torch.randint(0, self.vocab_size, (1, 12), generator=generator)
        probe[0, 0] = self.bos_id
        probe = probe.to(self.device)
        try:
            whole = self.model(input_ids=probe, use_cache=False).logits.float()
            hidden = base(input_ids=probe, use_cache=False).last_hidden_state
            split = head(hidden).float()
        except Exception:  # noqa: BLE001 - any failure means: use the whole forward
            return False
        if whole.shape != split.shape:
            return False
        tolerance = 1e-5 if self.dtype == torch.float32 else 1e-2
        gap = (whole.log_softmax(-1) - split.log_softmax(-1)).abs().max().item()
        return bool(gap <= tolerance)

    def _check_ids(self, inputs: torch.Tensor) -> None:
        if inputs.numel() and (int(inputs.min()) < 0 or int(inputs.max()) >= self.vocab_size):
            raise InputError(f"token ids outside the model's vocabulary 0..{self.vocab_size - 1}"
                             f" (min {int(inputs.min())}, max {int(inputs.max())})")

    # ---- identity ---------------------------------------------------------------------

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)


def model_inputs(windows: Sequence[Any], bos_id: int, seq_len: int) -> torch.Tensor:
    """``[B, seq_len]``: BOS followed by each window's first ``seq_len - 1`` ids."""
    return torch.from_numpy(windows_with_bos(
        [np.asarray(window, dtype=np.int64) for window in windows], int(bos_id), int(seq_len)))


def _generation_config(folder: Path) -> dict[str, Any] | None:
    path = folder / "generation_config.json"
    if not path.is_file():
        return None
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None
