"""The labeling layer owns what people label and what their labels become: records (items, conversations,
the readers of a user's data), the append-only label store, exports (comparisons, thumbs ratings, TRL,
OpenRLHF and verl rows), candidates to label, agreement metrics and the leaderboard, annotator quality,
active learning, and the widgets' Python side (`widget`, the one module here that imports anywidget). It
imports only itself: nothing of `rlhflab.trainers`, `rlhflab.lab` or `rlhflab.tiny`. A policy reaches
`candidates` and a reward model reaches `active` as arguments (anything with `generate`, anything with
`score`), so data flows one way, out of here: the trainers read the store's exports, the lab sequences both."""
