"""Manifests to samples: every line becomes one `schema.Sample`, usable or with a status and a reason."""
