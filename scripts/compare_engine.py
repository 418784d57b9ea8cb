#!/usr/bin/env python3
"""nanofuse's decode engine against PyTorch on the same weights (runs on the GPU host).

    python3 scripts/compare_engine.py --nanofuse .gpu/bin/nanofuse --model random:qwen3-0.6b \
        [--prompt "The capital of France is" | --prompt-ids 1,2,3] [--steps 64] [--json out.json] [--time]

1. `nanofuse export-model` writes the model as a Hugging Face directory (config.json + bf16
   model.safetensors): random weights of a preset, or a GGUF file after nanofuse's
   dequantization, so both sides run identical bf16 weights.
2. `nanofuse generate --dump-logits` runs the engine greedily for --steps tokens and writes
   its prompt ids, tokens and the logits of every generated step.
3. PyTorch loads the directory: transformers' AutoModelForCausalLM when it is installed,
   else the plain forward below (the same math as transformers' Llama/Qwen3 modules).
   Reported: per-step logit error of the engine against PyTorch teacher-forced on the
   engine's sequence (relative L2 and argmax agreement), the free-running greedy agreement,
   and where the sequences part, PyTorch's top-2 margin at that step (a near-tie or not).
4. With --time: PyTorch's decode speed on the same model: a gpt-fast style step (static KV
   cache, the whole step captured in one CUDA graph), eager ops and, with --compile, the
   step's forward compiled by torch.compile (inductor, fullgraph) before the capture, as
   gpt-fast does; and, if transformers is present, `generate`.
"""

import argparse
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F


def load_safetensors(path, device):
    """A safetensors file as a dict of tensors (the format: u64 header length, JSON, data)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        t = torch.frombuffer(bytearray(data[a:b]), dtype=dtypes[meta["dtype"]]).reshape(meta["shape"])
        out[name] = t.to(device)
    return out


def inv_freq(cfg):
    hd = cfg["head_dim"]
    theta = cfg["rope_theta"]
    f = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    rs = cfg.get("rope_scaling")
    if rs and rs.get("rope_type") == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        low_wl, high_wl = old / lo, old / hi
        wl = 2 * math.pi / f
        scaled = torch.where(wl > low_wl, f / factor, f)
        smooth = (old / wl - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wl >= high_wl) & (wl <= low_wl)
        f = torch.where(medium, smoothed, scaled)
    return f


class PlainModel:
    """Llama / Qwen3 decode in plain PyTorch ops, bf16, with a static KV cache (gpt-fast
    style: attention over the whole cache with a position mask, so one step is a fixed
    graph)."""

    def __init__(self, cfg, sd, max_seq, device="cuda"):
        self.cfg, self.sd, self.max_seq = cfg, sd, max_seq
        self.qwen3 = cfg["architectures"][0].startswith("Qwen3")
        L, nkv, hd = cfg["num_hidden_layers"], cfg["num_key_value_heads"], cfg["head_dim"]
        self.k = torch.zeros(L, 1, nkv, max_seq, hd, dtype=torch.bfloat16, device=device)
        self.v = torch.zeros_like(self.k)
        t = torch.arange(max_seq, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq(cfg))
        emb = torch.cat([freqs, freqs], dim=-1)
        self.cos = emb.cos().to(device, torch.bfloat16)
        self.sin = emb.sin().to(device, torch.bfloat16)
        self.lm = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
        if cfg.get("tie_word_embeddings"):
            self.lm = sd["model.embed_tokens.weight"]
        self.arange = torch.arange(max_seq, device=device)

    def norm(self, x, w):
        eps = self.cfg["rms_norm_eps"]
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return w * xf.to(x.dtype)

    @staticmethod
    def rot(x):
        h = x.shape[-1] // 2
        return torch.cat([-x[..., h:], x[..., :h]], dim=-1)

    def forward(self, tokens, pos):
        """tokens [T] (int64), positions pos [T] (int64, consecutive); returns logits [T, V]."""
        cfg, sd = self.cfg, self.sd
        nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
        T = tokens.shape[0]
        x = sd["model.embed_tokens.weight"][tokens][None]  # [1, T, H]
        cos, sin = self.cos[pos][None, None], self.sin[pos][None, None]
        mask = self.arange[None, :] <= pos[:, None]  # [T, max_seq]
        for l in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{l}."
            xn = self.norm(x, sd[p + "input_layernorm.weight"])
            q = F.linear(xn, sd[p + "self_attn.q_proj.weight"]).view(1, T, nh, hd).transpose(1, 2)
            k = F.linear(xn, sd[p + "self_attn.k_proj.weight"]).view(1, T, nkv, hd).transpose(1, 2)
            v = F.linear(xn, sd[p + "self_attn.v_proj.weight"]).view(1, T, nkv, hd).transpose(1, 2)
            if self.qwen3:
                q = self.norm(q, sd[p + "self_attn.q_norm.weight"])
                k = self.norm(k, sd[p + "self_attn.k_norm.weight"])
            q = q * cos + self.rot(q) * sin
            k = k * cos + self.rot(k) * sin
            self.k[l].index_copy_(2, pos, k)
            self.v[l].index_copy_(2, pos, v)
            kk = self.k[l].repeat_interleave(nh // nkv, dim=1)
            vv = self.v[l].repeat_interleave(nh // nkv, dim=1)
            o = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask[None, None])
            o = o.transpose(1, 2).reshape(1, T, nh * hd)
            x = x + F.linear(o, sd[p + "self_attn.o_proj.weight"])
            xn = self.norm(x, sd[p + "post_attention_layernorm.weight"])
            g = F.linear(xn, sd[p + "mlp.gate_proj.weight"])
            u = F.linear(xn, sd[p + "mlp.up_proj.weight"])
            x = x + F.linear(F.silu(g) * u, sd[p + "mlp.down_proj.weight"])
        x = self.norm(x, sd["model.norm.weight"])
        return F.linear(x, self.lm)[0].float()


def hf_model(d):
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None
    return AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.bfloat16).cuda().eval()


@torch.no_grad()
def teacher_forced(model, plain, ids):
    t = torch.tensor(ids, device="cuda")
    if model is not None:
        return model(t[None]).logits[0].float()
    return plain.forward(t, torch.arange(len(ids), device="cuda"))


@torch.no_grad()
def greedy(model, plain, prompt, steps):
    """Free-running greedy tokens and the logits of each step."""
    if model is not None:
        # No EOS (the engine runs with --ignore-eos): neither stop nor mask it; raw logits.
        out = model.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=steps, do_sample=False,
                             eos_token_id=None, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
        toks = out.sequences[0, len(prompt):].tolist()
        return toks, [s[0].float() for s in out.logits]
    logits = plain.forward(torch.tensor(prompt, device="cuda"), torch.arange(len(prompt), device="cuda"))[-1]
    toks, scores = [], []
    for i in range(steps):
        scores.append(logits)
        t = int(torch.argmax(logits))
        toks.append(t)
        pos = len(prompt) + i
        logits = plain.forward(torch.tensor([t], device="cuda"), torch.tensor([pos], device="cuda"))[-1]
    return toks, scores


@torch.no_grad()
def time_graph_step(plain, prompt_len, n, compile_forward=False):
    """gpt-fast style: one decode step (token and position in device tensors) captured in
    a CUDA graph, replayed n times; µs per token. compile_forward: the forward through
    torch.compile first (compiled during the warm-up steps)."""
    forward = torch.compile(plain.forward, fullgraph=True, dynamic=False) if compile_forward else plain.forward
    tok = torch.zeros(1, dtype=torch.int64, device="cuda")
    pos = torch.full((1,), prompt_len, dtype=torch.int64, device="cuda")
    out = torch.empty(1, dtype=torch.int64, device="cuda")

    def step():
        logits = forward(tok, pos)
        out.copy_(torch.argmax(logits[-1]).view(1))
        tok.copy_(out)
        pos.add_(1)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    times = []
    for _ in range(3):
        pos.fill_(prompt_len)
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(n):
            g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / n)
    return sorted(times)[1], times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nanofuse", default=".gpu/bin/nanofuse")
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--prompt-ids", default="")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--json", default="")
    ap.add_argument("--time", action="store_true")
    ap.add_argument("--time-tokens", type=int, default=128)
    ap.add_argument("--compile", action="store_true", help="with --time: also time the torch.compile'd step")
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="nanofuse-cmp-")
    d = os.path.join(work, "model")
    subprocess.run([a.nanofuse, "export-model", "--model", a.model, "--out", d], check=True)
    eng_json, eng_logits = os.path.join(work, "engine.json"), os.path.join(work, "logits.f32")
    cmd = [a.nanofuse, "generate", "--model", a.model, "--max-tokens", str(a.steps), "--ignore-eos",
           "--json", eng_json, "--dump-logits", eng_logits]
    if not a.prompt_ids and a.model.startswith("random:"):
        a.prompt_ids = "1,2,3,4,5,6,7,8"  # a random model has no tokenizer
    src = ["--prompt-ids", a.prompt_ids] if a.prompt_ids else ["--prompt", a.prompt]
    subprocess.run(cmd + src, check=True)
    eng = json.load(open(eng_json))
    prompt, etoks = eng["prompt_ids"], eng["tokens"]
    # The default greedy path (the fused RMSNorm + LM head + argmax), tokens only.
    fused_json = os.path.join(work, "fused.json")
    subprocess.run([a.nanofuse, "generate", "--model", a.model, "--max-tokens", str(a.steps), "--ignore-eos",
                    "--json", fused_json] + src, check=True)
    ftoks = json.load(open(fused_json))["tokens"]
    cfg = json.load(open(os.path.join(d, "config.json")))
    V = cfg["vocab_size"]
    elog = torch.frombuffer(bytearray(open(eng_logits, "rb").read()), dtype=torch.float32).view(-1, V).cuda()

    model = hf_model(d)
    which = "transformers" if model is not None else "plain PyTorch forward (transformers not installed)"
    sd = load_safetensors(os.path.join(d, "model.safetensors"), "cuda")
    plain = PlainModel(cfg, sd, len(prompt) + a.steps + a.time_tokens + 8)
    print(f"reference: {which}, torch {torch.__version__}, {torch.cuda.get_device_name()}")

    # Teacher-forced on the engine's own sequence: the logits of the same inputs.
    tf = teacher_forced(model, plain, prompt + etoks[:-1])[len(prompt) - 1:]
    n = min(len(etoks), tf.shape[0], elog.shape[0])
    errs = [float((elog[i] - tf[i]).norm() / tf[i].norm()) for i in range(n)]
    agree = sum(int(torch.argmax(elog[i])) == int(torch.argmax(tf[i])) for i in range(n))
    print(f"teacher-forced over {n} steps: logits rel. L2 error max {max(errs):.2e}, median "
          f"{sorted(errs)[n // 2]:.2e}; argmax agreement {agree}/{n}")

    # Free-running greedy on both sides.
    ptoks, pscores = greedy(model, plain, prompt, a.steps)
    same = 0
    while same < min(len(ptoks), len(etoks)) and ptoks[same] == etoks[same]:
        same += 1
    print(f"free-running greedy: first {same} of {a.steps} tokens identical")
    part = None
    if same < min(len(ptoks), len(etoks)):
        s = pscores[same]
        top = torch.topk(s, 2)
        margin = float(top.values[0] - top.values[1])
        rms = float(s.pow(2).mean().sqrt())
        e_logit = float(s[etoks[same]])
        part = {"step": same, "torch_token": ptoks[same], "engine_token": etoks[same],
                "torch_top2_margin": margin, "torch_logits_rms": rms,
                "torch_logit_of_engine_token_below_max": float(top.values[0]) - e_logit,
                "max_teacher_forced_error": max(errs)}
        print(f"  they part at step {same}: torch {ptoks[same]} vs engine {etoks[same]}; torch's top-2 margin there "
              f"{margin:.4f} ({margin / rms:.2%} of its logits' RMS), the engine's token "
              f"{float(top.values[0]) - e_logit:.4f} below torch's max")

    fsame = 0
    while fsame < min(len(ptoks), len(ftoks)) and ptoks[fsame] == ftoks[fsame]:
        fsame += 1
    print(f"fused argmax head (the default greedy path): first {fsame} of {a.steps} tokens identical to torch's")
    report = {"model": a.model, "reference": which, "prompt_ids": prompt, "engine_tokens": etoks,
              "fused_head_tokens": ftoks, "fused_head_identical_prefix": fsame,
              "torch_tokens": ptoks, "identical_prefix": same, "teacher_forced_rel_l2": errs,
              "argmax_agreement": [agree, n], "parting": part}
    if a.time:
        plain.k.zero_()
        med, runs = time_graph_step(plain, len(prompt), a.time_tokens)
        print(f"PyTorch gpt-fast style step in a CUDA graph: {med:.1f} µs/token ({1e6 / med:.0f} tok/s), "
              f"runs {['%.1f' % r for r in runs]}")
        report["torch_graph_us_per_token"] = med
        report["torch_graph_runs"] = runs
        if a.compile:
            plain.k.zero_()
            t0 = time.perf_counter()
            med, runs = time_graph_step(plain, len(prompt), a.time_tokens, compile_forward=True)
            print(f"PyTorch step compiled (torch.compile, inductor) in a CUDA graph: {med:.1f} µs/token "
                  f"({1e6 / med:.0f} tok/s), runs {['%.1f' % r for r in runs]} "
                  f"(compile + timing {time.perf_counter() - t0:.0f} s)")
            report["torch_compile_graph_us_per_token"] = med
            report["torch_compile_graph_runs"] = runs
        if model is not None:
            ids = torch.tensor([prompt], device="cuda")
            model.generate(ids, max_new_tokens=8, do_sample=False)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=a.time_tokens, min_new_tokens=a.time_tokens, do_sample=False)
            torch.cuda.synchronize()
            us = (time.perf_counter() - t0) * 1e6 / a.time_tokens
            print(f"transformers generate (eager): {us:.1f} µs/token ({1e6 / us:.0f} tok/s), prefill included")
            report["hf_generate_us_per_token"] = us
    if a.json:
        json.dump(report, open(a.json, "w"), indent=1)
    ok = same >= min(16, a.steps) or (part is not None and part["torch_top2_margin"] < 0.02 * part["torch_logits_rms"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
