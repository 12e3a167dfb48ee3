"""The fast path of the streaming encoder: the per-step tokenizer encode and transformer step, each on a backend.

    tok = FastTokenizer(encoder.tokenizer, "onnx")       # .encode(frames) -> ids, as Tokenizer.encode
    stream = StreamingEncoder(encoder, window=8, tokenizer_backend="onnx", step_backend="static")

Tokenizer backends (`TOKENIZER_BACKENDS`), each checked against eager in tests/toto_robot/test_fast.py:
- "eager": `Tokenizer.encode`, the reference.
- "onnx": the conv encoder and the nearest-code search exported once per input shape (torch.onnx.export) and
  run by ONNX Runtime on the thread policy's count (toto_robot/threads.py). The same float32 computation: the
  tokens agreed with eager on every frame measured. Needs `onnxruntime` and `onnx`.
- "bf16": the conv encoder's weights in bfloat16, channels-last (oneDNN's AMX / AVX512-BF16 kernels on CPU,
  tensor cores on CUDA); the code search stays in float32. Lossy: a token whose two nearest codes are almost
  equally near can flip, so its agreement with eager is measured and reported, never assumed.
- "compile": torch.compile of the eager encode (the same tokens; minutes of warm-up on CPU, for CUDA).
ONNX Runtime's int8 static quantization of the convolutions was measured too and not kept: about 2x faster than
float32 on the small encoder but only ~73% of tokens agreed, against ~95% for bf16 at more speed.

Transformer step backends (`STEP_BACKENDS`, toto_robot.encoder.StreamingEncoder):
- "eager": the growing SinkWindowCache, the reference;
- "static": SinkWindowCache(static=True), one shape per stream and no per-step concatenation (same features
  up to float rounding);
- "bf16": the static cache under bfloat16 autocast (lossy; the features' max abs diff is reported);
- "compile": the static cache with the step compiled by torch.compile.
A backend that cannot run here (a missing package, an export or compile failure) falls back to eager with one
warning line; `backend` and `fallback_reason` say what runs and why.
"""

from __future__ import annotations

import copy
import io
import logging
import time
import warnings

import numpy as np
import torch
from einops import rearrange
from torch import nn

from toto_robot.frames import as_frames
from toto_robot.tokenizer import EMAVectorQuantizer, Tokenizer

logger = logging.getLogger(__name__)

TOKENIZER_BACKENDS = ("eager", "onnx", "bf16", "compile")
STEP_BACKENDS = ("eager", "static", "bf16", "compile")


def check_backend(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")


def token_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of token ids that are equal (same shapes)."""
    if a.shape != b.shape:
        raise ValueError(f"token_agreement: shapes differ, {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a == b).float().mean()) if a.numel() else 1.0


class TokenIds(nn.Module):
    """Tokenizer encode after preprocessing: x (N, 3, H, W) in [-1, 1] -> ids (N, h, w), the program a backend
    runs. `bf16` runs the conv encoder in bfloat16 channels-last and the code search in float32."""

    def __init__(self, tokenizer: Tokenizer, bf16: bool = False):
        super().__init__()
        self.tokenizer, self.bf16 = tokenizer, bf16
        if bf16:
            self.tokenizer = copy.deepcopy(tokenizer)
            self.tokenizer.encoder.to(torch.bfloat16).to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tok = self.tokenizer
        if self.bf16:
            z = tok.encoder(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)).float()
        else:
            z = tok.encoder(x)
        n, _c, h, w = z.shape
        z = rearrange(z, "n c h w -> (n h w) c")
        # the ids alone: the code search (vq) or the rounding (fsq), none of the training-time losses
        ids = tok.quantizer.nearest(z) if isinstance(tok.quantizer, EMAVectorQuantizer) else tok.quantizer(z)[1]
        return ids.view(n, h, w)


def bf16_supported(device: torch.device) -> bool:
    """Fast bf16 convolutions: CUDA, or a CPU whose oneDNN has native bf16 kernels (else they are emulated)."""
    if device.type == "cuda":
        return True
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class FastTokenizer:
    """`Tokenizer.encode` on one of TOKENIZER_BACKENDS (module docstring): frames (B, T, H, W, 3) -> ids
    (B, T, h, w) int64. `warmup_s` adds up the export / session / compile time spent so far."""

    def __init__(self, tokenizer: Tokenizer, backend: str = "eager"):
        check_backend("tokenizer_backend", backend, TOKENIZER_BACKENDS)
        self.tokenizer, self.requested = tokenizer, backend
        self.backend, self.fallback_reason = backend, None
        self.warmup_s = 0.0
        self._sessions: dict[tuple[int, ...], object] = {}  # onnx: one session per input shape
        self._compiled_shapes: set[tuple[int, ...]] = set()  # compile: the shapes compiled so far
        self._program: nn.Module | None = None
        device = next(tokenizer.parameters()).device
        if backend == "onnx":
            try:
                import onnx  # noqa: F401  (torch.onnx.export writes through it)
                import onnxruntime  # noqa: F401
            except ImportError as exc:
                self._fall_back(f"{exc.name} is not installed")
            if device.type != "cpu" and self.backend == "onnx":
                self._fall_back(f"the onnx backend runs on the CPU, the tokenizer is on {device}")
        elif backend == "bf16":
            if bf16_supported(device):
                self._program = TokenIds(tokenizer, bf16=True).eval()
            else:
                self._fall_back("this CPU has no native bf16 kernels")
        elif backend == "compile":
            self._program = torch.compile(TokenIds(tokenizer).eval(), dynamic=False)

    def _fall_back(self, reason: str) -> None:
        logger.warning("tokenizer backend %r unavailable (%s): using eager", self.requested, reason)
        self.backend, self.fallback_reason, self._program = "eager", reason, None

    @property
    def cfg(self):
        return self.tokenizer.cfg

    def _onnx_session(self, x: torch.Tensor):
        import onnxruntime as ort

        buffer = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shape checks it records as constants
            torch.onnx.export(TokenIds(self.tokenizer).eval(), (x,), buffer, dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["ids"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the thread policy's count
        options.inter_op_num_threads = 1
        # Spinning worker threads are what makes busy cores so costly (toto_robot/threads.py): off.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "onnx":
            key = tuple(x.shape)
            if key not in self._sessions:
                t0 = time.perf_counter()
                try:
                    self._sessions[key] = self._onnx_session(x)
                except Exception as exc:  # noqa: BLE001  (any export / session failure: eager, with the reason)
                    self._fall_back(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                    return self._run(x)
                finally:
                    self.warmup_s += time.perf_counter() - t0
            ids = self._sessions[key].run(None, {"x": np.ascontiguousarray(x.numpy())})[0]
            return torch.from_numpy(ids).long()
        if self._program is not None:
            if self.backend == "compile" and tuple(x.shape) not in self._compiled_shapes:  # compiles: timed
                t0 = time.perf_counter()
                try:
                    ids = self._program(x)
                except Exception as exc:  # noqa: BLE001  (no C++ compiler, an unsupported op: eager)
                    self._fall_back(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                    return self._run(x)
                self.warmup_s += time.perf_counter() - t0
                self._compiled_shapes.add(tuple(x.shape))
                return ids
            return self._program(x)
        _, ids, _ = self.tokenizer._quantize(x)
        return ids

    @torch.no_grad()
    def encode(self, frames) -> torch.Tensor:
        """Frames (B, T, H, W, 3) uint8 or float in [0, 1] -> token ids (B, T, h, w), int64 (Tokenizer.encode)."""
        if self.backend == "eager":
            return self.tokenizer.encode(frames)
        device = next(self.tokenizer.parameters()).device
        x = as_frames(frames, size_multiple=self.cfg.downsample).to(device)
        b = x.shape[0]
        ids = self._run(rearrange(x, "b t c h w -> (b t) c h w"))
        return rearrange(ids.to(device), "(b t) h w -> b t h w", b=b)
