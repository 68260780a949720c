"""Time and peak memory of `dsocr convert` against a naive conversion, on full-size random weights.

    python benchmarks/convert.py [--workdir DIR] [--repeat 2] [--dtype float32]

Inputs, made once with random values: SAM ViT-B as segment-anything's `sam_vit_b_01ec64.pth`
(image encoder under `image_encoder.` plus prompt-encoder / mask-decoder tensors) and CLIP
ViT-L/14 as the hub's `model.safetensors` of `openai/clip-vit-large-patch14` (vision and text
towers, projections).

Methods, each in its own subprocess so that peak memory (`ru_maxrss`) is its own:
- baseline: only the imports (python + torch + safetensors + dsocr), to read the others against;
- dsocr:    `dsocr.weights.convert.convert(..., verify=False)`: lazy, memory-mapped sources, one
            tensor at a time into a streamed safetensors file, fsync'ed before its atomic rename
            (its time includes ~1 s of torch imports for building DeepEncoder on the meta device);
- naive:    `torch.load` + `safetensors.torch.load_file` of everything, a dict rewrite (renames,
            q/k/v concatenation, new tensors), then `safetensors.torch.save_file`.

Besides ru_maxrss (which counts touched pages of memory-mapped files too), the child samples
/proc/self/status for its peak anonymous memory (RssAnon): memory that is really allocated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# -- inputs -----------------------------------------------------------------------------------


def make_inputs(workdir: Path) -> tuple[Path, Path]:
    """Full-size random SAM-B .pth and CLIP-L safetensors (made once, reused)."""
    import torch
    from safetensors.torch import save_file

    sam_path, clip_path = workdir / "sam_vit_b_01ec64.pth", workdir / "clip-vit-large-patch14.safetensors"
    if sam_path.is_file() and clip_path.is_file():
        return sam_path, clip_path
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return 0.02 * torch.randn(shape, generator=gen)

    sam = {"image_encoder.patch_embed.proj.weight": rand(768, 3, 16, 16), "image_encoder.patch_embed.proj.bias": rand(768),
           "image_encoder.pos_embed": rand(1, 64, 64, 768)}
    for i in range(12):
        p, rel = f"image_encoder.blocks.{i}", 127 if i in (2, 5, 8, 11) else 27
        sam.update({f"{p}.norm1.weight": rand(768), f"{p}.norm1.bias": rand(768), f"{p}.attn.qkv.weight": rand(2304, 768),
                    f"{p}.attn.qkv.bias": rand(2304), f"{p}.attn.proj.weight": rand(768, 768), f"{p}.attn.proj.bias": rand(768),
                    f"{p}.attn.rel_pos_h": rand(rel, 64), f"{p}.attn.rel_pos_w": rand(rel, 64), f"{p}.norm2.weight": rand(768),
                    f"{p}.norm2.bias": rand(768), f"{p}.mlp.lin1.weight": rand(3072, 768), f"{p}.mlp.lin1.bias": rand(3072),
                    f"{p}.mlp.lin2.weight": rand(768, 3072), f"{p}.mlp.lin2.bias": rand(768)})
    sam.update({"image_encoder.neck.0.weight": rand(256, 768, 1, 1), "image_encoder.neck.1.weight": rand(256),
                "image_encoder.neck.1.bias": rand(256), "image_encoder.neck.2.weight": rand(256, 256, 3, 3),
                "image_encoder.neck.3.weight": rand(256), "image_encoder.neck.3.bias": rand(256)})
    sam.update({"prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": rand(2, 128),
                "mask_decoder.transformer.layers.0.mlp.lin1.weight": rand(2048, 256),
                "pixel_mean": torch.zeros(3, 1, 1), "pixel_std": torch.ones(3, 1, 1)})
    torch.save(sam, sam_path)
    del sam

    clip = {"vision_model.embeddings.class_embedding": rand(1024), "vision_model.embeddings.patch_embedding.weight": rand(1024, 3, 14, 14),
            "vision_model.embeddings.position_embedding.weight": rand(257, 1024), "vision_model.pre_layrnorm.weight": rand(1024),
            "vision_model.pre_layrnorm.bias": rand(1024), "vision_model.post_layernorm.weight": rand(1024),
            "vision_model.post_layernorm.bias": rand(1024), "visual_projection.weight": rand(768, 1024),
            "text_projection.weight": rand(768, 768), "logit_scale": torch.tensor(4.6),
            "text_model.embeddings.token_embedding.weight": rand(49408, 768),
            "text_model.embeddings.position_embedding.weight": rand(77, 768),
            "text_model.final_layer_norm.weight": rand(768), "text_model.final_layer_norm.bias": rand(768)}
    for tower, width, layers in (("vision_model", 1024, 24), ("text_model", 768, 12)):
        for i in range(layers):
            p = f"{tower}.encoder.layers.{i}"
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                clip[f"{p}.self_attn.{proj}.weight"], clip[f"{p}.self_attn.{proj}.bias"] = rand(width, width), rand(width)
            clip.update({f"{p}.layer_norm1.weight": rand(width), f"{p}.layer_norm1.bias": rand(width),
                         f"{p}.layer_norm2.weight": rand(width), f"{p}.layer_norm2.bias": rand(width),
                         f"{p}.mlp.fc1.weight": rand(4 * width, width), f"{p}.mlp.fc1.bias": rand(4 * width),
                         f"{p}.mlp.fc2.weight": rand(width, 4 * width), f"{p}.mlp.fc2.bias": rand(width)})
    save_file(clip, str(clip_path), metadata={"format": "pt"})
    return sam_path, clip_path


# -- the methods (run in a child process) -------------------------------------------------------


def naive_convert(sam_path: str, clip_path: str, out: str, dtype) -> None:
    """What one writes without care: everything loaded, rewritten in a dict, saved at once."""
    import torch
    from safetensors.torch import load_file, save_file

    sam = torch.load(sam_path, map_location="cpu", weights_only=True)
    clip = load_file(clip_path)
    state = {}
    for k, v in sam.items():
        if k.startswith("image_encoder."):
            state[f"model.sam_model.{k[len('image_encoder.'):]}"] = v
    for k, v in clip.items():
        if not k.startswith("vision_model.") or "post_layernorm" in k or "position_ids" in k:
            continue
        local = k[len("vision_model."):].replace("encoder.layers.", "transformer.layers.")
        if "self_attn.q_proj" in local:
            k_key, v_key = k.replace("q_proj", "k_proj"), k.replace("q_proj", "v_proj")
            state[f"model.vision_model.{local.replace('q_proj', 'qkv_proj')}"] = torch.cat([v, clip[k_key], clip[v_key]])
        elif "self_attn.k_proj" in local or "self_attn.v_proj" in local:
            continue
        else:
            state[f"model.vision_model.{local}"] = v
    state["model.sam_model.net_2.weight"] = torch.nn.Conv2d(256, 512, 3, 2, 1, bias=False).weight.detach()
    state["model.sam_model.net_3.weight"] = torch.nn.Conv2d(512, 1024, 3, 2, 1, bias=False).weight.detach()
    projector = torch.nn.Linear(2048, 1280)
    state["model.projector.layers.weight"], state["model.projector.layers.bias"] = projector.weight.detach(), projector.bias.detach()
    state["model.image_newline"] = torch.randn(1280) / math.sqrt(1280)
    state["model.view_seperator"] = torch.randn(1280) / math.sqrt(1280)
    state = {k: v.to(dtype).contiguous() for k, v in state.items()}
    save_file(state, out)


class PeakAnon:
    """Samples /proc/self/status every few ms for the peak RssAnon (KiB)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> int:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._read())
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._read())


def child(method: str, sam: str, clip: str, out: str, dtype_name: str) -> None:
    import torch  # noqa: F401 - part of every method's baseline
    import safetensors.torch  # noqa: F401

    import dsocr.weights.convert as dsocr_convert

    dtype = dsocr_convert.DTYPES[dtype_name]
    with PeakAnon() as anon:
        start = time.perf_counter()
        if method == "dsocr":
            dsocr_convert.convert(sam, clip, out, dtype=dtype, verify=False, log=lambda line: None)
        elif method == "naive":
            naive_convert(sam, clip, out, dtype)
        seconds = time.perf_counter() - start
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"seconds": seconds, "maxrss_kib": maxrss, "peak_anon_kib": anon.peak}))


def child_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_child(method: str, sam: Path, clip: Path, out: Path, dtype: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", method, str(sam), str(clip), str(out), dtype],
        capture_output=True, text=True, env=child_env(),
    )
    if done.returncode != 0:
        raise SystemExit(f"{method} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def same_tensors(a: Path, b: Path, names: list[str]) -> bool:
    import torch
    from safetensors import safe_open

    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        return set(fa.keys()) == set(fb.keys()) and all(torch.equal(fa.get_tensor(n), fb.get_tensor(n)) for n in names)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:7])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--make-inputs":
        make_inputs(Path(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="keep inputs/outputs here (default: a temporary directory)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per method; the best time and memory are shown")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dsocr-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"making full-size random inputs in {workdir} ...", flush=True)
        # In a subprocess too: Linux carries a parent's peak RSS into its children's ru_maxrss
        # (through fork and exec), so this process must stay small.
        subprocess.run([sys.executable, __file__, "--make-inputs", str(workdir)], check=True, env=child_env())
        sam, clip = workdir / "sam_vit_b_01ec64.pth", workdir / "clip-vit-large-patch14.safetensors"
        sizes = {"sam": sam.stat().st_size, "clip": clip.stat().st_size}
        results: dict[str, dict] = {}
        for i in range(args.repeat):
            # Alternate the order: the first large write after making the inputs is slow (page cache).
            order = ("baseline", "dsocr", "naive") if i % 2 else ("baseline", "naive", "dsocr")
            for method in order:
                out = workdir / f"out-{method}.safetensors"
                out.unlink(missing_ok=True)
                run = run_child(method, sam, clip, out, args.dtype)
                best = results.setdefault(method, run)
                results[method] = {k: min(best[k], run[k]) for k in run}
        output_size = (workdir / "out-dsocr.safetensors").stat().st_size
        agree = same_tensors(workdir / "out-dsocr.safetensors", workdir / "out-naive.safetensors",
                             ["model.sam_model.pos_embed", "model.vision_model.transformer.layers.7.self_attn.qkv_proj.weight",
                              "model.vision_model.embeddings.position_embedding.weight"])  # after the runs: imports torch
    mib = 1 / 1024
    base = results["baseline"]
    print(f"\ninputs: SAM {sizes['sam'] / 2**20:.0f} MiB (.pth), CLIP {sizes['clip'] / 2**20:.0f} MiB (safetensors); "
          f"output {output_size / 2**20:.0f} MiB ({args.dtype}); {os.cpu_count()} CPUs; same converted tensors: {agree}")
    header = f"{'method':<10}{'time s':>9}{'peak RSS MiB':>15}{'above imports':>15}{'peak anon MiB':>15}"
    print(header + "\n" + "-" * len(header))
    for method in ("baseline", "dsocr", "naive"):
        r = results[method]
        above = (r["maxrss_kib"] - base["maxrss_kib"]) * mib
        print(f"{method:<10}{r['seconds']:>9.2f}{r['maxrss_kib'] * mib:>15.0f}{above:>15.0f}{r['peak_anon_kib'] * mib:>15.0f}")
    d, n = results["dsocr"], results["naive"]
    print(f"\nnaive / dsocr: time x{n['seconds'] / d['seconds']:.2f}, "
          f"peak RSS above imports x{(n['maxrss_kib'] - base['maxrss_kib']) / max(1, d['maxrss_kib'] - base['maxrss_kib']):.2f}, "
          f"peak anon x{n['peak_anon_kib'] / max(1, d['peak_anon_kib']):.2f}")


if __name__ == "__main__":
    main()
