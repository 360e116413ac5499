"""Loads one of our checkpoint directories (config.json + model.safetensors, written by
`Qwen2::save_dir`, e.g. by model/examples/bench.rs --save DIR) with transformers'
AutoModelForCausalLM and compares its logits on the fixed input in DIR/logits.json with ours.
Exit status 1 when any logit differs by more than 1e-4.

    python bench/check_transformers_logits.py DIR
"""
import json, sys

import torch
from transformers import AutoModelForCausalLM

d = sys.argv[1]
ref = json.load(open(f"{d}/logits.json"))
model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager")
model.eval()
with torch.no_grad():
    logits = model(torch.tensor([ref["input_ids"]])).logits[0]
ours = torch.tensor(ref["logits"])
diff = (logits - ours).abs().max().item()
print(f"{type(model).__name__} loaded from {d}; max |logit difference| = {diff:.3e} (tolerance 1e-4)")
sys.exit(0 if diff <= 1e-4 else 1)
