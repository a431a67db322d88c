"""The vocabulary, at the bottom of every layer: desired state (model), the action base (actions), the
one error vocabulary (errors), the lifecycle log (events), typed words (kinds) and the one serializer
of stored records (records). Imports nothing else of warmvm."""
