"""Learning checks: does each recipe learn, through the real CLI, by a statistic?

Each module runs one recipe as a user would (``python -m loops_runner
+recipe=...`` on the built-in ``tiny``) and prints its before -> after figures
with the acceptance it checks and PASS or FAIL:

    python -m benchmarks.learning.rl        # reward, first vs last steps, Welch's t
    python -m benchmarks.learning.dpo       # held-out preference accuracy
    python -m benchmarks.learning.distill   # held-out reverse KL to the teacher
    python -m benchmarks.learning.judge     # a judge reward, three seeds

They are not measures of ``python -m benchmarks`` (minutes each, and their
figure is a learning statistic, not a side-by-side speed ratio).
"""
