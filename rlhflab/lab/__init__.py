"""The lab layer owns the orchestration: tasks (what a user brings: prompts, demonstrations, a judge), the
stages (each wired once, every one a function of a task), the loop over rounds of labeling and training,
the over-optimisation fits, the HTML report, the notebooks' set-up and `make demo`. It is the top layer: it
may import `rlhflab.labeling` and `rlhflab.trainers`, and nothing in the package imports it. Its task,
stages and loop import nothing of `rlhflab.tiny`, which is one task among others (`rlhflab.tiny.task`)."""
