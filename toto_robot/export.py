"""Export the encoder and a policy head for deployment, and check that the exported program agrees.

    result = export_encoder(encoder, example_frames, "deploy/encoder")   # -> deploy/encoder.pt2
    result = export_module(policy.head, (features,), "deploy/head")
    program = load_exported(result.path)                                   # a callable module
    print(result.method, result.max_abs_diff)

`torch.export` is tried first (an ExportedProgram saved as .pt2: no Python model code needed to run it). If it
fails (an operator or a Python construct it cannot capture), `torch.jit.trace` is the fallback (.pt), and
`ExportResult.fallback_reason` says why. Either way the saved file is loaded back and run on the example inputs
and on `check_inputs`; outputs must match eager execution within `atol`, else a ValueError names the largest
difference. Shapes are static (fixed batch = number of cameras, fixed frames per call), as in a control loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from toto_robot.encoder import TotoEncoder
from toto_robot.model import clip_to_sequence

logger = logging.getLogger(__name__)

EXPORT, TRACE = "torch.export", "torch.jit.trace"


@dataclass
class ExportResult:
    path: Path  # the saved program (.pt2 for torch.export, .pt for torch.jit.trace)
    method: str  # EXPORT or TRACE
    max_abs_diff: float  # largest |exported - eager| over every output and every checked input
    fallback_reason: str | None = None  # why torch.export was not used


class EncoderProgram(nn.Module):
    """TotoEncoder.forward as an exportable module: frames (B, T, H, W, 3) uint8 -> (features (B, T, P, C),
    pooled (B, C)). The same computation without the input checks, no_grad and autocast contexts, which
    torch.export cannot capture; `export_encoder` checks it against TotoEncoder.forward itself."""

    def __init__(self, encoder: TotoEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.encoder
        ids = enc.tokenizer.encode(frames)  # (B, T, h, w)
        seq = clip_to_sequence(ids, enc.cfg, add_end=False)  # (B, 1 + T*P)
        h = enc.model.hidden_states(seq, enc.layer)[:, 1:].float()  # (B, T*P, C)
        b, t = ids.shape[:2]
        return h.reshape(b, t, enc.cfg.tokens_per_frame, -1), enc.pool(h)  # (B, T, P, C), (B, C)


def _outputs(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _outputs(v)]
    raise TypeError(f"exported module output: expected tensors or tuples of tensors, got {type(value).__name__}")


def load_exported(path: str | Path):
    """A saved program back as a callable module (.pt2: torch.export, .pt: TorchScript)."""
    path = Path(path)
    if path.suffix == ".pt2":
        return torch.export.load(path).module()
    if path.suffix == ".pt":
        return torch.jit.load(path)
    raise ValueError(f"exported program: expected a .pt2 or .pt file, got {path}")


def max_abs_diff(program, module: nn.Module, inputs: list[tuple[torch.Tensor, ...]]) -> float:
    worst = 0.0
    with torch.no_grad():
        for args in inputs:
            got, want = _outputs(program(*args)), _outputs(module(*args))
            if len(got) != len(want):
                raise ValueError(f"exported program returns {len(got)} outputs, the module {len(want)}")
            for g, w in zip(got, want, strict=True):
                if g.shape != w.shape:
                    raise ValueError(f"exported program output shape {tuple(g.shape)} differs from {tuple(w.shape)}")
                worst = max(worst, float((g.float() - w.float()).abs().max()) if g.numel() else 0.0)
    return worst


def export_module(module: nn.Module, example_inputs: tuple[torch.Tensor, ...], path: str | Path, *,
                  check_inputs: list[tuple[torch.Tensor, ...]] | None = None, reference: nn.Module | None = None,
                  atol: float = 1e-5, method: str | None = None) -> ExportResult:
    """Export `module` (eval mode) at the shapes of `example_inputs` to `path` (+ .pt2 or .pt) and check it.

    `reference` (default: `module`) is what the exported outputs are compared with. `method` forces EXPORT or
    TRACE; None tries EXPORT and falls back to TRACE."""
    if method not in (None, EXPORT, TRACE):
        raise ValueError(f"method: expected None, {EXPORT!r} or {TRACE!r}, got {method!r}")
    if not isinstance(example_inputs, tuple) or not all(isinstance(x, torch.Tensor) for x in example_inputs):
        raise TypeError(f"example_inputs: expected a tuple of tensors, got {type(example_inputs).__name__}")
    module.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reason = None
    saved = None
    if method in (None, EXPORT):
        try:
            # Under no_grad: a grad-mode switch inside forward (no_grad-decorated helpers) cannot be captured.
            with torch.no_grad():
                program = torch.export.export(module, example_inputs, strict=False)
            saved = path.with_suffix(".pt2")
            torch.export.save(program, saved)
        except Exception as exc:  # whatever torch.export cannot capture, the fallback may
            if method == EXPORT:
                raise
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            logger.warning("torch.export failed (%s); falling back to torch.jit.trace", reason)
    if saved is None:
        with torch.no_grad():
            traced = torch.jit.trace(module, example_inputs, check_trace=False)
        saved = path.with_suffix(".pt")
        traced.save(str(saved))
    program = load_exported(saved)
    diff = max_abs_diff(program, reference or module, [example_inputs, *(check_inputs or [])])
    if not diff <= atol:
        raise ValueError(f"exported program {saved} differs from the module by up to {diff:.3g} (allowed {atol})")
    return ExportResult(saved, EXPORT if saved.suffix == ".pt2" else TRACE, diff, reason)


class _EncoderReference(nn.Module):
    """TotoEncoder.forward's outputs as a tuple, the reference an exported encoder must match."""

    def __init__(self, encoder: TotoEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(frames)
        return out.features, out.pooled


def export_encoder(encoder: TotoEncoder, example_frames: torch.Tensor, path: str | Path, *,
                   check_frames: list[torch.Tensor] | None = None, atol: float = 1e-4,
                   method: str | None = None) -> ExportResult:
    """Export the frozen encoder for frames of the example's shape (B, T, H, W, 3) uint8; checked against
    TotoEncoder.forward on the example and on `check_frames`."""
    encoder.check_frames(example_frames)
    return export_module(EncoderProgram(encoder), (example_frames,), path,
                         check_inputs=[(f,) for f in check_frames or []], reference=_EncoderReference(encoder),
                         atol=atol, method=method)
