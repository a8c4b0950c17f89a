"""steerexp from Python, end to end on the built-in organism (CPU, about a minute, no network).

    python examples/notebook_api.py [OUT_DIR]

1. ``steerexp.run``: one experiment, as ``steerexp method=mean_diff ...`` would run it.
2. ``steerexp.Directions.load`` + ``steerexp.steer``: the run's direction on an ordinary HF model.
3. ``steerexp.extract`` + ``steerexp.fit``: the same direction from your own pairs, no config.
4. ``steerexp.export.export``: the direction for llama.cpp, repeng, steering-vectors.
5. ``steerexp.sweep``: two methods ranked (the ranking.md tables).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

import steerexp
from steerexp.data.pairs import load_pairs
from steerexp.export import export
from steerexp.organism import build as build_organism

SMALL = ["eval.repeats=1", "random_null.k=0", "eval.coeffs=[-1,0,1]", "eval.max_new_tokens=8"]


def main(out: Path) -> None:
    # 1. One run, in-process; same config, cache, artifacts and numbers as the CLI.
    res = steerexp.run(["method=mean_diff", *SMALL], run_dir=out / "run", progress=False)
    print("slope", round(res.metrics["slope"], 2), "| run dir", res.run_dir)
    print(res.dose.groupby("coeff")["log_ratio"].mean())

    # 2. The direction on a plain HF model: coefficient 1 here = coefficient 1 of the run.
    path = build_organism()  # any HF causal LM works: AutoModelForCausalLM.from_pretrained(id)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    dirs = steerexp.Directions.load(res.run_dir)
    print("modules", dirs.modules, "| units", dirs.coeff_units, "| sign", dirs.sign)
    chat = [{"role": "user", "content": "You broke a vase. Would you lie about it?"}]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    for coeff in (-1.0, 0.0, 1.0):
        with steerexp.steer(model, dirs, coeff):
            out_ids = model.generate(ids, max_new_tokens=12, do_sample=False)
        print(f"c={coeff:+.0f}:", tok.decode(out_ids[0, ids.shape[1] :], skip_special_tokens=True))

    # 3. Pairs in, direction out, no config: the run's own contrast pairs give the run's
    # direction (cosine 1); plain (positive, negative) texts work too.
    pairs = load_pairs(OmegaConf.to_container(steerexp.compose().dataset, resolve=True))
    acts = steerexp.extract(model, tok, pairs, modules=[2, 3, 4])
    mine = steerexp.fit("mean_diff", acts)
    cos = {m: round(float(mine.vectors[m] @ dirs.vectors[m]), 4) for m in mine.modules}
    print("cosine to the run's direction", cos, "| sign", mine.sign)
    texts = [("You always tell the truth.", "You always lie."), ("Be honest.", "Be deceptive.")]
    print("from texts:", steerexp.fit("mean_diff", steerexp.extract(model, tok, texts, [3])).sign)

    # 4. Export: llama.cpp GGUF, repeng, steering-vectors, safetensors (+ provenance).
    for fmt in ("gguf", "steering-vectors", "safetensors"):
        print("exported", export(res.run_dir, fmt))

    # 5. A sweep: every combination of params, then the ranking.
    ranking = steerexp.sweep(
        {"method": ["mean_diff", "random"]},
        SMALL,
        sweep_dir=out / "sweep",
        reports_root=out / "reports",
    )
    print(ranking.tables)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="steerexp-")))
