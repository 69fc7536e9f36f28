"""A stand-in for the FoX authors' package (github zhixuan-lin/forgetting-transformer, not on
PyPI), for foxcompile's tests: same module path, same signature and semantics, pure PyTorch."""
