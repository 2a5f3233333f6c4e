"""Named models: the registry of bundled, added and imported models, the cache, checked resumable downloads."""
