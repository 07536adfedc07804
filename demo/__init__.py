"""The embedded default: a synthetic multimodal task that trains a tiny Uni-MoE end to end on a CPU.

`unimoe-demo` (or `python -m unimoe_demo`) generates the task (`synthetic_task`), trains stages
1 → 2 → 3, saves a Hub-format folder, reloads it with `pipeline("any-to-text")` and reports
accuracy and expert routing per modality.
"""
