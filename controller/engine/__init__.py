"""The engine, above the domains: observed state as one value (state), the plan composer (plan), the
dispatch of actions to drivers (apply), the level-triggered loop (reconcile), the host's observers,
capabilities and drivers put together (host), and one locked reconcile of the specs (converge)."""
