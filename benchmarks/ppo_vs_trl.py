"""Our PPO side by side with TRL's last PPOTrainer (trl==1.9.2, trl.experimental.ppo), on the CPU.

    .venv/bin/python benchmarks/ppo_vs_trl.py [--steps 8] [--memory-steps 2]

It installs TRL 1.9.2 into its own virtualenv (benchmarks/.venv-trl192, once), builds random
models in a temp dir, and runs every measurement in a fresh process:

- speed: Llama-style, 4 layers, 256 wide; batch 16, 32-token responses, 4 PPO epochs, one
  minibatch of 16, full-parameter training; samples (responses) per second over `--steps` PPO
  steps for TRL and for us, and the ratio. Our LoRA and 4-bit + LoRA modes are reported too.
- memory: GPT-2-small scale (12 layers, 768 wide), `--memory-steps` steps; peak RSS above the
  baseline measured after imports, for TRL and for our full, LoRA and 4-bit + LoRA shared-base modes,
  the last two also with gradient checkpointing (`PPOConfig.gradient_checkpointing`).

- like for like on a real model: SmolLM2-135M-Instruct (`rlhflab.trainers.embedded`), LoRA on both sides
  (TRL 1.9.2's PPOTrainer takes `peft_config`), the same batch, response length, epochs and
  minibatch; `--smollm2-repeats` interleaved repeats of `--smollm2-steps` steps each, median and
  range. What differs is each design: TRL keeps its value model as a second, fully trained
  backbone plus a separate reward backbone; ours puts a value head on the policy's trunk and the
  reward adapter on the same base. Memory here is the steady-state anonymous RSS (`RssAnon`,
  sampled every 50 ms during training), which leaves out memory-mapped checkpoint pages.

Both sides generate with temperature 1, no top-k / top-p, and stop at EOS; random weights rarely
emit EOS, so both always sample the full 32 tokens. Both virtualenvs hold the same CPU torch 2.13.0.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import statistics
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRL_VENV = HERE / ".venv-trl192"
SPEED = dict(layers=4, width=256, heads=4)
MEMORY = dict(layers=12, width=768, heads=12)
BATCH, RESPONSE_LENGTH, EPOCHS = 16, 32, 4
# (mode, gradient checkpointing): our memory runs; TRL's runs without checkpointing, as configured above
MEMORY_MODES = [("full", False), ("lora", False), ("4bit+lora", False), ("lora", True), ("4bit+lora", True)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024  # KiB
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


def while_sampling(work) -> dict:
    """Run `work()`, sampling the anonymous RSS every 10 ms: its result, seconds and the largest sample."""
    samples, done = [rss_anon_mb()], threading.Event()

    def sample():
        while not done.is_set():
            samples.append(rss_anon_mb())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    return {"result": result, "seconds": seconds, "rss_anon_mb": max(samples)}


def timed(train, steps: int, baseline: float) -> dict:
    """Run `train()` from a fixed seed: samples/s, seconds, lifetime peak RSS above `baseline`
    and the largest anonymous RSS sampled while it ran."""
    import torch

    torch.manual_seed(0)
    run = while_sampling(train)
    return {"samples_per_s": BATCH * steps / run["seconds"], "seconds": run["seconds"],
            "peak_rss_mb": peak_rss_mb() - baseline, "rss_anon_mb": run["rss_anon_mb"]}


# ---------------------------------------------------------------------------------------------
# Set-up (parent process)
# ---------------------------------------------------------------------------------------------

def ensure_trl_venv() -> Path:
    python = TRL_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "trl==1.9.2", "peft>=0.17,<0.22"], check=True)
    return python


def build_models(root: Path, layers: int, width: int, heads: int) -> Path:
    """A random Llama causal LM and a random reward model of the same shape, with the tiny tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from rlhflab.tiny import TinyWorld
    from rlhflab.tiny.assets import MODEL_DIR
    from rlhflab.trainers.models import load_tokenizer
    from rlhflab.trainers.reward import NORMALIZATION_FILE

    torch.manual_seed(0)
    tokenizer = load_tokenizer(str(MODEL_DIR))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, num_labels=1)
    for name, cls in (("policy", LlamaForCausalLM), ("reward", LlamaForSequenceClassification)):
        cls(config).save_pretrained(root / name, safe_serialization=True)
        tokenizer.save_pretrained(root / name)
    # A reward adapter on the policy's base, for our shared-base mode.
    adapter = get_peft_model(LlamaForSequenceClassification.from_pretrained(root / "policy", num_labels=1),
                             LoraConfig(task_type="SEQ_CLS", target_modules="all-linear", modules_to_save=["score"]))
    adapter.save_pretrained(root / "reward_adapter")
    world = TinyWorld()  # the TRL virtualenv has no rlhflab, so its prompts travel as a file
    (root / "prompts.json").write_text(json.dumps([q.text for q in world.questions("train", 256, seed=0)]))
    (root / "reward_adapter" / NORMALIZATION_FILE).write_text(json.dumps({"mean": 0.0, "std": 1.0}))
    return root


def smollm2_models(root: Path) -> Path:
    """SmolLM2-135M-Instruct as policy and reward backbones, a reward adapter on it, and prompts."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from rlhflab.tiny import TinyWorld
    from rlhflab.trainers.embedded import SMOLLM2, model_dir
    from rlhflab.trainers.reward import NORMALIZATION_FILE

    torch.manual_seed(0)
    source = model_dir(SMOLLM2)
    root.mkdir(parents=True)
    for name in ("policy", "reward"):
        (root / name).symlink_to(source)
    adapter = get_peft_model(AutoModelForSequenceClassification.from_pretrained(source, num_labels=1),
                             LoraConfig(task_type="SEQ_CLS", target_modules="all-linear", modules_to_save=["score"]))
    adapter.save_pretrained(root / "reward_adapter")
    (root / "reward_adapter" / NORMALIZATION_FILE).write_text(json.dumps({"mean": 0.0, "std": 1.0}))
    (root / "prompts.json").write_text(json.dumps([q.text for q in TinyWorld().questions("train", 256, seed=0)]))
    return root


def run_worker(python: Path, args: list[str], script: Path = Path(__file__)) -> dict:
    """`script worker ARGS...` in a fresh `python` process: the JSON its last line prints."""
    out = subprocess.run([str(python), str(script.resolve()), "worker", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Workers (one fresh process per measurement)
# ---------------------------------------------------------------------------------------------

def prompts(model_dir: Path) -> list[str]:
    return json.loads((model_dir / "prompts.json").read_text())


def ours(model_dir: Path, mode: str, steps: int, checkpointing: bool = False) -> dict:
    baseline = peak_rss_mb()
    from rlhflab import load_policy
    from rlhflab.trainers.ppo import PPOConfig, PPOTrainer
    from rlhflab.trainers.reward import SharedReward, load_reward_model

    baseline = max(baseline, peak_rss_mb())
    lora = mode != "full"
    policy = load_policy(str(model_dir / "policy"), lora=lora, quantization="4bit" if mode == "4bit+lora" else None,
                         device="cpu")
    reward = (SharedReward(policy, model_dir / "reward_adapter") if lora
              else load_reward_model(str(model_dir / "reward"), device="cpu"))
    config = PPOConfig(output_dir=tempfile.mkdtemp(), steps=steps, batch_size=BATCH, mini_batch_size=BATCH,
                       ppo_epochs=EPOCHS, response_length=RESPONSE_LENGTH, learning_rate=3e-6 if not lora else 1e-4,
                       rollout_batch_size=BATCH, save_every=10**9, sample_every=10**9,
                       gradient_checkpointing=checkpointing)
    trainer = PPOTrainer(policy, prompts(model_dir), reward, config)
    return timed(trainer.train, steps, baseline)


def trl(model_dir: Path, steps: int, lora: bool = False) -> dict:
    baseline = peak_rss_mb()
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    baseline = max(baseline, peak_rss_mb())
    tokenizer = AutoTokenizer.from_pretrained(model_dir / "policy", padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(model_dir / "policy")
    ref = None if lora else AutoModelForCausalLM.from_pretrained(model_dir / "policy")
    reward = AutoModelForSequenceClassification.from_pretrained(model_dir / "reward", num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(model_dir / "reward", num_labels=1)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts(model_dir)]
    dataset = Dataset.from_dict({"input_ids": [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]})
    args = PPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=BATCH, num_mini_batches=1,
                     gradient_accumulation_steps=1, num_ppo_epochs=EPOCHS, response_length=RESPONSE_LENGTH,
                     total_episodes=BATCH * steps, temperature=1.0, stop_token="eos",
                     missing_eos_penalty=1.0, kl_coef=0.05, report_to="none", save_strategy="no",
                     num_sample_generations=0, local_rollout_forward_batch_size=BATCH, bf16=False, use_cpu=True,
                     logging_steps=10**9, learning_rate=1e-4 if lora else 3e-6)
    peft_config = None
    if lora:  # our DEFAULT_LORA: r 16, alpha 32, every linear layer; TRL's reference is then the base
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward,
                         value_model=value, train_dataset=dataset, peft_config=peft_config)
    return timed(trainer.train, steps, baseline)


def worker(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("impl", choices=["ours", "trl"])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--mode", default="full", choices=["full", "lora", "4bit+lora"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--checkpointing", action="store_true", help="our gradient checkpointing")
    args = parser.parse_args(argv)
    result = (ours(args.model_dir, args.mode, args.steps, args.checkpointing) if args.impl == "ours"
              else trl(args.model_dir, args.steps, lora=args.mode == "lora"))
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------

def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        return worker(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="PPO steps timed per run")
    parser.add_argument("--memory-steps", type=int, default=2, help="PPO steps of the memory runs")
    parser.add_argument("--smollm2-steps", type=int, default=2, help="PPO steps per SmolLM2 run")
    parser.add_argument("--smollm2-repeats", type=int, default=3, help="interleaved repeats of the SmolLM2 runs")
    parser.add_argument("--only-smollm2", action="store_true", help="skip the random-model rows")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ppo_vs_trl.json")
    args = parser.parse_args()
    trl_python = ensure_trl_venv()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows += like_for_like(trl_python, smollm2_models(Path(tmp) / "smollm2"), args.smollm2_steps,
                              args.smollm2_repeats)
        if args.only_smollm2:
            return report(rows, args.out)
        speed_dir = build_models(Path(tmp) / "speed", **SPEED)
        theirs = run_worker(trl_python, ["trl", str(speed_dir), "--steps", str(args.steps)])
        rows.append({"measure": "speed", "impl": "TRL 1.9.2", "mode": "full", **theirs})
        for mode in ("full", "lora", "4bit+lora"):
            mine = run_worker(Path(sys.executable), ["ours", str(speed_dir), "--mode", mode, "--steps",
                                                     str(args.steps)])
            rows.append({"measure": "speed", "impl": "rlhflab", "mode": mode, **mine,
                         "ratio_vs_trl": mine["samples_per_s"] / theirs["samples_per_s"]})
        memory_dir = build_models(Path(tmp) / "memory", **MEMORY)
        theirs = run_worker(trl_python, ["trl", str(memory_dir), "--steps", str(args.memory_steps)])
        rows.append({"measure": "memory", "impl": "TRL 1.9.2", "mode": "full", **theirs})
        for mode, checkpointing in MEMORY_MODES:
            mine = run_worker(Path(sys.executable), ["ours", str(memory_dir), "--mode", mode, "--steps",
                                                     str(args.memory_steps),
                                                     *(["--checkpointing"] if checkpointing else [])])
            rows.append({"measure": "memory", "impl": "rlhflab", "mode": mode + (" +ckpt" if checkpointing else ""),
                         **mine, "ratio_vs_trl": mine["peak_rss_mb"] / theirs["peak_rss_mb"]})
    report(rows, args.out)


def like_for_like(trl_python: Path, model_dir: Path, steps: int, repeats: int) -> list[dict]:
    """TRL and us, LoRA on SmolLM2, alternating; the median and range of each measure."""
    runs: dict[str, list[dict]] = {"TRL 1.9.2": [], "rlhflab": []}
    for repeat in range(repeats):
        for impl, python in (("TRL 1.9.2", trl_python), ("rlhflab", Path(sys.executable))):
            result = run_worker(python, ["trl" if impl.startswith("TRL") else "ours", str(model_dir), "--mode", "lora",
                                         "--steps", str(steps)])
            runs[impl].append(result)
            print(f"smollm2 repeat {repeat + 1}: {impl}: {json.dumps(result)}", flush=True)

    def summary(impl: str, key: str) -> dict:
        values = [r[key] for r in runs[impl]]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    rows = []
    for impl in runs:
        speed, memory = summary(impl, "samples_per_s"), summary(impl, "rss_anon_mb")
        rows.append({"measure": "smollm2 like-for-like", "impl": impl, "mode": "lora", "repeats": repeats,
                     "samples_per_s": speed["median"], "samples_per_s_range": [speed["min"], speed["max"]],
                     "peak_rss_mb": memory["median"], "rss_anon_mb_range": [memory["min"], memory["max"]],
                     "runs": runs[impl]})
    theirs, mine = rows
    mine["ratio_vs_trl"] = mine["samples_per_s"] / theirs["samples_per_s"]
    mine["memory_ratio_vs_trl"] = mine["peak_rss_mb"] / theirs["peak_rss_mb"]
    return rows


def report(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print("(smollm2 rows: medians; their 'peak RSS MB' is the steady-state RssAnon, ranges in the JSON)")
    print(f"{'measure':22} {'impl':10} {'mode':16} {'samples/s':>10} {'peak RSS MB':>12} "
          f"{'speed vs TRL':>13} {'memory vs TRL':>14}")
    for r in rows:
        if r["impl"].startswith("TRL"):
            speed = memory = "1.00"
        elif r["measure"] == "speed":
            speed, memory = f"{r['ratio_vs_trl']:.2f}", ""
        elif r["measure"] == "memory":
            speed, memory = "", f"{r['ratio_vs_trl']:.2f}"
        else:
            speed, memory = f"{r['ratio_vs_trl']:.2f}", f"{r['memory_ratio_vs_trl']:.2f}"
        print(f"{r['measure']:22} {r['impl']:10} {r['mode']:16} {r['samples_per_s']:10.2f} {r['peak_rss_mb']:12.0f} "
              f"{speed:>13} {memory:>14}")


if __name__ == "__main__":
    main()
