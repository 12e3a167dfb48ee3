"""Training-step throughput of our `small` transformer against Hugging Face transformers'
LlamaForCausalLM built with the identical configuration, on the same batch, in the same run.

    python bench/bench_transformer.py [--batch 2] [--seq 1024] [--steps 6]
Prints tokens/s for both and the ratio ours / HF (above 1: we are faster)."""

from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from toto_robot.model import Transformer, model_preset


def hf_twin(model: Transformer) -> LlamaForCausalLM:
    c = model.cfg
    cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.ffn_hidden,
                      num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_heads,
                      max_position_embeddings=c.max_seq_len, rope_theta=c.rope_base, rms_norm_eps=c.norm_eps,
                      tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg)


def step_time(step, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]  # median


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    torch.manual_seed(0)
    ours = Transformer(model_preset("small", codebook_size=8192, max_seq_len=args.seq + 1))
    hf = hf_twin(ours)
    n_ours, n_hf = ours.num_params(), sum(p.numel() for p in hf.parameters())
    assert n_ours == n_hf, (n_ours, n_hf)  # identical architecture, identical size
    x = torch.randint(0, ours.cfg.vocab_size, (args.batch, args.seq + 1))
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-4)

    def step_ours():
        _, loss = ours(x[:, :-1], x[:, 1:])
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_hf():
        loss = hf(input_ids=x[:, :-1], labels=x[:, :-1]).loss  # HF shifts labels internally
        loss.backward()
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)

    tokens = args.batch * args.seq
    # interleave the two to share whatever else the machine is doing
    t_ours, t_hf = [], []
    for _ in range(2):
        t_ours.append(step_time(step_ours, 1, args.steps // 2))
        t_hf.append(step_time(step_hf, 1, args.steps // 2))
    t_o, t_h = min(t_ours), min(t_hf)
    print(f"model: small ({n_ours / 1e6:.2f}M params), batch {args.batch} x {args.seq} tokens, "
          f"{torch.get_num_threads()} threads")
    print(f"ours (toto_robot.Transformer):   {tokens / t_o:9.0f} tokens/s  ({t_o * 1000:.0f} ms/step)")
    print(f"peer (HF LlamaForCausalLM sdpa): {tokens / t_h:9.0f} tokens/s  ({t_h * 1000:.0f} ms/step)")
    print(f"ratio ours/HF: {t_h / t_o:.2f}x")


if __name__ == "__main__":
    main()
