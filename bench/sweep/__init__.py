"""`bench sweep`: prefill and decode rates over a grid of settings and KV depths.

- `grid`    llama-bench's value syntax, every combination of settings, the (seeded) run order
- `records` SweepRecord, one per (configuration, depth, repetition), in sweep.jsonl
- `runner`  the parent: fit check, one child per load, failures recorded, resume
- `child`   the child process: load once, measure every depth with the profile engine's loop
"""
