"""PyTorch + transformers side of bench/train_vs_torch.sh: the same Qwen2 config, batch,
sequence length, steps, optimizer and clipping as model/examples/bench.rs, f32, on
`--threads` threads; prints one JSON line.

Training: one untimed warm-up step, then `--steps` timed steps of AdamW on random tokens
(`labels=input_ids`: transformers shifts them, so the loss covers `seq - 1` positions per
sequence, as ours does; the forward also runs the last position, 1/seq more work than ours).
Generation: one untimed 8-token warm-up, then `--gen` greedy tokens after a 16-token prompt
with the KV cache (`model.generate`, as a transformers user would).
"""
import argparse, json, resource, time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


p = argparse.ArgumentParser()
for a, d in [("vocab", 4096), ("hidden", 256), ("layers", 4), ("heads", 8), ("kv-heads", 2),
             ("inter", 704), ("seq", 256), ("batch", 8), ("steps", 10), ("gen", 128), ("threads", 2)]:
    p.add_argument("--" + a, type=int, default=d)
p.add_argument("--attn", default="sdpa", help="transformers attn_implementation (sdpa, eager)")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(1)
import_rss = rss_mib()  # torch + transformers loaded, no model yet
cfg = Qwen2Config(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.inter,
                  num_hidden_layers=a.layers, num_attention_heads=a.heads,
                  num_key_value_heads=a.kv_heads, max_position_embeddings=1024,
                  rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                  attn_implementation=a.attn)
model = Qwen2ForCausalLM(cfg).float()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
batches = [torch.randint(0, a.vocab, (a.batch, a.seq)) for _ in range(a.steps + 1)]


def step(x):
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return out.loss.item()


model.train()
step(batches[0])  # warm-up, untimed
t0 = time.perf_counter()
for x in batches[1:]:
    loss = step(x)
train_s = time.perf_counter() - t0

model.eval()
prompt = torch.tensor([[(i * 7 + 3) % a.vocab for i in range(16)]])


def generate(n):
    return model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          use_cache=True, pad_token_id=0, eos_token_id=None)


with torch.no_grad():
    generate(8)  # warm-up, untimed
    t1 = time.perf_counter()
    out = generate(a.gen)
    gen_s = time.perf_counter() - t1
print(json.dumps({
    "impl": "torch", "torch": torch.__version__, "attn": a.attn, "threads": torch.get_num_threads(),
    "params": sum(p.numel() for p in model.parameters()),
    "train_tokens_per_s": a.steps * a.batch * (a.seq - 1) / train_s, "final_loss": loss,
    "gen_tokens_per_s": (out.shape[1] - prompt.shape[1]) / gen_s,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "import_rss_mib": import_rss,
}))
