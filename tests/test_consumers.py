"""The export files load in their consumers' own reader code, and the model sees every turn in its chat template.

OpenRLHF's RewardDataset / PromptDataset and verl's RLHFDataset come from their wheels, pinned in
tests/consumers.txt and installed without dependencies into .consumers/ (`make test` does it); TRL is in the
venv. Each test renders a 3-turn conversation (user / assistant / user) and a text prompt with SmolLM2's
tokenizer and checks, in the rendered text or the decoded token ids, that every turn and the chosen reply
are there in SmolLM2's ChatML markers, in order.
"""

import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlhflab.labeling import exports
from rlhflab.labeling.records import import_comparisons
from rlhflab.labeling.store import LabelStore

CONSUMERS = Path(__file__).resolve().parent.parent / ".consumers"
INSTALL = "pip install --no-deps --require-hashes --target .consumers -r tests/consumers.txt (or `make test`)"

TURNS = [{"role": "user", "content": "What colour is the sky?"},
         {"role": "assistant", "content": "Blue, on a clear day."},
         {"role": "user", "content": "And at sunset?"}]
ROWS = [{"prompt": TURNS, "chosen": "Orange and red.", "rejected": "Green."},
        {"prompt": "Name a prime number.", "chosen": "Seven.", "rejected": "Nine."}]


def chatml(role: str, content: str) -> str:
    """One turn as SmolLM2's chat template (ChatML) renders it."""
    return f"<|im_start|>{role}\n{content}<|im_end|>"


CONVERSATION = [chatml(m["role"], m["content"]) for m in TURNS]
GENERATION_PROMPT = "<|im_start|>assistant\n"


def assert_in_order(text: str, parts: list[str]):
    """Each of `parts` is in `text`, one after the other."""
    at = 0
    for part in parts:
        found = text.find(part, at)
        assert found >= 0, f"{part!r} is not in {text[at:]!r} (the rest of {text!r})"
        at = found + len(part)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """One 3-turn conversation and one text prompt, each with a decided pair; `datasets` caches in tmp_path."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    store = LabelStore(tmp_path / "labels.db")
    import_comparisons(store, ROWS)
    return store


@pytest.fixture(scope="module")
def consumers():
    """.consumers/ on sys.path (after the venv's own packages), or a skip that says how to install it.

    Under CI (CI=true) a missing .consumers/ fails instead: these tests must run there.
    """
    if not (CONSUMERS / "openrlhf").is_dir() or not (CONSUMERS / "verl").is_dir():
        reason = f"OpenRLHF and verl are not installed in {CONSUMERS}: {INSTALL}"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"CI is set and {reason}", pytrace=False)
        pytest.skip(reason)
    if str(CONSUMERS) not in sys.path:
        sys.path.append(str(CONSUMERS))
    return CONSUMERS


@pytest.fixture(scope="module")
def smollm2_dir(smollm2):
    from rlhflab.trainers.embedded import model_dir

    return str(model_dir(smollm2))


# -- OpenRLHF ---------------------------------------------------------------------------------------

def openrlhf_strategy(**data):
    """What OpenRLHF's readers use of their DeepspeedStrategy (a trainer argument, built with deepspeed by
    `openrlhf.utils.get_strategy`): `args.data.*` as the command line sets it (`--data.prompt_key ...`),
    `args.use_ms`, `print` and `is_rank_0`."""
    return SimpleNamespace(args=SimpleNamespace(data=SimpleNamespace(**data), use_ms=False),
                           print=lambda *args: None, is_rank_0=lambda: True)


@pytest.fixture(scope="module")
def openrlhf(consumers):
    """OpenRLHF 0.11.2's own modules, imported as they are: `openrlhf/__init__.py` is empty, and
    openrlhf.datasets and openrlhf.utils need only torch, transformers, datasets, sympy and pylatexenc."""
    from openrlhf.datasets import PromptDataset, RewardDataset
    from openrlhf.datasets.utils import blending_datasets
    from openrlhf.utils import get_tokenizer

    return SimpleNamespace(RewardDataset=RewardDataset, PromptDataset=PromptDataset,
                           blending_datasets=blending_datasets, get_tokenizer=get_tokenizer)


@pytest.mark.parametrize("is_dpo", [False, True], ids=["reward model", "dpo"])
def test_openrlhf_reward_dataset_renders_every_turn(openrlhf, smollm2_dir, store, tmp_path, is_dpo):
    """train_rm / train_dpo with --data.prompt_key prompt --data.chosen_key chosen --data.rejected_key rejected
    --data.apply_chat_template, on `to_openrlhf`'s file, as cli/train_rm.py and cli/train_dpo.py build it."""
    strategy = openrlhf_strategy(prompt_key="prompt", chosen_key="chosen", rejected_key="rejected",
                                 apply_chat_template=True, tokenizer_chat_template=None)
    tokenizer = openrlhf.get_tokenizer(smollm2_dir, None, "left", strategy)
    data = openrlhf.blending_datasets(str(exports.to_openrlhf(store, tmp_path / "pairs.jsonl")), None, strategy)
    dataset = openrlhf.RewardDataset(data, tokenizer, 512, strategy, is_dpo=is_dpo, num_processors=1)
    assert len(dataset) == 2

    chosen_ids, _, rejected_ids, _, extra = dataset[0]
    chosen, rejected = tokenizer.decode(chosen_ids[0]), tokenizer.decode(rejected_ids[0])
    assert_in_order(chosen, [*CONVERSATION, chatml("assistant", "Orange and red.")])
    assert_in_order(rejected, [*CONVERSATION, chatml("assistant", "Green.")])
    if is_dpo:  # extra: the prompt's length in tokens, where the reply the DPO loss scores begins
        assert tokenizer.decode(chosen_ids[0][:extra]).endswith(CONVERSATION[-1] + "\n" + GENERATION_PROMPT)
        assert tokenizer.decode(chosen_ids[0][extra:]) == "Orange and red.<|im_end|>"
    else:
        assert extra == 0.0  # the margin column
    chosen_ids, _, _, _, _ = dataset[1]
    assert_in_order(tokenizer.decode(chosen_ids[0]), [chatml("user", "Name a prime number."),
                                                      chatml("assistant", "Seven.")])
    batch = dataset.collate_fn([dataset[0], dataset[1]])
    assert batch[0].shape[0] == 2


def test_openrlhf_prompt_dataset_renders_every_turn(openrlhf, smollm2_dir, store, tmp_path):
    """train_ppo_ray with --data.input_key input --data.apply_chat_template, on `to_openrlhf_prompts`'s file."""
    strategy = openrlhf_strategy(input_key="input", label_key=None, apply_chat_template=True)
    tokenizer = openrlhf.get_tokenizer(smollm2_dir, None, "left", strategy)
    path = exports.to_openrlhf_prompts(store, tmp_path / "prompts.jsonl")
    dataset = openrlhf.PromptDataset(openrlhf.blending_datasets(str(path), None, strategy), tokenizer, strategy)
    (_, conversation, label, _), (_, text, _, _) = dataset[0], dataset[1]
    assert_in_order(conversation, CONVERSATION)
    assert conversation.endswith(CONVERSATION[-1] + "\n" + GENERATION_PROMPT) and label == ""
    assert text.endswith(chatml("user", "Name a prime number.") + "\n" + GENERATION_PROMPT)


def test_openrlhf_plain_text_route(openrlhf, smollm2_dir, store, tmp_path):
    """`chat=False` without --data.apply_chat_template: OpenRLHF joins prompt and reply as they are (prompt +
    chosen, reward_dataset.py line 141), so the reply's cue comes from --data.input_template."""
    template = "{}\n\nAssistant: "
    strategy = openrlhf_strategy(prompt_key="prompt", chosen_key="chosen", rejected_key="rejected",
                                 input_key="input", apply_chat_template=False)
    tokenizer = openrlhf.get_tokenizer(smollm2_dir, None, "left", strategy)
    pairs = openrlhf.blending_datasets(str(exports.to_openrlhf(store, tmp_path / "pairs.jsonl", chat=False)), None,
                                       strategy)
    dataset = openrlhf.RewardDataset(pairs, tokenizer, 512, strategy, input_template=template, num_processors=1)
    chosen_ids, _, rejected_ids, _, _ = dataset[0]
    turns = ["User: What colour is the sky?", "Assistant: Blue, on a clear day.", "User: And at sunset?"]
    assert tokenizer.decode(chosen_ids[0]) == "\n\n".join(turns) + "\n\nAssistant: Orange and red. <|im_end|>"
    assert_in_order(tokenizer.decode(rejected_ids[0]), [*turns, "Assistant: Green."])
    assert "<|im_start|>" not in tokenizer.decode(chosen_ids[0])  # no chat template on this route

    prompts = openrlhf.blending_datasets(
        str(exports.to_openrlhf_prompts(store, tmp_path / "prompts.jsonl", chat=False)), None, strategy)
    dataset = openrlhf.PromptDataset(prompts, tokenizer, strategy, input_template=template)
    assert [dataset[i][1] for i in range(2)] == ["\n\n".join(turns) + "\n\nAssistant: ",
                                                 "Name a prime number.\n\nAssistant: "]


# -- verl -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def verl(consumers):
    """verl 0.9.1's RLHFDataset and the Continuous Token builder its agent loop renders prompts with.

    verl/__init__.py imports verl.protocol, which imports ray and tensordict (the trainer's runtime, not
    installed), then sets verl's logging level and loads plugins: nothing the dataset uses. So the package
    `verl` is registered without running its __init__.py; every module below it (verl.utils,
    verl.utils.dataset.rl_dataset, verl.utils.tokenizer, verl.utils.fs, ...) is the wheel's own, run as it is.
    Nothing else is stubbed.
    """
    if "verl" not in sys.modules:
        spec = importlib.machinery.ModuleSpec("verl", None, is_package=True)
        spec.submodule_search_locations = [str(consumers / "verl")]
        sys.modules["verl"] = importlib.util.module_from_spec(spec)
    from omegaconf import OmegaConf
    from verl.utils import hf_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    assert "ray" not in sys.modules and "tensordict" not in sys.modules
    return SimpleNamespace(RLHFDataset=RLHFDataset, collate_fn=collate_fn, OmegaConf=OmegaConf,
                           hf_tokenizer=hf_tokenizer, builder=create_continuous_token_builder)


def test_verl_rlhf_dataset_reads_the_parquet(verl, smollm2_dir, store, tmp_path):
    """data.train_files=<to_verl_prompts's file>: RLHFDataset reads it, measures each prompt in the chat template
    (its max_prompt_length filter), and hands the messages to the rollout, which renders them (here with the
    Continuous Token builder of verl's agent loop, as for a Llama-type model like SmolLM2)."""
    tokenizer = verl.hf_tokenizer(smollm2_dir)
    path = str(exports.to_verl_prompts(store, tmp_path / "verl" / "train.parquet"))
    config = {"prompt_key": "prompt", "max_prompt_length": 1024, "filter_overlong_prompts_workers": 1,
              "cache_dir": str(tmp_path / "verl-cache")}
    dataset = verl.RLHFDataset(path, tokenizer, verl.OmegaConf.create(config))
    assert len(dataset) == 2
    row = dataset[0]
    assert row["raw_prompt"] == TURNS and row["data_source"] == "rlhflab" and row["index"] == 0
    assert row["reward_model"] == {"style": "model", "ground_truth": ""} and row["ability"] == "chat"
    builder = verl.builder(tokenizer, hf_model_type="llama")
    rendered = tokenizer.decode(builder.build_initial_tokens(row["raw_prompt"]))
    assert_in_order(rendered, CONVERSATION)
    assert rendered.endswith(CONVERSATION[-1] + "\n" + GENERATION_PROMPT)
    assert tokenizer.decode(builder.build_initial_tokens(dataset[1]["raw_prompt"])).endswith(
        chatml("user", "Name a prime number.") + "\n" + GENERATION_PROMPT)
    batch = verl.collate_fn([dataset[0], dataset[1]])
    assert list(batch["raw_prompt"][0]) == TURNS and list(batch["index"]) == [0, 1]

    # The length filter counts every turn: one token less than the conversation's length drops it alone.
    length = len(tokenizer.apply_chat_template(TURNS, add_generation_prompt=True, tokenize=True, return_dict=False))
    shorter = verl.RLHFDataset(path, tokenizer, verl.OmegaConf.create({**config, "max_prompt_length": length - 1}))
    assert len(shorter) == 1 and shorter[0]["raw_prompt"] == [{"role": "user", "content": "Name a prime number."}]


# -- TRL --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trl_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def prepared(trainer_class, config_class, dataset, tokenizer, tmp_path, **attributes):
    """`dataset` as `trainer_class.__init__` prepares it: its own `_prepare_dataset`, called on a trainer
    built without a model (the method reads only `attributes` of the trainer, set here as __init__ sets them)."""
    args = config_class(output_dir=str(tmp_path / trainer_class.__name__), report_to="none", use_cpu=True)
    trainer = trainer_class.__new__(trainer_class)
    for name, value in attributes.items():
        setattr(trainer, name, value(args) if callable(value) else value)
    return trainer._prepare_dataset(dataset, tokenizer, args, "train")


def test_trl_reward_and_dpo_trainers_tokenize_every_turn(trl_tokenizer, store, tmp_path):
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    dataset = exports.to_trl_dataset(store)
    assert all(is_conversational(row) for row in dataset)
    text = maybe_apply_chat_template(dataset[0], trl_tokenizer)
    assert_in_order(text["prompt"], CONVERSATION)
    assert text["prompt"].endswith(GENERATION_PROMPT) and text["chosen"].startswith("Orange and red.<|im_end|>")

    decode = trl_tokenizer.decode
    reward = prepared(RewardTrainer, RewardConfig, dataset, trl_tokenizer, tmp_path)
    assert len(reward) == 2
    assert_in_order(decode(reward[0]["chosen_ids"]), [*CONVERSATION, chatml("assistant", "Orange and red.")])
    assert_in_order(decode(reward[0]["rejected_ids"]), [*CONVERSATION, chatml("assistant", "Green.")])
    assert_in_order(decode(reward[1]["chosen_ids"]), [chatml("user", "Name a prime number."),
                                                     chatml("assistant", "Seven.")])

    dpo = prepared(DPOTrainer, DPOConfig, dataset, trl_tokenizer, tmp_path)
    assert_in_order(decode(dpo[0]["prompt_ids"]), CONVERSATION)
    assert decode(dpo[0]["prompt_ids"]).endswith(GENERATION_PROMPT)
    assert decode(dpo[0]["chosen_ids"]).startswith("Orange and red.<|im_end|>")
    assert decode(dpo[0]["rejected_ids"]).startswith("Green.<|im_end|>")


def test_trl_kto_trainer_tokenizes_every_turn(trl_tokenizer, store, tmp_path):
    from datasets import load_dataset
    from trl import KTOConfig, KTOTrainer

    path = exports.to_kto_jsonl(store, tmp_path / "kto.jsonl")
    assert json.loads(path.read_text().splitlines()[0])["prompt"] == TURNS
    rows = load_dataset("json", data_files=str(path), split="train")
    kto = prepared(KTOTrainer, KTOConfig, rows, trl_tokenizer, tmp_path,
                   calculate_KL=lambda args: args.loss_type not in ["apo_zero_unpaired"],
                   desirable_weight=lambda args: args.desirable_weight,
                   undesirable_weight=lambda args: args.undesirable_weight)
    assert len(kto) == 4 and list(kto["label"]) == [True, False, True, False]
    decode = trl_tokenizer.decode
    assert_in_order(decode(kto[0]["prompt_ids"]), CONVERSATION)
    assert decode(kto[0]["prompt_ids"]).endswith(GENERATION_PROMPT)
    assert decode(kto[0]["completion_ids"]).startswith("Orange and red.<|im_end|>")
    assert decode(kto[1]["completion_ids"]).startswith("Green.<|im_end|>")
    assert "KL_completion_ids" in kto.column_names  # the KL term's mismatched pairs, built from the same rows
