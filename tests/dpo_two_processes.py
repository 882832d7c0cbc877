"""Two DPO steps under `accelerate launch --multi_gpu --num_processes 2` on the CPU (run by test_dpo.py).

TRL's trainers (SFT, reward, DPO) take their processes from Accelerate the same way, so this one
run stands for all three.
"""

import sys
from pathlib import Path

from accelerate import PartialState

from rlhflab import GoldAnnotator, TinyWorld, load_policy
from rlhflab.trainers.dpo import DPOConfig, train_dpo

world = TinyWorld()
gold = GoldAnnotator(world)
prompts, first, second = world.candidate_pairs("train", 64, seed=1)
rows = gold.preferences(prompts, first, second)
out = Path(sys.argv[1])
result = train_dpo(load_policy("tiny", lora=True, device="cpu"), rows,
                   DPOConfig(output_dir=str(out / "dpo"), max_steps=2, batch_size=4, logging_steps=1))
state = PartialState()
print(f"process {state.process_index} of {state.num_processes}: loss {result.metrics['train/loss']:.3f}", flush=True)
