"""The trainers layer owns the models and everything that trains or scores them: loading a policy by
embedded name, directory or hub id (`models`, `embedded`), what the TRL-backed trainers share (`training`),
the live dashboards every trainer draws through (`live`), and one module per method: SFT, the reward model
and programmatic rewards, PPO (with NLPO), RLOO / GRPO, DPO, KTO, ILQL and best-of-n. It may import
`rlhflab.labeling`'s data side (records, the store, exports: what it trains on) and `rlhflab.tiny` (the
shipped model's assets, and the gold annotator as a reward); never `rlhflab.lab`, which sequences it, nor
the widgets (`rlhflab.labeling.widget`), so training never loads anywidget."""
