"""Measuring rankings: IR metrics over runs and qrels (:mod:`.metrics`), paired significance tests
(:mod:`.significance`), score / margin diagnostics and plots (:mod:`.diagnostics`) and the capacity probe
(:mod:`.capacity`). Pure functions over runs and tensors; no models, data modules or callbacks."""
