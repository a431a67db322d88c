"""warmvm: a declarative reconciler for microVM hosts.

Pipeline: specs (load) -> observed (observe) -> plan (pure) -> apply (drivers),
repeated by `reconcile` until the plan is empty.
"""
