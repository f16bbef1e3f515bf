"""The commands on top of the trainer: ``mtljax train | eval | compare | routing | slim`` (``cli``),
single-task baselines, method comparison, MoE routing reports and the slimmable model's search."""
