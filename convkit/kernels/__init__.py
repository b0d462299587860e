"""Kernels as data, without torch: the TOML kernel files and their validation
(:mod:`.specs`), structuring elements and morphology rules (:mod:`.morphology`), the registry of
named filters (:mod:`.registry`) and chain spec strings such as ``"gaussian(sigma=2) | sharpen"``
(:mod:`.chainspec`)."""
