"""The vocabulary, at the bottom of every layer: desired state (model), the action base (actions), the
one error vocabulary (errors), the lifecycle log (events), typed words (kinds), the one serializer
of stored records (records) and sizes as people read them (units). Imports nothing else of warmvm."""
