"""Two PPO steps under `accelerate launch --multi_gpu --num_processes 2` on the CPU (run by test_ppo.py)."""

import sys

from rlhflab import GoldAnnotator, TinyWorld, load_policy
from rlhflab.trainers.ppo import PPOConfig, PPOTrainer
from rlhflab.trainers.reward import GoldReward

world = TinyWorld()
prompts = [q.text for q in world.questions("train", 64, seed=1)]
config = PPOConfig(output_dir=sys.argv[1], steps=2, batch_size=4, mini_batch_size=2, ppo_epochs=1,
                   response_length=12, save_every=100)
trainer = PPOTrainer(load_policy("tiny", lora=True, device="cpu"), prompts, GoldReward(GoldAnnotator(world)), config)
result = trainer.train()
print(f"process {trainer.accelerator.process_index} of {trainer.accelerator.num_processes}: step {result.step}",
      flush=True)
