"""The reconciler's core: desired-state types, the action vocabulary, errors, and the loop.

Lowest layer (errors, model, actions, events): imported by every domain.
Highest layer (state, plan, apply, reconcile): composes the domains.
"""
